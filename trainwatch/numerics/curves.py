"""Loss-curve statistics: batch losses from running means, trend and noise.

Keras's `logs["loss"]` in a batch hook is the running mean of the loss since the
epoch began, weighted by batch size. The loss of the batches between two hooks
is recovered exactly from two consecutive running means (for equal batch
sizes): with `k` batches seen and running mean `m_k`,
`L = (k * m_k - j * m_j) / (k - j)` is the mean loss of batches `j+1 … k`, and
with `j = k - 1` the loss of batch `k` itself.

Numpy only; no Keras.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = [
    "Trend",
    "batch_losses",
    "linear_trend",
    "log10_or_none",
    "window_mean_loss",
]


def window_mean_loss(count_before, mean_before, count_after, mean_after):
    """The mean loss of the batches between two running means.

    Args:
        count_before: Batches seen in the epoch at the earlier hook (0 at the
            epoch's start, where `mean_before` is ignored).
        mean_before: Running mean of the loss at the earlier hook.
        count_after: Batches seen at the later hook, `> count_before`.
        mean_after: Running mean of the loss at the later hook.

    Returns:
        The mean loss of batches `count_before + 1 … count_after` as a float:
        the loss of that one batch when `count_after == count_before + 1`.
        Exact when those batches have equal sizes (Keras weights the running
        mean by batch size); the float32 running means limit the precision to
        about `count_after * |mean_after| * 1e-7`.

    Raises:
        ValueError: If `count_after <= count_before` or `count_before < 0`.

    Example:

    >>> losses = [2.0, 1.0, 0.5]
    >>> means = [sum(losses[:k]) / k for k in (1, 2, 3)]
    >>> window_mean_loss(2, means[1], 3, means[2])
    0.5
    >>> window_mean_loss(0, 0.0, 1, means[0])
    2.0
    """
    if count_before < 0 or count_after <= count_before:
        raise ValueError(
            "Expected 0 <= count_before < count_after. "
            f"Received: count_before={count_before}, count_after={count_after}"
        )
    total_after = float(count_after) * float(mean_after)
    total_before = float(count_before) * float(mean_before) if count_before else 0.0
    return (total_after - total_before) / float(count_after - count_before)


def batch_losses(count_before, mean_before, means):
    """The loss of each batch of a run of consecutive running means.

    `window_mean_loss` for each pair of neighbours, at once: the same float64
    arithmetic, so the same numbers.

    Args:
        count_before: Batches seen in the epoch before the first mean.
        mean_before: Running mean after `count_before` batches (ignored when
            `count_before` is 0).
        means: Running means after `count_before + 1`, `count_before + 2`, …
            batches.

    Returns:
        A list of floats: the loss of batches `count_before + 1`, …
        themselves.

    Example:

    >>> losses = [2.0, 1.0, 0.5]
    >>> means = [sum(losses[:k]) / k for k in (1, 2, 3)]
    >>> batch_losses(1, means[0], means[1:])
    [1.0, 0.5]
    """
    # Plain Python floats (float64): during a JAX `fit` each numpy call on
    # the main thread hands the GIL to waiting threads, ~10 µs apiece.
    previous = float(count_before) * float(mean_before) if count_before else 0.0
    losses = []
    for count, mean in enumerate(means, start=count_before + 1):
        total = float(count) * float(mean)
        losses.append(total - previous)
        previous = total
    return losses


def log10_or_none(value):
    """`log10(value)` for a finite positive value, else `None`.

    Example:

    >>> log10_or_none(1e-3), log10_or_none(0.0), log10_or_none(float("nan"))
    (-3.0, None, None)
    """
    value = float(value)
    if math.isfinite(value) and value > 0.0:
        return math.log10(value)
    return None


class Trend(NamedTuple):
    """A straight-line fit `level + slope * (x - x_mean)` and the scatter about it.

    Attributes:
        level: Mean of the values (the line at the mean of `x`).
        slope: Change per unit of `x`.
        change: Change of the line over the whole span of `x` (signed).
        noise: Standard deviation of the residuals about the line.
        count: Number of finite points used.
    """

    level: float
    slope: float
    change: float
    noise: float
    count: int


def linear_trend(values, x=None) -> Trend:
    """Least-squares line through `values` and the spread of the residuals.

    Non-finite values are left out.

    Args:
        values: 1-D sequence of numbers (e.g. per-batch losses).
        x: Positions of the values (e.g. steps). Defaults to `0, 1, 2, …`.

    Returns:
        A `Trend`; with fewer than two finite points, `slope`, `change` and
        `noise` are 0.

    Raises:
        ValueError: If `x` and `values` have different lengths.

    Example:

    >>> t = linear_trend([3.0, 2.0, 1.0, 0.0])
    >>> t.level, t.slope, t.change, t.noise
    (1.5, -1.0, -3.0, 0.0)
    """
    y = np.asarray(values, dtype=np.float64).ravel()
    x = np.arange(y.size, dtype=np.float64) if x is None else np.asarray(x, float)
    x = x.ravel()
    if x.size != y.size:
        raise ValueError(
            "Expected `x` and `values` of the same length. "
            f"Received: len(x)={x.size}, len(values)={y.size}"
        )
    keep = np.isfinite(y) & np.isfinite(x)
    x, y = x[keep], y[keep]
    if y.size == 0:
        return Trend(math.nan, 0.0, 0.0, 0.0, 0)
    level = float(y.mean())
    if y.size < 2 or float(np.ptp(x)) == 0.0:
        return Trend(level, 0.0, 0.0, float(y.std()), int(y.size))
    xc = x - x.mean()
    slope = float(np.dot(xc, y - level) / np.dot(xc, xc))
    residuals = y - level - slope * xc
    noise = float(np.sqrt(np.mean(residuals**2)))
    return Trend(level, slope, slope * float(np.ptp(x)), noise, int(y.size))
