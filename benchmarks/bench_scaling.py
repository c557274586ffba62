"""How trainwatch's heavy probes grow with model size and depth, and their memory.

Run by hand (each backend in its own fresh processes, one after the other; the
same command on a CPU or a GPU machine):

    .venv/bin/python benchmarks/bench_scaling.py --quick
    .venv/bin/python benchmarks/bench_scaling.py --backends jax,torch --repeats 5

Measured per backend, on MLPs with softmax outputs, sparse categorical
crossentropy and Adam (built by one `train_on_batch` first), on a synthetic
probe batch of 32 examples:

1. Against parameters (~1e4, 1e5, 1e6, 1e7; `--quick` stops at 1e6): three
   hidden `Dense(w, relu)` layers, `w` chosen to hit the size.
2. Against depth (2, 5, 10, 20, 50 hidden `Dense(64, relu)` layers;
   `--quick` stops at 20).

For each model, three things the callbacks do, each timed on its first call
(tracing and compilation included) and as the median of the next `--repeats`
calls:

* gradient check: `check_gradients(model, x, y)` at the defaults
  `GradientCheck` uses (it keeps the first 8 examples; every check builds a
  fresh float64 copy of the model, so the warm calls compile too);
* distribution probe: `Distributions._probe()`, what the callback runs per
  probe (every layer's activations and activation gradients in one backward
  pass, statistics, histograms and scalars written to a temporary log dir);
* update-ratio sample: `UpdateRatio`'s compiled `_flatten` (at the sampled
  step's begin) and `_sums_of_squares` (at the next one), and the small result
  copied to the host (so the time includes the device sync). No training step
  runs in between, which costs the same.

3. Exponents: the least-squares slope of log(warm median time) against
   log(parameters) and log(hidden layers), per backend and measured thing.
4. Memory: the ~1M-parameter MLP (and the ~10M one without `--quick`) trained
   for a few epochs on synthetic data with plain `fit` in one fresh process
   and with `trainwatch.TrainWatch(log_dir, probe=(x[:32], y[:32]))` at
   defaults in another; the difference of their peak resident memory
   (`ru_maxrss`) and, on a GPU, of the framework's peak device memory. Both
   processes import `trainwatch.callbacks.trainwatch`; what the parts import
   when they are made or run (TensorFlow for the float64 copy on JAX and
   PyTorch, for instance) counts as theirs.

On a small machine shared with other jobs, PyTorch's CPU kernels wait for
their second thread: pass `--threads 1` for steadier PyTorch times.

Printed: the machine and each backend's devices, a table of times, a table of
exponents, a table of memory, then one JSON line per backend and measurement.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ALL_BACKENDS = ("tensorflow", "jax", "torch")
INPUTS = 64
CLASSES = 10
HIDDEN = 3  # hidden layers of the parameter sweep
DEPTH_WIDTH = 64  # width of the depth sweep's hidden layers
PROBE_EXAMPLES = 32
PARAM_SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
DEPTHS = (2, 5, 10, 20, 50)
QUICK_PARAM_SIZES = PARAM_SIZES[:3]
QUICK_DEPTHS = DEPTHS[:4]
MEMORY_EXAMPLES = 2048
MEMORY_BATCH = 32
THINGS = ("gradient_check", "distribution_probe", "update_ratio_sample")


# -- models and data (the framework is imported only in the children) --------
def width_for(params, hidden=HIDDEN, inputs=INPUTS, classes=CLASSES):
    """The hidden width that gives an MLP about `params` parameters.

    Solves `(hidden - 1) w² + (inputs + hidden + classes) w + classes = params`.

    Example:

    >>> width_for(1_000_000)
    688
    """
    a, b, c = hidden - 1, inputs + hidden + classes, classes - params
    if a == 0:
        return max(1, round(-c / b))
    return max(1, round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))


def make_mlp(width, hidden):
    """A compiled MLP: `hidden` × `Dense(width, relu)`, then `Dense(10, softmax)`."""
    import keras

    keras.utils.set_random_seed(0)
    layers = [keras.Input((INPUTS,))]
    layers += [keras.layers.Dense(width, activation="relu") for _ in range(hidden)]
    layers.append(keras.layers.Dense(CLASSES, activation="softmax"))
    model = keras.Sequential(layers)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def synthetic_data(examples, seed=0):
    """Standard normal inputs; labels from a fixed random linear map (learnable)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(examples, INPUTS)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(INPUTS, CLASSES)), axis=1).astype("int32")
    return x, y


