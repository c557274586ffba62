"""Rules on training dynamics: the loss curve, the train/validation gap, update ratios.

Pure functions: series of measurements in, `Finding`s (or `None`) out. They
raise `loss_nan`, `loss_diverging`, `loss_plateau`, `loss_noisy`, `overfitting`,
`underfitting`, `update_ratio_high` and `update_ratio_low`. The thresholds are
keyword arguments with defaults calibrated on small classifiers (a digits MLP
with Adam at 1e-3 raises nothing; Adam at 10 or at 1e-6 raises its findings).

Numbers in, numbers named in the messages: every finding says what was
measured and what to try.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import numpy as np

from trainwatch.findings import Finding
from trainwatch.numerics.curves import linear_trend
from trainwatch.numerics.update_ratio import (
    HEALTHY_RATIO,
    learning_rate_factor,
    sustained_level,
)

__all__ = [
    "loss_diverging",
    "loss_nan",
    "loss_noisy",
    "loss_plateau",
    "overfitting",
    "underfitting",
    "update_ratio_findings",
]

NAN_ADVICE = (
    "Lower the learning rate (10x), clip gradients "
    "(`keras.optimizers.Adam(clipnorm=1.0)`), check the inputs and labels for "
    "nan/inf, and guard logs/divisions in custom losses (Keras's losses clip "
    "probabilities; a hand-written `log(p)` does not)."
)
DIVERGING_ADVICE = (
    "The learning rate is most likely too high: lower it 3-10x (see the "
    "update_ratio charts: ~1e-3 is healthy), or add gradient clipping "
    "(`clipnorm=1.0`) and a warm-up."
)
NOISY_ADVICE = (
    "Use a larger batch (e.g. 4x) or a lower learning rate (2-3x), so that "
    "each step follows the true gradient more closely."
)
OVERFITTING_ADVICE = (
    "Regularize: add dropout or weight decay (L2), augment or add data, use a "
    "smaller model, or stop earlier (`keras.callbacks.EarlyStopping("
    "monitor='val_loss', restore_best_weights=True)`)."
)
# A validation accuracy below this share of guessing's while training passes
# `_MISMATCH_TRAIN` is not overfitting: the validation examples are unlike the
# training ones.
_MISMATCH_SHARE_OF_CHANCE = 0.5
_MISMATCH_TRAIN = 0.5
MISMATCH_ADVICE = (
    "Make the validation set like the training set: shuffle the data before "
    "`fit` (`validation_split` takes the last examples, all of the last "
    "classes when the data are sorted by label), and check that the "
    "validation labels are encoded and preprocessed as the training ones."
)
# A validation accuracy within this many standard errors of guessing's (or
# `_AT_CHANCE_SHARE` of it, whichever is wider) while training rises clear of
# it: what is learned does not carry over to any other example.
_AT_CHANCE_Z = 2.58
_AT_CHANCE_SHARE = 0.25
AT_CHANCE_ADVICE = (
    "Check that each label belongs to its input: shuffle, sort or subset x and "
    "y together (one permutation or index for both; `x[p], y[q]` with two "
    "shuffles pairs them at random), and encode the validation labels as the "
    "training ones. Regularization will not help while this holds. If the "
    "pairs are right, the inputs carry no signal about the labels that the "
    "model can find."
)
# An adaptive optimizer (Adam, RMSprop, Lion) steps each weight by about its
# learning rate: healthy runs reach 0.1-0.6 of `lr / rms(W)`. Ratios this many
# times below it are gradients that vanish, not a rate too low.
ADAPTIVE_SHORTFALL = 100.0
VANISHED_STEPS_ADVICE = (
    "Raising the learning rate will not help: find what stops the gradient. "
    "Outputs saturated at the loss's clipping (inputs far from standardized, "
    "such as raw 0-255 pixels, or weights blown up), dead ReLUs or saturated "
    "tanh/sigmoid units (see gradient_missing, dead_units, saturated_units, "
    "inputs_not_normalized and the activation histograms), or a model that "
    "has converged."
)
# SGD with momentum `m` moves, once its velocity has built up, by about
# `lr / (1 - m)` per unit gradient: from this momentum on (20x the rate and
# more) a step far too large is named as the momentum's as well.
HIGH_MOMENTUM = 0.95
UNDERFITTING_ADVICE = (
    "Give the model more capacity (wider or deeper layers) or train longer; "
    "check that the learning rate is not too low (update ratios near 1e-3), "
    "that the inputs are standardized and that regularization (dropout rates, "
    "weight penalties) is not too strong."
)
# Dropout layers dropping this share of their inputs or more are named as the
# likely cause of underfitting: 0.1-0.5 is usual, and rates of 0.8-0.95 are
# most often a keep probability written as Keras's `rate` (the share dropped).
HIGH_DROPOUT = 0.75
HIGH_DROPOUT_ADVICE = (
    "Lower the dropout rates first (0.1 to 0.5 is usual): Keras's "
    "`Dropout(rate)` drops the share `rate` of its inputs, so TensorFlow 1's "
    "`keep_prob=0.9` is `Dropout(0.1)`, not `Dropout(0.9)`. Judge the "
    "capacity, the learning rate and the other regularization only after that."
)


# The rules see a few dozen numbers (epochs, the latest batch losses): plain
# Python floats, not numpy, whose per-call cost dominates at that size (and
# whose calls during a JAX `fit` hand the GIL to Keras's callback threads).


def _as_float(value):
    """`value` as a float; `nan` for `None` or what is not one number."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _finite(values):
    """The finite entries of `values` as floats, in order (`None` left out)."""
    numbers = (_as_float(v) for v in values)
    return [v for v in numbers if math.isfinite(v)]


