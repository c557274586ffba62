"""Training-dynamics numerics and rules: numpy only, no Keras model needed."""

import math

import numpy as np
import pytest

from trainwatch.numerics import curves
from trainwatch.numerics import update_ratio as ur
from trainwatch.rules import dynamics


def running_means(losses, batch_sizes=None):
    """Keras's loss tracker: running mean weighted by batch size, in float32."""
    sizes = np.ones(len(losses)) if batch_sizes is None else np.asarray(batch_sizes)
    totals = np.cumsum(np.asarray(losses) * sizes)
    return (totals / np.cumsum(sizes)).astype(np.float32)


# -- numerics: curves ----------------------------------------------------------
def test_batch_losses_recovered_from_running_means():
    rng = np.random.default_rng(0)
    losses = np.exp(rng.normal(-1.0, 0.5, 500))
    means = running_means(losses)
    for k in (1, 2, 10, 250, 500):
        before = means[k - 2] if k > 1 else 0.0
        got = curves.window_mean_loss(k - 1, before, k, means[k - 1])
        np.testing.assert_allclose(got, losses[k - 1], rtol=2e-3, err_msg=f"{k=}")


def test_window_losses_recovered_every_few_steps():
    rng = np.random.default_rng(1)
    losses = rng.uniform(0.5, 2.5, 60)
    means = running_means(losses)
    spe = 4
    for k in range(spe, 61, spe):
        before = means[k - spe - 1] if k > spe else 0.0
        got = curves.window_mean_loss(k - spe, before, k, means[k - 1])
        np.testing.assert_allclose(got, losses[k - spe : k].mean(), rtol=1e-4)


def test_window_mean_loss_rejects_bad_counts():
    with pytest.raises(ValueError, match="Received: count_before=3, count_after=3"):
        curves.window_mean_loss(3, 1.0, 3, 1.0)


def test_linear_trend_of_a_line_with_noise():
    rng = np.random.default_rng(0)
    x = np.arange(1000)
    y = 2.0 - 0.001 * x + rng.normal(0, 0.1, x.size)
    trend = curves.linear_trend(y, x)
    assert trend.slope == pytest.approx(-0.001, rel=0.05)
    assert trend.change == pytest.approx(-0.999, rel=0.05)
    assert trend.noise == pytest.approx(0.1, rel=0.1)
    assert trend.count == 1000


def test_linear_trend_skips_non_finite_and_handles_tiny_inputs():
    assert curves.linear_trend([1.0, math.nan, 3.0]).count == 2
    assert curves.linear_trend([]).count == 0
    assert curves.linear_trend([5.0]).slope == 0.0
    with pytest.raises(ValueError, match="Received: len"):
        curves.linear_trend([1.0, 2.0], x=[1.0])


def test_log10_or_none():
    assert curves.log10_or_none(100.0) == 2.0
    assert curves.log10_or_none(-1.0) is None
    assert curves.log10_or_none(math.inf) is None


# -- numerics: update ratios ---------------------------------------------------
def test_ratios_match_norms():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(20, 30))
    dw = 1e-3 * rng.normal(size=w.shape)
    got = ur.ratios([np.sum(dw**2)], [np.sum(w**2)])
    np.testing.assert_allclose(got, [np.linalg.norm(dw) / np.linalg.norm(w)])
    np.testing.assert_allclose(ur.ratios([4.0], [1.0], steps=2), [1.0])


def test_ratio_of_zero_weights_is_nan_not_inf():
    assert np.isnan(ur.ratios([1.0], [0.0])).all()


def test_layer_ratios_pool_the_layer_variables():
    got = ur.layer_ratios(
        ["m/a/kernel", "m/a/bias", "m/b/kernel"], [3.0, 1.0, 1.0], [100.0, 300.0, 4.0]
    )
    assert got == pytest.approx({"m/a": 0.1, "m/b": 0.5})