def devices():
    """The active backend's framework, version and device list, as strings."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        listed = [d.name for d in tf.config.list_logical_devices()]
        return {"framework": f"tensorflow {tf.__version__}", "devices": listed}
    if backend == "jax":
        import jax

        listed = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
        return {"framework": f"jax {jax.__version__}", "devices": listed}
    import torch

    listed = [f"cpu ({torch.get_num_threads()} threads)"]
    listed += [
        f"cuda:{i} {torch.cuda.get_device_name(i)}"
        for i in range(torch.cuda.device_count())
    ]
    return {"framework": f"torch {torch.__version__}", "devices": listed}


def device_peak_bytes():
    """The framework's peak device memory in bytes, or `None` on a CPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.max_memory_allocated())
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "cpu":
            return None
        stats = device.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return None if peak is None else int(peak)
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def peak_rss_kb():
    """This process's peak resident memory so far (kilobytes on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# -- the three measured things ------------------------------------------------
def first_and_median(fn, repeats):
    """Seconds of the first call of `fn` and the median of the next `repeats`."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def gradient_check_call(model, x, y):
    """One check as `GradientCheck._check` makes it with no check options."""
    from trainwatch.gradient_check import check_gradients

    return lambda: check_gradients(model, x, y)


def distribution_probe_call(model, x, y, log_dir):
    """One probe of a `Distributions` callback, histograms written to `log_dir`."""
    from trainwatch.callbacks.distributions import Distributions

    callback = Distributions(log_dir, probe=(x, y), verbose=0)
    callback.set_model(model)
    return callback._probe


def update_ratio_call(model):
    """One `UpdateRatio` sample: flatten before, sums of squares after, to host."""
    import numpy as np
    from keras import ops

    from trainwatch.callbacks.update_ratio import (
        _device_function,
        _flatten,
        _sums_of_squares,
    )

    variables = list(model.trainable_variables)

    def sample():
        before = _device_function(_flatten)([v.value for v in variables])
        sums = _device_function(_sums_of_squares)(before, [v.value for v in variables])
        return np.asarray(ops.convert_to_numpy(sums), dtype=np.float64)

    return sample


def measure_model(width, hidden, repeats):
    """Times the three things on one MLP; returns a dict of seconds."""
    import keras

    model = make_mlp(width, hidden)
    x, y = synthetic_data(PROBE_EXAMPLES)
    model.train_on_batch(x, y)  # builds the optimizer, as during fit
    record = {"width": width, "hidden": hidden, "params": model.count_params()}
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as log_dir:
        calls = {
            "gradient_check": gradient_check_call(model, x, y),
            "distribution_probe": distribution_probe_call(model, x, y, log_dir),
            "update_ratio_sample": update_ratio_call(model),
        }
        for name, call in calls.items():
            first, warm = first_and_median(call, repeats)
            record[f"{name}_first_s"] = first
            record[f"{name}_warm_s"] = warm
    keras.backend.clear_session()
    return record


def measure_scaling(param_sizes, depths, repeats):
    """Both sweeps in this process (the backend's child); returns a dict."""
    import keras

    result = {"backend": keras.backend.backend(), **devices()}
    result["params_sweep"] = [
        measure_model(width_for(size), HIDDEN, repeats) for size in param_sizes
    ]
    result["depth_sweep"] = [
        measure_model(DEPTH_WIDTH, depth, repeats) for depth in depths
    ]
    return result


