"""Per-feature statistics of training inputs (numpy only).

One `InputStats` summarizes one model input: the mean, standard deviation,
range and kind of each feature. A *feature* is a column of a 2-D input
`(batch, features)`, or a channel of an image or sequence: the statistics of
an input with three or more dimensions are pooled over every axis but the
channel axis, because a network sees all positions of a channel through the
same weights. The rules in `trainwatch.rules.inputs` turn these numbers into
findings.

Example:

>>> import numpy as np
>>> stats = summarize_input(np.array([[0.0, 100.0], [2.0, 300.0]]), name="x")
>>> stats.mean.tolist(), stats.std.tolist()
([1.0, 200.0], [1.0, 100.0])
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

# At most this many numbers are read per input: statistics of a few thousand
# examples are as good as those of the whole set for these rules.
MAX_ELEMENTS = 10_000_000


class InputStats(NamedTuple):
    """Statistics of one input, one entry per feature (column or channel).

    Attributes:
        name: The input's name, e.g. `"inputs"`, `"inputs[1]"` or a dict key.
        shape: Shape of the array that was measured (after subsampling).
        channel_axis: The axis holding the features in the original array.
        n_examples: Examples measured.
        mean: Per-feature mean, float64.
        std: Per-feature standard deviation (population, `ddof=0`).
        minimum: Per-feature minimum.
        maximum: Per-feature maximum.
        constant: Per-feature `True` where every value is the same.
        binary: Per-feature `True` where the feature takes exactly two values
            (one-hot, indicator and binarized features).
        non_finite: Per-feature count of nan and inf values (the other
            statistics leave them out), or `None` when not measured.
        examples_non_finite: Examples holding at least one of them.
    """

    name: str
    shape: tuple
    channel_axis: int
    n_examples: int
    mean: np.ndarray
    std: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    constant: np.ndarray
    binary: np.ndarray
    non_finite: np.ndarray | None = None
    examples_non_finite: int = 0

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    @property
    def graded(self) -> np.ndarray:
        """Features the scale rules apply to: neither constant nor binary."""
        return ~(self.constant | self.binary)

    @property
    def rms(self) -> np.ndarray:
        """Per-feature root mean square, `sqrt(mean**2 + std**2)`."""
        return np.sqrt(self.mean**2 + self.std**2)


def feature_axis(ndim, channels_first=False) -> int:
    """The axis that holds the features of an input with `ndim` dimensions.

    Axis 0 is always the batch. A 1-D input is one feature; a 2-D input has
    its features on axis 1; a 3-D input `(batch, steps, features)` (sequences,
    1-D signals, grayscale images) on its last axis; an image or volume
    (4-D and more) on axis 1 when `channels_first` (Keras's
    `image_data_format() == "channels_first"`), else on its last axis.

    Args:
        ndim: Number of dimensions of the input, batch included.
        channels_first: Whether images are laid out `(batch, channels, ...)`.
            Defaults to `False`.

    Returns:
        The feature axis, or `-1` for a 1-D input (one feature).

    Example:

    >>> feature_axis(4), feature_axis(4, channels_first=True), feature_axis(2)
    (3, 1, 1)
    """
    if ndim < 1:
        raise ValueError(
            "Expected an input with a batch dimension (ndim >= 1). "
            f"Received: ndim={ndim}"
        )
    if ndim == 1:
        return -1
    if ndim >= 4 and channels_first:
        return 1
    return ndim - 1


def summarize_input(
    values, name="inputs", channels_first=False, max_elements=MAX_ELEMENTS
) -> InputStats:
    """Mean, std, range, constant and binary flags of each feature of an input.

    Args:
        values: Array-like `(batch, ...)` of numbers (booleans count as 0/1).
        name: Name of the input, used in findings. Defaults to `"inputs"`.
        channels_first: Image layout, see `feature_axis`. Defaults to `False`.
        max_elements: Only the first examples, up to this many numbers in
            all (and at least two examples), are read. Defaults to
            `MAX_ELEMENTS`.

    Returns:
        An `InputStats`.

    Raises:
        ValueError: `values` has no batch dimension or no examples.
        TypeError: `values` is not numeric.

    Example:

    >>> x = np.stack([np.arange(4.0), np.ones(4)], axis=1)
    >>> s = summarize_input(x)
    >>> s.constant.tolist(), s.binary.tolist()
    ([False, True], [False, False])
    """
    array = np.asarray(values)
    if array.dtype == bool:
        array = array.astype(np.float64)
    if not (
        np.issubdtype(array.dtype, np.number)
        and not np.issubdtype(array.dtype, np.complexfloating)
    ):
        raise TypeError(
            f"Expected a real numeric array for input {name!r}. "
            f"Received: values.dtype={array.dtype}"
        )
    if array.ndim < 1 or array.shape[0] < 1:
        raise ValueError(
            f"Expected input {name!r} to have a batch dimension and at least one "
            f"example. Received: values.shape={array.shape}"
        )
    axis = feature_axis(array.ndim, channels_first)
    per_example = int(np.prod(array.shape[1:], dtype=np.int64))
    keep = max(2, max_elements // max(per_example, 1))
    array = np.asarray(array[:keep], dtype=np.float64)
    if axis == -1:
        table = array.reshape(-1, 1)
    else:
        table = np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis])
    finite = np.isfinite(table)
    non_finite = (~finite).sum(axis=0)
    bad_examples = 0
    if non_finite.any():  # measured without them; counted apart
        table = np.where(finite, table, np.nan)
        per_example = ~np.isfinite(array).reshape(array.shape[0], -1)
        bad_examples = int(per_example.any(axis=1).sum())
    with np.errstate(invalid="ignore", over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-nan feature
        minimum = np.nanmin(table, axis=0)
        maximum = np.nanmax(table, axis=0)
        mean = np.nanmean(table, axis=0)
        std = np.nanstd(table, axis=0)
        constant = minimum == maximum
        two_values = np.all((table == minimum) | (table == maximum) | ~finite, axis=0)
    return InputStats(
        name=name,
        shape=tuple(array.shape),
        channel_axis=axis,
        n_examples=int(array.shape[0]),
        mean=mean,
        std=np.where(constant, 0.0, std),
        minimum=minimum,
        maximum=maximum,
        constant=constant,
        binary=two_values & ~constant,
        non_finite=non_finite,
        examples_non_finite=bad_examples,
    )


def centering(stats: InputStats) -> float:
    """How far the graded features sit from zero, relative to their size.

    `sqrt(mean(mean_i**2)) / sqrt(mean(rms_i**2))` over the graded features:
    0 for centered data, near 1 when every feature is a large offset with
    little spread. Standardized data measured on a batch of 64 gives about
    0.2; pixels scaled to [0, 1] about 0.8.

    Returns:
        A number in [0, 1], or `nan` when there is no graded feature.

    Example:

    >>> s = summarize_input(np.array([[9.0], [10.0], [11.0]]))
    >>> round(centering(s), 3)
    0.997
    """
    graded = stats.graded
    if not graded.any():
        return float("nan")
    mean_square = np.mean(stats.mean[graded] ** 2)
    total = np.mean(stats.rms[graded] ** 2)
    if not total > 0:
        return float("nan")
    return float(np.sqrt(mean_square / total))


def overall_rms(stats: InputStats) -> float:
    """Root mean square of the graded features' values (`nan` if none)."""
    graded = stats.graded
    if not graded.any():
        return float("nan")
    return float(np.sqrt(np.mean(stats.rms[graded] ** 2)))
