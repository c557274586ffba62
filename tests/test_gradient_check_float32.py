"""The float32 fallback judges by what float32 can resolve.

float32 centered differences resolve relative errors of ~1e-2 at best, and the
float32 step (1e-2) crosses ReLU kinks that a float64 step would not: a
correct model must not come out suspicious or wrong, a gradient off by a
factor 2 still must come out wrong. The fallback is forced here by making the
float64 copy unavailable, as an unregistered custom layer does.
"""

import keras
import numpy as np
import pytest
from test_gradient_check import (  # noqa: F401 (a fixture)
    GradScaledDense,
    _one_torch_thread,
)

from trainwatch.backends import float64
from trainwatch.gradient_check import check_gradients
from trainwatch.numerics.relative_error import THRESHOLDS, judge_line

F32 = THRESHOLDS["float32"]


@pytest.fixture
def no_float64(monkeypatch):
    def unavailable(model):
        raise float64.Float64Unavailable("no float64 copy (forced by the test)")

    monkeypatch.setattr(float64, "float64_shadow", unavailable)


def relu_mlp(middle=None, seed=8):
    """A ReLU MLP with fixed weights; seed 8 crossed a kink at the float32 step."""
    middle = middle or keras.layers.Dense(12, activation="relu")
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(12, activation="relu"),
            middle,
            keras.layers.Activation("relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(seed)
    model.set_weights(
        [
            rng.normal(
                scale=0.3 if w.ndim == 1 else 1 / np.sqrt(w.shape[0]), size=w.shape
            ).astype("float32")
            for w in model.get_weights()
        ]
    )
    rng = np.random.default_rng(100 + seed)
    x = rng.normal(size=(8, 10)).astype("float32")
    return model, x, rng.integers(0, 3, size=8)


def bad_findings(result):
    return [
        f
        for f in result.findings
        if f.code in ("gradient_wrong", "gradient_suspicious")
    ]


def test_correct_relu_model_is_not_wrong_in_float32(no_float64):
    model, x, y = relu_mlp()
    result = check_gradients(model, x, y)
    assert result.precision == "float32"
    assert "No float64 check possible" in result.message
    # Before: the middle kernel's direction probe crossed kinks at the float32
    # step, relative error 0.32, reported `gradient_wrong` on every backend.
    assert not bad_findings(result), str(result)
    assert result.passed, str(result)
    middle = result.variables[2]
    assert middle.verdict == "ok", str(result)
    assert any(line.kink for line in middle.lines), str(result)


def test_gradient_off_by_a_factor_two_is_wrong_in_float32(no_float64):
    model, x, y = relu_mlp(GradScaledDense(12, scale=2.0, name="doubled"))
    result = check_gradients(model, x, y)
    assert result.precision == "float32"
    bad = next(v.path for v in model.trainable_variables if "doubled/kernel" in v.path)
    assert {f.where for f in bad_findings(result)} == {bad}, str(result)
    [finding] = bad_findings(result)
    assert finding.code == "gradient_wrong"
    check = next(v for v in result.variables if v.path == bad)
    assert check.relative_error == pytest.approx(0.5, abs=0.1)


def test_fallback_uses_a_float32_step_not_the_float64_one_asked(no_float64):
    model, x, y = relu_mlp()
    result = check_gradients(model, x, y, relative_step=1e-6, coordinates=2)
    assert all(v.step >= 1e-2 for v in result.variables), str(result)
    assert "relative_step=1e-06" in result.message
    assert not bad_findings(result), str(result)


def test_float32_bands_start_where_float32_resolves():
    """A 7e-3 mismatch "beyond" a float32 estimate is below float32's resolution."""
    # Before: float32 called 1e-4...1e-2 suspicious (the float64 bands scaled).
    assert judge_line(1.0, 1.007, 7e-3, 1e-3, False, False, F32)[0] == "ok"
    assert judge_line(1.0, 1.05, 5e-2, 1e-3, False, False, F32)[0] == "suspicious"
    assert judge_line(1.0, 2.0, 1.0, 1e-2, False, False, F32)[0] == "wrong"
    assert judge_line(1.0, 0.5, -0.5, 1e-2, False, False, F32)[0] == "wrong"
