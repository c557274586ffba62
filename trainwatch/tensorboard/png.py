"""A tiny PNG encoder and decoder in numpy and zlib (no Pillow).

Only what TensorBoard images need: 8-bit grayscale, RGB and RGBA, not
interlaced. `to_uint8` turns any numeric array into displayable pixels.
"""

import struct
import zlib

import numpy as np

__all__ = ["decode_png", "encode_png", "to_uint8"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG color type for each channel count, and back.
_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
_CHANNELS = {value: key for key, value in _COLOR_TYPES.items()}


def to_uint8(array):
    """Scales a numeric array to `uint8` pixels by its finite minimum and maximum.

    The smallest finite value becomes 0 and the largest 255. NaN and `-inf`
    become 0, `+inf` becomes 255, and a constant array becomes mid-gray (128).
    The shape is kept. No warnings are raised for any of these cases.

    Args:
        array: Array-like of bool, integer or float values, any shape.

    Returns:
        A `np.uint8` array of the same shape.

    Raises:
        TypeError: If `array` is not boolean, integer or float.

    Example:
        >>> to_uint8([0.0, 0.5, 1.0, float("nan")]).tolist()
        [0, 128, 255, 0]
    """
    values = np.asarray(array)
    if values.dtype.kind not in "biuf":
        raise TypeError(
            "`array` must hold bool, integer or float values. "
            f"Received: array.dtype={values.dtype}"
        )
    values = values.astype(np.float64)
    pixels = np.zeros(values.shape, dtype=np.uint8)
    finite = np.isfinite(values)
    if finite.any():
        finite_values = values[finite]
        low, high = finite_values.min(), finite_values.max()
        if high > low:
            # Halving first keeps (high - low) finite for the widest float64 range.
            scaled = (finite_values / 2 - low / 2) / (high / 2 - low / 2)
            pixels[finite] = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0)
        else:
            pixels[finite] = 128
    pixels[values == np.inf] = 255
    return pixels


def encode_png(image, compress_level=6):
    """Encodes a `uint8` image as PNG bytes.

    Args:
        image: `np.uint8` array of shape `(H, W)` or `(H, W, 1)` (grayscale),
            `(H, W, 3)` (RGB) or `(H, W, 4)` (RGBA). Convert other dtypes with
            `to_uint8` first.
        compress_level: zlib compression level, 0 to 9. Defaults to `6`.

    Returns:
        The PNG file contents as `bytes`.

    Raises:
        TypeError: If `image` is not `uint8`.
        ValueError: If the shape is not one of the above or is empty.

    Example:
        >>> png = encode_png(np.zeros((2, 3), dtype=np.uint8))
        >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        raise TypeError(
            "`image` must be a uint8 array; scale it with `to_uint8` first. "
            f"Received: image.dtype={pixels.dtype}"
        )
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4) or 0 in pixels.shape[:2]:
        raise ValueError(
            "`image` must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) "
            f"with H, W > 0. Received: image.shape={np.shape(image)}"
        )
    height, width, channels = pixels.shape
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0)
    # Each scanline starts with its filter type byte; 0 means "no filter".
    scanlines = np.zeros((height, 1 + width * channels), dtype=np.uint8)
    scanlines[:, 1:] = pixels.reshape(height, width * channels)
    data = zlib.compress(scanlines.tobytes(), compress_level)
    return b"".join(
        [
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", data),
            _chunk(b"IEND", b""),
        ]
    )


def decode_png(data):
    """Decodes 8-bit, non-interlaced PNG bytes into a `uint8` array.

    Reads what `encode_png` writes and what most encoders (Pillow, TensorFlow)
    write for such images, with any of the five PNG row filters.

    Args:
        data: The PNG file contents as `bytes`.

    Returns:
        A `np.uint8` array of shape `(H, W)` for grayscale, `(H, W, 2)` for
        grayscale with alpha, `(H, W, 3)` for RGB and `(H, W, 4)` for RGBA.

    Raises:
        ValueError: If `data` is not a PNG this decoder supports, or is corrupt.

    Example:
        >>> image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
        >>> bool((decode_png(encode_png(image)) == image).all())
        True
    """
    data = bytes(data)
    if not data.startswith(_SIGNATURE):
        raise ValueError(f"`data` is not a PNG file. Received: data={data[:16]!r}")
    header, idat = None, []
    position = len(_SIGNATURE)
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(
            ">I", data[position + 8 + length : position + 12 + length]
        )
        if len(body) != length or zlib.crc32(kind + body) != crc:
            raise ValueError(f"`data` has a corrupt {kind!r} chunk.")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        position += 12 + length
    if header is None or not idat:
        raise ValueError("`data` has no IHDR or no IDAT chunk.")
    width, height, depth, color_type, _, _, interlace = header
    if depth != 8 or color_type not in _CHANNELS or interlace != 0:
        raise ValueError(
            "Only 8-bit, non-interlaced gray/RGB(A) PNGs are supported. Received: "
            f"bit_depth={depth}, color_type={color_type}, interlace={interlace}"
        )
    channels = _CHANNELS[color_type]
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    stride = width * channels
    if raw.size != height * (stride + 1):
        raise ValueError("`data` holds the wrong number of pixel bytes.")
    rows = raw.reshape(height, stride + 1)
    pixels = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        pixels[y] = _unfilter(rows[y, 0], rows[y, 1:], previous, channels)
        previous = pixels[y]
    pixels = pixels.reshape(height, width, channels)
    return pixels[:, :, 0] if channels == 1 else pixels


def _chunk(kind, body):
    crc = zlib.crc32(kind + body)
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _unfilter(filter_type, line, previous, bpp):
    """Reverses one PNG row filter (PNG spec, section 9)."""
    if filter_type == 0:
        return line
    if filter_type == 1:  # Sub: running sum along each channel.
        result = np.empty_like(line)
        for channel in range(bpp):
            running = np.cumsum(line[channel::bpp], dtype=np.uint64)
            result[channel::bpp] = (running & 0xFF).astype(np.uint8)
        return result
    if filter_type == 2:  # Up.
        return line + previous
    if filter_type not in (3, 4):
        raise ValueError(f"Unknown PNG filter type {filter_type}.")
    result = bytearray(len(line))
    up = previous.tolist()
    for i, value in enumerate(line.tolist()):
        left = result[i - bpp] if i >= bpp else 0
        if filter_type == 3:  # Average.
            predictor = (left + up[i]) // 2
        else:  # Paeth.
            upper_left = up[i - bpp] if i >= bpp else 0
            estimate = left + up[i] - upper_left
            distances = (
                abs(estimate - left),
                abs(estimate - up[i]),
                abs(estimate - upper_left),
            )
            predictor = (left, up[i], upper_left)[distances.index(min(distances))]
        result[i] = (value + predictor) & 0xFF
    return np.frombuffer(bytes(result), dtype=np.uint8)
