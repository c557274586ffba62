"""Pure builders of TensorBoard `Summary` protos, with numpy and no TensorFlow.

This is the one module that touches tensorboard's semi-internal summary API:
the `summary_v2` `*_pb` builders and the plugins' metadata helpers, none of
which import TensorFlow (tensorboard 2.16 to 2.21). Only the summaries'
formats matter to TensorBoard; they match what `tf.summary` writes.
"""

import functools
import struct
from collections.abc import Mapping, Sequence

import numpy as np
from tensorboard.compat.proto import (
    summary_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text.summary_v2 import text_pb
from tensorboard.util import tensor_util

__all__ = [
    "custom_scalars_summary",
    "event_bytes",
    "float32_bytes",
    "histogram_summary",
    "image_summary",
    "layout_proto",
    "scalar_value",
    "scalar_value_frame",
    "text_summary",
]


_CHUNK = 1 << 18  # values per step of the histogram (2 MB as float64)


_SCALAR_METADATA = scalar_metadata.create_summary_metadata(
    display_name=None, description=None
)
_SCALAR_SHAPE = tensor_shape_pb2.TensorShapeProto()  # rank 0


def scalar_value(tag, value, with_metadata=True):
    """A scalars-plugin `Summary.Value` of one Python float, as `tf.summary` writes it.

    The same bytes as the plugin's `scalar_pb` (a rank-0 float32 tensor in
    `float_val`; values beyond the float32 range become ±inf), built directly:
    about 2 µs instead of 12, which matters for scalars written every few
    steps. The plugin metadata is only needed on a tag's first value in a file.

    Example:
        >>> scalar_value("loss", 0.25).tensor.float_val[0]
        0.25
    """
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_shape=_SCALAR_SHAPE, float_val=[value]
    )
    if with_metadata:
        return summary_pb2.Summary.Value(
            tag=tag, tensor=tensor, metadata=_SCALAR_METADATA
        )
    return summary_pb2.Summary.Value(tag=tag, tensor=tensor)


# -- scalars as bytes -----------------------------------------------------------
# Scalars are written every few steps, a dozen tags an event: building them as
# protos costs ~35 µs an event, assembling their wire format from cached
# pieces ~5 µs. The pieces come from the protos themselves (a message's
# fields may be serialized one at a time and concatenated), checked below.
_TENSOR_HEAD = b"\x42\x0a\x08\x01\x12\x00\x2a\x04"  # tensor, DT_FLOAT, rank 0


def _varint(number):
    number &= 0xFFFFFFFFFFFFFFFF  # negative int64: two's complement, 10 bytes
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def float32_bytes(value):
    """`value` as the 4 little-endian bytes of a float32 (beyond its range: ±inf)."""
    try:
        return struct.pack("<f", value)
    except OverflowError:
        return struct.pack("<f", float("inf") if value > 0 else float("-inf"))


@functools.lru_cache(maxsize=16384)
def scalar_value_frame(tag, with_metadata=True):
    """The serialized `Summary.value` entry of scalar `tag`, around its number.

    `head + float32_bytes(value) + tail` is the entry of a serialized
    `Summary` that `scalar_value(tag, value, with_metadata)` makes.

    Example:
        >>> head, tail = scalar_value_frame("loss", with_metadata=False)
        >>> entry = head + float32_bytes(0.25) + tail
        >>> summary_pb2.Summary.FromString(entry).value[0].tensor.float_val[0]
        0.25
    """
    body = summary_pb2.Summary.Value(tag=tag).SerializeToString() + _TENSOR_HEAD
    tail = b""
    if with_metadata:
        value = summary_pb2.Summary.Value(metadata=_SCALAR_METADATA)
        tail = value.SerializeToString()
    length = len(body) + 4 + len(tail)
    return b"\x0a" + _varint(length) + body, tail


