"""Statistics of layer outputs and gradients: dead and saturated units, norms.

Pure numpy. A layer's output on the probe batch arrives flattened per example,
`(batch, k)`, possibly sampled (see `LayerTrace.feature_indices`). A *unit* is
what one weight vector produces: a feature of a Dense layer, a channel of a
convolution (every position of it). `unit_ids` maps each column of the
flattened output to its unit, so the same code serves Dense and Conv layers.

* A ReLU unit is **dead** when it outputs exactly zero for every probe example
  (and every position): no gradient reaches its weights, so it never recovers.
* A tanh or sigmoid unit is **saturated** when its output sits near the bounds
  of the activation (`|tanh| > 0.97`) for most examples: its local gradient is
  then almost zero.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "DEAD_ACTIVATIONS",
    "SATURATING_ACTIVATIONS",
    "UnitCount",
    "dead_units",
    "l2_norm",
    "mean_and_std",
    "rms",
    "saturated_units",
    "unit_ids",
]

# Activations whose units can die: exactly zero, with zero gradient, for every
# negative input. Leaky ReLU, ELU, SELU, GELU and SiLU keep a gradient there.
DEAD_ACTIVATIONS = ("relu", "relu6")

# Activations with flat tails, and the bounds their outputs approach there.
SATURATING_ACTIVATIONS = {
    "tanh": (-1.0, 1.0),
    "sigmoid": (0.0, 1.0),
    "hard_sigmoid": (0.0, 1.0),
    "hard_tanh": (-1.0, 1.0),
    "softsign": (-1.0, 1.0),
}


class UnitCount(NamedTuple):
    """How many of a layer's units have a property (dead, saturated)."""

    count: int
    total: int

    @property
    def fraction(self) -> float:
        """`count / total`, 0.0 for a layer without units."""
        return self.count / self.total if self.total else 0.0


def unit_ids(feature_shape, feature_indices=None, unit_axis=-1) -> np.ndarray:
    """The unit each column of a flattened (possibly sampled) output belongs to.

    Args:
        feature_shape: Per-example shape of the full output, e.g. `(8, 8, 16)`.
        feature_indices: Flat indices of the kept features, or `None` when the
            output was not sampled. Defaults to `None`.
        unit_axis: Axis of `feature_shape` that indexes units: `-1` for
            channels-last layers and Dense, `0` for channels-first. Defaults to
            `-1`.

    Returns:
        An integer array with one unit id per column, in `[0, n_units)`.

    Example:

    >>> unit_ids((2, 3)).tolist()  # 2 positions x 3 channels
    [0, 1, 2, 0, 1, 2]
    >>> unit_ids((2, 3), feature_indices=np.array([1, 5])).tolist()
    [1, 2]
    """
    feature_shape = tuple(int(d) for d in feature_shape)
    if not feature_shape:
        feature_shape = (1,)
    size = int(np.prod(feature_shape, dtype=np.int64))
    flat = np.arange(size) if feature_indices is None else np.asarray(feature_indices)
    return np.unravel_index(flat, feature_shape)[unit_axis].astype(np.int64)


def _per_unit_counts(mask, ids):
    """Per unit: how many entries of boolean `mask` (batch, k) are true, of all."""
    n_units = int(ids.max()) + 1 if ids.size else 0
    true = np.bincount(ids, weights=mask.sum(axis=0), minlength=n_units)
    seen = np.bincount(ids, minlength=n_units) * mask.shape[0]
    return true, seen


def dead_units(output, ids) -> UnitCount:
    """Counts units that are exactly zero for every example and position.

    Args:
        output: Layer output, `(batch, k)` (or any `(batch, ...)`, flattened).
        ids: Unit of each column, from `unit_ids`.

    Returns:
        A `UnitCount` of dead units among the units seen in `output`.

    Example:

    >>> out = np.array([[0.0, 1.0, 0.0], [0.0, 2.0, 3.0]])
    >>> dead_units(out, unit_ids((3,)))
    UnitCount(count=1, total=3)
    """
    flat = _flatten(output)
    alive, seen = _per_unit_counts(flat != 0, np.asarray(ids))
    present = seen > 0
    return UnitCount(int(np.sum((alive == 0) & present)), int(np.sum(present)))


