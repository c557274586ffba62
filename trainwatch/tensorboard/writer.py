"""`SummaryWriter`: scalars, histograms, images, text and layouts to event files.

Built on the `tensorboard` package alone. TensorBoard's own `EventFileWriter`
is not used: it creates its directory and file through `tensorboard.compat.tf`,
which imports TensorFlow whenever TensorFlow is installed (about 5 s and a
GPU-memory grab in a JAX or torch process). We write the same records
(`records.RecordFileWriter`, with a faster CRC) into a plain file,
synchronously.
"""

import itertools
import math
import operator
import os
import socket
import threading
import time
import uuid
import weakref

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2

from trainwatch.tensorboard import _summaries
from trainwatch.tensorboard.png import encode_png, to_uint8
from trainwatch.tensorboard.records import RecordFileWriter, TemplateCrc32c

__all__ = ["SummaryWriter", "event_files_of_other_writers", "shared_writer"]

_file_counter = itertools.count()
# Scalars events of a layout seen before get their CRC from its template
# (`_scalars_crc`), kept for this many layouts (all writers), of events this long.
_MAX_TEMPLATES = 512
_MAX_TEMPLATE_BYTES = 1024
_crc_templates: dict = {}  # layout -> first event's bytes, then its template
# The writers `shared_writer` handed out, by real path, while someone holds them.
_shared_writers: "weakref.WeakValueDictionary[str, SummaryWriter]" = (
    weakref.WeakValueDictionary()
)
_shared_lock = threading.Lock()
# Real paths of every event file this process's writers opened.
_own_event_files: set = set()


def shared_writer(log_dir):
    """The one `SummaryWriter` of this process for `log_dir`, made on first use.

    TensorBoard follows only the newest event file of a run directory while
    it reloads, so two writers appending to one directory at once (say a
    `LossCurve` and an `UpdateRatio` given the same `log_dir`) would leave one
    file's new events unseen until TensorBoard restarts. Everything in
    trainwatch that writes into a directory asks for its writer here: all
    holders append to one file. It flushes only when asked (`flush_secs` is
    infinite): its users flush at the ends of their hooks. It is forgotten
    when the last holder lets go of it (the file is then closed).

    Args:
        log_dir: Directory of the run, as for `SummaryWriter`.

    Returns:
        The `SummaryWriter` every caller with the same directory gets.

    Example:
        >>> import tempfile
        >>> log_dir = tempfile.mkdtemp()
        >>> shared_writer(log_dir) is shared_writer(log_dir + "/.")
        True
    """
    if not isinstance(log_dir, (str, os.PathLike)):
        raise TypeError(
            f"`log_dir` must be a string or a path. Received: log_dir={log_dir!r}"
        )
    key = os.path.realpath(os.fspath(log_dir))
    with _shared_lock:
        writer = _shared_writers.get(key)
        if writer is None:
            writer = SummaryWriter(log_dir, flush_secs=math.inf)
            _shared_writers[key] = writer
        return writer


def event_files_of_other_writers(log_dir, since):
    """Event files in `log_dir` that another writer changed since `since`.

    TensorBoard, while it reloads, reads only the newest event file of a run
    directory: two writers appending to one directory at once (Keras's
    `TensorBoard` callback given trainwatch's `log_dir`) hide one file's new
    events until TensorBoard restarts. Files that this process's writers
    opened are not counted, nor files last changed before `since` (an earlier
    run's, no longer written).

    Args:
        log_dir: Directory of one run (not searched recursively).
        since: Wall time (`time.time()`) from which a change counts.

    Returns:
        The file names, sorted; `[]` when the directory does not exist.

    Example:
        >>> import tempfile
        >>> log_dir = tempfile.mkdtemp()
        >>> shared_writer(log_dir).scalar("loss", 1.0, step=0)
        >>> event_files_of_other_writers(log_dir, since=0.0)
        []
    """
    try:
        entries = list(os.scandir(log_dir))
    except OSError:  # not created (yet), or gone
        return []
    names = []
    for entry in entries:
        if "tfevents" not in entry.name:
            continue
        if os.path.realpath(entry.path) in _own_event_files:
            continue
        try:
            if entry.is_file() and entry.stat().st_mtime >= since:
                names.append(entry.name)
        except OSError:  # removed meanwhile
            continue
    return sorted(names)


