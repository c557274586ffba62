"""Overhead of trainwatch against plain `model.fit`, one table for every backend.

Each backend runs in its own process. Inside it, for each workload, plain fit
and fit with `TrainWatch` at defaults are timed alternately after a warm-up
(one plain and one watched fit: compilation, imports), each on a freshly
built model, and the medians are reported; on TensorFlow also Keras's own
`TensorBoard(histogram_freq=1)`.

`TrainWatch` has two kinds of cost. One-off costs come once per run: the
sanity and input/init checks at train begin, the first distribution probe and
the first gradient check right after warm-up. Recurring costs grow with the
run: loss curve, update ratios, and the later probes and checks, which the
time budget (5% at defaults) spaces out. The table shows the total ratio of
these runs, the one-off seconds, the steady ratio (one-off costs left out:
what a long run converges to) and the plain-fit length from which the total
ratio is at most 1.05 (`one-off / (1.05 - steady)`).

Run by hand (works on CPU and GPU alike; the header names the device):

    .venv/bin/python benchmarks/run.py                   # all installed backends
    .venv/bin/python benchmarks/run.py --backends jax --workloads digits_mlp
    .venv/bin/python benchmarks/run.py --quick           # fewer repeats, smaller models
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

WORKLOADS = ("digits_mlp", "small_cnn", "mlp_10m")
BACKENDS = ("tensorflow", "jax", "torch")


def _digits():
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data.astype("float32")
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, data.target.astype("int32"), np


def make_workload(name, quick):
    """Returns `(build_model, x, y, fit_kwargs, probe)` for a workload."""
    import keras

    x, y, np = _digits()
    if name == "digits_mlp":

        def build():
            model = keras.Sequential(
                [
                    keras.Input((64,)),
                    keras.layers.Dense(128, activation="relu"),
                    keras.layers.Dense(64, activation="relu"),
                    keras.layers.Dense(10, activation="softmax"),
                ]
            )
            model.compile(
                optimizer="adam",
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            return model

        fit = dict(epochs=3 if quick else 10, batch_size=32)
    elif name == "small_cnn":
        x = x.reshape(-1, 8, 8, 1)

        def build():
            model = keras.Sequential(
                [
                    keras.Input((8, 8, 1)),
                    keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                    keras.layers.MaxPooling2D(),
                    keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
                    keras.layers.Flatten(),
                    keras.layers.Dense(10, activation="softmax"),
                ]
            )
            model.compile(
                optimizer="adam",
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            return model

        fit = dict(epochs=2 if quick else 6, batch_size=32)
    elif name == "mlp_10m":
        width = 1024 if quick else 2048
        rng = np.random.default_rng(0)
        examples = 2560 if quick else 5120
        x = rng.normal(size=(examples, 784)).astype("float32")
        y = rng.integers(0, 10, size=examples).astype("int32")

        def build():
            model = keras.Sequential(
                [
                    keras.Input((784,)),
                    keras.layers.Dense(width, activation="relu"),
                    keras.layers.Dense(width, activation="relu"),
                    keras.layers.Dense(width, activation="relu"),
                    keras.layers.Dense(10, activation="softmax"),
                ]
            )
            model.compile(
                optimizer="adam",
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            return model

        fit = dict(epochs=2 if quick else 3, batch_size=256)
    else:
        raise ValueError(
            f"Unknown workload. Expected one of {WORKLOADS}. Received: {name}"
        )
    n_val = len(x) // 5
    fit["validation_data"] = (x[:n_val], y[:n_val])
    return (
        build,
        x[n_val:],
        y[n_val:],
        fit,
        (x[n_val : n_val + 64], y[n_val : n_val + 64]),
    )


def _timed_fit(build, x, y, fit, callbacks):
    import keras

    keras.utils.set_random_seed(0)
    model = build()
    start = time.perf_counter()
    model.fit(x, y, callbacks=callbacks, verbose=0, **fit)
    return time.perf_counter() - start


def one_off_seconds(first_seconds_by_part, seconds_by_part):
    """Seconds of the once-per-run work in a `TrainWatch` run.

    Train begin (input/init checks, and the first distribution
    probe when it runs there), the sanity checks (at the first epoch's
    begin), the first gradient check, the first probe when
    it came later, and the update-ratio samples of the first updates.
    """
    first = first_seconds_by_part
    seconds = seconds_by_part.get("UpdateRatio.first_updates", 0.0)
    seconds += first.get("TrainWatch.train_begin", 0.0)
    seconds += first.get("SanityCheck.sanity", 0.0)  # at the first epoch begin
    seconds += first.get("GradientCheck.check", 0.0)
    if "Distributions.train_begin" not in first:
        seconds += first.get("Distributions.probe", 0.0)
    return seconds


def break_even_seconds(one_off, steady_ratio, target=1.05):
    """Plain-fit seconds from which `(one_off + steady * t) / t <= target`."""
    if steady_ratio >= target:
        return float("inf")
    return one_off / (target - steady_ratio)


def _watched_fit(build, x, y, fit, probe):
    import trainwatch

    with tempfile.TemporaryDirectory() as log_dir:
        watch = trainwatch.TrainWatch(log_dir, probe=probe, verbose=0)
        total = _timed_fit(build, x, y, fit, [watch])
        context = watch.context
        one_off = one_off_seconds(
            context.first_seconds_by_part, context.seconds_by_part
        )
        return total, one_off, (context.overhead_fraction())


def worker(backend, workloads, repeats, quick):
    """Runs inside a process whose KERAS_BACKEND is `backend`; prints JSON rows."""
    import warnings

    import keras

    warnings.filterwarnings("ignore", category=UserWarning)  # e.g. no image shape
    rows = []
    for name in workloads:
        build, x, y, fit, probe = make_workload(name, quick)
        # warm-up: imports, kernels, compilation caches of both kinds of run
        _timed_fit(build, x, y, fit, [])
        first_watched = _watched_fit(build, x, y, fit, probe)
        plain, watched, one_off, keras_tb, overheads = [], [], [], [], []
        for i in range(repeats):
            order = ["plain", "watched"] if i % 2 == 0 else ["watched", "plain"]
            for kind in order:  # alternating, so drifts in machine load cancel
                if kind == "plain":
                    plain.append(_timed_fit(build, x, y, fit, []))
                else:
                    total, seconds, overhead = _watched_fit(build, x, y, fit, probe)
                    watched.append(total)
                    one_off.append(seconds)
                    overheads.append(overhead)
            if backend == "tensorflow":
                with tempfile.TemporaryDirectory() as log_dir:
                    tb = keras.callbacks.TensorBoard(log_dir, histogram_freq=1)
                    keras_tb.append(_timed_fit(build, x, y, fit, [tb]))
        plain_s = statistics.median(plain)
        steady = statistics.median(
            (w - o) / p for w, o, p in zip(watched, one_off, plain)
        )
        one_off_s = statistics.median(one_off)
        row = {
            "backend": backend,
            "workload": name,
            "steps": fit["epochs"] * -(-len(x) // fit["batch_size"]),
            "plain_s": plain_s,
            "trainwatch_s": statistics.median(watched),
            "ratio": statistics.median(w / p for w, p in zip(watched, plain)),
            "one_off_s": one_off_s,
            "steady_ratio": steady,
            "break_even_s": break_even_seconds(one_off_s, steady),
            "first_process_run_s": first_watched[0],
            "first_process_one_off_s": first_watched[1],
            "self_reported_overhead": statistics.median(overheads),
            "keras_tensorboard_ratio": (
                statistics.median(k / p for k, p in zip(keras_tb, plain))
                if keras_tb
                else None
            ),
        }
        rows.append(row)
        print("ROW " + json.dumps(row), flush=True)
    return rows


def _device_description():
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="*", default=None)
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    if args.worker:
        worker(args.worker, args.workloads, repeats, args.quick)
        return
    backends = args.backends or [b for b in BACKENDS if importlib.util.find_spec(b)]
    rows = []
    for backend in backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        command = [
            sys.executable,
            __file__,
            "--worker",
            backend,
            "--repeats",
            str(repeats),
        ]
        command += ["--workloads", *args.workloads] + (
            ["--quick"] if args.quick else []
        )
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        found = [
            json.loads(line[4:])
            for line in result.stdout.splitlines()
            if line.startswith("ROW ")
        ]
        if result.returncode != 0 and not found:
            print(f"{backend}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
        rows.extend(found)
    print(f"\ntrainwatch overhead on {_device_description()}, median of {repeats} runs")
    print(
        f"{'backend':<11} {'workload':<11} {'steps':>6} {'plain s':>8} "
        f"{'watched s':>10} {'ratio':>6} {'one-off s':>10} {'steady':>7} "
        f"{'1.05 from':>10} {'self %':>7} {'keras TB':>9}"
    )
    for r in rows:
        tb = r["keras_tensorboard_ratio"]
        tb = "" if tb is None else f"{tb:.2f}"
        even = r["break_even_s"]
        even = "never" if even == float("inf") else f"{even:.0f} s"
        print(
            f"{r['backend']:<11} {r['workload']:<11} {r['steps']:>6} "
            f"{r['plain_s']:8.2f} {r['trainwatch_s']:10.2f} {r['ratio']:6.2f} "
            f"{r['one_off_s']:10.2f} {r['steady_ratio']:7.3f} {even:>10} "
            f"{100 * r['self_reported_overhead']:6.1f}% {tb:>9}"
        )
    print(
        "ratio: fit with TrainWatch at defaults / plain fit, same process, warm; "
        "one-off s: sanity and input/init checks, first probe, first gradient "
        "check, update ratios of the first steps; steady: the ratio without "
        "them (a long run's ratio); 1.05 from: plain-fit length from which the "
        "whole run's ratio is <= 1.05; self %: "
        "trainwatch's own measure of its share of the run; keras TB: "
        "keras.callbacks.TensorBoard(histogram_freq=1) / plain (TensorFlow only)."
    )
    for r in rows:
        print(
            f"first run in a fresh process ({r['backend']}, {r['workload']}): "
            f"{r['first_process_run_s']:.2f} s watched, of which one-off "
            f"{r['first_process_one_off_s']:.2f} s (compilation included)"
        )


if __name__ == "__main__":
    main()
