"""UpdateRatio on the active backend: exact ratios, sampling, tags, findings."""

import os
import time

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from trainwatch.callbacks.loss_curve import LossCurve
from trainwatch.callbacks.update_ratio import (
    UpdateRatio,
    _is_sample_step,
    _next_sample_step,
)
from trainwatch.rules import dynamics
from trainwatch.tensorboard import read_events


def digits(n=256):
    data = load_digits()
    x = data.data.astype("float32")[:n]
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, data.target[:n].astype("int32")


def build(learning_rate=1e-2, steps_per_execution=1, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(learning_rate),
        "sparse_categorical_crossentropy",
        steps_per_execution=steps_per_execution,
    )
    return model


class ReferenceRatios(keras.callbacks.Callback):
    """Reads all weights to the host at every step: slow, simple, exact."""

    def __init__(self):
        super().__init__()
        self.before = None
        self.ratios = {}  # step -> [ratio per variable]
        self.step = 0

    def _weights(self):
        return [keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables]

    def _close(self):
        after = self._weights()
        with np.errstate(divide="ignore"):
            self.ratios[self.step] = [
                np.linalg.norm(a - b) / np.linalg.norm(b)
                for a, b in zip(after, self.before)
            ]

    def on_train_batch_begin(self, batch, logs=None):
        if self.before is not None:
            self._close()
        self.before = self._weights()
        self.step += 1

    def on_epoch_end(self, epoch, logs=None):
        self._close()
        self.before = None


def test_ratios_equal_host_computed_ratios(tmp_path):
    x, y = digits(128)
    fit = dict(batch_size=32, epochs=2, shuffle=False, verbose=0)
    model = build()
    ratios = UpdateRatio(tmp_path, update_freq=1, time_share=None, verbose=0)
    model.fit(x, y, callbacks=[ratios], **fit)
    reference = ReferenceRatios()
    build().fit(x, y, callbacks=[reference], **fit)

    paths = [v.path for v in model.trainable_variables]
    train = read_events(tmp_path)["train"]
    for i, path in enumerate(paths):
        got = {e.step: 10**e.value for e in train.scalars[f"update_ratio/{path}"]}
        expected = {s: r[i] for s, r in reference.ratios.items() if r[i] > 0}
        if path.endswith("bias"):
            expected.pop(1)  # zero biases before the first step: no ratio
        assert sorted(got) == sorted(expected), path
        for step in got:
            np.testing.assert_allclose(
                got[step], expected[step], rtol=1e-3, err_msg=f"{path} at {step=}"
            )
    assert set(ratios.history) == set(paths)


@pytest.mark.parametrize("steps_per_execution", [1, 2])
def test_tags_layout_and_sampling(tmp_path, backend_name, steps_per_execution):
    if backend_name == "torch" and steps_per_execution > 1:
        pytest.skip("steps_per_execution must be 1 with the PyTorch backend")
    x, y = digits(192)  # 6 batches an epoch
    model = build(steps_per_execution=steps_per_execution)
    ratios = UpdateRatio(tmp_path, update_freq=4, time_share=None, verbose=0)
    fit = dict(batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[ratios])
    model.fit(x, y, **fit)
    model.fit(x, y, **fit)  # a second call continues the steps

    train = read_events(tmp_path)["train"]
    layers = {v.path.rsplit("/", 1)[0] for v in model.trainable_variables}
    expected = {f"update_ratio/{v.path}" for v in model.trainable_variables}
    expected |= {f"update_ratio_layer/{layer}" for layer in layers}
    expected |= {f"update_ratio_band/{b}" for b in ("low", "healthy", "high")}
    assert expected <= set(train.scalars)
    # steps 1, 2, 4, 8, 12, …; two at a time: executions (0,2], (2,4], (6,8], …
    kernel = model.trainable_variables[0].path
    steps = [e.step for e in train.scalars[f"update_ratio/{kernel}"]]
    sampled = [1, 2, 4, 8, 12, 16, 20, 24]
    assert steps == (sampled if steps_per_execution == 1 else sampled[1:])
    assert train.scalars["update_ratio_band/healthy"][0].value == pytest.approx(-3)
    category = train.layout["category"][0]
    charts = {chart["title"]: chart for chart in category["chart"]}
    margin = charts["layers against the healthy band"]["margin"]["series"]
    assert margin[0]["value"] == "update_ratio_band/healthy"
    assert {s["value"] for s in margin[1:]} == {
        f"update_ratio_layer/{layer}" for layer in layers
    }


