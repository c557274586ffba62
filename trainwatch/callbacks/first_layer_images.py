"""`FirstLayerImages`: the first layer's weights as images in TensorBoard.

A first layer that looks at pixels learns templates one can look at: smooth,
varied edge and blob detectors when training goes well, noise when it does
not (too high a learning rate, too little regularization, not trained
enough). Conv2D filters are drawn as they are (RGB when the input has three
channels); a Dense layer over image inputs has one weight per pixel for each
unit, drawn at the shape of the input image.
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np

from trainwatch.backends import get_backend
from trainwatch.backends import model_functions as mf
from trainwatch.callbacks.base import Monitor
from trainwatch.validation import check_int

__all__ = ["FirstLayerImages", "first_layer_tiles"]


def _image_weights(layer):
    """A layer's weights that may be drawn: its matrices and filters.

    Trainable ones, and frozen kernels and embeddings too (a pretrained,
    frozen first layer still is the one that looks at the pixels); not
    statistics such as `Normalization`'s mean, which are not trainable.
    """
    return [
        v
        for v in layer.weights
        if len(v.shape) >= 2
        and keras.backend.is_float_dtype(v.dtype)
        and (v.trainable or v.name.endswith(("kernel", "embeddings")))
    ]


def _first_weighted_layer(model):
    for layer in mf.leaf_layers(model):
        if _image_weights(layer):
            return layer
    return None


def _find_layer(model, layer):
    if layer is None:
        found = _first_weighted_layer(model)
        if found is None:
            raise ValueError(
                f"Model {model.name!r} has no layer with weight matrices or filters "
                "to draw. Received: layer=None"
            )
        return found
    if isinstance(layer, str):
        for candidate in mf.leaf_layers(model):
            if layer in (candidate.name, getattr(candidate, "path", None)):
                return candidate
        names = [getattr(c, "path", c.name) for c in mf.leaf_layers(model)]
        raise ValueError(
            f"No layer named {layer!r} in model {model.name!r}; its layers are "
            f"{names}. Received: layer={layer!r}"
        )
    return layer


def _input_image_shape(model):
    """Per-example shape of the model's single input, or `None` if unknown."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    flat = keras.tree.flatten(inputs) if inputs else []
    if len(flat) != 1:
        return None
    shape = tuple(flat[0].shape[1:])
    return shape if all(d is not None for d in shape) else None


def _as_hwc(image_shape):
    """`(H, W)`, `(H, W, C)` or channels-first `(C, H, W)` as `(H, W, C)` + order."""
    shape = tuple(int(d) for d in image_shape)
    if len(shape) == 2:
        return shape + (1,), False
    if len(shape) == 3:
        if shape[-1] not in (1, 3) and shape[0] in (1, 3):
            return (shape[1], shape[2], shape[0]), True
        return shape, False
    raise ValueError(
        "`image_shape` must be (height, width) or (height, width, channels). "
        f"Received: image_shape={image_shape!r}"
    )


def _tiles(images):
    """`(N, H, W, C)` weights as tiles for `image_grid`, and the columns to use.

    One or three channels are drawn as gray or RGB tiles; any other number of
    channels as one gray tile per channel, one row per unit.
    """
    channels = images.shape[-1]
    if channels == 1:
        return images[..., 0], None
    if channels == 3:
        return images, None
    count, height, width = images.shape[:3]
    tiles = np.moveaxis(images, -1, 1).reshape(count * channels, height, width)
    return tiles, channels


