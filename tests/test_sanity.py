"""Sanity checks before training: initial loss, regularization, tiny overfit."""

import itertools
import math
import random

import keras
import numpy as np
import pytest
from keras.src.random.seed_generator import global_seed_generator

from trainwatch import sanity
from trainwatch.backends import model_copy
from trainwatch.callbacks.sanity_check import TEXT_TAG, SanityCheck
from trainwatch.numerics import expected_loss as el
from trainwatch.sanity import SanityReport, describe_loss, sanity_check
from trainwatch.tensorboard import read_events

FEATURES, CLASSES = 12, 4
FAST = {"overfit_steps": 150, "verbose": 0}


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=n)
    return x, y


def _classifier(output_activation="softmax", regularize=True, **output_kwargs):
    reg = keras.regularizers.L2(1e-3) if regularize else None
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(32, activation="relu", kernel_regularizer=reg),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(CLASSES, activation=output_activation, **output_kwargs),
        ]
    )
    return model


def _codes(report):
    return [f.code for f in report.findings]


def test_correct_classifier_passes_all_three():
    x, y = _data()
    model = _classifier()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    report = sanity_check(model, x, y, **FAST)
    assert isinstance(report, SanityReport)
    assert [(c.name, c.status) for c in report] == [
        ("initial_loss", "passed"),
        ("regularization", "passed"),
        ("overfit", "passed"),
    ]
    assert report.passed and report.findings == []
    initial = report["initial_loss"].values
    assert initial["expected"] == pytest.approx(np.log(CLASSES))
    assert abs(initial["loss"] - initial["expected"]) <= initial["tolerance"]
    regularization = report["regularization"].values
    assert regularization["regularization_after"] == pytest.approx(
        10 * regularization["regularization_before"], rel=1e-4
    )
    overfit = report["overfit"].values
    assert overfit["examples"] == 20
    assert (
        overfit["last_loss"]
        <= overfit["target"]
        == pytest.approx(0.02 * overfit["first_loss"])
    )
    text = str(report)
    assert "initial_loss" in text and "ln(4) = 1.386" in text
    assert report.to_dict()["checks"][2]["status"] == "passed"


def test_biased_output_layer_raises_initial_loss_unexpected():
    x, y = _data()
    model = _classifier(output_activation=None)
    model.layers[-1].bias.assign(np.array([8.0, 0.0, 0.0, -8.0]))  # a large bias
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss)
    report = sanity_check(model, x, y, checks=["initial_loss"], verbose=0)
    assert _codes(report) == ["initial_loss_unexpected"]
    values = report["initial_loss"].values
    assert values["loss"] - values["expected"] > values["tolerance"]
    message = report.findings[0].message
    assert f"{values['loss']:.4g}" in message and "ln(4) = 1.386" in message
    assert "output bias" in report.findings[0].advice


def test_softmax_outputs_with_from_logits_raise_initial_loss_unexpected():
    x, y = _data()
    model = _classifier(regularize=False)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss)
    assert describe_loss(model).from_logits
    report = sanity_check(model, x, y, checks=["initial_loss"], verbose=0)
    assert _codes(report) == ["initial_loss_unexpected"]
    assert "from_logits=True" in report.findings[0].message


def test_logits_without_from_logits_and_one_hot_labels_are_reported():
    x, y = _data()
    model = _classifier(output_activation=None, regularize=False)
    model.compile("adam", "categorical_crossentropy")
    report = sanity_check(model, x, y, checks=["initial_loss"], verbose=0)
    message = report.findings[0].message
    assert "outside [0, 1]" in message and "sparse_categorical_crossentropy" in message


def test_frozen_bottleneck_cannot_overfit():
    x, y = _data()
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(1, trainable=False),  # frozen one-unit bottleneck
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    report = sanity_check(model, x, y, checks=["overfit"], overfit_steps=60, verbose=0)
    assert _codes(report) == ["cannot_overfit_small_subset"]
    attempts = report["overfit"].values["attempts"]
    assert [a["learning_rate"] for a in attempts] == pytest.approx([1e-2, 1e-1])
    assert not any(a["reached"] for a in attempts)
    assert "too little capacity" in report.findings[0].advice


