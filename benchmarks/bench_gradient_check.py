"""Time of one default `check_gradients` call against one training step.

Run by hand, one backend at a time:

    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_gradient_check.py

Models: MLPs of ~10k, ~1M and ~10M parameters and a small CNN (~0.2M) on
28x28 inputs. A training step is `train_on_batch` on a batch of 128 (median of
several after warm-up); a check is the default `check_gradients` (8 examples,
4 coordinates and 1 direction per variable, float64), median of 3 after one
warm-up call. Target: a ~1M-parameter MLP or CNN checked in under 2 s on a
2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from trainwatch.gradient_check import check_gradients  # noqa: E402


def mlp(widths):
    layers = [keras.Input((784,))]
    layers += [keras.layers.Dense(w, activation="relu") for w in widths]
    layers.append(keras.layers.Dense(10, activation="softmax"))
    return keras.Sequential(layers)


def cnn():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


MODELS = {
    "mlp-10k": lambda: mlp([12]),
    "mlp-1M": lambda: mlp([1024, 256]),
    "mlp-10M": lambda: mlp([2048, 2048, 2048]),
    "cnn": cnn,
}


def median_time(fn, repeats):
    fn()  # warm-up: tracing, compilation, first-call costs
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"backend={keras.backend.backend()} cpus={os.cpu_count()}")
    print(
        f"{'model':8s} {'params':>10s} {'train step':>11s} {'check':>8s} {'ratio':>7s}"
    )
    for name in args.models:
        keras.utils.set_random_seed(0)
        model = MODELS[name]()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        shape = (128,) + tuple(model.input_shape[1:])
        x = rng.normal(size=shape).astype("float32")
        y = rng.integers(0, 10, size=128)
        step = median_time(lambda m=model, a=x, b=y: m.train_on_batch(a, b), 5)
        check = median_time(
            lambda m=model, a=x, b=y: check_gradients(m, a, b), args.repeats
        )
        result = check_gradients(model, x, y)
        print(
            f"{name:8s} {model.count_params():>10,d} {step * 1e3:>9.1f}ms "
            f"{check:>7.2f}s {check / step:>6.0f}x  "
            f"passed={result.passed} max_rel={result.max_relative_error:.1e}"
        )


if __name__ == "__main__":
    main()
