"""Layer outputs and output gradients, for every kind of model, on each backend."""

import keras
import numpy as np

from trainwatch.backends import model_functions as mf


def sequential():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="tanh", name="hidden"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )


def compile_(model, loss="sparse_categorical_crossentropy"):
    model.compile(optimizer="sgd", loss=loss)
    return model


def test_sequential_outputs_and_gradients():
    model = compile_(sequential())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6)).astype("float32")
    y = rng.integers(0, 3, size=8)
    xb, yb = mf.convert_batch(x), mf.convert_batch(y)
    traces = mf.layer_outputs_and_gradients(model, xb, yb)
    assert [t.layer.name for t in traces] == ["hidden", "out"]
    hidden = traces[0]
    expected = np.tanh(
        x @ model.get_layer("hidden").kernel.numpy()
        + model.get_layer("hidden").bias.numpy()
    )
    np.testing.assert_allclose(hidden.output, expected, rtol=1e-5, atol=1e-6)
    # Keras's cross-entropy on probabilities normalizes them first:
    # d/dp_j mean(-log(p_y / sum(p))) = (-[j == y] / p_y + 1 / sum(p)) / n.
    out = traces[1]
    expected_grad = np.full_like(out.output, 1.0 / 8)
    expected_grad[np.arange(8), y] += -1.0 / (8 * out.output[np.arange(8), y])
    np.testing.assert_allclose(out.output_gradient, expected_grad, rtol=1e-4)
    # Chain rule: hidden gradient = out-layer backprop of the out gradient.
    kernel = model.get_layer("out").kernel.numpy()
    p = out.output
    d_logits = p * (
        out.output_gradient - np.sum(out.output_gradient * p, 1, keepdims=True)
    )
    np.testing.assert_allclose(
        hidden.output_gradient, d_logits @ kernel.T, rtol=1e-4, atol=1e-7
    )
    # The model is untouched: a plain forward pass still gives the same output.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x)), out.output, rtol=1e-5
    )


def test_functional_multi_input_multi_output_and_nested():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, name="inner_dense")], name="inner"
    )
    a = keras.Input((3,), name="a")
    b = keras.Input((4,), name="b")
    h = keras.layers.Concatenate(name="concat")(
        [keras.layers.Dense(4, name="da")(a), inner(b)]
    )
    out1 = keras.layers.Dense(2, name="out1")(h)
    out2 = keras.layers.Dense(1, name="out2")(h)
    model = keras.Model([a, b], [out1, out2])
    model.compile(optimizer="sgd", loss=["mse", "mse"])
    rng = np.random.default_rng(1)
    x = [rng.normal(size=(5, 3)), rng.normal(size=(5, 4))]
    y = [rng.normal(size=(5, 2)), rng.normal(size=(5, 1))]
    traces = mf.layer_outputs_and_gradients(
        model, mf.convert_batch(x, "float32"), mf.convert_batch(y, "float32")
    )
    names = {t.layer.name for t in traces}
    assert {"da", "inner_dense", "concat", "out1", "out2"} <= names
    for t in traces:
        assert t.output.shape[0] == 5
        assert (
            t.output_gradient is not None and t.output_gradient.shape == t.output.shape
        )
        assert np.all(np.isfinite(t.output_gradient))
    by_name = {t.layer.name: t for t in traces}
    # mse on out2 (one unit): d/dpred mean((pred - y)^2) = 2 (pred - y) / n.
    expected = 2 * (by_name["out2"].output - y[1]) / 5
    np.testing.assert_allclose(
        by_name["out2"].output_gradient, expected, rtol=1e-4, atol=1e-7
    )


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.first = keras.layers.Dense(4, activation="relu")
        self.second = keras.layers.Dense(2)

    def call(self, x):
        return self.second(self.first(x))


def test_subclassed_model_and_sampling():
    model = Subclassed()
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(2).normal(size=(6, 3)).astype("float32")
    y = np.zeros((6, 2), "float32")
    model(x)
    traces = mf.layer_outputs_and_gradients(
        model, mf.convert_batch(x), mf.convert_batch(y), max_features=3
    )
    assert len(traces) == 2
    first = traces[0]
    assert first.output.shape == (6, 3)
    assert sorted(first.feature_indices.tolist()) == first.feature_indices.tolist()
    assert len(set(first.feature_indices.tolist())) == 3
    assert np.all(first.output >= 0)  # relu outputs
    assert "call" not in model.first.__dict__  # patch removed


def test_repeated_probes_follow_weights_and_statistics(monkeypatch):
    # Where the probe pass is compiled once per model (JAX), later probes must
    # see new weights, new normalization statistics and new data, as eager
    # passes do.
    model = compile_(
        keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(5, name="hidden"),
                keras.layers.BatchNormalization(name="norm"),
                keras.layers.Dense(3, activation="softmax", name="out"),
            ]
        )
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.integers(0, 3, size=32)

    def probe(data):
        traces, gradients = mf.layer_outputs_and_gradients(
            model, *mf.convert_batch(data), return_weight_gradients=True
        )
        return [t.output for t in traces] + [t.output_gradient for t in traces], [
            g for g in gradients.gradients
        ]

    seen = []
    for step in range(3):
        data = (x[:8] * (1 + step), y[:8])
        kept = probe(data)
        with monkeypatch.context() as patch:
            patch.setattr(mf, "compiles_per_model", lambda: False)
            eager = probe(data)
        for a, b in zip(kept[0] + kept[1], eager[0] + eager[1]):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
        seen.append(kept[0][1])
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)  # weights and stats move
    assert not np.allclose(seen[0], seen[1])
