"""Rules on the initial weights: `init_scale_unusual`.

Two rules, both about the model before its first update:

* A kernel's variance is compared with every reference variance that suits
  the activation after it (`trainwatch.numerics.init_stats`): ReLU family
  `He 2/fan_in` and `Glorot 2/(fan_in+fan_out)`; tanh/sigmoid/linear
  `1/fan_in` and Glorot. It is unusual when below `LOW` = 0.1 times the
  smallest or above `HIGH` = 10 times the largest of them: a factor 10 in
  variance is a factor ~3 in signal per layer, which compounds with depth.
  Keras's default `glorot_uniform` is a reference itself, so it never
  triggers (with ReLU it is within a factor 2 of He when fan_in ~ fan_out,
  and further only where Glorot's own rule says so). A kernel whose weights
  are all equal (e.g. zeros) is reported too: its units start identical
  (symmetry not broken). Output layers ("heads": no weighted layer after
  them) may start small or at zero, a common choice that makes the first
  prediction uniform, so for them only "too large" is reported.

* The signal entering each weighted layer, measured on a batch at init, is
  unusual when its RMS shrinks to `1/SIGNAL_FACTOR` or grows to
  `SIGNAL_FACTOR` = 100 times (two orders of magnitude) the RMS entering the
  first weighted layer, with at least `MIN_SIGNAL_LAYERS` = 3 weighted
  layers (a single layer is the kernel rule's business).

Findings are warnings; `where` is the kernel's variable path or the layer
where the signal is most off.
"""

from __future__ import annotations

import math

from trainwatch.findings import Finding
from trainwatch.numerics.init_stats import REFERENCES, KernelInitStats

LOW = 0.1
HIGH = 10.0
SIGNAL_FACTOR = 100.0
MIN_SIGNAL_LAYERS = 3

_RECOMMENDED = {
    "relu": ("he_normal", "2/fan_in"),
    "xavier": ("glorot_uniform", "2/(fan_in+fan_out)"),
    "selu": ("lecun_normal", "1/fan_in"),
    "unknown": ("glorot_uniform", "2/(fan_in+fan_out)"),
}


def _initializer_advice(stats: KernelInitStats) -> str:
    name, formula = _RECOMMENDED[stats.family]
    default = (
        " (Keras's default: removing a custom `kernel_initializer` gives it)"
        if name == "glorot_uniform"
        else ""
    )
    return (
        f"Initialize this layer with `kernel_initializer={name!r}` (variance "
        f"{formula}){default}, which suits its {stats.activation} activation. If "
        "you set the scale by hand (e.g. `RandomNormal(stddev=...)`), derive it "
        "from the fan-in instead of a fixed number."
    )


def _references_text(stats: KernelInitStats) -> str:
    return ", ".join(
        f"{name} {REFERENCES[name][0]} = {value:.3g}"
        for name, value in stats.references.items()
    )


