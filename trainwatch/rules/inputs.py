"""Rules on input statistics: `inputs_not_normalized` and `inputs_constant`.

Networks train best on inputs whose features are centered on zero with a
spread of about one, the same for every feature (CS231n, "Data
preprocessing"). The rules below read the per-feature statistics of
`trainwatch.numerics.input_stats` and raise:

* `inputs_not_normalized` (warning) for one input when any of these holds
  for its *graded* features (neither constant nor binary):

  - its overall RMS is above `HIGH_RMS` = 5 (raw pixels 0-255 give ~100,
    raw scikit-learn digits 0-16 give ~8) or below `LOW_RMS` = 0.02;
  - feature ranges (max - min) differ by `RANGE_SPREAD` = 100 times or more
    (two orders of magnitude: a feature in milli-units beside one in
    kilo-units). Standardized data stays under ~20 even with rare features;
  - a feature that reaches beyond [-1, 1] has a mean of `OFFSET` = 10 of its
    standard deviations or more (e.g. a year, 2010 +- 6): the network sees an
    almost constant input. Features bounded in [-1, 1] are left to the info.

* `inputs_not_normalized` (info) when none of those holds but the input is
  not zero-centered (`centering` above `CENTERING` = 0.5), which is what
  data scaled to [0, 1] (e.g. pixels / 255) looks like: it trains, and
  centering usually helps a little. Standardized data measured on a batch of
  16 or more examples scores ~0.2.

* `inputs_constant` (info; warning when every feature is constant) for
  features that take one value on the data given: they carry nothing and
  must not be divided by their zero std. A constant feature is called
  unnormalized only when its value is above `HIGH_RMS` (a column of ones is
  fine; a constant 1000 shifts every unit it feeds).

Binary features (one-hot, indicators: exactly two values) are exempt from the
scale rules: they are fine as they are.
"""

from __future__ import annotations

import numpy as np

from trainwatch.findings import Finding
from trainwatch.numerics.input_stats import InputStats, centering, overall_rms

HIGH_RMS = 5.0
LOW_RMS = 0.02
RANGE_SPREAD = 100.0
OFFSET = 10.0
CENTERING = 0.5
_MAX_LISTED = 5


def _unit(stats: InputStats) -> str:
    return "channel" if len(stats.shape) >= 3 else "feature"


def _listed(indices) -> str:
    indices = [int(i) for i in indices]
    text = ", ".join(str(i) for i in indices[:_MAX_LISTED])
    if len(indices) > _MAX_LISTED:
        text += f", ... ({len(indices)} in all)"
    return text


def _standardize_advice(stats: InputStats) -> str:
    if len(stats.shape) >= 3:
        axes = tuple(a for a in range(len(stats.shape)) if a != stats.channel_axis)
        how = (
            f"per channel: `mean = x_train.mean(axis={axes})`, "
            f"`std = x_train.std(axis={axes})`"
        )
    else:
        how = "per feature: `mean = x_train.mean(axis=0)`, `std = x_train.std(axis=0)`"
    return (
        f"Standardize input {stats.name!r} with training-set statistics {how}, "
        "`std[std == 0] = 1`, `x = (x - mean) / std`; apply the same mean and std "
        "to the validation and test data (never their own statistics). A "
        "`keras.layers.Normalization` layer adapted on the training data, first "
        "in the model, does the same."
    )


def not_normalized_reasons(stats: InputStats) -> list[str]:
    """The reasons (with numbers) why an input counts as not normalized.

    Args:
        stats: Statistics of one input, from `summarize_input`.

    Returns:
        A list of sentences, empty when the input looks normalized.

    Example:

    >>> import numpy as np
    >>> from trainwatch.numerics.input_stats import summarize_input
    >>> x = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1))
    >>> len(not_normalized_reasons(summarize_input(x))) > 0
    True
    """
    if stats.n_examples < 2:
        return []
    unit = _unit(stats)
    reasons = _large_constant_reasons(stats)
    graded = np.flatnonzero(stats.graded)
    if graded.size == 0:
        return reasons
    rms = overall_rms(stats)
    if rms > HIGH_RMS:
        reasons.append(
            f"its values are large: RMS {rms:.3g} (range {stats.minimum.min():.3g} "
            f"to {stats.maximum.max():.3g}; a normalized input has RMS ~1)."
        )
    elif rms < LOW_RMS:
        reasons.append(
            f"its values are tiny: RMS {rms:.3g} (a normalized input has RMS ~1)."
        )
    ranges = (stats.maximum - stats.minimum)[graded]
    small, large = int(np.argmin(ranges)), int(np.argmax(ranges))
    if ranges[large] >= RANGE_SPREAD * ranges[small]:
        reasons.append(
            f"its {unit}s have scales that differ by "
            f"{ranges[large] / ranges[small]:.3g}x: {unit} {graded[large]} spans "
            f"{ranges[large]:.3g}, {unit} {graded[small]} spans {ranges[small]:.3g}."
        )
    bound = np.maximum(np.abs(stats.minimum), np.abs(stats.maximum))[graded]
    offsets = np.abs(stats.mean[graded]) / stats.std[graded]
    offsets = np.where(bound > 1.0, offsets, 0.0)
    far = np.flatnonzero(offsets >= OFFSET)
    if far.size:
        worst = far[np.argmax(offsets[far])]
        index = graded[worst]
        reasons.append(
            f"{len(far)} {unit}(s) ({_listed(graded[far])}) sit far from zero: "
            f"{unit} {index} has mean {stats.mean[index]:.3g} and std "
            f"{stats.std[index]:.3g} ({offsets[worst]:.3g} stds off zero)."
        )
    return reasons