def test_sustained_level_ignores_zeros_and_nan():
    assert ur.sustained_level([0.5, 0.0, math.nan, 0.1, 0.2], min_samples=3) == 0.2
    assert ur.sustained_level([0.0, 0.0, 0.0]) is None


# -- rules -------------------------------------------------------------------
def test_loss_nan_names_step_and_choice():
    finding = dynamics.loss_nan(math.nan, step=7, epoch=0, stopping=True)
    assert finding.code == "loss_nan" and finding.severity == "error"
    assert "step 7" in finding.message and "stopped" in finding.message
    finding = dynamics.loss_nan(math.inf, step=7)
    assert "continues" in finding.message and "inf" in finding.message


def test_loss_diverging_above_initial_loss():
    finding = dynamics.loss_diverging([13.6], 2.3, recent_losses=[14.0] * 10)
    assert finding.code == "loss_diverging"
    assert "14" in finding.message and "2.3" in finding.message
    assert "learning rate" in finding.advice


def test_loss_diverging_weighs_the_noise_of_single_batches():
    rng = np.random.default_rng(0)
    # A noisy loss (MSE on small batches) that never rose: the first batch,
    # the reference, happened to be low.
    noisy = 1.6 * np.exp(rng.normal(0.0, 0.3, 50))
    assert dynamics.loss_diverging([1.73, 1.40, 1.31], 0.83, noisy) is None
    # A loss that blew up stays a finding, noisy or not.
    exploded = 1e4 * np.exp(rng.normal(0.0, 1.5, 50))
    finding = dynamics.loss_diverging([5e3], 2.5, exploded)
    assert finding is not None and finding.code == "loss_diverging"
    steady_rise = 5.0 * np.exp(rng.normal(0.0, 0.02, 50))
    assert dynamics.loss_diverging([4.0, 5.0], 2.3, steady_rise) is not None


def test_loss_diverging_when_epoch_loss_keeps_rising():
    finding = dynamics.loss_diverging([2.0, 0.5, 0.6, 0.9], 2.3)
    assert finding is not None and "rose 2 epochs" in finding.message
    assert dynamics.loss_diverging([2.0, 0.5, 0.45, 0.5], 2.3) is None


def test_loss_diverging_quiet_on_a_falling_loss():
    losses = np.linspace(2.3, 0.3, 40)
    assert dynamics.loss_diverging([1.5, 0.8, 0.4], 2.3, losses[-20:]) is None


def test_loss_plateau_on_a_flat_line():
    finding = dynamics.loss_plateau([2.90, 2.899, 2.897, 2.896], 2.71, steps_seen=88)
    assert finding is not None and finding.code == "loss_plateau"
    assert "2.9" in finding.message and "raise" in finding.advice
    # at a healthy rate, a loss this slow is labels apart from their inputs
    assert "near 1e-3 already" in finding.advice and "label" in finding.advice


def test_loss_plateau_quiet_when_learning_converged_or_diverged():
    assert dynamics.loss_plateau([1.9, 1.2, 0.8, 0.6], 2.5, steps_seen=88) is None
    # converged within the first epoch: low compared with the first batch
    assert dynamics.loss_plateau([0.2, 0.19, 0.185], 2.3, steps_seen=3000) is None
    # diverged: loss_diverging's job
    assert dynamics.loss_plateau([14.0, 14.5, 14.5], 2.7, steps_seen=88) is None
    # too early to judge
    assert dynamics.loss_plateau([2.9, 2.9], 2.9, steps_seen=88) is None
    assert dynamics.loss_plateau([2.9, 2.9, 2.9], 2.9, steps_seen=10) is None


def test_loss_plateau_quiet_on_a_rising_loss():
    # Adam at 100x its rate (torch digits MLP): the epoch loss rose from 1.572
    # to 1.987 below 1.5x the first batch's, while update ratios said 435x
    # too high; a linear output under from_logits=False rose 6.95 -> 8.53
    for losses, initial in [([1.572, 1.121, 1.987], 2.388), ([6.95, 7.9, 8.53], 5.75)]:
        assert dynamics.loss_plateau(losses, initial, steps_seen=132) is None
    rising_late = [2.0, 1.6, 1.40, 1.45, 1.52, 1.60]
    assert dynamics.loss_plateau(rising_late, 2.3, steps_seen=600) is None
    # flat within noise is still a plateau
    flat = dynamics.loss_plateau([2.30, 2.31, 2.32], 2.30, steps_seen=132)
    assert flat is not None and "did not fall" in flat.message


