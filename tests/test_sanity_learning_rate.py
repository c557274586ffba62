"""The overfit check tells a learning rate too high from one too low.

A loss that rises (or becomes nan) at the user's rate means the rate is too
high: lower rates are tried, never a higher one, and the advice does not blame
a low rate. A loss that falls too slowly still gets one attempt at 10x.
"""

import keras
import numpy as np
import pytest

from trainwatch.sanity import sanity_check

FEATURES, CLASSES = 12, 4
# 45 steps: enough for SGD at 1 to overfit the tiny MLP (24-31 steps on the
# three backends). Few steps: PyTorch's `train_on_batch` is slow on a CPU.
OVERFIT = {"checks": ("overfit",), "overfit_steps": 45, "verbose": 0}


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=n)
    return x, y


def _mlp(hidden=32, trainable=True):
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(hidden, activation="relu", trainable=trainable),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )


def _rates(overfit):
    return [a["learning_rate"] for a in overfit.values["attempts"]]


def _sgd(rate):
    return keras.optimizers.SGD(rate)


def _wrapped_sgd(rate):
    return keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(rate))


def _scheduled_sgd(rate):
    schedule = keras.optimizers.schedules.ExponentialDecay(rate, 1000, 0.9)
    return keras.optimizers.SGD(schedule)


@pytest.mark.parametrize("optimizer", [_sgd, _wrapped_sgd, _scheduled_sgd])
def test_rate_too_high_is_lowered_and_reported_as_loss_diverging(optimizer):
    """SGD at 10 blows the tiny MLP up (dead ReLUs, a saturated softmax, or
    nan on TensorFlow); at 1 it memorizes the 20 examples. The check tries 1,
    not 100, and says the rate is too high, with the numbers."""
    x, y = _data()
    model = _mlp()
    model.compile(optimizer(10.0), "sparse_categorical_crossentropy")
    report = sanity_check(model, x, y, **OVERFIT)
    overfit = report["overfit"]
    assert _rates(overfit) == pytest.approx([10.0, 1.0]), overfit.summary
    first, second = overfit.values["attempts"]
    assert first["rose"] and not first["reached"]
    assert not second["rose"] and second["reached"]
    assert overfit.status == "failed" and not report.passed
    assert [f.code for f in report.findings] == ["loss_diverging"]
    finding = report.findings[0]
    assert "It overfits at lr 1" in finding.message
    assert "but not at your lr 10" in finding.message
    assert "likely too high" in finding.message
    assert "Lower the learning rate about 10x (from 10 to ~1)" in finding.advice
    assert "yours is too high" in overfit.summary
    if optimizer is _scheduled_sgd:
        assert "lr 1 (0.1x the schedule's first rate)" in overfit.summary
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0


def test_rate_too_high_at_every_rate_tried_is_not_called_too_low():
    """SGD at 1e4 diverges, and so do 1e3 and 100: three attempts, each lower,
    each ended early (its loss stuck for 50 steps, or nan); the advice says
    the loss rose at every rate and does not suggest a rate too low."""
    x, y = _data()
    model = _mlp()
    model.compile(_sgd(1e4), "sparse_categorical_crossentropy")
    report = sanity_check(model, x, y, **{**OVERFIT, "overfit_steps": 60})
    overfit = report["overfit"]
    assert _rates(overfit) == pytest.approx([1e4, 1e3, 1e2]), overfit.summary
    attempts = overfit.values["attempts"]
    assert all(a["rose"] and not a["reached"] for a in attempts)
    assert all(a["steps"] < 60 for a in attempts), [a["steps"] for a in attempts]
    assert [f.code for f in report.findings] == ["cannot_overfit_small_subset"]
    finding = report.findings[0]
    assert "too low" not in finding.advice
    assert "rose at every rate tried (lr 1e+04, lr 1e+03, lr 100)" in finding.advice
    assert "at lr 1e+04 the loss" in finding.message


def test_rate_too_high_on_a_model_that_cannot_overfit_names_both():
    """A frozen one-unit bottleneck cannot memorize at any rate; at SGD 10 its
    loss also rises (Adam at 10). The lower rate is tried, and the advice names the rate
    that diverged, the one that fell without reaching the target, and the
    usual causes; no rate too low."""
    x, y = _data()
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(1, trainable=False),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(10.0), "sparse_categorical_crossentropy")
    report = sanity_check(model, x, y, **{**OVERFIT, "overfit_steps": 30})
    overfit = report["overfit"]
    assert _rates(overfit) == pytest.approx([10.0, 1.0]), overfit.summary
    assert [a["rose"] for a in overfit.values["attempts"]] == [True, False]
    assert [f.code for f in report.findings] == ["cannot_overfit_small_subset"]
    advice = report.findings[0].advice
    assert "too high (the loss rose at lr 10)" in advice
    assert "did not reach the target either (lr 1)" in advice
    assert "too little capacity" in advice and "too low" not in advice


def test_healthy_model_and_slow_rate_keep_their_attempts():
    """A rate that reaches the target trains once; a rate whose loss falls
    too slowly (never rising) is tried once at 10x, and the advice may then
    blame a low rate."""
    x, y = _data()
    model = _mlp()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    overfit = sanity_check(model, x, y, **OVERFIT)["overfit"]
    assert overfit.status == "passed" and _rates(overfit) == pytest.approx([1e-2])

    model.compile(_sgd(1e-3), "sparse_categorical_crossentropy")
    report = sanity_check(model, x, y, **{**OVERFIT, "overfit_steps": 20})
    assert _rates(report["overfit"]) == pytest.approx([1e-3, 1e-2])
    assert not any(a["rose"] for a in report["overfit"].values["attempts"])
    assert report.findings[0].advice.endswith("or too low a learning rate.")


@pytest.mark.parametrize("boost", [0.1, -10, "10", True])
def test_learning_rate_boost_must_be_at_least_one(boost):
    x, y = _data()
    model = _mlp()
    model.compile(_sgd(0.1), "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=f"Received: learning_rate_boost={boost!r}"):
        sanity_check(model, x, y, learning_rate_boost=boost, **OVERFIT)


def test_no_further_attempt_without_a_boost():
    """`learning_rate_boost=None` (or 1): one attempt, even where the loss
    rose; the advice still says the rate is too high."""
    x, y = _data()
    model = _mlp()
    model.compile(_sgd(10.0), "sparse_categorical_crossentropy")
    for boost in (None, 1):
        options = {**OVERFIT, "overfit_steps": 20, "learning_rate_boost": boost}
        report = sanity_check(model, x, y, **options)
        assert _rates(report["overfit"]) == pytest.approx([10.0])
        assert [f.code for f in report.findings] == ["cannot_overfit_small_subset"]
        assert "The loss rose at your rate (lr 10)" in report.findings[0].advice