def _pairs(first, second):
    """The aligned `(first, second)` entries where both are finite numbers."""
    pairs = zip(map(_as_float, first), map(_as_float, second))
    return [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]


def _rising(values):
    """Whether each value is above the one before."""
    return all(b > a for a, b in zip(values, values[1:]))


def loss_nan(value, step=None, epoch=None, stopping=False, where=None) -> Finding:
    """The `loss_nan` error for the first non-finite loss.

    Args:
        value: The loss seen (`nan`, `inf` or `-inf`).
        step: Global step at which it was seen. Defaults to `None`.
        epoch: Epoch at which it was seen. Defaults to `None`.
        stopping: Whether training is being stopped because of it.
            Defaults to `False`.
        where: What the value was (e.g. `"batch_loss"`). Defaults to `None`.

    Returns:
        A `Finding` with severity `"error"`.

    Example:

    >>> loss_nan(float("nan"), step=12).message.split(".")[0]
    'The training loss became nan at step 12'
    """
    when = "" if step is None else f" at step {step}"
    if epoch is not None:
        when += f" (epoch {epoch})"
    action = (
        "Training was stopped (`stop_on_nan=True`)."
        if stopping
        else "Training continues, but the weights are most likely nan from here on."
    )
    return Finding(
        "loss_nan",
        "error",
        f"The training loss became {float(value)}{when}. {action}",
        NAN_ADVICE,
        step=step,
        epoch=epoch,
        where=where,
    )


def loss_diverging(
    epoch_losses: Sequence[float],
    initial_loss: float | None,
    recent_losses: Sequence[float] = (),
    step=None,
    epoch=None,
    factor=1.5,
    rise_epochs=2,
    rise_factor=1.5,
) -> Finding | None:
    """Flags a training loss that climbs above where it started or keeps rising.

    Two signs, checked in order:

    * the current level (median of `recent_losses`, else the last epoch loss)
      is more than `factor` times the initial loss, and further above it than
      the batch-to-batch noise explains: the initial loss is one batch's, as
      noisy as the recent ones, so the margin grows by three of their robust
      spreads (scaled MAD), on a log scale (a loss of 1.6 after a lucky first
      batch of 0.83 is noise when batches range over 1-2.5; 1e4 after 2.5 is
      not);
    * the epoch loss rose `rise_epochs` epochs in a row and ends more than
      `rise_factor` times its minimum.

    Args:
        epoch_losses: Training loss of each epoch so far.
        initial_loss: Loss of the first batch (before any update), or `None`.
        recent_losses: Recent per-batch losses. Defaults to `()`.
        step: Global step for the finding. Defaults to `None`.
        epoch: Epoch for the finding. Defaults to `None`.
        factor: Level over initial loss that counts as diverged.
            Defaults to `1.5`.
        rise_epochs: Consecutive rising epochs that count. Defaults to `2`.
        rise_factor: Rise over the minimum epoch loss that counts.
            Defaults to `1.5`.

    Returns:
        A `loss_diverging` warning, or `None`.

    Example:

    >>> loss_diverging([13.6], initial_loss=2.3).code
    'loss_diverging'
    >>> loss_diverging([1.0, 0.5], initial_loss=2.3) is None
    True
    """
    recent = _finite(recent_losses)
    epochs = _finite(epoch_losses)
    noise = 0.0  # robust spread of log(batch loss)
    if len(recent) >= 5:
        level, what = statistics.median(recent), "The recent per-batch loss (median)"
        logs = [math.log(v) for v in recent if v > 0]
        if len(logs) >= 5:
            center = statistics.median(logs)
            noise = 1.4826 * statistics.median([abs(v - center) for v in logs])
    elif epochs:
        level, what = epochs[-1], "The last epoch's loss"
    else:
        return None
    if initial_loss is not None and math.isfinite(initial_loss) and initial_loss > 0:
        if level > factor * initial_loss * math.exp(3.0 * noise):
            return Finding(
                "loss_diverging",
                "warning",
                f"{what} is {level:.4g}, {level / initial_loss:.1f}x the initial "
                f"loss {initial_loss:.4g}: training is diverging (or jumped to a "
                "flat bad value).",
                DIVERGING_ADVICE,
                step=step,
                epoch=epoch,
            )
    if len(epochs) > rise_epochs:
        best = min(epochs)
        rose = _rising(epochs[-(rise_epochs + 1) :])
        if rose and best > 0 and epochs[-1] > rise_factor * best:
            return Finding(
                "loss_diverging",
                "warning",
                f"The epoch loss rose {rise_epochs} epochs in a row, to "
                f"{epochs[-1]:.4g}, {epochs[-1] / best:.1f}x its minimum {best:.4g}.",
                DIVERGING_ADVICE,
                step=step,
                epoch=epoch,
            )
    return None


