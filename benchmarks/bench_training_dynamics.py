"""Cost of `LossCurve` + `UpdateRatio` at their defaults: fit time over plain fit time.

Run by hand (each backend in its own process, one after the other):

    .venv/bin/python benchmarks/bench_training_dynamics.py
    .venv/bin/python benchmarks/bench_training_dynamics.py --backends jax --repeats 9
    .venv/bin/python benchmarks/bench_training_dynamics.py --backends torch --threads 1

In one process per backend the same digits MLP (64-64-10, standardized
inputs, Adam 1e-3, batch 32, validation data) is trained by alternating plain
`fit` calls and `fit` calls with fresh `LossCurve` and `UpdateRatio`
callbacks writing to a temporary log directory; the first pair warms up
(compilation) and is not counted. Reported: the median time of each kind and
their ratio, the median of the per-pair ratios with a 95% confidence
interval (distribution-free, from order statistics), and the ratio of the
median process CPU times (steadier on a shared machine). Target: <= 1.05.

Each pair also times a plain fit with a do-nothing batch-end hook, and the
watched fit's ratio against it is reported ("vs in-step"). On a CPU, Keras
dispatches batch hooks to a thread pool (JAX, PyTorch) unless a callback has
a batch-end hook that is not `async_safe`; `LossCurve` is not, there, since
running hooks in step is measured cheaper on a CPU than the hand-off (a
plain fit with the do-nothing hook: 0.75x on JAX). So the first ratio can be
below 1, and the in-step one is the callbacks' own cost. On TensorFlow, which
never dispatches asynchronously, both compare like with like.

`--control` adds a second plain fit to each pair and reports its pair ratio
against the first the same way: what two identical fits differ by on this
machine, the noise floor any ratio above has to be read against.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time


def digits_mlp():
    """The benchmark's model and data: `(model, (x, y) train, (x, y) validation)`.

    The digits MLP 64-64-10 (Adam 1e-3, standardized inputs, seed 0), 1400
    training and 397 validation examples. `bench_hook_time.py` uses it too.
    """
    import keras
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data.astype("float32")
    y = data.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    mean, std = x[:1400].mean(0), x[:1400].std(0) + 1e-6
    x = (x - mean) / std
    train, val = (x[:1400], y[:1400]), (x[1400:], y[1400:])

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-3),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model, train, val


def fit_digits(model, train, val, epochs, callbacks):
    """One benchmark fit of `digits_mlp()`'s model and data (batch 32,
    validation each epoch, silent). `bench_hook_time.py` uses it too."""
    model.fit(
        *train,
        validation_data=val,
        batch_size=32,
        epochs=epochs,
        verbose=0,
        callbacks=callbacks,
    )


def median_interval(values, confidence=0.95):
    """A distribution-free confidence interval for the median of `values`.

    The interval between the k-th smallest and the k-th largest value holds
    the true median with probability `1 - 2 P(B < k)`, B ~ Binomial(n, 1/2),
    whatever the distribution; k is the largest for which that reaches
    `confidence`. Fewer than 6 values cannot give 95%: then the full range.

    Args:
        values: The measurements (e.g. per-pair time ratios).
        confidence: The coverage wanted. Defaults to `0.95`.

    Returns:
        `(low, high)`.

    Example:

    >>> median_interval([1.0, 1.1, 0.9, 1.2, 1.05, 0.95, 1.0, 1.02, 0.98])
    (0.95, 1.1)
    """
    ordered = sorted(values)
    n = len(ordered)
    tail = (1.0 - confidence) / 2.0
    k, below = 0, 0.0  # below: P(B < k + 1), B ~ Binomial(n, 1/2)
    while k < n // 2:
        below += math.comb(n, k) / 2.0**n
        if below > tail:
            break
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def in_step_hook():
    """A callback whose do-nothing batch-end hook Keras runs in step with
    training (not `async_safe`): plain `fit` with Keras's synchronous dispatch."""
    import keras

    class InStepHook(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    return InStepHook()


def _ratios(times, base):
    """Median per-pair ratio of `times` over `base`, with its 95% interval."""
    ratios = [t / b for t, b in zip(times, base)]
    return statistics.median(ratios), median_interval(ratios)


def measure(repeats, epochs, control=False):
    import keras

    from trainwatch.callbacks.loss_curve import LossCurve
    from trainwatch.callbacks.update_ratio import UpdateRatio

    model, train, val = digits_mlp()

    def callbacks_for(kind):
        if kind == "watched":
            log_dir = tempfile.mkdtemp(prefix="bench_dynamics_")
            return [LossCurve(log_dir, verbose=0), UpdateRatio(log_dir, verbose=0)]
        return [in_step_hook()] if kind == "in_step" else []

    def fit(kind):
        callbacks = callbacks_for(kind)
        start, cpu_start = time.perf_counter(), time.process_time()
        fit_digits(model, train, val, epochs, callbacks)
        return time.perf_counter() - start, time.process_time() - cpu_start

    kinds = ["plain", "watched", "in_step"] + (["plain_again"] if control else [])
    for kind in kinds[:3]:  # warm-up: compilation, first writes
        fit(kind)
    wall = {kind: [] for kind in kinds}
    cpu = {kind: [] for kind in kinds}
    for i in range(repeats):
        # alternate the order, so drifts in machine load cancel out
        for kind in kinds if i % 2 == 0 else reversed(kinds):
            seconds, cpu_seconds = fit(kind)
            wall[kind].append(seconds)
            cpu[kind].append(cpu_seconds)
    pair_ratio, interval = _ratios(wall["watched"], wall["plain"])
    in_step_ratio, in_step_interval = _ratios(wall["watched"], wall["in_step"])
    extra = {}
    if control:  # the noise floor: a plain fit against a plain fit
        ratio, low_high = _ratios(wall["plain_again"], wall["plain"])
        extra = {"control_pair_ratio": ratio, "control_interval": low_high}
    median = {kind: statistics.median(times) for kind, times in wall.items()}
    return {
        "backend": keras.backend.backend(),
        "steps_per_fit": epochs * -(-len(train[0]) // 32),
        "plain_s": median["plain"],
        "watched_s": median["watched"],
        "in_step_s": median["in_step"],
        "ratio_of_medians": median["watched"] / median["plain"],
        "median_pair_ratio": pair_ratio,
        "pair_ratio_interval": interval,
        "in_step_pair_ratio": in_step_ratio,
        "in_step_interval": in_step_interval,
        **extra,
        # process CPU time (all threads): steadier than wall time on a busy host
        "cpu_ratio_of_medians": statistics.median(cpu["watched"])
        / statistics.median(cpu["plain"]),
        "plain_all_s": [round(t, 4) for t in wall["plain"]],
        "watched_all_s": [round(t, 4) for t in wall["watched"]],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--control",
        action="store_true",
        help="also time a second plain fit per pair: the noise floor",
    )
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for the runs (1 keeps PyTorch from oversubscribing "
        "a small, busy machine, where its times vary tenfold otherwise)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = measure(args.repeats, args.epochs, control=args.control)
        print("RESULT " + json.dumps(result))
        return
    results = []
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        command = [sys.executable, __file__, "--child"]
        command += ["--repeats", str(args.repeats), "--epochs", str(args.epochs)]
        command += ["--control"] if args.control else []
        output = subprocess.run(
            command, env=env, capture_output=True, text=True, check=False
        )
        lines = [ln for ln in output.stdout.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            print(f"{backend}: failed\n{output.stderr[-2000:]}")
            continue
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    print(
        f"{'backend':<11}{'steps':>7}{'plain s':>10}{'watched s':>11}"
        f"{'ratio':>8}{'pair ratio [95% CI]':>26}{'cpu ratio':>11}"
        f"{'vs in-step [95% CI]':>26}{'control [95% CI]':>24}"
    )

    def with_interval(ratio, interval):
        return f"{ratio:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"

    for r in results:
        control = ""
        if "control_pair_ratio" in r:
            control = with_interval(r["control_pair_ratio"], r["control_interval"])
        pair = with_interval(r["median_pair_ratio"], r["pair_ratio_interval"])
        in_step = with_interval(r["in_step_pair_ratio"], r["in_step_interval"])
        print(
            f"{r['backend']:<11}{r['steps_per_fit']:>7}{r['plain_s']:>10.3f}"
            f"{r['watched_s']:>11.3f}{r['ratio_of_medians']:>8.3f}{pair:>26}"
            f"{r['cpu_ratio_of_medians']:>11.3f}{in_step:>26}{control:>24}"
        )
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
