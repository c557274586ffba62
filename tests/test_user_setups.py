"""Set-ups users hit that the other tests do not cover: clear errors, no crash."""

import os

import keras
import numpy as np
import pytest
from test_faults import BatchCounter

import trainwatch

N_FEATURES = 6


def make_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    return x, y


def make_model():
    model = keras.Sequential(
        [
            keras.Input((N_FEATURES,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("sanity", [True, False], ids=["sanity_on", "sanity_off"])
def test_probe_without_labels_is_a_clear_error_before_training(tmp_path, sanity):
    """`probe=(x, None)` for a model compiled with a loss: says "labels"."""
    x, y = make_data()
    counter = BatchCounter()
    watch = trainwatch.TrainWatch(
        str(tmp_path),
        probe=(x[:16], None),
        verbose=0,
        gradient_check=False,
        sanity_check=sanity,
    )
    with pytest.raises(ValueError, match="labels") as error:
        make_model().fit(
            x, y, epochs=1, batch_size=16, verbose=0, callbacks=[watch, counter]
        )
    assert counter.batches == 0
    assert "probe y=None" in str(error.value)


def test_sanity_check_without_labels_is_a_clear_error():
    x, _ = make_data()
    with pytest.raises(ValueError, match="needs labels"):
        trainwatch.sanity_check(make_model(), x[:16], None, verbose=0)


# -- preprocessing layers inside the model ----------------------------------------


def raw_data(n=64, seed=0):
    """Features on a raw scale (RMS ~100), labels from the first feature."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, N_FEATURES)) * 50 + 100).astype("float32")
    return x, (x[:, 0] > 100).astype("int32")


def preprocessed_model(x, first="normalization"):
    if first == "normalization":
        layer = keras.layers.Normalization()
        layer.adapt(x)
    elif first == "rescaling_identity":
        layer = keras.layers.Rescaling(1.0)
    else:
        layer = keras.layers.BatchNormalization()
    model = keras.Sequential(
        [
            keras.Input((N_FEATURES,)),
            layer,
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    return model


def test_copies_of_an_adapted_normalization_normalize_as_the_model_does():
    """The sanity copies and the float64 shadow compute what the model does."""
    from trainwatch.backends import float64, model_copy

    x, _ = raw_data()
    model = preprocessed_model(x)
    expected = keras.ops.convert_to_numpy(model(x[:8]))
    copy = model_copy.clone_with_weights(model)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(copy(x[:8])), expected, rtol=1e-5, atol=1e-6
    )
    with float64.float64_mode():
        shadow = float64.make_float64_shadow(model)
        got = keras.ops.convert_to_numpy(shadow(x[:8].astype("float64")))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_gradient_check_of_a_model_with_an_adapted_normalization():
    x, y = raw_data()
    model = preprocessed_model(x)
    result = trainwatch.check_gradients(model, x[:8], y[:8])
    assert [f.code for f in result.findings] == []
    assert {v.verdict for v in result.variables} == {"ok"}
    # The float64 copy checked is the model: the same loss.
    probabilities = keras.ops.convert_to_numpy(model(x[:8]))
    loss = -np.mean(np.log(probabilities[np.arange(8), y[:8]]))
    assert float(result.loss.data) == pytest.approx(loss, rel=1e-4)


def input_findings(model, x, y):
    from trainwatch.callbacks.input_init import InputAndInitChecks

    checks = InputAndInitChecks(verbose=0, data=(x, y))
    checks.set_model(model)
    checks.on_train_begin()
    return [
        (f.code, f.severity)
        for f in checks.context.findings
        if f.code == "inputs_not_normalized"
    ]


@pytest.mark.parametrize(
    "first, expected",
    [
        ("normalization", []),
        ("batch_normalization", []),
        ("rescaling_identity", [("inputs_not_normalized", "warning")]),
    ],
)
def test_inputs_are_judged_as_the_model_sees_them(first, expected):
    """Raw inputs into a model that normalizes them first are no finding."""
    x, y = raw_data()
    assert input_findings(preprocessed_model(x, first), x, y) == expected


def test_raw_pixels_through_rescaling_are_judged_after_it():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(32, 6, 6, 1)).astype("float32")
    inputs = keras.Input((6, 6, 1), name="pixels")
    hidden = keras.layers.Rescaling(1 / 255.0)(inputs)
    hidden = keras.layers.Conv2D(2, 3, activation="relu")(hidden)
    outputs = keras.layers.Dense(2, activation="softmax")(
        keras.layers.Flatten()(hidden)
    )
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    y = np.zeros(32, dtype="int32")
    # In [0, 1] after the layer: the rule's hint about centering, no warning.
    assert input_findings(model, x, y) == [("inputs_not_normalized", "info")]


def test_check_gradients_without_labels_is_a_clear_error():
    x, _ = make_data()
    with pytest.raises(ValueError, match="labels"):
        trainwatch.check_gradients(make_model(), x[:8], None)


@pytest.mark.parametrize("container", [list, tuple])
def test_two_outputs_with_a_list_of_losses_are_checked_in_float64(container):
    """TensorFlow keeps a model's `loss` list as a `ListWrapper`: the float64
    copy of the losses must still be built (it fell back on float32)."""
    x, y = make_data()
    target = x[:, 1:2]
    inputs = keras.Input((N_FEATURES,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    outputs = [
        keras.layers.Dense(2, activation="softmax")(hidden),
        keras.layers.Dense(1)(hidden),
    ]
    model = keras.Model(inputs, outputs)
    model.compile(
        "adam",
        loss=container(["sparse_categorical_crossentropy", "mse"]),
        loss_weights=container([1.0, 0.5]),
    )
    model.fit(x, [y, target], epochs=1, batch_size=16, verbose=0)
    result = trainwatch.check_gradients(model, x[:8], [y[:8], target[:8]])
    assert result.precision == "float64", result.message
    assert result.passed, str(result)


# -- regression: the initial mean squared error ----------------------------------


def fixed_regressor(kernel, activation=None, loss="mse"):
    """A one-unit model on 4 features whose untrained pre-activations are
    `x @ kernel` (no bias): a linear regressor, or with `activation="sigmoid"`
    and `loss="binary_crossentropy"` a logistic one."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation)])
    model.compile("adam", loss)
    kernel = np.asarray(kernel, dtype="float32").reshape(4, 1)
    model.layers[0].set_weights([kernel, np.zeros(1, dtype="float32")])
    return model


@pytest.mark.parametrize(
    "kernel, status",
    [
        # Outputs smaller than the labels that correlate with them by chance,
        # as an initialized network's do on real data (Glorot MLP on digits:
        # |corr| up to 0.65): the loss moves away from mean(y**2) by the
        # cross term. Both were `initial_loss_unexpected` warnings.
        ([-0.7, 0.0, 0.0, 0.0], "passed"),  # raised: 2.9 against 1
        ([0.7, 0.0, 0.0, 0.0], "passed"),  # lowered: 0.09 against 1
        # Outputs three times as large as the labels are still reported,
        # whether or not they correlate with them.
        ([0.0, 3.0, 0.0, 0.0], "failed"),
        ([3.0, 0.0, 0.0, 0.0], "failed"),
    ],
    ids=["anticorrelated", "correlated", "too_large", "too_large_correlated"],
)
def test_initial_mse_allows_for_outputs_correlated_with_the_labels(kernel, status):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = x[:, :1].copy()
    report = trainwatch.sanity_check(
        fixed_regressor(kernel), x, y, checks=["initial_loss"], verbose=0
    )
    assert report["initial_loss"].status == status, report["initial_loss"].summary
    codes = [f.code for f in report.findings]
    assert codes == ([] if status == "passed" else ["initial_loss_unexpected"])


# -- healthy models users bring: no false alarms ----------------------------------


def token_data(n=640, length=10, vocab=50, seed=0):
    """Padded token sequences (0 pads, lengths 5 to `length`); label 1 where
    token 1 occurs, which it does only in half of them."""
    rng = np.random.default_rng(seed)
    x = rng.integers(2, vocab, size=(n, length)).astype("int32")
    lengths = rng.integers(5, length + 1, size=n)
    x[np.arange(length) >= lengths[:, None]] = 0
    y = rng.integers(0, 2, size=n).astype("int32")
    rows = np.flatnonzero(y)
    x[rows, rng.integers(0, lengths[rows])] = 1
    return x, y


def test_text_classifier_learning_with_a_slow_loss_is_no_plateau(
    tmp_path, watch_with_only
):
    """Small embeddings averaged over a sequence give logits near zero: at
    Adam's default rate the loss stays near ln 2 for a few epochs while the
    accuracy climbs from chance. That is learning, not a rate too low (it was
    a `loss_plateau` warning after 60 steps on every backend)."""
    x, y = token_data()
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],), dtype="int32"),
            keras.layers.Embedding(50, 16, mask_zero=True),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    watch = watch_with_only(str(tmp_path), (x[:64], y[:64]), ("loss_curve",))
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[watch])
    losses, accuracy = history.history["loss"], history.history["accuracy"]
    assert losses[-1] > 0.9 * losses[0], "the premise: a loss that hardly fell"
    assert accuracy[-1] - accuracy[0] > 0.1, "the premise: a rising accuracy"
    assert [f.code for f in watch.context.findings] == []