def loss_plateau(
    epoch_losses: Sequence[float],
    initial_loss: float | None,
    steps_seen: int,
    step=None,
    epoch=None,
    min_epochs=3,
    min_steps=50,
    min_drop=0.1,
    patience=3,
    stall_drop=0.01,
    high_fraction=0.5,
    scores: Sequence[float | None] = (),
    score_rise=0.1,
) -> Finding | None:
    """Flags a loss that hardly falls: a learning rate too low, or stuck.

    Only while the loss is still above `high_fraction` of the first batch's
    loss (a loss that fell that far is learning, or has converged) and not far
    above it (that is `loss_diverging`'s). Then two signs, after at least
    `min_epochs` epochs and `min_steps` steps:

    * since the first epoch the epoch loss fell less than `min_drop` (a
      fraction);
    * over the last `patience` epochs it fell less than `stall_drop`.

    A loss that rose by more than `min_drop` (since the first epoch, or over
    the last `patience` epochs) is no plateau: a rate too low makes a loss
    fall slowly, not rise (a rate too high or a loss that does not fit the
    outputs does).

    Neither is raised while the training accuracy rose by `score_rise` or
    more over the same epochs: the model is learning to tell the classes
    apart, and its loss lags because its outputs are still timid (a text
    classifier whose small embeddings average to logits near zero: accuracy
    0.5 to 0.8 while the loss falls 1% from ln 2).

    Args:
        epoch_losses: Training loss of each epoch so far.
        initial_loss: Loss of the first batch, or `None`.
        steps_seen: Training steps so far.
        step: Global step for the finding. Defaults to `None`.
        epoch: Epoch for the finding. Defaults to `None`.
        min_epochs: Epochs before judging. Defaults to `3`.
        min_steps: Steps before judging. Defaults to `50`.
        min_drop: Smallest healthy fall since the first epoch.
            Defaults to `0.1`.
        patience: Epochs of the stall test. Defaults to `3`.
        stall_drop: Smallest healthy fall over `patience` epochs.
            Defaults to `0.01`.
        high_fraction: Judge only above this fraction of the first batch's
            loss. Defaults to `0.5`.
        scores: Training accuracy per epoch, aligned with `epoch_losses`
            (`None` where missing), or `()` when there is none. Defaults to
            `()`.
        score_rise: Rise of the accuracy over the judged epochs that shows
            the model is learning. Defaults to `0.1`.

    Returns:
        A `loss_plateau` warning, or `None`.

    Example:

    >>> loss_plateau([2.90, 2.89, 2.88], 2.90, steps_seen=135).code
    'loss_plateau'
    >>> loss_plateau([1.0, 0.6, 0.4], 2.30, steps_seen=135) is None
    True
    >>> loss_plateau([0.693, 0.69, 0.686], 0.693, 60, scores=[0.5, 0.58, 0.71]) is None
    True
    """
    epochs = _finite(epoch_losses)
    if len(epochs) < min_epochs or steps_seen < min_steps:
        return None
    first = epochs[0]
    initial = first
    if initial_loss is not None and math.isfinite(initial_loss) and initial_loss > 0:
        initial = float(initial_loss)
    last = epochs[-1]
    if (
        first <= 0
        or last <= 0
        or last > 1.5 * initial
        or last < high_fraction * initial
    ):
        return None
    drop = (first - last) / first
    if drop < -min_drop:
        return None  # a rising loss is no rate too low (loss_diverging's)
    if drop < min_drop and not _score_rose(epoch_losses, scores, None, score_rise):
        change = f"fell only {100 * drop:.1f}%" if drop >= 0 else "did not fall"
        return Finding(
            "loss_plateau",
            "warning",
            f"The epoch loss {change} in {len(epochs)} epochs ({steps_seen} "
            f"steps), from {first:.4g} to {last:.4g} (first batch: {initial:.4g}): "
            "a straight, slow line.",
            "The learning rate is most likely too low: raise it 10x (see the "
            "update_ratio charts: ~1e-3 is healthy). Where the update ratios "
            "are near 1e-3 already, the rate is not the cause: check that each "
            "label belongs to its input (labels shuffled apart from the inputs "
            "leave only memorizing, which is this slow). Also check the "
            "initialization and that the inputs are standardized.",
            step=step,
            epoch=epoch,
        )
    if len(epochs) > patience:
        before = epochs[-(patience + 1)]
        stall = (before - last) / before
        learning = _score_rose(epoch_losses, scores, patience + 1, score_rise)
        if -min_drop <= stall < stall_drop and not learning:
            return Finding(
                "loss_plateau",
                "warning",
                f"The epoch loss has stayed near {last:.4g} for {patience} epochs "
                f"(fell {100 * stall:.2f}%), still {100 * last / initial:.0f}% "
                f"of the first batch's {initial:.4g}.",
                "Training is stuck at a high loss: try a different learning rate "
                "(3x up if update ratios are below 1e-3, 3x down if above), a "
                "learning-rate schedule, or check for dead units and saturation.",
                step=step,
                epoch=epoch,
            )
    return None


def _score_rose(losses, scores, last_epochs, rise) -> bool:
    """Whether the score rose by `rise` or more from the first to the last of
    the `last_epochs` epochs with a finite loss (all of them for `None`).

    Example:

    >>> _score_rose([0.69, 0.69, 0.68], [0.5, None, 0.62], None, 0.1)
    True
    """
    pairs = _pairs(losses, scores)[-last_epochs if last_epochs else 0 :]
    return len(pairs) >= 2 and pairs[-1][1] - pairs[0][1] >= rise


