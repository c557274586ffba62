"""Subclassed models without an `Input`: TensorFlow's `fit` builds them only in
its first step, after `on_train_begin`. trainwatch builds them on its probe
(as Keras's `fit` does on JAX and PyTorch), or waits for Keras to build them,
and learns the same weights either way."""

import keras
import numpy as np

import trainwatch
from trainwatch.callbacks.update_ratio import UpdateRatio


class TwoLayerNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.out = keras.layers.Dense(3, activation="softmax")

    def call(self, x, training=False):
        return self.out(self.hidden(x))


def data(n=96):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 5)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5).astype("int32")
    return x, y


def subclassed(seed=0):
    keras.utils.set_random_seed(seed)
    model = TwoLayerNet()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


FIT = dict(batch_size=16, epochs=2, verbose=0)


def test_trainwatch_builds_an_unbuilt_model_on_its_probe_and_learns_the_same(
    tmp_path,
):
    x, y = data()
    plain = subclassed(seed=4)
    plain.fit(x, y, **FIT)
    model = subclassed(seed=4)
    assert not model.built
    watch = trainwatch.TrainWatch(
        tmp_path,
        probe=(x[:32], y[:32]),
        verbose=0,
        gradient_check={"warmup_steps": 2, "wait_for_loss_drop": False},
    )
    model.fit(x, y, callbacks=[watch], **FIT)
    failed = [f.message for f in watch.context.findings if f.code == "monitor_failed"]
    assert failed == []
    assert watch.part("UpdateRatio").samples_taken > 0
    assert watch.part("Distributions").last_layers
    assert watch.part("SanityCheck").result["initial_loss"].status == "passed"
    for a, b in zip(plain.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_update_ratio_without_a_probe_waits_for_keras_to_build_the_model():
    x, y = data()
    model = subclassed()
    ratios = UpdateRatio(update_freq=2, verbose=0)
    model.fit(x, y, callbacks=[ratios], **FIT)
    assert ratios.samples_taken > 0
    assert set(ratios.latest) == {v.path for v in model.trainable_variables}


class Broken(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2)

    def call(self, x, training=False):
        raise ValueError("this model cannot be called")


def test_a_model_that_cannot_be_built_is_named_not_blamed_on_trainwatch():
    x, y = data(8)
    model = Broken()
    model.compile("sgd", "mse")
    dists = trainwatch.Distributions(probe=(x, y), verbose=0)
    dists.set_model(model)
    dists.on_train_begin()
    [finding] = [f for f in dists.context.findings if f.code == "monitor_failed"]
    assert "not built" in finding.message and "probe" in finding.message
    assert "trainwatch problem" not in finding.advice


class NoConfigNet(keras.Model):
    """A constructor argument and no `get_config`: Keras cannot copy it."""

    def __init__(self, units):
        super().__init__()
        self.hidden = keras.layers.Dense(units, activation="tanh")
        self.drop = keras.layers.Dropout(0.5)
        self.out = keras.layers.Dense(3, activation="softmax")

    def call(self, x, training=False):
        return self.out(self.drop(self.hidden(x), training=training))


def test_overfit_check_trains_private_weights_of_a_model_that_cannot_be_copied():
    x, y = data(64)
    keras.utils.set_random_seed(1)
    model = NoConfigNet(16)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model(x[:2])
    before = model.get_weights()
    result = trainwatch.sanity_check(model, x, y, checks=("overfit",), verbose=0)
    overfit = result["overfit"]
    assert overfit.status == "passed", overfit.summary
    assert "private copies" in overfit.summary
    assert overfit.values["last_loss"] < 0.1 * overfit.values["first_loss"]
    for a, b in zip(before, model.get_weights()):  # the model is untouched
        np.testing.assert_array_equal(a, b)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0