def test_loss_plateau_quiet_while_the_accuracy_climbs():
    """A loss near ln 2 that falls 1% while the accuracy climbs 0.5 -> 0.7 is
    a model learning with timid outputs; a flat accuracy is still a plateau."""
    losses = [0.6931, 0.690, 0.6864]
    assert dynamics.loss_plateau(losses, 0.6933, 60, scores=[0.5, 0.58, 0.71]) is None
    finding = dynamics.loss_plateau(losses, 0.6933, 60, scores=[0.5, 0.52, 0.53])
    assert finding is not None and finding.code == "loss_plateau"
    stuck = [2.0, 1.6, 1.40, 1.399, 1.398, 1.398]
    rising = [0.3, 0.4, 0.5, 0.55, 0.6, 0.66]
    assert dynamics.loss_plateau(stuck, 2.3, 600, scores=rising) is None
    flat = [0.3, 0.4, 0.5, 0.5, 0.51, 0.5]
    assert dynamics.loss_plateau(stuck, 2.3, 600, scores=flat) is not None


def test_loss_plateau_stuck_at_a_high_value():
    losses = [2.0, 1.6, 1.40, 1.399, 1.398, 1.398]
    finding = dynamics.loss_plateau(losses, 2.3, steps_seen=600)
    assert finding is not None and "stayed near 1.398" in finding.message


def test_loss_noisy_when_scatter_swamps_trend():
    rng = np.random.default_rng(0)
    losses = np.abs(1.2 + rng.normal(0, 1.0, 300))
    finding = dynamics.loss_noisy(losses, 2.3)
    assert finding is not None and finding.code == "loss_noisy"
    assert "batch" in finding.advice


def test_loss_noisy_quiet_for_clean_converged_or_diverged_curves():
    rng = np.random.default_rng(0)
    falling = np.linspace(2.3, 0.8, 100) + rng.normal(0, 0.1, 100)
    assert dynamics.loss_noisy(falling, 2.3) is None
    converged = np.abs(0.05 + rng.normal(0, 0.1, 100))
    assert dynamics.loss_noisy(converged, 2.3) is None
    diverged = 9000 + rng.normal(0, 7000, 100)
    assert dynamics.loss_noisy(diverged, 2.5) is None
    assert dynamics.loss_noisy([1.0, 3.0] * 5, 2.3) is None  # too few points


def test_overfitting_from_accuracy_gap():
    finding = dynamics.overfitting(
        [0.5, 0.1], [0.6, 0.7], [0.9, 0.99], [0.78, 0.81], metric="acc"
    )
    assert finding is not None and "0.99" in finding.message
    assert "0.81" in finding.message and "dropout" in finding.advice
    # one wide gap alone may be noise (a small validation set)
    once = dynamics.overfitting([0.5, 0.1], [0.6, 0.7], [0.9, 0.99], [0.88, 0.81])
    assert once is None


def test_overfitting_weighs_the_gap_against_a_small_validation_sets_noise():
    # Train 1.0 vs validation 0.85 twice: a gap of 0.15. On 39 examples the
    # validation accuracy is uncertain by ~0.057: that gap is within noise.
    args = ([0.5, 0.1], [0.6, 0.7], [1.0, 1.0], [0.85, 0.85])
    assert dynamics.overfitting(*args) is not None  # size unknown: as before
    assert dynamics.overfitting(*args, val_examples=39) is None
    large = dynamics.overfitting(*args, val_examples=2000)
    assert large is not None and "2000 validation examples" in large.message
    wide = dynamics.overfitting(
        [0.5, 0.1], [0.6, 0.7], [1.0, 1.0], [0.7, 0.7], val_examples=39
    )
    assert wide is not None and "sampling noise" in wide.message