def _digit_images(n=64):
    from sklearn.datasets import load_digits

    return (load_digits().data[:n] / 16.0).astype("float32")


@pytest.mark.parametrize("bottleneck, fits", [(32, True), (1, False)])
def test_soft_targets_are_overfitted_towards_their_floor(bottleneck, fits):
    # An autoencoder's binary cross-entropy on pixel intensities cannot fall
    # below their entropy (0.21 on 20 digits), far above 0.02 of its start:
    # the target is measured from that floor. One unit cannot memorize them.
    x = _digit_images()
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(bottleneck, activation="relu"),
            keras.layers.Dense(64, activation="sigmoid"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    report = sanity_check(model, x, x, checks=["overfit"], verbose=0)
    first = report["overfit"].values["attempts"][0]
    assert first["floor"] == pytest.approx(el.loss_floor(el.BINARY, x[:20]), rel=1e-6)
    assert first["floor"] > 0.15
    assert first["target"] > first["floor"]
    if fits:
        assert report["overfit"].status != "failed", str(report)
        assert _codes(report) == []
    else:
        assert _codes(report) == ["cannot_overfit_small_subset"]
        assert "its floor of" in report.findings[0].message


def test_overfit_copy_memorizes_without_random_augmentation():
    # Flips and shifts of 20% would make 20 digits 40 moving targets: the
    # copy runs its augmentation layers as at inference, the user's model not.
    images = _digit_images().reshape(-1, 8, 8, 1)
    labels = np.arange(len(images)) % 10
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomTranslation(0.2, 0.2),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    report = sanity_check(model, images, labels, checks=["overfit"], verbose=0)
    attempts = report["overfit"].values["attempts"]
    assert report["overfit"].status == "passed", str(report)
    assert [a["learning_rate_factor"] for a in attempts] == [1.0], str(report)
    assert "call" not in vars(model.layers[0])  # the user's layer is untouched
    flipped = model.layers[0](images[:32], training=True)  # some of 32, surely
    assert not np.allclose(keras.ops.convert_to_numpy(flipped), images[:32])


def test_smoothed_labels_are_overfitted_towards_their_floor():
    x, y = _data()
    model = _classifier(output_activation=None, regularize=False)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
    model.compile(keras.optimizers.Adam(1e-2), loss)
    assert describe_loss(model).label_smoothing == pytest.approx(0.2)
    report = sanity_check(model, x, np.eye(CLASSES)[y], checks=["overfit"], verbose=0)
    assert report["overfit"].status == "passed", str(report)
    assert report["overfit"].values["target"] > 0.5  # the floor: 0.56 for 4 classes


class NegativeL2(keras.regularizers.Regularizer):
    def __init__(self, l2=0.01):
        self.l2 = l2

    def __call__(self, x):
        return -self.l2 * keras.ops.sum(keras.ops.square(x))


class ConstantPenalty(keras.regularizers.Regularizer):
    def __init__(self, factor=0.01):
        self.factor = factor

    def __call__(self, x):
        return keras.ops.convert_to_tensor(0.5)


@pytest.mark.parametrize("regularizer", [NegativeL2(), ConstantPenalty()])
def test_bad_regularizer_raises_regularization_not_increasing_loss(regularizer):
    x, y = _data()
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(8, activation="relu", kernel_regularizer=regularizer),
            keras.layers.Dense(CLASSES, activation="softmax", bias_regularizer="l2"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    report = sanity_check(model, x, y, checks=["regularization"], verbose=0)
    assert _codes(report) == ["regularization_not_increasing_loss"]
    finding = report.findings[0]
    assert finding.severity == "error"
    assert finding.where == model.layers[0].kernel.path  # the L2 bias is not blamed
    values = report["regularization"].values
    assert values["regularization_after"] <= values["regularization_before"]


def test_no_regularizers_and_unknown_loss_are_skipped():
    x, y = _data()
    model = _classifier(regularize=False)
    model.compile("adam", keras.losses.CategoricalFocalCrossentropy())
    report = sanity_check(
        model,
        x,
        keras.utils.to_categorical(y, CLASSES),
        checks=["initial_loss", "regularization"],
        verbose=0,
    )
    assert [c.status for c in report] == ["skipped", "skipped"]
    assert "unknown loss" in report["initial_loss"].summary
    assert report["regularization"].summary == "no regularizers: skipped"


def test_binary_and_mean_squared_error_expectations():
    x, y = _data()
    binary = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(1, activation="sigmoid")]
    )
    binary.compile("adam", "binary_crossentropy")
    report = sanity_check(binary, x, y % 2, checks=["initial_loss"], verbose=0)
    assert report["initial_loss"].status == "passed"
    assert report["initial_loss"].values["expected"] == pytest.approx(np.log(2))
    regression = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    regression.compile("adam", "mse")
    targets = np.random.default_rng(4).normal(size=(64, 1)).astype("float32") * 3
    report = sanity_check(regression, x, targets, checks=["initial_loss"], verbose=0)
    values = report["initial_loss"].values
    assert report["initial_loss"].status == "passed"
    assert values["expected"] == pytest.approx(np.mean(targets**2), rel=1e-5)
    assert "zero-mean output" in values["assumption"]


