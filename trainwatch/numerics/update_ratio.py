"""Update-to-parameter ratios `‖ΔW‖ / ‖W‖` from sums of squares.

The callback reduces each variable on the device to two numbers, the sum of
squares of the update `ΔW = W_after - W_before` and of the weights before the
update `W_before`, and moves only those. Everything from there on is here:
ratios per variable, per layer (the variables of one layer pooled), the
sustained level of a series of samples, and the learning-rate factor that
would bring a ratio back to the healthy ~1e-3.

Numpy only; no Keras.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

__all__ = [
    "HEALTHY_RATIO",
    "layer_of",
    "layer_ratios",
    "learning_rate_factor",
    "ratio",
    "ratios",
    "sustained_level",
]

HEALTHY_RATIO = 1e-3


def ratio(sq_update, sq_param, steps=1) -> float:
    """One variable's `‖ΔW‖ / ‖W‖` from its sums of squares, in plain Python.

    The callback's path: a handful of numbers a sample, where numpy's
    per-call cost would outweigh the arithmetic (during a JAX `fit` each
    numpy call on the main thread also hands the GIL to Keras's threads).

    Args:
        sq_update: Sum of squares of the update.
        sq_param: Sum of squares of the weights before the update.
        steps: Optimizer steps the update spans, as for `ratios`.
            Defaults to `1`.

    Returns:
        The ratio as a float; `nan` where the weights were all zero (or a
        sum is not a non-negative number).

    Example:

    >>> ratio(1e-6, 1.0), ratio(4.0, 0.0)
    (0.001, nan)
    """
    sq_update, sq_param = float(sq_update), float(sq_param)
    if not (sq_param > 0 and sq_update >= 0):  # nan compares False
        return math.nan
    return math.sqrt(sq_update) / math.sqrt(sq_param) / float(steps)


def ratios(sq_update, sq_param, steps=1):
    """Per-variable `‖ΔW‖ / ‖W‖` from sums of squares.

    Args:
        sq_update: Sums of squares of the updates, one per variable.
        sq_param: Sums of squares of the weights before the update.
        steps: Number of optimizer steps the update spans (with
            `steps_per_execution > 1` the weights are only seen every few
            steps); the ratio is divided by it, giving the average per step
            when the steps' updates point the same way and a lower bound of
            it otherwise. Defaults to `1`.

    Returns:
        A float64 array; `nan` where the weights were all zero (a ratio
        is undefined there, e.g. biases at initialization).

    Example:

    >>> ratios([1e-6, 4.0], [1.0, 0.0]).tolist()
    [0.001, nan]
    """
    pairs = zip(np.ravel(sq_update).tolist(), np.ravel(sq_param).tolist())
    return np.array([ratio(u, p, steps) for u, p in pairs], dtype=np.float64)


def layer_of(path: str) -> str:
    """The layer part of a variable path: `"model/dense/kernel"` → `"model/dense"`.

    Example:

    >>> layer_of("sequential/dense/kernel"), layer_of("bias")
    ('sequential/dense', 'bias')
    """
    head, sep, _ = path.rpartition("/")
    return head if sep else path


def layer_ratios(paths: Sequence[str], sq_update, sq_param, steps=1) -> dict:
    """Ratios per layer, pooling the sums of squares of the layer's variables.

    Args:
        paths: Variable paths (`variable.path`), aligned with the sums.
        sq_update: Sums of squares of the updates.
        sq_param: Sums of squares of the weights before the update.
        steps: As for `ratios`. Defaults to `1`.

    Returns:
        `{layer path: ratio}` in the order layers first appear.

    Example:

    >>> layer_ratios(["d/kernel", "d/bias"], [1e-6, 0.0], [0.5, 0.5])
    {'d': 0.001}
    """
    pooled_update: dict[str, float] = {}
    pooled_param: dict[str, float] = {}
    for path, u, p in zip(paths, sq_update, sq_param):
        layer = layer_of(path)
        pooled_update[layer] = pooled_update.get(layer, 0.0) + float(u)
        pooled_param[layer] = pooled_param.get(layer, 0.0) + float(p)
    return {
        name: ratio(pooled_update[name], pooled_param[name], steps)
        for name in pooled_update
    }


def sustained_level(samples, window=5, min_samples=3):
    """The median of the last `window` finite, positive samples of one series.

    Zeros (no update at all) and `nan`/`inf` are left out: they say nothing
    about the size of the learning rate.

    Args:
        samples: The ratios of one variable, oldest first.
        window: How many of the latest usable samples to look at. Defaults to 5.
        min_samples: Fewest usable samples for a verdict. Defaults to 3.

    Returns:
        The median as a float, or `None` with too few usable samples.

    Example:

    >>> sustained_level([1e-3, 0.0, 2e-3, float("nan"), 4e-3])
    0.002
    >>> sustained_level([1e-3, 2e-3]) is None
    True
    """
    if isinstance(samples, np.ndarray):
        samples = samples.ravel().tolist()
    usable = []  # newest first; judged at every sample, so kept in plain Python
    for value in reversed(samples):
        value = float(value)
        if math.isfinite(value) and value > 0:
            usable.append(value)
            if len(usable) == window:
                break
    if len(usable) < min_samples:
        return None
    return float(statistics.median(usable))


def learning_rate_factor(ratio, healthy=HEALTHY_RATIO):
    """How many times the learning rate is off, roughly: `ratio / healthy`.

    Example:

    >>> learning_rate_factor(0.5)
    500.0
    """
    if not (math.isfinite(ratio) and ratio > 0):
        return math.nan
    return float(ratio) / healthy
