"""What `Distributions` costs: one probe, and a whole `fit`, against references.

1. One probe (`measure_distributions`: a stateless forward and backward pass
   with every layer captured, then the statistics) and one probe with its
   histograms and scalars written, against one stateless forward and backward
   pass on the same batch (`model_functions.compute_gradients`) and against
   Keras's own `train_on_batch`.
2. `fit` at defaults with `Distributions(histogram_freq=1)`, against no
   callback and, on TensorFlow, `keras.callbacks.TensorBoard(histogram_freq=1)`.
   Also `FirstLayerImages` alone. Besides the wall time of `fit` (noisy on a
   shared machine), the time spent inside each callback's hooks is summed:
   the callbacks' own cost, compared directly.

Run by hand, one backend at a time; nothing here is asserted:

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/bench_distributions.py
    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_distributions.py --epochs 5
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from trainwatch.backends import model_functions as mf  # noqa: E402
from trainwatch.callbacks.distributions import (  # noqa: E402
    Distributions,
    measure_distributions,
)
from trainwatch.callbacks.first_layer_images import FirstLayerImages  # noqa: E402
from trainwatch.tensorboard import SummaryWriter  # noqa: E402


def data():
    digits = load_digits()
    x = digits.data.astype("float32")
    std = x.std(axis=0)
    std[std == 0] = 1
    x = (x - x.mean(axis=0)) / std
    return x.reshape(-1, 8, 8, 1), digits.target


def make_model(kind):
    keras.utils.set_random_seed(0)
    if kind == "mlp":
        layers = [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    else:
        layers = [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    model = keras.Sequential(layers)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def median_seconds(fn, repeats):
    fn()  # warm-up: first-call tracing and compilation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_probe(kind, x, y, repeats):
    model = make_model(kind)
    model.train_on_batch(x[:64], y[:64])  # build the optimizer and train step
    xb, yb = mf.convert_batch(x[:64]), mf.convert_batch(y[:64])
    log_dir = tempfile.mkdtemp()
    callback = Distributions(log_dir, probe=(x[:64], y[:64]), verbose=0)
    callback.set_model(model)

    forward_backward = median_seconds(
        lambda: mf.compute_gradients(model, xb, yb), repeats
    )
    probe = median_seconds(
        lambda: measure_distributions(model, x[:64], y[:64]), repeats
    )
    probe_and_write = median_seconds(callback._probe, repeats)
    train_step = median_seconds(lambda: model.train_on_batch(x[:64], y[:64]), repeats)
    print(
        f"{kind}: forward+backward {forward_backward * 1e3:.1f} ms | probe "
        f"{probe * 1e3:.1f} ms ({probe / forward_backward:.2f}x) | probe + write "
        f"{probe_and_write * 1e3:.1f} ms ({probe_and_write / forward_backward:.2f}x)"
        f" | train_on_batch (compiled) {train_step * 1e3:.1f} ms"
    )


_HOOKS = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
)


def time_hooks(callback):
    """Adds up the wall time spent in `callback`'s hooks (`callback.hook_seconds`)."""
    callback.hook_seconds = 0.0
    for name in _HOOKS:
        original = getattr(callback, name)

        def timed(*args, _original=original, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                callback.hook_seconds += time.perf_counter() - start

        setattr(callback, name, timed)
    return callback


def fit_seconds(kind, x, y, epochs, callbacks):
    """Wall time of `fit`, and the time spent inside the callbacks' hooks."""
    model = make_model(kind)
    callbacks = [time_hooks(c) for c in callbacks]
    start = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks)
    seconds = time.perf_counter() - start
    return seconds, sum(c.hook_seconds for c in callbacks)


def bench_fit(kind, x, y, epochs, repeats):
    probe = (x[:64], y[:64])
    setups = {
        "no callback": lambda d: [],
        "Distributions": lambda d: [Distributions(d, probe=probe, verbose=0)],
        "FirstLayerImages": lambda d: [FirstLayerImages(d, verbose=0)],
    }
    if keras.backend.backend() == "tensorflow":
        setups["keras TensorBoard(histogram_freq=1)"] = lambda d: [
            keras.callbacks.TensorBoard(d, histogram_freq=1)
        ]
    results = {name: [] for name in setups}
    for _ in range(repeats):  # interleaved, so machine load hits all alike
        for name, make in setups.items():
            log_dir = tempfile.mkdtemp()
            results[name].append(fit_seconds(kind, x, y, epochs, make(log_dir)))
    base = statistics.median(seconds for seconds, _ in results["no callback"])
    for name, runs in results.items():
        seconds = statistics.median(s for s, _ in runs)
        in_hooks = statistics.median(h for _, h in runs)
        print(
            f"{kind}: fit {epochs} epochs, {name}: {seconds:.2f} s "
            f"({seconds / base:.2f}x no callback), {in_hooks:.3f} s in its hooks"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fit-repeats", type=int, default=3)
    args = parser.parse_args()
    x, y = data()
    print(f"backend {keras.backend.backend()}, keras {keras.__version__}")
    with SummaryWriter(tempfile.mkdtemp()) as writer:  # import and warm the writer
        writer.histogram("warm", np.zeros(3), 0)
    for kind in ("mlp", "cnn"):
        bench_probe(kind, x, y, args.repeats)
    for kind in ("mlp", "cnn"):
        bench_fit(kind, x, y, args.epochs, args.fit_repeats)


if __name__ == "__main__":
    main()