@pytest.mark.parametrize("activation, center", [("sigmoid", 0.5), ("softmax", 0.25)])
def test_mean_squared_error_behind_a_bounded_output_expects_its_resting_value(
    activation, center
):
    # one-hot classes under MSE: an untrained sigmoid sits at 0.5, not 0, so
    # its loss is ~0.25, not mean(y**2) = 1/classes
    x, y = _data()
    one_hot = np.eye(CLASSES)[y]
    model = _classifier(output_activation=activation, regularize=False)
    model.compile("adam", "mse")
    report = sanity_check(model, x, one_hot, checks=["initial_loss"], verbose=0)
    result = report["initial_loss"]
    assert result.status == "passed", report.findings
    expected = np.mean((one_hot - center) ** 2)
    assert result.values["expected"] == pytest.approx(expected, rel=1e-5)
    assert f"mean((y - {center:.3g})**2)" in result.summary
    assert f"sit near {center:.3g}" in result.values["assumption"]


def _state(model):
    weights = [np.array(w) for w in model.get_weights()]
    optimizer = [
        np.array(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables
    ]
    return weights, optimizer


def test_user_model_optimizer_and_random_state_untouched():
    x, y = _data()
    model = _classifier()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)  # optimizer slots exist
    weights, optimizer = _state(model)
    keras.random.uniform((1,))  # the global seed generator exists
    generator = global_seed_generator()
    generator_state = np.array(keras.ops.convert_to_numpy(generator.state.value))
    python_state, numpy_state = random.getstate(), np.random.get_state()

    sanity_check(model, x, y, **FAST)

    after_weights, after_optimizer = _state(model)
    for before, after in zip(weights + optimizer, after_weights + after_optimizer):
        np.testing.assert_array_equal(before, after)
    assert global_seed_generator() is generator
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(generator.state.value), generator_state
    )
    assert random.getstate() == python_state
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()


def _seeded_run(with_check, callback_dir=None):
    keras.utils.set_random_seed(7)
    x, y = _data(seed=7)
    model = _classifier()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    callbacks = []
    if with_check == "function":
        sanity_check(model, x, y, **FAST)
    elif with_check == "callback":
        callbacks = [
            SanityCheck(callback_dir, data=(x, y), overfit_steps=150, verbose=0)
        ]
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=callbacks)
    draw = keras.ops.convert_to_numpy(keras.random.uniform((3,)))
    return model.get_weights(), draw, callbacks


def test_fit_after_check_matches_fit_without(tmp_path):
    plain_weights, plain_draw, _ = _seeded_run(None)
    for mode in ("function", "callback"):
        weights, draw, callbacks = _seeded_run(mode, tmp_path / mode)
        for a, b in zip(plain_weights, weights):
            np.testing.assert_array_equal(a, b, err_msg=f"{mode=}")
        np.testing.assert_array_equal(plain_draw, draw, err_msg=f"{mode=}")
    callback = callbacks[0]
    assert callback.result.passed
    runs = read_events(str(tmp_path / "callback"))
    texts = runs["train"].texts[TEXT_TAG]
    assert "| overfit | passed |" in texts[0].text


