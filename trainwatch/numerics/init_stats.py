"""Initialization statistics: weight variance against He/Glorot, signal by depth.

A layer keeps the scale of its signal when its weights have the variance its
activation needs (CS231n, "Weight initialization"; He et al. 2015; Glorot and
Bengio 2010):

* ReLU family (relu, leaky_relu, elu, gelu, silu/swish, ...): He, `2 / fan_in`.
* tanh, sigmoid, linear, softmax: Xavier/LeCun `1 / fan_in`, or Glorot
  `2 / (fan_in + fan_out)`, Keras's default (`glorot_uniform`).
* selu: LeCun, `1 / fan_in`.

This module measures a kernel's variance and puts it beside those references;
`trainwatch.rules.initialization` decides what is unusual. It also measures
how the root mean square (RMS) of the signal entering each weighted layer
changes with depth on a batch.

Example:

>>> import numpy as np
>>> kernel = np.random.default_rng(0).normal(0, np.sqrt(2 / 256), (256, 128))
>>> stats = kernel_init_stats("dense/kernel", kernel, "relu")
>>> round(stats.ratio, 1)
1.0
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

RELU_FAMILY = frozenset(
    {
        "relu",
        "relu6",
        "leaky_relu",
        "prelu",
        "elu",
        "celu",
        "gelu",
        "silu",
        "swish",
        "mish",
        "hard_silu",
        "hard_swish",
        "softplus",
        "sparse_plus",
        "squareplus",
        "glu",
        "threshold",
    }
)
XAVIER_FAMILY = frozenset(
    {
        "linear",
        "tanh",
        "sigmoid",
        "hard_sigmoid",
        "softmax",
        "log_softmax",
        "softsign",
        "hard_tanh",
        "tanh_shrink",
        "soft_shrink",
        "hard_shrink",
        "sparsemax",
        "log_sigmoid",
    }
)

# Reference name -> (formula, what Keras calls the initializer).
REFERENCES = {
    "he": ("2/fan_in", "he_normal"),
    "lecun": ("1/fan_in", "lecun_normal"),
    "glorot": ("2/(fan_in+fan_out)", "glorot_uniform"),
}


class KernelInitStats(NamedTuple):
    """One kernel's variance beside the references for its activation.

    Attributes:
        path: The variable's path, e.g. `"sequential/dense/kernel"`.
        shape: The kernel's shape.
        fan_in: Inputs per unit (Keras's `compute_fans`).
        fan_out: Outputs per input.
        mean: Mean of the kernel's values.
        variance: Variance of the kernel's values (about their mean).
        activation: Name of the activation that follows (`"linear"` if none).
        family: `"relu"`, `"xavier"`, `"selu"` or `"unknown"`.
        references: `{reference name: variance}` that suit the family, the
            primary one first (`"he"` for ReLU, `"lecun"` for tanh).
        ratio: `variance / references[primary]`.
    """

    path: str
    shape: tuple
    fan_in: int
    fan_out: int
    mean: float
    variance: float
    activation: str
    family: str
    references: dict
    ratio: float

    @property
    def primary(self) -> str:
        """The name of the reference `ratio` is taken against."""
        return next(iter(self.references))


def compute_fans(shape) -> tuple[int, int]:
    """Fan-in and fan-out of a kernel, as Keras's initializers compute them.

    A dense kernel `(in, out)` has fans `(in, out)`; a convolution kernel
    `(*window, in_channels, out_channels)` multiplies both by the window size.

    Example:

    >>> compute_fans((3, 3, 16, 32))
    (144, 288)
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def activation_family(name) -> str:
    """`"relu"`, `"xavier"`, `"selu"` or `"unknown"` for an activation name.

    Example:

    >>> activation_family("relu"), activation_family("tanh"), activation_family(None)
    ('relu', 'xavier', 'xavier')
    """
    if name is None:
        return "xavier"
    name = str(name).lower()
    if name in RELU_FAMILY:
        return "relu"
    if name in XAVIER_FAMILY:
        return "xavier"
    if name == "selu":
        return "selu"
    return "unknown"


def reference_variances(fan_in, fan_out, family) -> dict:
    """The weight variances that suit an activation family, primary first.

    Args:
        fan_in: Inputs per unit.
        fan_out: Outputs per input.
        family: From `activation_family`.

    Returns:
        `{"he": 2/fan_in, "glorot": ...}` for ReLU, `{"lecun": 1/fan_in,
        "glorot": ...}` for tanh/sigmoid/linear, `{"lecun": ...}` for selu, all
        three for an unknown activation.

    Example:

    >>> reference_variances(100, 300, "relu")
    {'he': 0.02, 'glorot': 0.005}
    """
    he = 2.0 / fan_in
    lecun = 1.0 / fan_in
    glorot = 2.0 / (fan_in + fan_out)
    if family == "relu":
        return {"he": he, "glorot": glorot}
    if family == "xavier":
        return {"lecun": lecun, "glorot": glorot}
    if family == "selu":
        return {"lecun": lecun}
    return {"he": he, "lecun": lecun, "glorot": glorot}


def kernel_init_stats(path, values, activation=None) -> KernelInitStats:
    """Measures a kernel's variance against the references for `activation`.

    Args:
        path: The variable's path (used in findings).
        values: The kernel's values, any shape `compute_fans` understands.
        activation: Name of the activation after the layer, or `None`
            (linear). Defaults to `None`.

    Returns:
        A `KernelInitStats`.

    Example:

    >>> glorot = np.random.default_rng(0).uniform(-0.2, 0.2, (64, 64))
    >>> stats = kernel_init_stats("d/kernel", glorot, "relu")
    >>> stats.primary, round(stats.ratio, 2)
    ('he', 0.42)
    """
    values = np.asarray(values)
    fan_in, fan_out = compute_fans(values.shape)
    activation = "linear" if activation is None else str(activation)
    family = activation_family(activation)
    references = reference_variances(max(fan_in, 1), max(fan_out, 1), family)
    mean, variance = _mean_and_variance(values)
    primary = next(iter(references.values()))
    return KernelInitStats(
        path=str(path),
        shape=tuple(values.shape),
        fan_in=fan_in,
        fan_out=fan_out,
        mean=mean,
        variance=variance,
        activation=activation,
        family=family,
        references=references,
        ratio=variance / primary,
    )


_CHUNK = 1 << 18  # float64 values at a time: a few MB, however large the kernel


def _mean_and_variance(values) -> tuple[float, float]:
    """Mean and variance in float64, a chunk at a time (no full float64 copy)."""
    flat = values.reshape(-1)
    if not flat.size:
        return float("nan"), float("nan")
    mean = float(np.mean(flat, dtype=np.float64))
    total = 0.0
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start : start + _CHUNK].astype(np.float64) - mean
        total += float(np.dot(chunk, chunk))
    return mean, total / flat.size


def rms(values) -> float:
    """Root mean square of an array, in float64 (`nan` when empty)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean(np.square(values))))


def signal_gains(signal) -> list[tuple[str, float, float]]:
    """The signal's RMS at each depth relative to the first measurement.

    Args:
        signal: `[(layer name, RMS of the signal entering it)]` in depth order.

    Returns:
        `[(layer name, rms, rms / first rms)]`; the gain is `nan` when the
        first RMS is zero or not finite.

    Example:

    >>> signal_gains([("a", 2.0), ("b", 0.02)])
    [('a', 2.0, 1.0), ('b', 0.02, 0.01)]
    """
    if not signal:
        return []
    first = float(signal[0][1])
    usable = math.isfinite(first) and first > 0
    return [
        (name, float(value), float(value) / first if usable else float("nan"))
        for name, value in signal
    ]