def event_bytes(wall_time, step, summary):
    """A serialized `Event` at `step` holding the serialized `Summary` `summary`.

    Example:
        >>> from tensorboard.compat.proto import event_pb2
        >>> event_pb2.Event.FromString(event_bytes(1.5, 7, b"")).step
        7
    """
    return b"".join(
        (
            b"\x09",
            struct.pack("<d", wall_time),
            b"\x10",
            _varint(step),
            b"\x2a",
            _varint(len(summary)),
            summary,
        )
    )


def scalar_event_positions(event, frames):
    """Indices of the bytes of a scalars event that vary between its events.

    `event` is `event_bytes(wall_time, step, summary)` of a summary made of
    `head + float32_bytes(value) + tail` for each `(head, tail)` in `frames`;
    other events of the same frames and the same step length differ from it
    only in the wall time, the step and the numbers.

    Example:
        >>> frames = [scalar_value_frame("loss", with_metadata=False)]
        >>> event = event_bytes(1.5, 7, frames[0][0] + float32_bytes(2.0))
        >>> positions = scalar_event_positions(event, frames)
        >>> list(positions[:9]), len(positions)  # wall time, step, the number
        ([1, 2, 3, 4, 5, 6, 7, 8, 10], 13)
    """
    summary_length = sum(len(head) + 4 + len(tail) for head, tail in frames)
    start = len(event) - summary_length  # where the summary begins
    step_end = start - 1 - len(_varint(summary_length))  # before b"\x2a", length
    positions = list(range(1, 9))  # the wall time's 8 bytes
    positions += range(10, step_end)  # the step's varint
    offset = start
    for head, tail in frames:
        offset += len(head)
        positions += range(offset, offset + 4)
        offset += 4 + len(tail)
    return positions


def _frames_match_protos():
    """Whether the byte pieces above give what protobuf serializes (checked once)."""
    from tensorboard.compat.proto import event_pb2

    head, tail = scalar_value_frame("a/b", True)
    mine = event_bytes(2.5, 3, head + float32_bytes(1.5) + tail)
    summary = summary_pb2.Summary(value=[scalar_value("a/b", 1.5, True)])
    theirs = event_pb2.Event(wall_time=2.5, step=3, summary=summary)
    return event_pb2.Event.FromString(mine) == theirs


FAST_SCALARS = _frames_match_protos()


def _finite_chunks(data):
    """`data` (flat) as float64 pieces of its finite values, `_CHUNK` at a time."""
    for start in range(0, data.size, _CHUNK):
        chunk = data[start : start + _CHUNK].astype(np.float64)
        yield chunk[np.isfinite(chunk)]


def histogram_summary(tag, values, buckets, description=None):
    """A histograms-plugin summary of the finite `values`.

    Same format as `histogram_pb` (a `(buckets, 3)` float64 tensor of left edge,
    right edge, count; all-zero when empty; constant data all in the last
    bucket), computed with `np.bincount` instead of its O(N * buckets) one-hot
    matrix, and a chunk at a time: the extra memory stays a few MB however
    large `values` is (a weight of a billion numbers makes no float64 copy).

    Returns:
        `(summary, dropped)`: the `Summary` and the number of NaN/inf values
        left out.
    """
    data = np.asarray(values).reshape(-1)
    count, low, high = 0, np.inf, -np.inf
    for chunk in _finite_chunks(data):
        if chunk.size:
            count += chunk.size
            low, high = min(low, chunk.min()), max(high, chunk.max())
    dropped = int(data.size - count)
    table = np.zeros((buckets, 3), dtype=np.float64)
    if count:
        with np.errstate(over="ignore", invalid="ignore"):
            width = (high - low) / buckets
        if width > 0 and np.isfinite(width):
            edges = np.linspace(low, high, buckets + 1)
            for chunk in _finite_chunks(data):
                indices = np.floor((chunk - low) / width).astype(np.int64)
                np.clip(indices, 0, buckets - 1, out=indices)
                table[:, 2] += np.bincount(indices, minlength=buckets)
            table[:, 0], table[:, 1] = edges[:-1], edges[1:]
        elif width > 0:  # The range overflows float64: split it in halves.
            edges = np.linspace(low / 2, high / 2, buckets + 1) * 2
            for chunk in _finite_chunks(data):
                indices = np.searchsorted(edges[1:-1], chunk, side="right")
                table[:, 2] += np.bincount(indices, minlength=buckets)
            table[:, 0], table[:, 1] = edges[:-1], edges[1:]
        else:
            table[:, :2] = low
            table[-1, 2] = count
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=tag,
        metadata=histogram_metadata.create_summary_metadata(
            display_name=None, description=description
        ),
        tensor=tensor_util.make_tensor_proto(table, dtype=np.float64),
    )
    return summary, dropped


