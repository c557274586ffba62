"""`SummaryWriter` and `read_events`: write, then read back with our reader and
with TensorBoard's own `EventAccumulator` (in a subprocess), never TensorFlow."""

import io
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from tensorboard.plugins.histogram.summary_v2 import histogram_pb
from tensorboard.util import tensor_util

from trainwatch.tensorboard import SummaryWriter, decode_png, read_events
from trainwatch.tensorboard._summaries import histogram_summary
from trainwatch.tensorboard.writer import shared_writer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYOUT = {
    "loss": {
        "train and validation": ["^loss$", "^val_loss$"],
        "gap": {"margin": [("gap/mean", "gap/low", "gap/high")]},
    },
    "gradients": {"relative error": "gradcheck/.*"},
}


@pytest.fixture(autouse=True)
def _fixed_seed_and_clean_session():
    """Overrides conftest's Keras session reset (~0.16 s a test): no Keras here."""
    yield


def run_python(code, **env):
    """Runs `code` in a fresh interpreter (no Keras, JAX backend) and returns stdout."""
    environment = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": REPO, **env}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def decode(png):
    try:
        from PIL import Image
    except ImportError:  # Pillow is optional: fall back to our zlib decoder.
        return decode_png(png)
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image)


def write_everything(writer):
    writer.scalar("loss", 2.5, step=0)
    writer.scalar("loss", np.float32(1.25), step=1)
    writer.scalar("loss", np.array(0.5), step=2)
    writer.scalars({"lr": np.float64(1e-3), "ratio": np.array([1e-9])}, step=1)
    writer.histogram("dense/kernel", np.arange(100.0), step=0, buckets=10)
    writer.image("filters", np.arange(12, dtype=np.uint8).reshape(3, 4), step=0)
    writer.text("findings", "**loss_nan** at step 3 — ünïcode", step=3)
    writer.custom_scalars_layout(LAYOUT)


def test_no_file_until_the_first_write(tmp_path):
    writer = SummaryWriter(tmp_path / "run")
    writer.flush()
    assert not (tmp_path / "run").exists() and writer.path is None
    writer.scalar("loss", 1.0, step=0)
    assert os.listdir(tmp_path / "run") == [os.path.basename(writer.path)]
    assert "tfevents" in writer.path
    writer.close()


def test_scalars_round_trip(tmp_path):
    values = [
        2.5,
        np.float32(1.25),
        np.float64(0.1),
        np.array(3),
        np.array([7.0]),
        1e-9,
    ]
    with SummaryWriter(tmp_path) as writer:
        for step, value in enumerate(values):
            writer.scalar("loss", value, step=np.int64(step))
        writer.scalars({"acc": 0.5, "val/acc": 0.25}, step=4)
    run = read_events(tmp_path)["."]
    steps, read = zip(*run.scalars["loss"])
    assert steps == tuple(range(len(values)))
    expected = [float(np.ravel(value)[0]) for value in values]
    np.testing.assert_allclose(read, expected, rtol=1e-7)  # stored as float32
    assert run.scalars["acc"] == [(4, 0.5)] and run.scalars["val/acc"] == [(4, 0.25)]


def test_non_finite_scalars_are_written_as_they_are(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with SummaryWriter(tmp_path) as writer:
            for step, value in enumerate([np.nan, np.inf, -np.inf, 1e300]):
                writer.scalar("loss", value, step)
    read = [value for _, value in read_events(tmp_path)["."].scalars["loss"]]
    assert np.isnan(read[0]) and read[1:] == [np.inf, -np.inf, np.inf]


def _as_float32(value):
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def test_scalar_events_are_the_events_protobuf_builds(tmp_path):
    # Scalars are assembled as bytes; each event must parse to the very event
    # the protos make: metadata on a tag's first value only, float32 values
    # (beyond its range: inf), any step.
    from tensorboard.compat.proto import event_pb2, summary_pb2

    from trainwatch.tensorboard._summaries import scalar_value
    from trainwatch.tensorboard.records import masked_crc32c

    batches = [
        ({"loss": 2.5, "update_ratio/dense/kernel": -3.25}, 0),
        ({"loss": 1e40, "acc": np.nan, "é/ünï": -1e-3}, 2**40),
        ({"loss": -1e40, "acc": 0.0}, -5),
    ]
    with SummaryWriter(tmp_path) as writer:
        for values, step in batches:
            writer.scalars(values, step)
        path = writer.path
    data = open(path, "rb").read()
    events, offset = [], 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 8], "little")
        record = data[offset + 12 : offset + 12 + length]
        stored = int.from_bytes(
            data[offset + 12 + length : offset + 16 + length], "little"
        )
        assert stored == masked_crc32c(record)
        events.append(event_pb2.Event.FromString(record))
        offset += 16 + length
    assert events[0].file_version == "brain.Event:2"
    seen = set()
    for event, (values, step) in zip(events[1:], batches, strict=True):
        expected = summary_pb2.Summary(
            value=[
                scalar_value(t, _as_float32(v), t not in seen)
                for t, v in values.items()
            ]
        )
        seen.update(values)
        assert event.step == step and event.wall_time > 0
        got = [
            (v.tag, v.metadata, v.tensor.dtype, v.tensor.tensor_shape)
            for v in event.summary.value
        ]
        want = [
            (v.tag, v.metadata, v.tensor.dtype, v.tensor.tensor_shape)
            for v in expected.value
        ]
        assert got == want
        np.testing.assert_array_equal(
            [v.tensor.float_val[0] for v in event.summary.value],
            [v.tensor.float_val[0] for v in expected.value],
        )