def measure_memory(params, watched, epochs):
    """Peak memory of one `fit`, plain or with `TrainWatch` at defaults."""
    import keras

    from trainwatch.callbacks.trainwatch import TrainWatch

    model = make_mlp(width_for(params), HIDDEN)
    x, y = synthetic_data(MEMORY_EXAMPLES)
    rss_before = peak_rss_kb()
    with tempfile.TemporaryDirectory(prefix="bench_scaling_memory_") as log_dir:
        callbacks = []
        if watched:
            probe = (x[:PROBE_EXAMPLES], y[:PROBE_EXAMPLES])
            callbacks = [TrainWatch(log_dir, probe=probe, verbose=0)]
        start = time.perf_counter()
        model.fit(
            x, y, batch_size=MEMORY_BATCH, epochs=epochs, verbose=0, callbacks=callbacks
        )
        fit_s = time.perf_counter() - start
        if watched:
            callbacks[0].context.close()
    result = {
        "backend": keras.backend.backend(),
        "params": model.count_params(),
        "watched": watched,
        "epochs": epochs,
        "fit_s": fit_s,
        "peak_rss_before_fit_kb": rss_before,
        "peak_rss_kb": peak_rss_kb(),
        "device_peak_bytes": device_peak_bytes(),
    }
    if watched:
        context = callbacks[0].context
        result["seconds_in_trainwatch"] = context.seconds_in_trainwatch
        result["findings"] = sorted({f.code for f in context.findings})
    return result


# -- fitting and printing (parent process) ------------------------------------
def exponent(sizes, seconds):
    """Least-squares slope of log(seconds) against log(sizes), or nan.

    Example:

    >>> round(exponent([1, 10, 100], [2.0, 20.0, 200.0]), 3)
    1.0
    """
    import numpy as np

    pairs = [(s, t) for s, t in zip(sizes, seconds) if s > 0 and t > 0]
    if len(pairs) < 2:
        return float("nan")
    logs = np.log(np.array(pairs, dtype=np.float64))
    return float(np.polyfit(logs[:, 0], logs[:, 1], 1)[0])


def exponents(result):
    """`{thing: (vs params, vs hidden layers)}` from a scaling result."""
    by_params, by_depth = result["params_sweep"], result["depth_sweep"]
    return {
        thing: (
            exponent(
                [r["params"] for r in by_params],
                [r[f"{thing}_warm_s"] for r in by_params],
            ),
            exponent(
                [r["hidden"] for r in by_depth],
                [r[f"{thing}_warm_s"] for r in by_depth],
            ),
        )
        for thing in THINGS
    }