def image_summary(tag, png, width, height, description=None):
    """An images-plugin summary of one PNG: the string tensor `[w, h, png]`."""
    tensor = _string_tensor([str(width).encode(), str(height).encode(), png], [3])
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=tag,
        metadata=image_metadata.create_summary_metadata(
            display_name=None, description=description
        ),
        tensor=tensor,
    )
    return summary


def text_summary(tag, markdown):
    """A text-plugin summary: one markdown string."""
    return text_pb(tag, markdown)


def custom_scalars_summary(layout):
    """The custom-scalars plugin's layout summary, as `custom_scalar.summary.pb`."""
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=custom_scalar_metadata.CONFIG_SUMMARY_TAG,
        metadata=custom_scalar_metadata.create_summary_metadata(),
        tensor=_string_tensor([layout_proto(layout).SerializeToString()], []),
    )
    return summary


def layout_proto(layout):
    """Builds a custom-scalars `Layout` proto from nested mappings.

    Args:
        layout: `{category: {chart title: chart}}` where a chart is a tag regex
            string or a sequence of them (a multi-line chart), or
            `{"margin": [(value_tag, lower_tag, upper_tag), ...]}` (a line with
            a shaded band). A `layout_pb2.Layout` is returned as it is.

    Raises:
        TypeError: If `layout` or one of its charts has another structure.
    """
    if isinstance(layout, layout_pb2.Layout):
        return layout
    if not isinstance(layout, Mapping) or not layout:
        raise TypeError(
            "`layout` must be a non-empty mapping {category: {chart title: chart}} "
            f"or a layout_pb2.Layout. Received: layout={layout!r}"
        )
    proto = layout_pb2.Layout()
    for category_title, charts in layout.items():
        if not isinstance(charts, Mapping):
            raise TypeError(
                f"`layout[{category_title!r}]` must map chart titles to charts. "
                f"Received: layout[{category_title!r}]={charts!r}"
            )
        category = proto.category.add(title=str(category_title))
        for chart_title, content in charts.items():
            chart = category.chart.add(title=str(chart_title))
            where = f"layout[{category_title!r}][{chart_title!r}]"
            if isinstance(content, str):
                chart.multiline.tag.append(content)
            elif isinstance(content, Mapping) and set(content) == {"margin"}:
                for series in content["margin"]:
                    if (
                        isinstance(series, str)
                        or not isinstance(series, Sequence)
                        or len(series) != 3
                    ):
                        raise TypeError(
                            f"Each margin series of `{where}` must be a "
                            "(value_tag, lower_tag, upper_tag) triple. "
                            f"Received: {where}={content!r}"
                        )
                    value, lower, upper = (str(tag) for tag in series)
                    chart.margin.series.add(value=value, lower=lower, upper=upper)
            elif isinstance(content, Sequence) and all(
                isinstance(tag, str) for tag in content
            ):
                chart.multiline.tag.extend(content)
            else:
                raise TypeError(
                    f"`{where}` must be a tag regex, a list of them, or "
                    "{'margin': [(value, lower, upper), ...]}. "
                    f"Received: {where}={content!r}"
                )
    return proto


def _string_tensor(values, shape):
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape]
        ),
        string_val=values,
    )
