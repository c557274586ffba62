"""Where `LossCurve` + `UpdateRatio` spend their time inside a `fit`, hook by hook.

Run by hand (one backend per process):

    KERAS_BACKEND=jax OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_hook_time.py
    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_hook_time.py --repeats 40

The whole-fit ratio of `bench_training_dynamics.py` is what a user feels, but
on a small shared machine two plain fits differ by up to 5%, more than the
effects worth chasing. This measures the callbacks' own CPU time instead:
every Keras hook of each callback is wrapped and timed with the thread's CPU
clock (`time.thread_time_ns`, the thread that runs it: the main thread, or
Keras's callback threads where batch-end hooks are dispatched asynchronously,
on JAX and PyTorch with a GPU or TPU). A
wrapped do-nothing callback in the same fits measures what the wrapper itself
costs per call of each hook, which is taken off (the first callback in the
list runs with colder caches, so a do-nothing hook of it still shows ~1 µs).
Reported per callback and hook: calls and
microseconds per fit, and the total against the plain fit's median wall time
(the digits MLP of `bench_training_dynamics.py`, batch 32, 10 epochs of 44
steps). Time the hooks cause outside themselves
(caches their work evicts, the GIL handed back and forth, device work) is not
in it.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time

_HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_epoch_end",
    "on_train_end",
    "on_test_begin",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_test_end",
)


def _timed(callback, totals):
    """Wraps each hook of `callback` to add its CPU time to `totals`."""
    name = type(callback).__name__
    for hook in _HOOKS:
        original = getattr(callback, hook)

        def timed_hook(*args, _original=original, _key=(name, hook), **kwargs):
            start = time.thread_time_ns()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_key].append(time.thread_time_ns() - start)

        setattr(callback, hook, timed_hook)
    return callback


def measure(repeats, epochs):
    import keras
    from bench_training_dynamics import digits_mlp, fit_digits

    from trainwatch.callbacks.loss_curve import LossCurve
    from trainwatch.callbacks.update_ratio import UpdateRatio

    class DoNothing(keras.callbacks.Callback):
        async_safe = True  # like the monitors: keeps Keras's async dispatch

    model, train, val = digits_mlp()
    totals = collections.defaultdict(list)

    def fit(watched):
        callbacks = []
        if watched:
            log_dir = tempfile.mkdtemp(prefix="bench_hooks_")
            callbacks = [
                _timed(LossCurve(log_dir, verbose=0), totals),
                _timed(UpdateRatio(log_dir, verbose=0), totals),
                _timed(DoNothing(), totals),
            ]
        start = time.perf_counter()
        fit_digits(model, train, val, epochs, callbacks)
        return time.perf_counter() - start

    fit(False), fit(True)  # warm-up: compilation, first writes
    totals.clear()
    plain = []
    for _ in range(repeats):
        plain.append(fit(False))
        fit(True)
    # What the wrapper costs, per hook: the batch-end hooks run in Keras's
    # callback threads on JAX and PyTorch, where a call costs more.
    wrapper_ns = {
        hook: statistics.median(times)
        for (name, hook), times in totals.items()
        if name == "DoNothing"
    }
    rows = []
    for (name, hook), times in sorted(totals.items()):
        if name == "DoNothing":
            continue
        overhead = wrapper_ns.get(hook, 0.0)
        net = sum(times) - overhead * len(times)
        rows.append(
            (
                name,
                hook,
                len(times) / repeats,
                net / repeats / 1e3,
                (statistics.median(times) - overhead) / 1e3,
            )
        )
    wrapper_us = statistics.median(wrapper_ns.values()) / 1e3 if wrapper_ns else 0.0
    return rows, statistics.median(plain), wrapper_us


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    import keras

    rows, plain_s, wrapper_us = measure(args.repeats, args.epochs)
    backend = keras.backend.backend()
    print(f"backend {backend}; wrapper {wrapper_us:.2f} µs a call (median hook)")
    header = f"{'callback':<13}{'hook':<22}{'calls/fit':>10}{'µs/fit':>9}"
    print(header + f"{'median µs':>11}")
    for name, hook, calls, per_fit, median in rows:
        if calls:
            print(f"{name:<13}{hook:<22}{calls:>10.0f}{per_fit:>9.0f}{median:>11.1f}")
    total = sum(per_fit for *_, per_fit, _ in rows)
    print(
        f"total {total / 1e3:.2f} ms a fit, {100 * total / 1e6 / plain_s:.1f}% of "
        f"the plain fit's {plain_s * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