class SuperComputeLoss(keras.Model):
    """A `compute_loss` override that calls the compiled loss through super()."""

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        return super().compute_loss(x, y, y_pred, sample_weight, training=training)


def _seeded_custom_loss_run(check):
    keras.utils.set_random_seed(7)
    x, y = _data(seed=7)
    inputs = keras.Input((x.shape[1],))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = SuperComputeLoss(
        inputs, keras.layers.Dense(CLASSES, activation="softmax")(hidden)
    )
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    if check is not None:
        check(model, x, y)
    built_before_fit = model._compile_loss.built
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    draw = keras.ops.convert_to_numpy(keras.random.uniform((3,)))
    return model.get_weights(), draw, built_before_fit


@pytest.mark.parametrize("check", ["sanity", "gradients"])
def test_checks_before_fit_leave_a_compute_loss_override_unchanged(check):
    # Building the user's compiled loss before `fit` would skip fit's symbolic
    # build and with it one shuffle draw (JAX, PyTorch): fit would differ.
    import trainwatch

    run_check = {
        "sanity": lambda m, x, y: sanity_check(m, x, y, **FAST),
        "gradients": lambda m, x, y: trainwatch.check_gradients(m, x[:8], y[:8]),
    }[check]
    plain_weights, plain_draw, _ = _seeded_custom_loss_run(None)
    weights, draw, built_before_fit = _seeded_custom_loss_run(run_check)
    assert not built_before_fit
    for a, b in zip(plain_weights, weights):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(plain_draw, draw)


def test_callback_reports_findings(tmp_path):
    x, y = _data()
    model = _classifier(regularize=False)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = SanityCheck(tmp_path, data=(x, y), checks=["initial_loss"], verbose=0)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    codes = [f.code for f in callback.context.findings]
    assert codes == ["initial_loss_unexpected"]


def test_callback_argument_errors():
    x, y = _data()
    with pytest.raises(ValueError, match="Received: data=None"):
        SanityCheck()
    with pytest.raises(ValueError, match=r"Received: len\(x\)=64, len\(y\)=3"):
        SanityCheck(data=(x, y[:3]))
    with pytest.raises(ValueError, match="Received: checks="):
        SanityCheck(data=(x, y), checks=["initial_los"])
    with pytest.raises(ValueError, match="Received: kwargs="):
        SanityCheck(data=(x, y), step=3)
    # Values out of range fail at construction, not when `fit` starts.
    with pytest.raises(ValueError, match="learning_rate_boost=0.5"):
        SanityCheck(data=(x, y), learning_rate_boost=0.5)
    with pytest.raises(ValueError, match="overfit_ratio=2"):
        SanityCheck(data=(x, y), overfit_ratio=2)


def test_sanity_check_argument_errors():
    x, y = _data()
    model = _classifier()
    with pytest.raises(ValueError, match="no loss"):
        sanity_check(model, x, y)
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="Received: subset_size=0"):
        sanity_check(model, x, y, subset_size=0)
    with pytest.raises(ValueError, match="Received: overfit_ratio=2"):
        sanity_check(model, x, y, overfit_ratio=2)
    with pytest.raises(ValueError, match=r"Received: len\(x\)=64, len\(y\)=10"):
        sanity_check(model, x, y[:10])


