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
    # float32 finite differences resolve ~1e-2 and no better: a correct model
    # checked in float32 showed errors up to 9e-3 within its own estimate, and
    # its estimate can fall short (7e-3 "beyond" it on PyTorch). So mismatches
    # below 3e-2 pass, and "wrong" starts at 1e-1, well below the 0.5 of a
    # gradient off by a factor 2.
    "float32": Thresholds(wrong=1e-1, suspicious=3e-2, precise=1e-2, significance=3.0),
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


def confirm_verdict(verdict, reason, error, estimated_error, smaller):
    """Keeps a mismatch found at step `h` only if a smaller step confirms it.

    A wrong gradient is wrong at every step: measured again at a smaller step,
    the mismatch `numeric − analytic` stays about the same. A mismatch made by
    the step (a kink within `h` of the point, curvature beyond the truncation
    estimate) shrinks or changes. So a `"wrong"` or `"suspicious"` line stays
    so only when the mismatch at the smaller step has the same sign and at
    least half the size, and both agree within their error estimates;
    otherwise it is inconclusive.

    Args:
        verdict: The line's verdict at step `h`.
        reason: Its reason.
        error: Its mismatch, `numeric − analytic`.
        estimated_error: Its absolute error estimate.
        smaller: `(error, estimated_error)` of the same line at the smaller
            step.

    Returns:
        `(verdict, reason)`.

    Example:

    >>> confirm_verdict("wrong", "r", 1.0, 1e-3, (0.9999, 8e-3))
    ('wrong', 'r')
    >>> confirm_verdict("wrong", "r", 0.2, 1e-3, (0.001, 8e-3))
    ('inconclusive', 'kink crossed (the mismatch changes with the step)')
    >>> confirm_verdict("wrong", "r", -0.07, 0.01, (0.04, 0.07))[0]
    'inconclusive'

    """
    if verdict not in ("wrong", "suspicious"):
        return verdict, reason
    small_error, small_estimated = smaller
    values = (error, estimated_error, small_error, small_estimated)
    if not all(np.isfinite(v) for v in values):
        return verdict, reason
    persists = small_error / error >= 0.5 if error else False
    agree = abs(error - small_error) <= 3.0 * (estimated_error + small_estimated)
    if persists and agree:
        return verdict, reason
    return "inconclusive", "kink crossed (the mismatch changes with the step)"


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