def saturated_units(output, ids, bounds, threshold=0.97, min_fraction=0.9) -> UnitCount:
    """Counts units near the bounds of their activation for most examples.

    The output is rescaled to `[-1, 1]` between `bounds`; an entry is
    saturated when its magnitude there exceeds `threshold` (`|tanh| > 0.97`,
    or a sigmoid below 0.015 or above 0.985). A unit is saturated when at
    least `min_fraction` of its entries (examples x positions) are.

    Args:
        output: Layer output, `(batch, k)`.
        ids: Unit of each column, from `unit_ids`.
        bounds: `(low, high)` of the activation, e.g. `(-1.0, 1.0)` for tanh.
        threshold: Saturation level on the `[-1, 1]` scale. Defaults to `0.97`.
        min_fraction: Share of a unit's entries that must be saturated.
            Defaults to `0.9`.

    Returns:
        A `UnitCount` of saturated units among the units seen in `output`.

    Example:

    >>> out = np.array([[0.99, 0.1], [-0.995, 0.2]])
    >>> saturated_units(out, unit_ids((2,)), (-1.0, 1.0))
    UnitCount(count=1, total=2)
    """
    low, high = (float(b) for b in bounds)
    flat = _flatten(output).astype(np.float64)
    scaled = 2.0 * (flat - low) / (high - low) - 1.0
    saturated, seen = _per_unit_counts(np.abs(scaled) > threshold, np.asarray(ids))
    present = seen > 0
    share = np.divide(saturated, seen, out=np.zeros_like(saturated), where=present)
    return UnitCount(int(np.sum(present & (share >= min_fraction))), int(present.sum()))


def mean_and_std(values) -> tuple[float, float]:
    """Mean and standard deviation of the finite values (`nan` if none).

    Accumulates in float64 without a float64 copy of the data.

    Example:

    >>> mean_and_std(np.array([1.0, 3.0, np.nan]))
    (2.0, 1.0)
    """
    data = np.asarray(values).reshape(-1)
    if data.dtype.kind != "f" or data.dtype.itemsize < 4:
        data = data.astype(np.float32 if data.dtype.itemsize < 4 else np.float64)
    finite = np.isfinite(data)
    if not finite.all():
        data = data[finite]
    if not data.size:
        return float("nan"), float("nan")
    return float(data.mean(dtype=np.float64)), float(data.std(dtype=np.float64))


def l2_norm(arrays) -> float:
    """The L2 norm of several arrays taken together (`None`s are skipped).

    Example:

    >>> l2_norm([np.array([3.0]), None, np.array([[4.0]])])
    5.0
    """
    total = sum(_sum_of_squares(a) for a in arrays if a is not None)
    return float(np.sqrt(total))


_CHUNK = 1 << 18  # values at a time: a few MB, however large the array


def _sum_of_squares(array) -> float:
    """Sum of squares, a chunk at a time (no full float64 copy).

    float32 chunks are summed in float32 (BLAS, fast; relative error ~1e-6)
    unless that overflows, then again in float64.
    """
    flat = np.asarray(array).reshape(-1)
    if flat.dtype.kind != "f" or flat.dtype.itemsize < 4:
        flat = flat.astype(np.float32 if flat.dtype.itemsize < 4 else np.float64)
    total = 0.0
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        with np.errstate(over="ignore"):
            part = float(np.dot(chunk, chunk))
        if not np.isfinite(part) and flat.dtype != np.float64:
            wide = chunk.astype(np.float64)
            part = float(np.dot(wide, wide))
        total += part
    return total


def rms(arrays) -> float:
    """Root mean square of the entries of several arrays (`None`s skipped).

    A size-free gradient scale: unlike the norm it does not grow with the
    number of weights, so layers of different widths compare.

    Example:

    >>> rms([np.array([3.0, 4.0]), np.array([0.0, 0.0])])
    2.5
    """
    kept = [np.asarray(a) for a in arrays if a is not None]
    size = sum(a.size for a in kept)
    if not size:
        return float("nan")
    return l2_norm(kept) / float(np.sqrt(size))


def _flatten(output):
    array = np.asarray(output)
    return array.reshape(array.shape[0], -1) if array.ndim != 2 else array