def loss_noisy(
    losses: Sequence[float],
    initial_loss: float | None,
    steps: Sequence[int] | None = None,
    step=None,
    epoch=None,
    batches_per_point=1,
    min_points=20,
    noise_to_trend=3.0,
    noise_to_level=0.5,
    converged_fraction=0.25,
) -> Finding | None:
    """Flags per-batch losses whose scatter swamps their trend.

    Over the window given (e.g. one epoch of per-batch losses), a straight
    line is fitted. The loss is noisy when the scatter about the line is more
    than `noise_to_trend` times the line's change over the window, and more
    than `noise_to_level` times the loss level, while the loss is still above
    `converged_fraction` of the initial loss (a converged loss has no trend
    left to hide) and not above 1.5 times it (that is `loss_diverging`'s).

    Args:
        losses: Per-batch losses, oldest first.
        initial_loss: Loss of the first batch, or `None` (then only the
            relative tests apply).
        steps: Steps of the losses. Defaults to `0, 1, 2, …`.
        step: Global step for the finding. Defaults to `None`.
        epoch: Epoch for the finding. Defaults to `None`.
        batches_per_point: Batches averaged in each point (with
            `steps_per_execution > 1`); for the message. Defaults to `1`.
        min_points: Fewest points to judge. Defaults to `20`.
        noise_to_trend: Scatter over trend change that counts. Defaults to `3`.
        noise_to_level: Scatter over loss level that counts. Defaults to `0.5`.
        converged_fraction: Below this fraction of the initial loss the run
            counts as converged. Defaults to `0.25`.

    Returns:
        A `loss_noisy` warning, or `None`.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> noisy = 1.5 + rng.normal(0, 1.0, 200)
    >>> loss_noisy(noisy, initial_loss=2.3).code
    'loss_noisy'
    >>> loss_noisy(np.linspace(2.3, 0.5, 200), initial_loss=2.3) is None
    True
    """
    trend = linear_trend(losses, steps)
    if trend.count < min_points or not math.isfinite(trend.level):
        return None
    if trend.level <= 0 or trend.noise <= noise_to_trend * abs(trend.change):
        return None
    if trend.noise <= noise_to_level * trend.level:
        return None
    if initial_loss is not None and math.isfinite(initial_loss) and initial_loss > 0:
        if trend.level < converged_fraction * initial_loss:
            return None
        if trend.level > 1.5 * initial_loss:
            return None  # diverged: loss_diverging's, not noise's
    what = (
        "per-batch loss"
        if batches_per_point == 1
        else (f"loss (means of {batches_per_point} batches)")
    )
    return Finding(
        "loss_noisy",
        "warning",
        f"The {what} scatters by {trend.noise:.3g} (std) around a trend that "
        f"moved only {abs(trend.change):.3g} over the last {trend.count} points, "
        f"at a level of {trend.level:.3g}: the noise swamps the trend.",
        NOISY_ADVICE,
        step=step,
        epoch=epoch,
    )


def overfitting(
    train_losses: Sequence[float | None],
    val_losses: Sequence[float | None],
    train_scores: Sequence[float | None] = (),
    val_scores: Sequence[float | None] = (),
    metric="accuracy",
    step=None,
    epoch=None,
    score_gap=0.1,
    persist=2,
    patience=3,
    rise=0.1,
    val_examples=None,
    z=1.64,
    chance=None,
    val_fall=0.05,
) -> Finding | None:
    """Flags a wide or growing gap between training and validation.

    Two signs, checked in order:

    * the training score (e.g. accuracy) exceeded the validation score by more
      than `score_gap` in each of the last `persist` validations, and by more
      than the validation set's sampling noise adds to it: with `n` examples
      the validation accuracy `v` is uncertain by `sqrt(v (1 - v) / n)`, so
      the gap must exceed `score_gap + z` times that (0.1 + 0.09 on 39
      examples at v = 0.85; nothing is added when `n` is unknown); not while
      the validation loss still fell by `val_fall` or more at each of those
      validations: the validation side is still learning fast (early in
      training a gap comes from BatchNormalization's moving statistics,
      which lag the batch statistics for a few hundred steps, or from a
      validation split harder than the training data), and stopping or
      regularizing then is the wrong advice;
    * the validation loss rose `patience` validations in a row, to more than
      `1 + rise` times its minimum, while the training loss kept falling.

    Args:
        train_losses: Training loss per epoch.
        val_losses: Validation loss per epoch (`None` where there was no
            validation), aligned with `train_losses`.
        train_scores: Training accuracy (higher is better) per epoch.
            Defaults to `()`.
        val_scores: Validation accuracy per epoch. Defaults to `()`.
        metric: Name of the score, for the message. Defaults to `"accuracy"`.
        step: Global step for the finding. Defaults to `None`.
        epoch: Epoch for the finding. Defaults to `None`.
        score_gap: Gap in score that counts as wide. Defaults to `0.1`.
        persist: Validations in a row the gap must last. Defaults to `2`.
        patience: Rising validations in a row that count. Defaults to `3`.
        rise: Rise of the validation loss above its minimum that counts
            (fraction). Defaults to `0.1`.
        val_examples: Number of validation examples, or `None` if unknown.
            Defaults to `None`.
        z: How many standard errors of the validation score the gap must
            exceed `score_gap` by. Defaults to `1.64` (one-sided 95%).
        chance: The accuracy of guessing (1/classes), or `None` if unknown. A
            validation score below half of it while training passes 0.5 is
            said to be a validation set unlike the training set, not
            overfitting; one that stays at guessing's level (within its
            sampling noise) while training rises is said to be labels not
            paired with their inputs. Defaults to `None`.
        val_fall: Fall of the validation loss (fraction) at each of the
            last `persist` validations that shows it is still improving fast.
            Defaults to `0.05`.

    Returns:
        An `overfitting` warning, or `None`.

    Example:

    >>> overfitting([0.2, 0.1], [0.8, 0.9], [0.98, 0.99], [0.8, 0.8]).message[:36]
    'Training accuracy 0.99 vs validation'
    """
    if len(train_scores) and len(val_scores):
        pairs = _pairs(train_scores, val_scores)
        if len(pairs) >= persist:
            t, v = pairs[-1]
            recent = pairs[-persist:]
            noise = _score_noise([b for _, b in recent], val_examples)
            wide = all(a - b > score_gap + z * n for (a, b), n in zip(recent, noise))
            if wide and not _still_falling(val_losses, persist, val_fall):
                on = f" on {val_examples} validation examples" if val_examples else ""
                below = chance is not None and v < _MISMATCH_SHARE_OF_CHANCE * chance
                if below and v >= 0.0 and t > _MISMATCH_TRAIN:
                    return Finding(
                        "overfitting",
                        "warning",
                        f"Training {metric} {t:.4g} vs validation {v:.4g}{on}: the "
                        "validation score is below what guessing gets, which "
                        "overfitting does not do. The validation examples are "
                        "unlike the training ones (other classes, other label "
                        "encoding).",
                        MISMATCH_ADVICE,
                        step=step,
                        epoch=epoch,
                    )
                if _at_chance([b for _, b in recent], chance, val_examples):
                    return Finding(
                        "overfitting",
                        "warning",
                        f"Training {metric} rose to {t:.4g} while validation "
                        f"{metric} stays at guessing's {chance:.3g} (1/classes): "
                        f"{v:.4g}{on}. Nothing the model learns from its "
                        "training examples carries over to other examples, "
                        "which a model fitting real input-label pairs does: the "
                        "labels are most likely not paired with their inputs "
                        "(shuffled apart from them), in the training or in the "
                        "validation data.",
                        AT_CHANCE_ADVICE,
                        step=step,
                        epoch=epoch,
                    )
                return Finding(
                    "overfitting",
                    "warning",
                    f"Training {metric} {t:.4g} vs validation {v:.4g}{on}: a gap "
                    f"of {t - v:.3g} (more than {score_gap:g}"
                    + (" and than the validation set's sampling noise" if on else "")
                    + ").",
                    OVERFITTING_ADVICE,
                    step=step,
                    epoch=epoch,
                )
    pairs = _pairs(train_losses, val_losses)
    if len(pairs) > patience:
        train, val = [a for a, _ in pairs], [b for _, b in pairs]
        best = min(range(len(val)), key=val.__getitem__)  # the first minimum
        if (
            _rising(val[-(patience + 1) :])
            and val[-1] > (1 + rise) * val[best]
            and train[-1] < train[best]
        ):
            return Finding(
                "overfitting",
                "warning",
                f"The validation loss rose {patience} times in a row, from "
                f"{val[best]:.4g} to {val[-1]:.4g}, while the training loss fell "
                f"from {train[best]:.4g} to {train[-1]:.4g}: a growing gap.",
                OVERFITTING_ADVICE,
                step=step,
                epoch=epoch,
            )
    return None