def test_each_outputs_loss_is_reported_as_without_trainwatch(tmp_path, watch_with_only):
    """The probe's loss is computed through a built copy of the compiled loss:
    building that copy added its per-output trackers to the user's, and `fit`
    then reported 0.0 for each output's loss on TensorFlow."""
    x, y = make_data(n=64)
    target = x[:, 1:2]
    inputs = keras.Input((N_FEATURES,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    outputs = {
        "label": keras.layers.Dense(2, activation="softmax", name="label")(hidden),
        "value": keras.layers.Dense(1, name="value")(hidden),
    }
    model = keras.Model(inputs, outputs)
    model.compile(
        "adam",
        loss={"label": "sparse_categorical_crossentropy", "value": "mse"},
        loss_weights={"label": 1.0, "value": 0.5},
    )
    labels = {"label": y, "value": target}
    probe = (x[:16], {"label": y[:16], "value": target[:16]})
    watch = watch_with_only(str(tmp_path), probe, ("input_init",))
    history = model.fit(
        x, labels, epochs=1, batch_size=16, verbose=0, callbacks=[watch]
    )
    logs = {name: values[-1] for name, values in history.history.items()}
    assert logs["label_loss"] > 0 and logs["value_loss"] > 0, logs
    weighted = logs["label_loss"] + 0.5 * logs["value_loss"]
    assert weighted == pytest.approx(logs["loss"], rel=1e-4), logs
    assert len(model._compile_loss.metrics) == 2


@pytest.mark.parametrize(
    "kernel, status",
    [
        # Logits within unit spread that correlate with the labels by chance,
        # as a Glorot MLP's do on standardized breast-cancer features (|corr|
        # up to 0.7, initial loss 1.45 against ln 2): the cross term moves the
        # loss. Both were `initial_loss_unexpected` warnings.
        ([-0.9, 0.0, 0.0, 0.0], "passed"),  # raised: 1.15
        ([0.9, 0.0, 0.0, 0.0], "passed"),  # lowered: 0.42
        # Logits four times the cap's scale are still reported, whether or
        # not they correlate with the labels.
        ([0.0, 4.0, 0.0, 0.0], "failed"),
        ([4.0, 0.0, 0.0, 0.0], "failed"),
        ([-4.0, 0.0, 0.0, 0.0], "failed"),
    ],
    ids=[
        "anticorrelated",
        "correlated",
        "too_large",
        "too_large_correlated",
        "too_large_anti",
    ],
)
def test_initial_binary_loss_allows_for_logits_correlated_with_the_labels(
    kernel, status
):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    report = trainwatch.sanity_check(
        fixed_regressor(kernel, "sigmoid", "binary_crossentropy"),
        x,
        y,
        checks=["initial_loss"],
        verbose=0,
    )
    assert report["initial_loss"].status == status, report["initial_loss"].summary
    codes = [f.code for f in report.findings]
    assert codes == ([] if status == "passed" else ["initial_loss_unexpected"])


def test_label_rows_that_are_not_distributions_are_blamed_for_wrong_gradients():
    # Multi-label rows under softmax + categorical_crossentropy: TensorFlow's
    # fused cross-entropy differentiates as if each row summed to 1 (digits
    # MLP: gradient_wrong on every variable, "look at the backward pass");
    # JAX and PyTorch differentiate the loss itself.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, N_FEATURES)).astype("float32")
    y = np.eye(4)[[1, 2, 3, 1, 2, 3, 1, 2]]
    y[::2, 0] = 1.0  # a second label on four rows
    model = keras.Sequential(
        [
            keras.Input((N_FEATURES,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    model.compile("adam", "categorical_crossentropy")
    wrong = [
        f
        for f in trainwatch.check_gradients(model, x, y).findings
        if f.code == "gradient_wrong"
    ]
    if keras.backend.backend() == "tensorflow":
        assert wrong
    for finding in wrong:
        assert "4 of the 8 label rows do not sum to 1" in finding.message
        assert "sums from 1 to 2" in finding.message
        assert "binary_crossentropy" in finding.advice
        assert "backward pass of layer" not in finding.advice
    from trainwatch.rules.labels import label_rows_not_distributions

    one_hot = np.eye(4)[[1, 2, 3, 0]]
    assert label_rows_not_distributions(one_hot, "categorical_crossentropy") is None
    assert label_rows_not_distributions(y, "binary_crossentropy") is None
    column = np.array([[0.0], [1.0], [1.0]])  # one 0/1 label per example
    found = label_rows_not_distributions(column, "categorical_crossentropy")
    assert found.startswith("1 of the 3 label rows do not sum to 1 (sums from 0 to 1)")


# -- another writer in trainwatch's log dir (Keras's TensorBoard callback) ---------


class OtherEventWriter(keras.callbacks.Callback):
    """Appends to an event file of its own in `log_dir/train` at each epoch
    end, as Keras's `TensorBoard` callback does (which needs TensorFlow)."""

    def __init__(self, log_dir):
        super().__init__()
        self.path = os.path.join(log_dir, "train", "events.out.tfevents.1.other.v2")

    def on_epoch_end(self, epoch, logs=None):
        from tensorboard.compat.proto import event_pb2

        from trainwatch.tensorboard.records import RecordFileWriter

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "ab") as file:
            event = event_pb2.Event(wall_time=1.0, step=epoch)
            RecordFileWriter(file).write(event.SerializeToString())


def test_another_writer_in_the_run_directories_is_named(tmp_path):
    """TensorBoard follows one file per run while it reloads: a second writer
    into `train/` hides trainwatch's new events (or its own) until a restart."""
    x, y = make_data()
    other = OtherEventWriter(str(tmp_path))
    watch = trainwatch.TrainWatch(
        str(tmp_path), probe=(x[:16], y[:16]), verbose=0, gradient_check=False
    )
    make_model().fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[watch, other])
    shared = [f for f in watch.context.findings if f.code == "event_files_shared"]
    assert len(shared) == 1  # once, though the other file grows every epoch
    assert shared[0].where == "train/" and shared[0].epoch == 1  # after ours
    assert "events.out.tfevents.1.other.v2" in shared[0].message
    assert "--reload_multifile=true" in shared[0].advice


def test_trainwatchs_own_files_and_an_earlier_runs_are_no_other_writer(tmp_path):
    """Standalone monitors sharing the dir, a second `fit`, and a file that an
    earlier run left (not written since) give no `event_files_shared`."""
    x, y = make_data()
    old = OtherEventWriter(str(tmp_path))
    old.on_epoch_end(0)
    os.utime(old.path, (1.0, 1.0))  # last written long ago
    callbacks = [
        trainwatch.LossCurve(str(tmp_path), verbose=0),
        trainwatch.UpdateRatio(str(tmp_path), verbose=0),
        trainwatch.TrainWatch(
            str(tmp_path), probe=(x[:16], y[:16]), verbose=0, gradient_check=False
        ),
    ]
    model = make_model()
    for _ in range(2):
        model.fit(
            x,
            y,
            epochs=2,
            batch_size=16,
            verbose=0,
            callbacks=callbacks,
            validation_split=0.25,
        )
    for callback in callbacks:
        codes = {f.code for f in callback.context.findings}
        assert "event_files_shared" not in codes, type(callback).__name__


def test_probe_without_a_models_named_inputs_names_them(tmp_path):
    """A functional model on a dict of inputs, given an array probe: the error
    names the keys the probe needs (Keras's own says "path `` not connected")."""
    x, y = make_data()
    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    hidden = keras.layers.Dense(8, activation="relu")(
        keras.layers.Concatenate()([a, b])
    )
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(2)(hidden))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    inputs = {"a": x[:, :3], "b": x[:, 3:]}
    for probe_x, missing in ((x[:16], "['a', 'b']"), ({"a": x[:16, :3]}, "['b']")):
        counter = BatchCounter()
        watch = trainwatch.TrainWatch(str(tmp_path), probe=(probe_x, y[:16]), verbose=0)
        with pytest.raises(ValueError, match="dict of inputs with keys") as error:
            model.fit(inputs, y, epochs=1, verbose=0, callbacks=[watch, counter])
        assert f"lacks {missing}" in str(error.value)
        assert "probe=({'a': ..., 'b': ...}, y)" in str(error.value)
        assert counter.batches == 0
