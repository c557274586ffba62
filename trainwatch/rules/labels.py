"""Rule: classification labels that all name one class.

Labels built wrong (a one-hot of a constant, `np.zeros_like(y)`, labels
overwritten in a loop) often end up naming a single class. The network then
learns to output that class whatever its input: the training loss falls to
zero and the training accuracy reaches 1, so the loss curve looks like a
success, while nothing about the inputs is learned. Judged on the examples the
sanity check is given (the probe), before training.

Pure function: numpy arrays in, one `Finding` or `None` out.

Example:

>>> single_class_labels(np.zeros(64), "sparse_categorical_crossentropy", 10).code
'labels_single_class'
>>> single_class_labels(np.arange(64) % 10, "sparse_categorical_crossentropy", 10)
"""

from __future__ import annotations

import numpy as np

from trainwatch.findings import Finding
from trainwatch.numerics import expected_loss as el

__all__ = ["ROWS_ADVICE", "label_rows_not_distributions", "single_class_labels"]

ADVICE = (
    "Check how the labels were made: a one-hot of a constant or of the wrong "
    "array, `np.zeros_like(y)`, an argmax along the wrong axis, labels "
    "overwritten in a loop. If the data are sorted by class, shuffle them "
    "before `fit` (`validation_split` takes the last examples, all of the "
    "last classes) and draw the probe from all classes."
)


def _classes(y_true, kind, num_classes):
    """One class index per example, or `None` where the labels are not one
    label per example in the loss's encoding."""
    y = np.asarray(y_true)
    if kind == el.SPARSE_CATEGORICAL:
        if y.ndim == 2 and y.shape[-1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.number):
            return None
        return y
    if y.ndim != 2 or y.shape[-1] != num_classes:
        return None
    return np.argmax(y, axis=-1)


def single_class_labels(
    y_true, kind, num_classes, min_examples=32, min_classes=3
) -> Finding | None:
    """`labels_single_class` when every label names the same class.

    Binary and two-class problems are left alone: a rare positive class (1% of
    the data) is often absent from a few dozen examples. With `min_classes`
    or more classes and `min_examples` examples, one class holding them all
    takes labels built wrong, or data sorted by class.

    Args:
        y_true: The labels of some training examples: class indices for
            `sparse_categorical_crossentropy`, one-hot (or soft) rows for
            `categorical_crossentropy`.
        kind: The loss's kind, `"sparse_categorical_crossentropy"` or
            `"categorical_crossentropy"` (others are not judged).
        num_classes: The model's number of outputs (classes).
        min_examples: Fewest labels judged. Defaults to `32`.
        min_classes: Fewest classes judged. Defaults to `3`.

    Returns:
        A `labels_single_class` warning, or `None`.

    Example:

    >>> y = np.tile(np.eye(5)[2], (40, 1))
    >>> print(single_class_labels(y, "categorical_crossentropy", 5).message[:44])
    All 40 labels checked are class 2 (of the mo
    """
    if kind not in (el.SPARSE_CATEGORICAL, el.CATEGORICAL) or not num_classes:
        return None
    if num_classes < min_classes:
        return None
    classes = _classes(y_true, kind, num_classes)
    if classes is None or classes.size < min_examples:
        return None
    first = classes[0]
    if not np.all(classes == first):
        return None
    label = f"{float(first):g}"
    return Finding(
        "labels_single_class",
        "warning",
        f"All {classes.size} labels checked are class {label} (of the model's "
        f"{num_classes} classes, {kind}). Trained on such labels, a network "
        f"learns to answer class {label} whatever the input: the training loss "
        "falls to near zero and the training accuracy reaches 1 while nothing "
        "about the inputs is learned (the validation accuracy stays at that "
        "class's share).",
        ADVICE,
    )


ROWS_ADVICE = (
    "Fix the labels, not the layer: one 1 per row for classes that exclude "
    "each other (`keras.utils.to_categorical`); for rows with several 1s "
    "(multi-label), a sigmoid output with binary_crossentropy; for one 0/1 "
    "label per example, one sigmoid unit with binary_crossentropy."
)


def label_rows_not_distributions(y_true, kind) -> str | None:
    """Why a gradient check finds categorical cross-entropy's gradient wrong.

    `categorical_crossentropy` takes each label row for a distribution. A
    fused softmax cross-entropy (TensorFlow's, which Keras uses behind a
    softmax or sigmoid output) computes its gradient as `softmax - y`, true
    only for rows that sum to 1: for multi-label rows or a single 0/1 column
    the gradient that trains the model is not that of the loss (the digits
    MLP with up to three 1s a row: relative error 1.2, and the training loss
    rose to 33 instead of falling to 1.5 as on JAX).

    Args:
        y_true: The labels the gradient was checked on.
        kind: The loss's kind (`trainwatch.numerics.expected_loss.LOSS_KINDS`).

    Returns:
        A sentence naming the label rows that do not sum to 1, or `None` for
        other losses and for labels whose rows are distributions.

    Example:

    >>> label_rows_not_distributions(np.array([[1, 1, 0], [0, 1, 0]]),
    ...                              "categorical_crossentropy")[:40]
    '1 of the 2 label rows do not sum to 1 (s'
    """
    if kind != el.CATEGORICAL:
        return None
    y = np.asarray(y_true, dtype=np.float64)
    if y.ndim < 2 or y.size == 0:
        return None
    rows = y.reshape(-1, y.shape[-1])
    sums = rows.sum(axis=-1)
    off = ~np.isclose(sums, 1.0, atol=1e-3) | np.any(rows < 0, axis=-1)
    if not np.any(off):
        return None
    return (
        f"{int(off.sum())} of the {len(rows)} label rows do not sum to 1 (sums "
        f"from {sums.min():.3g} to {sums.max():.3g}), which "
        "categorical_crossentropy assumes: a fused softmax cross-entropy "
        "(TensorFlow's, behind a softmax or sigmoid output) computes its "
        "gradient as if each row summed to 1, so the gradient that trains the "
        "model is not the gradient of this loss. The labels are wrong, not the "
        "layer's backward pass."
    )