def test_histogram_counts_match_numpy_and_tensorboard(tmp_path):
    data = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    with SummaryWriter(tmp_path) as writer:
        assert writer.histogram("w", data, step=5, buckets=20) == 0
    [(step, edges, counts)] = read_events(tmp_path)["."].histograms["w"]
    expected_counts, expected_edges = np.histogram(data.astype(np.float64), bins=20)
    assert step == 5 and counts.sum() == data.size
    np.testing.assert_allclose(edges, expected_edges, rtol=1e-6)
    np.testing.assert_array_equal(counts, expected_counts)
    # Same table as tensorboard's own (O(N * buckets) memory) builder.
    ours, _ = histogram_summary("w", data, 20)
    theirs = histogram_pb("w", data, buckets=20)
    np.testing.assert_array_equal(
        tensor_util.make_ndarray(ours.value[0].tensor),
        tensor_util.make_ndarray(theirs.value[0].tensor),
    )


def test_histogram_drops_and_counts_non_finite_values(tmp_path):
    data = np.array([1.0, np.nan, 2.0, np.inf, 3.0, -np.inf, 4.0])
    with SummaryWriter(tmp_path) as writer:
        assert writer.histogram("h", data, step=0, buckets=3) == 3
        assert writer.histogram("empty", np.zeros((0, 5)), step=0) == 0
        assert writer.histogram("all_nan", np.full(4, np.nan), step=0) == 4
        assert writer.histogram("constant", np.full(6, 2.0), step=0, buckets=4) == 0
        assert writer.histogram("ints", np.arange(10), step=0) == 0
    histograms = read_events(tmp_path)["."].histograms
    [(_, edges, counts)] = histograms["h"]
    np.testing.assert_array_equal(counts, [1, 1, 2])
    np.testing.assert_allclose(edges, [1, 2, 3, 4])
    assert histograms["empty"][0].counts.sum() == 0
    assert histograms["all_nan"][0].counts.sum() == 0
    assert histograms["constant"][0].counts.tolist() == [0, 0, 0, 6]
    assert histograms["ints"][0].counts.sum() == 10


def test_image_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gray = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    with SummaryWriter(tmp_path) as writer:
        writer.image("rgb", rgb, step=2, description="first-layer filters")
        writer.image("gray", gray, step=3)
    images = read_events(tmp_path)["."].images
    [(step, png, width, height)] = images["rgb"]
    assert (step, width, height) == (2, 7, 5)
    np.testing.assert_array_equal(decode(png), rgb)
    [gray_event] = images["gray"]
    np.testing.assert_array_equal(
        gray_event.to_array(), np.rint(np.linspace(0, 255, 12)).reshape(3, 4)
    )


def test_text_and_layout_round_trip(tmp_path):
    markdown = "| code | step |\n| --- | --- |\n| `loss_nan` | 3 |\n\nünïcode ✓"
    with SummaryWriter(tmp_path) as writer:
        writer.text("findings", markdown, step=3)
        writer.custom_scalars_layout(LAYOUT)
    run = read_events(tmp_path)["."]
    assert run.texts["findings"] == [(3, markdown)]
    categories = {
        category["title"]: category["chart"] for category in run.layout["category"]
    }
    assert set(categories) == {"loss", "gradients"}
    charts = {chart["title"]: chart for chart in categories["loss"]}
    assert charts["train and validation"]["multiline"]["tag"] == [
        "^loss$",
        "^val_loss$",
    ]
    assert charts["gap"]["margin"]["series"] == [
        {"value": "gap/mean", "lower": "gap/low", "upper": "gap/high"}
    ]
    assert categories["gradients"][0]["multiline"]["tag"] == ["gradcheck/.*"]


