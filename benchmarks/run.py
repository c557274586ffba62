"""Overhead of trainwatch against plain `model.fit`, one table for every backend.

Each backend runs in its own process. Inside it, for each workload, plain fit
and fit with `TrainWatch` at defaults are timed alternately after a warm-up,
and the median of the ratios is reported; on TensorFlow also Keras's own
`TensorBoard(histogram_freq=1)`. The time `TrainWatch` spends at train begin
(sanity and input/init checks: a one-off cost) is reported apart from the
steady-state ratio, which excludes it.

Run by hand (works on CPU and GPU alike):

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

        fit = dict(epochs=2 if quick else 5, batch_size=32)
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

        fit = dict(epochs=2 if quick else 4, batch_size=32)
    elif name == "mlp_10m":
        width = 1024 if quick else 2048
        rng = np.random.default_rng(0)
        x = rng.normal(size=(2048, 784)).astype("float32")
        y = rng.integers(0, 10, size=2048).astype("int32")

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

        fit = dict(epochs=2, batch_size=256)
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


def worker(backend, workloads, repeats, quick):
    """Runs inside a process whose KERAS_BACKEND is `backend`; prints JSON rows."""
    import keras

    import trainwatch

    rows = []
    for name in workloads:
        build, x, y, fit, probe = make_workload(name, quick)
        _timed_fit(build, x, y, fit, [])  # warm-up: imports, kernels, caches
        plain, watched, keras_tb, begin_costs, overheads = [], [], [], [], []
        for _ in range(repeats):
            plain.append(_timed_fit(build, x, y, fit, []))
            with tempfile.TemporaryDirectory() as log_dir:
                watch = trainwatch.TrainWatch(log_dir, probe=probe, verbose=0)
                total = _timed_fit(build, x, y, fit, [watch])
                by_part = watch.context.seconds_by_part
                begin = by_part.get("TrainWatch.train_begin", 0.0)
                watched.append(total - begin)
                begin_costs.append(begin)
                overheads.append(watch.context.overhead_fraction())
            if backend == "tensorflow":
                with tempfile.TemporaryDirectory() as log_dir:
                    tb = keras.callbacks.TensorBoard(log_dir, histogram_freq=1)
                    keras_tb.append(_timed_fit(build, x, y, fit, [tb]))
        row = {
            "backend": backend,
            "workload": name,
            "plain_s": statistics.median(plain),
            "trainwatch_s": statistics.median(watched),
            "ratio": statistics.median(w / p for w, p in zip(watched, plain)),
            "train_begin_s": statistics.median(begin_costs),
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
        f"{'backend':<11} {'workload':<11} {'plain s':>8} {'watched s':>10} "
        f"{'ratio':>6} {'begin s':>8} {'self %':>7} {'keras TB':>9}"
    )
    for r in rows:
        tb = (
            ""
            if r["keras_tensorboard_ratio"] is None
            else f"{r['keras_tensorboard_ratio']:.2f}"
        )
        print(
            f"{r['backend']:<11} {r['workload']:<11} {r['plain_s']:8.2f} "
            f"{r['trainwatch_s']:10.2f} {r['ratio']:6.2f} {r['train_begin_s']:8.2f} "
            f"{100 * r['self_reported_overhead']:6.1f}% {tb:>9}"
        )
    print(
        "ratio: fit with TrainWatch at defaults (train-begin checks excluded) / plain "
        "fit; begin s: one-off sanity and input/init checks; self %: trainwatch's own "
        "measure of its share of training time; keras TB: "
        "keras.callbacks.TensorBoard(histogram_freq=1) / plain (TensorFlow only)."
    )


if __name__ == "__main__":
    main()
