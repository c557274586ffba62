"""`read_events`: everything in a TensorBoard log directory, as plain Python data.

Reads with TensorBoard's own machinery, minus the parts that import
TensorFlow: records come from tensorboard's pure-Python record reader (the one
TensorBoard itself uses when TensorFlow is absent; `EventFileLoader` and
`EventAccumulator` would import TensorFlow when it is installed), then pass
through the same `data_compat` and `dataclass_compat` migrations as in
`EventFileLoader`, so files written by `tf.summary`, Keras's `TensorBoard`
callback, tensorboardX or our `SummaryWriter` all come out the same way.
"""

import dataclasses
import os
import warnings
from typing import NamedTuple

import numpy as np
from google.protobuf import json_format
from tensorboard import data_compat, dataclass_compat
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import errors as record_errors
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util

from trainwatch.tensorboard.png import decode_png

__all__ = [
    "HistogramEvent",
    "ImageEvent",
    "RunData",
    "ScalarEvent",
    "TextEvent",
    "read_events",
]


class ScalarEvent(NamedTuple):
    """One point of a scalar series."""

    step: int
    value: float


class HistogramEvent(NamedTuple):
    """One histogram: `counts[i]` values fell between `edges[i]` and `edges[i+1]`.

    Like `np.histogram`'s result: `edges` has one more element than `counts`.
    """

    step: int
    edges: np.ndarray
    counts: np.ndarray


class ImageEvent(NamedTuple):
    """One image, as the PNG bytes that were written."""

    step: int
    png: bytes
    width: int
    height: int

    def to_array(self):
        """Decodes the PNG into a `uint8` array `(H, W)` or `(H, W, C)`."""
        return decode_png(self.png)


class TextEvent(NamedTuple):
    """One text (markdown) entry."""

    step: int
    text: str


@dataclasses.dataclass
class RunData:
    """Everything one run (one directory of event files) holds, by tag.

    Each list is sorted by step; values written at the same step keep their
    order in the files.

    Attributes:
        scalars: `{tag: [ScalarEvent(step, value)]}`.
        histograms: `{tag: [HistogramEvent(step, edges, counts)]}`.
        images: `{tag: [ImageEvent(step, png, width, height)]}`.
        texts: `{tag: [TextEvent(step, text)]}`.
        layout: The custom-scalars layout as a dict (protobuf JSON form,
            `{"category": [{"title", "chart": [...]}]}`), or `None`.
    """

    scalars: dict = dataclasses.field(default_factory=dict)
    histograms: dict = dataclasses.field(default_factory=dict)
    images: dict = dataclasses.field(default_factory=dict)
    texts: dict = dataclasses.field(default_factory=dict)
    layout: dict | None = None

    def tags(self):
        """All tags of this run, as a sorted list."""
        return sorted({*self.scalars, *self.histograms, *self.images, *self.texts})


def read_events(log_dir):
    """Reads every event file under `log_dir`, one `RunData` per run.

    A run is a directory holding event files (names containing `tfevents`),
    named by its path relative to `log_dir` with `/` separators, and `"."` for
    `log_dir` itself, as TensorBoard names runs. Files still being written are
    read up to their last complete record.

    Args:
        log_dir: Root directory to search recursively.

    Returns:
        `{run name: RunData}`, sorted by run name; `{}` if there are no event
        files.

    Raises:
        ValueError: If `log_dir` is not an existing directory.

    Example:
        >>> runs = read_events("runs/exp1")  # doctest: +SKIP
        >>> sorted(runs)  # doctest: +SKIP
        ['train', 'validation']
        >>> runs["train"].scalars["epoch_loss"][-1]  # doctest: +SKIP
        ScalarEvent(step=19, value=0.0712)
        >>> step, edges, counts = runs["train"].histograms["dense/kernel"][0]
        ... # doctest: +SKIP
    """
    if not os.path.isdir(log_dir):
        raise ValueError(
            f"`log_dir` must be an existing directory. Received: log_dir={log_dir!r}"
        )
    runs = {}
    for directory, subdirectories, files in os.walk(log_dir):
        subdirectories.sort()
        paths = [
            os.path.join(directory, name)
            for name in sorted(files)
            if "tfevents" in name and os.path.isfile(os.path.join(directory, name))
        ]
        if paths:
            run = os.path.relpath(directory, log_dir).replace(os.sep, "/")
            runs[run] = _read_run(paths)
    return dict(sorted(runs.items()))


def _read_run(paths):
    data = RunData()
    # TensorBoard keeps each tag's first metadata per run: later values of a
    # tag usually carry none (tf.summary and our writer write it once).
    initial_metadata = {}
    for path in paths:
        for event in _events(path):
            event = data_compat.migrate_event(event)
            for migrated in dataclass_compat.migrate_event(event, initial_metadata):
                for value in migrated.summary.value:
                    metadata = initial_metadata.get(value.tag)
                    plugin = metadata.plugin_data.plugin_name if metadata else ""
                    _add_value(data, plugin, migrated.step, value)
    for series in (data.scalars, data.histograms, data.images, data.texts):
        for events in series.values():
            events.sort(key=lambda event: event.step)
    return data


def _events(path):
    reader = PyRecordReader_New(path)
    while True:
        try:
            reader.GetNext()
        except record_errors.OutOfRangeError:
            return
        except record_errors.DataLossError as error:
            # A file being written ends in a partial record: that is expected.
            if "truncated" not in str(error):
                warnings.warn(
                    f"Stopped reading {path}: {error}", RuntimeWarning, stacklevel=3
                )
            return
        yield event_pb2.Event.FromString(reader.record())


def _add_value(data, plugin, step, value):
    if not value.HasField("tensor"):
        return
    if plugin == "scalars":
        number = float(tensor_util.make_ndarray(value.tensor).item())
        data.scalars.setdefault(value.tag, []).append(ScalarEvent(step, number))
    elif plugin == "histograms":
        table = tensor_util.make_ndarray(value.tensor).reshape(-1, 3)
        edges = np.append(table[:, 0], table[-1, 1] if len(table) else [])
        counts = table[:, 2].copy()
        data.histograms.setdefault(value.tag, []).append(
            HistogramEvent(step, edges, counts)
        )
    elif plugin == "images":
        strings = list(value.tensor.string_val)
        width, height = int(strings[0]), int(strings[1])
        for png in strings[2:]:
            data.images.setdefault(value.tag, []).append(
                ImageEvent(step, png, width, height)
            )
    elif plugin == "text":
        array = tensor_util.make_ndarray(value.tensor)
        text = "\n".join(
            item.decode("utf-8") if isinstance(item, bytes) else str(item)
            for item in array.ravel()
        )
        data.texts.setdefault(value.tag, []).append(TextEvent(step, text))
    elif plugin == "custom_scalars":
        layout = layout_pb2.Layout.FromString(value.tensor.string_val[0])
        data.layout = json_format.MessageToDict(layout)
