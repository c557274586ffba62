"""Rule: one finding when the network gets no gradient below some layer.

`check_gradients` judges every variable on its own. When no variable gets a
gradient, or none before some layer, one cause explains them all, and a
`gradient_missing` per variable would read like as many wiring bugs. This
rule tells those cases from a single unused layer (which keeps its own
findings) and names the cause the check can see:

- every variable flat, and every prediction at the loss's clipping (Keras
  clips probabilities to `[1e-7, 1 - 1e-7]` in its cross-entropies on
  JAX and PyTorch, and a clipped probability passes no gradient): saturated
  outputs, the weights blew up (an error); with every prediction right, a
  model that is certain of the checked examples (info);
- every variable flat without that evidence: said as seen, with no cause;
- the layers before a layer flat, and that layer's kernel too while its
  bias learns: its inputs are zero on every checked example (dead ReLUs);
- only the output layer learns, its kernel too, and the flat variables are
  most of the model: the units feeding it pass no gradient although they
  are not zero (a flat region of their activation);
- every variable cut from a loss that changes with it: one cut after the
  last variable (`stop_gradient`, a numpy round trip), not one per layer.

Pure functions: states and numbers in, one `Finding` (`where=None`) out.

Example:

>>> variables = [("m/d/kernel", "m/d", FLAT), ("m/d/bias", "m/d", FLAT),
...              ("m/o/kernel", "m/o", FLAT), ("m/o/bias", "m/o", LIVE)]
>>> scope(variables).kind
'dead_inputs'
>>> scope(variables[:2] + [("m/o/kernel", "m/o", LIVE), ("m/o/bias", "m/o", LIVE)])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from trainwatch.findings import Finding
from trainwatch.numerics import expected_loss as el
from trainwatch.rules import outputs

__all__ = [
    "CUT",
    "FLAT",
    "LIVE",
    "OTHER",
    "Clipping",
    "Evidence",
    "Scope",
    "clipped_predictions",
    "evidence",
    "finding",
    "scope",
]

# What the check saw of one variable's data-loss gradient.
FLAT = "flat"  # no gradient, and the loss does not change with it either
CUT = "cut"  # no gradient, but the loss changes with it
LIVE = "live"  # a non-zero gradient
OTHER = "other"  # anything else (e.g. a zero gradient with an inconclusive probe)

_MIN_VARIABLES = 2  # one variable without gradient is its own finding already

PROBABILITY_KINDS = (el.CATEGORICAL, el.SPARSE_CATEGORICAL, el.BINARY)


class Scope(NamedTuple):
    """Which variables get no gradient, when one cause covers them.

    Attributes:
        kind: `"all_flat"`, `"all_cut"`, `"dead_inputs"` (no gradient before
            `layer`, nor to part of `layer`: its inputs are zero) or
            `"flat_inputs"` (no gradient before `layer`, the output layer,
            which learns).
        paths: The variables without gradient, in model order: their own
            `gradient_missing` findings are replaced by the rule's.
        live: The variables that still get one.
        layer: Where the gradient stops (the last layer for `"all_*"`).
        total: How many trainable variables there are.
        layers: How many layers own them.
    """

    kind: str
    paths: tuple
    live: tuple
    layer: str
    total: int
    layers: int


def scope(variables: Sequence[tuple[str, str, str]]) -> Scope | None:
    """Whether one cause covers the variables that get no gradient.

    Args:
        variables: `(path, layer, state)` per trainable variable, in model
            order; `state` is `FLAT`, `CUT`, `LIVE` or `OTHER`.

    Returns:
        A `Scope` when at least two variables get no gradient and either all
        of them are `FLAT`, all are `CUT`, or they stop at one layer `L`:
        every variable of the layers before `L` is `FLAT`, every one after
        it `LIVE`, and `L` has both (`"dead_inputs"`), or `L` is the output
        layer, all `LIVE`, and the `FLAT` ones are most of the model
        (`"flat_inputs"`). `None` otherwise: an unused or detached layer in a
        model that learns around it keeps its own findings.
    """
    variables = list(variables)
    if len(variables) < _MIN_VARIABLES:
        return None
    groups = {}  # layer -> states, in model order
    for _, layer, state in variables:
        groups.setdefault(layer, []).append(state)
    layers = list(groups)
    states = [state for _, _, state in variables]
    flat = tuple(path for path, _, state in variables if state == FLAT)
    live = tuple(path for path, _, state in variables if state == LIVE)

    def made(kind, missing, layer):
        return Scope(kind, missing, live, layer, len(variables), len(layers))

    if all(state == FLAT for state in states):
        return made("all_flat", flat, layers[-1])
    if all(state == CUT for state in states):
        paths = tuple(path for path, _, _ in variables)
        return made("all_cut", paths, layers[-1])
    if len(flat) + len(live) < len(variables) or len(flat) < _MIN_VARIABLES:
        return None
    first = next(i for i, layer in enumerate(layers) if LIVE in groups[layer])
    layer = layers[first]
    if first == 0 or any(
        state != FLAT for earlier in layers[:first] for state in groups[earlier]
    ):
        return None
    if any(state != LIVE for later in layers[first + 1 :] for state in groups[later]):
        return None
    if FLAT in groups[layer]:
        return made("dead_inputs", flat, layer)
    if layer == layers[-1] and len(flat) > len(live):
        return made("flat_inputs", flat, layer)
    return None


class Clipping(NamedTuple):
    """Predictions whose probability of the true label the loss clips.

    Attributes:
        wrong: Predictions with that probability at or below `epsilon` (each
            costs `-ln(epsilon)`, ~16.1 for Keras's 1e-7).
        right: Predictions with it at or above `1 - epsilon` (cost ~0).
        total: All predictions (examples; outputs for binary cross-entropy).
    """

    wrong: int
    right: int
    total: int

    @property
    def all_clipped(self) -> bool:
        return self.total > 0 and self.wrong + self.right == self.total


def clipped_predictions(kind, y_true, y_pred, epsilon=1e-7) -> Clipping | None:
    """Counts the predictions that a probability cross-entropy clips.

    Keras's cross-entropies on probabilities (`from_logits=False`) clip them
    to `[epsilon, 1 - epsilon]` before the log, so a clipped probability of
    the true label passes no gradient.

    Args:
        kind: One of `trainwatch.numerics.expected_loss.LOSS_KINDS`.
        y_true: Labels: class indices (sparse), one-hot rows (categorical) or
            0/1 targets (binary).
        y_pred: Predicted probabilities.
        epsilon: The loss's clipping. Defaults to `1e-7` (Keras's).

    Returns:
        A `Clipping`, or `None` for mean squared error, soft labels, or
        shapes that do not fit.

    Example:

    >>> clipped_predictions("sparse_categorical_crossentropy", [0, 1],
    ...                     [[1.0, 0.0], [1.0, 0.0]])
    Clipping(wrong=1, right=1, total=2)
    """
    if kind not in PROBABILITY_KINDS:
        return None
    try:
        p = np.asarray(y_pred, dtype=np.float64)
        y = np.asarray(y_true, dtype=np.float64)
        if kind == el.BINARY:
            y = y.reshape(p.shape)
            if not np.all((y == 0) | (y == 1)):
                return None
            true = np.where(y == 1, p, 1.0 - p)
        else:
            if p.ndim < 1 or p.shape[-1] < 2:
                return None
            p = p / np.sum(p, axis=-1, keepdims=True)  # as Keras does
            if kind == el.CATEGORICAL:
                y = y.reshape(p.shape)
                if not (np.all((y == 0) | (y == 1)) and np.all(y.sum(-1) == 1)):
                    return None  # soft labels: several classes count
                labels = np.argmax(y, axis=-1)
            else:
                labels = y.reshape(p.shape[:-1]).astype(np.int64)
                if labels.min() < 0 or labels.max() >= p.shape[-1]:
                    return None
            true = np.take_along_axis(p, labels[..., None], axis=-1)[..., 0]
    except (ValueError, TypeError, IndexError):
        return None
    true = true.reshape(-1)
    return Clipping(
        wrong=int(np.sum(true <= epsilon)),
        right=int(np.sum(true >= 1.0 - epsilon)),
        total=int(true.size),
    )


class Evidence(NamedTuple):
    """What the check saw of the loss where no gradient flows.

    Attributes:
        loss: The data loss on the checked examples.
        examples: How many examples were checked.
        kind: The loss (`LOSS_KINDS`) if a known one, else `None`.
        from_logits: Whether the loss takes logits.
        expected: The loss of an uninformed prediction (`ln(C)` for `C`
            classes, `ln(2)` for binary), or `None`.
        expected_text: How `expected` is written, e.g. `"ln(10) = 2.30"`.
        clipping: `clipped_predictions` for a probability cross-entropy, else
            `None`.
        epsilon: The loss's clipping of probabilities.
        softmax_single_unit: The output layer's path when it is a softmax
            over a single unit (always 1, whatever the weights), else `None`.
    """

    loss: float
    examples: int
    kind: str | None = None
    from_logits: bool = False
    expected: float | None = None
    expected_text: str | None = None
    clipping: Clipping | None = None
    epsilon: float = 1e-7
    softmax_single_unit: str | None = None


def evidence(
    loss,
    examples,
    kind=None,
    from_logits=False,
    y_true=None,
    y_pred=None,
    epsilon=1e-7,
    softmax_single_unit=None,
) -> Evidence:
    """Gathers the `Evidence` from the loss and the predictions (numpy).

    Args:
        loss: The data loss on the checked examples.
        examples: How many examples were checked.
        kind: The loss (`LOSS_KINDS`) or `None` if unknown. Defaults to `None`.
        from_logits: Whether the loss takes logits. Defaults to `False`.
        y_true, y_pred: Labels and predictions, or `None` (no clipping
            counted). Default to `None`.
        epsilon: The loss's clipping of probabilities. Defaults to `1e-7`.
        softmax_single_unit: The output layer's path when it is a softmax
            over a single unit. Defaults to `None`.

    Example:

    >>> e = evidence(14.5, 8, "sparse_categorical_crossentropy", False,
    ...              [0] * 8, np.eye(10)[[1] * 7 + [0]])
    >>> e.expected_text, e.clipping
    ('ln(10) = 2.30', Clipping(wrong=7, right=1, total=8))
    """
    expected = text = clipping = None
    if kind in (el.CATEGORICAL, el.SPARSE_CATEGORICAL) and y_pred is not None:
        classes = int(np.shape(y_pred)[-1]) if np.ndim(y_pred) else 0
        if classes >= 2:
            expected = el.expected_initial_loss(kind, num_classes=classes)
            text = f"ln({classes}) = {expected:.2f}"
    elif kind == el.BINARY:
        expected = el.expected_initial_loss(kind)
        text = f"ln(2) = {expected:.2f}"
    if not from_logits and y_true is not None and y_pred is not None:
        clipping = clipped_predictions(kind, y_true, y_pred, epsilon)
    return Evidence(
        float(loss), int(examples), kind, bool(from_logits), expected, text,
        clipping, float(epsilon), softmax_single_unit,
    )  # fmt: skip


def _loss_words(evidence: Evidence) -> str:
    value = evidence.loss
    shown = f"{value:.2f}" if abs(value) < 1e3 else f"{value:.3g}"
    words = f"The loss there is {shown}"
    if evidence.expected and evidence.expected_text:
        ratio = evidence.loss / evidence.expected
        relation = "compared with"
        if ratio >= 1.5:
            relation = f"{ratio:.1f} times"
        elif abs(ratio - 1.0) <= 0.1:
            relation = "about"
        words += (
            f", {relation} the {evidence.expected_text} of an uninformed prediction"
        )
    return words + "."


def _number(value) -> str:
    """`1e-07` as `1e-7`."""
    mantissa, _, exponent = f"{value:.0e}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def _names(paths, limit=3) -> str:
    shown = ", ".join(paths[:limit])
    return shown if len(paths) <= limit else f"{shown} and {len(paths) - limit} more"


def _layers(count) -> str:
    return f"{count} layer" + ("" if count == 1 else "s")


def finding(found: Scope, evidence: Evidence) -> Finding:
    """The one `gradient_missing` finding for the whole network (`where=None`).

    Args:
        found: What `scope` returned.
        evidence: What `evidence` gathered.

    Returns:
        A `Finding` (step unset) that says how many variables get no
        gradient and the cause the evidence supports.

    Example:

    >>> found = scope([("m/d/kernel", "m/d", FLAT), ("m/d/bias", "m/d", FLAT)])
    >>> finding(found, evidence(0.7, 8)).message[:41]
    'No trainable variable gets a gradient: th'
    """
    if found.kind == "all_cut":
        return Finding(
            "gradient_missing",
            "error",
            f"No gradient reaches any of the {found.total} trainable variables "
            f"({_layers(found.layers)}), although the data loss on the "
            f"{evidence.examples} checked examples changes with each of them: "
            "the graph is cut once, after the last variable "
            f"({found.paths[-1]}), not in every layer.",
            "Look at the output layer's call, at what happens between the "
            "model's output and the loss, and at a custom loss or "
            "`compute_loss`: `stop_gradient`, a cast to an integer, values "
            "computed outside Keras ops (numpy, `.numpy()`, Python floats).",
        )
    if found.kind in ("dead_inputs", "flat_inputs"):
        return _stops_at_layer(found, evidence)
    return _all_flat(found, evidence)


def _all_flat(found, evidence) -> Finding:
    head = (
        "No trainable variable gets a gradient: the loss on the "
        f"{evidence.examples} checked examples is flat in all {found.total} of "
        f"them ({_layers(found.layers)}). {_loss_words(evidence)}"
    )
    if evidence.softmax_single_unit:
        return Finding(
            "gradient_missing",
            "error",
            f"{head} The output layer {evidence.softmax_single_unit} is a softmax "
            "over a single unit, which outputs exactly 1 whatever its input and "
            "weights: no change of any weight changes the prediction, so the "
            "weights did not blow up; the output cannot move.",
            outputs.ADVICE,
        )
    clipping = evidence.clipping
    if clipping is not None and clipping.all_clipped:
        eps = _number(evidence.epsilon)
        clipped = (
            "every prediction sits at the loss's clipping of probabilities to "
            f"[{eps}, 1 - {eps}], where no gradient passes"
        )
        if clipping.wrong:
            wrong = f"{clipping.wrong} of {clipping.total} are"
            rest = ", the rest confidently right"
            if clipping.wrong == clipping.total:
                wrong = f"all {clipping.total} are" if clipping.total > 1 else "it is"
                rest = ""
            return Finding(
                "gradient_missing",
                "error",
                f"{head} The outputs are saturated: {clipped}; {wrong} "
                "confidently wrong (probability of the true label clipped at "
                f"{eps}, a loss of {-math.log(evidence.epsilon):.1f} each)"
                f"{rest}.",
                "The weights blew up: most likely the learning rate is far too "
                "high (or the initialization far too large); or the inputs are "
                "far from standardized (raw 0-255 pixels, a large constant "
                "feature: see inputs_not_normalized), which saturates the outputs "
                "of a healthy network. Lower the learning rate (10x or more), "
                "standardize the inputs, and re-initialize the model: saturated "
                "weights do not recover. Gradient clipping (`clipnorm=1.0` on "
                "the optimizer) also limits such steps.",
            )
        return Finding(
            "gradient_missing",
            "info",
            f"{head} The model is certain of every checked example, and right: "
            f"{clipped}.",
            "Nothing to fix in the gradients; check them on examples the model "
            "has not memorized. Outputs this confident are a sign of "
            "overfitting (consider regularization or label smoothing).",
        )
    return Finding(
        "gradient_missing",
        "warning",
        f"{head} The model's output does not change with its weights there, or "
        "the loss does not use the output.",
        "Look at the activations for dead or saturated units (every path from "
        "the weights to the output must pass through an active one), and at "
        "a custom loss or `compute_loss`. If the loss jumped early in "
        "training, the weights blew up: lower the learning rate and "
        "re-initialize the model.",
    )


def _stops_at_layer(found, evidence) -> Finding:
    layer = found.layer
    inside = [path for path in found.paths if path.startswith(layer + "/")]
    before = len(found.paths) - len(inside)
    missing = f"none of the {before} in the layers before {layer}"
    if inside:
        missing += f", nor {_names(inside)}"
    if len(found.live) == 1:
        live = f"only {found.live[0]} gets one"
    elif all(path.startswith(layer + "/") for path in found.live):
        live = f"only the {len(found.live)} of {layer} get one"
    else:
        live = f"the {len(found.live)} others, from {layer} on, get one"
    head = (
        f"No gradient reaches {len(found.paths)} of the {found.total} trainable "
        f"variables on the {evidence.examples} checked examples: {missing}; "
        f"{live}."
    )
    if found.kind == "dead_inputs":
        return Finding(
            "gradient_missing",
            "error",
            f"{head} The inputs of {layer} are zero on every checked example: "
            "the units feeding it are all inactive (dead ReLUs), so nothing "
            f"before them can learn. {_loss_words(evidence)}",
            "Dead ReLUs do not come back: lower the learning rate (one "
            "too-large step can knock every unit off) and re-initialize the "
            "model; He initialization (`kernel_initializer='he_normal'`) with "
            "zero biases, standardized inputs, or LeakyReLU/ELU keep units "
            "alive.",
        )
    return Finding(
        "gradient_missing",
        "error",
        f"{head} The inputs of the output layer {layer} are not zero, yet no "
        "gradient passes below them: the units feeding it sit in a flat region "
        "of their activation (capped or saturated) on every checked example, "
        f"so nothing before them can learn. {_loss_words(evidence)}",
        "Look at the activation of the layer feeding the output (relu6, "
        "hard_sigmoid, clipping): lower the learning rate and re-initialize "
        "the model, or use an activation with a gradient everywhere.",
    )
