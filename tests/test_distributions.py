"""`Distributions` on each backend: the rules fire on broken nets, stay quiet on a
healthy one, every kind of model is traced, histograms reach the event files,
and the probe leaves training untouched."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from trainwatch.callbacks.distributions import (
    Distributions,
    activation_name,
    distribution_findings,
    measure_distributions,
)
from trainwatch.tensorboard import read_events

LAYER_CODES = {"dead_units", "saturated_units", "vanishing_gradients"}
LAYER_CODES |= {"exploding_gradients"}


def digits(n=400):
    data = load_digits()
    x = data.data[:n].astype("float32")
    std = x.std(axis=0)
    std[std == 0] = 1.0
    return (x - x.mean(axis=0)) / std, data.target[:n]


def codes(findings):
    return [(f.code, f.where) for f in findings]


def mlp(hidden, activation="relu", n_in=64, **dense_kwargs):
    layers = [keras.Input((n_in,))]
    layers += [
        keras.layers.Dense(h, activation=activation, **dense_kwargs) for h in hidden
    ]
    layers += [keras.layers.Dense(10, activation="softmax")]
    model = keras.Sequential(layers)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def test_dead_relu_units_from_a_large_negative_bias():
    x, y = digits(64)
    model = mlp(
        [32, 16], bias_initializer=keras.initializers.Constant(-20.0)
    )  # both hidden layers start dead
    layers, _ = measure_distributions(model, x, y)
    first = layers[0]
    assert first.activation == "relu" and tuple(first.dead) == (32, 32)
    findings = distribution_findings(layers, step=0)
    dead = [f for f in findings if f.code == "dead_units"]
    assert dead[0].where == "sequential/dense" and dead[0].severity == "error"
    assert "32 of 32" in dead[0].message


def test_saturated_tanh_from_large_initial_weights():
    x, y = digits(64)
    model = mlp(
        [32],
        activation="tanh",
        kernel_initializer=keras.initializers.RandomNormal(0, 5),
    )
    layers, _ = measure_distributions(model, x, y)
    assert layers[0].saturated.fraction > 0.8
    assert ("saturated_units", "sequential/dense") in codes(
        distribution_findings(layers)
    )


def test_vanishing_gradients_in_a_deep_sigmoid_net():
    x, y = digits(64)
    model = mlp([16] * 8, activation="sigmoid")
    layers, _ = measure_distributions(model, x, y)
    found = codes(distribution_findings(layers))
    assert ("vanishing_gradients", "sequential/dense") in found, found
    rms = [d.kernel_gradient_rms for d in layers]
    assert rms[0] < rms[-1] / 100


def test_dead_channels_of_a_conv_layer_with_sampled_outputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 12, 12, 1)).astype("float32")
    y = rng.integers(0, 3, size=16)
    bias = np.zeros(8, "float32")
    bias[:3] = -100.0  # channels 0, 1, 2 dead
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.layers[0].bias.assign(bias)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    layers, _ = measure_distributions(model, x, y, max_features=64)  # 800 > 64
    conv = layers[0]
    assert conv.output.shape == (16, 64)  # 8 positions x all 8 channels
    assert tuple(conv.dead) == (3, 8)


def train(x, y, callbacks):
    keras.utils.set_random_seed(7)
    model = mlp([64, 32])
    model.fit(x, y, batch_size=50, epochs=3, verbose=0, callbacks=callbacks)
    return model


def test_healthy_digits_mlp_quiet_read_back_and_training_untouched(tmp_path):
    x, y = digits()
    callback = Distributions(tmp_path, probe=(x[:64], y[:64]), verbose=0)
    model = train(x, y, [callback])
    # The probe changes nothing: the same weights as without it, bit for bit.
    plain = train(x, y, [])
    for watched, unwatched in zip(model.weights, plain.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(watched), keras.ops.convert_to_numpy(unwatched)
        )
    assert not [f for f in callback.context.findings if f.code in LAYER_CODES], [
        str(f) for f in callback.context.findings
    ]
    run = read_events(str(tmp_path))["train"]
    layers = ["sequential/dense", "sequential/dense_1", "sequential/dense_2"]
    paths = [v.path for v in model.weights]
    expected = {f"activations/{n}" for n in layers}
    expected |= {f"activation_gradients/{n}" for n in layers}
    expected |= {f"weights/{p}" for p in paths} | {
        f"weight_gradients/{p}" for p in paths
    }
    assert set(run.histograms) == expected
    assert [e.step for e in run.histograms["weights/sequential/dense/kernel"]] == [
        0,
        8,
        16,
        24,
    ]
    assert {
        "dead_fraction/sequential/dense",
        "gradient_norm/sequential/dense_2",
    } <= set(run.scalars)
    # The last histogram holds every probe activation of the first layer.
    last = run.histograms["activations/sequential/dense"][-1]
    assert last.counts.sum() == 64 * 64
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)
    last_weights = run.histograms["weights/sequential/dense/kernel"][-1]
    assert last_weights.edges[0] == pytest.approx(kernel.min(), rel=1e-5)
    assert last_weights.edges[-1] == pytest.approx(kernel.max(), rel=1e-5)


def nested_functional():
    inner = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(
                8,
                activation="tanh",
                kernel_initializer=keras.initializers.RandomNormal(0, 20),
                name="inner_tanh",
            ),
        ],
        name="inner",
    )
    a = keras.Input((3,), name="a")
    b = keras.Input((4,), name="b")
    h = keras.layers.Concatenate(name="concat")(
        [keras.layers.Dense(4, activation="relu", name="da")(a), inner(b)]
    )
    label = keras.layers.Dense(
        1,
        activation="sigmoid",
        kernel_initializer=keras.initializers.RandomNormal(0, 50),
        name="label",
    )(h)
    value = keras.layers.Dense(2, name="value")(h)
    model = keras.Model([a, b], [label, value])
    model.compile(optimizer="sgd", loss=["binary_crossentropy", "mse"])
    return model


def test_functional_multi_input_multi_output_nested(tmp_path):
    model = nested_functional()
    rng = np.random.default_rng(1)
    x = [rng.normal(size=(16, 3)), rng.normal(size=(16, 4))]
    y = [rng.integers(0, 2, size=(16, 1)).astype("float32"), rng.normal(size=(16, 2))]
    layers, variables = measure_distributions(model, x, y)
    by_name = {d.layer.name: d for d in layers}
    assert {"da", "inner_tanh", "concat", "label", "value"} <= set(by_name)
    for d in layers:
        assert d.output_gradient is not None and np.all(np.isfinite(d.output_gradient))
    assert by_name["inner_tanh"].name.endswith("inner/inner_tanh")
    assert by_name["inner_tanh"].saturated.fraction > 0.5
    assert by_name["label"].saturated is None  # an output layer may be confident
    found = codes(distribution_findings(layers))
    assert ("saturated_units", by_name["inner_tanh"].name) in found
    assert {v.path for v in variables} == {v.path for v in model.weights}
    # Through the callback too (its train-begin probe).
    callback = Distributions(tmp_path, probe=(x, y), verbose=0)
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_train_end()
    histograms = read_events(str(tmp_path))["train"].histograms
    assert f"activations/{by_name['inner_tanh'].name}" in histograms


class Block(keras.layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units)
        self.act = keras.layers.ReLU()

    def call(self, x):
        return self.act(self.dense(x))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.block = Block(6)
        self.head = keras.layers.Dense(3, activation="softmax")

    def call(self, x):
        return self.head(self.block(x))


def test_subclassed_model_with_a_custom_block():
    model = Subclassed()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 5)).astype("float32")
    y = rng.integers(0, 3, size=10)
    model(x)
    model.block.dense.bias.assign(np.full(6, -50.0, "float32"))
    layers, _ = measure_distributions(model, x, y)
    kinds = [(type(d.layer).__name__, d.activation) for d in layers]
    assert kinds == [("Dense", "linear"), ("ReLU", "relu"), ("Dense", "softmax")]
    assert tuple(layers[1].dead) == (6, 6)
    assert ("dead_units", layers[1].name) in codes(distribution_findings(layers))


def test_activation_names():
    assert activation_name(keras.layers.Dense(2, activation="relu6")) == "relu6"
    assert activation_name(keras.layers.Activation("sigmoid")) == "sigmoid"
    assert activation_name(keras.layers.ReLU()) == "relu"
    assert activation_name(keras.layers.LeakyReLU()) == "leaky_relu"
    assert activation_name(keras.layers.Flatten()) is None


def test_arguments_are_checked():
    with pytest.raises(ValueError, match=r"Received: probe=None"):
        Distributions(probe=None)
    with pytest.raises(
        ValueError, match=r"Received: probe=\(<ndarray shape=\(4, 2\)>\)"
    ):
        Distributions(probe=(np.zeros((4, 2)),))
    with pytest.raises(ValueError, match=r"Received: histogram_freq=-1"):
        Distributions(probe=(np.zeros((4, 2)), np.zeros(4)), histogram_freq=-1)
    with pytest.raises(ValueError, match=r"Received: dead_threshold=0"):
        Distributions(probe=(np.zeros((4, 2)), np.zeros(4)), dead_threshold=0)
    with pytest.raises(ValueError, match=r"Received: gradient_ratio=0.5"):
        Distributions(probe=(np.zeros((4, 2)), np.zeros(4)), gradient_ratio=0.5)
    with pytest.raises(TypeError, match=r"Received: max_features=1.5"):
        Distributions(probe=(np.zeros((4, 2)), np.zeros(4)), max_features=1.5)


def test_recurrent_and_attention_layers():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 4, 3)).astype("float32")
    y = rng.integers(0, 2, size=8)
    inputs = keras.Input((4, 3))
    h = keras.layers.SimpleRNN(6, return_sequences=True, name="rnn")(inputs)
    h = keras.layers.MultiHeadAttention(2, 4, name="mha")(h, h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(2, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    layers, _ = measure_distributions(model, x, y)
    by_name = {d.name: d for d in layers}
    # The RNN is measured as one layer (its cell runs inside a loop).
    assert "rnn" in by_name and "rnn/simple_rnn_cell" not in by_name
    assert by_name["rnn"].output.shape == (8, 24)
    assert by_name["rnn"].output_gradient is not None
    assert {"mha/query", "mha/key", "mha/value"} <= set(by_name)
    # Tiny query/key gradients at initialization are not vanishing gradients.
    assert not distribution_findings(layers)


def test_inside_trainwatch_probes_and_images_share_one_log(tmp_path, watch_with_only):
    x, y = digits(100)
    model = mlp([16])
    watch = watch_with_only(
        tmp_path, (x[:32], y[:32]), ("distributions", "images"), image_shape=(8, 8)
    )
    model.fit(x, y, batch_size=50, epochs=2, verbose=0, callbacks=[watch])
    run = read_events(str(tmp_path))["train"]
    steps = [e.step for e in run.histograms["activations/sequential/dense"]]
    assert steps == [0, 2, 4]
    assert [e.step for e in run.images["first_layer/sequential/dense/kernel"]] == [
        0,
        2,
        4,
    ]


class Branching(keras.Model):
    """Runs `a` or `b` depending on the data: the remembered plan must adapt."""

    def __init__(self):
        super().__init__()
        self.a = keras.layers.Dense(3, name="a")
        self.b = keras.layers.Dense(3, name="b")

    def build(self, input_shape):
        self.a.build(input_shape)
        self.b.build(input_shape)

    def call(self, x):
        if float(keras.ops.convert_to_numpy(keras.ops.sum(x))) > 0:
            return self.a(x)
        return self.b(x)


def test_layer_plan_is_remembered_and_renewed_when_the_path_changes():
    model = Branching()
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((4, 2), "float32")
    y = np.zeros((4, 3), "float32")
    model.build(x.shape)
    first, _ = measure_distributions(model, x, y)
    again, _ = measure_distributions(model, x, y)
    other, _ = measure_distributions(model, -x, y)
    assert [d.layer.name for d in first] == ["a"] == [d.layer.name for d in again]
    assert [d.layer.name for d in other] == ["b"]
    np.testing.assert_array_equal(first[0].output_gradient, again[0].output_gradient)


def test_inside_trainwatch_a_long_epoch_is_probed_mid_epoch(tmp_path, watch_with_only):
    x, y = digits(100)
    model = mlp([16])
    watch = watch_with_only(tmp_path, (x[:32], y[:32]), ("distributions",))
    # Every epoch counts as long: a probe once per 0 s, within the budget.
    watch.part("Distributions").mid_epoch_seconds = 0.0
    model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[watch])
    run = read_events(str(tmp_path))["train"]
    steps = [e.step for e in run.histograms["activations/sequential/dense"]]
    assert steps[0] == 0 and steps[-1] == 10  # train begin, epoch end
    assert any(0 < s < 10 for s in steps), steps  # and in between


def test_on_its_own_the_probe_schedule_stays_per_epoch(tmp_path):
    x, y = digits(100)
    model = mlp([16])
    probes = Distributions(tmp_path, probe=(x[:32], y[:32]), verbose=0)
    probes.mid_epoch_seconds = 0.0
    model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[probes])
    run = read_events(str(tmp_path))["train"]
    assert [e.step for e in run.histograms["activations/sequential/dense"]] == [0, 10]


def test_bfloat16_activations_are_histogrammed(tmp_path, watch_with_only):
    """Under `mixed_bfloat16` the probe's activations and gradients are
    bfloat16, which numpy knows only through ml_dtypes (and torch not at all):
    they are widened to float32, not a `monitor_failed`."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, size=64)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(8, activation="relu"),
                keras.layers.Dense(3),
                keras.layers.Activation("softmax", dtype="float32"),
            ]
        )
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile("adam", "sparse_categorical_crossentropy")
    watch = watch_with_only(str(tmp_path), (x[:32], y[:32]), ("distributions",))
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[watch])
    assert [f.code for f in watch.context.findings] == []
    histograms = read_events(str(tmp_path / "train"))["."].histograms
    assert any(tag.startswith("activations/") for tag in histograms), histograms