def run_child(backend, child_args, threads):
    """Runs this file as a child with `KERAS_BACKEND=backend`; its result or None."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, __file__, "--child", *child_args]
    output = subprocess.run(
        command, env=env, capture_output=True, text=True, check=False
    )
    lines = [ln for ln in output.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        print(f"{backend} {' '.join(child_args)}: failed\n{output.stderr[-3000:]}")
        return None
    return json.loads(lines[-1][len("RESULT ") :])


def print_times(scaling):
    """The table of first-call and warm times, in milliseconds."""
    header = f"{'backend':<11}{'sweep':<7}{'params':>12}{'hidden':>7}"
    for label in ("grad check", "dist probe", "update ratio"):
        header += f"{label + ' 1st':>17}{'warm':>10}"
    print("\ntimes in ms (1st: first call, compilation included; warm: median)")
    print(header)
    for result in scaling:
        for sweep in ("params_sweep", "depth_sweep"):
            for r in result[sweep]:
                line = f"{result['backend']:<11}{sweep.split('_')[0]:<7}"
                line += f"{r['params']:>12,d}{r['hidden']:>7}"
                for thing in THINGS:
                    line += f"{r[f'{thing}_first_s'] * 1e3:>17.1f}"
                    line += f"{r[f'{thing}_warm_s'] * 1e3:>10.1f}"
                print(line)


def print_exponents(scaling):
    """The table of fitted exponents: time ~ params^k and ~ layers^k."""
    print("\nexponents k of the warm times: time ~ params^k, time ~ hidden layers^k")
    print(f"{'backend':<11}{'measured':<22}{'params^k':>10}{'layers^k':>10}")
    for result in scaling:
        for thing, (k_params, k_depth) in exponents(result).items():
            print(
                f"{result['backend']:<11}{thing.replace('_', ' '):<22}"
                f"{k_params:>10.2f}{k_depth:>10.2f}"
            )


def print_memory(memory):
    """The table of peak memory, plain fit against fit with `TrainWatch`."""

    def mib(value, scale):
        return "-" if value is None else f"{value * scale / 2**20:.0f}"

    print("\npeak memory in MiB (resident; device where a GPU is used)")
    print(
        f"{'backend':<11}{'params':>12}{'rss plain':>11}{'watched':>9}{'extra':>7}"
        f"{'dev plain':>11}{'watched':>9}{'extra':>7}{'fit s plain':>13}"
        f"{'watched':>9}"
    )
    for plain, watched in memory:
        extra_rss = watched["peak_rss_kb"] - plain["peak_rss_kb"]
        dev_plain, dev_watched = (
            plain["device_peak_bytes"],
            watched["device_peak_bytes"],
        )
        extra_dev = (
            None if None in (dev_plain, dev_watched) else dev_watched - dev_plain
        )
        print(
            f"{plain['backend']:<11}{plain['params']:>12,d}"
            f"{mib(plain['peak_rss_kb'], 1024):>11}"
            f"{mib(watched['peak_rss_kb'], 1024):>9}{mib(extra_rss, 1024):>7}"
            f"{mib(dev_plain, 1):>11}{mib(dev_watched, 1):>9}{mib(extra_dev, 1):>7}"
            f"{plain['fit_s']:>13.1f}{watched['fit_s']:>9.1f}"
        )


def installed_backends():
    """The Keras backends whose framework is installed, as a comma-separated string."""
    found = [b for b in ALL_BACKENDS if importlib.util.find_spec(b) is not None]
    return ",".join(found)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backends",
        default=installed_backends(),
        help="comma-separated Keras backends (default: every one installed)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="models up to ~1e6 parameters and 20 hidden layers, 3 repeats, "
        "memory of the ~1M model only",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="warm calls per measurement"
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs of memory fits")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS of the children (1 keeps PyTorch from "
        "oversubscribing a small, busy machine, where its times vary tenfold)",
    )
    parser.add_argument(
        "--child", choices=("scaling", "memory"), help=argparse.SUPPRESS
    )
    parser.add_argument("--params", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--watched", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    param_sizes = QUICK_PARAM_SIZES if args.quick else PARAM_SIZES
    depths = QUICK_DEPTHS if args.quick else DEPTHS
    if args.child == "scaling":
        result = measure_scaling(param_sizes, depths, repeats)
        print("RESULT " + json.dumps(result))
        return
    if args.child == "memory":
        result = measure_memory(args.params, args.watched, args.epochs)
        print("RESULT " + json.dumps(result))
        return

    started = time.perf_counter()
    processor = platform.processor() or platform.machine()
    print(
        f"machine: {platform.platform()} | processor {processor}"
        f" | {os.cpu_count()} cpus | python {platform.python_version()}"
    )
    memory_sizes = [1_000_000] if args.quick else [1_000_000, 10_000_000]
    scaling, memory, records = [], [], []
    for backend in args.backends.split(","):
        backend_start = time.perf_counter()
        child_args = ["scaling", "--repeats", str(repeats)]
        child_args += ["--quick"] if args.quick else []
        result = run_child(backend, child_args, args.threads)
        if result is not None:
            scaling.append(result)
            records.append({"kind": "scaling", **result})
            print(f"{backend}: {result['framework']} | devices {result['devices']}")
        for size in memory_sizes:
            pair = []
            for flag in ([], ["--watched"]):
                child = ["memory", "--params", str(size), "--epochs", str(args.epochs)]
                pair.append(run_child(backend, child + flag, args.threads))
            if None not in pair:
                memory.append(tuple(pair))
                records += [{"kind": "memory", **r} for r in pair]
        print(f"{backend}: done in {time.perf_counter() - backend_start:.0f} s")
    print_times(scaling)
    print_exponents(scaling)
    print_memory(memory)
    print(f"\ntotal {time.perf_counter() - started:.0f} s\n")
    for record in records:
        print(json.dumps(record))


if __name__ == "__main__":
    main()