class Uncloneable(keras.Model):
    """A subclassed model whose constructor takes an object config cannot hold."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.hidden = keras.layers.Dense(8, kernel_regularizer="l2")
        self.out = keras.layers.Dense(CLASSES, activation="softmax")

    def call(self, x):
        return self.out(self.hidden(x))


def test_subclassed_model_that_cannot_be_cloned_is_checked_without_a_copy():
    x, y = _data()
    model = Uncloneable(object())
    model(x[:1])
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(model_copy.CloneUnavailable):
        model_copy.clone_with_weights(model)
    before = model.get_weights()
    report = sanity_check(model, x, y, **FAST)
    statuses = {c.name: c.status for c in report}
    assert statuses["initial_loss"] == statuses["regularization"] == "passed"
    assert statuses["overfit"] in ("passed", "failed")  # trained, not skipped
    assert "private copies" in report["overfit"].summary
    assert "evaluated directly" in report["regularization"].summary
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_clone_of_nested_functional_model_with_custom_regularizers():
    class LocalL1(keras.regularizers.Regularizer):  # not registered, no get_config
        def __init__(self, l1):
            self.l1 = l1

        def __call__(self, x):
            return self.l1 * keras.ops.sum(keras.ops.abs(x))

    inner = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8, kernel_regularizer=LocalL1(0.01))]
    )
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(8, activity_regularizer="l2")(inputs)
    hidden = keras.layers.Dropout(0.5)(inner(hidden))
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(hidden))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(n=8)
    xb = keras.ops.convert_to_tensor(x)

    copy = model_copy.clone_with_weights(model)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(copy(xb)), keras.ops.convert_to_numpy(model(xb))
    )
    assert [(w, k) for w, k, _, _ in model_copy.regularizer_sites(copy)] == [
        (w, k) for w, k, _, _ in model_copy.regularizer_sites(model)
    ]
    bare = model_copy.without_regularizers(model)
    assert model_copy.regularizer_sites(bare) == []
    assert [type(layer).__name__ for layer in bare.layers].count("Dropout") == 1
    assert bare.layers[-2].rate == 0.0 and model.layers[-2].rate == 0.5

    report = sanity_check(model, x, y, checks=["regularization"], verbose=0)
    values = report["regularization"].values
    assert report["regularization"].status == "passed"
    assert values["regularizers"] == 2
    assert values["regularization_after"] == pytest.approx(
        10 * values["regularization_before"], rel=1e-4
    )


def test_overfit_copy_is_prepared_before_its_first_step(monkeypatch):
    """The copy's compiled loss, metrics and optimizer exist before its first
    step (TensorFlow traces a step that creates variables twice), and where
    the backend compiles a quick training step (JAX) it trains exactly as
    Keras's own step does."""
    from trainwatch.backends import get_backend

    x, y = _data()
    model = _classifier(regularize=False)
    model.compile(
        keras.optimizers.Adam(1e-2),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    built = {}
    original = sanity._compile_like

    def recording(clone, *args):
        original(clone, *args)
        built["metrics"] = [v.path for v in clone.metrics_variables]
        built["optimizer"] = clone.optimizer.built

    monkeypatch.setattr(sanity, "_compile_like", recording)
    quick = sanity_check(model, x, y, checks=("overfit",), **FAST)["overfit"]
    assert built["optimizer"] and "accuracy/total" in built["metrics"], built
    if not hasattr(get_backend(), "quick_train_function"):
        return
    monkeypatch.delattr(get_backend(), "quick_train_function")
    keras_step = sanity_check(model, x, y, checks=("overfit",), **FAST)["overfit"]
    assert quick.values["steps"] == keras_step.values["steps"]
    np.testing.assert_allclose(
        quick.values["last_loss"], keras_step.values["last_loss"], rtol=1e-5
    )


def test_callback_takes_weighted_data_and_skips_a_trained_model(tmp_path):
    """`(x, y, sample_weight)` is accepted (the checks are unweighted); a second
    `fit` (or a resumed run) does not check a trained model as untrained."""
    x, y = _data()
    model = _classifier(regularize=False)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    check = SanityCheck(
        str(tmp_path), data=(x, y, np.ones(len(x))), checks=("initial_loss",), verbose=0
    )
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[check])
    assert check.result is not None and check.result["initial_loss"].status == "passed"
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[check])
    assert check.result is None
    texts = read_events(str(tmp_path / "train"))["."].texts[TEXT_TAG]
    assert "already trained 4 steps" in texts[-1].text


