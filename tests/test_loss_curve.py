"""LossCurve on the active backend: what it writes, and the findings it raises."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import trainwatch
from trainwatch.callbacks.loss_curve import LossCurve, higher_is_better
from trainwatch.callbacks.update_ratio import UpdateRatio
from trainwatch.tensorboard import read_events


def digits(n=1797):
    data = load_digits()
    x = data.data.astype("float32")[:n]
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, data.target[:n].astype("int32")


def mlp(learning_rate=1e-3, optimizer=None, metrics=("accuracy",), units=32, **kwargs):
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer or keras.optimizers.Adam(learning_rate),
        "sparse_categorical_crossentropy",
        metrics=list(metrics),
        **kwargs,
    )
    return model


def steps_of(events):
    return [e.step for e in events]


def my_score(y_true, y_pred):
    """A custom metric with a name Keras knows nothing about."""
    return keras.ops.max(y_pred, axis=-1)


def test_batch_loss_is_the_loss_of_the_batch_itself(tmp_path):
    x, y = digits(128)
    model = mlp(optimizer=keras.optimizers.SGD(0.0))  # weights stay put
    curve = LossCurve(tmp_path, update_freq=1, verbose=0)
    model.fit(
        x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[curve]
    )

    probabilities = keras.ops.convert_to_numpy(model(x))
    per_example = -np.log(probabilities[np.arange(len(y)), y])
    expected = per_example.reshape(4, 32).mean(axis=1)
    train = read_events(tmp_path)["train"]
    got = {e.step: e.value for e in train.scalars["batch_loss"]}
    # the epoch's last batch (steps 4 and 8) may be smaller: left out
    assert sorted(got) == [1, 2, 3, 5, 6, 7]
    for step, value in got.items():
        np.testing.assert_allclose(value, expected[(step - 1) % 4], rtol=1e-4)
        log10 = {e.step: e.value for e in train.scalars["batch_loss_log10"]}
        np.testing.assert_allclose(log10[step], np.log10(value), rtol=1e-5)
    epochs = [(e.step, e.value) for e in train.scalars["epoch"]]
    assert epochs == [(0, 0.0), (4, 1.0), (8, 2.0)]
    assert curve.initial_loss == pytest.approx(expected[0], rel=1e-4)


def test_a_run_shorter_than_update_freq_still_logs_its_initial_loss(tmp_path):
    x, y = digits(128)
    model = mlp(optimizer=keras.optimizers.SGD(0.0))
    probabilities = keras.ops.convert_to_numpy(model(x[:32]))
    first = -np.log(probabilities[np.arange(32), y[:32]]).mean()
    curve = LossCurve(tmp_path, verbose=0)  # update_freq 50 > the 8 steps
    model.fit(
        x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[curve]
    )
    train = read_events(tmp_path)["train"]
    (point,) = train.scalars["batch_loss"]
    assert point.step == 1
    np.testing.assert_allclose(point.value, first, rtol=1e-4)


def _fed(log_dir, means, steps, drain_every, first_batch=0):
    """A LossCurve fed Keras-like running means, its queue worked off every
    `drain_every` batches, as in a fit with `steps` batches an epoch."""
    curve = LossCurve(log_dir, update_freq=3, verbose=0)
    curve.set_params({"steps": steps, "epochs": 1})
    curve.on_train_begin()
    curve.on_epoch_begin(0)
    for batch, mean in enumerate(means, start=first_batch):
        curve._queue.append((batch, mean))
        if len(curve._queue) >= drain_every:
            curve._drain()
    curve._drain()
    curve.context.flush()
    return curve


@pytest.mark.parametrize("bad_at", [None, 6])
def test_runs_of_batches_are_taken_in_as_one_by_one(tmp_path, bad_at):
    """Working off many batches at once gives what one at a time gives."""
    losses = 2.0 / np.arange(1.0, 11.0) + np.sin(np.arange(10.0))
    if bad_at is not None:
        losses[bad_at] = np.nan
    means = (np.cumsum(losses) / np.arange(1, 11)).tolist()
    one_by_one = _fed(tmp_path / "one", means, steps=10, drain_every=1)
    at_once = _fed(tmp_path / "runs", means, steps=10, drain_every=4)

    np.testing.assert_array_equal(list(at_once._points), list(one_by_one._points))
    steps = [p[0] for p in one_by_one._points]
    assert steps == list(range(1, 10))  # the epoch's last batch is left out
    expected = losses[:9].copy()
    if bad_at is not None:
        expected[bad_at:] = np.nan  # a running mean stays nan from there on
    np.testing.assert_allclose([p[1] for p in one_by_one._points], expected)
    assert at_once.initial_loss == one_by_one.initial_loss == losses[0]
    a, b = (read_events(str(tmp_path / d))["train"] for d in ("one", "runs"))
    for tag in ("batch_loss", "batch_loss_log10"):
        np.testing.assert_array_equal(
            [(e.step, e.value) for e in a.scalars[tag]],
            [(e.step, e.value) for e in b.scalars[tag]],
        )
    assert steps_of(a.scalars["batch_loss"]) == [1, 3, 6, 9]  # 1: the start
    nan = [f.step for f in at_once.context.findings if f.code == "loss_nan"]
    assert nan == ([] if bad_at is None else [bad_at + 1])


def test_steps_per_execution_logs_window_losses(tmp_path, backend_name):
    if backend_name == "torch":
        pytest.skip("steps_per_execution must be 1 with the PyTorch backend")
    x, y = digits(192)
    model = mlp(optimizer=keras.optimizers.SGD(0.0), steps_per_execution=2)
    curve = LossCurve(tmp_path, update_freq=1, verbose=0)
    model.fit(
        x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[curve]
    )

    probabilities = keras.ops.convert_to_numpy(model(x))
    batch = -np.log(probabilities[np.arange(len(y)), y]).reshape(6, 32).mean(axis=1)
    train = read_events(tmp_path)["train"]
    assert "batch_loss" not in train.scalars
    got = {e.step: e.value for e in train.scalars["window_loss"]}
    assert sorted(got) == [2, 4]
    np.testing.assert_allclose(got[2], batch[:2].mean(), rtol=1e-4)
    np.testing.assert_allclose(got[4], batch[2:4].mean(), rtol=1e-4)


def test_epoch_metrics_in_train_and_validation_runs_with_gaps(tmp_path):
    x, y = digits(256)
    model = mlp(metrics=("sparse_categorical_accuracy", my_score))
    curve = LossCurve(tmp_path, update_freq=4, verbose=0)
    model.fit(
        x[:192],
        y[:192],
        validation_data=(x[192:], y[192:]),
        batch_size=32,
        epochs=2,
        verbose=0,
        callbacks=[curve],
    )
    runs = read_events(tmp_path)
    assert sorted(runs) == ["train", "validation"]
    metrics = {"epoch_loss", "epoch_sparse_categorical_accuracy", "epoch_my_score"}
    assert metrics <= set(runs["train"].scalars)
    assert set(runs["validation"].scalars) == metrics
    gaps = {"gap/loss", "gap/sparse_categorical_accuracy", "gap/my_score"}
    assert gaps <= set(runs["train"].scalars)
    for tag in metrics:
        assert steps_of(runs["validation"].scalars[tag]) == [0, 1]
    history = model.history.history
    loss_gap = runs["train"].scalars["gap/loss"][-1].value
    np.testing.assert_allclose(
        loss_gap, history["val_loss"][-1] - history["loss"][-1], rtol=1e-5
    )
    acc = "sparse_categorical_accuracy"
    acc_gap = runs["train"].scalars[f"gap/{acc}"][-1].value
    np.testing.assert_allclose(
        acc_gap, history[acc][-1] - history[f"val_{acc}"][-1], atol=1e-6
    )
    # 1: the initial loss; 12: the last batch, maybe smaller, left out
    assert steps_of(runs["train"].scalars["batch_loss"]) == [1, 4, 8]


def test_higher_is_better_names():
    assert higher_is_better("accuracy") and higher_is_better("val_auc")
    assert not higher_is_better("loss") and not higher_is_better("mse")


def test_second_fit_and_resume_continue_without_overwriting(tmp_path):
    x, y = digits(128)
    model = mlp()
    curve = LossCurve(tmp_path, update_freq=1, verbose=0)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[curve])
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[curve])
    # a new callback resuming with initial_epoch (as after loading a checkpoint)
    resumed = LossCurve(tmp_path, update_freq=1, verbose=0)
    model.fit(
        x, y, batch_size=32, initial_epoch=3, epochs=4, verbose=0, callbacks=[resumed]
    )
    runs = read_events(tmp_path)
    assert "validation" not in runs
    train = runs["train"]
    assert steps_of(train.scalars["epoch_loss"]) == [0, 1, 2, 3]
    assert not any(tag.startswith("gap/") for tag in train.scalars)
    steps = steps_of(train.scalars["batch_loss"])
    assert steps == [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15]
    epochs = steps_of(train.scalars["epoch"])
    assert epochs == sorted(set(epochs)) and epochs[-1] == 16


@pytest.mark.parametrize("stop_on_nan", [True, False])
def test_loss_nan_reported_at_its_step(tmp_path, stop_on_nan):
    x, y = digits(128)
    weights = np.ones(len(x), "float32")
    weights[70] = np.nan  # in the third batch (a nan input can vanish in a ReLU)
    model = mlp()
    curve = LossCurve(tmp_path, stop_on_nan=stop_on_nan, verbose=0)
    history = model.fit(
        x,
        y,
        sample_weight=weights,
        batch_size=32,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[curve],
    )
    findings = [f for f in curve.context.findings if f.code == "loss_nan"]
    assert len(findings) == 1
    assert findings[0].step == 3 and findings[0].severity == "error"
    assert len(history.history["loss"]) == (1 if stop_on_nan else 3)
    # nan weights have chance accuracy: no verdict on the model's capacity
    assert "underfitting" not in {f.code for f in curve.context.findings}
    runs = read_events(tmp_path)
    assert "loss_nan" in runs["train"].texts["trainwatch/findings"][-1].text


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="Received: update_freq=0"):
        LossCurve(update_freq=0)
    with pytest.raises(ValueError, match="Received: update_freq='batch'"):
        LossCurve(update_freq="batch")
    with pytest.raises(TypeError, match="Received: stop_on_nan='yes'"):
        LossCurve(stop_on_nan="yes")
    assert LossCurve(update_freq="epoch").update_freq == "epoch"


def _keras_dispatches_async(callbacks, model):
    return keras.callbacks.CallbackList(callbacks, model=model)._async_train


def test_batch_hook_runs_in_step_on_cpu_and_async_on_accelerators(monkeypatch):
    """On a CPU, Keras's thread hand-off per step costs more than it saves, so
    the batch hook runs in step; with an accelerator, it keeps Keras's
    asynchronous dispatch exactly as a fit without it would have it."""
    import trainwatch.callbacks.loss_curve as loss_curve_module
    from trainwatch import TrainWatch

    model = mlp()
    plain = _keras_dispatches_async([], model)  # False on TensorFlow, else True
    assert LossCurve().async_safe is False  # the tests run on a CPU
    assert not _keras_dispatches_async([LossCurve(), UpdateRatio()], model)
    assert TrainWatch(None, verbose=0).async_safe is False
    monkeypatch.setattr(loss_curve_module, "computes_on_cpu", lambda: False)
    assert LossCurve().async_safe is True
    assert _keras_dispatches_async([LossCurve(), UpdateRatio()], model) == plain
    watch = TrainWatch(None, verbose=0)
    assert watch.async_safe is True
    assert _keras_dispatches_async([watch], model) == plain


SCENARIOS = {
    # learning rate: codes that must appear (any of each set)
    1e-3: [],
    10.0: [{"loss_diverging", "loss_nan"}, {"update_ratio_high"}],
    1e-6: [{"loss_plateau"}, {"update_ratio_low"}],
}


@pytest.mark.parametrize("learning_rate", list(SCENARIOS))
def test_digits_mlp_findings(tmp_path, learning_rate):
    x, y = digits(1300)
    model = mlp(learning_rate, units=64)
    curve = LossCurve(tmp_path, verbose=0)
    ratios = UpdateRatio(tmp_path, verbose=0)
    model.fit(
        x[:1000],
        y[:1000],
        validation_data=(x[1000:], y[1000:]),
        batch_size=32,
        epochs=3,
        verbose=0,
        callbacks=[curve, ratios],
    )
    findings = list(curve.context.findings) + list(ratios.context.findings)
    serious = {f.code for f in findings if f.severity in ("error", "warning")}
    if not SCENARIOS[learning_rate]:
        assert serious == set(), [str(f) for f in findings]
    for alternatives in SCENARIOS[learning_rate]:
        assert serious & alternatives, [str(f) for f in findings]
    for finding in findings:
        assert finding.advice and any(ch.isdigit() for ch in finding.message)


def test_underfitting_judges_a_training_accuracy_not_a_validation_one():
    from trainwatch.callbacks.loss_curve import _accuracy_name

    names = ["val_cls_accuracy", "loss", "reg_mae", "cls_accuracy", "val_loss"]
    assert _accuracy_name(names) == "cls_accuracy"
    assert _accuracy_name(reversed(names)) == "cls_accuracy"
    assert _accuracy_name(["b_accuracy", "a_accuracy"]) == "a_accuracy"
    assert _accuracy_name(["val_accuracy", "loss"]) is None


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"validation_split": 0.25}, 16),
        ({"validation_data": "first_13"}, 13),  # a partial last batch
        ({"validation_data": "first_40", "validation_steps": 2}, 16),
    ],
)
def test_validation_size_is_known_to_the_overfitting_rule(kwargs, expected):
    x, y = digits(64)
    if "validation_data" in kwargs:
        n = int(kwargs["validation_data"].split("_")[1])
        kwargs = dict(kwargs, validation_data=(x[:n], y[:n]))
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    model.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    curve = LossCurve(verbose=0)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[curve], **kwargs)
    assert curve.validation_examples == expected


def test_underfitting_names_the_dropout_layers_that_drop_most_inputs():
    x, y = digits(128)
    inner = keras.Sequential(
        [keras.Input((32,)), keras.layers.Dense(16), keras.layers.Dropout(0.9)],
        name="inner",
    )
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.95, name="drop"),
            inner,
            keras.layers.Dropout(0.3, name="usual"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    # weights that stay put: the accuracy is flat and poor
    model.compile(
        keras.optimizers.SGD(0.0),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    curve = LossCurve(verbose=0)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[curve])
    [finding] = [f for f in curve.context.findings if f.code == "underfitting"]
    inner_drop = inner.layers[-1]
    names = f"{model.layers[1].path or 'drop'}, {inner_drop.path or inner_drop.name}"
    assert f"2 dropout layers ({names}) drop 90% to 95%" in finding.message
    assert "usual" not in finding.message
    assert "`Dropout(0.1)`" in finding.advice


def test_a_model_with_batch_normalization_waits_for_any_validation_fall():
    from trainwatch.callbacks.loss_curve import _validation_fall

    plain = mlp()
    normalized = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(8),
            keras.Sequential([keras.layers.BatchNormalization()]),  # nested too
            keras.layers.Dense(3),
        ]
    )
    assert _validation_fall(plain) == 0.05
    assert _validation_fall(normalized) == 0.0


def test_steps_per_execution_with_a_short_last_execution_keeps_the_step(tmp_path):
    """7 steps an epoch, 4 an execution: Keras names the last execution (3
    steps) batch 7; the global step still follows the optimizer's."""
    if keras.backend.backend() == "torch":
        pytest.skip("steps_per_execution must be 1 with the PyTorch backend")
    x, y = digits(112)
    model = mlp(steps_per_execution=4)
    watch = trainwatch.TrainWatch(
        str(tmp_path),
        verbose=0,
        loss_curve={"update_freq": 1},
        update_ratio={"update_freq": 1, "time_share": 1.0},
    )
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[watch])

    assert int(model.optimizer.iterations) == 21
    assert watch.context.step == 21
    train = read_events(str(tmp_path))["train"]
    # Each epoch's first window ends 4 steps after the epoch's start (7, 14).
    assert steps_of(train.scalars["window_loss"]) == [4, 11, 18]
    sampled = {
        e.step
        for t, s in train.scalars.items()
        if t.startswith("update_ratio/")
        for e in s
    }
    assert max(sampled) <= 21
