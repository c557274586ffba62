"""Rules on per-layer measurements: dead and saturated units, gradients by depth.

Pure functions: measurements in (numbers keyed by layer path), `Finding`s out.
They raise `dead_units`, `saturated_units`, `vanishing_gradients` and
`exploding_gradients`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from trainwatch.findings import Finding

__all__ = ["dead_units", "gradient_depth", "saturated_units"]

DEAD_ADVICE = (
    "Dead ReLUs never recover: no gradient reaches their weights. Use He "
    "initialization (`kernel_initializer='he_normal'`) with zero biases, lower "
    "the learning rate (a too-large step can knock units off for good), check "
    "that inputs are standardized, or use LeakyReLU/ELU, which keep a gradient "
    "for negative inputs; BatchNormalization before the activation also helps."
)
SATURATED_ADVICE = (
    "Saturated units pass almost no gradient. Use Glorot/Xavier initialization "
    "(variance 1/fan_in, Keras's default) rather than a large custom scale, "
    "standardize the inputs, lower the learning rate, add BatchNormalization "
    "before the activation, or use a ReLU-family activation in hidden layers."
)
VANISHING_ADVICE = (
    "The early layers barely learn. Use ReLU-family activations with He "
    "initialization instead of sigmoid/tanh in hidden layers, add "
    "BatchNormalization, or add residual (skip) connections; a shallower "
    "network is another way out."
)
EXPLODING_ADVICE = (
    "Large early-layer gradients make training unstable. Lower the learning "
    "rate, clip gradients (`optimizer=keras.optimizers.Adam(clipnorm=1.0)`), "
    "use Glorot or He initialization rather than a large custom scale, and "
    "consider BatchNormalization or residual connections."
)


def _check_fraction(name, value):
    if not 0.0 < value <= 1.0:
        raise ValueError(f"`{name}` must be in (0, 1]. Received: {name}={value!r}")


def _unit_findings(code, counts, step, epoch, warn_fraction, describe, advice):
    findings = []
    for layer, (count, total) in counts.items():
        if not total or not count:
            continue
        fraction = count / total
        if fraction < warn_fraction:
            continue
        severity = "error" if count == total else "warning"
        findings.append(
            Finding(
                code,
                severity,
                describe(layer, count, total, fraction),
                advice,
                step=step,
                epoch=epoch,
                where=layer,
            )
        )
    return findings


def dead_units(
    counts: Mapping[str, tuple[int, int]],
    step=None,
    epoch=None,
    warn_fraction=0.4,
) -> list[Finding]:
    """Flags layers where many ReLU units are zero for every probe example.

    Args:
        counts: `{layer path: (dead units, units)}` for ReLU-family layers.
        step, epoch: When the measurement was taken. Default to `None`.
        warn_fraction: Share of dead units that raises a warning; a layer
            whose units are all dead is an error. Defaults to `0.4` (a
            well-trained, over-sized layer often carries 10-30% dead units).

    Returns:
        One `dead_units` finding per layer at or above `warn_fraction`.

    Raises:
        ValueError: If `warn_fraction` is not in (0, 1].

    Example:

    >>> [f.severity for f in dead_units({"dense": (40, 64), "dense_1": (1, 64)})]
    ['warning']
    """
    _check_fraction("warn_fraction", warn_fraction)

    def describe(layer, count, total, fraction):
        return (
            f"{count} of {total} ReLU units ({fraction:.0%}) of `{layer}` output "
            "exactly 0 for every probe example: they are dead."
        )

    return _unit_findings(
        "dead_units", counts, step, epoch, warn_fraction, describe, DEAD_ADVICE
    )


def saturated_units(
    counts: Mapping[str, tuple[int, int]],
    activations: Mapping[str, str] | None = None,
    step=None,
    epoch=None,
    warn_fraction=0.25,
) -> list[Finding]:
    """Flags layers where many tanh/sigmoid units sit at their bounds.

    Args:
        counts: `{layer path: (saturated units, units)}`.
        activations: `{layer path: activation name}`, for the message.
            Defaults to `None`.
        step, epoch: When the measurement was taken. Default to `None`.
        warn_fraction: Share of saturated units that raises a warning; all of
            them saturated is an error. Defaults to `0.25`.

    Returns:
        One `saturated_units` finding per layer at or above `warn_fraction`.

    Raises:
        ValueError: If `warn_fraction` is not in (0, 1].

    Example:

    >>> findings = saturated_units({"dense": (30, 32)}, {"dense": "tanh"})
    >>> findings[0].code, findings[0].where
    ('saturated_units', 'dense')
    """
    _check_fraction("warn_fraction", warn_fraction)
    activations = activations or {}

    def describe(layer, count, total, fraction):
        name = activations.get(layer, "tanh/sigmoid")
        return (
            f"{count} of {total} {name} units ({fraction:.0%}) of `{layer}` are "
            "saturated: near the activation's bounds for at least 90% of probe "
            "examples, where its gradient is almost zero."
        )

    return _unit_findings(
        "saturated_units",
        counts,
        step,
        epoch,
        warn_fraction,
        describe,
        SATURATED_ADVICE,
    )


def gradient_depth(
    gradients: Sequence[tuple[str, float]],
    step=None,
    epoch=None,
    factor=100.0,
) -> list[Finding]:
    """Flags gradients shrinking or growing by orders of magnitude with depth.

    Fits a robust trend to log10(gradient) against depth (the Theil-Sen
    slope: the median of the slopes between every pair of layers) and reads
    the change from the first to the last layer off it. A trend, not the most
    extreme pair, because call order is only an approximation of depth:
    parallel branches and the query/key projections of attention (tiny
    gradients at initialization, by design) must not count as vanishing; the
    medians of the deeper and the shallower half of the layers must also differ
    by `sqrt(factor)` in the same direction. Zero and non-finite values are
    left out (dead units and NaN losses have their own findings).

    Args:
        gradients: `(layer path, gradient scale)` in forward order, shallow to
            deep, e.g. the RMS of each layer's kernel gradient.
        step, epoch: When the measurement was taken. Default to `None`.
        factor: Change across depth that counts as vanishing (the first layer
            `factor` times smaller than the last) or exploding (`factor` times
            larger). Defaults to `100.0` (two orders of magnitude).

    Returns:
        At most one finding, `vanishing_gradients` or `exploding_gradients`,
        `where` the first layer.

    Raises:
        ValueError: If `factor` is not greater than 1.

    Example:

    >>> scales = [("dense", 1e-7), ("dense_1", 1e-5), ("dense_2", 1e-3)]
    >>> [f.code for f in gradient_depth(scales)]
    ['vanishing_gradients']
    """
    if not factor > 1.0:
        raise ValueError(
            f"`factor` must be greater than 1. Received: factor={factor!r}"
        )
    kept = [
        (name, float(value))
        for name, value in gradients
        if value is not None and math.isfinite(value) and value > 0
    ]
    if len(kept) < 2:
        return []
    logs = np.log10([value for _, value in kept])
    first, last = np.triu_indices(len(kept), k=1)
    slope = float(np.median((logs[last] - logs[first]) / (last - first)))
    change = 10.0 ** (slope * (len(kept) - 1))  # last layer / first layer
    # The deeper half against the shallower half (medians) must agree, by at
    # least the square root of `factor`: a trend made by a few outliers is not.
    half = (len(kept) + 1) // 2
    halves = 10.0 ** (np.median(logs[-half:]) - np.median(logs[:half]))
    agree = math.sqrt(factor)
    if not (change >= factor and halves >= agree) and not (
        change <= 1.0 / factor and halves <= 1.0 / agree
    ):
        return []
    (first_name, first_value), (last_name, last_value) = kept[0], kept[-1]
    if change >= factor:
        code, advice = "vanishing_gradients", VANISHING_ADVICE
        trend = (
            f"vanish with depth: the trend over {len(kept)} layers falls {change:.2g}"
        )
    else:
        code, advice = "exploding_gradients", EXPLODING_ADVICE
        trend = (
            f"explode with depth: the trend over {len(kept)} layers grows "
            f"{1.0 / change:.2g}"
        )
    message = (
        f"Gradients {trend} times from the last layer `{last_name}` "
        f"({last_value:.2g}) back to the first `{first_name}` ({first_value:.2g}). "
        f"RMS weight gradient by layer: {_profile(kept)}."
    )
    return [
        Finding(
            code,
            "warning",
            message,
            advice,
            step=step,
            epoch=epoch,
            where=first_name,
        )
    ]


def _profile(kept, limit=8):
    if len(kept) > limit:
        head = kept[: limit // 2]
        tail = kept[-(limit // 2) :]
        parts = [f"{n} {v:.2g}" for n, v in head] + ["…"]
        parts += [f"{n} {v:.2g}" for n, v in tail]
    else:
        parts = [f"{n} {v:.2g}" for n, v in kept]
    return ", ".join(parts)