class SlowSamples(UpdateRatio):
    """Each sample costs 20 ms more: far more than a step of this small model."""

    def _current_values(self):
        time.sleep(0.02)
        return super()._current_values()


@pytest.mark.parametrize("time_share", [None, 0.01])
def test_samples_keep_within_their_time_share(time_share):
    x, y = digits(640)  # 20 steps an epoch
    ratios = SlowSamples(update_freq=4, time_share=time_share, verbose=0)
    build().fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[ratios])
    if time_share is None:
        assert ratios.samples_taken == 12  # steps 1, 2, 4, 8, 12, …, 40
        return
    context = ratios.context
    spent = sum(
        seconds
        for part, seconds in context.seconds_by_part.items()
        if part.startswith("SlowSamples.") and "train_begin" not in part
    )
    # The first updates' samples always; the rest only within 1% of the
    # training time: with 20 ms a sample, one sample per 2 s of training.
    assert 3 <= ratios.samples_taken <= 3 + context.training_seconds() / 2.0
    assert ratios.samples_taken < 12
    assert not ratios._pending  # every sample taken was recorded
    assert spent <= 0.01 * context.training_seconds() + 3 * 0.03 + 0.1


@pytest.mark.parametrize("freq", [1, 2, 3, 7, 16, 50])
def test_sample_steps(freq):
    steps = [t for t in range(1, 241) if _is_sample_step(t, freq)]
    if freq == 50:
        assert steps == [1, 2, 4, 8, 16, 32, 50, 100, 150, 200]
    following = [_next_sample_step(done, freq) for done in range(0, 200)]
    assert following == [min(t for t in steps if t > done) for done in range(200)]


@pytest.mark.parametrize(
    "learning_rate, code, advice",
    [(10.0, "update_ratio_high", "lower"), (1e-6, "update_ratio_low", "raise")],
)
def test_learning_rate_far_off_is_found(learning_rate, code, advice):
    x, y = digits(640)
    model = build(learning_rate)
    ratios = UpdateRatio(update_freq=10, verbose=0)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[ratios])
    codes = {f.code: f for f in ratios.context.findings}
    assert code in codes, [str(f) for f in ratios.context.findings]
    assert f"{advice} the learning rate about" in codes[code].advice
    assert f"from {learning_rate:.3g}" in codes[code].advice
    assert "update_ratio_low" not in codes or code == "update_ratio_low"


def test_adam_steps_far_below_its_rate_are_vanishing_gradients_not_a_low_rate():
    # digits MLP on raw 0-256 pixels (jax, epoch 7): the softmax sits at the
    # loss's clipping, and Adam at 1e-3 moved the weights 7.7e-7 of their norm
    history = {"d/kernel": [7.7e-7, 8e-7, 7e-7]}
    rules = dict(low=3e-5, learning_rate=1e-3)
    (sgd,) = dynamics.update_ratio_findings(history, **rules)  # SGD: no rate
    assert "raise the learning rate about" in sgd.advice
    (adam,) = dynamics.update_ratio_findings(
        history, **rules, adaptive_ratios={"d/kernel": 8e-3}
    )
    assert adam.code == "update_ratio_low" and "1e+04x smaller" in adam.message
    assert "smaller than its rate 0.001 makes them" in adam.message
    assert (
        "will not help" in adam.advice and "raise the learning rate" not in adam.advice
    )
    # Adam at 1e-6 on standardized inputs steps as its rate says: too low
    slow = {"d/kernel": [2e-6, 3e-6, 2e-6]}
    (low,) = dynamics.update_ratio_findings(
        slow, low=3e-5, learning_rate=1e-6, adaptive_ratios={"d/kernel": 8e-6}
    )
    assert "raise the learning rate about" in low.advice


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_adaptive_step_ratios_are_the_rate_over_the_weights_rms(optimizer):
    x, y = digits(128)
    model = build(1e-3)
    if optimizer == "sgd":
        model.compile(keras.optimizers.SGD(1e-3), "sparse_categorical_crossentropy")
    ratios = UpdateRatio(update_freq=1, verbose=0)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[ratios])
    adaptive = ratios._adaptive_ratios()
    if optimizer == "sgd":
        assert adaptive is None
        return
    kernels = [v for v in model.trainable_variables if len(v.shape) > 1]
    for variable in kernels:  # biases start at 0: their RMS moves fast
        rms = np.sqrt(np.mean(keras.ops.convert_to_numpy(variable) ** 2))
        np.testing.assert_allclose(adaptive[variable.path], 1e-3 / rms, rtol=0.05)