def _at_chance(val_scores, chance, val_examples) -> bool:
    """Whether every validation accuracy is within what guessing scores: at
    most `_AT_CHANCE_Z` standard errors of guessing's accuracy (on
    `val_examples` examples) or `_AT_CHANCE_SHARE` of it above it, whichever
    is wider, and at least half of it (below is a mismatch of their own).

    Example:

    >>> _at_chance([0.116, 0.096], 0.1, 397), _at_chance([0.7, 0.72], 0.1, 397)
    (True, False)
    >>> _at_chance([0.11], None, 397)
    False
    """
    if chance is None or not 0.0 < chance < 1.0:
        return False
    (noise,) = _score_noise([chance], val_examples)
    band = max(_AT_CHANCE_Z * noise, _AT_CHANCE_SHARE * chance)
    return bool(val_scores) and all(
        _MISMATCH_SHARE_OF_CHANCE * chance <= v <= chance + band for v in val_scores
    )


def _still_falling(losses, times, fall) -> bool:
    """Whether each of the last `times` finite losses is more than `fall` (a
    fraction) below the one before it (with `fall=0`: lower at all).

    Example:

    >>> _still_falling([2.2, 2.05, None, 1.8, 1.49], 2, 0.05)
    True
    """
    recent = _finite(losses)[-(times + 1) :]
    if len(recent) < times + 1 or min(recent[:-1]) <= 0:
        return False
    return all(b < (1.0 - fall) * a for a, b in zip(recent, recent[1:]))


def _score_noise(val_scores, val_examples):
    """Standard errors of validation accuracies measured on `val_examples`
    examples (zeros when that is unknown or the scores are no proportions).

    Example:

    >>> [round(n, 3) for n in _score_noise([0.84, 0.5, 1.2], 100)]
    [0.037, 0.05, 0.0]
    """
    if not val_examples or val_examples <= 0:
        return [0.0] * len(val_scores)
    return [
        math.sqrt(v * (1.0 - v) / float(val_examples)) if 0.0 <= v <= 1.0 else 0.0
        for v in val_scores
    ]