def test_callback_skips_a_run_resumed_from_saved_weights(tmp_path):
    """Weights from `load_weights` leave the optimizer at step 0; the run's
    `initial_epoch` says it resumes: a trained model is not checked as new."""
    x, y = _data()
    trained = _classifier(regularize=False)
    trained.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    trained.fit(x, y, epochs=3, batch_size=16, verbose=0)
    path = str(tmp_path / "trained.weights.h5")
    trained.save_weights(path)
    model = _classifier(regularize=False)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.load_weights(path)
    check = SanityCheck(str(tmp_path), data=(x, y), checks=("initial_loss",), verbose=0)
    model.fit(
        x, y, epochs=4, initial_epoch=3, batch_size=16, verbose=0, callbacks=[check]
    )
    assert check.result is None and not list(check.context.findings)
    texts = read_events(str(tmp_path / "train"))["."].texts[TEXT_TAG]
    assert "resumes at epoch 3" in texts[-1].text


def test_loss_scale_optimizer_learning_rate_is_read_through_the_wrapper():
    """Mixed precision wraps the optimizer in a `LossScaleOptimizer`: its inner
    optimizer's constant rate is the one named (and boosted), and only a real
    `LearningRateSchedule` is called a schedule."""
    x, y = _data()
    model = _classifier(regularize=False)
    wrapped = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-2))
    model.compile(wrapped, "sparse_categorical_crossentropy")
    options = {"checks": ("overfit",), "overfit_steps": 3, "verbose": 0}
    overfit = sanity_check(model, x, y, **options)["overfit"]
    attempts = overfit.values["attempts"]
    assert [a["learning_rate"] for a in attempts] == pytest.approx([1e-2, 1e-1])
    assert "at lr 0.01 then" in overfit.summary and "schedule" not in overfit.summary
    assert int(keras.ops.convert_to_numpy(wrapped.iterations)) == 0

    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, 100, 0.9)
    inner = keras.optimizers.Adam(schedule)
    model.compile(keras.optimizers.LossScaleOptimizer(inner), "mse")
    overfit = sanity_check(model, x, np.eye(CLASSES)[y], **options)["overfit"]
    assert "3 steps at lr 0.01 (the schedule's first rate)" in overfit.summary


def test_overfit_check_trains_at_a_schedules_first_rate():
    """A schedule meant for a whole run (here halving every 10 steps) would
    take the copy's rate to nothing within its few hundred steps: the copy
    trains at the schedule's first rate, and a healthy model passes."""
    x, y = _data()
    model = _classifier(regularize=False)
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, 10, 0.5)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy")
    overfit = sanity_check(model, x, y, checks=("overfit",), verbose=0)["overfit"]
    assert overfit.status == "passed", overfit.summary
    assert overfit.values["attempts"][0]["learning_rate"] == pytest.approx(1e-2)
    assert "(the schedule's first rate)" in overfit.summary
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0


def test_overfit_check_trains_at_a_warm_up_schedules_peak_rate():
    """`CosineDecay` with a warm-up starts at rate 0 by default: trained at
    its first rate the copy never moved, and a healthy model was reported as
    `cannot_overfit_small_subset` "at lr 0" (and again at 10x 0)."""
    x, y = _data()
    model = _classifier(regularize=False)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=150, warmup_target=1e-2, warmup_steps=30
    )
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy")
    report = sanity_check(model, x, y, checks=("overfit",), verbose=0)
    overfit = report["overfit"]
    assert overfit.status == "passed", overfit.summary
    assert [f.code for f in report.findings] == []
    assert overfit.values["attempts"][0]["learning_rate"] == pytest.approx(1e-2)
    assert "(the schedule's peak rate, at step 30)" in overfit.summary
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0