class SummaryWriter:
    """Writes TensorBoard summaries of one run into `log_dir`, without TensorFlow.

    The event file is created lazily, on the first write, so an unused writer
    leaves nothing on disk. Each file is named like TensorBoard's own,
    `events.out.tfevents.<time>.<host>.<pid>.<counter>.<random>`, so several
    writers (in one process or many) can share a directory without colliding;
    `read_events` reads them all, but TensorBoard's live reloading follows one
    file per directory best: give each writer its own directory (run).

    Writes are buffered; `flush()` hands them to the OS so that any other
    process (TensorBoard, `trainwatch report`) can read them. The writer also
    flushes on its own when `flush_secs` have passed since the last flush,
    checked at each write.

    After `close()`, `flush()` and `close()` do nothing and the next write
    opens a new event file: a writer can serve several `fit()` calls.

    Args:
        log_dir: Directory of the run; created on the first write if missing.
        flush_secs: Flush at the next write once this many seconds have
            passed since the last flush. Defaults to `10.0`.

    Raises:
        TypeError: If `log_dir` is not a string or path.
        ValueError: If `log_dir` is empty or is, or lies under, an existing
            file, so that no event file could ever be written there.

    Example:
        >>> import tempfile
        >>> from trainwatch.tensorboard import read_events
        >>> log_dir = tempfile.mkdtemp()
        >>> with SummaryWriter(log_dir) as writer:
        ...     writer.scalars({"loss": 2.30, "accuracy": 0.1}, step=0)
        ...     dropped = writer.histogram("dense/kernel", np.ones((3, 4)), step=0)
        >>> read_events(log_dir)["."].scalars["loss"]
        [ScalarEvent(step=0, value=2.299999952316284)]
    """

    def __init__(self, log_dir, flush_secs=10.0):
        if not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(
                f"`log_dir` must be a string or a path. Received: log_dir={log_dir!r}"
            )
        log_dir = os.fspath(log_dir)
        if not log_dir:
            raise ValueError("`log_dir` must not be empty. Received: log_dir=''")
        _check_can_be_directory(log_dir)
        if not flush_secs >= 0:
            raise ValueError(
                f"`flush_secs` must be >= 0. Received: flush_secs={flush_secs!r}"
            )
        self._log_dir = log_dir
        self._flush_secs = float(flush_secs)
        self._lock = threading.RLock()
        self._file = None
        self._records = None
        self._path = None
        self._finalizer = None
        self._tags_with_metadata = set()
        self._last_flush = 0.0
        self._unflushed = False  # written since the last flush

    @property
    def log_dir(self):
        """The directory this writer writes into."""
        return self._log_dir

    @property
    def path(self):
        """Path of the open event file, or `None` before the first write or after
        `close()`."""
        return self._path

    def scalar(self, tag, value, step):
        """Writes one number; NaN and inf are written as they are.

        Args:
            tag: Name of the series, e.g. `"loss"` or `"update_ratio/dense/kernel"`.
            value: Python number, numpy scalar, or array with one element. Stored
                as float32, as `tf.summary.scalar` does.
            step: Integer step (batch or epoch index).

        Raises:
            TypeError: If `value` is not numeric, `tag` is not a string or `step`
                is not an integer.
            ValueError: If `value` has more than one element or `tag` is empty.
        """
        self.scalars({_check_tag(tag): value}, step)

    def scalars(self, values, step):
        """Writes several numbers at one step, in a single event.

        Args:
            values: Mapping of tag to number, as for `scalar`.
            step: Integer step.

        Raises:
            TypeError: If `values` is not a mapping, or as for `scalar`.
        """
        if not hasattr(values, "items"):
            raise TypeError(
                "`values` must be a mapping of tag to number. "
                f"Received: values={values!r}"
            )
        pairs = [(_check_tag(tag), _scalar(value)) for tag, value in values.items()]
        if not pairs:
            return
        if not _summaries.FAST_SCALARS:  # a protobuf that encodes differently
            summary = summary_pb2.Summary(
                value=[_summaries.scalar_value(t, v) for t, v in pairs]
            )
            self._write(summary, step)
            return
        step = _check_step(step)
        frame, pack = _summaries.scalar_value_frame, _summaries.float32_bytes
        with self._lock:
            if self._file is None:
                self._open()
            seen = self._tags_with_metadata
            parts = []
            frames = []
            for tag, value in pairs:
                head, tail = frame(tag, tag not in seen)
                seen.add(tag)
                parts += (head, pack(value), tail)
                frames.append((head, tail))
            event = _summaries.event_bytes(time.time(), step, b"".join(parts))
            self._write_record(event, _scalars_crc(event, frames, step))

    def histogram(self, tag, values, step, buckets=30):
        """Writes a histogram of the finite `values` (any shape, flattened).

        NaN and inf are left out and counted, never raised on; an empty array
        writes an empty histogram.

        Args:
            tag: Name of the series, e.g. `"activations/dense"`.
            values: Array-like of numbers, any shape.
            step: Integer step.
            buckets: Number of equal-width buckets between the finite minimum
                and maximum. Defaults to `30`.

        Returns:
            The number of non-finite values that were left out.

        Raises:
            TypeError: If `values` is not numeric or `buckets` not an integer.
            ValueError: If `buckets < 1`.
        """
        tag = _check_tag(tag)
        data = _numeric_array(values)
        if data.dtype.kind not in "biuf":
            raise TypeError(
                "`values` must hold bool, integer or float values. "
                f"Received: values.dtype={data.dtype}"
            )
        try:
            buckets = operator.index(buckets)
        except TypeError:
            raise TypeError(
                f"`buckets` must be an integer. Received: buckets={buckets!r}"
            ) from None
        if buckets < 1:
            raise ValueError(f"`buckets` must be >= 1. Received: buckets={buckets}")
        summary, dropped = _summaries.histogram_summary(tag, data, buckets)
        self._write(summary, step)
        return dropped

    def image(self, tag, array, step, description=None):
        """Writes one image, shown in TensorBoard's Images tab.

        `uint8` arrays are written as they are; any other numeric array (and
        bool) is min-max scaled to 0..255 with `to_uint8` (NaN becomes 0).

        Args:
            tag: Name of the series, e.g. `"first_layer/filters"`.
            array: Array of shape `(H, W)`, `(H, W, 1)`, `(H, W, 3)` or
                `(H, W, 4)`; see `image_grid` to tile many small images.
            step: Integer step.
            description: Markdown shown under the image in TensorBoard.
                Defaults to `None`.

        Raises:
            TypeError: If `array` is not numeric.
            ValueError: If `array` has an unsupported shape.
        """
        tag = _check_tag(tag)
        pixels = np.asarray(array)
        if pixels.dtype != np.uint8:
            pixels = to_uint8(pixels)
        try:
            png = encode_png(pixels)
        except ValueError:
            raise ValueError(
                "`array` must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) "
                f"with H, W > 0. Received: array.shape={pixels.shape}"
            ) from None
        height, width = pixels.shape[:2]
        self._write(
            _summaries.image_summary(tag, png, width, height, description), step
        )

    def text(self, tag, markdown, step):
        """Writes a markdown string, shown in TensorBoard's Text tab.

        Args:
            tag: Name of the series, e.g. `"findings"`.
            markdown: The text; markdown (tables included) is rendered.
            step: Integer step.

        Raises:
            TypeError: If `markdown` is not a string.
        """
        tag = _check_tag(tag)
        if not isinstance(markdown, str):
            raise TypeError(
                f"`markdown` must be a string. Received: markdown={markdown!r}"
            )
        self._write(_summaries.text_summary(tag, markdown), step)

    def custom_scalars_layout(self, layout):
        """Writes a layout for TensorBoard's Custom Scalars tab (at step 0).

        TensorBoard reads one layout per run and merges the runs' layouts, so
        write it once, usually into the root run.

        Args:
            layout: `{category: {chart title: chart}}`, where a chart is a tag
                regex or a list of them (one multi-line chart), or
                `{"margin": [(value_tag, lower_tag, upper_tag), ...]}` (a line
                with a shaded band between two other series). A
                `tensorboard.plugins.custom_scalar.layout_pb2.Layout` is also
                accepted.

        Raises:
            TypeError: If `layout` has another structure.

        Example:
            >>> writer.custom_scalars_layout({
            ...     "loss": {
            ...         "train vs validation": ["^loss$", "^val_loss$"],
            ...         "gap": {"margin": [("gap/mean", "gap/low", "gap/high")]},
            ...     },
            ... })  # doctest: +SKIP
        """
        self._write(_summaries.custom_scalars_summary(layout), 0)

    def flush(self):
        """Makes everything written so far readable by other processes."""
        if not self._unflushed:  # nothing new: no lock (called after every hook)
            return
        with self._lock:
            if self._file is not None and self._unflushed:
                self._guarded(self._file.flush)
                self._unflushed = False
                self._last_flush = time.monotonic()

    def close(self):
        """Flushes and closes the event file; the next write opens a new one."""
        with self._lock:
            if self._file is None:
                return
            file, self._file, self._records, self._path = (
                self._file,
                None,
                None,
                None,
            )
            self._finalizer.detach()
            self._finalizer = None
            self._tags_with_metadata = set()
            try:
                file.close()
            except OSError as error:
                raise OSError(
                    f"Could not close the TensorBoard event file {file.name}: {error}. "
                    f"Received: log_dir={self._log_dir!r}"
                ) from error

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return f"SummaryWriter(log_dir={self._log_dir!r})"

    def _write(self, summary, step):
        step = _check_step(step)
        with self._lock:
            if self._file is None:
                self._open()
            # Like tf.summary: plugin metadata only on a tag's first value per file.
            for value in summary.value:
                if value.tag in self._tags_with_metadata:
                    value.ClearField("metadata")
                else:
                    self._tags_with_metadata.add(value.tag)
            event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
            self._write_record(event.SerializeToString())

    def _write_record(self, data, crc=None):
        """Appends one serialized event (the file is open, the lock held)."""
        self._guarded(self._records.write, data, crc)
        self._unflushed = True
        if time.monotonic() - self._last_flush >= self._flush_secs:
            self.flush()

    def _open(self):
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
            f".{os.getpid()}.{next(_file_counter)}.{uuid.uuid4().hex[:8]}"
        )
        path = os.path.join(self._log_dir, name)
        try:
            os.makedirs(self._log_dir, exist_ok=True)
            file = open(path, "xb")
        except OSError as error:
            raise OSError(
                f"Could not create a TensorBoard event file in `log_dir`: {error}. "
                f"Received: log_dir={self._log_dir!r}"
            ) from error
        self._file, self._path = file, path
        _own_event_files.add(os.path.realpath(path))
        self._records = RecordFileWriter(file)
        # Flush and close at interpreter exit if the user never calls close().
        self._finalizer = weakref.finalize(self, file.close)
        version = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        self._write_record(version.SerializeToString())
        self.flush()

    def _guarded(self, function, *args):
        try:
            function(*args)
        except OSError as error:
            raise OSError(
                f"Could not write the TensorBoard event file {self._path}: {error}. "
                f"Received: log_dir={self._log_dir!r}"
            ) from error