def underfitting(
    train_scores: Sequence[float | None],
    val_scores: Sequence[float | None] = (),
    metric="accuracy",
    step=None,
    epoch=None,
    poor_score=0.6,
    small_gap=0.05,
    min_epochs=3,
    window=3,
    min_progress=0.05,
    train_losses: Sequence[float | None] = (),
    min_loss_drop=0.04,
    val_losses: Sequence[float | None] = (),
    dropout_rates: Sequence[tuple[str, float]] = (),
) -> Finding | None:
    """Flags a training score that stays poor with little train/validation gap.

    Early epochs are naturally poor, so a poor score is judged only once it
    has stopped improving: after `min_epochs` epochs, when its recent gain
    per epoch (the slope of a line through the last `window` scores) is
    below `min_progress` of what is left to a perfect score of 1. A score
    still rising faster is early in training, not underfitting: at the
    default 0.05, closing what is left would take more than 20 epochs at the
    recent pace before the rule speaks. Nor does it speak while the training
    loss still falls by more than `min_loss_drop` of itself per epoch over
    the same epochs: accuracy moves in steps and can lag a loss that is
    still being learned. With validation losses given, they must fall that
    fast too: a training loss that falls while the validation loss stays
    flat is shrinking a penalty (dropout noise, a regularizer), not fitting.

    Args:
        train_scores: Training accuracy (higher is better, at most 1) per
            epoch; `None` or non-finite where missing.
        val_scores: Validation accuracy per epoch, or `()` without validation.
            Defaults to `()`.
        metric: Name of the score, for the message. Defaults to `"accuracy"`.
        step: Global step for the finding. Defaults to `None`.
        epoch: Epoch for the finding. Defaults to `None`.
        poor_score: Training score below which it counts as poor.
            Defaults to `0.6`.
        small_gap: Largest train/validation gap that counts as little.
            Defaults to `0.05`.
        min_epochs: Epochs before judging. Defaults to `3`.
        window: Latest scores whose trend is the recent gain (at least 2).
            Defaults to `3`.
        min_progress: Recent gain per epoch, as a fraction of what is left to
            a perfect score, from which the score counts as still improving.
            Defaults to `0.05`.
        train_losses: Training loss per epoch, aligned with `train_scores`,
            or `()` to judge by the score alone. Defaults to `()`.
        min_loss_drop: Recent fall of the training loss per epoch, as a
            fraction of its latest value, from which training counts as still
            improving (4%: the loss would halve within ~17 epochs; a one-unit
            bottleneck on digits falls 1.9-2.6% an epoch in its first three,
            a healthy two-output model 5%). Defaults to `0.04`.
        val_losses: Validation loss per epoch (`None` where there was no
            validation), aligned with `train_scores`, or `()`. Defaults to
            `()`.
        dropout_rates: `(layer, rate)` of the model's dropout layers: rates
            of `HIGH_DROPOUT` or more are named as the likely cause.
            Defaults to `()`.

    Returns:
        An `underfitting` warning, or `None`.

    Example:

    >>> underfitting([0.3, 0.34, 0.35], [0.3, 0.33, 0.34]).code  # flat and poor
    'underfitting'
    >>> underfitting([0.2, 0.3, 0.4], [0.2, 0.3, 0.4]) is None  # still rising
    True
    >>> losses = [0.84, 0.80, 0.76]  # still falling 5% an epoch
    >>> underfitting([0.41, 0.43, 0.44], train_losses=losses) is None
    True
    """
    scores = np.asarray(
        [np.nan if v is None else v for v in train_scores], dtype=np.float64
    )
    epochs = np.flatnonzero(np.isfinite(scores))
    if epochs.size < min_epochs or scores[epochs[-1]] >= poor_score:
        return None
    last = float(scores[epochs[-1]])
    recent = epochs[-max(int(window), 2) :]
    gain = linear_trend(scores[recent], recent).slope
    left = max(1.0 - last, 1e-12)
    if gain >= min_progress * left:
        return None
    losses = np.asarray(
        [np.nan if v is None else v for v in train_losses], dtype=np.float64
    )
    if losses.size == scores.size and _falling(losses, recent, min_loss_drop):
        validation = np.asarray(
            [np.nan if v is None else v for v in val_losses], dtype=np.float64
        )
        aligned = validation.size == scores.size
        if not aligned or _falling(validation, recent, min_loss_drop) is not False:
            return None  # still learning (or no validation losses to say)
    val = _finite(val_scores)
    if val:
        gap = last - val[-1]
        if gap > small_gap:
            return None
        detail = f"validation {val[-1]:.4g}, a gap of only {gap:.3g}"
    else:
        detail = "no validation data to compare"
    cause, advice = _high_dropout(dropout_rates)
    return Finding(
        "underfitting",
        "warning",
        f"After {epochs.size} epochs the training {metric} is only {last:.4g} "
        f"(below {poor_score:g}; {detail}) and has stopped improving: "
        f"{gain:+.3g} per epoch over the last {recent.size} epochs, "
        f"{gain / left:.1%} of what is left to 1 (below {min_progress:.0%})."
        f"{cause}",
        advice,
        step=step,
        epoch=epoch,
    )


def _high_dropout(dropout_rates) -> tuple[str, str]:
    """The sentence naming dropout rates of `HIGH_DROPOUT` or more (with a
    leading space) and the advice to give, or `("", UNDERFITTING_ADVICE)`.

    Example:

    >>> _high_dropout([("d1", 0.95), ("d2", 0.2)])[0][:46]
    ' The dropout layer d1 drops 95% of its inputs '
    """
    high = [(name, float(rate)) for name, rate in dropout_rates if rate >= HIGH_DROPOUT]
    if not high:
        return "", UNDERFITTING_ADVICE
    low, top = min(rate for _, rate in high), max(rate for _, rate in high)
    shown = f"{low:.0%}" if low == top else f"{low:.0%} to {top:.0%}"
    names = ", ".join(name for name, _ in high[:3])
    if len(high) > 3:
        names += f" and {len(high) - 3} more"
    if len(high) == 1:
        who = f"The dropout layer {names} drops {shown} of its inputs"
        survives = ""
    else:
        kept = math.prod(1.0 - rate for _, rate in high)
        who = f"{len(high)} dropout layers ({names}) drop {shown} of their inputs"
        survives = f"; a path through all of them survives {kept:.2%} of the steps"
    return (
        f" {who} in training{survives}: too little reaches the output to learn "
        "from, and the noise swamps what is learned.",
        HIGH_DROPOUT_ADVICE,
    )


