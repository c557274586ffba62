"""Relative errors of gradients, the usual bands, and verdicts from self-estimates.

The CS231n bands for `|a − n| / max(|a|, |n|)` are a starting point: above
1e-2 the gradient is wrong, 1e-4…1e-2 suspicious, below 1e-4 acceptable with
kinks, 1e-7 and below good. A fixed band, though, cannot tell a correct
gradient measured imprecisely from a slightly wrong one measured precisely. So
a verdict here comes first from the error the finite difference estimates for
itself (round-off + truncation, see `finite_differences`): a mismatch within a
few times that estimate is not evidence of a bug, and a mismatch far beyond it
is judged by the bands. In float64 this catches a 0.1% error in a gradient.

Verdicts: `"ok"`, `"suspicious"`, `"wrong"`, `"inconclusive"` (a kink crossed,
a non-finite loss, or a measurement too imprecise to say).

Example:

>>> judge_line(analytic=1.001, numeric=1.0, error=-1e-3, estimated_error=1e-9,
...            kink=False, kink_explained=False, thresholds=THRESHOLDS["float64"])
('wrong', 'mismatch beyond the numerical error')
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

VERDICTS = ("ok", "suspicious", "wrong", "inconclusive")


class Thresholds(NamedTuple):
    """Relative-error limits of one working precision.

    Attributes:
        wrong: A significant mismatch at or above this is `"wrong"`.
        suspicious: A significant mismatch at or above this (and below
            `wrong`) is `"suspicious"`; below it `"ok"` (too small to matter).
        precise: A line whose own relative error estimate is above this cannot
            confirm a gradient: `"inconclusive"` unless it found a mismatch.
        significance: A mismatch counts when it exceeds this many times the
            estimated numerical error.
    """

    wrong: float
    suspicious: float
    precise: float
    significance: float


THRESHOLDS = {
    # True float64 reaches ~1e-9 on smooth models: a significant 1e-4 mismatch
    # is a bug (a 0.1% error in one variable is caught), 1e-7 worth a look.
    "float64": Thresholds(wrong=1e-4, suspicious=1e-7, precise=3e-5, significance=3.0),
    # float32 finite differences reach ~1e-4 at best: the CS231n bands.
    "float32": Thresholds(wrong=1e-2, suspicious=1e-4, precise=5e-3, significance=3.0),
}


def relative_error(analytic, numeric):
    """Elementwise `|a − n| / max(|a|, |n|)`; 0 where both are zero.

    Args:
        analytic: Analytic gradient values (array-like).
        numeric: Numerical gradient values, same shape.

    Returns:
        A float array (or float for scalars) in [0, 2]; NaN where an input is
        not finite.

    Example:

    >>> relative_error([1.0, 0.0, 2.0], [1.0 + 1e-9, 0.0, -2.0]).round(9).tolist()
    [1e-09, 0.0, 2.0]
    """
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    scale = np.maximum(np.abs(a), np.abs(n))
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.where(scale > 0, np.abs(a - n) / np.where(scale > 0, scale, 1), 0.0)
    error = np.where(np.isfinite(a) & np.isfinite(n), error, np.nan)
    return float(error) if error.ndim == 0 else error


def vector_relative_error(analytic, numeric):
    """`‖a − n‖ / (‖a‖ + ‖n‖)` over whole arrays; 0 when both are zero.

    Example:

    >>> vector_relative_error([3.0, 4.0], [3.0, 4.0])
    0.0
    >>> round(vector_relative_error([1.0, 0.0], [0.0, 1.0]), 6)
    0.707107
    """
    a = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    if a.shape != n.shape:
        raise ValueError(
            "Expected arrays of the same size. "
            f"Received: analytic.size={a.size}, numeric.size={n.size}"
        )
    denominator = float(np.linalg.norm(a) + np.linalg.norm(n))
    if denominator == 0.0:
        return 0.0
    return float(np.linalg.norm(a - n) / denominator)


def band(error) -> str:
    """The CS231n band of a relative error: good, acceptable, suspicious, wrong.

    `≤ 1e-7` good; `< 1e-4` acceptable (with kinks); `1e-4…1e-2` suspicious;
    `> 1e-2` wrong. Non-finite errors are `"wrong"`.

    Example:

    >>> [band(e) for e in (1e-9, 1e-5, 1e-3, 0.5)]
    ['good', 'acceptable', 'suspicious', 'wrong']
    """
    error = float(error)
    if not np.isfinite(error) or error > 1e-2:
        return "wrong"
    if error >= 1e-4:
        return "suspicious"
    if error > 1e-7:
        return "acceptable"
    return "good"


def judge_line(
    analytic,
    numeric,
    error,
    estimated_error,
    kink,
    kink_explained,
    thresholds: Thresholds,
):
    """Verdict on one finite-difference line (one coordinate or one direction).

    Args:
        analytic: Analytic slope (gradient component, or `g·d`).
        numeric: Centered-difference slope.
        error: `numeric − analytic` as measured (may differ from the difference
            of the two by the rounding of the applied step).
        estimated_error: The line's own absolute error estimate (round-off +
            truncation).
        kink: Whether the line crossed a kink.
        kink_explained: Whether that kink can account for the mismatch.
        thresholds: The working precision's `Thresholds`.

    Returns:
        `(verdict, reason)`: a verdict from `VERDICTS` and a few words why.

    Example:

    >>> t = THRESHOLDS["float64"]
    >>> judge_line(0.0, 0.0, 0.0, 0.0, False, False, t)
    ('ok', 'both zero')
    >>> judge_line(1.0, 0.5, -0.5, 1e-9, True, True, t)
    ('inconclusive', 'kink crossed')
    >>> judge_line(1e-12, 3e-12, 2e-12, 1e-11, False, False, t)
    ('inconclusive', 'too imprecise')
    """
    values = (analytic, numeric, error, estimated_error)
    if not all(np.isfinite(v) for v in values):
        return "inconclusive", "non-finite loss or gradient"
    scale = max(abs(analytic), abs(numeric))
    if scale == 0.0:
        return "ok", "both zero"
    relative = abs(error) / scale
    significant = abs(error) > thresholds.significance * estimated_error
    if significant:
        if kink and kink_explained:
            return "inconclusive", "kink crossed"
        if relative >= thresholds.wrong:
            return "wrong", "mismatch beyond the numerical error"
        if relative >= thresholds.suspicious:
            return "suspicious", "small mismatch beyond the numerical error"
        return "ok", "mismatch negligible"
    if estimated_error / scale > thresholds.precise:
        return "inconclusive", "kink crossed" if kink else "too imprecise"
    return "ok", "within the numerical error"


def combine_verdicts(verdicts) -> str:
    """One verdict from several: wrong > suspicious > ok > inconclusive.

    A single wrong line makes the whole wrong; lines that could not judge
    (inconclusive) count only when nothing else could.

    Example:

    >>> combine_verdicts(["ok", "inconclusive", "ok"])
    'ok'
    >>> combine_verdicts(["ok", "wrong"])
    'wrong'
    >>> combine_verdicts(["inconclusive"])
    'inconclusive'
    """
    verdicts = list(verdicts)
    for candidate in ("wrong", "suspicious", "ok"):
        if candidate in verdicts:
            return candidate
    return "inconclusive"