def test_tensorboard_reads_what_we_write(tmp_path):
    """TensorBoard's own EventAccumulator, in its supported no-TensorFlow mode."""
    with SummaryWriter(tmp_path / "train") as writer:
        write_everything(writer)
    seen = json.loads(
        run_python(
            f"""
            import json, sys, types
            sys.modules["tensorboard.compat.notf"] = types.ModuleType("notf")
            from tensorboard.backend.event_processing import (
                plugin_event_accumulator as pea,
            )
            from tensorboard.util.tensor_util import make_ndarray
            accumulator = pea.EventAccumulator(
                {str(tmp_path / "train")!r}, size_guidance={{pea.TENSORS: 0}}
            )
            accumulator.Reload()
            plugins = ["scalars", "histograms", "images", "text", "custom_scalars"]
            seen = {{p: sorted(accumulator.PluginTagToContent(p)) for p in plugins}}
            seen["loss"] = [
                [e.step, make_ndarray(e.tensor_proto).item()]
                for e in accumulator.Tensors("loss")
            ]
            histogram = accumulator.Tensors("dense/kernel")[0].tensor_proto
            seen["counts"] = make_ndarray(histogram)[:, 2].tolist()
            image = accumulator.Tensors("filters")[0].tensor_proto
            seen["image_size"] = [s.decode() for s in image.string_val[:2]]
            assert "tensorflow" not in sys.modules
            print(json.dumps(seen))
            """
        )
    )
    assert seen["scalars"] == ["loss", "lr", "ratio"]
    assert seen["histograms"] == ["dense/kernel"]
    assert seen["images"] == ["filters"]
    assert seen["text"] == ["findings"]
    assert seen["custom_scalars"] == ["custom_scalars__config__"]
    assert seen["loss"] == [[0, 2.5], [1, 1.25], [2, 0.5]]
    assert seen["counts"] == [10.0] * 10
    assert seen["image_size"] == ["4", "3"]


def test_never_imports_tensorflow(tmp_path):
    """Every writer method and the reader, in a fresh process with TF installed."""
    output = run_python(
        f"""
        import sys
        import numpy as np
        from trainwatch.tensorboard import SummaryWriter, image_grid, read_events
        writer = SummaryWriter({str(tmp_path)!r})
        writer.scalar("loss", 2.5, step=0)
        writer.scalars({{"lr": 1e-3, "ratio": np.float32(1e-3)}}, step=0)
        writer.histogram("w", np.random.randn(100), step=0)
        writer.image("grid", image_grid(np.random.randn(4, 5, 5)), step=0)
        writer.text("findings", "none", step=0)
        writer.custom_scalars_layout({{"loss": {{"all": ["loss"]}}}})
        writer.flush()
        writer.close()
        runs = read_events({str(tmp_path)!r})
        print(sorted(runs["."].tags()))
        print("tensorflow" in sys.modules, "keras" in sys.modules)
        """
    )
    tags, modules = output.splitlines()
    assert tags == "['findings', 'grid', 'loss', 'lr', 'ratio', 'w']"
    assert modules.split()[0] == "False", "tensorflow was imported"


def test_flush_makes_data_readable_by_another_process(tmp_path):
    writer = SummaryWriter(tmp_path, flush_secs=3600)
    for step in range(3):
        writer.scalar("loss", 1.0 / (step + 1), step)
    writer.flush()
    output = run_python(
        f"""
        from trainwatch.tensorboard import read_events
        print([step for step, _ in read_events({str(tmp_path)!r})["."].scalars["loss"]])
        """
    )
    writer.close()
    assert output.strip() == "[0, 1, 2]"


def test_two_writers_in_one_directory(tmp_path):
    first, second = SummaryWriter(tmp_path), SummaryWriter(tmp_path)
    first.scalar("a", 1.0, step=0)
    second.scalar("b", 2.0, step=0)
    first.scalar("a", 3.0, step=1)
    first.close()
    second.close()
    assert len(os.listdir(tmp_path)) == 2
    run = read_events(tmp_path)["."]
    assert run.scalars == {"a": [(0, 1.0), (1, 3.0)], "b": [(0, 2.0)]}