def _adaptive_shortfall(flagged, adaptive_ratios) -> float | None:
    """How many times the flagged ratios fall short of an adaptive
    optimizer's (median over the variables), when it is at least
    `ADAPTIVE_SHORTFALL`; else `None`.

    Example:

    >>> round(_adaptive_shortfall({"k": 7.7e-7}, {"k": 8e-3}))
    10390
    >>> _adaptive_shortfall({"k": 2e-6}, {"k": 8e-6}) is None  # a rate too low
    True
    """
    if not adaptive_ratios:
        return None
    shortfalls = [
        adaptive_ratios[path] / ratio
        for path, ratio in flagged.items()
        if ratio > 0 and adaptive_ratios.get(path, 0.0) > 0
    ]
    if not shortfalls:
        return None
    shortfall = statistics.median(shortfalls)
    return shortfall if shortfall >= ADAPTIVE_SHORTFALL else None


def weights_not_updated(
    history: Mapping[str, Sequence[float]], step=None, epoch=None, min_samples=4
) -> Finding | None:
    """Flags trainable variables the optimizer never changes while others change.

    A variable whose update/parameter ratio was exactly 0 in each of its
    latest `min_samples` samples (or more), at samples where another variable
    moved, is trainable but not trained: a custom `train_step` that leaves it
    out of `apply_gradients`, a gradient that is `None` or exactly zero, or
    weights set back after each step. Variables whose weights are all zero
    (ratio `nan`) are not judged.

    Args:
        history: `{variable path: ratios sampled so far}`, aligned: the i-th
            entry of every series comes from the same sample.
        step: Global step for the finding. Defaults to `None`.
        epoch: Epoch for the finding. Defaults to `None`.
        min_samples: Samples in a row that must all be 0. Defaults to `4`.

    Returns:
        One `weights_not_updated` warning naming the variables, or `None`.

    Example:

    >>> history = {"d/kernel": [1e-3] * 4, "e/kernel": [0.0] * 4}
    >>> weights_not_updated(history).where
    'e/kernel'
    >>> weights_not_updated({"d/kernel": [0.0] * 4}) is None  # nothing moved
    True
    >>> batch_of_one = {"bn/gamma": [0.0] * 4, "bn/beta": [1e-2] * 4}
    >>> "batch holds one example" in weights_not_updated(batch_of_one).message
    True
    """
    length = min((len(series) for series in history.values()), default=0)
    if length < min_samples:
        return None
    recent = {path: list(series)[-min_samples:] for path, series in history.items()}
    still = [path for path, series in recent.items() if all(r == 0.0 for r in series)]
    moved_at_each = all(
        any(series[i] > 0.0 for series in recent.values()) for i in range(min_samples)
    )
    if not still or not moved_at_each:
        return None
    shown = ", ".join(still[:5]) + (", ..." if len(still) > 5 else "")
    still_scales = [
        path
        for path in still
        if path.endswith("/gamma")
        and _moves_or_never_left_zero(
            recent.get(path[: -len("gamma")] + "beta", (0.0,))
        )
    ]
    message = (
        f"{len(still)} trainable variable(s) did not change at all in the last "
        f"{min_samples} sampled steps while the others did: {shown}."
    )
    advice = (
        "They are trainable but not trained. Check that a custom `train_step` "
        "passes them to `apply_gradients` (all of `trainable_variables`), that "
        "their gradient is not None or exactly zero (the gradient check says; "
        "dead units upstream give zeros), and that nothing sets their weights "
        "back after each step. To freeze them on purpose, set "
        "`layer.trainable = False` before compiling."
    )
    if still_scales:
        names = ", ".join(p[: -len("/gamma")] for p in still_scales[:3])
        message += (
            f" Among them the scale (gamma) of {names}, whose offset (beta) moves "
            "or has stayed at its initial zeros: its normalized input looks "
            "exactly 0, which a BatchNormalization gives when each batch holds "
            "one example (or identical ones). It then outputs beta whatever the "
            "input, and nothing before it gets a gradient."
        )
        advice = (
            "If `batch_size` is 1, train with batches of 8 or more examples, or "
            "use a normalization that does not average over the batch "
            "(`keras.layers.LayerNormalization`, `GroupNormalization`). "
            "Otherwise no gradient reaches the layer from after it: look for "
            "dead units there (dead_units, the activation histograms)."
        )
    return Finding(
        "weights_not_updated",
        "warning",
        message,
        advice,
        step=step,
        epoch=epoch,
        where=still[0] if len(still) == 1 else None,
    )


def _moves_or_never_left_zero(ratios) -> bool:
    """Whether sampled update ratios show a variable moving (> 0), or one
    whose weights are all zero at every sample (`nan`: never moved from
    zeros).

    Example:

    >>> _moves_or_never_left_zero([0.0, 1e-3]), _moves_or_never_left_zero([0.0, 0.0])
    (True, False)
    """
    ratios = list(ratios)
    return any(r > 0.0 for r in ratios) or (
        bool(ratios) and all(math.isnan(r) for r in ratios)
    )


def _falling(losses, epochs, min_drop) -> bool | None:
    """Whether `losses` fall by more than `min_drop` of themselves per epoch
    over `epochs`; `None` with fewer than two finite ones there."""
    kept = epochs[np.isfinite(losses[epochs])]
    if kept.size < 2:
        return None
    fall = -linear_trend(losses[kept], kept).slope
    return fall > min_drop * abs(float(losses[kept[-1]]))


