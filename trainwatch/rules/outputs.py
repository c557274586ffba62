"""Rule: a softmax output over a single unit.

Softmax normalizes over the last axis, so over one unit it returns
`exp(z) / exp(z) = 1` for every input and every weight: the model's
predictions never change. Written for a binary task as `Dense(1,
activation="softmax")` (where a sigmoid was meant), it fails differently per
backend and loss, which hides the cause: under `binary_crossentropy` the loss
stays at the clipping's ~8 on JAX and PyTorch (the examples labelled 0 cost
`-ln(1e-7)` each and pass no gradient), while on TensorFlow Keras computes the
loss from the softmax's input, so the loss falls and only the accuracy, stuck
at the positive class's share, shows that nothing is predicted; the
categorical cross-entropies are 0 from the start. Only the structure says
what is wrong, so it is judged from the output layer's activation and width.

Pure function: names and numbers in, one `Finding` or `None` out.

Example:

>>> softmax_single_unit("softmax", 1, "binary_crossentropy").code
'softmax_single_unit'
>>> softmax_single_unit("sigmoid", 1, "binary_crossentropy") is None
True
"""

from __future__ import annotations

import numpy as np

from trainwatch.findings import Finding

__all__ = ["softmax_single_unit"]

ADVICE = (
    "For two classes use one unit with a sigmoid (`Dense(1, "
    'activation="sigmoid")`) and binary_crossentropy with 0/1 labels, or two '
    'units with a softmax (`Dense(2, activation="softmax")`) and '
    "sparse_categorical_crossentropy; for C classes, C units with a softmax."
)


def softmax_single_unit(
    activation, units, loss_name, y_pred=None, where=None
) -> Finding | None:
    """`softmax_single_unit` when the output is a softmax over one unit.

    Args:
        activation: Name of the output layer's activation (`"softmax"`, …),
            or `None`.
        units: The output's last dimension (its number of units).
        loss_name: The loss's name, for the message.
        y_pred: What the model outputs on some examples, or `None`: said in
            the message when given. Defaults to `None`.
        where: The output layer's path. Defaults to `None`.

    Returns:
        A `softmax_single_unit` error, or `None` for any other output.

    Example:

    >>> f = softmax_single_unit("softmax", 1, "mse", np.ones((8, 1)), "seq/out")
    >>> f.severity, f.where
    ('error', 'seq/out')
    """
    if activation != "softmax" or units != 1:
        return None
    seen = ""
    if y_pred is not None:
        outputs = np.asarray(y_pred, dtype=np.float64).reshape(-1)
        outputs = outputs[np.isfinite(outputs)]
        if outputs.size:
            low, high = float(outputs.min()), float(outputs.max())
            span = f"{low:.6g}" if low == high else f"[{low:.6g}, {high:.6g}]"
            seen = f" (all {outputs.size} outputs checked are {span})"
    return Finding(
        "softmax_single_unit",
        "error",
        "The output layer applies softmax over a last axis of a single unit: "
        "softmax normalizes over that axis, so it outputs exactly 1 for every "
        f"example whatever the weights{seen}. The model cannot learn to "
        f"predict anything under {loss_name}: the predictions (and the "
        "accuracy) stay where they are, while the loss stays flat or, on "
        "TensorFlow, where Keras computes it from the softmax's input, falls "
        "as if training worked.",
        ADVICE,
        where=where,
    )
