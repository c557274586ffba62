"""Loss and gradients from the backend adapters against a hand-derived gradient.

Softmax regression with L2 regularization has a gradient one can write down:
dL/dW = X^T (softmax(XW + b) - Y) / n + 2 * l2 * W, dL/db = mean(softmax - Y).
In float64 the adapters must match it to 1e-10; in float32 they cannot, which is
the point of the shadow model.
"""

import keras
import numpy as np
import pytest

from trainwatch.backends import float64, model_functions

L2 = 0.01


def make_softmax_regression(seed=0, n_features=5, n_classes=4):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((n_features,)),
            keras.layers.Dense(
                n_classes,
                activation="softmax",
                kernel_regularizer=keras.regularizers.L2(L2),
                bias_initializer=keras.initializers.RandomNormal(stddev=0.1),
            ),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def effective_l2():
    """The L2 coefficient as the backend applies it.

    On TensorFlow, `ops.cast(0.01, "float64")` goes through a float32 constant,
    so the coefficient itself is float32-rounded (a constant factor shared by the
    analytic and numerical gradient, not a derivative error).
    """
    if keras.backend.backend() == "tensorflow":
        return float(np.float32(L2))
    return L2


def hand_gradient(x, labels, kernel, bias):
    l2 = effective_l2()
    logits = x @ kernel + bias
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    onehot = np.eye(kernel.shape[1])[labels]
    n = x.shape[0]
    data_loss = -np.mean(np.log(probs[np.arange(n), labels]))
    reg_loss = l2 * np.sum(kernel**2)
    d_logits = (probs - onehot) / n
    return {
        "data_loss": data_loss,
        "reg_loss": reg_loss,
        "kernel_data": x.T @ d_logits,
        "kernel_reg": 2 * l2 * kernel,
        "bias_data": d_logits.sum(axis=0),
    }


def relative_error(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)


@pytest.fixture
def batch():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 5))
    y = rng.integers(0, 4, size=16)
    return x, y


def test_float64_shadow_matches_hand_gradient(batch):
    x, y = batch
    model = make_softmax_regression()
    floatx_before = keras.config.floatx()
    with float64.float64_mode():
        shadow = float64.make_float64_shadow(model)
        kernel = np.asarray(shadow.trainable_variables[0].numpy(), np.float64)
        bias = np.asarray(shadow.trainable_variables[1].numpy(), np.float64)
        xb = model_functions.convert_batch(x, "float64")
        yb = model_functions.convert_batch(y)
        data = model_functions.compute_gradients(shadow, xb, yb, part="data")
        reg = model_functions.compute_gradients(shadow, xb, yb, part="regularization")
        total = model_functions.compute_gradients(shadow, xb, yb, part="total")
    assert keras.config.floatx() == floatx_before
    expected = hand_gradient(x, y, kernel, bias)

    assert abs(data.loss.data - expected["data_loss"]) <= 1e-12
    assert abs(data.loss.regularization - expected["reg_loss"]) <= 1e-12
    assert relative_error(data.gradients[0], expected["kernel_data"]) <= 1e-10
    assert relative_error(data.gradients[1], expected["bias_data"]) <= 1e-10
    assert relative_error(reg.gradients[0], expected["kernel_reg"]) <= 1e-10
    # The bias has no regularizer: no gradient (None) or an exact zero (JAX).
    assert reg.gradients[1] is None or not np.any(reg.gradients[1])
    kernel_total = expected["kernel_data"] + expected["kernel_reg"]
    assert relative_error(total.gradients[0], kernel_total) <= 1e-10
    # Measured, not read from .dtype: the results carry float64 precision.
    assert data.gradients[0].dtype == np.float64
    assert float64.fraction_beyond_float32(data.gradients[0]) > 0.9


def test_float32_model_is_not_float64_precise(batch):
    """The user's float32 model gives ~1e-7 agreement at best: why we need float64."""
    x, y = batch
    model = make_softmax_regression()
    kernel = np.asarray(model.trainable_variables[0].numpy(), np.float64)
    bias = np.asarray(model.trainable_variables[1].numpy(), np.float64)
    xb = model_functions.convert_batch(x, "float32")
    yb = model_functions.convert_batch(y)
    data = model_functions.compute_gradients(model, xb, yb, part="data")
    expected = hand_gradient(x.astype(np.float32), y, kernel, bias)
    error = relative_error(
        data.gradients[0].astype(np.float64), expected["kernel_data"]
    )
    assert 1e-9 < error < 1e-4
    assert float64.fraction_beyond_float32(data.gradients[0]) == 0.0


