"""`targets_not_normalized`: regression targets far off the untrained outputs' scale."""

import keras
import numpy as np
import pytest

from trainwatch.rules import targets
from trainwatch.rules.targets import is_regression_loss, target_scale
from trainwatch.sanity import sanity_check


def house_prices(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = 250_000 + 60_000 * x[:, :1] + rng.normal(0, 5_000, size=(n, 1))
    return x, y.astype("float32")


def test_large_targets_are_flagged_with_their_numbers():
    _, y = house_prices()
    finding = target_scale(y, np.full_like(y, 0.4), "mean_squared_error")
    assert finding.code == "targets_not_normalized"
    assert finding.severity == "warning"
    assert "mean 2.5" in finding.message and "RMS 0.4" in finding.message
    assert "Standardize the targets" in finding.advice


def test_tiny_targets_are_flagged():
    y = np.random.default_rng(1).normal(0, 1e-4, size=(64, 1))
    finding = target_scale(y, np.full_like(y, 0.5), "mae")
    assert finding.code == "targets_not_normalized"
    assert "tiny" in finding.message


@pytest.mark.parametrize(
    "targets, outputs",
    [
        ("standardized", "untrained"),
        ("large", "already_at_their_scale"),  # e.g. an output Rescaling
        ("all_zero", "untrained"),
        ("with_nan", "untrained"),
    ],
)
def test_targets_the_model_can_reach_are_not_flagged(targets, outputs):
    rng = np.random.default_rng(2)
    y = {
        "standardized": rng.normal(size=(64, 1)),
        "large": 300 + 50 * rng.normal(size=(64, 1)),
        "all_zero": np.zeros((64, 1)),
        "with_nan": np.where(np.arange(64)[:, None] == 3, np.nan, 1e4),
    }[targets]
    y_pred = 0.5 * rng.normal(size=(64, 1))
    if outputs == "already_at_their_scale":
        y_pred = 100 * y_pred + 250
    assert target_scale(y, y_pred, "mse") is None


def test_regression_loss_names():
    assert all(map(is_regression_loss, ["mse", "MeanSquaredError", "huber_loss"]))
    assert not is_regression_loss("sparse_categorical_crossentropy")


def regressor(loss):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="adam", loss=loss)
    return model


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
def test_sanity_check_names_raw_scale_targets(loss):
    x, y = house_prices()
    report = sanity_check(regressor(loss), x, y, checks=("initial_loss",), verbose=0)
    [finding] = [f for f in report.findings if f.code == "targets_not_normalized"]
    assert "250" not in finding.advice and "mean 2.5" in finding.message
    # the loss matched mean(y**2): the scale is the finding, not the initial loss
    assert "initial_loss_unexpected" not in {f.code for f in report.findings}

    standardized = (y - y.mean()) / y.std()
    report = sanity_check(
        regressor(loss), x, standardized, checks=("initial_loss",), verbose=0
    )
    assert "targets_not_normalized" not in {f.code for f in report.findings}


@pytest.mark.parametrize(
    "activation, scaled, code",
    [
        ("sigmoid", "to_unit", None),
        ("sigmoid", "standardized", "targets_out_of_range"),
        ("tanh", "standardized", "targets_out_of_range"),
        ("relu", "standardized", "targets_out_of_range"),
        (None, "standardized", None),
    ],
)
@pytest.mark.parametrize("functional", [True, False])
def test_an_output_activation_that_cannot_reach_the_targets(
    activation, scaled, code, functional
):
    x, y = house_prices()
    y = (y - y.min()) / (y.max() - y.min()) if scaled == "to_unit" else y
    y = (y - y.mean()) / y.std() if scaled == "standardized" else y
    keras.utils.set_random_seed(0)
    head = keras.layers.Dense(1, activation=activation, name="head")
    if functional:
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(16, activation="relu")(inputs)
        model = keras.Model(inputs, head(hidden))
    else:
        model = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), head]
        )
    model.compile(optimizer="adam", loss="mse")
    report = sanity_check(model, x, y, checks=("initial_loss",), verbose=0)
    found = [f for f in report.findings if f.code.startswith("targets_")]
    if code is None:
        assert found == []
        return
    [finding] = found
    assert finding.code == code and finding.severity == "error"
    assert finding.where == head.path
    assert f"goes through {activation}" in finding.message
    assert "activation=None" in finding.advice


def test_class_ids_are_told_from_counts():
    ids = np.arange(64.0) % 10
    finding = targets.class_ids(ids, np.zeros((64, 1)), "mse", where="m/out")
    assert finding.code == "targets_are_class_ids" and finding.where == "m/out"
    assert "integers 0 to 9, every one present, 6 to 7 times" in finding.message
    assert "a 0 mistaken for a 9 costs 81 times" in finding.message
    assert "sparse_categorical_crossentropy" in finding.advice
    # labels starting at 1, as an (n, 1) column
    assert targets.class_ids((ids + 1)[:, None], np.zeros((64, 1)), "mse")
    rng = np.random.default_rng(1)
    quiet = {
        "counts": rng.poisson(3.0, 64),  # peaked: rarest 0.07 of the commonest
        "gap": np.where(ids == 4, 5.0, ids),
        "two classes": ids % 2,
        "fractions": ids + 0.5,
        "real": rng.normal(size=64),
        "from 2": ids + 2,
    }
    for name, values in quiet.items():
        assert targets.class_ids(values, np.zeros((64, 1)), "mse") is None, name
    # one output per class: not regressed on a single output
    assert targets.class_ids(ids, np.zeros((64, 10)), "mse") is None


def test_sanity_check_names_class_ids_regressed_with_mse():
    x, _ = house_prices()
    ids = (np.arange(len(x)) % 10).astype("float32")
    report = sanity_check(regressor("mse"), x, ids, checks=("initial_loss",), verbose=0)
    assert "targets_are_class_ids" in {f.code for f in report.findings}, str(report)
    y = np.random.default_rng(0).normal(size=len(x)).astype("float32")
    report = sanity_check(regressor("mse"), x, y, checks=("initial_loss",), verbose=0)
    assert "targets_are_class_ids" not in {f.code for f in report.findings}