def test_callbacks_do_not_change_what_is_learned():
    x, y = digits(128)
    fit = dict(batch_size=32, epochs=2, verbose=0, validation_data=(x[:32], y[:32]))
    plain = build(seed=3)
    plain.fit(x, y, **fit)
    watched = build(seed=3)
    callbacks = [LossCurve(update_freq=1, verbose=0), UpdateRatio(update_freq=1)]
    watched.fit(x, y, callbacks=callbacks, **fit)
    for a, b in zip(plain.get_weights(), watched.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_standalone_monitors_in_one_log_dir_write_one_event_file(tmp_path):
    """TensorBoard follows only a run's newest event file while it reloads:
    two monitors given the same `log_dir` must not write two."""
    x, y = digits(128)
    callbacks = [
        LossCurve(tmp_path, update_freq=2, verbose=0),
        UpdateRatio(tmp_path, update_freq=2, verbose=0),
    ]
    build().fit(
        x,
        y,
        validation_split=0.25,
        batch_size=16,
        epochs=2,
        verbose=0,
        callbacks=callbacks,
    )
    for run in ("train", "validation"):
        files = [n for n in os.listdir(tmp_path / run) if "tfevents" in n]
        assert len(files) == 1, (run, files)
    tags = set(read_events(str(tmp_path))["train"].scalars)
    assert {"batch_loss", "epoch_loss"} <= tags
    assert any(t.startswith("update_ratio_layer/") for t in tags)


def test_no_batch_end_hook_so_async_dispatch_stays_on():
    assert UpdateRatio.on_train_batch_end is keras.callbacks.Callback.on_train_batch_end


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="Received: update_freq=0"):
        UpdateRatio(update_freq=0)
    with pytest.raises(ValueError, match="Received: update_freq=True"):
        UpdateRatio(update_freq=True)
    with pytest.raises(ValueError, match=r"Received: band=\(0.01, 0.0001\)"):
        UpdateRatio(band=(1e-2, 1e-4))
    with pytest.raises(ValueError, match="Received: band=3"):
        UpdateRatio(band=3)
    with pytest.raises(ValueError, match="Received: warn_below=-1"):
        UpdateRatio(warn_below=-1)
    with pytest.raises(ValueError, match="Received: warn_below=1, warn_above=0.1"):
        UpdateRatio(warn_below=1, warn_above=0.1)


def test_two_dimensional_biases_are_charted_not_judged():
    """Attention and recurrent layers keep zero-started biases in 2-D arrays;
    like 1-D biases, their large early ratios are no learning-rate finding."""
    from trainwatch.callbacks.update_ratio import _is_bias

    assert _is_bias("mha/query/bias") and _is_bias("gru/gru_cell/bias")
    assert _is_bias("layer/recurrent_bias")
    assert not _is_bias("mha/query/kernel")
    assert not _is_bias("dense/bias_scale/kernel")
    model = keras.Sequential(
        [keras.Input((5, 4)), keras.layers.GRU(3), keras.layers.Dense(2)]
    )
    model.compile("adam", "mse")
    ratios = UpdateRatio(verbose=0)
    ratios.set_model(model)
    ratios.on_train_begin()
    judged = set(ratios._judged)
    assert "sequential/gru/gru_cell/kernel" in judged or any(
        p.endswith("gru_cell/kernel") for p in judged
    )
    assert not any(p.endswith("bias") for p in judged), judged


