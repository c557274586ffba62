"""Input and initialization statistics and rules, numpy only (no model)."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from trainwatch.numerics import init_stats, input_stats
from trainwatch.rules import initialization, inputs

RNG = np.random.default_rng(0)


def digits():
    x = load_digits().data
    std = x.std(axis=0)
    std[std == 0] = 1
    return x, (x - x.mean(axis=0)) / std


def findings_for(x, **kwargs):
    return inputs.input_findings([input_stats.summarize_input(x, **kwargs)])


def codes(findings, severity=None):
    return sorted(
        f.code for f in findings if severity is None or f.severity == severity
    )


# -- input statistics ---------------------------------------------------------


def test_summary_per_feature_and_per_channel():
    x = RNG.normal(size=(32, 5, 5, 3)) * [1.0, 2.0, 3.0] + [0.0, 10.0, -10.0]
    stats = input_stats.summarize_input(x)
    assert stats.n_features == 3 and stats.channel_axis == 3
    np.testing.assert_allclose(stats.mean, x.mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(stats.std, x.std(axis=(0, 1, 2)))

    first = np.moveaxis(x, 3, 1)  # the same images, channels first
    stats_cf = input_stats.summarize_input(first, channels_first=True)
    assert stats_cf.channel_axis == 1
    np.testing.assert_allclose(stats_cf.mean, stats.mean)


@pytest.mark.parametrize(
    "ndim, channels_first, expected",
    [(1, False, -1), (2, False, 1), (3, False, 2), (3, True, 2), (5, True, 1)],
)
def test_feature_axis(ndim, channels_first, expected):
    assert input_stats.feature_axis(ndim, channels_first) == expected


def test_constant_and_binary_flags():
    x = np.stack(
        [RNG.normal(size=100), np.full(100, 3.0), RNG.integers(0, 2, 100)], axis=1
    )
    stats = input_stats.summarize_input(x)
    assert stats.constant.tolist() == [False, True, False]
    assert stats.binary.tolist() == [False, False, True]
    assert stats.std[1] == 0  # no division anywhere downstream
    assert stats.graded.tolist() == [True, False, False]


def test_summary_reads_a_bounded_number_of_examples():
    x = np.zeros((1000, 10))
    stats = input_stats.summarize_input(x, max_elements=50)
    assert stats.n_examples == 5


def test_summary_rejects_bad_values():
    with pytest.raises(TypeError, match="Received: values.dtype="):
        input_stats.summarize_input(np.array(["a", "b"]))
    with pytest.raises(ValueError, match="Received: values.shape="):
        input_stats.summarize_input(np.float32(1.0))


# -- input rules --------------------------------------------------------------


def test_standardized_digits_are_normalized():
    _, standardized = digits()
    for n in (len(standardized), 64, 16):
        found = findings_for(standardized[:n])
        assert "inputs_not_normalized" not in codes(found), f"{n=}: {found}"
        assert codes(found, "warning") == [], f"{n=}"


def test_constant_features_are_a_note_not_unnormalized():
    _, standardized = digits()
    found = findings_for(standardized, name="pixels")
    assert [(f.code, f.severity, f.where) for f in found] == [
        ("inputs_constant", "info", "pixels")
    ]
    assert "features 0, 32, 39" in found[0].message


def test_a_large_constant_feature_is_unnormalized():
    # standardized digits with one feature set to 1000 on every example: the
    # digits MLP's initial loss was 13.9 and no step could lower it
    _, standardized = digits()
    x = standardized.copy()
    x[:, 5] = 1000.0
    found = findings_for(x, name="pixels")
    warning = [f for f in found if f.severity == "warning"]
    assert [(f.code, f.where) for f in warning] == [("inputs_not_normalized", "pixels")]
    assert "constant feature(s) (5) hold large values: 1000" in warning[0].message
    assert "`std[std == 0] = 1`" in warning[0].advice
    for value in (1.0, -3.0):  # a bias column stays a note
        x[:, 5] = value
        assert codes(findings_for(x), "warning") == [], f"{value=}"


def test_all_constant_input_is_a_warning():
    found = findings_for(np.ones((10, 4)))
    assert [(f.code, f.severity) for f in found] == [("inputs_constant", "warning")]


def test_raw_digits_and_raw_pixels_warn():
    raw, _ = digits()
    found = findings_for(raw)
    assert codes(found, "warning") == ["inputs_not_normalized"]
    pixels = RNG.integers(0, 256, (64, 8, 8, 3)).astype(np.uint8)
    (finding,) = findings_for(pixels)
    assert (finding.code, finding.severity) == ("inputs_not_normalized", "warning")
    assert "RMS" in finding.message and "range 0 to 255" in finding.message
    assert "per channel" in finding.advice and "axis=(0, 1, 2)" in finding.advice
    assert "validation and test" in finding.advice


def test_unit_interval_data_is_at_most_info():
    raw, _ = digits()
    pixels = RNG.integers(0, 256, (64, 8, 8, 3)) / 255.0
    white_background = np.clip(1 - np.abs(RNG.normal(0, 0.05, (200, 30))), 0, 1)
    for name, x in [("digits/16", raw / 16), ("pixels/255", pixels)]:
        found = [f for f in findings_for(x) if f.code == "inputs_not_normalized"]
        assert [f.severity for f in found] == ["info"], name
        assert "centering" in found[0].message
    assert codes(findings_for(white_background), "warning") == []


def test_mixed_scales_warn():
    x = RNG.normal(size=(256, 4)) * [1e-3, 1.0, 1.0, 1e3]
    (finding,) = findings_for(x, name="table")
    assert finding.severity == "warning" and finding.where == "table"
    assert "differ by" in finding.message and "feature 3" in finding.message
    # The same spread at a modest overall scale is still flagged.
    x = RNG.normal(size=(256, 3)) * [1e-2, 1.0, 1.0]
    assert codes(findings_for(x), "warning") == ["inputs_not_normalized"]


def test_offset_and_tiny_inputs_warn():
    year = RNG.normal(2010, 6, (100, 1))
    (finding,) = findings_for(year)
    assert "stds off zero" in finding.message
    shifted = RNG.normal(1.1, 0.05, (100, 3))
    assert "stds off zero" in findings_for(shifted)[0].message
    tiny = RNG.normal(size=(100, 3)) * 1e-3
    assert "tiny" in findings_for(tiny)[0].message


def test_one_hot_and_binary_features_are_fine():
    one_hot = np.eye(10)[RNG.integers(0, 10, 200)]
    mostly_ones = (RNG.random((200, 5)) < 0.95).astype(float)
    signs = np.sign(RNG.normal(size=(200, 5)))
    for x in (one_hot, mostly_ones, signs, one_hot.astype(bool)):
        assert findings_for(x) == []


# -- initialization statistics and rules --------------------------------------


def test_fans_and_references():
    assert init_stats.compute_fans((64, 10)) == (64, 10)
    assert init_stats.compute_fans((3, 3, 16, 32)) == (144, 288)
    refs = init_stats.reference_variances(100, 300, "relu")
    assert refs == pytest.approx({"he": 0.02, "glorot": 0.005})
    assert list(init_stats.reference_variances(100, 300, "xavier")) == [
        "lecun",
        "glorot",
    ]
    assert init_stats.activation_family("leaky_relu") == "relu"
    assert init_stats.activation_family("sigmoid") == "xavier"
    assert init_stats.activation_family("my_activation") == "unknown"


def glorot_uniform(fan_in, fan_out, shape=None):
    limit = np.sqrt(6 / (fan_in + fan_out))
    return RNG.uniform(-limit, limit, shape or (fan_in, fan_out))


@pytest.mark.parametrize(
    "fan_in, fan_out, activation",
    [(64, 64, "relu"), (8, 512, "relu"), (512, 8, "relu"), (64, 10, "softmax")],
)
def test_glorot_default_never_triggers(fan_in, fan_out, activation):
    stats = init_stats.kernel_init_stats(
        "k", glorot_uniform(fan_in, fan_out), activation
    )
    assert initialization.kernel_findings([stats]) == []


def test_he_and_lecun_do_not_trigger():
    he = RNG.normal(0, np.sqrt(2 / 128), (128, 64))
    lecun = RNG.normal(0, np.sqrt(1 / 128), (3, 3, 128 // 9 + 1, 32))
    stats = [
        init_stats.kernel_init_stats("he_tanh", he, "tanh"),
        init_stats.kernel_init_stats("he_relu", he, "relu"),
        init_stats.kernel_init_stats("lecun_selu", lecun, "selu"),
    ]
    assert initialization.kernel_findings(stats) == []
    assert stats[1].ratio == pytest.approx(1.0, rel=0.1)


def test_large_small_and_constant_kernels_trigger():
    big = init_stats.kernel_init_stats("big", RNG.normal(0, 1, (64, 64)), "relu")
    small = init_stats.kernel_init_stats("small", RNG.normal(0, 0.01, (64, 64)), "tanh")
    zeros = init_stats.kernel_init_stats("zeros", np.zeros((64, 64)), "relu")
    found = initialization.kernel_findings([big, small, zeros])
    assert [(f.code, f.where) for f in found] == [
        ("init_scale_unusual", "big"),
        ("init_scale_unusual", "small"),
        ("init_scale_unusual", "zeros"),
    ]
    assert "too large" in found[0].message and "he_normal" in found[0].advice
    assert "x the he reference for its relu" in found[0].message
    assert "too small" in found[1].message and "glorot_uniform" in found[1].advice
    assert "every weight equal" in found[2].message


def test_kernel_rule_rejects_bad_bounds():
    with pytest.raises(ValueError, match="Received: low=2"):
        initialization.kernel_findings([], low=2)


def test_signal_rule():
    healthy = init_stats.signal_gains([("d1", 1.0), ("d2", 0.7), ("d3", 0.5)])
    assert initialization.signal_findings(healthy) == []
    vanishing = init_stats.signal_gains([("d1", 1.0), ("d2", 0.05), ("d3", 1e-3)])
    (finding,) = initialization.signal_findings(vanishing)
    assert finding.where == "d3" and "vanishes" in finding.message
    exploding = init_stats.signal_gains([("d1", 1.0), ("d2", 30.0), ("d3", 900.0)])
    (finding,) = initialization.signal_findings(exploding)
    assert finding.where == "d3" and "explodes" in finding.message
    too_short = init_stats.signal_gains([("d1", 1.0), ("d2", 1e-4)])
    assert initialization.signal_findings(too_short) == []
    dead_input = init_stats.signal_gains([("d1", 0.0), ("d2", 0.0), ("d3", 0.0)])
    assert initialization.signal_findings(dead_input) == []


def test_heads_may_start_small_but_not_large():
    zeros = init_stats.kernel_init_stats("head", np.zeros((64, 10)), "softmax")
    small = init_stats.kernel_init_stats(
        "head", RNG.normal(0, 1e-3, (64, 10)), "softmax"
    )
    large = init_stats.kernel_init_stats(
        "head", RNG.normal(0, 3.0, (64, 10)), "softmax"
    )
    assert initialization.kernel_findings([zeros, small], heads=["head"]) == []
    (finding,) = initialization.kernel_findings([large], heads=["head"])
    assert "too large" in finding.message


def test_nan_and_inf_in_inputs_are_an_error_measured_apart():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 4))
    x[5, 1], x[9, 1], x[9, 3] = np.nan, np.inf, np.nan
    stats = input_stats.summarize_input(x, name="features")
    assert stats.non_finite.tolist() == [0, 2, 0, 1]
    assert stats.examples_non_finite == 2
    # the other statistics leave them out
    assert np.isfinite(stats.mean).all() and np.isfinite(stats.std).all()
    found = inputs.input_findings([stats])
    [finding] = [f for f in found if f.code == "inputs_not_finite"]
    assert finding.severity == "error" and finding.where == "features"
    assert "3 nan or inf value(s) in 2 of the 64 examples" in finding.message
    assert "features 1, 3" in finding.message
    clean = input_stats.summarize_input(rng.normal(size=(64, 4)))
    assert "inputs_not_finite" not in {f.code for f in inputs.input_findings([clean])}