def _scalars_crc(event, frames, step):
    """The CRC-32C of a scalars event, or `None` to compute it in full.

    Events of the same tags (and step length) differ only in the wall time,
    the step and the numbers: from a layout's second event on, the CRC comes
    from a `records.TemplateCrc32c` of it (~2 µs instead of ~15 µs for four
    scalars). Its tables take ~0.1 ms to build, so a layout seen once (a
    table, a one-off scalar) never pays for them. The layouts are shared by
    all writers: a new callback's epoch metrics are the last one's.
    """
    key = (tuple(frames), step.bit_length())
    seen = _crc_templates.get(key)
    if isinstance(seen, TemplateCrc32c):
        if seen.length == len(event):  # same step length (negative steps vary)
            return seen(event)
        return None
    if len(event) > _MAX_TEMPLATE_BYTES:
        return None
    if seen is None or len(seen) != len(event):
        if len(_crc_templates) >= _MAX_TEMPLATES:
            _crc_templates.clear()
        _crc_templates[key] = event  # the first sighting: computed in full
        return None
    template = TemplateCrc32c(seen, _summaries.scalar_event_positions(seen, frames))
    _crc_templates[key] = template
    return template(event)


def _check_can_be_directory(log_dir):
    """Raises if `log_dir` or one of its existing ancestors is not a directory."""
    path = os.path.abspath(log_dir)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent
    if not os.path.isdir(path):
        raise ValueError(
            f"`log_dir` must be a directory, but {path} is a file. "
            f"Received: log_dir={log_dir!r}"
        )


