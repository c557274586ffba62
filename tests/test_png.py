"""The PNG encoder/decoder, `to_uint8` and `image_grid`, checked against Pillow
where it is installed and against a hand-written PNG with every row filter."""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest

from trainwatch.tensorboard import decode_png, encode_png, image_grid, to_uint8


@pytest.fixture(autouse=True)
def _fixed_seed_and_clean_session():
    """Overrides conftest's Keras session reset (~0.16 s a test): no Keras here."""
    yield


SHAPES = [(1, 1), (5, 7), (6, 3, 1), (4, 9, 3), (3, 2, 4)]


def random_image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def png_chunks(data):
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        chunks.append(
            (
                data[position + 4 : position + 8],
                data[position + 8 : position + 8 + length],
            )
        )
        position += 12 + length
    return chunks


@pytest.mark.parametrize("shape", SHAPES)
def test_encode_decode_round_trip(shape):
    image = random_image(shape)
    decoded = decode_png(encode_png(image))
    expected = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_encoded_png_is_read_by_pillow(shape):
    pil_image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    image = random_image(shape, seed=1)
    with pil_image.open(io.BytesIO(encode_png(image))) as opened:
        expected_mode = {1: "L", 3: "RGB", 4: "RGBA"}[
            image.shape[2] if image.ndim == 3 else 1
        ]
        assert opened.mode == expected_mode
        assert opened.size == (shape[1], shape[0])
        np.testing.assert_array_equal(
            np.asarray(opened), image.reshape(np.asarray(opened).shape)
        )


@pytest.mark.parametrize("mode, channels", [("L", None), ("RGB", 3), ("RGBA", 4)])
def test_decodes_pillow_png(mode, channels):
    pil_image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    y, x = np.mgrid[0:40, 0:50]
    planes = [x * 3 + y * 2, y * 6, (x * y) % 256, x + 100][: channels or 1]
    image = np.stack(planes, -1).astype(np.uint8)
    image = image[:, :, 0] if channels is None else image
    buffer = io.BytesIO()
    pil_image.fromarray(image, mode=mode).save(buffer, format="PNG")  # adaptive filters
    np.testing.assert_array_equal(decode_png(buffer.getvalue()), image)


def test_decodes_every_row_filter():
    """A PNG filtered by hand, row y with filter y % 5 (PNG spec, section 9)."""
    image = random_image((10, 6, 3), seed=2)
    bpp, rows, previous = 3, [], [0] * 18
    for y, line in enumerate(image.reshape(10, 18).tolist()):
        kind, filtered = y % 5, []
        for i, value in enumerate(line):
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            p = a + b - c
            paeth = min((abs(p - a), 0, a), (abs(p - b), 1, b), (abs(p - c), 2, c))[2]
            predictor = [0, a, b, (a + b) // 2, paeth][kind]
            filtered.append((value - predictor) % 256)
        rows.append(bytes([kind] + filtered))
        previous = line
    header = struct.pack(">IIBBBBB", 6, 10, 8, 2, 0, 0, 0)

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body))
        )

    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )
    np.testing.assert_array_equal(decode_png(data), image)


def test_encoder_writes_a_valid_minimal_png():
    data = encode_png(np.full((2, 3, 3), 7, dtype=np.uint8))
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    chunks = png_chunks(data)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (3, 2, 8, 2, 0, 0, 0)


@pytest.mark.parametrize(
    "image, error",
    [
        (np.zeros((4, 4), dtype=np.float32), TypeError),
        (np.zeros((4, 4, 2), dtype=np.uint8), ValueError),
        (np.zeros((0, 4), dtype=np.uint8), ValueError),
        (np.zeros((2, 2, 2, 3), dtype=np.uint8), ValueError),
        (np.zeros(4, dtype=np.uint8), ValueError),
    ],
)
def test_encode_rejects_bad_images(image, error):
    with pytest.raises(error, match="Received: image"):
        encode_png(image)


