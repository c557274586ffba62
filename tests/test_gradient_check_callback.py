"""`GradientCheck` in `model.fit`: schedule, logs, findings, failure actions."""

import json
import os

import keras
import pytest
from keras.src.utils import python_utils
from test_gradient_check import (  # noqa: F401 (a fixture)
    ForgetfulDense,
    GradScaledDense,
    _one_torch_thread,
    batch,
    with_custom,
)

from trainwatch.callbacks.gradient_check import (
    GradientCheck,
    GradientCheckError,
    parse_check_freq,
)
from trainwatch.findings import FINDINGS_FILENAME
from trainwatch.tensorboard import read_events


def mlp(learning_rate=0.05):
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(12, activation="tanh"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss="sparse_categorical_crossentropy",
    )
    return model


X, Y = batch(n=64)


def fit(model, callback, epochs=3, n=32):
    # Eager steps: the tests' models share shapes, so their ops compile once.
    model.run_eagerly = True
    return model.fit(
        X[:n], Y[:n], batch_size=8, epochs=epochs, verbose=0, callbacks=[callback]
    )


def data():
    return X[:8], Y[:8]


FEW = {"coordinates": 2}  # fewer probes: these tests are about the schedule


def test_checks_after_warmup_every_epoch_and_logs(tmp_path):
    model = mlp()
    check = GradientCheck(
        str(tmp_path),
        data=data(),
        warmup_steps=6,
        wait_for_loss_drop=False,
        verbose=0,
        **FEW,
    )
    assert python_utils.is_default(check.on_train_batch_end)  # async dispatch stays
    fit(model, check)  # 4 steps an epoch: epoch ends at steps 4, 8, 12

    assert [step for step, _ in check.results] == [8, 12]
    assert check.last_result.passed and check.last_result.precision == "float64"
    train = read_events(str(tmp_path))["train"]
    for variable in model.trainable_variables:
        series = train.scalars[f"gradcheck/{variable.path}"]
        assert [event.step for event in series] == [8, 12]
        assert all(event.value < -6 for event in series)  # relative error < 1e-6
        assert f"gradcheck_estimate/{variable.path}" in train.scalars
    assert [e.value for e in train.scalars["gradcheck_summary/wrong_variables"]] == [
        0,
        0,
    ]
    [first, _] = train.texts["gradcheck_summary/table"]
    assert first.step == 8 and "| variable |" in first.text
    assert model.trainable_variables[0].path in first.text
    codes = {f.code for f in check.context.findings}
    assert not codes & {"gradient_wrong", "gradient_suspicious", "gradient_missing"}


def test_step_frequency_uses_a_sparse_batch_hook():
    model = mlp()
    check = GradientCheck(
        data=data(),
        warmup_steps=2,
        wait_for_loss_drop=False,
        check_freq=3,
        verbose=0,
        **FEW,
    )
    assert not python_utils.is_default(check.on_train_batch_end)
    fit(model, check, epochs=1, n=64)  # 8 steps
    assert [step for step, _ in check.results] == [4, 7]


def test_waits_for_the_loss_to_fall_but_not_forever():
    falling = GradientCheck(
        data=data(), warmup_steps=1, max_warmup_steps=6, verbose=0, **FEW
    )
    fit(mlp(learning_rate=0.5), falling, epochs=2)
    assert [step for step, _ in falling.results] == [4, 8]

    stuck = GradientCheck(
        data=data(), warmup_steps=1, max_warmup_steps=6, verbose=0, **FEW
    )
    fit(mlp(learning_rate=0.0), stuck, epochs=2)  # the loss never falls
    assert [step for step, _ in stuck.results] == [8]


def test_wrong_gradient_warns_and_is_a_finding(tmp_path):
    model = with_custom(GradScaledDense(12, scale=1.001, name="scaled"))
    check = GradientCheck(
        str(tmp_path),
        data=data(),
        warmup_steps=0,
        wait_for_loss_drop=False,
        verbose=0,
        **FEW,
    )
    with pytest.warns(RuntimeWarning, match="wrong gradient for .*scaled/kernel"):
        history = fit(model, check, epochs=2)
    assert len(history.history["loss"]) == 2  # "warn" does not stop training
    path = next(v.path for v in model.trainable_variables if "scaled/kernel" in v.path)
    with open(os.path.join(tmp_path, FINDINGS_FILENAME)) as f:
        findings = json.load(f)["findings"]
    [wrong] = [f for f in findings if f["code"] == "gradient_wrong"]
    assert wrong["where"] == path and wrong["step"] == 4 and wrong["epoch"] == 0
    train = read_events(str(tmp_path))["train"]
    assert train.scalars[f"gradcheck/{path}"][0].value == pytest.approx(-3, abs=0.05)
    assert train.scalars["gradcheck_summary/wrong_variables"][0].value == 1


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_on_failure_stop_and_raise():
    stop = GradientCheck(
        data=data(), warmup_steps=0, wait_for_loss_drop=False, on_failure="stop", **FEW
    )
    model = with_custom(GradScaledDense(12, scale=0.0, name="zeroed"))
    with pytest.warns(RuntimeWarning):
        history = fit(model, stop, epochs=5)
    assert len(history.history["loss"]) == 1

    fail = GradientCheck(
        data=data(), warmup_steps=0, wait_for_loss_drop=False, on_failure="raise", **FEW
    )
    model = with_custom(GradScaledDense(12, mode="missing", name="cut"))
    with pytest.warns(RuntimeWarning), pytest.raises(GradientCheckError, match="cut"):
        fit(model, fail, epochs=5)


