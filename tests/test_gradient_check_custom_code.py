"""The float64 check of models built from the user's own code: custom layers
(registered or not), `Lambda` layers, custom activations, `add_loss`, and a
layer hard-wired to float32."""

import keras
import numpy as np
import pytest
from keras import ops

from trainwatch.backends import float64
from trainwatch.gradient_check import check_gradients


class Scale(keras.layers.Layer):
    """Not registered; its config lists its one argument."""

    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, input_shape):
        self.gain = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.gain * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


class PenalizesActivity(keras.layers.Layer):
    def call(self, x):
        self.add_loss(1e-2 * ops.sum(ops.square(x)))
        return x


class HardWiredFloat32(keras.layers.Layer):
    def build(self, input_shape):
        self.gain = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return ops.cast(x, "float32") * ops.cast(self.gain, "float32")


class DoubledGradientDense(keras.layers.Layer):
    """A dense layer whose kernel gets twice its true gradient."""

    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units))

    def call(self, x):
        @ops.custom_gradient
        def doubled(kernel):
            def grad(*args, upstream=None):
                return 2.0 * (args[0] if upstream is None else upstream)

            return kernel * 1.0, grad

        return ops.matmul(x, doubled(ops.convert_to_tensor(self.kernel)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def soft_sign_squared(x):
    return x * ops.abs(x) / (1.0 + ops.square(x))


def model_with(layer):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="tanh"),
            layer,
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def batch():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 6)).astype("float32"), rng.integers(0, 3, size=16)


LAYERS = {
    "unregistered_layer": lambda: Scale(2.0),
    "lambda_layer": lambda: keras.layers.Lambda(lambda t: 2.0 * t),
    # Keras rebuilds a lambda from bytecode without this module's globals
    # (`ops`): the copies call the live function instead.
    "lambda_using_globals": lambda: keras.layers.Lambda(lambda t: ops.tanh(t) * 2.0),
    "custom_activation": lambda: keras.layers.Dense(5, activation=soft_sign_squared),
    "add_loss_layer": lambda: PenalizesActivity(),
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_user_code_is_checked_in_float64(kind):
    model = model_with(LAYERS[kind]())
    assert float64.uses_user_code(model)
    weights = [np.array(w) for w in model.get_weights()]
    result = check_gradients(model, *batch())
    assert result.precision == "float64", result.message
    assert result.passed, str(result)
    assert not result.findings, str(result)
    # float32 differences would leave ~1e-4 on this model; float64 ~1e-8
    assert result.max_relative_error < 1e-6, str(result)
    if kind == "add_loss_layer":
        assert result.loss.regularization > 0  # the layer's loss, checked apart
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_a_lambda_using_globals_is_trained_on_a_copy_in_the_sanity_checks():
    from trainwatch.sanity import sanity_check

    model = model_with(LAYERS["lambda_using_globals"]())
    report = sanity_check(model, *batch(), checks=["overfit"], verbose=0)
    assert report["overfit"].values["trained"] == "a copy of the model", str(report)
    assert "problems" not in report["overfit"].values, str(report)


def test_keras_layers_alone_are_not_user_code():
    model = model_with(keras.layers.Dense(5, activation="relu"))
    assert not float64.uses_user_code(model)
    assert float64.user_objects(model_with(Scale())) == {
        "Scale": Scale,
        keras.saving.get_registered_name(Scale): Scale,
    }


def test_a_layer_hard_wired_to_float32_is_imprecise_not_wrong():
    model = model_with(HardWiredFloat32())
    result = check_gradients(model, *batch())
    assert result.precision == "float64"
    assert not [v for v in result.variables if v.verdict in ("wrong", "suspicious")]
    blurred = [v for v in result.variables if v.verdict == "inconclusive"]
    assert blurred, str(result)
    for variable in blurred:
        assert any("lower precision than float64" in n for n in variable.notes)
    for finding in result.findings:
        assert "casts to float32" in finding.advice  # not "check again later"


def test_a_wrong_custom_gradient_is_caught_in_float64_and_named():
    # On TensorFlow the copy's variables reached `call` as `tf.Variable`s, and
    # `tf.custom_gradient` refused the layer: the check fell back on float32.
    model = model_with(DoubledGradientDense(5, name="doubled"))
    model.fit(*batch(), epochs=1, verbose=0)  # the layer trains under `fit`
    result = check_gradients(model, *batch())
    assert result.precision == "float64", result.message
    [wrong] = result.failed
    assert wrong.layer.endswith("doubled")
    # backprop says 2g where the loss changes by g: |2g - g| / |2g| = 0.5
    assert wrong.relative_error == pytest.approx(0.5, abs=1e-4), str(result)
    others = [v for v in result.variables if v is not wrong]
    assert all(v.verdict == "ok" and v.relative_error < 1e-6 for v in others)
    [finding] = result.findings
    assert (finding.code, finding.where) == ("gradient_wrong", wrong.path)


@ops.custom_gradient
def _square_with_half_its_gradient(x):
    def grad(*args, upstream=None):  # JAX/TensorFlow pass it by position
        upstream = args[0] if upstream is None else upstream
        return upstream * x  # the bug: d(x**2)/dx is 2x

    return ops.square(x), grad


class SquareWithHalfItsGradient(keras.layers.Layer):
    def call(self, x):
        return _square_with_half_its_gradient(x)


def test_a_wrong_gradient_in_a_layer_without_weights_is_pointed_at():
    model = model_with(SquareWithHalfItsGradient(name="square"))
    result = check_gradients(model, *batch())
    wrong = {f.where: f for f in result.findings if f.code == "gradient_wrong"}
    first = model.layers[0].path
    assert set(wrong) == {f"{first}/kernel", f"{first}/bias"}, str(result)
    output = model.layers[-1].path
    advice = wrong[f"{first}/kernel"].advice
    assert f"between layer {first} and layer {output}" in advice
    square = model.layers[1].path
    assert f"backward pass of {square} (no weights of its own" in advice
    # a model whose last layer is wrong has nothing after it to point past
    assert not any(f.where.startswith(output) for f in result.findings)
