"""`InputAndInitChecks` on real models, on the active backend."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from trainwatch.callbacks import input_init
from trainwatch.callbacks.input_init import InputAndInitChecks
from trainwatch.tensorboard import read_events


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = data.data.astype("float32")[:512]
    std = x.std(axis=0)
    std[std == 0] = 1
    return x, (x - x.mean(axis=0)) / std, data.target[:512]


def mlp(depth=2, initializer="glorot_uniform", width=32, compile=True):
    layers = [keras.Input((64,))]
    for _ in range(depth):
        layers.append(
            keras.layers.Dense(width, activation="relu", kernel_initializer=initializer)
        )
    layers.append(keras.layers.Dense(10, activation="softmax"))
    model = keras.Sequential(layers)
    if compile:
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss="sparse_categorical_crossentropy",
        )
    return model


def begin(model, **kwargs):
    """Runs the checks as `fit` would at train begin, without training."""
    checks = InputAndInitChecks(verbose=0, **kwargs)
    checks.set_model(model)
    checks.on_train_begin()
    return list(checks.context.findings)


def warnings_of(findings):
    return [(f.code, f.where) for f in findings if f.severity != "info"]


def test_healthy_run_is_silent_and_writes_scalars(digits, tmp_path):
    _, x, y = digits
    model = mlp()
    checks = InputAndInitChecks(tmp_path, data=(x, y), verbose=0)
    model.fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=[checks])
    found = list(checks.context.findings)
    assert warnings_of(found) == []
    assert {f.code for f in found} <= {"inputs_constant"}
    scalars = read_events(tmp_path)["train"].scalars
    kernels = [layer.kernel.path for layer in model.layers]
    for tag in ["inputs/feature_mean_abs_max", "inputs/rms"] + [
        f"init/variance_ratio/{path}" for path in kernels
    ]:
        assert tag in scalars, tag
    signal = [tag for tag in scalars if tag.startswith("init/signal_rms/")]
    assert len(signal) == len(kernels)
    assert scalars["inputs/feature_mean_abs_max"][0].value < 1e-5


def test_raw_pixels_warn(digits):
    raw, _, y = digits
    pixels = (raw * 16).clip(0, 255)  # 0-255, as raw 8-bit images
    model = mlp()
    checks = InputAndInitChecks(data=pixels, verbose=0)
    model.fit(pixels, y, batch_size=256, epochs=1, verbose=0, callbacks=[checks])
    assert warnings_of(checks.context.findings) == [("inputs_not_normalized", "inputs")]


def test_scaled_to_unit_interval_is_info_only(digits):
    raw, _, _ = digits
    found = begin(mlp(), data=raw / 16)
    assert warnings_of(found) == []
    assert ("inputs_not_normalized", "info") in [(f.code, f.severity) for f in found]


def test_large_and_zero_initializers_are_reported(digits):
    _, x, _ = digits
    model = mlp(initializer=keras.initializers.RandomNormal(stddev=1.0))
    found = begin(model, data=x)
    hidden = [layer.kernel.path for layer in model.layers[:2]]
    assert warnings_of(found) == [("init_scale_unusual", path) for path in hidden]
    assert "too large" in found[-1].message and "he_normal" in found[-1].advice

    model = mlp(initializer="zeros")
    path = model.layers[0].kernel.path
    found = [f for f in begin(model, data=x) if f.where == path]
    assert "every weight equal" in found[0].message


def test_output_layer_may_start_at_zero(digits):
    _, x, _ = digits
    model = mlp()
    head = model.layers[-1]
    head.kernel.assign(np.zeros(head.kernel.shape))
    assert warnings_of(begin(model, data=x)) == []
    head.kernel.assign(np.random.default_rng(0).normal(0, 3.0, head.kernel.shape))
    assert warnings_of(begin(model, data=x)) == [
        ("init_scale_unusual", head.kernel.path)
    ]


def test_vanishing_signal_is_reported(digits):
    _, x, _ = digits
    model = mlp(depth=5, initializer=keras.initializers.RandomNormal(stddev=0.01))
    found = begin(model, data=x)
    signal = [f for f in found if "vanishes" in f.message]
    assert [f.where for f in signal] == [model.layers[-1].path]


def test_exploding_signal_is_reported_for_a_subclassed_model(digits):
    _, x, _ = digits

    class Deep(keras.Model):
        def __init__(self):
            super().__init__()
            big = keras.initializers.RandomNormal(stddev=1.0)
            self.hidden = [
                keras.layers.Dense(32, activation="relu", kernel_initializer=big)
                for _ in range(4)
            ]
            self.out = keras.layers.Dense(10)

        def call(self, inputs):
            for layer in self.hidden:
                inputs = layer(inputs)
            return self.out(inputs)

    model = Deep()
    model(x[:2])
    found = begin(model, data=x)
    assert any("explodes" in f.message for f in found)
    assert {f.where for f in found if "too large" in f.message} == {
        layer.kernel.path for layer in model.hidden
    }


def test_normalized_layers_are_not_judged(digits):
    _, x, _ = digits
    big = keras.initializers.RandomNormal(stddev=1.0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, kernel_initializer=big),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    assert warnings_of(begin(model, data=x)) == []


def test_activation_after_a_layer():
    dense = [keras.layers.Dense(4) for _ in range(5)]
    inputs = keras.Input((4,))
    h = keras.layers.Activation("tanh")(dense[0](inputs))
    h = keras.layers.ReLU()(keras.layers.Dropout(0.5)(dense[1](h)))
    h = keras.layers.ReLU()(keras.layers.LayerNormalization()(dense[2](h)))
    h = keras.layers.Dense(4, activation="sigmoid")(dense[3](h))
    outputs = dense[4](h)
    keras.Model(inputs, outputs)
    after = [input_init._activation_after(layer) for layer in dense]
    assert after == ["tanh", "relu", None, "linear", "linear"]
    own = keras.layers.Dense(4, activation=keras.layers.LeakyReLU())
    assert input_init._activation_after(own) == "leaky_relu"


def test_images_channels_last_and_first(digits):
    raw, _, _ = digits
    images = (raw.reshape(-1, 8, 8, 1) * 16).clip(0, 255).astype(np.uint8)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    (finding,) = begin(model, data=images)
    assert finding.code == "inputs_not_normalized" and "per channel" in finding.advice

    # Channels first: channel 0 spans 0-255, channel 1 +-0.03: scales differ.
    rng = np.random.default_rng(0)
    first = np.stack(
        [rng.integers(0, 256, (64, 6, 6)), rng.normal(size=(64, 6, 6)) * 0.01], axis=1
    )
    flat = keras.Sequential(
        [keras.Input((2, 6, 6)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        (finding,) = begin(flat, data=first)
    finally:
        keras.config.set_image_data_format(previous)
    assert "channel 0 spans" in finding.message, finding.message


def test_several_inputs_and_token_ids(digits):
    raw, x, _ = digits
    pixels = keras.Input((64,), name="pixels")
    meta = keras.Input((64,), name="meta")
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(100, 4)(tokens))
    merged = keras.layers.Concatenate()([pixels, meta, embedded])
    model = keras.Model(
        {"pixels": pixels, "meta": meta, "tokens": tokens},
        keras.layers.Dense(10)(merged),
    )
    ids = np.random.default_rng(0).integers(0, 100, (len(x), 5))
    data = {"pixels": raw * 16, "meta": x, "tokens": ids}
    found = begin(model, data=data)
    assert warnings_of(found) == [("inputs_not_normalized", "pixels")]
    # A list of inputs: named after the model's inputs.
    both = keras.layers.Concatenate()([pixels, meta])
    listed = keras.Model([pixels, meta], keras.layers.Dense(10)(both))
    found = begin(listed, data=[x, raw * 16])
    assert warnings_of(found) == [("inputs_not_normalized", "meta")]


def test_no_data_checks_weights_only(digits):
    model = mlp(initializer=keras.initializers.RandomNormal(stddev=1.0))
    found = begin(model)
    assert [f.code for f in found] == ["init_scale_unusual"] * 2


def test_trained_model_is_not_at_init(digits):
    _, x, y = digits
    model = mlp(initializer=keras.initializers.RandomNormal(stddev=1.0))
    model.fit(x[:64], y[:64], epochs=1, verbose=0)
    assert [f for f in begin(model, data=x) if f.code == "init_scale_unusual"] == []


def test_bad_data_fails_early():
    with pytest.raises(TypeError, match="Received: data=tuple of length 4"):
        InputAndInitChecks(data=(1, 2, 3, 4))
    with pytest.raises(ValueError, match="batch sizes"):
        InputAndInitChecks(data=[np.zeros((3, 2)), np.zeros((4, 2))])
    with pytest.raises(TypeError, match=r"Received: data\.dtype="):
        InputAndInitChecks(data=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"Received: data\.shape=\(\)"):
        InputAndInitChecks(data=np.float32(3.0))
