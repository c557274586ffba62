"""Rule: regression targets far from the scale an untrained network outputs.

An untrained network with standardized inputs and Glorot/He weights outputs
numbers of order 1. Targets in the thousands (prices, counts, Kelvin) make it
first grow its outputs a thousandfold: with Adam's steps of about the learning
rate that takes tens of thousands of steps, with SGD the first gradients are
huge and the run diverges, and either way the early loss curve only says
"the scale is wrong". Targets around 1e-4 (returns, rates) drown in the
output noise the other way round. Standardizing the targets fixes both.

Judged on the sanity check's examples, against what the model outputs there
before training, so a model that already produces the targets' scale (an
output `Rescaling`, a bias started at the mean) is not flagged.

Pure function: numpy arrays in, one `Finding` or `None` out.

Example:

>>> y = np.array([[210_000.0], [340_000.0], [185_000.0], [260_000.0]])
>>> target_scale(y, np.full((4, 1), 0.3), "mse").code
'targets_not_normalized'
>>> target_scale(np.array([[0.4], [-1.2], [0.9]]), np.zeros((3, 1)), "mse")
"""

from __future__ import annotations

import numpy as np

from trainwatch.findings import Finding

__all__ = [
    "OUTPUT_RANGES",
    "REGRESSION_LOSSES",
    "class_ids",
    "is_regression_loss",
    "target_range",
    "target_scale",
]

# Loss names (lower case, no underscores) whose targets are numbers to match.
REGRESSION_LOSSES = frozenset(
    {
        "mse",
        "meansquarederror",
        "mae",
        "meanabsoluteerror",
        "huber",
        "huberloss",
        "logcosh",
    }
)
_SQUARED = frozenset({"mse", "meansquarederror"})
# Targets this many times larger than the untrained outputs (or than 1, if
# those are smaller) are far off, and so are targets smaller than `_TINY`.
_LARGER = 10.0
_TINY = 1e-2

ADVICE = (
    "Standardize the targets with the training set's mean and std "
    "(y_scaled = (y - mean) / std; predictions * std + mean give them back), "
    "or start the output layer at their scale "
    "(`bias_initializer=keras.initializers.Constant(mean)`)."
)


# What an output activation can produce: (lowest, highest), ends excluded or
# reached only in the limit.
OUTPUT_RANGES = {
    "sigmoid": (0.0, 1.0),
    "hard_sigmoid": (0.0, 1.0),
    "softmax": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "hard_tanh": (-1.0, 1.0),
    "soft_sign": (-1.0, 1.0),
    "softsign": (-1.0, 1.0),
    "relu": (0.0, np.inf),
    "softplus": (0.0, np.inf),
    "relu6": (0.0, 6.0),
}
_OUT_OF_RANGE_SHARE = 0.01  # of the targets, before the rule speaks


def target_range(y_true, activation, loss_name, where=None) -> Finding | None:
    """`targets_out_of_range` when the output activation cannot produce the targets.

    Args:
        y_true: The targets of some training examples.
        activation: Name of the output layer's activation (`"sigmoid"`, …),
            or `None` for a linear output.
        loss_name: The loss's name, for the message.
        where: Output layer's name. Defaults to `None`.

    Returns:
        A `targets_out_of_range` error when more than 1% of the targets lie
        outside the activation's range, else `None`.

    Example:

    >>> target_range(np.array([[0.2], [3.5], [7.0]]), "sigmoid", "mse").code
    'targets_out_of_range'
    >>> target_range(np.array([[0.2], [0.9]]), "sigmoid", "mse") is None
    True
    """
    if activation not in OUTPUT_RANGES:
        return None
    targets = np.asarray(y_true, dtype=np.float64)
    targets = targets[np.isfinite(targets)]
    if targets.size == 0:
        return None
    low, high = OUTPUT_RANGES[activation]
    outside = (targets < low) | (targets > high)
    share = float(np.mean(outside))
    if share <= _OUT_OF_RANGE_SHARE:
        return None
    span = f"[{low:g}, {high:g}]" if np.isfinite(high) else f"[{low:g}, inf)"
    return Finding(
        "targets_out_of_range",
        "error",
        f"The model's output goes through {activation}, which only produces "
        f"values in {span}, but {share:.0%} of the regression targets "
        f"({loss_name}) lie outside it (they range over [{targets.min():.4g}, "
        f"{targets.max():.4g}]): those can never be predicted, and the outputs "
        "pile up at the edge of the range, where the gradient vanishes.",
        "Use a linear output (`activation=None`) for targets without bounds, "
        f"or scale the targets into {span} (and scale predictions back).",
        where=where,
    )


def is_regression_loss(name) -> bool:
    """Whether a loss name (`"mse"`, `"MeanAbsoluteError"`, …) is a regression loss.

    Example:

    >>> is_regression_loss("mean_squared_error"), is_regression_loss("Huber")
    (True, True)
    """
    return _normalized(name) in REGRESSION_LOSSES


def _normalized(name) -> str:
    return str(name).replace("_", "").lower()


