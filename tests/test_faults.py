"""Bad input and faults: trainwatch fails early and clearly, or reports, never
crashes a training run halfway, and never leaves unreadable logs behind."""

import json
import os
import tracemalloc

import keras
import numpy as np
import pytest

import trainwatch
from trainwatch.callbacks.base import Monitor
from trainwatch.findings import FINDINGS_FILENAME, load_findings
from trainwatch.tensorboard import read_events

N_FEATURES, N_CLASSES = 6, 3
NAN_CODES = {"loss_nan", "weights_nan"}


def make_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype("float32")
    y = ((x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5)).astype("int32")
    return x, y


def make_model(loss="sparse_categorical_crossentropy", metrics=("accuracy",)):
    model = keras.Sequential(
        [
            keras.Input((N_FEATURES,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(N_CLASSES, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), loss, metrics=list(metrics))
    return model


class BatchCounter(keras.callbacks.Callback):
    """Counts the training batches that ran."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


def watch(log_dir, probe=None, **parts):
    """A TrainWatch without the slow checks (gradients, sanity) unless asked for."""
    parts.setdefault("gradient_check", False)
    parts.setdefault("sanity_check", False)
    return trainwatch.TrainWatch(str(log_dir), probe=probe, verbose=0, **parts)


def fit(model, x, y, callbacks, epochs=2, **kwargs):
    kwargs.setdefault("batch_size", 16)
    return model.fit(x, y, epochs=epochs, callbacks=callbacks, verbose=0, **kwargs)


def codes(log_dir):
    return [f.code for f in load_findings(os.path.join(log_dir, FINDINGS_FILENAME))]


def failures(log_dir):
    path = os.path.join(log_dir, FINDINGS_FILENAME)
    if not os.path.exists(path):
        return []
    return [f.message for f in load_findings(path) if f.code == "monitor_failed"]


# -- log_dir ---------------------------------------------------------------


def test_log_dir_under_a_file_fails_at_construction(tmp_path):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the log dir should go")
    bad = blocker / "logs"
    with pytest.raises(ValueError, match="log_dir") as error:
        trainwatch.TrainWatch(str(bad), verbose=0)
    assert str(bad) in str(error.value)


@pytest.mark.parametrize(
    "log_dir, error", [(42, TypeError), ("", ValueError), (["runs"], TypeError)]
)
def test_invalid_log_dir_fails_at_construction(log_dir, error):
    with pytest.raises(error, match="log_dir"):
        trainwatch.TrainWatch(log_dir, verbose=0)


def test_standalone_monitor_with_bad_log_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    x, y = make_data(32)
    model = make_model()
    counter = BatchCounter()
    with pytest.raises(ValueError, match="log_dir"):
        fit(model, x, y, [Monitor(str(blocker / "logs"), verbose=0), counter])
    assert counter.batches == 0, "training time was spent before the error"


# -- probe data ----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_probe",
    [
        pytest.param(lambda x, y: (x[:16, :3], y[:16]), id="too_few_features"),
        pytest.param(lambda x, y: (x[:16, 0], y[:16]), id="missing_axis"),
        pytest.param(lambda x, y: (x[:16].astype(str), y[:16]), id="strings"),
        pytest.param(lambda x, y: (x[:16], y[:8]), id="lengths_differ"),
        pytest.param(lambda x, y: (x[:16],), id="no_labels"),
        pytest.param(lambda x, y: (x[:16], y[:16], None, None), id="too_long"),
    ],
)
def test_bad_probe_is_a_clear_error_before_training(tmp_path, bad_probe):
    x, y = make_data()
    model = make_model()
    counter = BatchCounter()
    with pytest.raises((ValueError, TypeError), match="probe") as error:
        fit(model, x, y, [watch(tmp_path, probe=bad_probe(x, y)), counter])
    assert counter.batches == 0, f"failed mid-fit: {error.value}"
    assert "Received:" in str(error.value)


def test_probe_of_the_other_label_format_is_a_clear_error(tmp_path):
    """One-hot probe labels for a sparse loss: said at train begin."""
    x, y = make_data()
    one_hot = keras.utils.to_categorical(y[:16], N_CLASSES)
    counter = BatchCounter()
    with pytest.raises(ValueError, match="probe") as error:
        fit(make_model(), x, y, [watch(tmp_path, probe=(x[:16], one_hot)), counter])
    assert counter.batches == 0
    assert "label" in str(error.value)


# -- labels, metrics -------------------------------------------------------------


@pytest.mark.parametrize("labels", ["sparse", "one_hot"])
def test_sparse_and_one_hot_labels(tmp_path, labels):
    x, y = make_data()
    if labels == "one_hot":
        y = keras.utils.to_categorical(y, N_CLASSES).astype("float32")
        loss = "categorical_crossentropy"
    else:
        loss = "sparse_categorical_crossentropy"
    model = make_model(loss=loss)
    fit(model, x, y, [watch(tmp_path, probe=(x[:32], y[:32]))], validation_split=0.25)
    assert failures(str(tmp_path)) == []
    runs = read_events(str(tmp_path))
    assert len(runs["train"].scalars["epoch_loss"]) == 2
    assert len(runs["validation"].scalars["epoch_loss"]) == 2
    assert any(tag.startswith("activations/") for tag in runs["train"].histograms)


def test_model_without_metrics(tmp_path):
    x, y = make_data()
    model = make_model(metrics=())
    fit(model, x, y, [watch(tmp_path, probe=(x[:32], y[:32]))], validation_split=0.25)
    assert failures(str(tmp_path)) == []
    runs = read_events(str(tmp_path))
    assert [e.step for e in runs["train"].scalars["epoch_loss"]] == [0, 1]
    assert "epoch_accuracy" not in runs["train"].scalars


# -- non-finite data ---------------------------------------------------------------


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_data_is_a_nan_finding_and_training_goes_on(tmp_path, bad_value):
    x, y = make_data()
    x[20, 2] = bad_value  # one bad value in the second batch of each epoch
    model = make_model()
    counter = BatchCounter()
    history = fit(
        model, x, y, [watch(tmp_path, probe=(x[:16], y[:16])), counter], epochs=2
    )
    assert counter.batches == 8 and len(history.history["loss"]) == 2
    # The loss becomes nan (JAX, PyTorch), or stays finite while weights turn
    # nan (TensorFlow's ReLU maps nan to 0): either way, it is said.
    assert set(codes(str(tmp_path))) & NAN_CODES
    with open(os.path.join(tmp_path, FINDINGS_FILENAME), encoding="utf-8") as f:
        json.load(f)  # valid JSON: NaN never leaks into the findings file
    runs = read_events(str(tmp_path))
    assert runs["train"].scalars["epoch_loss"]


# -- interruptions -----------------------------------------------------------------


class RaiseAt(keras.callbacks.Callback):
    """Raises `error` after batch `batch` of epoch `epoch` (another callback's bug)."""

    def __init__(self, epoch, batch, error):
        super().__init__()
        self.epoch, self.batch, self.error = epoch, batch, error
        self._current_epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self._current_epoch, batch) == (self.epoch, self.batch):
            raise self.error


@pytest.mark.parametrize(
    "error", [RuntimeError("a bug in another callback"), KeyboardInterrupt()]
)
def test_interrupted_fit_leaves_readable_logs(tmp_path, error):
    x, y = make_data()
    x = x * 20.0 + 5.0  # not normalized: a finding before the interruption
    model = make_model()
    callback = watch(tmp_path, probe=(x[:16], y[:16]), loss_curve={"update_freq": 1})
    with pytest.raises(type(error)):
        fit(
            model,
            x,
            y,
            [callback, RaiseAt(epoch=1, batch=1, error=error)],
            epochs=3,
            validation_split=0.25,  # 48 examples for training: 3 steps an epoch
        )
    # Read right away, in this process, with the callback still alive: what
    # was logged before the interruption must be on disk already.
    runs = read_events(str(tmp_path))
    train = runs["train"]
    assert [e.step for e in train.scalars["epoch_loss"]] == [0]
    assert [e.step for e in runs["validation"].scalars["epoch_loss"]] == [0]
    # Batch 1 of epoch 1 (global step 5) was logged before the other callback
    # raised after it.
    assert max(e.step for e in train.scalars["batch_loss"]) == 5
    with open(os.path.join(tmp_path, FINDINGS_FILENAME), encoding="utf-8") as f:
        saved = json.load(f)["findings"]
    assert "inputs_not_normalized" in [f["code"] for f in saved]
    assert "trainwatch/findings" in train.texts
    # The callback is usable again: a second fit continues the same logs.
    fit(model, x, y, [callback], epochs=1, validation_split=0.25)
    runs = read_events(str(tmp_path))
    epochs = [e.step for e in runs["train"].scalars["epoch_loss"]]
    assert epochs[0] == 0 and len(epochs) == 2 and epochs[1] >= 1
    steps = [e.step for e in runs["train"].scalars["batch_loss"]]
    assert max(steps) > 5


# -- shared log dirs ----------------------------------------------------------------


def test_two_runs_into_one_log_dir(tmp_path):
    """Two runs one after the other: both runs' events and findings are kept."""
    x, y = make_data()
    nan_x = x.copy()
    nan_x[20, 2] = np.nan
    for seed, data in ((0, x * 50.0 + 20.0), (1, nan_x)):
        keras.utils.set_random_seed(seed)
        fit(make_model(), data, y, [watch(tmp_path, probe=(data[:16], y[:16]))])
        keras.backend.clear_session()
    event_files = [n for n in os.listdir(tmp_path / "train") if "tfevents" in n]
    assert len(event_files) == 2  # one file per run, none overwritten
    runs = read_events(str(tmp_path))
    losses = runs["train"].scalars["epoch_loss"]
    assert sorted(e.step for e in losses) == [0, 0, 1, 1]
    # Run 1's findings (unnormalized inputs) survive run 2's (nan).
    found = set(codes(str(tmp_path)))
    assert "inputs_not_normalized" in found and found & NAN_CODES, found


def test_two_watches_alive_at_once_share_a_log_dir(tmp_path):
    """Two interleaved runs (e.g. two models in one notebook) into one dir."""
    x, y = make_data()
    models = [make_model(), make_model()]
    watches = [watch(tmp_path, probe=(x[:16], y[:16])) for _ in models]
    for _ in range(2):
        for model, callback in zip(models, watches):
            fit(model, x, y, [callback], epochs=1)
    runs = read_events(str(tmp_path))
    assert sorted(e.step for e in runs["train"].scalars["epoch_loss"]) == [0, 0, 1, 1]


# -- large models ----------------------------------------------------------------


def test_large_model_histograms_are_sampled_and_memory_is_bounded(tmp_path):
    """A million-weight layer: histograms see a sample, trainwatch's host
    memory stays a small multiple of one weight copy."""
    width = 1024  # 1M weights, 4 MB in float32
    x = np.random.default_rng(0).normal(size=(32, width)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential(
        [
            keras.Input((width,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile("sgd", "sparse_categorical_crossentropy")
    weight_bytes = sum(int(np.prod(v.shape)) * 4 for v in model.weights)
    callback = watch(tmp_path, probe=(x[:16], y[:16]))
    fit(model, x, y, [], epochs=1)  # compile first: tracing slows it down a lot
    tracemalloc.start()
    try:
        fit(model, x, y, [callback], epochs=1, batch_size=16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # numpy reports its buffers to tracemalloc (the framework's own do not
    # count): a few copies of the big weight, never a float64 blow-up of it.
    assert peak < 6 * weight_bytes, f"peak {peak / 1e6:.0f} MB"
    train = read_events(str(tmp_path))["train"]
    activations = [t for t in train.histograms if t.startswith("activations/")]
    assert activations
    for tag in activations:  # sampled: at most 4096 features per example
        for event in train.histograms[tag]:
            assert event.counts.sum() <= 16 * 4096, tag
    kernel = [t for t in train.histograms if t.startswith("weights/")]
    assert kernel  # weights: all of them, counted a chunk at a time


def test_stop_on_nan_stops_training_when_asked(tmp_path):
    x, y = make_data()
    x[20, 2] = np.nan
    model = keras.Sequential(
        [
            keras.Input((N_FEATURES,)),
            keras.layers.Dense(8, activation="tanh"),  # tanh keeps nan a nan
            keras.layers.Dense(N_CLASSES, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    counter = BatchCounter()
    callback = watch(tmp_path, loss_curve={"stop_on_nan": True, "update_freq": 1})
    history = fit(model, x, y, [callback, counter], epochs=3)
    assert "loss_nan" in codes(str(tmp_path))
    assert len(history.history["loss"]) == 1  # stopped after the first epoch


class FailsInEpochEnd(Monitor):
    def epoch_end(self, epoch, logs):
        raise RuntimeError("a bug in a monitor")


def test_a_failure_while_reporting_a_failure_does_not_stop_training(tmp_path):
    x, y = make_data()
    model = make_model()
    monitor = FailsInEpochEnd(tmp_path, verbose=0)

    def unwritable(run="train"):
        raise OSError("disk full")

    monitor.context.writer = unwritable  # the report of the failure fails too
    with pytest.warns(RuntimeWarning, match="a bug in a monitor"):
        history = fit(model, x, y, [monitor], epochs=2)
    assert len(history.history["loss"]) == 2