def test_no_overfitting_while_the_validation_loss_still_falls_fast():
    """A CNN with BatchNormalization on digits, validation_split=0.2, 4 epochs
    (torch): the validation accuracy trails by 0.17 while it climbs and its
    loss falls 12-17% an epoch. The moving statistics lag; the model is not
    overfitting (it was a warning advising regularization)."""
    losses, val_losses = [2.16, 1.768, 1.389, 1.028], [2.209, 2.052, 1.801, 1.489]
    scores, val_scores = [0.184, 0.468, 0.72, 0.822], [0.269, 0.339, 0.514, 0.656]
    found = dynamics.overfitting(
        losses, val_losses, scores, val_scores, val_examples=360, chance=0.1
    )
    assert found is None
    # the same gap once the validation loss has levelled off
    levelled = [2.209, 2.052, 1.801, 1.78]
    found = dynamics.overfitting(
        losses, levelled, scores, val_scores, val_examples=360, chance=0.1
    )
    assert found is not None and "a gap of 0.166" in found.message


def test_with_batch_normalization_any_fall_of_the_validation_loss_waits():
    """A CNN with BatchNormalization on 8x8 digits (JAX): for five epochs the
    validation accuracy stays near guessing while training climbs, the
    validation loss falling only 1-4% an epoch; later it caught up (0.73 at
    epoch 10). With `val_fall=0` (what LossCurve passes for such a model) no
    overfitting is said while the validation loss still falls at all."""
    losses = [2.279, 2.176, 2.058, 1.91, 1.754, 1.595]
    val_losses = [2.294, 2.275, 2.243, 2.178, 2.09, 2.052]
    scores = [0.157, 0.306, 0.327, 0.447, 0.481, 0.522]
    val_scores = [0.102, 0.119, 0.146, 0.159, 0.218, 0.162]
    args = (losses, val_losses, scores, val_scores)
    kwargs = {"val_examples": 597, "chance": 0.1}
    assert dynamics.overfitting(*args, **kwargs) is not None  # 5% asked for
    assert dynamics.overfitting(*args, **kwargs, val_fall=0.0) is None
    # once the validation loss no longer falls, the gap counts again
    stalled = val_losses[:-1] + [2.09]
    found = dynamics.overfitting(
        losses, stalled, scores, val_scores, **kwargs, val_fall=0.0
    )
    assert found is not None and found.code == "overfitting"


def test_overfitting_from_rising_validation_loss():
    train = [1.0, 0.6, 0.4, 0.3, 0.2, 0.1]
    val = [1.1, 0.7, 0.6, 0.65, 0.7, 0.8]
    finding = dynamics.overfitting(train, val)
    assert finding is not None and "rose 3 times" in finding.message
    val_steady = [1.1, 0.7, 0.6, 0.58, 0.57, 0.57]
    assert dynamics.overfitting(train, val_steady) is None


def test_overfitting_ignores_epochs_without_validation():
    assert dynamics.overfitting([1.0, 0.5], [None, None], [0.9, 1.0], [None]) is None


def test_underfitting_poor_training_accuracy_small_gap():
    finding = dynamics.underfitting([0.3, 0.34, 0.35], [0.3, 0.33, 0.34])
    assert finding is not None and "0.35" in finding.message
    assert "capacity" in finding.advice
    assert dynamics.underfitting([0.3, 0.34, 0.35]) is not None  # no validation
    assert dynamics.underfitting([0.9, 0.95, 0.97], [0.9, 0.9, 0.9]) is None
    assert dynamics.underfitting([0.3, 0.5, 0.55], [0.1, 0.2, 0.3]) is None  # gap
    assert dynamics.underfitting([0.2, 0.3]) is None  # too early