def test_stateless_evaluation_leaves_model_untouched(batch):
    x, y = batch
    model = make_softmax_regression()
    before = [np.array(v.numpy()) for v in model.weights]
    xb = model_functions.convert_batch(x, "float32")
    yb = model_functions.convert_batch(y)
    model_functions.compute_gradients(model, xb, yb)
    with float64.float64_mode():
        float64.make_float64_shadow(model)
    after = [np.array(v.numpy()) for v in model.weights]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert model.trainable_variables[0].dtype == "float32"


def test_overrides_replace_one_variable(batch):
    x, y = batch
    model = make_softmax_regression()
    xb = model_functions.convert_batch(x, "float32")
    yb = model_functions.convert_batch(y)
    base = model_functions.compute_loss_parts(model, xb, yb)
    zero_kernel = np.zeros(model.trainable_variables[0].shape)
    changed = model_functions.compute_loss_parts(
        model, xb, yb, overrides={0: zero_kernel}
    )
    assert changed.regularization == 0.0
    assert base.regularization > 0.0
    assert changed.data != base.data


def test_float64_shadow_is_kept_and_refreshed_with_the_weights(batch):
    x, y = batch
    model = make_softmax_regression()
    with float64.float64_mode():
        first = float64.float64_shadow(model)
        model.fit(x.astype("float32"), y, epochs=2, verbose=0)  # new weights
        again = float64.float64_shadow(model)
        kept_weights = [np.asarray(w.numpy()) for w in again.weights]
    assert again is first
    for ours, theirs in zip(model.weights, kept_weights):
        np.testing.assert_array_equal(theirs, np.asarray(ours.numpy(), np.float64))
    # Compiled again with another loss: the shadow follows.
    model.compile(optimizer="adam", loss="categorical_hinge")
    with float64.float64_mode():
        other = float64.float64_shadow(model)
    assert other is not first


def test_float64_shadows_of_large_models_are_not_kept(monkeypatch):
    model = make_softmax_regression()  # 24 parameters
    monkeypatch.setattr(float64, "KEEP_SHADOWS_UP_TO_PARAMETERS", 23)
    with float64.float64_mode():
        assert float64.float64_shadow(model) is not float64.float64_shadow(model)
    monkeypatch.setattr(float64, "KEEP_SHADOWS_UP_TO_PARAMETERS", 24)
    with float64.float64_mode():
        assert float64.float64_shadow(model) is float64.float64_shadow(model)


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="compiled per model on JAX only"
)
def test_compiled_gradients_equal_eager_ones_and_follow_the_weights(batch):
    x, y = batch
    model = make_softmax_regression()
    with float64.float64_mode():
        shadow = float64.float64_shadow(model)
        xb = model_functions.convert_batch(x, "float64")
        yb = model_functions.convert_batch(y)
        for _ in range(2):  # the second time, with the compiled code kept
            for part in ("data", "regularization"):
                eager = model_functions.compute_gradients(shadow, xb, yb, part=part)
                compiled = model_functions.compute_gradients(
                    shadow, xb, yb, part=part, compiled=True
                )
                assert compiled.loss == pytest.approx(eager.loss, rel=1e-13)
                for a, b in zip(compiled.gradients, eager.gradients):
                    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300)
            model.fit(x.astype("float32"), y, epochs=1, verbose=0)
            shadow = float64.float64_shadow(model)
    assert model_functions.compiles_per_model()


def test_tensorflow_jit_traces_python_branches_on_tensors(backend_name):
    """Traced without AutoGraph first; code that branches on a tensor's value
    (which that trace cannot run) is traced again with AutoGraph."""
    if backend_name != "tensorflow":
        pytest.skip("TensorFlow's tf.function only")
    from trainwatch.backends import tensorflow_backend

    def plain(values):
        return keras.ops.sum(values[0]) * 2.0

    def branching(values):
        total = keras.ops.sum(values[0])
        if total > 0:  # a Python `if` on a tensor: needs AutoGraph in a graph
            return total * 2.0
        return -total

    for fn in (plain, branching):
        compiled = tensorflow_backend.jit(fn)
        for sign in (1.0, -1.0):
            values = [keras.ops.convert_to_tensor(sign * np.ones(3))]
            expected = float(fn(values))
            assert float(compiled(values)) == expected
