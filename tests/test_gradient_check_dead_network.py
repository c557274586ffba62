"""A network that gets (almost) no gradient is one finding, with its cause.

Saturated outputs (weights that blew up), dead ReLUs under the output layer,
activations capped in a flat region and one cut after the last layer each
give one `gradient_missing` with `where=None`; a single detached layer in a
model that learns elsewhere keeps its per-variable findings.
"""

import keras
import numpy as np
import pytest
from keras import ops
from test_gradient_check import _one_torch_thread, batch  # noqa: F401 (a fixture)

from trainwatch.findings import Finding
from trainwatch.gradient_check import check_gradients
from trainwatch.rules import no_gradient

PACKAGE = "trainwatch_dead_network_tests"


@keras.saving.register_keras_serializable(PACKAGE)
class Detached(keras.layers.Layer):
    """A dense layer whose output is multiplied by 0: the loss never uses it."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight((input_shape[-1], self.units), name="kernel")
        self.bias = self.add_weight((self.units,), name="bias")

    def call(self, x):
        return x + 0.0 * (ops.matmul(x, self.kernel) + self.bias)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(PACKAGE)
class StopGradient(keras.layers.Layer):
    """Passes its input on and no gradient back."""

    def call(self, x):
        return ops.stop_gradient(x)


@keras.saving.register_keras_serializable(PACKAGE)
class PlainSoftmax(keras.layers.Layer):
    """A softmax whose output carries no logits: the loss clips it on every
    backend (TensorFlow's cross-entropy reads the logits of Keras's own)."""

    def call(self, x):
        e = ops.exp(x - ops.max(x, axis=-1, keepdims=True))
        return e / ops.sum(e, axis=-1, keepdims=True)


X, Y = batch(n=16)


def model_of(layers):
    model = keras.Sequential([keras.Input((10,)), *layers])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def output_layers(units, output):
    if output == "plain":
        return [keras.layers.Dense(units), PlainSoftmax()]
    return [keras.layers.Dense(units, activation="softmax")]


def relu_mlp(activation="relu", output="softmax"):
    return model_of(
        [
            keras.layers.Dense(12, activation=activation),
            keras.layers.Dense(12, activation=activation),
            *output_layers(3, output),
        ]
    )


def missing(result):
    return [f for f in result.findings if f.code == "gradient_missing"]


def check(model):
    return check_gradients(model, X, Y, coordinates=2)


@pytest.mark.parametrize("output", ["softmax", "plain"])
def test_saturated_outputs_are_one_finding_that_blames_the_weights(output):
    model = relu_mlp(output=output)
    for variable in model.trainable_variables:  # the weights blew up
        variable.assign(variable * 300.0)
    result = check(model)
    if output == "softmax" and keras.backend.backend() == "tensorflow":
        # TensorFlow's cross-entropy takes the logits behind a Keras softmax:
        # nothing is clipped, a gradient flows, nothing is missing.
        assert result.passed and missing(result) == []
        return

    [finding] = missing(result)
    assert finding.where is None and finding.severity == "error"
    message = finding.message
    assert "No trainable variable gets a gradient" in message
    assert "all 6 of them (3 layers)" in message
    assert "ln(3) = 1.10" in message and "saturated" in message
    assert "clipping of probabilities to [1e-7, 1 - 1e-7]" in message
    assert "learning rate is far too high" in finding.advice
    assert "inputs are far from standardized" in finding.advice  # raw pixels do it
    assert "re-initialize" in finding.advice
    # Each variable still says what it saw, in the result's table.
    assert all("not used" in " ".join(v.notes) for v in result.variables)


def test_a_softmax_over_one_unit_is_named_not_weights_blown_up():
    # every prediction is 1: binary cross-entropy clips the 0 labels' and the
    # saturated-outputs finding advised a lower learning rate
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(12, activation="relu"),
            keras.layers.Dense(1, activation="softmax"),
        ]
    )
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    labels = (Y % 2).astype("float32")
    assert 0 < labels.sum() < len(labels)
    result = check_gradients(model, X, labels, coordinates=2)
    found = missing(result)
    if keras.backend.backend() == "tensorflow":
        # TensorFlow's cross-entropy takes the logits behind a Keras softmax:
        # a gradient flows (the sanity check names the layer there)
        assert found == []
        return
    [finding] = found
    assert finding.severity == "error"
    assert f"{model.layers[-1].path} is a softmax over a single unit" in finding.message
    assert "saturated" not in finding.message
    assert "learning rate" not in finding.advice
    assert 'Dense(1, activation="sigmoid")' in finding.advice


def test_dead_relus_under_the_output_layer_are_one_finding():
    model = relu_mlp()
    hidden_bias = model.layers[1].bias
    hidden_bias.assign(ops.full(hidden_bias.shape, -100.0))  # every unit dead
    result = check(model)

    [finding] = missing(result)
    output = model.layers[-1]
    assert finding.where is None and finding.severity == "error"
    message = finding.message
    assert "No gradient reaches 5 of the 6 trainable variables" in message
    assert f"none of the 4 in the layers before {output.path}" in message
    assert f"nor {output.kernel.path}; only {output.bias.path} gets one" in message
    assert f"The inputs of {output.path} are zero" in message
    assert "dead ReLUs" in message and "ln(3) = 1.10" in message
    assert "Dead ReLUs do not come back" in finding.advice


def test_a_dead_first_layer_is_one_finding_at_the_layer_it_feeds():
    model = relu_mlp()
    first, second = model.layers[0], model.layers[1]
    first.bias.assign(ops.full(first.bias.shape, -100.0))  # every unit dead
    second.bias.assign(ops.full(second.bias.shape, 0.5))  # alive on its bias
    [finding] = missing(check(model))
    assert finding.where is None and finding.severity == "error"
    message = finding.message
    assert "No gradient reaches 3 of the 6 trainable variables" in message
    assert f"nor {second.kernel.path}; the 3 others, from {second.path}" in message
    assert f"The inputs of {second.path} are zero" in message


def test_capped_units_under_the_output_layer_are_one_finding():
    model = relu_mlp(activation="relu6")
    hidden_bias = model.layers[1].bias
    hidden_bias.assign(ops.full(hidden_bias.shape, 100.0))  # every unit at 6
    [finding] = missing(check(model))
    output = model.layers[-1]
    assert finding.where is None
    assert "No gradient reaches 4 of the 6 trainable variables" in finding.message
    assert f"only the 2 of {output.path} get one" in finding.message
    assert "flat region of their activation" in finding.message


def test_a_model_certain_and_right_on_every_example_is_info():
    model = model_of(output_layers(3, "plain"))
    kernel, bias = model.trainable_variables
    kernel.assign(ops.zeros(kernel.shape))
    y = np.zeros(16, dtype="int64")
    bias.assign(ops.convert_to_tensor([100.0, 0.0, 0.0]))  # class 0, certain
    [finding] = missing(check_gradients(model, X, y, coordinates=2))
    assert finding.where is None and finding.severity == "info"
    assert "certain of every checked example, and right" in finding.message


def test_one_cut_after_the_last_layer_is_one_error():
    model = model_of(
        [
            keras.layers.Dense(12, activation="tanh"),
            keras.layers.Dense(3),
            StopGradient(),
            keras.layers.Activation("softmax"),
        ]
    )
    result = check(model)
    [finding] = missing(result)
    assert finding.where is None and finding.severity == "error"
    assert "No gradient reaches any of the 4 trainable variables" in finding.message
    assert "cut once, after the last variable" in finding.message
    assert len(result.failed) == 4  # the verdicts stay per variable


@pytest.mark.parametrize("first", [False, True], ids=["middle", "first"])
def test_one_detached_layer_keeps_its_own_findings(first):
    layers = [
        keras.layers.Dense(12, activation="tanh"),
        Detached(12, name="detached"),
        keras.layers.Dense(3, activation="softmax"),
    ]
    if first:  # only the output layer learns, but half the variables do
        layers = [Detached(10, name="detached"), layers[-1]]
    model = model_of(layers)
    result = check(model)
    assert result.passed, str(result)
    findings = missing(result)
    assert sorted(f.where for f in findings) == [
        model.get_layer("detached").bias.path,
        model.get_layer("detached").kernel.path,
    ]
    assert all(f.severity == "warning" for f in findings)
    assert all("connected to the model's output" in f.advice for f in findings)


def test_a_healthy_model_has_no_missing_gradient():
    result = check(relu_mlp())
    assert result.passed and missing(result) == []


# -- the rule, without Keras --------------------------------------------------

FLAT, LIVE, CUT = no_gradient.FLAT, no_gradient.LIVE, no_gradient.CUT


def states(*pairs):
    return [(f"m/{layer}/{name}", f"m/{layer}", s) for layer, name, s in pairs]


def test_scope_is_all_or_all_before_one_layer():
    scope = no_gradient.scope
    dead = states(
        ("a", "kernel", FLAT), ("a", "bias", FLAT),
        ("b", "kernel", FLAT), ("b", "bias", LIVE),
    )  # fmt: skip
    assert scope(dead)[:4] == ("dead_inputs", dead_paths(dead), ("m/b/bias",), "m/b")
    middle = states(
        ("a", "kernel", FLAT), ("a", "bias", FLAT),
        ("b", "kernel", FLAT), ("b", "bias", LIVE),
        ("c", "kernel", LIVE), ("c", "bias", LIVE),
    )  # fmt: skip
    assert scope(middle).kind == "dead_inputs" and scope(middle).layer == "m/b"
    capped = states(
        ("a", "kernel", FLAT), ("a", "bias", FLAT),
        ("b", "kernel", FLAT), ("b", "bias", FLAT),
        ("c", "kernel", LIVE), ("c", "bias", LIVE),
    )  # fmt: skip
    assert scope(capped).kind == "flat_inputs"
    assert scope(states(("a", "k", CUT), ("b", "k", CUT))).kind == "all_cut"
    assert scope(states(("a", "k", FLAT), ("b", "k", FLAT))).kind == "all_flat"


def test_scope_leaves_a_detached_layer_its_own_findings():
    scope = no_gradient.scope
    assert scope(states(("a", "kernel", FLAT))) is None
    # A layer before the flat one still learns.
    assert scope(states(
        ("a", "kernel", LIVE), ("b", "kernel", FLAT), ("b", "bias", FLAT),
        ("c", "kernel", LIVE), ("c", "bias", LIVE),
    )) is None  # fmt: skip
    # A flat layer after the one where the gradient stops.
    assert scope(states(
        ("a", "kernel", FLAT), ("b", "kernel", FLAT), ("b", "bias", LIVE),
        ("c", "kernel", FLAT), ("c", "bias", LIVE),
    )) is None  # fmt: skip
    # Only the output layer learns, but it holds half the variables.
    assert scope(states(
        ("a", "kernel", FLAT), ("a", "bias", FLAT),
        ("b", "kernel", LIVE), ("b", "bias", LIVE),
    )) is None  # fmt: skip
    # A learning layer that would be capped is not the output layer.
    assert scope(states(
        ("a", "kernel", FLAT), ("a", "bias", FLAT), ("a", "gamma", FLAT),
        ("b", "kernel", LIVE), ("c", "kernel", LIVE),
    )) is None  # fmt: skip
    assert scope(states(("a", "k", CUT), ("b", "k", FLAT))) is None
    assert scope(states(("a", "k", FLAT), ("a", "b", LIVE))) is None


def dead_paths(variables):
    return tuple(path for path, _, state in variables if state == FLAT)


def test_clipped_predictions_count_confident_wrong_and_right():
    count = no_gradient.clipped_predictions
    p = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    assert count("sparse_categorical_crossentropy", [0, 1, 0], p) == (1, 1, 3)
    assert count("categorical_crossentropy", np.eye(3)[[0, 1, 0]], p) == (1, 1, 3)
    assert count("binary_crossentropy", [1.0, 0.0], [[1.0], [1.0]]) == (1, 1, 2)
    assert count("mean_squared_error", [0.0], [[1.0]]) is None
    assert count("categorical_crossentropy", [[0.5, 0.5, 0.0]] * 3, p) is None


def test_without_clipping_evidence_the_finding_names_no_cause():
    found = no_gradient.scope(states(("a", "k", FLAT), ("b", "k", FLAT)))
    evidence = no_gradient.evidence(0.7, 8, "mean_squared_error", False, [0.0], [1.0])
    finding = no_gradient.finding(found, evidence)
    assert isinstance(finding, Finding) and finding.severity == "warning"
    assert "saturated" not in finding.message and "dead" not in finding.message