def test_underfitting_waits_for_a_poor_score_to_stop_improving():
    # Three-epoch fits of a small classifier (jax, tensorflow, torch): poor,
    # no gap, but still gaining ~10% of what is left per epoch: early, not
    # underfitting.
    for train, val in (
        ([0.312, 0.401, 0.443], [0.328, 0.398, 0.445]),
        ([0.18, 0.26, 0.32], [0.172, 0.25, 0.328]),
        ([0.24, 0.305, 0.367], [0.328, 0.398, 0.422]),
    ):
        assert dynamics.underfitting(train, val) is None, f"rising {train=}"
    # A one-unit bottleneck on digits: flat and poor after three epochs.
    finding = dynamics.underfitting([0.096, 0.136, 0.142], [0.107, 0.127, 0.131])
    assert finding is not None and "stopped improving" in finding.message
    assert "+0.023 per epoch over the last 3 epochs" in finding.message
    # Rose fast, then flattened while still poor: judged on the recent epochs.
    curve = [0.1, 0.3, None, 0.4, 0.42, 0.43]
    assert dynamics.underfitting(curve) is not None
    assert dynamics.underfitting(curve, window=6) is None  # the whole rise
    assert dynamics.underfitting([0.1, 0.2, 0.3, 0.4, 0.5]) is None  # still rising
    assert dynamics.underfitting([0.3, 0.3, 0.3], min_epochs=4) is None  # too early


def test_update_ratio_high_gives_the_factor():
    history = {"m/d/kernel": [78.0, 0.68, 0.19], "m/e/kernel": [70.0, 0.6, 0.2]}
    (finding,) = dynamics.update_ratio_findings(history, step=4, learning_rate=10.0)
    assert finding.code == "update_ratio_high" and finding.where is None
    assert "2 of 2" in finding.message and "m/d/kernel" in finding.message
    assert "lower the learning rate about" in finding.advice
    assert "from 10" in finding.advice


def test_update_ratio_low_gives_the_factor():
    history = {"d/kernel": [5e-6] * 5, "e/kernel": [1e-3] * 5}
    (finding,) = dynamics.update_ratio_findings(history)
    assert finding.code == "update_ratio_low" and finding.where == "d/kernel"
    assert "raise the learning rate about 200x" in finding.advice


def test_update_ratio_healthy_or_too_few_samples_is_quiet():
    assert dynamics.update_ratio_findings({"k": [8e-3, 5e-3, 3e-3, 1e-3]}) == []
    assert dynamics.update_ratio_findings({"k": [5.0, 5.0]}) == []
    assert dynamics.update_ratio_findings({"k": [0.0] * 10}) == []


def test_underfitting_waits_for_a_falling_training_loss():
    # Three epochs of a healthy two-output model (jax, tensorflow): accuracy
    # poor and slow to move, but the loss still falling ~5% an epoch.
    scores, losses = [0.41, 0.43, 0.44], [0.844, 0.801, 0.764]
    assert dynamics.underfitting(scores) is not None  # by the score alone
    assert dynamics.underfitting(scores, train_losses=losses) is None
    flat = [0.80, 0.78, 0.76]  # 2.6% an epoch, as the one-unit bottleneck
    assert dynamics.underfitting(scores, train_losses=flat) is not None
    misaligned = [0.8, 0.7]  # not one per epoch: judged by the score
    assert dynamics.underfitting(scores, train_losses=misaligned) is not None


def test_underfitting_is_not_excused_by_a_loss_that_only_sheds_a_penalty():
    # Dropout 0.9 on digits (jax): the training loss falls 10% an epoch as the
    # network learns to live with the noise; the validation loss stays at
    # ln(10) and the accuracy near chance.
    scores, val_scores = [0.112, 0.116, 0.124], [0.174, 0.191, 0.181]
    losses, flat_val = [3.416, 3.262, 2.949], [2.258, 2.263, 2.266]
    kwargs = dict(val_scores=val_scores, train_losses=losses)
    assert dynamics.underfitting(scores, **kwargs) is None  # before: excused
    found = dynamics.underfitting(scores, **kwargs, val_losses=flat_val)
    assert found.code == "underfitting" and "dropout rates" in found.advice
    # a validation loss that falls with it: still learning
    falling_val = [2.10, 1.95, 1.80]
    assert dynamics.underfitting(scores, **kwargs, val_losses=falling_val) is None
    # validated every few epochs: too few validation losses to say otherwise
    sparse_val = [None, None, 2.266]
    assert dynamics.underfitting(scores, **kwargs, val_losses=sparse_val) is None