def test_shared_writer_is_one_per_directory_while_held(tmp_path):
    first = shared_writer(tmp_path / "train")
    assert shared_writer(str(tmp_path / "train" / ".")) is first
    assert shared_writer(tmp_path / "validation") is not first
    first.scalar("a", 1.0, step=0)
    shared_writer(tmp_path / "train").scalar("b", 2.0, step=0)
    first.flush()
    assert len(os.listdir(tmp_path / "train")) == 1  # one event file
    assert set(read_events(tmp_path)["train"].scalars) == {"a", "b"}
    path = first.path
    del first
    second = shared_writer(tmp_path / "train")  # the first was let go of
    assert second.path is None and path is not None
    with pytest.raises(TypeError, match="log_dir"):
        shared_writer(3)


def test_runs_are_subdirectories(tmp_path):
    for run in ("", "train", "validation", "deep/er"):
        with SummaryWriter(tmp_path / run) as writer:
            writer.scalar("loss", 1.0, step=0)
    (tmp_path / "empty").mkdir()
    assert list(read_events(tmp_path)) == [".", "deep/er", "train", "validation"]
    assert read_events(tmp_path / "empty") == {}


def test_close_then_write_opens_a_new_file(tmp_path):
    writer = SummaryWriter(tmp_path)
    writer.scalar("loss", 1.0, step=0)
    writer.close()
    writer.close()
    writer.flush()
    assert writer.path is None
    writer.scalar("loss", 0.5, step=1)
    writer.close()
    assert len(os.listdir(tmp_path)) == 2
    assert read_events(tmp_path)["."].scalars["loss"] == [(0, 1.0), (1, 0.5)]


def test_partial_last_record_is_ignored(tmp_path):
    with SummaryWriter(tmp_path) as writer:
        writer.scalar("loss", 1.0, step=0)
        path = writer.path
    with open(path, "ab") as file:
        file.write(
            b"\x10\x00\x00"
        )  # a record cut off mid-header, as when still writing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_events(tmp_path)["."].scalars["loss"] == [(0, 1.0)]


def test_unusable_log_dir_is_a_clear_error(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for log_dir in (a_file, a_file / "run"):
        with pytest.raises(ValueError, match=f"Received: log_dir={str(log_dir)!r}"):
            SummaryWriter(log_dir)
    with pytest.raises(TypeError, match="Received: log_dir=3"):
        SummaryWriter(3)
    if sys.platform.startswith("linux"):  # Not creatable, even by root.
        writer = SummaryWriter("/proc/trainwatch_run")
        with pytest.raises(OSError, match="Received: log_dir='/proc/trainwatch_run'"):
            writer.scalar("loss", 1.0, step=0)
    with pytest.raises(ValueError, match="Received: log_dir="):
        read_events(tmp_path / "missing")


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda w: w.scalar("loss", 1.0, step=1.5), TypeError, "Received: step=1.5"),
        (lambda w: w.scalar("loss", 1.0, step=True), TypeError, "Received: step=True"),
        (lambda w: w.scalar(3, 1.0, step=0), TypeError, "Received: tag=3"),
        (lambda w: w.scalar("", 1.0, step=0), ValueError, "Received: tag=''"),
        (
            lambda w: w.scalar("loss", "high", step=0),
            TypeError,
            "Received: value='high'",
        ),
        (
            lambda w: w.scalar("loss", [1.0, 2.0], 0),
            ValueError,
            r"Received: value.shape=\(2,\)",
        ),
        (lambda w: w.scalars([1.0], step=0), TypeError, "Received: values="),
        (
            lambda w: w.histogram("h", [1.0], 0, buckets=0),
            ValueError,
            "Received: buckets=0",
        ),
        (lambda w: w.histogram("h", ["a"], 0), TypeError, "Received: values.dtype"),
        (
            lambda w: w.image("i", np.zeros((2, 2, 2)), 0),
            ValueError,
            "Received: array.shape",
        ),
        (lambda w: w.text("t", 3, 0), TypeError, "Received: markdown=3"),
        (lambda w: w.custom_scalars_layout(["loss"]), TypeError, "Received: layout="),
        (
            lambda w: w.custom_scalars_layout(
                {"c": {"chart": {"margin": [("a", "b")]}}}
            ),
            TypeError,
            r"Received: layout\['c'\]\['chart'\]=",
        ),
    ],
)
def test_bad_arguments_raise_early(tmp_path, call, error, message):
    writer = SummaryWriter(tmp_path / "run")
    with pytest.raises(error, match=message):
        call(writer)
    writer.close()
    assert not (tmp_path / "run").exists(), "nothing is written before the checks"