def _rms(values) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def target_scale(y_true, y_pred, loss_name, where=None) -> Finding | None:
    """`targets_not_normalized` when regression targets are far off the outputs' scale.

    Args:
        y_true: The targets of some training examples.
        y_pred: What the untrained model outputs for them.
        loss_name: The loss's name, for the message.
        where: Output name, for a model with several. Defaults to `None`.

    Returns:
        A `targets_not_normalized` warning, or `None` (also for targets that
        are not finite numbers, or all zero).
    """
    targets = np.asarray(y_true, dtype=np.float64)
    outputs = np.asarray(y_pred, dtype=np.float64)
    if targets.size == 0 or not np.all(np.isfinite(targets)) or not np.any(targets):
        return None
    target_rms = _rms(targets)
    output_rms = _rms(outputs[np.isfinite(outputs)]) if outputs.size else 0.0
    mean, std = float(np.mean(targets)), float(np.std(targets))
    described = (
        f"The regression targets ({loss_name}) have mean {mean:.4g} and std "
        f"{std:.4g} (RMS {target_rms:.3g}) on {targets.shape[0]} examples"
    )
    if target_rms > _LARGER * max(output_rms, 1.0):
        squared = _normalized(loss_name) in _SQUARED
        loss_scale = target_rms**2 if squared else target_rms  # else ~linear
        return Finding(
            "targets_not_normalized",
            "warning",
            f"{described}, while the untrained model outputs numbers of RMS "
            f"{output_rms:.3g}: it must first grow its outputs "
            f"{target_rms / max(output_rms, 1e-12):.3g}-fold. The initial loss is "
            f"about {loss_scale:.3g}; with Adam that scale takes many thousands "
            "of steps to reach, with SGD the first gradients are huge and "
            "training is likely to diverge.",
            ADVICE,
            where=where,
        )
    if target_rms < _TINY and output_rms > 10.0 * target_rms:
        return Finding(
            "targets_not_normalized",
            "warning",
            f"{described}, far below the untrained model's outputs (RMS "
            f"{output_rms:.3g}): the loss first measures the output noise, and "
            "once the outputs have shrunk, losses and gradients are tiny "
            f"(a loss of {target_rms**2:.2g} looks converged when it is not).",
            ADVICE,
            where=where,
        )
    return None


# Class ids regressed on one output: at least this many distinct ids, at most
# `_MOST_CLASSES`, and the rarest at least `_BALANCE` times as frequent as the
# commonest. Counts and ratings are peaked (Poisson(3) on 64 examples: the
# rarest value 0.07 of the commonest), drawn classes are not (digits, 64
# examples: 0.33).
_FEWEST_CLASSES = 3
_MOST_CLASSES = 100
_BALANCE = 0.2
CLASS_IDS_ADVICE = (
    "If the targets are classes, give the output layer one unit per class "
    'with a softmax (`Dense(num_classes, activation="softmax")`), compile '
    'with `sparse_categorical_crossentropy` and `metrics=["accuracy"]`, '
    "and keep the integer labels as they are. If they are counts or ordered "
    "scores that mean numbers, this does not apply."
)


def class_ids(y_true, y_pred, loss_name, where=None) -> Finding | None:
    """`targets_are_class_ids` when a regression loss is fitted to class ids.

    Classification labels (0, 1, ..., C-1) passed to a one-output network
    under mean squared error train without complaint, but as points on a
    line: the loss makes a 0 mistaken for a 9 cost 81 times a 0 mistaken for
    a 1, and a network unsure between two classes predicts the id between
    them. The targets tell: integers, every id from the lowest (0 or 1) to the
    highest present, drawn about evenly.

    Args:
        y_true: The targets of some training examples.
        y_pred: What the untrained model outputs for them (only its shape is
            used: one output per example).
        loss_name: The loss's name, for the message.
        where: Output layer's name. Defaults to `None`.

    Returns:
        A `targets_are_class_ids` warning, or `None`.

    Example:

    >>> y = np.arange(64.0) % 10
    >>> class_ids(y, np.zeros((64, 1)), "mse").code
    'targets_are_class_ids'
    >>> class_ids(y, np.zeros((64, 10)), "mse") is None  # one output per class
    True
    >>> class_ids(np.random.default_rng(0).normal(size=64), np.zeros(64), "mse")
    """
    targets = np.asarray(y_true, dtype=np.float64)
    outputs = np.asarray(y_pred)
    if targets.ndim == 0 or outputs.ndim == 0:
        return None
    if outputs.ndim > 1 and outputs.shape[-1] != 1:
        return None
    if targets.ndim > 1 and targets.shape[-1] != 1:
        return None
    targets = targets.reshape(-1)
    if not np.all(np.isfinite(targets)) or np.any(targets != np.round(targets)):
        return None
    low, high = float(targets.min()), float(targets.max())
    classes = int(high - low) + 1
    if low not in (0.0, 1.0) or not _FEWEST_CLASSES <= classes <= _MOST_CLASSES:
        return None
    counts = np.bincount((targets - low).astype(np.int64), minlength=classes)
    if counts.min() < _BALANCE * counts.max():  # a gap, or peaked like counts
        return None
    return Finding(
        "targets_are_class_ids",
        "warning",
        f"The {targets.size} regression targets ({loss_name}) are the integers "
        f"{low:g} to {high:g}, every one present, {counts.min()} to "
        f"{counts.max()} times each: class ids, it seems, fitted on a single "
        f"output. {loss_name} treats them as points on a line: a {low:g} "
        f"mistaken for a {high:g} costs {(high - low) ** 2:g} times a {low:g} "
        f"mistaken for a {low + 1:g}, and a network unsure between two classes "
        "predicts the id between them, a third class.",
        CLASS_IDS_ADVICE,
        where=where,
    )
