"""Expected initial losses, tolerances and label/output checks (numpy only)."""

import keras
import numpy as np
import pytest

from trainwatch.numerics import expected_loss as el


def test_expected_values():
    assert el.expected_initial_loss(el.CATEGORICAL, num_classes=10) == pytest.approx(
        2.302585, abs=1e-6
    )
    assert el.expected_initial_loss(el.SPARSE_CATEGORICAL, num_classes=2) == (
        pytest.approx(np.log(2))
    )
    assert el.expected_initial_loss(el.BINARY) == pytest.approx(0.693147, abs=1e-6)
    y = np.array([1.0, -1.0, 3.0, -3.0])
    assert el.expected_initial_loss(el.MEAN_SQUARED_ERROR, y_true=y) == 5.0


def test_expected_value_errors_name_the_argument():
    with pytest.raises(ValueError, match="Received: kind='hinge'"):
        el.expected_initial_loss("hinge")
    with pytest.raises(ValueError, match="Received: num_classes=None"):
        el.expected_initial_loss(el.CATEGORICAL)
    with pytest.raises(ValueError, match="Received: y_true=None"):
        el.expected_initial_loss(el.MEAN_SQUARED_ERROR)


@pytest.mark.parametrize(
    "kind, y, from_logits, keras_loss",
    [
        (el.SPARSE_CATEGORICAL, np.array([0, 2, 1]), True, "sparse"),
        (el.CATEGORICAL, np.eye(3)[[0, 2, 1]], False, "categorical"),
        (el.BINARY, np.array([[1.0], [0.0], [1.0]]), True, "binary"),
        (el.MEAN_SQUARED_ERROR, np.array([[0.5], [-1.0], [2.0]]), False, "mse"),
    ],
)
def test_per_example_loss_matches_keras(kind, y, from_logits, keras_loss):
    rng = np.random.default_rng(0)
    width = 3 if kind in (el.CATEGORICAL, el.SPARSE_CATEGORICAL) else 1
    y_pred = rng.normal(size=(3, width))
    if not from_logits and kind == el.CATEGORICAL:
        y_pred = np.exp(y_pred) / np.exp(y_pred).sum(-1, keepdims=True)
    fn = {
        "sparse": keras.losses.sparse_categorical_crossentropy,
        "categorical": keras.losses.categorical_crossentropy,
        "binary": keras.losses.binary_crossentropy,
        "mse": keras.losses.mean_squared_error,
    }[keras_loss]
    kwargs = {} if keras_loss == "mse" else {"from_logits": from_logits}
    expected = keras.ops.convert_to_numpy(fn(y, y_pred.astype("float32"), **kwargs))
    np.testing.assert_allclose(
        el.per_example_loss(kind, y, y_pred, from_logits), expected, rtol=1e-5
    )


def test_zero_logits_give_exactly_the_expected_loss():
    y = np.array([0, 1, 2, 3, 4])
    check = el.initial_loss_expectation(
        el.SPARSE_CATEGORICAL, y, np.zeros((5, 5)), True
    )
    losses = el.per_example_loss(el.SPARSE_CATEGORICAL, y, np.zeros((5, 5)), True)
    assert check.expected == pytest.approx(np.log(5))
    np.testing.assert_allclose(losses, np.log(5))
    assert check.output_spread == 0.0 and check.noise == 0.0
    assert check.tolerance == pytest.approx(0.1 * np.log(5))


def test_second_order_expansion_predicts_moderate_spread():
    # ln(C) + var_c(z) / 2 is what random logits of std 0.5 give on average.
    rng = np.random.default_rng(1)
    z = rng.normal(scale=0.5, size=(20000, 10))
    y = rng.integers(0, 10, size=20000)
    loss = el.per_example_loss(el.SPARSE_CATEGORICAL, y, z, True).mean()
    check = el.initial_loss_expectation(el.SPARSE_CATEGORICAL, y, z, True)
    assert loss == pytest.approx(np.log(10) + check.output_spread / 2, abs=0.01)
    assert abs(loss - check.expected) < check.tolerance


def test_spread_allowance_is_capped():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 10, size=256)
    small = el.initial_loss_expectation(
        el.SPARSE_CATEGORICAL, y, np.zeros((256, 10)), 1
    )
    huge_logits = rng.normal(scale=10.0, size=(256, 10))
    huge = el.initial_loss_expectation(el.SPARSE_CATEGORICAL, y, huge_logits, True)
    assert small.spread_allowance == 0.0
    assert huge.spread_allowance == pytest.approx(0.5)  # cap 1.0, halved
    loss = el.per_example_loss(el.SPARSE_CATEGORICAL, y, huge_logits, True).mean()
    assert abs(loss - huge.expected) > huge.tolerance


def test_probabilities_are_read_as_logits_of_log_probabilities():
    p = np.full((4, 10), 0.1)
    check = el.initial_loss_expectation(el.CATEGORICAL, np.eye(10)[:4], p, False)
    assert check.output_spread == pytest.approx(0.0, abs=1e-12)