def test_a_network_without_gradient_is_one_finding_however_often_checked(
    tmp_path, capsys
):
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(12, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    # Nothing moves (learning rate 0): every check sees the same network.
    model.compile(
        optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy"
    )
    hidden = model.layers[0].bias
    hidden.assign(keras.ops.full(hidden.shape, -100.0))  # every ReLU dead
    check = GradientCheck(
        str(tmp_path), data=data(), warmup_steps=0, wait_for_loss_drop=False, **FEW
    )
    fit(model, check, epochs=3)

    assert [step for step, _ in check.results] == [4, 8, 12]
    for _, result in check.results:  # each check says it, once
        [missing] = [f for f in result.findings if f.code == "gradient_missing"]
        assert missing.where is None
    with open(os.path.join(tmp_path, FINDINGS_FILENAME)) as f:
        findings = json.load(f)["findings"]
    [missing] = [f for f in findings if f["code"] == "gradient_missing"]
    assert missing["where"] is None and missing["step"] == 4
    assert missing["severity"] == "error"
    assert "No gradient reaches 3 of the 4 trainable" in missing["message"]
    assert "dead ReLUs" in missing["message"]
    assert "learning rate" in missing["advice"]
    assert capsys.readouterr().err.count("gradient_missing") == 1  # printed once


def test_float32_fallback_is_reported_and_training_goes_on():
    model = with_custom(ForgetfulDense(12, shift=0.5))  # no float64 copy
    check = GradientCheck(
        data=data(),
        warmup_steps=0,
        wait_for_loss_drop=False,
        max_checks=1,
        verbose=0,
        **FEW,
    )
    history = fit(model, check, epochs=2)
    assert len(history.history["loss"]) == 2 and len(check.results) == 1
    assert check.last_result.precision == "float32"
    codes = [f.code for f in check.context.findings]
    assert "gradient_check_imprecise" in codes and "gradient_wrong" not in codes


def run_one_epoch(model, check):
    check.set_model(model)
    check.on_train_begin()
    check.on_epoch_begin(0)
    check.on_epoch_end(0, {})
    check.on_train_end({})


def test_an_unbuilt_model_is_built_on_the_data_and_checked():
    model = keras.Sequential([keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    check = GradientCheck(data=data(), warmup_steps=0, wait_for_loss_drop=False)
    fit(model, check, epochs=1)
    assert len(check.results) == 1
    assert not [f for f in check.context.findings if f.code == "monitor_failed"]


def test_a_model_that_cannot_be_built_is_a_finding_not_a_crash():
    def refuse(x):
        raise ValueError("refused")

    model = keras.Sequential([keras.layers.Dense(3), keras.layers.Lambda(refuse)])
    model.compile(optimizer="sgd", loss="mse")
    check = GradientCheck(data=data(), warmup_steps=0, wait_for_loss_drop=False)
    run_one_epoch(model, check)
    [finding] = list(check.context.findings)
    assert finding.code == "monitor_failed" and "refused" in finding.message
    assert check.results == []


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"data": None}, "data"),
        ({"check_freq": "weekly"}, "check_freq"),
        ({"check_freq": 0}, "check_freq"),
        ({"on_failure": "explode"}, "on_failure"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"max_checks": 0}, "max_checks"),
        ({"coordinates": -2}, "coordinates"),
        ({"colour": "red"}, "check_options"),
    ],
)
def test_bad_arguments_fail_early(kwargs, name):
    arguments = {"data": data(), **kwargs}
    with pytest.raises(ValueError, match=f"Received: {name}="):
        GradientCheck(**arguments)


def test_parse_check_freq():
    assert parse_check_freq("epoch") == (1, "epoch")
    assert parse_check_freq("2 epochs") == (2, "epoch")
    assert parse_check_freq("50 steps") == (50, "step")
    assert parse_check_freq(7) == (7, "step")


def test_inside_trainwatch_a_long_epoch_gets_its_first_check_mid_epoch(
    tmp_path, watch_with_only
):
    model = mlp()
    model.run_eagerly = True
    watch = watch_with_only(
        tmp_path,
        data(),
        ("gradient_check", "loss_curve", "update_ratio"),
        gradient_check={"warmup_steps": 3, "wait_for_loss_drop": False, **FEW},
    )
    check = watch.part("GradientCheck")
    check.mid_epoch_seconds = 0.0  # every epoch counts as long
    model.fit(X, Y, batch_size=4, epochs=1, verbose=0, callbacks=[watch])
    steps = [step for step, _ in check.results]
    assert steps[0] == 3, steps  # right after warm-up, not at the epoch's end
    assert steps[-1] == 16  # and at the epoch's end as before


def test_on_its_own_the_check_schedule_stays_per_epoch():
    check = GradientCheck(data=data(), warmup_steps=3, wait_for_loss_drop=False, **FEW)
    check.mid_epoch_seconds = 0.0
    fit(mlp(), check, epochs=1, n=64)
    assert [step for step, _ in check.results] == [8]
