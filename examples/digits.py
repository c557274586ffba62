"""Train an MLP on scikit-learn's digits with trainwatch watching.

The 8x8 digits ship with scikit-learn, so nothing is downloaded. Inputs are
standardized with training-set statistics (reused on the validation split),
the model uses He initialization for its ReLU layers, and Adam at 1e-3: a
healthy run, about which trainwatch should find nothing to complain.

Run:
    KERAS_BACKEND=jax python examples/digits.py --log-dir runs/digits
    tensorboard --logdir runs/digits
    trainwatch report runs/digits
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import trainwatch  # noqa: E402


def load_digits_split(seed=0, validation_fraction=0.25):
    """Standardized digits: `(x_train, y_train), (x_val, y_val)`, float32."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype("float32")
    y = digits.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_val = int(len(x) * validation_fraction)
    x_train, y_train, x_val, y_val = x[n_val:], y[n_val:], x[:n_val], y[:n_val]
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0) + 1e-6  # two border pixels are always 0
    return ((x_train - mean) / std, y_train), ((x_val - mean) / std, y_val)


def build_model(hidden=(128, 64), learning_rate=1e-3):
    """A ReLU MLP for 64 inputs and 10 classes, He-initialized, Adam."""
    layers = [keras.Input((64,))]
    for units in hidden:
        layers.append(
            keras.layers.Dense(units, activation="relu", kernel_initializer="he_normal")
        )
    layers.append(keras.layers.Dense(10, activation="softmax"))
    model = keras.Sequential(layers, name="digits_mlp")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-dir", default="runs/digits")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_val, y_val) = load_digits_split()
    model = build_model(learning_rate=args.learning_rate)
    watch = trainwatch.TrainWatch(
        args.log_dir, probe=(x_train[:64], y_train[:64]), image_shape=(8, 8)
    )
    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=args.epochs,
        batch_size=args.batch_size,
        callbacks=[watch],
        verbose=2,
    )
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x_val, y_val, verbose=0)
    print(
        f"\nTrained on {keras.backend.backend()} in {seconds:.1f} s; "
        f"validation accuracy {accuracy:.3f}."
    )
    print(trainwatch.read_report(args.log_dir))
    print("\nOpen the logs in TensorBoard:")
    print(f"    .venv/bin/tensorboard --logdir {args.log_dir}")
    print("or read them in the terminal:")
    print(f"    .venv/bin/trainwatch report {args.log_dir}")


if __name__ == "__main__":
    main()