# Short data take the table loop, longer data numpy's per-distance tables a
# block (1024 bytes) at a time: lengths around both thresholds and blocks.
@pytest.mark.parametrize(
    "length",
    [0, 1, 7, 8, 9, 47, 48, 49, 255, 256, 257, 263, 1000, 1023, 1024, 1025, 5000],
)
def test_record_crc_matches_tensorboards(length):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import (
        masked_crc32c as reference,
    )

    from trainwatch.tensorboard.records import masked_crc32c

    data = np.random.default_rng(length).integers(0, 256, length, np.uint8).tobytes()
    assert masked_crc32c(data) == reference(data)


def test_records_read_back_by_tensorboards_own_reader(tmp_path):
    # tensorboard's pure-Python reader checks both CRCs of every record.
    from tensorboard.compat.tensorflow_stub import errors
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import (
        PyRecordReader_New,
    )

    from trainwatch.tensorboard.records import RecordFileWriter

    path = tmp_path / "records"
    payloads = [b"", b"x" * 7, bytes(range(256)) * 3]
    with open(path, "wb") as f:
        writer = RecordFileWriter(f)
        for payload in payloads:
            writer.write(payload)
    reader, read = PyRecordReader_New(str(path)), []
    with pytest.raises(errors.OutOfRangeError):
        while True:
            reader.GetNext()
            read.append(reader.record())
    assert read == payloads
    corrupted = bytearray(path.read_bytes())
    corrupted[-1] ^= 1  # the last record's data CRC
    path.write_bytes(bytes(corrupted))
    reader = PyRecordReader_New(str(path))
    reader.GetNext(), reader.GetNext()
    with pytest.raises(errors.DataLossError):
        reader.GetNext()


def _records_and_stored_crcs(path):
    data = open(path, "rb").read()
    offset = 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 8], "little")
        record = data[offset + 12 : offset + 12 + length]
        stored = data[offset + 12 + length : offset + 16 + length]
        yield record, int.from_bytes(stored, "little")
        offset += 16 + length


def test_repeated_scalar_layouts_get_the_crc_of_their_own_bytes(tmp_path):
    # Events of a layout seen before take their CRC from a template of it:
    # every one must still be the CRC of its own bytes (steps of each varint
    # length, negative ones, the same tags with and without metadata).
    from trainwatch.tensorboard.records import masked_crc32c

    rng = np.random.default_rng(0)
    steps = [0, 1, 2, 127, 128, 300, 2**14, 2**21 + 5, 2**40, -1, -7, 3, 3]
    with SummaryWriter(tmp_path) as writer:
        for step in steps * 3:
            values = {"epoch_loss": rng.normal(), "gap/loss": rng.normal() * 1e30}
            writer.scalars(values, step)
            writer.scalar("epoch_loss", rng.uniform(), step)
        path = writer.path
    records = list(_records_and_stored_crcs(path))
    assert len(records) == 1 + 2 * 3 * len(steps)
    for record, stored in records:
        assert stored == masked_crc32c(record)
    read = read_events(str(tmp_path))["."].scalars["epoch_loss"]
    assert sorted(e.step for e in read) == sorted(steps * 6)


def test_template_crc_is_the_crc_of_the_data():
    from trainwatch.tensorboard.records import TemplateCrc32c, crc32c

    rng = np.random.default_rng(1)
    for length in (1, 9, 150, 1024):
        template = rng.integers(0, 256, length, np.uint8).tobytes()
        positions = sorted(rng.choice(length, min(length, 12), replace=False))
        crc = TemplateCrc32c(template, positions)
        assert crc(template) == crc32c(template)
        for _ in range(50):
            data = bytearray(template)
            for p in positions:
                data[p] = int(rng.integers(0, 256))
            assert crc(bytes(data)) == crc32c(bytes(data))
    with pytest.raises(ValueError, match="at most 1024 bytes"):
        TemplateCrc32c(b"x" * 1025, [0])
    with pytest.raises(ValueError, match="Positions must lie"):
        TemplateCrc32c(b"xy", [2])