def test_decode_rejects_corrupt_data():
    with pytest.raises(ValueError, match="not a PNG"):
        decode_png(b"GIF89a")
    data = bytearray(encode_png(random_image((4, 4))))
    data[-20] ^= 0xFF  # inside the IDAT chunk: its CRC no longer matches
    with pytest.raises(ValueError, match="corrupt"):
        decode_png(bytes(data))


def test_to_uint8_min_max_scaling():
    np.testing.assert_array_equal(to_uint8([-2.0, 0.0, 2.0]), [0, 128, 255])
    np.testing.assert_array_equal(to_uint8([[1, 3], [5, 9]]), [[0, 64], [128, 255]])
    np.testing.assert_array_equal(to_uint8([False, True]), [0, 255])
    assert to_uint8(np.ones((2, 3, 4))).shape == (2, 3, 4)


def test_to_uint8_is_nan_safe_and_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(
            to_uint8([np.nan, -np.inf, 1.0, 3.0, np.inf]), [0, 0, 0, 255, 255]
        )
        np.testing.assert_array_equal(to_uint8(np.full(3, 5.0)), [128, 128, 128])
        np.testing.assert_array_equal(to_uint8([np.nan, np.nan]), [0, 0])
        np.testing.assert_array_equal(to_uint8([-1e308, 1e308]), [0, 255])
        assert to_uint8(np.zeros((0, 3))).shape == (0, 3)


def test_to_uint8_rejects_non_numbers():
    with pytest.raises(TypeError, match="Received: array.dtype"):
        to_uint8(["a", "b"])


def test_image_grid_layout_and_border():
    images = np.random.default_rng(0).normal(size=(5, 4, 3))  # five 4x3 tiles
    grid = image_grid(images, border_value=7)
    # ceil(sqrt(5)) = 3 columns, 2 rows, 1-pixel frame.
    assert grid.shape == (2 * (4 + 1) + 1, 3 * (3 + 1) + 1) and grid.dtype == np.uint8
    assert (grid[0] == 7).all() and (grid[:, 0] == 7).all() and (grid[5] == 7).all()
    assert (grid[6:10, 9:12] == 7).all(), "the unused sixth cell stays frame"
    for index in range(5):
        row, column = divmod(index, 3)
        tile = grid[1 + 5 * row : 5 + 5 * row, 1 + 4 * column : 4 + 4 * column]
        np.testing.assert_array_equal(tile, to_uint8(images[index]))


def test_image_grid_normalizes_each_tile_on_its_own():
    rng = np.random.default_rng(1)
    tiny, huge = rng.normal(size=(6, 6)) * 1e-6, rng.normal(size=(6, 6)) * 1e6
    grid = image_grid(np.stack([tiny, huge]), ncols=2, border=0)
    for tile in (grid[:, :6], grid[:, 6:]):
        assert tile.min() == 0 and tile.max() == 255


def test_image_grid_channels():
    rgb = image_grid(np.random.default_rng(2).normal(size=(4, 3, 3, 3)), ncols=4)
    assert rgb.shape == (3 + 2, 4 * (3 + 1) + 1, 3)
    rgba = image_grid(np.zeros((2, 3, 3, 4)), border_value=0)
    assert rgba.shape == (5, 9, 4)
    assert (rgba[0, :, 3] == 255).all(), "the frame is opaque"
    assert (rgba[1:4, 1:4] == 128).all(), "a constant tile is mid-gray"
    assert image_grid(np.zeros((2, 3, 3, 1))).shape == (5, 9, 1)


def test_image_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Received: images.shape"):
        image_grid(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="Received: images.shape"):
        image_grid(np.zeros((2, 4, 4, 2)))
    with pytest.raises(ValueError, match="Received: images.shape"):
        image_grid(np.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="Received: ncols=0"):
        image_grid(np.zeros((2, 4, 4)), ncols=0)
    with pytest.raises(TypeError, match="Received: border=1.5"):
        image_grid(np.zeros((2, 4, 4)), border=1.5)