def _momentum_advice(momentum) -> str:
    """What to say of SGD's momentum when the steps are too large ("" below
    `HIGH_MOMENTUM`).

    Example:

    >>> _momentum_advice(0.999)[:60]
    ' SGD with momentum 0.999 steps about 1000x as far as its lea'
    >>> _momentum_advice(0.9), _momentum_advice(None)
    ('', '')
    """
    if momentum is None or not HIGH_MOMENTUM <= momentum < 1.0:
        return ""
    gain = 1.0 / (1.0 - momentum)
    return (
        f" SGD with momentum {momentum:g} steps about {gain:.0f}x as far as its "
        "learning rate alone once its velocity builds up: lower the momentum "
        "to 0.9 (10x) first, then judge the rate again."
    )


def update_ratio_findings(
    history: Mapping[str, Sequence[float]],
    step=None,
    epoch=None,
    low=3e-5,
    high=1e-1,
    window=5,
    min_samples=3,
    learning_rate=None,
    healthy=HEALTHY_RATIO,
    adaptive_ratios=None,
    momentum=None,
) -> list[Finding]:
    """Flags update/parameter ratios sustained far outside the healthy ~1e-3.

    For each variable, the sustained level is the median of its last `window`
    finite, non-zero samples (see `sustained_level`). Variables above `high`
    give one `update_ratio_high` finding, below `low` one `update_ratio_low`,
    naming the worst variables and the factor `ratio / healthy` by which the
    learning rate is off.

    Args:
        history: `{variable path: ratios sampled so far}` for the variables to
            judge (weights; biases and norms' scales are usually left out).
        step: Global step for the findings. Defaults to `None`.
        epoch: Epoch for the findings. Defaults to `None`.
        low: Sustained ratio below which updates are too small.
            Defaults to `3e-5`.
        high: Sustained ratio above which updates are too large.
            Defaults to `1e-1`.
        window: Samples in the sustained level. Defaults to `5`.
        min_samples: Fewest samples for a verdict. Defaults to `3`.
        learning_rate: The current learning rate, to suggest a value.
            Defaults to `None`.
        healthy: The healthy ratio. Defaults to `1e-3`.
        adaptive_ratios: `{variable path: learning rate / RMS of its
            weights}`, the ratio an adaptive optimizer (Adam, RMSprop, Lion)
            gives when each weight steps by about the learning rate, or
            `None` for other optimizers. Low ratios that fall short of it
            `ADAPTIVE_SHORTFALL`-fold or more are said to be gradients that
            vanish, not a learning rate too low. Defaults to `None`.
        momentum: SGD's momentum, or `None` for other optimizers. From
            `HIGH_MOMENTUM` on, ratios too high name it: its steps are about
            `1 / (1 - momentum)` times the learning rate's. Defaults to `None`.

    Returns:
        Up to two findings (`update_ratio_high`, `update_ratio_low`).

    Example:

    >>> [f.code for f in update_ratio_findings({"d/kernel": [0.5, 0.6, 0.7]})]
    ['update_ratio_high']
    """
    levels = {}
    for path, samples in history.items():
        level = sustained_level(samples, window, min_samples)
        if level is not None:
            levels[path] = level
    findings = []
    for code, flagged, direction in (
        ("update_ratio_high", {p: r for p, r in levels.items() if r > high}, "above"),
        ("update_ratio_low", {p: r for p, r in levels.items() if r < low}, "below"),
    ):
        if not flagged:
            continue
        worst = sorted(
            flagged.items(), key=lambda item: -abs(math.log10(item[1] / healthy))
        )[:3]
        median = float(np.median(list(flagged.values())))
        factor = learning_rate_factor(median, healthy)
        named = ", ".join(f"{path} {ratio:.2g}" for path, ratio in worst)
        limit = high if code == "update_ratio_high" else low
        message = (
            f"The update/parameter ratio |dW|/|W| stays {direction} {limit:g} for "
            f"{len(flagged)} of {len(levels)} weight variables (median of the "
            f"last {window} samples: {named}); about {healthy:g} is healthy."
        )
        shortfall = None
        if learning_rate is not None and learning_rate > 0:
            shortfall = _adaptive_shortfall(flagged, adaptive_ratios)
        if code == "update_ratio_low" and shortfall is not None:
            findings.append(
                Finding(
                    code,
                    "warning",
                    f"{message} Yet the optimizer steps each weight by about the "
                    "learning rate whatever the gradient's size, so these "
                    f"updates are {shortfall:.2g}x smaller than its rate "
                    f"{learning_rate:.3g} makes them: the gradients are zero (or "
                    "cancel out) on most steps.",
                    VANISHED_STEPS_ADVICE,
                    step=step,
                    epoch=epoch,
                    where=worst[0][0] if len(flagged) == 1 else None,
                )
            )
            continue
        if code == "update_ratio_high":
            change = f"lower the learning rate about {factor:.3g}x"
            cause = "The steps are too large: "
        else:
            change = f"raise the learning rate about {1 / factor:.3g}x"
            cause = "The steps are too small: "
        if learning_rate is not None and learning_rate > 0:
            change += f" (from {learning_rate:.3g} to ~{learning_rate / factor:.2g})"
        advice = (
            f"{cause}{change}. The ratio scales about linearly with the "
            "learning rate for SGD and Adam alike."
        )
        if code == "update_ratio_high":
            advice += _momentum_advice(momentum)
        where = worst[0][0] if len(flagged) == 1 else None
        findings.append(
            Finding(
                code, "warning", message, advice, step=step, epoch=epoch, where=where
            )
        )
    return findings