def _check_tag(tag):
    if not isinstance(tag, str):
        raise TypeError(f"`tag` must be a string. Received: tag={tag!r}")
    if not tag:
        raise ValueError("`tag` must not be empty. Received: tag=''")
    return tag


def _check_step(step):
    if isinstance(step, (bool, np.bool_)):
        raise TypeError(f"`step` must be an integer. Received: step={step!r}")
    try:
        return operator.index(step)
    except TypeError:
        raise TypeError(f"`step` must be an integer. Received: step={step!r}") from None


def _numeric_array(values):
    """`values` as a numpy array, bfloat16 widened to float32 (ml_dtypes'
    bfloat16 is numpy kind "V"; the widening is exact)."""
    data = np.asarray(values)
    if data.dtype.name == "bfloat16":
        data = data.astype(np.float32)
    return data


def _scalar(value):
    """`value` as a Python float, or raises: one number of any numeric type."""
    if type(value) is float or type(value) is int:  # the common case, fast
        return float(value)
    array = _numeric_array(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"A scalar value must be a number. Received: value={value!r}")
    if array.size != 1:
        raise ValueError(
            "A scalar value must have exactly one element. "
            f"Received: value.shape={array.shape}"
        )
    with np.errstate(over="ignore"):
        return float(array.reshape(()))
