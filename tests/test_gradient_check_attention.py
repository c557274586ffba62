"""The float64 check is float64 inside attention, and says so where it is not.

On JAX, `ops.dot_product_attention` (used by `MultiHeadAttention`) takes its
softmax in float32 whatever the inputs: the float64 mode routes it through
plain float64 ops. A layer that still computes in float32 (a hard-coded cast)
makes the loss noisy along the variables before it: that is named as
round-off, never as a kink or a bug.
"""

import keras
import numpy as np
import pytest
from keras import ops
from test_gradient_check import _one_torch_thread  # noqa: F401 (a fixture)

from trainwatch.backends import float64
from trainwatch.gradient_check import check_gradients

PACKAGE = "trainwatch_gradcheck_attention_tests"


@keras.saving.register_keras_serializable(PACKAGE)
class Float32Tanh(keras.layers.Layer):
    """tanh computed in float32 whatever the input dtype (a hard-coded cast)."""

    def call(self, x):
        return ops.cast(ops.tanh(ops.cast(x, "float32")), x.dtype)


def attention_model():
    inputs = keras.Input((4, 8))
    hidden = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(inputs, inputs)
    hidden = keras.layers.GlobalAveragePooling1D()(hidden)
    outputs = keras.layers.Dense(3, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.set_weights(
        [rng.normal(scale=0.5, size=w.shape).astype("float32") for w in model.weights]
    )
    return model


def test_attention_query_and_key_are_checked_in_float64():
    model = attention_model()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 4, 8)).astype("float32")
    y = rng.integers(0, 3, size=8)
    result = check_gradients(model, x, y)
    assert result.precision == "float64"
    checks = {v.path.split("/", 1)[1]: v for v in result.variables}
    for name in ("query/kernel", "query/bias", "key/kernel", "value/kernel"):
        check = checks[name]
        # Before: float32 softmax on JAX, every probe "kink crossed".
        assert check.verdict == "ok", str(result)
        assert check.relative_error < 1e-7, str(result)
        assert check.kinks == 0 and not check.notes, str(result)
    assert not [f for f in result.findings if f.severity != "info"], result.findings
    # The key bias adds the same amount to every logit of a query: the loss
    # does not depend on it, and "check again later" would not help.
    key_bias = checks["key/bias"]
    assert key_bias.verdict in ("ok", "inconclusive"), str(result)
    if key_bias.verdict == "inconclusive":  # round-off decides, by backend
        assert any("does not depend on it" in n for n in key_bias.notes)
        [finding] = [f for f in result.findings if f.where == key_bias.path]
        assert "Check again later" not in finding.advice


def reference_attention(q, k, v, bias=None, mask=None, causal=False):
    """Dot-product attention in numpy float64, layout (batch, time, heads, depth)."""
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    keep = np.ones(logits.shape, bool)
    if mask is not None:
        keep &= mask
    if causal:
        keep &= np.tril(np.ones(logits.shape[-2:], bool))
    logits = np.where(keep, logits, -1e30)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", weights, v)


@pytest.mark.parametrize("case", ["plain", "mask", "causal", "bias", "grouped"])
def test_dot_product_attention_is_float64_in_float64_mode(case):
    rng = np.random.default_rng(2)
    heads, key_heads = (4, 2) if case == "grouped" else (2, 2)
    # Depth 4: the default scale 1/2 is exact even where a backend rounds it
    # to float32 (TensorFlow: a constant factor, harmless to a check).
    q = rng.normal(size=(2, 5, heads, 4))
    k = rng.normal(size=(2, 5, key_heads, 4))
    # One-hot values: the output is the softmax itself, so its precision shows.
    v = np.broadcast_to(np.eye(5)[None, :, None, :], (2, 5, key_heads, 5)).copy()
    kwargs = {}
    if case == "mask":  # no row fully masked
        kwargs["mask"] = (rng.random((2, 1, 5, 5)) > 0.3) | np.eye(5, dtype=bool)
    if case == "causal":
        kwargs["is_causal"] = True
    if case == "bias":
        kwargs["bias"] = rng.normal(size=(1, heads, 5, 5))
    with float64.float64_mode():
        output = ops.dot_product_attention(
            ops.convert_to_tensor(q), ops.convert_to_tensor(k),
            ops.convert_to_tensor(v), **kwargs,
        )  # fmt: skip
        output = keras.ops.convert_to_numpy(output)
    assert output.dtype == np.float64
    causal = kwargs.pop("is_causal", False)
    expected = reference_attention(q, k, v, causal=causal, **kwargs)
    np.testing.assert_allclose(output, expected, rtol=1e-12, atol=1e-14)
    # Before: float32 softmax on JAX, every value float32-representable.
    assert float64.fraction_beyond_float32(output) > 0.9


def test_float64_mode_restores_the_backend_attention():
    from keras.src import backend

    before = backend.nn.dot_product_attention
    with float64.float64_mode():
        pass
    assert backend.nn.dot_product_attention is before
    with pytest.raises(RuntimeError, match="inside"):
        with float64.float64_mode():
            raise RuntimeError("inside")
    assert backend.nn.dot_product_attention is before


def test_a_float32_layer_is_named_as_round_off_not_as_a_kink():
    """A hard-coded float32 cast: the variables before it resolve ~1e-3 only."""
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(12, name="before_cast"),
            Float32Tanh(),
            keras.layers.Dense(12, activation="tanh"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.set_weights(
        [rng.normal(scale=0.4, size=w.shape).astype("float32") for w in model.weights]
    )
    x = rng.normal(size=(8, 10)).astype("float32")
    y = rng.integers(0, 3, size=8)
    result = check_gradients(model, x, y)
    assert result.precision == "float64"
    assert not [v for v in result.variables if v.verdict in ("wrong", "suspicious")]
    for check in result.variables:
        reasons = " ".join(line.reason for line in check.lines)
        assert "kink" not in reasons, str(result)  # before: "kink crossed"
        if "before_cast" in check.path:
            note = " ".join(check.notes)
            assert "round-off" in note and "float32" in note, str(result)
            assert "neither a kink nor a bug" in note
        else:
            assert check.verdict == "ok" and not check.notes, str(result)
    imprecise = [f for f in result.findings if f.code == "gradient_check_imprecise"]
    assert imprecise and all("before_cast" in f.where for f in imprecise)
    assert all("float32" in f.advice for f in imprecise)
