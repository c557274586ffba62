"""Centered differences along a line, with their own error estimate and kink test.

A gradient check compares an analytic gradient `g` with finite differences of
the loss `f`. This module does the finite-difference half, in numpy only. It
looks at `f` along one line through `θ`, `φ(t) = f(θ + t·d)` (a coordinate
axis or a random direction), sampled at the five points `t = -2h, -h, 0, h, 2h`,
and returns:

* the centered difference `(φ(h) − φ(−h)) / 2h`, whose error is O(h²);
* an estimate of its truncation error, from a Richardson comparison with the
  centered difference at step `2h` (four times the O(h²) term);
* the fourth difference `φ(−2h) − 4φ(−h) + 6φ(0) − 4φ(h) + φ(2h)`. On a smooth
  function it is O(h⁴), i.e. pure round-off for the small steps we use, which
  makes it a measurement of the noise in the computed loss. At a kink (ReLU,
  max-pool, hinge, max) it is O(jump·h): far above the noise. The same number
  is the disagreement of the one-sided slopes `(φ(h) − φ(0))/h` and
  `(φ(0) − φ(−h))/h` beyond the smooth O(h) term predicted from step `2h`.

The analytic side enters as "linear predictions" `g·p` of `φ(t) − φ(0)` for the
perturbations `p` actually applied (after rounding `θ + t·d` to the working
dtype), so that the checked quantity is the residual `φ(t) − φ(0) − g·p`, which
is O(t²) when `g` is right, whatever rounding did to the steps.

Example:

>>> import numpy as np
>>> f = lambda x: float(np.sin(x).sum())
>>> x = np.array([0.3, -1.2])
>>> g = np.cos(x)
>>> d = np.array([1.0, 0.0])
>>> h = 1e-5
>>> values = [f(x + t * h * d) for t in OFFSETS]
>>> linear = [g @ (t * h * d) for t in OFFSETS]
>>> line = analyze_line(values, linear, h)
>>> bool(abs(line.error) < 1e-9)
True
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

OFFSETS = (-2, -1, 0, 1, 2)
"""Multiples of the step at which a line is sampled."""

_CENTER = 2
# Standard deviation of a fourth difference of independent unit-variance noise
# in the five values: sqrt(1 + 16 + 36 + 16 + 1).
_FOURTH_DIFFERENCE_NOISE = float(np.sqrt(70.0))
_MEDIAN_OF_ABS_NORMAL = 0.6744897501960817


class LineEstimate(NamedTuple):
    """Finite differences of `φ(t) = f(θ + t·d)` and what they say about `g·d`.

    All slopes are per unit of `t` (nominal step `step`).

    Attributes:
        analytic: The analytic slope `g·d` (from the linear predictions).
        numeric: The centered difference `(φ(h) − φ(−h)) / 2h`.
        error: `numeric − analytic` at step `h`.
        error_2h: The same at step `2h`; for a smooth `f` its O(h²) part is
            four times that of `error`.
        truncation: Estimated truncation error of `numeric`,
            `|error_2h − error| / 3` (Richardson).
        fourth_difference: `Σ w_j r_j` with weights (1, −4, 6, −4, 1) over the
            residuals `r_j = φ(t_j) − φ(0) − g·p_j`: round-off on a smooth
            function, O(jump·h) at a kink.
        one_sided: The four one-sided residual slopes `(r(h)/h, −r(−h)/h,
            r(2h)/2h, −r(−2h)/2h)` (see `kink_explains`).
        step: The nominal step `h`.
        finite: Whether every sampled value was finite.
    """

    analytic: float
    numeric: float
    error: float
    error_2h: float
    truncation: float
    fourth_difference: float
    one_sided: tuple
    step: float
    finite: bool


def centered_difference(f, x, step, direction=None):
    """The centered difference `(f(x + h·d) − f(x − h·d)) / 2h`.

    Args:
        f: Scalar function of a numpy array.
        x: Point, a numpy array.
        step: The step `h`.
        direction: Direction `d`, same shape as `x`. Defaults to `None`, which
            means every coordinate: the result is then the full numerical
            gradient, one centered difference per coordinate.

    Returns:
        A float (a direction was given) or an array shaped like `x`.

    Example:

    >>> import numpy as np
    >>> centered_difference(lambda v: float((v**2).sum()), np.array([1.0, -2.0]), 1e-4)
    array([ 2., -4.])
    """
    x = np.asarray(x, dtype=np.float64)
    if step <= 0 or not np.isfinite(step):
        raise ValueError(f"Expected a positive finite step. Received: step={step}")
    if direction is not None:
        d = np.asarray(direction, dtype=np.float64)
        return (f(x + step * d) - f(x - step * d)) / (2 * step)
    gradient = np.zeros_like(x)
    flat = gradient.reshape(-1)
    for index in range(x.size):
        d = np.zeros(x.size)
        d[index] = 1.0
        d = d.reshape(x.shape)
        flat[index] = (f(x + step * d) - f(x - step * d)) / (2 * step)
    return gradient


def choose_step(values, relative_step, min_scale):
    """A finite-difference step scaled to a variable's magnitude.

    `h = relative_step · max(rms(values), min_scale)`: a relative change of
    `relative_step` in the variable, but never less than `relative_step ·
    min_scale` (a variable initialised to zeros, like a bias, still gets a
    usable step).

    Args:
        values: The variable's values.
        relative_step: Step relative to the variable's root-mean-square value
            (about 1e-6 in float64, 1e-2 in float32).
        min_scale: Smallest magnitude assumed for the variable.

    Returns:
        The step, a positive float.

    Example:

    >>> import numpy as np
    >>> choose_step(np.full(4, 3.0), 1e-6, 1.0)
    3e-06
    >>> choose_step(np.zeros(4), 1e-6, 0.5)
    5e-07
    """
    if relative_step <= 0 or not np.isfinite(relative_step):
        raise ValueError(
            "Expected a positive finite relative step. "
            f"Received: relative_step={relative_step}"
        )
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    rms = float(np.sqrt(np.mean(finite**2))) if finite.size else 0.0
    return float(relative_step * max(rms, min_scale))


def analyze_line(values, linear, step) -> LineEstimate:
    """Centered differences, error estimates and kink statistics on one line.

    Args:
        values: `φ` at `t = -2h, -h, 0, h, 2h` (five floats, order of `OFFSETS`).
        linear: The analytic predictions `g·p_j` of `φ(t_j) − φ(0)` for the
            perturbations `p_j` actually applied (five floats; the middle one
            is 0).
        step: The nominal step `h`.

    Returns:
        A `LineEstimate`.

    Example:

    >>> import numpy as np
    >>> h = 1e-3
    >>> t = np.array(OFFSETS) * h
    >>> line = analyze_line(np.abs(t), 0 * t, h)  # |t| with analytic slope 0
    >>> round(line.fourth_difference / h, 6)  # a kink: O(h), not O(h**4)
    -4.0
    """
    values = np.asarray(values, dtype=np.float64)
    linear = np.asarray(linear, dtype=np.float64)
    if values.shape != (5,) or linear.shape != (5,):
        raise ValueError(
            "Expected five values and five linear predictions (t = -2h..2h). "
            f"Received: values.shape={values.shape}, linear.shape={linear.shape}"
        )
    finite = bool(np.all(np.isfinite(values)) and np.all(np.isfinite(linear)))
    residual = (values - values[_CENTER]) - linear
    r_m2, r_m1, _, r_p1, r_p2 = residual
    h = float(step)
    analytic = (linear[3] - linear[1]) / (2 * h)
    numeric = (values[3] - values[1]) / (2 * h)
    error = (r_p1 - r_m1) / (2 * h)
    error_2h = (r_p2 - r_m2) / (4 * h)
    truncation = abs(error_2h - error) / 3.0
    fourth = r_m2 - 4 * r_m1 - 4 * r_p1 + r_p2
    one_sided = (r_p1 / h, -r_m1 / h, r_p2 / (2 * h), -r_m2 / (2 * h))
    return LineEstimate(
        analytic=float(analytic),
        numeric=float(numeric),
        error=float(error),
        error_2h=float(error_2h),
        truncation=float(truncation),
        fourth_difference=float(fourth),
        one_sided=tuple(float(s) for s in one_sided),
        step=h,
        finite=finite,
    )


def estimate_noise(fourth_differences, value_scale, eps):
    """Standard deviation of the round-off in computed loss values.

    On a smooth function the fourth differences of `analyze_line` are round-off
    only; their median (robust to the few lines that cross a kink) gives the
    noise. It is never taken below `eps · value_scale`, the rounding of the loss
    value itself.

    Args:
        fourth_differences: `LineEstimate.fourth_difference` of several lines
            of the same function (non-finite entries are ignored).
        value_scale: Magnitude of the loss values, e.g. `max |φ|`.
        eps: Machine epsilon of the working precision (`np.finfo(dtype).eps`).

    Returns:
        The noise level `σ` of one loss value, a float ≥ 0.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> noise = rng.normal(scale=1e-12, size=(400, 5))
    >>> fourth = noise @ np.array([1.0, -4.0, 6.0, -4.0, 1.0])
    >>> 0.8e-12 < estimate_noise(fourth, 1.0, 2.2e-16) < 1.2e-12
    True
    """
    fourth = np.abs(np.asarray(fourth_differences, dtype=np.float64))
    fourth = fourth[np.isfinite(fourth)]
    measured = 0.0
    if fourth.size:
        measured = float(np.median(fourth)) / (
            _MEDIAN_OF_ABS_NORMAL * _FOURTH_DIFFERENCE_NOISE
        )
    floor = float(eps) * abs(float(value_scale))
    return max(measured, floor)


def roundoff_error(noise, step):
    """Round-off in a centered difference: `noise · √2 / 2h`, one standard deviation.

    Example:

    >>> round(roundoff_error(1e-16, 1e-6) / 7.071e-11, 3)
    1.0
    """
    return float(noise) * float(np.sqrt(2.0)) / (2.0 * float(step))


def detect_kink(line: LineEstimate, noise, z=3.0) -> bool:
    """Whether the line crossed a kink: its fourth difference is beyond round-off.

    Args:
        line: A `LineEstimate`.
        noise: Round-off of one loss value (`estimate_noise`).
        z: How many standard deviations of round-off count as a kink.
            Defaults to `3.0`.

    Returns:
        `True` when `|fourth difference| > z · √70 · noise`.

    Example:

    >>> import numpy as np
    >>> h = 1e-4
    >>> t = np.array(OFFSETS) * h
    >>> relu = analyze_line(np.maximum(t - 0.3 * h, 0), 0 * t, h)
    >>> smooth = analyze_line(np.exp(t), t, h)
    >>> detect_kink(relu, 1e-16), detect_kink(smooth, 1e-16)
    (True, False)
    """
    if not line.finite:
        return False
    return abs(line.fourth_difference) > z * _FOURTH_DIFFERENCE_NOISE * float(noise)


SHRINK = 8
"""How much smaller the step of a second measurement of a line is (`step / SHRINK`)."""


def roundoff_not_kinks(fourth_differences, fourth_differences_smaller, ratio=0.2):
    """Whether lines that look kinked are round-off: nothing shrinks with the step.

    Lines far beyond a model's round-off look like kinks to `detect_kink`; so
    do lines of a variable whose loss carries far more round-off than the rest
    of the model (a layer computing in float32 inside a float64 check). The two
    differ when the step shrinks: at a kink the fourth difference is O(jump·h)
    and at `h / SHRINK` it is at most ~1/SHRINK of what it was (the kink may
    even leave the window); round-off does not depend on the step. Simulated
    over five lines (one to three kinks each, or pure noise), a sum ratio of
    0.2 misread 0.05% of kinked lines and 0.1% of noisy ones.

    Args:
        fourth_differences: Fourth differences of some lines at step `h`.
        fourth_differences_smaller: Those of the same lines at `h / SHRINK`.
        ratio: The least size ratio (sum of magnitudes) read as round-off.
            Defaults to `0.2`.

    Returns:
        `True` for round-off, `False` for kinks (or nothing to compare).

    Example:

    >>> import numpy as np
    >>> h = 1e-4
    >>> relu = lambda s: analyze_line(np.maximum(np.array(OFFSETS) * s, 0), [0] * 5, s)
    >>> roundoff_not_kinks([relu(h).fourth_difference], [relu(h / 8).fourth_difference])
    False
    >>> roundoff_not_kinks([3e-9, -2e-9], [-2e-9, 4e-9])
    True
    """
    big = np.abs(np.asarray(fourth_differences, dtype=np.float64))
    small = np.abs(np.asarray(fourth_differences_smaller, dtype=np.float64))
    if big.shape != small.shape:
        raise ValueError(
            "Expected as many fourth differences at each step. Received: "
            f"{big.size} and {small.size}"
        )
    keep = np.isfinite(big) & np.isfinite(small)
    total = float(np.sum(big[keep]))
    if total == 0.0:
        return False
    return float(np.sum(small[keep])) >= ratio * total


def kink_jump(line: LineEstimate) -> float:
    """The change of slope across the kinks a line crossed (0 on a smooth line).

    The one-sided derivatives on each side are extrapolated from steps `h` and
    `2h` (`2·s(h) − s(2h)`), which removes the O(h) curvature term.

    Example:

    >>> import numpy as np
    >>> h = 1e-4
    >>> t = np.array(OFFSETS) * h
    >>> round(kink_jump(analyze_line(3 * np.maximum(t, 0) + 50 * t**2, 0 * t, h)), 9)
    3.0
    """
    right, left = _one_sided_derivatives(line)
    return float(abs(right - left))


def _one_sided_derivatives(line: LineEstimate):
    right_h, left_h, right_2h, left_2h = line.one_sided
    return 2 * right_h - right_2h, 2 * left_h - left_2h


def kink_explains(line: LineEstimate, tolerance, ratio=10.0) -> bool:
    """Whether a kink can explain the mismatch between analytic and numeric slope.

    At a single kink the analytic gradient is one of the one-sided derivatives
    (the side the framework picked) or a mix of them (some frameworks split a
    tie), so zero lies between the one-sided residual derivatives, up to
    `tolerance`. Several kinks crossed at once (exact zeros: a zero input row,
    zero biases) can put the framework's choice outside that range, so a
    mismatch smaller than `ratio` times the slope jump is also put down to
    kinks. A wrong gradient far beyond the jump is not.

    Args:
        line: A `LineEstimate` that crossed a kink (`detect_kink`).
        tolerance: Absolute slack, e.g. a few times the line's error estimate.
        ratio: How many slope jumps a mismatch may reach and still be put down
            to kinks. Defaults to `10.0`.

    Returns:
        `True` when the kink accounts for the mismatch.

    Example:

    >>> import numpy as np
    >>> h = 1e-4
    >>> t = np.array(OFFSETS) * h
    >>> relu = 1e-3 * np.maximum(t, 0) + 50 * t**2  # a kink at 0, curvature
    >>> kink_explains(analyze_line(relu, 0 * t, h), 1e-9)  # slope 0: left side
    True
    >>> kink_explains(analyze_line(relu, 3 * t, h), 1e-9)  # slope 3: neither
    False
    """
    right, left = _one_sided_derivatives(line)
    if not (np.isfinite(right) and np.isfinite(left)):
        return False
    if min(right, left) - tolerance <= 0.0 <= max(right, left) + tolerance:
        return True
    return abs(line.error) <= ratio * abs(right - left) + tolerance
