"""`check_gradients` on real Keras models, on the active backend.

Correct models (tanh, ReLU, max-pooling, dropout, L2, hinge) pass; a model
whose backward pass is wrong in exactly one variable fails on exactly that
variable; the user's model, optimizer and random state are untouched.
"""

import random

import keras
import numpy as np
import pytest
from keras import ops

from trainwatch.backends import float64
from trainwatch.gradient_check import check_gradients

PACKAGE = "trainwatch_gradcheck_tests"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """PyTorch: tiny float64 ops run faster on one thread on a shared, busy CPU.

    With two intra-op threads each small softmax waits ~10 ms for a sleeping
    OpenMP worker when other processes hold the cores; results are the same.
    """
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@keras.saving.register_keras_serializable(PACKAGE)
class GradScaledDense(keras.layers.Layer):
    """A dense layer whose value is right but whose kernel gradient is not.

    `mode="scale"`: the kernel gradient is multiplied by `scale` (1.001: 0.1%
    off; 0: zeroed). `mode="missing"`: no gradient reaches the kernel.
    `unused=True` adds a weight the layer never uses.
    """

    def __init__(self, units, scale=1.0, mode="scale", unused=False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.scale, self.mode, self.unused = units, scale, mode, unused

    def build(self, input_shape):
        self.kernel = self.add_weight(
            (input_shape[-1], self.units), initializer="glorot_uniform", name="kernel"
        )
        self.bias = self.add_weight(
            (self.units,), initializer="random_normal", name="bias"
        )
        if self.unused:
            self.spare = self.add_weight((3,), initializer="ones", name="spare")

    def call(self, x):
        kernel = self.kernel
        if self.mode == "missing":
            kernel = ops.stop_gradient(kernel)
        elif self.scale != 1.0:
            kernel = kernel * self.scale + ops.stop_gradient(kernel * (1 - self.scale))
        return ops.matmul(x, kernel) + self.bias

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units, scale=self.scale, mode=self.mode, unused=self.unused
        )
        return config


@keras.saving.register_keras_serializable(PACKAGE)
class HalfGradientL2(keras.regularizers.Regularizer):
    """0.01·Σw² in value, but its gradient is half the true one."""

    def __call__(self, w):
        return 0.01 * ops.sum(ops.stop_gradient(w) * w)

    def get_config(self):
        return {}


class UnregisteredDense(keras.layers.Dense):
    """Not registered, and its `get_config` (Dense's) leaves out `scale`: the
    float64 copy has the same loss but other gradients."""

    def __init__(self, units, scale=1.0, **kwargs):
        super().__init__(units, **kwargs)
        self.scale = scale

    def call(self, x):
        kernel = self.kernel * self.scale + ops.stop_gradient(
            self.kernel * (1 - self.scale)
        )
        return ops.tanh(ops.matmul(x, kernel) + self.bias)


class ForgetfulDense(keras.layers.Dense):
    """Its `get_config` (Dense's) leaves out `shift`: the float64 copy rebuilt
    from it computes another loss."""

    def __init__(self, units, shift=0.0, **kwargs):
        super().__init__(units, **kwargs)
        self.shift = shift

    def call(self, x):
        return ops.matmul(x, self.kernel) + self.bias + self.shift


class NoConfigModel(keras.Model):
    """A subclassed model without `get_config`."""

    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(12, activation="tanh")
        self.out = keras.layers.Dense(3, activation="softmax")

    def call(self, x):
        return self.out(self.hidden(x))