def test_a_validation_score_below_guessing_is_called_a_mismatch_not_overfitting():
    # digits sorted by label, validation_split=0.2 (tensorflow): the validation
    # set holds the last classes only
    losses, val_losses, scores = [0.20, 0.14], [4.5, 4.8], [0.90, 0.97]
    found = dynamics.overfitting(
        losses, val_losses, scores, [0.017, 0.017], val_examples=360, chance=0.1
    )
    assert found.code == "overfitting"
    assert "below what guessing gets" in found.message
    assert "shuffle the data" in found.advice
    for val_scores, chance in [
        ([0.70, 0.72], 0.1),  # plain overfitting
        ([0.017, 0.017], 0.001),  # 1000 classes: 0.017 is above guessing
        ([0.017, 0.017], None),  # the number of classes is unknown
    ]:
        plain = dynamics.overfitting(
            losses, val_losses, scores, val_scores, val_examples=360, chance=chance
        )
        assert "guessing" not in plain.message and "Regularize" in plain.advice


def test_a_validation_score_at_guessing_is_called_labels_apart_from_inputs():
    # digits MLP with its training labels permuted apart from the inputs
    # (torch): training memorizes, validation stays at 1/10
    losses, val_losses = [2.16, 2.05, 1.97], [2.33, 2.36, 2.40]
    scores, val_scores = [0.30, 0.40, 0.45], [0.10, 0.096, 0.116]
    found = dynamics.overfitting(
        losses, val_losses, scores, val_scores, val_examples=397, chance=0.1
    )
    assert found.code == "overfitting"
    assert "guessing's 0.1" in found.message and "0.116" in found.message
    assert "not paired with their inputs" in found.message
    assert "x and y together" in found.advice and "Regularize" not in found.advice
    for val_scores, chance, examples in [
        ([0.15, 0.16], 0.1, 397),  # above guessing's noise: plain overfitting
        ([0.12, 0.13], 0.1, 10000),  # noise shrinks with the validation size
        ([0.10, 0.116], None, 397),  # the number of classes is unknown
    ]:
        plain = dynamics.overfitting(
            losses, val_losses, scores, val_scores, val_examples=examples, chance=chance
        )
        assert "guessing" not in plain.message and "Regularize" in plain.advice


def test_underfitting_names_dropout_rates_that_drop_most_inputs():
    # Dropout(0.95) after both hidden layers of the digits MLP: training
    # accuracy 0.106 (validation 0.086) after 8 epochs, "give the model more
    # capacity" advised
    train, val = [0.1, 0.104, 0.106], [0.09, 0.087, 0.086]
    rates = [("seq/dropout", 0.95), ("seq/dropout_1", 0.95), ("seq/d2", 0.2)]
    finding = dynamics.underfitting(train, val, dropout_rates=rates)
    assert "2 dropout layers (seq/dropout, seq/dropout_1) drop 95%" in finding.message
    assert "survives 0.25% of the steps" in finding.message
    assert "`keep_prob=0.9` is `Dropout(0.1)`" in finding.advice
    assert "capacity" not in finding.advice.split(".")[0]
    one = dynamics.underfitting(train, val, dropout_rates=[("d", 0.8)])
    assert "The dropout layer d drops 80% of its inputs" in one.message
    usual = dynamics.underfitting(train, val, dropout_rates=[("d", 0.5)])
    assert "dropout layer" not in usual.message
    assert usual.advice == dynamics.UNDERFITTING_ADVICE
    assert dynamics.underfitting([0.9, 0.95, 0.97], dropout_rates=rates) is None
