"""Classic training pathologies on scikit-learn's digits, and what trainwatch says.

Each case is a small model on the 8x8 digits (nothing is downloaded) with one
thing deliberately wrong; `healthy` is the well-set-up run of
`examples/digits.py`. Train one, and read trainwatch's findings:

    KERAS_BACKEND=jax python examples/pathologies.py lr_too_high --log-dir runs/lr
    KERAS_BACKEND=jax python examples/pathologies.py all --log-dir runs/pathologies

| case | what is wrong | finding |
| --- | --- | --- |
| `healthy` | nothing | no warning or error |
| `lr_too_high` | Adam at learning rate 10 | `loss_diverging` / `update_ratio_high` |
| `lr_too_low` | Adam at learning rate 1e-6 | `update_ratio_low` / `loss_plateau` |
| `dead_relu` | first ReLU layer's bias at -10 | `dead_units` |
| `saturated_tanh` | tanh layers initialized with stddev 3 | `saturated_units` |
| `vanishing_gradients` | ten sigmoid layers | `vanishing_gradients` |
| `overfitting` | 50 training examples, a big MLP | `overfitting` |
| `underfitting` | a one-unit bottleneck | `underfitting` |
| `bad_initial_loss` | output bias drawn with stddev 10 | `initial_loss_unexpected` |
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import trainwatch  # noqa: E402


def _load_digits_example():
    """`examples/digits.py` as a module (examples are not a package)."""
    name = "trainwatch_example_digits"
    if name in sys.modules:
        return sys.modules[name]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


digits_example = _load_digits_example()
load_digits_split = digits_example.load_digits_split


class Case:
    """One training run: the model, its data and how long to train.

    `expected` holds the finding codes of which trainwatch should raise at
    least one (empty for the healthy run, which should raise no warning or
    error).
    """

    def __init__(self, name, model, train, validation, epochs, batch_size, expected):
        self.name = name
        self.model = model
        self.train = train
        self.validation = validation
        self.epochs = epochs
        self.batch_size = batch_size
        self.expected = expected

    @property
    def probe(self):
        x, y = self.train
        return x[:64], y[:64]


def _compile(model, learning_rate=1e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _mlp(hidden, activation="relu", kernel_initializer="he_normal", name="mlp"):
    layers = [keras.Input((64,))]
    for units in hidden:
        layers.append(
            keras.layers.Dense(
                units, activation=activation, kernel_initializer=kernel_initializer
            )
        )
    layers.append(keras.layers.Dense(10, activation="softmax"))
    return keras.Sequential(layers, name=name)


def _case(name, model, expected, epochs, batch_size=32, n_train=None):
    train, validation = load_digits_split()
    if n_train is not None:
        train = (train[0][:n_train], train[1][:n_train])
    return Case(name, model, train, validation, epochs, batch_size, expected)


def healthy(epochs=5):
    """The run of `examples/digits.py`: standardized inputs, He init, Adam 1e-3."""
    return _case("healthy", digits_example.build_model(), (), epochs)


def lr_too_high(epochs=4):
    """Adam at learning rate 10: every step overshoots."""
    model = _compile(_mlp((128, 64), name="lr_too_high"), learning_rate=10.0)
    return _case("lr_too_high", model, ("loss_diverging", "update_ratio_high"), epochs)


def lr_too_low(epochs=4):
    """Adam at learning rate 1e-6: the weights barely move."""
    model = _compile(_mlp((128, 64), name="lr_too_low"), learning_rate=1e-6)
    return _case("lr_too_low", model, ("update_ratio_low", "loss_plateau"), epochs)


def dead_relu(epochs=2):
    """A first ReLU layer whose bias of -10 keeps every unit below zero."""
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(
                128,
                activation="relu",
                kernel_initializer="he_normal",
                bias_initializer=keras.initializers.Constant(-10.0),
            ),
            keras.layers.Dense(64, activation="relu", kernel_initializer="he_normal"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="dead_relu",
    )
    return _case("dead_relu", _compile(model), ("dead_units",), epochs)


def saturated_tanh(epochs=2):
    """tanh layers with weights of stddev 3: pre-activations far beyond +-2."""
    init = keras.initializers.RandomNormal(stddev=3.0, seed=0)
    model = _compile(_mlp((128, 64), "tanh", init, name="saturated_tanh"))
    return _case("saturated_tanh", model, ("saturated_units",), epochs)


def vanishing_gradients(epochs=2):
    """Ten sigmoid layers: each multiplies the gradient by at most 1/4."""
    model = _compile(
        _mlp((64,) * 10, "sigmoid", "glorot_uniform", name="vanishing_gradients")
    )
    return _case("vanishing_gradients", model, ("vanishing_gradients",), epochs)


def overfitting(epochs=20):
    """A big MLP on 50 training examples, trained for many epochs."""
    model = _compile(_mlp((512, 512), name="overfitting"))
    return _case(
        "overfitting", model, ("overfitting",), epochs, batch_size=10, n_train=50
    )


def underfitting(epochs=5):
    """A one-unit bottleneck: ten classes squeezed through one number."""
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(1, activation="relu", kernel_initializer="he_normal"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="underfitting",
    )
    return _case("underfitting", _compile(model), ("underfitting",), epochs)


def bad_initial_loss(epochs=1):
    """An output bias drawn with stddev 10: confident, wrong first predictions."""
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu", kernel_initializer="he_normal"),
            keras.layers.Dense(
                10,
                activation="softmax",
                bias_initializer=keras.initializers.RandomNormal(stddev=10.0, seed=0),
            ),
        ],
        name="bad_initial_loss",
    )
    return _case(
        "bad_initial_loss", _compile(model), ("initial_loss_unexpected",), epochs
    )


CASES = {
    f.__name__: f
    for f in (
        healthy,
        lr_too_high,
        lr_too_low,
        dead_relu,
        saturated_tanh,
        vanishing_gradients,
        overfitting,
        underfitting,
        bad_initial_loss,
    )
}


def train(case, watch, verbose=0):
    """Fits `case.model` with `watch`; returns the Keras `History`."""
    return case.model.fit(
        *case.train,
        validation_data=case.validation,
        epochs=case.epochs,
        batch_size=case.batch_size,
        callbacks=[watch],
        verbose=verbose,
    )


def run(name, log_dir, epochs=None):
    """Trains case `name` with a `TrainWatch` into `log_dir`; prints the report."""
    keras.utils.set_random_seed(0)
    case = CASES[name]() if epochs is None else CASES[name](epochs=epochs)
    watch = trainwatch.TrainWatch(log_dir, probe=case.probe, image_shape=(8, 8))
    print(f"== {name}: {CASES[name].__doc__.splitlines()[0]}")
    train(case, watch, verbose=2)
    print(trainwatch.read_report(log_dir))
    codes = {f.code for f in watch.context.findings}
    if case.expected:
        seen = sorted(codes & set(case.expected))
        print(f"Expected one of {list(case.expected)}; raised: {seen or 'none'}.\n")
    return watch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=[*CASES, "all"])
    parser.add_argument("--log-dir", default=None, help="defaults to runs/NAME")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args(argv)
    names = list(CASES) if args.name == "all" else [args.name]
    base = args.log_dir or os.path.join("runs", args.name)
    for name in names:
        log_dir = os.path.join(base, name) if args.name == "all" else base
        run(name, log_dir, epochs=args.epochs)


if __name__ == "__main__":
    main()