def test_a_learning_rate_verdict_is_reported_once_as_the_flagged_set_grows():
    ratios = UpdateRatio(verbose=0)
    ratios._judged = ["d1/kernel", "d2/kernel"]
    ratios.history = {"d1/kernel": [0.5] * 3, "d2/kernel": [1e-3] * 3}
    ratios._judge(step=3, epoch=0)  # one variable high: `where` names it
    ratios.history["d2/kernel"] = [0.5] * 5
    ratios._judge(step=5, epoch=0)  # both high now: `where` would be None
    codes = [f.code for f in ratios.context.findings]
    assert codes == ["update_ratio_high"], codes


@pytest.mark.parametrize("momentum", [0.999, 0.9])
def test_sgd_momentum_far_too_high_is_named(momentum):
    # Steps far too large under SGD: with momentum 0.999 (steps ~1000x the
    # rate's once the velocity builds up) the advice names the momentum; at
    # the usual 0.9 it speaks of the rate alone.
    x, y = digits(640)
    model = build()
    wrapped = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.3, momentum=momentum)
    )
    model.compile(wrapped, "sparse_categorical_crossentropy")
    ratios = UpdateRatio(update_freq=10, verbose=0)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[ratios])
    high = [f for f in ratios.context.findings if f.code == "update_ratio_high"]
    assert high, [str(f) for f in ratios.context.findings]
    assert "lower the learning rate about" in high[0].advice
    named = "SGD with momentum 0.999 steps about 1000x" in high[0].advice
    assert named == (momentum == 0.999), high[0].advice
    assert ("lower the momentum to 0.9" in high[0].advice) == named


def test_learning_rate_is_read_through_a_loss_scale_optimizer():
    """Mixed precision wraps the optimizer: the advice's rate is the inner one's
    (the wrapper's own `_learning_rate` reads 0)."""
    from trainwatch.callbacks.update_ratio import _current_learning_rate

    model = build(1e-2)
    wrapped = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.25))
    model.compile(wrapped, "sparse_categorical_crossentropy")
    assert _current_learning_rate(model) == pytest.approx(0.25)


class DetachedDense(keras.layers.Dense):
    """Its kernel gets an exactly zero gradient (a `stop_gradient` slipped in)."""

    def call(self, x):
        return keras.ops.relu(
            keras.ops.matmul(x, keras.ops.stop_gradient(self.kernel)) + self.bias
        )


@pytest.mark.parametrize("detached", [True, False])
def test_weights_the_optimizer_never_moves_are_named(detached):
    x, y = digits(640)
    keras.utils.set_random_seed(0)
    middle = DetachedDense(16) if detached else keras.layers.Dense(16, "relu")
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, activation="relu"),
            middle,
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    ratios = UpdateRatio(update_freq=4, time_share=None, verbose=0)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[ratios])
    found = [f for f in ratios.context.findings if f.code == "weights_not_updated"]
    if not detached:
        assert found == []
        return
    [finding] = found
    assert finding.where == middle.kernel.path
    assert "apply_gradients" in finding.advice


@pytest.mark.parametrize("batch_size", [1, 8])
def test_batch_norm_fed_one_example_a_batch_is_named(batch_size):
    x, y = digits(48)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    ratios = UpdateRatio(update_freq=4, time_share=None, verbose=0)
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=[ratios])
    found = [f for f in ratios.context.findings if f.code == "weights_not_updated"]
    if batch_size > 1:
        assert found == [], [str(f) for f in found]
        return
    [finding] = found
    norm = model.layers[1].path
    assert f"the scale (gamma) of {norm}, whose offset (beta) moves" in (
        finding.message
    )
    assert "batch holds one example" in finding.message
    assert "batches of 8 or more" in finding.advice
    assert "apply_gradients" not in finding.advice


def test_not_updated_needs_others_moving_at_the_same_samples():
    still = [0.0] * 5
    moving = [1e-3, 0.0, 1e-3, 1e-3, 1e-3]  # one sample where nothing moved
    assert dynamics.weights_not_updated({"a": moving, "b": still}) is None
    assert dynamics.weights_not_updated({"a": moving, "b": still}, min_samples=3)
    nan_bias = [float("nan")] * 5  # all-zero weights: not judged
    assert dynamics.weights_not_updated({"a": [1e-3] * 5, "b": nan_bias}) is None
