"""Layer statistics (numpy) and the rules on them: no framework involved."""

import numpy as np
import pytest

from trainwatch.numerics import distributions as nd
from trainwatch.rules import layers as rules


def test_unit_ids_dense_conv_and_sampled():
    assert nd.unit_ids((4,)).tolist() == [0, 1, 2, 3]
    # channels last: 2 x 2 positions, 3 channels
    assert nd.unit_ids((2, 2, 3)).tolist() == [0, 1, 2] * 4
    # channels first: 3 channels of 2 positions each
    assert nd.unit_ids((3, 2), unit_axis=0).tolist() == [0, 0, 1, 1, 2, 2]
    kept = np.array([3, 4, 5, 9])
    assert nd.unit_ids((2, 2, 3), kept).tolist() == [0, 1, 2, 0]


def test_dead_units_per_channel():
    rng = np.random.default_rng(0)
    out = np.maximum(rng.normal(size=(16, 5, 5, 4)), 0)  # relu outputs
    out[..., 1] = 0.0  # channel 1 never fires
    out[3, 2, 2, 2] = 0.0  # channel 2 is zero somewhere, alive elsewhere
    count = nd.dead_units(out.reshape(16, -1), nd.unit_ids((5, 5, 4)))
    assert count == nd.UnitCount(1, 4)
    assert count.fraction == 0.25


def test_dead_units_one_nonzero_example_keeps_a_unit_alive():
    out = np.zeros((8, 3))
    out[5, 0] = 1e-3
    assert nd.dead_units(out, nd.unit_ids((3,))) == (2, 3)


def test_saturated_units_tanh_and_sigmoid():
    rng = np.random.default_rng(1)
    tanh = np.tanh(rng.normal(size=(100, 4)) * np.array([0.5, 100.0, 500.0, 1.0]))
    counted = nd.saturated_units(tanh, nd.unit_ids((4,)), (-1.0, 1.0))
    assert counted == (2, 4), f"{counted=}"
    sigmoid = (tanh + 1) / 2  # the same units on a (0, 1) scale
    assert nd.saturated_units(sigmoid, nd.unit_ids((4,)), (0.0, 1.0)) == (2, 4)


def test_saturated_units_needs_most_examples():
    out = np.full((10, 1), 0.99)
    out[:2] = 0.0  # saturated on 8 of 10 examples: below 90%
    assert nd.saturated_units(out, nd.unit_ids((1,)), (-1, 1)) == (0, 1)
    assert nd.saturated_units(out, nd.unit_ids((1,)), (-1, 1), min_fraction=0.8) == (
        1,
        1,
    )


def test_norms_and_moments():
    assert nd.l2_norm([np.array([3.0]), None, np.array([[4.0]])]) == 5.0
    assert nd.rms([np.array([3.0, 4.0]), np.zeros(2)]) == 2.5
    assert np.isnan(nd.rms([None]))
    assert nd.mean_and_std(np.array([1.0, 3.0, np.inf])) == (2.0, 1.0)


def test_dead_units_rule_thresholds_and_severity():
    findings = rules.dead_units(
        {"a": (64, 64), "b": (30, 64), "c": (20, 64), "d": (0, 0)}, step=3, epoch=1
    )
    assert [(f.where, f.severity) for f in findings] == [
        ("a", "error"),
        ("b", "warning"),
    ]
    assert "64 of 64" in findings[0].message and "He init" in findings[0].advice
    assert findings[0].step == 3 and findings[0].epoch == 1


def test_saturated_units_rule_names_the_activation():
    (finding,) = rules.saturated_units({"h": (30, 32)}, {"h": "sigmoid"})
    assert finding.code == "saturated_units" and finding.where == "h"
    assert "30 of 32 sigmoid units" in finding.message


def test_gradient_depth_vanishing_and_exploding():
    vanishing = [("l0", 1e-8), ("l1", 1e-6), ("l2", 1e-4), ("l3", 1e-3)]
    (finding,) = rules.gradient_depth(vanishing, step=5)
    assert finding.code == "vanishing_gradients" and finding.where == "l0"
    # Theil-Sen: median pairwise slope 1.83 decades a layer, over 3 layers.
    assert "falls 3.2e+05 times" in finding.message and "`l3`" in finding.message
    exploding = [("l0", 50.0), ("l1", 0.3), ("l2", 0.1)]
    (finding,) = rules.gradient_depth(exploding)
    assert finding.code == "exploding_gradients" and finding.where == "l0"


def test_gradient_depth_healthy_zero_and_nan_are_quiet():
    assert rules.gradient_depth([("a", 0.01), ("b", 0.05), ("c", 0.2)]) == []
    assert rules.gradient_depth([("a", 0.0), ("b", 0.1), ("c", np.nan)]) == []
    assert rules.gradient_depth([("a", 1e-9)]) == []


def test_gradient_depth_ignores_an_outlier_branch():
    # Attention's query/key projections get tiny gradients at initialization;
    # beside them the value projection is large. No trend across depth.
    scales = [("lstm", 3e-3), ("gru", 0.2), ("query", 2e-6), ("key", 1e-8)]
    scales += [("value", 0.4), ("output", 6e-3), ("dense", 6e-3), ("head", 5e-3)]
    assert rules.gradient_depth(scales) == []


def test_rule_arguments_are_checked():
    with pytest.raises(ValueError, match=r"Received: warn_fraction=0"):
        rules.dead_units({}, warn_fraction=0)
    with pytest.raises(ValueError, match=r"Received: factor=1.0"):
        rules.gradient_depth([], factor=1.0)


def test_gradient_depth_needs_the_halves_to_agree():
    # A zigzag whose median pairwise slope says "100 times" while the shallow
    # and the deep half have the same median: no trend.
    scales = [("a", 1e-3), ("b", 1e-9), ("c", 1e-5), ("d", 1e-5), ("e", 1e-3)]
    assert rules.gradient_depth(scales) == []


def test_norms_do_not_overflow_in_float32_and_take_ints():
    big = np.full(4, 1e20, np.float32)  # its squares overflow float32
    assert nd.l2_norm([big]) == pytest.approx(2e20, rel=1e-6)
    assert nd.l2_norm([np.array([3, 4])]) == 5.0
    assert nd.mean_and_std(np.array([1, 3], np.int8)) == (2.0, 1.0)
    half = np.array([1e4, 1e4], np.float16)  # float16 squares overflow
    assert nd.l2_norm([half]) == pytest.approx(np.sqrt(2) * 1e4, rel=1e-3)
