"""The overfit check on models with a custom `train_step`.

`train_on_batch` hands the step `(x, y, None)`, `fit` hands it `(x, y)`; a
step written `x, y = data` must get the latter on the copy. A step that does
not run on a copy falls back on private copies of the weights; a check that
cannot train at all is skipped with the cause, never a `monitor_failed`.
"""

import keras
import numpy as np

from trainwatch import sanity
from trainwatch.callbacks.sanity_check import SanityCheck
from trainwatch.sanity import sanity_check

FEATURES, CLASSES = 12, 4
FAST = {"checks": ("overfit",), "overfit_steps": 150, "verbose": 0}


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    return x, rng.integers(0, CLASSES, size=n)


class UnpacksXY(keras.Model):
    """The common pattern: `x, y = data`, then Keras's own step."""

    def train_step(self, *args):
        *state, data = args  # JAX's step takes its state first
        x, y = data
        return super().train_step(*state, (x, y))


class NeedsTeacher(UnpacksXY):
    """A step that reads an attribute set after construction (as a
    distillation model's teacher often is): a copy built from the config
    lacks it."""

    def train_step(self, *args):
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        return super().train_step(*args)


def _model(cls):
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = cls(inputs, keras.layers.Dense(CLASSES, activation="softmax")(hidden))
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    return model


def _iterations(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def test_step_unpacking_x_y_trains_on_a_copy_untouched():
    x, y = _data()
    model = _model(UnpacksXY)
    before = model.get_weights()
    overfit = sanity_check(model, x, y, **FAST)["overfit"]
    assert overfit.status == "passed", overfit.summary
    assert overfit.values["trained"] == "a copy of the model"
    assert "private copies" not in overfit.summary
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert _iterations(model) == 0
    assert "train_step" not in vars(model)  # only the copy's step was wrapped


def test_step_unpacking_x_y_in_the_callback_is_no_monitor_failure():
    x, y = _data()
    model = _model(UnpacksXY)
    callback = SanityCheck(
        data=(x, y), checks=("overfit",), overfit_steps=150, verbose=0
    )
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[callback])
    assert [f.code for f in callback.context.findings] == []
    assert callback.result["overfit"].status == "passed"


def test_step_failing_on_the_copy_falls_back_on_private_weights():
    x, y = _data()
    model = _model(NeedsTeacher)
    model.temperature = 2.0
    model.fit(x[:16], y[:16], epochs=1, batch_size=16, verbose=0)  # fit runs it
    before, iterations = model.get_weights(), _iterations(model)
    overfit = sanity_check(model, x, y, **FAST)["overfit"]
    assert overfit.status == "passed", overfit.summary
    assert "private copies" in overfit.values["trained"]
    assert "AttributeError" in overfit.summary and "temperature" in overfit.summary
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert _iterations(model) == iterations


def test_overfit_that_cannot_train_at_all_is_skipped_with_the_cause(monkeypatch):
    def failing(optimizer, model, xs, ys):
        raise RuntimeError("no stateless loss for this model")

    monkeypatch.setattr(sanity, "_private_step", failing)
    x, y = _data()
    model = _model(NeedsTeacher)
    model.temperature = 2.0
    callback = SanityCheck(
        data=(x, y), checks=("overfit",), overfit_steps=20, verbose=0
    )
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[callback])
    assert [f.code for f in callback.context.findings] == []
    overfit = callback.result["overfit"]
    assert overfit.status == "skipped"
    assert "AttributeError" in overfit.summary and "temperature" in overfit.summary
    assert "no stateless loss for this model" in overfit.summary