@pytest.mark.parametrize(
    "seconds, status, codes",
    [(30, "skipped", []), (5, "failed", ["cannot_overfit_small_subset"])],
    ids=["still_learning", "barely_started"],
)
def test_overfit_check_cut_short_by_its_time_budget(
    monkeypatch, seconds, status, codes
):
    """A clock that ticks one second a read: the budget ends the attempt
    after ~`seconds` steps. At 30 the loss is down to ~5% of its start (0.02
    wanted): a slow model still learning, no verdict (an LSTM in float16 on a
    busy CPU, torch, 0.69 -> 0.033 in 158 steps, was warned). At 5 it has
    hardly moved: still reported."""
    ticks = itertools.count()
    monkeypatch.setattr(sanity.time, "perf_counter", lambda: float(next(ticks)))
    x, y = _data()
    model = _classifier(regularize=False)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    report = sanity_check(
        model, x, y, checks=("overfit",), max_seconds=seconds, verbose=0
    )
    overfit = report["overfit"]
    assert overfit.status == status, overfit.summary
    assert "stopped by the time budget" in overfit.summary
    assert _codes(report) == codes


def test_loss_scale_optimizer_trains_private_weights_unscaled():
    """The private-weights path does not scale the loss: the wrapper's inner
    optimizer applies the gradients (the wrapper would divide them by its
    scale, 32768, and the weights would not move)."""
    x, y = _data()
    model = Uncloneable(object())
    model(x[:1])
    sgd = keras.optimizers.SGD(0.5)
    model.compile(
        keras.optimizers.LossScaleOptimizer(sgd), "sparse_categorical_crossentropy"
    )
    overfit = sanity_check(
        model, x, y, checks=("overfit",), overfit_steps=20, verbose=0
    )["overfit"]
    assert "private copies" in overfit.summary
    first = overfit.values["attempts"][0]
    assert first["learning_rate"] == pytest.approx(0.5)
    assert first["best_loss"] < 0.5 * first["first_loss"]


def test_a_nan_initial_loss_is_named_once_with_its_likely_causes():
    x, y = _data()
    x[3, 2] = np.nan  # one missing value reaches the loss
    model = _classifier(regularize=False)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    report = sanity_check(model, x, y, **FAST)
    statuses = {r.name: r.status for r in report}
    assert statuses["initial_loss"] == "failed"
    assert statuses["overfit"] == "skipped"  # nothing to overfit: not a finding
    [finding] = report.findings
    assert finding.code == "initial_loss_unexpected"
    assert "nan before any update" in finding.message
    assert "inputs or labels hold nan or inf" in finding.message
    assert "off by" not in finding.message  # no arithmetic on nan


@pytest.mark.parametrize("l2, dominates", [(1.0, True), (1e-3, False)])
def test_regularization_that_swamps_the_data_loss_is_named(l2, dominates):
    x, y = _data()
    keras.utils.set_random_seed(0)
    penalty = keras.regularizers.L2(l2)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(64, "relu", kernel_regularizer=penalty),
            keras.layers.Dense(CLASSES, "softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    report = sanity_check(model, x, y, checks=("regularization",), verbose=0)
    found = [f for f in report.findings if f.code == "regularization_too_strong"]
    assert report["regularization"].status == ("failed" if dominates else "passed")
    if not dominates:
        assert found == []
        return
    [finding] = found
    assert "times the data loss" in finding.message
    assert "Weaken the regularizers" in finding.advice


@pytest.mark.parametrize(
    "loss", ["sparse_categorical_crossentropy", "categorical_crossentropy"]
)
def test_labels_that_all_name_one_class_are_reported(loss):
    x, y = _data()
    one_class = np.full_like(y, 2)  # e.g. built from a constant
    if loss == "categorical_crossentropy":
        y, one_class = np.eye(CLASSES)[y], np.eye(CLASSES)[one_class]
    model = _classifier(regularize=False)
    model.compile("adam", loss)
    report = sanity_check(model, x, one_class, checks=["initial_loss"], verbose=0)
    assert "labels_single_class" in _codes(report)
    (found,) = [f for f in report.findings if f.code == "labels_single_class"]
    assert "All 64 labels checked are class 2" in found.message
    assert "of the model's 4 classes" in found.message
    assert "sorted by class" in found.advice
    assert sanity_check(model, x, y, checks=["initial_loss"], verbose=0).passed
    # two classes: a rare class may be missing from a few dozen examples
    two = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(2, "softmax")])
    two.compile("adam", loss)
    labels = np.zeros(len(x), "int32")
    if loss == "categorical_crossentropy":
        labels = np.eye(2)[labels]
    assert sanity_check(two, x, labels, checks=["initial_loss"], verbose=0).passed