def test_mean_squared_error_assumption_and_allowance():
    y = np.array([[2.0], [-2.0], [2.0], [-2.0]])
    check = el.initial_loss_expectation(
        el.MEAN_SQUARED_ERROR, y, np.ones((4, 1)), False
    )
    assert check.expected == 4.0
    assert check.spread_allowance == 1.0  # mean squared output, below mean(y**2)
    assert "zero-mean output" in check.assumption


@pytest.mark.parametrize(
    "kind, y, num_classes, fragment",
    [
        (el.SPARSE_CATEGORICAL, np.eye(4), 4, "look one-hot"),
        (el.SPARSE_CATEGORICAL, np.array([1, 2, 3, 4]), 4, "[0, 3]"),
        (el.SPARSE_CATEGORICAL, np.array([0.5, 1.0]), 4, "fractions"),
        (el.CATEGORICAL, np.array([0, 1, 2]), 3, "sparse_categorical_crossentropy"),
        (el.CATEGORICAL, np.array([[0.5, 0.9]]), 2, "distribution"),
        (el.BINARY, np.array([-1.0, 1.0]), 1, "-1/+1"),
    ],
)
def test_label_problems(kind, y, num_classes, fragment):
    problems = el.label_problems(kind, y, num_classes)
    assert len(problems) == 1 and fragment in problems[0]


@pytest.mark.parametrize(
    "kind, y, num_classes",
    [
        (el.SPARSE_CATEGORICAL, np.array([0, 3, 1]), 4),
        (el.CATEGORICAL, np.eye(3), 3),
        (el.CATEGORICAL, np.full((2, 4), 0.25), 4),
        (el.BINARY, np.array([0.0, 1.0, 0.3]), 1),
        (el.MEAN_SQUARED_ERROR, np.array([-5.0, 7.0]), None),
    ],
)
def test_good_labels_have_no_problems(kind, y, num_classes):
    assert el.label_problems(kind, y, num_classes) == []


def test_output_problems():
    softmax = np.full((8, 4), 0.25)
    logits = np.random.default_rng(3).normal(size=(8, 4))
    assert "probabilities" in el.output_problems(el.CATEGORICAL, softmax, True)[0]
    assert el.output_problems(el.CATEGORICAL, logits, True) == []
    assert "outside [0, 1]" in el.output_problems(el.CATEGORICAL, logits, False)[0]
    assert el.output_problems(el.CATEGORICAL, softmax, False) == []
    sigmoid = np.full((32, 1), 0.5)
    assert "sigmoid" in el.output_problems(el.BINARY, sigmoid, True)[0]
    assert el.output_problems(el.MEAN_SQUARED_ERROR, logits, False) == []


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize(
    "kind, keras_loss",
    [
        (el.BINARY, keras.losses.BinaryCrossentropy),
        (el.CATEGORICAL, keras.losses.CategoricalCrossentropy),
    ],
)
def test_loss_floor_is_keras_loss_at_the_best_prediction(kind, keras_loss, smoothing):
    # Soft targets (rows of probabilities): Keras's loss at the prediction
    # equal to the (smoothed) targets is the floor, and random predictions
    # stay above it.
    rng = np.random.default_rng(1)
    raw = rng.uniform(size=(6, 4))
    y = raw if kind == el.BINARY else raw / raw.sum(-1, keepdims=True)
    floor = el.loss_floor(kind, y, smoothing)
    assert floor > 0.1
    classes = 2.0 if kind == el.BINARY else y.shape[-1]
    best = y * (1 - smoothing) + smoothing / classes
    loss = keras_loss(label_smoothing=smoothing)
    at_best = float(keras.ops.convert_to_numpy(loss(y, best.astype("float32"))))
    assert at_best == pytest.approx(floor, rel=1e-4)
    for _ in range(5):
        other = rng.uniform(0.05, 0.95, size=y.shape)
        if kind == el.CATEGORICAL:
            other /= other.sum(-1, keepdims=True)
        above = float(keras.ops.convert_to_numpy(loss(y, other.astype("float32"))))
        assert above > floor


def test_hard_targets_and_squared_error_have_a_floor_of_zero():
    assert el.loss_floor(el.CATEGORICAL, np.eye(4)[[0, 3, 1]]) == 0.0
    assert el.loss_floor(el.BINARY, np.array([[1.0], [0.0]])) == 0.0
    assert el.loss_floor(el.SPARSE_CATEGORICAL, np.array([0, 3, 1])) == 0.0
    assert el.loss_floor(el.MEAN_SQUARED_ERROR, np.array([[0.3], [2.0]])) == 0.0
    # smoothing one-hot labels over 10 classes: -(0.82 ln 0.82 + 9 · 0.02 ln 0.02)
    smoothed = el.loss_floor(el.CATEGORICAL, np.eye(10)[[3, 7]], 0.2)
    assert smoothed == pytest.approx(-(0.82 * np.log(0.82) + 0.18 * np.log(0.02)))
