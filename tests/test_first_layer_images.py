"""`FirstLayerImages`: Conv2D filters and Dense templates, read back as PNGs."""

import keras
import numpy as np
import pytest

from trainwatch.callbacks.first_layer_images import FirstLayerImages, first_layer_tiles
from trainwatch.tensorboard import image_grid, read_events


def conv_model(channels=1, filters=6, initializer="glorot_uniform"):
    model = keras.Sequential(
        [
            keras.Input((8, 8, channels)),
            keras.layers.Conv2D(
                filters, 3, activation="relu", kernel_initializer=initializer
            ),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def random_conv_model(channels):
    """A conv model whose kernel is set from numpy (fewer JAX compilations)."""
    model = conv_model(channels, initializer="zeros")
    kernel = model.layers[0].kernel
    rng = np.random.default_rng(channels)
    kernel.assign(rng.normal(size=kernel.shape).astype("float32"))
    return model


def test_conv2d_filters_gray_and_rgb():
    path, tiles, ncols = first_layer_tiles(random_conv_model(1))
    assert path.endswith("conv2d/kernel") and tiles.shape == (6, 3, 3)
    assert ncols is None
    model = random_conv_model(3)
    _, tiles, _ = first_layer_tiles(model)
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)
    assert tiles.shape == (6, 3, 3, 3)
    np.testing.assert_array_equal(tiles[2], kernel[..., 2])
    # Two input channels: one gray tile per (filter, channel), a row per filter.
    _, tiles, ncols = first_layer_tiles(random_conv_model(2))
    assert tiles.shape == (12, 3, 3) and ncols == 2


def test_dense_after_flatten_and_on_flat_features():
    model = keras.Sequential(
        [keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(5)]
    )
    path, tiles, _ = first_layer_tiles(model)
    kernel = keras.ops.convert_to_numpy(model.layers[-1].kernel)
    assert path == "sequential/dense/kernel" and tiles.shape == (5, 8, 8)
    np.testing.assert_array_equal(tiles[1], kernel[:, 1].reshape(8, 8))
    flat = keras.Sequential([keras.Input((64,)), keras.layers.Dense(70)])
    _, tiles, _ = first_layer_tiles(flat, image_shape=(8, 8), max_images=16)
    assert tiles.shape == (16, 8, 8)
    with pytest.raises(ValueError, match=r"image_shape=\(8, 8\)"):
        first_layer_tiles(flat)
    with pytest.raises(ValueError, match=r"Received: image_shape=\(4, 4\)"):
        first_layer_tiles(flat, image_shape=(4, 4))


def test_images_read_back_after_fit(tmp_path):
    model = conv_model(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, size=20)
    callback = FirstLayerImages(tmp_path, verbose=0)
    model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[callback])
    images = read_events(str(tmp_path))["train"].images
    events = images["first_layer/sequential/conv2d/kernel"]
    assert [e.step for e in events] == [0, 2, 4]
    _, tiles, _ = first_layer_tiles(model)
    np.testing.assert_array_equal(events[-1].to_array(), image_grid(tiles))
    assert not np.array_equal(events[0].to_array(), events[-1].to_array())


def test_undrawable_first_layer_warns_once_and_stops(tmp_path):
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(4), keras.layers.Dense(2)]
    )
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((8, 64), "float32")
    y = np.zeros((8, 2), "float32")
    callback = FirstLayerImages(tmp_path, verbose=0)
    with pytest.warns(UserWarning, match="image_shape") as caught:
        model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    assert len([w for w in caught if "FirstLayerImages" in str(w.message)]) == 1
    assert callback.disabled
    runs = read_events(str(tmp_path))
    assert not any(run.images for run in runs.values())


def test_arguments_are_checked():
    with pytest.raises(ValueError, match=r"Received: image_shape=\(0, 8\)"):
        FirstLayerImages(image_shape=(0, 8))
    with pytest.raises(ValueError, match=r"Received: image_shape=\(2, 2, 2, 2\)"):
        FirstLayerImages(image_shape=(2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"Received: image_freq=-2"):
        FirstLayerImages(image_freq=-2)
    with pytest.raises(ValueError, match=r"Received: layer='nope'"):
        first_layer_tiles(random_conv_model(1), layer="nope")


def test_frozen_first_layer_is_drawn_not_the_next_one():
    # A pretrained, frozen first layer is still the one that sees the pixels;
    # the next layer's inputs are features, not pixels, and must not be drawn
    # as images of the input.
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, trainable=False),
            keras.layers.Conv2D(5, 3),
        ]
    )
    path, tiles, _ = first_layer_tiles(model)
    assert path == model.layers[0].kernel.path
    assert tiles.shape == (4, 3, 3, 3)
    # Statistics that are not trainable (Normalization's mean) are skipped.
    norm = keras.layers.Normalization(axis=(1, 2))
    norm.adapt(np.random.default_rng(0).normal(size=(4, 8, 8)))
    model = keras.Sequential(
        [keras.Input((8, 8)), norm, keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    path, tiles, _ = first_layer_tiles(model)
    assert path == model.layers[-1].kernel.path
    assert tiles.shape == (3, 8, 8)


def test_embedding_first_layer_says_why_it_cannot_be_drawn():
    model = keras.Sequential(
        [
            keras.Input((10,), dtype="int32"),
            keras.layers.Embedding(50, 8),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(4),
        ]
    )
    with pytest.raises(ValueError, match=r"\(Embedding\).*token") as error:
        first_layer_tiles(model, image_shape=(5, 10))
    assert "Dense layer" not in str(error.value)