def batch(n=16, features=10, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    return x, rng.integers(0, classes, size=n)


def compiled(layers, loss="sparse_categorical_crossentropy"):
    model = keras.Sequential(layers)
    model.compile(optimizer="adam", loss=loss)
    return model


def tanh_l2():
    l2 = keras.regularizers.L2(0.01)
    return compiled(
        [
            keras.Input((10,)),
            keras.layers.Dense(12, activation="tanh", kernel_regularizer=l2),
            keras.layers.Dense(12, activation="tanh", kernel_regularizer=l2),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def relu_dropout():
    return compiled(
        [
            keras.Input((10,)),
            keras.layers.Dense(12, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(12, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def cnn_maxpool():
    return compiled(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def hinge():
    return compiled(
        [
            keras.Input((10,)),
            keras.layers.Dense(12, activation="tanh"),
            keras.layers.Dense(1),
        ],
        loss="hinge",
    )


def with_custom(layer):
    return compiled(
        [
            keras.Input((10,)),
            keras.layers.Dense(12, activation="tanh"),
            layer,
            keras.layers.Activation("tanh"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def data_for(name):
    x, y = batch()
    if name == "cnn_maxpool":
        x = np.random.default_rng(1).normal(size=(16, 8, 8, 1)).astype("float32")
    if name == "hinge":
        y = np.where(y > 0, 1.0, -1.0)
    return x, y


def verdicts(result):
    return {v.path: v.verdict for v in result.variables}


@pytest.mark.parametrize("name", ["tanh_l2", "relu_dropout", "cnn_maxpool", "hinge"])
def test_correct_models_pass(name):
    model = globals()[name]()
    x, y = data_for(name)
    result = check_gradients(model, x, y)
    assert result.passed, str(result)
    assert result.precision == "float64"
    assert [v.path for v in result.variables] == [
        v.path for v in model.trainable_variables
    ]
    assert not [f for f in result.findings if f.severity != "info"], result.findings
    # True float64: smooth or not, the worst conclusive probe is far below 1e-4.
    assert result.max_relative_error < 1e-6, str(result)
    for variable in result.variables:
        assert variable.step > 0
        assert variable.lines and variable.coordinates


def test_smooth_model_precision_and_parts():
    """Pins the float64 precision reached on each backend (private Keras API)."""
    result = check_gradients(tanh_l2(), *batch())
    assert result.max_relative_error < 1e-7, str(result)
    parts = {v.path: {line.part for line in v.lines} for v in result.variables}
    kernels = [p for p in parts if p.endswith("kernel")]
    assert parts[kernels[0]] == {"data", "regularization"}
    assert parts[kernels[-1]] == {"data"}  # the output layer has no regularizer
    assert all(parts[p] == {"data"} for p in parts if p.endswith("bias"))
    assert result.loss.regularization > 0


@pytest.mark.parametrize(
    "layer_kwargs, code",
    [
        ({"scale": 1.001}, "gradient_wrong"),
        ({"scale": 0.0}, "gradient_missing"),
        ({"mode": "missing"}, "gradient_missing"),
    ],
)
def test_one_wrong_variable_is_found_and_only_it(layer_kwargs, code):
    model = with_custom(GradScaledDense(12, name="scaled", **layer_kwargs))
    result = check_gradients(model, *batch())
    bad_path = next(
        v.path for v in model.trainable_variables if "scaled/kernel" in v.path
    )
    assert not result.passed
    assert {p for p, v in verdicts(result).items() if v != "ok"} == {bad_path}, str(
        result
    )
    assert verdicts(result)[bad_path] == "wrong"
    [finding] = [f for f in result.findings if f.severity == "error"]
    assert finding.code == code
    assert finding.where == bad_path
    assert "scaled" in finding.message and "analytic" in finding.message
    assert "stop_gradient" in finding.advice
    if layer_kwargs.get("scale") == 1.001:
        bad = next(v for v in result.variables if v.path == bad_path)
        assert bad.relative_error == pytest.approx(1e-3, rel=0.05)
        assert bad.estimated_error < 1e-5


def test_vector_form_error_measures_the_whole_variable():
    # A kernel gradient 1.001 times the true one: ‖a − n‖ / (‖a‖ + ‖n‖) is
    # 0.001 / 2.001 over its probes, whatever their sizes; the variables whose
    # gradient is right stay far below, and never above their worst probe.
    model = with_custom(GradScaledDense(12, name="scaled", scale=1.001))
    result = check_gradients(model, *batch())
    for variable in result.variables:
        assert variable.vector_error <= variable.relative_error * (1 + 1e-12)
        if variable.path.endswith("scaled/kernel"):
            assert variable.vector_error == pytest.approx(0.001 / 2.001, rel=0.01)
        else:
            assert variable.vector_error < 1e-6, str(result)
    assert result.max_vector_error == pytest.approx(0.001 / 2.001, rel=0.01)
    assert "(vector form, one variable)" in result.summary()


def test_a_model_checked_again_is_checked_at_its_new_weights():
    # The float64 copy (and on JAX its compiled code) is kept between checks:
    # the second check must see the trained weights and still find the bug.
    model = with_custom(GradScaledDense(12, name="scaled", scale=1.001))
    x, y = batch()
    first = check_gradients(model, x, y)
    model.fit(x, y, epochs=3, verbose=0)
    second = check_gradients(model, x, y)
    for result in (first, second):
        assert [f.code for f in result.findings if f.severity == "error"] == [
            "gradient_wrong"
        ], str(result)
    assert first.loss.data != second.loss.data  # evaluated at other weights


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="compiled per model on JAX only"
)
def test_when_compiling_fails_the_check_runs_eagerly(monkeypatch):
    from trainwatch.backends import get_backend

    calls = []

    def cannot_run(*args, **kwargs):
        calls.append(1)
        raise TypeError("not traceable")

    # Compiled functions that fail when called, as a trace of Python-side work
    # on the values would.
    backend = get_backend()
    monkeypatch.setattr(backend, "jit_values_and_grads", lambda fns: cannot_run)
    monkeypatch.setattr(backend, "jit_quick", lambda fn: cannot_run)
    model = tanh_l2()
    for _ in range(2):
        result = check_gradients(model, *batch())
        assert result.passed and result.precision == "float64", str(result)
        assert result.max_relative_error < 1e-7, str(result)
    assert len(calls) == 2  # each compiled function tried once, then eager


def test_wrong_regularizer_gradient_is_reported_apart_from_data():
    model = compiled(
        [
            keras.Input((10,)),
            keras.layers.Dense(
                12, activation="tanh", kernel_regularizer=HalfGradientL2()
            ),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    result = check_gradients(model, *batch())
    kernel = model.trainable_variables[0].path
    assert {p for p, v in verdicts(result).items() if v != "ok"} == {kernel}
    check = result.variables[0]
    wrong_parts = {line.part for line in check.lines if line.verdict == "wrong"}
    assert wrong_parts == {"regularization"}
    [finding] = result.findings
    assert finding.code == "gradient_wrong" and "regularizers" in finding.advice


def test_unused_variable_is_a_missing_gradient_warning():
    model = with_custom(GradScaledDense(12, name="spare_holder", unused=True))
    result = check_gradients(model, *batch(), coordinates=2)
    assert result.passed, str(result)
    spare = next(v for v in result.variables if v.path.endswith("spare"))
    assert spare.verdict == "ok" and "not used" in " ".join(spare.notes)
    [finding] = [f for f in result.findings if f.code == "gradient_missing"]
    assert finding.severity == "warning" and finding.where == spare.path


def test_an_mae_bias_whose_examples_cancel_is_not_called_unused():
    # One MAE output: the bias gets sign(residual) / n from each example; half
    # above and half below the targets sum to an exact zero (a batch in four,
    # at random), which read as "not used: training will not change it".
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4, "tanh"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="sgd", loss="mae")
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    y = model.predict(x, verbose=0) + np.resize([1.0, -1.0], (8, 1))
    result = check_gradients(model, x, y)
    bias = result.variables[-1]
    assert "cancel" in " ".join(bias.notes), str(result)
    assert not any("not used" in note for note in bias.notes)
    assert not result.findings, str(result)


def test_masked_sequences_with_sample_weights_are_checked():
    # Keras multiplies the sample weights by the output's mask in place: on
    # PyTorch every loss evaluation scaled the check's weights by 6/5 (one
    # padded step in six), and every variable came out inconclusive.
    model = keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras.layers.Embedding(9, 3, mask_zero=True),
            keras.layers.Dense(2, activation="tanh"),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.integers(1, 9, size=(8, 6))
    x[:, 5] = 0  # padding
    y = rng.normal(size=(8, 6, 2))
    weights = rng.uniform(0.5, 1.5, size=(8, 6))
    result = check_gradients(model, x, y, sample_weight=weights)
    assert result.precision == "float64"
    assert result.passed, str(result)
    assert all(v.verdict == "ok" for v in result.variables), str(result)
    assert result.max_relative_error < 1e-6, str(result)


def test_users_model_optimizer_and_random_state_untouched():
    model = relu_dropout()
    x, y = batch()
    model.train_on_batch(x, y)  # the optimizer has state now
    weights = [np.array(v.numpy()) for v in model.weights]
    optimizer = [np.array(v.numpy()) for v in model.optimizer.variables]
    floatx = keras.config.floatx()
    keras.utils.set_random_seed(7)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    expected_draw = np.array(keras.random.normal((5,)))
    keras.utils.set_random_seed(7)

    result = check_gradients(model, x, y)

    assert result.passed
    assert random.getstate() == python_state
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state[1])
    np.testing.assert_array_equal(np.array(keras.random.normal((5,))), expected_draw)
    for before, variable in zip(weights, model.weights):
        np.testing.assert_array_equal(np.array(variable.numpy()), before)
    for before, variable in zip(optimizer, model.optimizer.variables):
        np.testing.assert_array_equal(np.array(variable.numpy()), before)
    assert keras.config.floatx() == floatx
    assert all(v.dtype == "float32" for v in model.weights)


def test_kinks_crossed_are_inconclusive_not_bugs():
    """Zero biases and an all-zero example put ReLUs exactly at their corner."""
    model = relu_dropout()
    x, y = batch()
    x[0] = 0.0
    result = check_gradients(model, x, y)
    assert not [v for v in result.variables if v.verdict in ("wrong", "suspicious")]
    first_bias = result.variables[1]
    assert first_bias.path.endswith("bias") and first_bias.kinks > 0
    assert first_bias.verdict in ("ok", "inconclusive")


def test_bad_input_is_a_clear_error():
    x, y = batch()
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    unbuilt.compile(loss="mse")
    with pytest.raises(ValueError, match="not built"):
        check_gradients(unbuilt, x, y)
    uncompiled = keras.Sequential([keras.Input((10,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="compile"):
        check_gradients(uncompiled, x, y)
    with pytest.raises(TypeError, match="Received: model=str"):
        check_gradients("model", x, y)
    model = hinge()
    with pytest.raises(ValueError, match="Received: coordinates=-1"):
        check_gradients(model, x, y, coordinates=-1)
    with pytest.raises(ValueError, match="Received: precision='float16'"):
        check_gradients(model, x, y, precision="float16")


def test_non_finite_loss_is_inconclusive():
    x, y = batch()
    x[0, 0] = np.nan
    result = check_gradients(tanh_l2(), x, y, coordinates=2)
    assert not result.passed
    assert {v.verdict for v in result.variables} == {"inconclusive"}
    assert [f.code for f in result.findings] == ["gradient_check_imprecise"]
    assert "not finite" in str(result)


@pytest.mark.parametrize("kind", ["config_leaves_out_an_argument", "no_config"])
def test_float32_fallback_when_no_float64_copy(kind):
    x, y = batch()
    if kind == "config_leaves_out_an_argument":
        model = with_custom(ForgetfulDense(12, shift=0.5))
    else:
        model = NoConfigModel()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model(x[:1])
    weights = [np.array(v.numpy()) for v in model.weights]
    result = check_gradients(model, x, y)
    assert result.precision == "float32"
    assert result.findings[0].code == "gradient_check_imprecise"
    assert "float32" in result.message
    if kind == "config_leaves_out_an_argument":
        assert "computes another data loss" in result.message
    assert result.passed, str(result)
    assert not [v for v in result.variables if v.verdict in ("wrong", "suspicious")]
    for before, variable in zip(weights, model.weights):
        np.testing.assert_array_equal(np.array(variable.numpy()), before)
    with pytest.raises(float64.Float64Unavailable):
        check_gradients(model, x, y, precision="float64")


def test_float32_fallback_still_catches_a_gross_error():
    # The float64 copy would have the right gradients (scale 1, from the
    # config): trusted, it would pass the model's wrong ones.
    model = with_custom(UnregisteredDense(12, scale=0.5, name="halved"))
    result = check_gradients(model, *batch(), coordinates=2)
    assert result.precision == "float32"
    assert "gets other gradients for" in result.message
    wrong = {v.path for v in result.variables if v.verdict == "wrong"}
    assert wrong == {
        next(v.path for v in model.trainable_variables if "halved/kernel" in v.path)
    }


def test_readable_table_names_variables_and_worst_coordinates():
    model = with_custom(GradScaledDense(12, name="scaled", scale=1.001))
    result = check_gradients(model, *batch(), coordinates=2)
    text = str(result)
    assert text.startswith("Gradient check FAILED (float64, 8 examples")
    for variable in model.trainable_variables:
        assert variable.path in text
    assert "is wrong:" in text and "analytic" in text and "numeric" in text
    markdown = result.to_markdown()
    assert "| variable |" in markdown and "| wrong |" in markdown
    bad = result.failed[0]
    assert len(bad.coordinates) == 2 and bad.worst()[0].verdict == "wrong"


def tiny_mse(y_true, y_pred):
    return 1e-14 * ops.mean(ops.square(y_true - y_pred))


def test_tiny_gradients_are_noted_and_still_judged_by_precision():
    model = keras.Sequential(
        [keras.Input((10,)), keras.layers.Dense(4, activation="tanh")]
    )
    model.compile(optimizer="sgd", loss=tiny_mse)
    x, _ = batch()
    y = np.random.default_rng(2).normal(size=(16, 4))
    result = check_gradients(model, x, y, coordinates=2)
    assert result.precision == "float64"
    assert "tiny" in " ".join(result.variables[0].notes)
    assert result.passed, str(result)  # float64 keeps its relative precision


def test_examples_masked_out_by_zero_weight_are_not_the_ones_checked():
    """Weight 0 masks an example out; a check on masked examples only would
    see a flat loss and say no variable gets a gradient."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    weights = np.ones(64, "float32")
    weights[:8] = 0.0
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    result = check_gradients(model, x, y, weights)
    assert result.passed and not result.findings, [str(f) for f in result.findings]
    assert result.examples == 8
