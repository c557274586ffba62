"""Tiling many small images (filters, weight templates) into one grid image."""

import math

import numpy as np

from trainwatch.tensorboard.png import to_uint8
from trainwatch.validation import check_int

__all__ = ["image_grid"]


def image_grid(images, ncols=None, border=1, border_value=0):
    """Tiles `N` small images into one `uint8` grid, each tile scaled on its own.

    Every tile is min-max scaled to 0..255 by itself (all its channels
    together), so filters with very different magnitudes all stay visible; NaN
    pixels become 0. Tiles are laid out row by row, separated and surrounded by
    a `border`-pixel frame; unused cells of the last row are left as frame.

    Args:
        images: Array of shape `(N, H, W)` or `(N, H, W, C)` with `C` in 1, 3
            or 4, any numeric dtype.
        ncols: Number of tiles per row. Defaults to `None`, meaning
            `ceil(sqrt(N))`.
        border: Width of the frame in pixels, 0 or more. Defaults to `1`.
        border_value: Gray level of the frame, 0 to 255 (the alpha channel of
            RGBA grids is always opaque). Defaults to `0`.

    Returns:
        A `np.uint8` array of shape `(rows * (H + border) + border,
        ncols * (W + border) + border)`, followed by `C` when `images` had a
        channel axis.

    Raises:
        ValueError: If `images` has the wrong shape or no images, or an argument
            is out of range.
        TypeError: If `ncols` or `border` is not an integer.

    Example:
        >>> kernel = np.random.randn(5, 5, 3, 16)  # a first Conv2D layer's kernel
        >>> image_grid(np.moveaxis(kernel, -1, 0)).shape  # 16 RGB tiles, 4 x 4
        (25, 25, 3)
        >>> dense = np.random.randn(784, 10)  # a Dense kernel on 28x28 inputs
        >>> image_grid(dense.T.reshape(10, 28, 28), ncols=5).shape
        (59, 146)
    """
    tiles = np.asarray(images)
    if tiles.ndim not in (3, 4) or (
        tiles.ndim == 4 and tiles.shape[3] not in (1, 3, 4)
    ):
        raise ValueError(
            "`images` must have shape (N, H, W) or (N, H, W, C) with C in 1, 3, 4. "
            f"Received: images.shape={tiles.shape}"
        )
    if 0 in tiles.shape[:3]:
        raise ValueError(
            f"`images` must hold at least one non-empty image. "
            f"Received: images.shape={tiles.shape}"
        )
    count, height, width = tiles.shape[:3]
    if ncols is None:
        ncols = math.ceil(math.sqrt(count))
    ncols = _positive_int(ncols, "ncols", minimum=1)
    border = _positive_int(border, "border", minimum=0)
    if not 0 <= border_value <= 255:
        raise ValueError(
            "`border_value` must be within 0..255. "
            f"Received: border_value={border_value!r}"
        )
    nrows = math.ceil(count / ncols)
    ncols = min(ncols, count)
    channels = tiles.shape[3] if tiles.ndim == 4 else 1
    grid = np.full(
        (
            nrows * (height + border) + border,
            ncols * (width + border) + border,
            channels,
        ),
        border_value,
        dtype=np.uint8,
    )
    if channels == 4:
        grid[:, :, 3] = 255
    for index, tile in enumerate(tiles):
        row, column = divmod(index, ncols)
        top = border + row * (height + border)
        left = border + column * (width + border)
        grid[top : top + height, left : left + width] = to_uint8(tile).reshape(
            height, width, channels
        )
    return grid[:, :, 0] if tiles.ndim == 3 else grid


def _positive_int(value, name, minimum):
    return check_int(name, value, minimum)