def kernel_findings(stats_list, low=LOW, high=HIGH, heads=()) -> list[Finding]:
    """Findings for kernels whose initial variance is far from the references.

    Args:
        stats_list: `KernelInitStats` of the model's kernels.
        low: A variance below `low` times the smallest reference is unusual.
            Defaults to `LOW`.
        high: A variance above `high` times the largest reference is unusual.
            Defaults to `HIGH`.
        heads: Paths of output-layer kernels, judged only for being too
            large. Defaults to `()`.

    Returns:
        `init_scale_unusual` warnings, `where` the variable path.

    Example:

    >>> import numpy as np
    >>> from trainwatch.numerics.init_stats import kernel_init_stats
    >>> big = np.random.default_rng(0).normal(0, 1.0, (64, 64))
    >>> [f.where for f in kernel_findings([kernel_init_stats("d/kernel", big, "relu")])]
    ['d/kernel']
    """
    if not 0 < low < 1 < high:
        raise ValueError(
            f"Expected 0 < low < 1 < high. Received: low={low}, high={high}"
        )
    heads = set(heads)
    findings = []
    for stats in stats_list:
        head = stats.path in heads
        shape = "x".join(str(d) for d in stats.shape)
        where = f"{stats.path} ({shape}, fan_in {stats.fan_in})"
        if not math.isfinite(stats.variance):
            findings.append(
                Finding(
                    "init_scale_unusual",
                    "warning",
                    f"Kernel {stats.path!r} ({shape}) holds non-finite values "
                    "before training.",
                    "Check the initializer and any weights loaded into the layer.",
                    where=stats.path,
                )
            )
        elif stats.variance == 0 and not head:
            findings.append(
                Finding(
                    "init_scale_unusual",
                    "warning",
                    f"Kernel {where} starts with every weight equal to "
                    f"{stats.mean:.3g}: all units of the layer compute the same "
                    "output, so they start identical and only chance in later "
                    "layers can make them differ (before ReLU, zero weights give "
                    f"no gradient at all; references: {_references_text(stats)}).",
                    "Break the symmetry with a random initializer. "
                    + _initializer_advice(stats),
                    where=stats.path,
                )
            )
        else:
            smallest = min(stats.references.values())
            largest = max(stats.references.values())
            if stats.variance <= high * largest and (
                head or low * smallest <= stats.variance
            ):
                continue
            too = "large" if stats.variance > high * largest else "small"
            effect = (
                "the signal grows layer after layer and saturating activations saturate"
                if too == "large"
                else "the signal and its gradients shrink layer after layer"
            )
            findings.append(
                Finding(
                    "init_scale_unusual",
                    "warning",
                    f"Kernel {where} starts with variance {stats.variance:.3g}, "
                    f"{stats.ratio:.3g}x the {stats.primary} reference for its "
                    f"{stats.activation} activation ({_references_text(stats)}): "
                    f"too {too}, so {effect}.",
                    _initializer_advice(stats),
                    where=stats.path,
                )
            )
    return findings


def signal_findings(
    gains, factor=SIGNAL_FACTOR, min_layers=MIN_SIGNAL_LAYERS
) -> list[Finding]:
    """Findings when the forward signal vanishes or explodes with depth at init.

    Args:
        gains: `[(layer name, rms, gain)]` from `signal_gains`, in depth order,
            one per weighted layer (the RMS of the signal entering it).
        factor: A gain above `factor` or below `1/factor` is unusual.
            Defaults to `SIGNAL_FACTOR`.
        min_layers: Fewer weighted layers than this are not judged.
            Defaults to `MIN_SIGNAL_LAYERS`.

    Returns:
        Up to two `init_scale_unusual` warnings (shrinking, growing), `where`
        the layer whose input is furthest off.

    Example:

    >>> gains = [("d1", 1.0, 1.0), ("d2", 0.05, 0.05), ("d3", 0.001, 0.001)]
    >>> [f.where for f in signal_findings(gains)]
    ['d3']
    """
    if not factor > 1:
        raise ValueError(f"Expected factor > 1. Received: factor={factor}")
    usable = [g for g in gains if math.isfinite(g[2])]
    if len(gains) < min_layers or len(usable) < min_layers:
        return []
    chain = " -> ".join(f"{name} {value:.3g}" for name, value, _ in gains)
    findings = []
    low = min(usable, key=lambda g: g[2])
    high = max(usable, key=lambda g: g[2])
    first = gains[0][0]
    if low[2] <= 1 / factor:
        findings.append(
            Finding(
                "init_scale_unusual",
                "warning",
                f"At init the signal vanishes with depth: the RMS entering "
                f"{low[0]!r} is {low[2]:.3g}x the RMS entering {first!r} "
                f"(RMS by layer: {chain}). Later layers see almost nothing and "
                "early layers get vanishing gradients.",
                "Scale each layer's initial weights to its activation: "
                "`kernel_initializer='he_normal'` before ReLU-family activations, "
                "`'glorot_uniform'` before tanh/sigmoid; or add "
                "`BatchNormalization` (or residual connections) in deep stacks.",
                where=low[0],
            )
        )
    if high[2] >= factor:
        findings.append(
            Finding(
                "init_scale_unusual",
                "warning",
                f"At init the signal explodes with depth: the RMS entering "
                f"{high[0]!r} is {high[2]:.3g}x the RMS entering {first!r} "
                f"(RMS by layer: {chain}). Activations saturate or overflow and "
                "gradients explode.",
                "Scale each layer's initial weights to its activation: "
                "`kernel_initializer='he_normal'` before ReLU-family activations, "
                "`'glorot_uniform'` before tanh/sigmoid; or add "
                "`BatchNormalization` in deep stacks.",
                where=high[0],
            )
        )
    return findings