def first_layer_tiles(model, layer=None, image_shape=None, max_images=64):
    """The first layer's weights as image tiles, one per unit or filter.

    Args:
        model: A built Keras model.
        layer: The layer to draw (a layer, its name or its path). Defaults to
            `None`: the first layer with matrices or filters (trainable ones,
            or frozen kernels).
        image_shape: Shape of one input image, `(H, W)` or `(H, W, C)`, for a
            Dense layer on flat features (e.g. `(8, 8)` for 64 pixel
            features). Defaults to `None`: the model input's shape (a Dense
            after `Flatten`).
        max_images: Most tiles drawn (the first units). Defaults to `64`.

    Returns:
        `(variable path, tiles, ncols)`: `tiles` is `(N, H, W)` or
        `(N, H, W, 3)`, ready for `trainwatch.tensorboard.image_grid`, and
        `ncols` the columns to lay them out in (or `None`).

    Raises:
        ValueError: If the layer's weights cannot be drawn as images, with the
            reason and what to pass.

    Example:

    >>> model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(),
    ...                           keras.layers.Dense(16)])
    >>> path, tiles, _ = first_layer_tiles(model)
    >>> path, tiles.shape
    ('sequential/dense/kernel', (16, 8, 8))
    """
    layer = _find_layer(model, layer)
    kind = type(layer).__name__
    if isinstance(layer, keras.layers.Embedding):
        raise ValueError(
            f"Cannot draw {layer.name!r} ({kind}) as images: its "
            "weights are one vector per token index, not a template over input "
            "pixels. First-layer images are for models that look at images; pass "
            f"`layer=` to pick another layer. Received: layer={layer.name!r}"
        )
    variable = next((v for v in _image_weights(layer) if len(v.shape) in (2, 4)), None)
    if variable is None:
        shapes = [tuple(v.shape) for v in layer.weights]
        raise ValueError(
            f"Cannot draw the weights of {layer.name!r} ({kind}) as "
            f"images: only Dense (2-D) and Conv2D (4-D) kernels can be drawn; its "
            f"weights have shapes {shapes}. Pass `layer=` to pick "
            f"another layer. Received: layer={layer.name!r}"
        )
    kernel = get_backend().to_numpy(variable).astype(np.float32)
    path = getattr(variable, "path", None) or variable.name
    if kernel.ndim == 4:  # (kh, kw, in, out) on every backend
        images = np.moveaxis(kernel, -1, 0)
    else:
        n_inputs, units = kernel.shape
        shape = image_shape if image_shape is not None else _input_image_shape(model)
        if shape is None or len(shape) < 2:
            raise ValueError(
                f"Cannot draw the {kind} layer {layer.name!r} as images: its "
                f"{n_inputs} inputs have no image shape. Pass the shape of one "
                "input image, e.g. `image_shape=(8, 8)` for 64 pixels. "
                f"Received: image_shape={image_shape!r}"
            )
        (height, width, channels), channels_first = _as_hwc(shape)
        if height * width * channels != n_inputs:
            raise ValueError(
                f"`image_shape` must hold the {n_inputs} inputs of the {kind} layer "
                f"{layer.name!r} (height x width x channels = {n_inputs}). "
                f"Received: image_shape={tuple(shape)!r}"
            )
        columns = kernel.T
        if channels_first:
            images = columns.reshape(units, channels, height, width)
            images = np.moveaxis(images, 1, -1)
        else:
            images = columns.reshape(units, height, width, channels)
    tiles, ncols = _tiles(images[: max(1, max_images // _channels_drawn(images))])
    return path, tiles, ncols


def _channels_drawn(images):
    channels = images.shape[-1]
    return 1 if channels in (1, 3) else channels


class FirstLayerImages(Monitor):
    """Draws the first layer's weights as an image grid in TensorBoard.

    At train begin and every `image_freq` epochs, writes the image
    `first_layer/<variable.path>` (Images tab): one tile per Conv2D filter (RGB
    for 3-channel inputs) or per Dense unit over image inputs, each tile
    scaled to its own range. Well-trained first layers show smooth, varied
    templates; noisy ones suggest a too-high learning rate, too little
    regularization or too little training.

    Args:
        log_dir: Where to write TensorBoard logs (`<log_dir>/train`). Defaults
            to `None` (nothing to draw on: the callback does nothing).
        image_freq: Draw every this many epochs (and at train begin); 0 draws
            only at train begin. Defaults to `1`.
        image_shape: Shape of one input image, `(H, W)` or `(H, W, C)`, for a
            Dense first layer on flat features (e.g. `(8, 8)` for the 64
            features of scikit-learn's digits). Defaults to `None`: the
            model's input shape (e.g. a Dense after `Flatten`).
        layer: The layer to draw (layer, name or path). Defaults to `None`:
            the first layer with matrices or filters (trainable ones, or
            frozen kernels).
        max_images: Most tiles per image. Defaults to `64`.
        verbose: 0 silent, 1 print new findings. Defaults to `1`.

    A first layer that cannot be drawn (an Embedding, a Dense on features with
    no image shape) gives a warning once and switches the callback off.

    Example:

    >>> model.fit(x, y, epochs=5, callbacks=[
    ...     FirstLayerImages("runs/exp1", image_shape=(8, 8))])  # doctest: +SKIP
    """

    def __init__(
        self,
        log_dir=None,
        image_freq=1,
        image_shape=None,
        layer=None,
        max_images=64,
        verbose=1,
    ):
        super().__init__(log_dir=log_dir, verbose=verbose)
        self.image_freq = check_int("image_freq", image_freq, 0)
        self.max_images = check_int("max_images", max_images, 1)
        if image_shape is not None:
            if not isinstance(image_shape, (tuple, list)) or not all(
                isinstance(d, (int, np.integer)) and d > 0 for d in image_shape
            ):
                raise ValueError(
                    "`image_shape` must be a tuple of positive integers, e.g. "
                    f"(8, 8) or (32, 32, 3). Received: image_shape={image_shape!r}"
                )
            _as_hwc(image_shape)
        self.image_shape = None if image_shape is None else tuple(image_shape)
        self.layer = layer
        self._awaiting_build = False

    def begin(self):
        # Unbuilt (TensorFlow, no `Input`): drawn once Keras has built it.
        self._awaiting_build = not self.model.built
        if not self._awaiting_build:
            self._draw()

    def epoch_end(self, epoch, logs):
        due = self.image_freq and (epoch + 1) % self.image_freq == 0
        if due or self._awaiting_build:
            self._awaiting_build = False
            self._draw()

    def _draw(self):
        writer = self.context.writer("train")
        if writer is None:
            return
        from trainwatch.tensorboard import image_grid

        try:
            path, tiles, ncols = first_layer_tiles(
                self.model, self.layer, self.image_shape, self.max_images
            )
        except ValueError as error:
            self.disabled = True
            if self._owns_context or self.layer is not None or self.image_shape:
                # Asked for by name: that it cannot draw is worth a warning.
                warnings.warn(
                    f"FirstLayerImages is switched off: {error}",
                    UserWarning,
                    stacklevel=2,
                )
            elif self._verbose:  # a part of TrainWatch, on a model without images
                print(f"[trainwatch] images are off: {error}")
            return
        grid = image_grid(tiles, ncols=ncols or math.ceil(math.sqrt(len(tiles))))
        writer.image(
            f"first_layer/{path}",
            grid,
            self.context.step,
            description=(
                f"{len(tiles)} tiles of `{path}`, each scaled to its own range "
                "(black = its most negative weight, white = its most positive)."
            ),
        )