def _large_constant_reasons(stats: InputStats) -> list[str]:
    """A sentence on constant features whose value exceeds `HIGH_RMS` (empty
    if none): each adds its value times its weights to every first-layer
    unit, a bias the network did not start with.

    Example:

    >>> import numpy as np
    >>> from trainwatch.numerics.input_stats import summarize_input
    >>> x = np.random.default_rng(0).normal(size=(64, 4))
    >>> x[:, 2] = 1000.0
    >>> _large_constant_reasons(summarize_input(x))[0][:49]
    '1 constant feature(s) (2) hold large values: 1000'
    >>> x[:, 2] = 1.0  # a column of ones (a bias input) is harmless
    >>> _large_constant_reasons(summarize_input(x))
    []
    """
    constant = np.flatnonzero(stats.constant)
    large = constant[np.abs(stats.mean[constant]) > HIGH_RMS]
    if large.size == 0:
        return []
    unit = _unit(stats)
    value = float(stats.mean[large[np.argmax(np.abs(stats.mean[large]))]])
    return [
        f"{large.size} constant {unit}(s) ({_listed(large)}) hold large values: "
        f"{value:.4g} on every example. A constant input adds its value times its "
        "weights to every unit it feeds, a bias of that scale the network did not "
        "start with (units pushed into saturation, dead ReLUs, outputs confident "
        "from the first step), and it carries no information."
    ]


def input_findings(stats_list) -> list[Finding]:
    """Findings about the inputs of a model.

    Args:
        stats_list: One `InputStats` per model input.

    Returns:
        A list of `Finding`s (step unset), `where` the input's name.

    Example:

    >>> import numpy as np
    >>> from trainwatch.numerics.input_stats import summarize_input
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(256, 3)) * [1e-3, 1.0, 1e3]
    >>> [f.code for f in input_findings([summarize_input(x)])]
    ['inputs_not_normalized']
    >>> input_findings([summarize_input(rng.normal(size=(256, 3)))])
    []
    """
    findings = []
    for stats in stats_list:
        findings.extend(_non_finite_findings(stats))
        findings.extend(_constant_findings(stats))
        reasons = not_normalized_reasons(stats)
        if reasons:
            findings.append(
                Finding(
                    code="inputs_not_normalized",
                    severity="warning",
                    where=stats.name,
                    message=(
                        f"Input {stats.name!r} is not normalized "
                        f"({stats.n_examples} examples measured): " + " ".join(reasons)
                    ),
                    advice=_standardize_advice(stats),
                )
            )
            continue
        score = centering(stats)
        if score > CENTERING:
            graded = stats.graded
            findings.append(
                Finding(
                    code="inputs_not_normalized",
                    severity="info",
                    where=stats.name,
                    message=(
                        f"Input {stats.name!r} is not zero-centered: values in "
                        f"[{stats.minimum[graded].min():.3g}, "
                        f"{stats.maximum[graded].max():.3g}], "
                        f"{_unit(stats)} means up to "
                        f"{np.abs(stats.mean[graded]).max():.3g} with stds from "
                        f"{stats.std[graded].min():.3g} to "
                        f"{stats.std[graded].max():.3g} (centering {score:.2f}; "
                        "0 is centered)."
                    ),
                    advice=(
                        "Data scaled to [0, 1] trains; subtracting the training-set "
                        "mean and dividing by its std usually trains a little "
                        "faster. " + _standardize_advice(stats)
                    ),
                )
            )
    return findings


def _non_finite_findings(stats: InputStats) -> list[Finding]:
    """`inputs_not_finite` when an input holds nan or inf values."""
    counts = stats.non_finite
    if counts is None or not np.any(counts):
        return []
    unit = _unit(stats)
    features = np.flatnonzero(counts)
    return [
        Finding(
            code="inputs_not_finite",
            severity="error",
            where=stats.name,
            message=(
                f"Input {stats.name!r} holds {int(counts.sum())} nan or inf "
                f"value(s) in {stats.examples_non_finite} of the "
                f"{stats.n_examples} examples measured ({unit}s "
                f"{_listed(features)}). A nan that reaches the loss makes it nan, "
                "and the next update makes every weight nan."
            ),
            advice=(
                "Fix them before training: fill them in (e.g. with the training "
                "set's mean of the feature, plus a 0/1 feature saying it was "
                "missing) or drop those examples; `np.isfinite(x).all()` checks "
                "an array."
            ),
        )
    ]


def _constant_findings(stats: InputStats) -> list[Finding]:
    constant = np.flatnonzero(stats.constant)
    if constant.size == 0 or stats.n_examples < 2:
        return []
    unit = _unit(stats)
    every = constant.size == stats.n_features
    values = np.unique(stats.mean[constant])
    value_text = (
        f"value {values[0]:.3g}" if values.size == 1 else f"{values.size} values"
    )
    return [
        Finding(
            code="inputs_constant",
            severity="warning" if every else "info",
            where=stats.name,
            message=(
                f"{constant.size} of {stats.n_features} {unit}s of input "
                f"{stats.name!r} are constant over the {stats.n_examples} examples "
                f"measured ({unit}s {_listed(constant)}; {value_text})."
            ),
            advice=(
                "A constant feature carries no information. If it is constant on "
                "the whole training set, drop it; when standardizing, use std 1 for "
                "it (`std[std == 0] = 1`) instead of dividing by zero."
                + (
                    " Every feature is constant: check the data pipeline."
                    if every
                    else ""
                )
            ),
        )
    ]