class DoubledGradientDense(keras.layers.Layer):
    """Trains under `fit` on every backend; its kernel's gradient is doubled."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 3))

    def call(self, x):
        @keras.ops.custom_gradient
        def doubled(kernel):
            def grad(*args, upstream=None):
                return 2.0 * (args[0] if upstream is None else upstream)

            return kernel * 1.0, grad

        return keras.ops.matmul(x, doubled(keras.ops.convert_to_tensor(self.kernel)))


def test_a_custom_gradient_layer_does_not_stop_the_checks():
    # On TensorFlow the variables reached `call` as `tf.Variable`s and
    # `tf.custom_gradient` raised a TypeError out of `sanity_check`.
    model = keras.Sequential(
        [keras.Input((5,)), DoubledGradientDense(), keras.layers.Softmax()]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 5)).astype("float32"), rng.integers(0, 3, size=20)
    report = sanity_check(model, x, y, overfit_steps=2, verbose=0)
    assert report["initial_loss"].status == "passed", str(report)
    assert math.isfinite(report["initial_loss"].values["loss"])
    assert report["overfit"].values["steps"] == 2, str(report)  # it trained


def test_a_relu_on_the_logits_is_named():
    # softmax cross-entropy from_logits=True behind Dense(classes, "relu"):
    # the digits MLP trains to 0.97, the 20-example overfit stops at 0.35
    x, y = _data()
    model = _classifier(output_activation="relu", regularize=False)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss)
    report = sanity_check(model, x, y, checks=["initial_loss"], verbose=0)
    assert _codes(report) == ["initial_loss_unexpected"]
    message = report.findings[0].message
    assert "logits are never negative" in message and "`activation=None`" in message
    linear = _classifier(output_activation=None, regularize=False)
    linear.compile("adam", loss)
    assert sanity_check(linear, x, y, checks=["initial_loss"], verbose=0).passed


@pytest.mark.parametrize(
    "loss", ["binary_crossentropy", "sparse_categorical_crossentropy", "mse"]
)
def test_a_softmax_over_one_unit_is_named_and_not_overfitted(loss):
    # `Dense(1, activation="softmax")` for a binary task outputs 1 whatever the
    # weights: under binary cross-entropy the initial loss was called 6.98
    # "confident outputs" on JAX (a large output bias advised), and on
    # TensorFlow nothing was said while the accuracy stayed at 0.49
    x, _ = _data()
    y = (x[:, 0] > 0).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(1, activation="softmax", name="head"),
        ]
    )
    model.compile("adam", loss)
    report = sanity_check(model, x, y, overfit_steps=5, verbose=0)
    assert _codes(report) == ["softmax_single_unit"], str(report)
    [finding] = report.findings
    assert finding.severity == "error" and finding.where == model.layers[-1].path
    assert "all 64 outputs checked are 1" in finding.message
    assert loss in finding.message
    assert 'Dense(1, activation="sigmoid")' in finding.advice
    assert report["overfit"].status == "skipped"
    sigmoid = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(1, activation="sigmoid")]
    )
    sigmoid.compile("adam", "binary_crossentropy")
    report = sanity_check(sigmoid, x, y, checks=["initial_loss"], verbose=0)
    assert "softmax_single_unit" not in _codes(report)


def test_multi_label_rows_under_categorical_crossentropy_are_named():
    x, y = _data()
    labels = np.eye(CLASSES)[y]
    labels[::2, 0] = 1.0  # a second label on half the rows
    model = _classifier(regularize=False)
    model.compile("adam", "categorical_crossentropy")
    report = sanity_check(model, x, labels, checks=["initial_loss"], verbose=0)
    [finding] = report.findings
    several = int(np.sum(labels.sum(-1) >= 2))
    assert f"{several} of the 64 label rows hold several 1s" in finding.message
    assert "sigmoid output" in finding.message
    assert "binary_crossentropy" in finding.message
