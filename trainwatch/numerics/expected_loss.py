"""What the loss of an untrained network should be, and how far off is too far.

Before training, a classifier whose output layer has small weights predicts
(almost) the uniform distribution, so its cross-entropy is `ln(C)` for `C`
classes (`ln 2` per output for binary cross-entropy), and a regressor whose
outputs are near zero has a mean squared error of `mean(y**2)`. A loss far from
that points at the output bias or scale, a `from_logits` mismatch or a label
encoding problem.

Modern initializers (Glorot, He) do not give *small* output weights: their
logits spread by about one unit, which raises the expected loss. To second
order in the logits `z`, the softmax cross-entropy is

    ln(C) + var_c(z) / 2 - (z_y - mean_c(z)),

where `var_c` is the variance across the classes of one example. The last term
averages to zero at initialization (the weights know nothing of the labels);
the middle one is the output spread, measured here. The tolerance therefore
grows with the measured spread, up to a cap: a spread beyond the cap is itself
what the finding reports (an output layer that is confident before it has
learned anything).

Everything here is numpy; the Keras side lives in `trainwatch.sanity`.

Example:

>>> y = np.array([0, 1, 2, 3])
>>> logits = np.zeros((4, 10))
>>> check = initial_loss_expectation("sparse_categorical_crossentropy", y, logits, True)
>>> round(check.expected, 4), check.num_classes
(2.3026, 10)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

CATEGORICAL = "categorical_crossentropy"
SPARSE_CATEGORICAL = "sparse_categorical_crossentropy"
BINARY = "binary_crossentropy"
MEAN_SQUARED_ERROR = "mean_squared_error"
LOSS_KINDS = (CATEGORICAL, SPARSE_CATEGORICAL, BINARY, MEAN_SQUARED_ERROR)
SPREAD_CAP = 1.0  # unit-variance logits: what Glorot/He give on standardized inputs

_EPSILON = 1e-7  # Keras's clipping of probabilities in the cross-entropies


class InitialLossExpectation(NamedTuple):
    """The expected initial loss and the tolerance around it.

    Attributes:
        kind: One of `LOSS_KINDS`.
        expected: The loss of a network with small output weights.
        tolerance: Largest acceptable `|loss - expected|`: the sum of
            `relative` (a share of `expected`), `noise` (sampling noise of the
            mean over the batch) and `spread_allowance`.
        relative: `rtol * expected`.
        noise: Twice the standard error of the per-example loss.
        spread_allowance: The loss increase that the measured output spread
            explains, capped (see the module docstring); for mean squared
            error net of the outputs' chance correlation with the labels
            (`_mean_squared_error_allowance`).
        output_spread: The measured spread: mean variance of the logits across
            classes (cross-entropy), mean squared logit (binary) or mean squared
            output (mean squared error).
        num_classes: `C` for the cross-entropies, else `None`.
        assumption: The condition under which `expected` holds, in words.
        output_center: For mean squared error, the output an untrained
            network sits near (0.5 behind a sigmoid): `expected` is
            `mean((y - output_center)**2)`. 0 otherwise.
    """

    kind: str
    expected: float
    tolerance: float
    relative: float
    noise: float
    spread_allowance: float
    output_spread: float
    num_classes: int | None
    assumption: str
    output_center: float = 0.0


def _as_float_array(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _check_kind(kind):
    if kind not in LOSS_KINDS:
        raise ValueError(f"Expected kind in {LOSS_KINDS}. Received: kind={kind!r}")


def expected_initial_loss(kind, num_classes=None, y_true=None) -> float:
    """The loss of a network whose outputs carry no information yet.

    Args:
        kind: One of `LOSS_KINDS`.
        num_classes: Number of classes `C` (the last dimension of the output);
            needed for the categorical cross-entropies. Defaults to `None`.
        y_true: The labels; needed for `"mean_squared_error"`. Defaults to
            `None`.

    Returns:
        `ln(C)` for the categorical cross-entropies (uniform prediction),
        `ln(2)` for binary cross-entropy (every probability 0.5) and
        `mean(y_true**2)` for mean squared error (outputs near zero; this is
        the label variance when the labels have zero mean).

    Raises:
        ValueError: `kind` is unknown, or the argument it needs is missing.

    Example:

    >>> round(expected_initial_loss("categorical_crossentropy", num_classes=10), 4)
    2.3026
    >>> round(expected_initial_loss("binary_crossentropy"), 4)
    0.6931
    >>> float(expected_initial_loss("mean_squared_error", y_true=[-1.0, 1.0]))
    1.0
    """
    _check_kind(kind)
    if kind in (CATEGORICAL, SPARSE_CATEGORICAL):
        if num_classes is None or int(num_classes) < 1:
            raise ValueError(
                "Expected a positive number of classes for "
                f"{kind}. Received: num_classes={num_classes!r}"
            )
        return float(np.log(int(num_classes)))
    if kind == BINARY:
        return float(np.log(2.0))
    if y_true is None:
        raise ValueError(
            "Expected the labels to compute the expected mean squared error. "
            "Received: y_true=None"
        )
    return float(np.mean(_as_float_array(y_true) ** 2))


def _entropy_terms(p) -> np.ndarray:
    """`-p ln p` elementwise, 0 where `p` is 0 (clipped to [0, 1])."""
    p = np.clip(p, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0.0, -p * np.log(np.where(p > 0.0, p, 1.0)), 0.0)


def loss_floor(kind, y_true, label_smoothing=0.0) -> float:
    """The least mean loss any prediction can reach on these targets.

    A cross-entropy is smallest where the prediction equals the target
    distribution, and is then the targets' own entropy: 0 for one-hot or 0/1
    targets, but more for soft targets (pixel intensities an autoencoder
    reconstructs, distilled or mixed labels) and under label smoothing, which
    Keras applies to the targets first. Squared error reaches 0.

    Args:
        kind: One of `LOSS_KINDS`.
        y_true: The targets, as the loss receives them (class ids for the
            sparse cross-entropy, which has no floor above 0).
        label_smoothing: The loss's `label_smoothing`. Defaults to `0.0`.

    Returns:
        The floor, a float >= 0 (the mean over examples, as Keras reduces).

    Example:

    >>> round(loss_floor("binary_crossentropy", [[0.5, 1.0]]), 4)  # ln(2) / 2
    0.3466
    >>> loss_floor("categorical_crossentropy", [[0.0, 1.0, 0.0]])
    0.0
    >>> round(loss_floor("categorical_crossentropy", [[0.0, 1.0]], 0.1), 4)
    0.1985
    """
    _check_kind(kind)
    if kind in (SPARSE_CATEGORICAL, MEAN_SQUARED_ERROR):
        return 0.0
    y = _as_float_array(y_true)
    if y.size == 0 or not np.all(np.isfinite(y)):
        return 0.0
    smoothing = float(label_smoothing or 0.0)
    if kind == BINARY:
        if smoothing:
            y = y * (1.0 - smoothing) + 0.5 * smoothing
        terms = _entropy_terms(y) + _entropy_terms(1.0 - y)
        return float(np.mean(terms))
    y = y.reshape(-1, y.shape[-1]) if y.ndim else y.reshape(1, 1)
    if smoothing:
        y = y * (1.0 - smoothing) + smoothing / y.shape[-1]
    return float(np.mean(np.sum(_entropy_terms(y), axis=-1)))


def _log_softmax(z):
    z = z - np.max(z, axis=-1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def _logits(kind, y_pred, from_logits):
    """Logits equivalent to `y_pred` (log-probabilities when it holds probabilities)."""
    y_pred = _as_float_array(y_pred)
    if from_logits:
        return y_pred
    if kind == BINARY:
        p = np.clip(y_pred, _EPSILON, 1.0 - _EPSILON)
        return np.log(p) - np.log1p(-p)
    p = np.clip(y_pred, _EPSILON, None)
    p = p / np.sum(p, axis=-1, keepdims=True)
    return np.log(np.clip(p, _EPSILON, 1.0))


def per_example_loss(kind, y_true, y_pred, from_logits=False) -> np.ndarray:
    """The loss of each example, flattened, as Keras computes it (numpy).

    Args:
        kind: One of `LOSS_KINDS`.
        y_true: Labels: class indices (sparse), one-hot or soft labels
            (categorical), 0/1 targets (binary) or targets (mean squared error).
        y_pred: Predictions, same leading shape.
        from_logits: Whether `y_pred` holds logits. Defaults to `False`.

    Returns:
        A 1-D array with one loss per example (per position for sequences).

    Example:

    >>> per_example_loss("binary_crossentropy", [[1.0]], [[0.0]], from_logits=True)
    array([0.69314718])
    """
    _check_kind(kind)
    y_pred = _as_float_array(y_pred)
    if kind == MEAN_SQUARED_ERROR:
        y_true = _as_float_array(y_true).reshape(y_pred.shape)
        diff = (y_true - y_pred) ** 2
        return np.mean(diff.reshape(len(diff), -1), axis=-1)
    if kind == BINARY:
        y_true = _as_float_array(y_true).reshape(y_pred.shape)
        z = _logits(kind, y_pred, from_logits)
        losses = np.logaddexp(0.0, z) - y_true * z
        return np.mean(losses.reshape(len(losses), -1), axis=-1)
    log_p = _log_softmax(_logits(kind, y_pred, from_logits))
    if kind == SPARSE_CATEGORICAL:
        labels = np.asarray(y_true).reshape(log_p.shape[:-1]).astype(np.int64)
        labels = np.clip(labels, 0, log_p.shape[-1] - 1)
        picked = np.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
        return -picked.reshape(-1)
    y_true = _as_float_array(y_true).reshape(log_p.shape)
    return -np.sum(y_true * log_p, axis=-1).reshape(-1)


def output_spread(kind, y_pred, from_logits=False) -> float:
    """How far the outputs are from the uninformative prediction.

    Returns the mean variance of the logits across classes for the categorical
    cross-entropies, the mean squared logit for binary cross-entropy, and the
    mean squared output for mean squared error: 0 for a network with zero
    output weights.

    Example:

    >>> output_spread("categorical_crossentropy", [[1.0, -1.0]], from_logits=True)
    1.0
    """
    _check_kind(kind)
    y_pred = _as_float_array(y_pred)
    if kind == MEAN_SQUARED_ERROR:
        return float(np.mean(y_pred**2))
    z = _logits(kind, y_pred, from_logits)
    if kind == BINARY:
        return float(np.mean(z**2))
    return float(np.mean(np.var(z, axis=-1)))


def _spread_allowance(kind, spread, y_true, y_pred, spread_cap, from_logits=False):
    """The loss change explained by the measured outputs, capped."""
    if kind == MEAN_SQUARED_ERROR:
        return _mean_squared_error_allowance(spread, y_true, y_pred)
    capped = min(spread, spread_cap)
    if kind == BINARY:
        return _binary_allowance(capped, y_true, _logits(kind, y_pred, from_logits))
    return capped / 2.0


def _binary_allowance(capped, y_true, z):
    """How far logits `z` within the spread cap may move the binary
    cross-entropy from `ln 2`.

    `loss = ln 2 + [mean(softplus(z) - z / 2) - ln 2] + mean(z (1/2 - y))`,
    exactly. The first bracket is the symmetric part, ~`mean(z**2) / 8`,
    allowed up to the cap. The last is the cross term: zero on average over
    initializations, but on real data the outputs correlate with the labels
    by chance, as for the mean squared error (a Glorot MLP on standardized
    breast-cancer features: |corr| up to 0.7, the loss 0.25 to 2.0 against
    ln 2 = 0.69). It is allowed where it moves the loss away from `ln 2`, as
    far as logits within the cap can move it (`|cross| <= sqrt(cap) / 2`,
    since `|1/2 - y| <= 1/2`): larger outputs are what the check reports,
    whether or not they correlate with the labels.
    """
    symmetric = capped / 8.0  # softplus(z) - y z ~ ln 2 + z**2 / 8 on average
    y_true = _as_float_array(y_true)
    if y_true.size != z.size or np.any((y_true < 0) | (y_true > 1)):
        return symmetric  # labels for another loss: said apart
    y_true = y_true.reshape(z.shape)
    limit = 0.5 * float(np.sqrt(capped))
    cross = float(np.clip(np.mean(z * (0.5 - y_true)), -limit, limit))
    measured = float(np.mean(np.logaddexp(0.0, z) - 0.5 * z)) - np.log(2.0)
    return max(symmetric + max(cross, 0.0), -cross - measured)


def _mean_squared_error_allowance(spread, y_true, y_pred):
    """How far the measured outputs `f` may move the loss from `mean(y**2)`.

    `loss = mean(y**2) + mean(f**2) - 2 mean(y f)`, exactly. The output scale
    `mean(f**2)` is allowed up to the labels' own, `mean(y**2)` (the cap:
    larger outputs are what the check reports). The cross term is zero on
    average over initializations, not for one: the outputs are a function of
    the same inputs as the labels, and on real data (correlated features, few
    effective directions) they correlate with the labels by chance (|corr| up
    to ~0.6 for a Glorot MLP on standardized digits), which moves the loss
    as much as the other terms and says nothing about the output scale or the
    labels. So the measured term is allowed for where it moves the loss away
    from `mean(y**2)`: a loss raised by outputs that anti-correlate with the
    labels, or lowered below `mean(y**2)` by outputs that correlate with
    them. Where it brings the loss closer it is not, as before.
    """
    y_pred = _as_float_array(y_pred)
    y_true = _as_float_array(y_true)
    scale = min(spread, float(np.mean(y_true**2)))
    if y_true.size != y_pred.size:  # not one label per output: scale only
        return scale
    y_true = y_true.reshape(y_pred.shape)
    cross = 2.0 * float(np.mean(y_true * y_pred))  # what the correlation takes off
    return max(scale + max(-cross, 0.0), cross - spread)


_ASSUMPTIONS = {
    CATEGORICAL: "a network with small output weights predicts the uniform "
    "distribution over the C classes",
    SPARSE_CATEGORICAL: "a network with small output weights predicts the uniform "
    "distribution over the C classes",
    BINARY: "a network with small output weights predicts probability 0.5",
    MEAN_SQUARED_ERROR: "a network whose outputs are near zero (zero-mean "
    "output); this equals the label variance when the labels are centered",
}


def initial_loss_expectation(
    kind,
    y_true,
    y_pred,
    from_logits=False,
    rtol=0.1,
    spread_cap=SPREAD_CAP,
    output_center=0.0,
) -> InitialLossExpectation:
    """The expected initial loss for these labels and a tolerance for them.

    Args:
        kind: One of `LOSS_KINDS`.
        y_true: The labels of the batch.
        y_pred: The untrained model's predictions on the batch.
        from_logits: Whether `y_pred` holds logits. Defaults to `False`.
        rtol: Relative part of the tolerance. Defaults to `0.1`.
        spread_cap: Largest output spread (logit variance across classes, or
            mean squared logit) still counted as normal for an initialized
            network: unit-variance logits, about what Glorot or He
            initialization gives on standardized inputs. Defaults to `1.0`.
        output_center: For mean squared error, what the output activation
            gives at zero input (0.5 for a sigmoid, 1/C for a softmax): the
            untrained outputs sit near it, not near 0. Defaults to `0.0`.

    Returns:
        An `InitialLossExpectation`.

    Example:

    >>> y = np.eye(4)[[0, 1, 2, 3]]
    >>> check = initial_loss_expectation("categorical_crossentropy", y, y * 0.0, True)
    >>> round(check.expected, 4), round(check.tolerance, 4)
    (1.3863, 0.1386)
    """
    _check_kind(kind)
    y_pred = _as_float_array(y_pred)
    assumption = _ASSUMPTIONS[kind]
    center = float(output_center) if kind == MEAN_SQUARED_ERROR else 0.0
    if center:  # the squared error is the same measured from the center
        y_true, y_pred = _as_float_array(y_true) - center, y_pred - center
        assumption = (
            f"a network whose outputs sit near {center:.3g}, what its output "
            "activation gives at zero input"
        )
    num_classes = None
    if kind in (CATEGORICAL, SPARSE_CATEGORICAL):
        num_classes = int(y_pred.shape[-1]) if y_pred.ndim else 1
    expected = expected_initial_loss(kind, num_classes=num_classes, y_true=y_true)
    losses = per_example_loss(kind, y_true, y_pred, from_logits)
    noise = 0.0
    if losses.size > 1:
        noise = 2.0 * float(np.std(losses)) / np.sqrt(losses.size)
    spread = output_spread(kind, y_pred, from_logits)
    allowance = _spread_allowance(kind, spread, y_true, y_pred, spread_cap, from_logits)
    relative = rtol * abs(expected)
    return InitialLossExpectation(
        kind=kind,
        expected=expected,
        tolerance=float(relative + noise + allowance),
        relative=float(relative),
        noise=float(noise),
        spread_allowance=float(allowance),
        output_spread=float(spread),
        num_classes=num_classes,
        assumption=assumption,
        output_center=center,
    )


def label_problems(kind, y_true, num_classes=None) -> list[str]:
    """Label encodings that do not fit the loss, in words (empty if none).

    Args:
        kind: One of `LOSS_KINDS`.
        y_true: The labels.
        num_classes: `C`, the model's last output dimension (cross-entropies).
            Defaults to `None` (not checked).

    Returns:
        A list of sentences, one per problem.

    Example:

    >>> label_problems("sparse_categorical_crossentropy", np.eye(3), 3)[0][:40]
    'The labels look one-hot (shape (3, 3), r'
    >>> label_problems("binary_crossentropy", [-1.0, 1.0])[0][:38]
    'Binary cross-entropy needs labels in ['
    """
    _check_kind(kind)
    y = np.asarray(y_true)
    problems = []
    if kind == SPARSE_CATEGORICAL:
        if num_classes and y.ndim >= 2 and y.shape[-1] == num_classes > 1:
            rows = y.reshape(-1, num_classes).astype(np.float64)
            if np.all((rows == 0) | (rows == 1)) and np.allclose(rows.sum(-1), 1):
                problems.append(
                    f"The labels look one-hot (shape {y.shape}, rows of 0/1 summing "
                    "to 1) but the loss is sparse_categorical_crossentropy, which "
                    "expects class indices: use categorical_crossentropy, or pass "
                    "`np.argmax(y, axis=-1)`."
                )
                return problems
        values = y.astype(np.float64)
        if not np.all(values == np.round(values)):
            problems.append(
                "sparse_categorical_crossentropy expects integer class indices, "
                "but the labels hold fractions."
            )
        elif num_classes and (values.min() < 0 or values.max() >= num_classes):
            problems.append(
                f"The labels range over [{values.min():g}, {values.max():g}] but "
                f"the model has {num_classes} outputs: class indices must lie in "
                f"[0, {num_classes - 1}] (labels starting at 1, or a wrong number "
                "of output units?)."
            )
    elif kind == CATEGORICAL:
        if num_classes and (y.ndim < 2 or y.shape[-1] != num_classes):
            problems.append(
                f"categorical_crossentropy expects one-hot labels of width "
                f"{num_classes}, but the labels have shape {y.shape}: pass class "
                "indices to sparse_categorical_crossentropy instead, or one-hot "
                "encode them (`keras.utils.to_categorical`)."
            )
            return problems
        values = y.astype(np.float64)
        rows = values.reshape(-1, num_classes) if num_classes else values
        several = int(np.sum(np.sum(rows == 1, axis=-1) >= 2))
        if several and np.all((rows == 0) | (rows == 1)):
            problems.append(
                f"{several} of the {len(rows)} label rows hold several 1s "
                f"(up to {int(rows.sum(-1).max())}): the labels are multi-label, "
                "but categorical_crossentropy (with a softmax) makes the classes "
                "share one unit of probability, so no example can be given all "
                "of its labels. Use a sigmoid output (one unit per label) with "
                "binary_crossentropy, which judges each label on its own."
            )
        elif values.min() < 0 or not np.allclose(values.sum(-1), 1.0, atol=1e-3):
            problems.append(
                "categorical_crossentropy expects each label row to be a "
                "distribution (non-negative, summing to 1), but some rows are not."
            )
    elif kind == BINARY:
        values = y.astype(np.float64)
        if values.size and (values.min() < 0 or values.max() > 1):
            problems.append(
                "Binary cross-entropy needs labels in [0, 1], but they range over "
                f"[{values.min():g}, {values.max():g}] (labels coded -1/+1?)."
            )
    return problems


# Logits at least this often exactly 0, and never negative, come from a ReLU.
_CUT_LOGITS_SHARE = 0.2


def output_problems(kind, y_pred, from_logits) -> list[str]:
    """Outputs that contradict the loss's `from_logits` setting (empty if none).

    A softmax output treated as logits gives a loss of almost exactly `ln(C)`
    at initialization, so the loss value alone cannot reveal it: the outputs
    are inspected instead.

    Example:

    >>> p = np.full((8, 4), 0.25)
    >>> label = output_problems("categorical_crossentropy", p, from_logits=True)
    >>> label[0][:44]
    'The outputs look like probabilities (each ro'
    >>> z = np.maximum(np.linspace(-1.0, 1.0, 40).reshape(8, 5), 0.0)  # a ReLU
    >>> output_problems("sparse_categorical_crossentropy", z, True)[0][:45]
    'The logits are never negative and 50% of them'
    """
    _check_kind(kind)
    if kind == MEAN_SQUARED_ERROR:
        return []
    y = _as_float_array(y_pred)
    if y.ndim >= 2:  # nan outputs say nothing about `from_logits`
        y = y[np.all(np.isfinite(y.reshape(len(y), -1)), axis=1)]
    else:
        y = y[np.isfinite(y)]
    if y.size == 0:
        return []
    in_unit = bool(np.all((y >= 0.0) & (y <= 1.0)))
    problems = []
    if from_logits:
        if kind in (CATEGORICAL, SPARSE_CATEGORICAL) and y.shape[-1] > 1:
            sums = np.sum(y, axis=-1)
            if in_unit and np.allclose(sums, 1.0, atol=1e-3):
                problems.append(
                    "The outputs look like probabilities (each row is non-negative "
                    "and sums to 1: a softmax output) but the loss has "
                    "from_logits=True, so it applies a second softmax: drop the "
                    "output activation or set from_logits=False."
                )
        elif kind == BINARY and in_unit and y.size >= 16:
            problems.append(
                "Every output lies in [0, 1] (a sigmoid output) but the loss has "
                "from_logits=True, so it applies a second sigmoid: drop the output "
                "activation or set from_logits=False."
            )
        if not problems and y.size >= 16 and np.all(y >= 0.0):
            zeros = float(np.mean(y == 0.0))
            if zeros >= _CUT_LOGITS_SHARE:
                problems.append(
                    f"The logits are never negative and {zeros:.0%} of them are "
                    "exactly 0: the output layer ends in a ReLU (or another "
                    "activation cut at zero), so no class can be scored below "
                    "the zero of the others and a logit stuck at 0 gets no "
                    "gradient. Give the last layer no activation "
                    "(`activation=None`) for from_logits=True."
                )
    elif not in_unit:
        problems.append(
            f"The outputs range over [{y.min():.3g}, {y.max():.3g}], outside [0, 1], "
            "but the loss has from_logits=False and treats them as probabilities: "
            "add a softmax/sigmoid output activation or set from_logits=True."
        )
    return problems
