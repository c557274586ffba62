"""Gradient-check numerics on analytic functions: numpy only, no Keras."""

import numpy as np
import pytest

from trainwatch.numerics import finite_differences as fd
from trainwatch.numerics import gradcheck_sampling as sampling
from trainwatch.numerics.relative_error import (
    THRESHOLDS,
    band,
    combine_verdicts,
    confirm_verdict,
    judge_line,
    relative_error,
    vector_relative_error,
)

F64 = THRESHOLDS["float64"]
EPS = float(np.finfo(np.float64).eps)


def sample_line(f, x, direction, gradient, step):
    """Values and linear predictions of `f` along `x + t·direction`."""
    values = [f(x + m * step * direction) for m in fd.OFFSETS]
    linear = [float(np.vdot(gradient, m * step * direction)) for m in fd.OFFSETS]
    return fd.analyze_line(values, linear, step)


def judge(line, noise, thresholds=F64):
    estimated = line.truncation + 3 * fd.roundoff_error(noise, line.step)
    kink = fd.detect_kink(line, noise)
    explained = kink and fd.kink_explains(line, thresholds.significance * estimated)
    return judge_line(
        line.analytic,
        line.numeric,
        line.error,
        estimated,
        kink,
        explained,
        thresholds,
    )[0]


# -- centered differences ----------------------------------------------------


def test_centered_difference_error_is_second_order():
    f = lambda v: float(np.exp(v).sum())  # noqa: E731
    x = np.array([0.3])
    errors = [
        abs(fd.centered_difference(f, x, h)[0] - np.exp(0.3)) for h in (1e-2, 5e-3)
    ]
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.01)
    one_sided = [abs((f(x + h) - f(x)) / h - np.exp(0.3)) for h in (1e-2, 5e-3)]
    assert one_sided[0] / one_sided[1] == pytest.approx(2.0, rel=0.02)


def test_centered_difference_full_gradient_and_direction():
    f = lambda v: float(np.sum(np.sin(v) * v))  # noqa: E731
    x = np.array([[0.1, -0.7], [1.3, 2.0]])
    exact = np.cos(x) * x + np.sin(x)
    np.testing.assert_allclose(fd.centered_difference(f, x, 1e-5), exact, rtol=1e-8)
    d = np.array([[1.0, 0.0], [0.0, -1.0]])
    assert fd.centered_difference(f, x, 1e-5, d) == pytest.approx(
        np.sum(exact * d), rel=1e-8
    )
    with pytest.raises(ValueError, match="Received: step=0"):
        fd.centered_difference(f, x, 0)


def test_truncation_estimate_matches_actual_error():
    """Richardson: |e(2h) − e(h)| / 3 predicts the O(h²) error of the step h."""
    f = lambda v: float(np.exp(3 * v).sum())  # noqa: E731
    x = np.array([0.2])
    g = 3 * np.exp(3 * x)
    for h in (1e-2, 3e-3):
        line = sample_line(f, x, np.ones(1), g, h)
        assert abs(line.error) == pytest.approx(line.truncation, rel=0.01)
        assert abs(line.error) == pytest.approx(27 * np.exp(0.6) * h**2 / 6, rel=0.02)


def test_smooth_float64_line_reaches_1e10():
    f = lambda v: float(np.tanh(v).sum())  # noqa: E731
    x = np.array([0.4, -0.2])
    g = 1 - np.tanh(x) ** 2
    line = sample_line(f, x, np.array([1.0, 0.0]), g, 1e-5)
    assert abs(line.error) / abs(line.analytic) < 1e-10
    assert not fd.detect_kink(line, EPS)


# -- kinks -------------------------------------------------------------------


@pytest.mark.parametrize("kink_at", [0.0, 0.3, -0.45, 1.4, -1.6])
@pytest.mark.parametrize("kind", ["abs", "relu"])
def test_kinks_are_detected_and_excused(kind, kink_at):
    h = 1e-4
    center = kink_at * h  # the kink at t = -center, in units of h: kink_at

    def f(v):
        z = v[0] - center
        return float(abs(z) if kind == "abs" else max(z, 0.0)) + 0.5 * v[0] ** 2

    # The framework's slope at the evaluation point (side of the kink it is on).
    x = np.array([0.0])
    side = -center
    if kind == "abs":
        slope = 1.0 if side > 0 else -1.0
    else:
        slope = 1.0 if side > 0 else 0.0
    line = sample_line(f, x, np.ones(1), np.array([slope]), h)
    assert fd.detect_kink(line, EPS)
    assert judge(line, EPS) in ("ok", "inconclusive")
    jump = 2.0 if kind == "abs" else 1.0
    assert 0.1 * jump < fd.kink_jump(line) <= jump * (1 + 1e-6)
    if kink_at == 0.0:
        assert fd.kink_jump(line) == pytest.approx(jump, rel=1e-6)


def test_kink_does_not_excuse_a_wrong_gradient():
    h = 1e-4
    f = lambda v: float(1e-3 * max(v[0], 0.0) + np.sin(v[0]))  # noqa: E731
    line = sample_line(f, np.zeros(1), np.ones(1), np.array([2.0]), h)  # cos(0)=1
    assert fd.detect_kink(line, EPS)
    assert not fd.kink_explains(line, 1e-9)
    assert judge(line, EPS) == "wrong"


def test_split_tie_gradient_is_excused():
    """Some frameworks give max(a, b) a 0.5/0.5 gradient at a tie."""
    h = 1e-4
    f = lambda v: float(max(v[0], 0.0))  # noqa: E731
    line = sample_line(f, np.zeros(1), np.ones(1), np.array([0.5]), h)
    assert fd.kink_explains(line, 1e-12)


@pytest.mark.parametrize(
    "f, g",
    [
        (lambda v: float(np.exp(v).sum()), lambda v: np.exp(v)),
        (lambda v: float(np.sum(v**2)), lambda v: 2 * v),
        (lambda v: float(np.sum(np.log1p(v**2))), lambda v: 2 * v / (1 + v**2)),
    ],
)
def test_smooth_functions_show_no_kink(f, g):
    rng = np.random.default_rng(0)
    x = rng.normal(size=5)
    for i in range(5):
        d = np.zeros(5)
        d[i] = 1.0
        line = sample_line(f, x, d, g(x), 1e-5)
        noise = fd.estimate_noise([line.fourth_difference], abs(f(x)), EPS)
        assert not fd.detect_kink(line, max(noise, 4 * EPS * abs(f(x))))
        assert judge(line, 4 * EPS * abs(f(x))) == "ok"


def confirmed(f, x, g, h, noise):
    """`judge` at step h, then `confirm_verdict` with the same line at h / SHRINK."""
    verdicts = []
    lines = [sample_line(f, x, np.ones(1), g, s) for s in (h, h / fd.SHRINK)]
    for line in lines:
        estimated = line.truncation + 3 * fd.roundoff_error(noise, line.step)
        verdicts.append((judge(line, noise), line.error, estimated))
    (verdict, error, estimated), (_, small_error, small_estimated) = verdicts
    return confirm_verdict(
        verdict, "", error, estimated, (small_error, small_estimated)
    )


def test_a_mismatch_from_a_kink_near_the_point_does_not_persist():
    """A ReLU kink at 2h/3: the fourth difference misses it, the slope does not."""
    h = 1e-4
    f = lambda v: float(max(v[0] - 2 / 3 * h, 0.0) + np.sin(v[0]))  # noqa: E731
    g = np.cos(np.zeros(1))  # the slope on this side of the kink: right
    assert judge(sample_line(f, np.zeros(1), np.ones(1), g, h), EPS) == "wrong"
    verdict, reason = confirmed(f, np.zeros(1), g, h, EPS)
    assert verdict == "inconclusive" and "kink" in reason


@pytest.mark.parametrize("noise", [EPS, 1e-7])
def test_a_wrong_gradient_stays_wrong_at_a_smaller_step(noise):
    f = lambda v: float(np.sin(v).sum())  # noqa: E731
    x = np.array([0.5])
    h = 1e-5 if noise == EPS else 1e-2
    thresholds = F64 if noise == EPS else THRESHOLDS["float32"]
    for factor in (2.0, 0.5, 1.01 if noise == EPS else 0.5):
        g = factor * np.cos(x)
        verdict = judge(sample_line(f, x, np.ones(1), g, h), noise, thresholds)
        assert verdict == "wrong"
        assert confirmed(f, x, g, h, noise)[0] == "wrong"


def test_confirm_verdict_keeps_ok_lines_and_needs_the_same_sign():
    assert confirm_verdict("ok", "r", 1.0, 1e-3, (0.0, 1e-3)) == ("ok", "r")
    assert confirm_verdict("wrong", "r", 1.0, 1e-3, (1.0, 1e-3)) == ("wrong", "r")
    assert confirm_verdict("wrong", "r", 1.0, 1e-3, (-1.0, 1e-3))[0] == "inconclusive"
    assert confirm_verdict("wrong", "r", 1.0, 1e-3, (0.3, 1e-3))[0] == "inconclusive"


def test_round_off_does_not_shrink_with_the_step_kinks_do():
    h = 1e-4
    t = np.array(fd.OFFSETS)

    def relu_line(step, at):
        return fd.analyze_line(np.maximum(t * step - at * h, 0), 0 * t, step)

    for at in (0.0, 0.3, 0.6, -1.2, 1.7):
        big = [relu_line(h, at).fourth_difference]
        small = [relu_line(h / fd.SHRINK, at).fourth_difference]
        assert not fd.roundoff_not_kinks(big, small), at
    rng = np.random.default_rng(0)
    weights = np.array([1.0, -4.0, 6.0, -4.0, 1.0])
    misread = 0
    for _ in range(200):  # pure noise, five lines at each step
        big, small = rng.normal(size=(2, 5, 5)) @ weights
        misread += not fd.roundoff_not_kinks(big, small)
    assert misread <= 4
    assert not fd.roundoff_not_kinks([0.0], [0.0])
    with pytest.raises(ValueError, match="as many"):
        fd.roundoff_not_kinks([1.0, 2.0], [1.0])


# -- noise -------------------------------------------------------------------


def test_noise_is_measured_from_fourth_differences():
    rng = np.random.default_rng(3)
    sigma = 1e-9
    fourths = []
    for _ in range(300):
        t = 1e-4 * np.array(fd.OFFSETS)
        values = np.exp(t) + rng.normal(scale=sigma, size=5)
        fourths.append(fd.analyze_line(values, t, 1e-4).fourth_difference)
    assert fd.estimate_noise(fourths, 1.0, EPS) == pytest.approx(sigma, rel=0.15)
    assert fd.estimate_noise([0.0, 0.0], 2.0, EPS) == 2 * EPS
    assert fd.estimate_noise([np.nan], 1.0, EPS) == EPS


def test_noise_sets_the_verdict_not_a_fixed_band():
    """The same 1e-6 relative mismatch: a bug in clean float64, noise in float32."""
    h = 1e-3
    x = np.array([0.5])
    f = lambda v: float(np.sin(v).sum())  # noqa: E731
    slope = np.cos(x) * (1 + 1e-6)
    line = sample_line(f, x, np.ones(1), slope, h)
    assert judge(line, EPS) == "suspicious"
    float32_noise = float(np.finfo(np.float32).eps)
    assert judge(line, float32_noise, THRESHOLDS["float32"]) in ("ok", "inconclusive")


# -- relative error and verdicts ------------------------------------------------


def test_relative_error_both_zero_and_nan():
    errors = relative_error([0.0, 1.0, np.nan, -2.0], [0.0, 1.1, 1.0, 2.0])
    assert errors[0] == 0.0
    assert errors[1] == pytest.approx(0.1 / 1.1)
    assert np.isnan(errors[2])
    assert errors[3] == 2.0
    assert relative_error(0.0, 0.0) == 0.0
    assert vector_relative_error(np.zeros(3), np.zeros(3)) == 0.0
    with pytest.raises(ValueError, match="Received: analytic.size=2"):
        vector_relative_error([1.0, 2.0], [1.0])


@pytest.mark.parametrize(
    "error, expected",
    [(1e-9, "good"), (1e-7, "good"), (1e-5, "acceptable"), (1e-3, "suspicious")]
    + [(1e-4, "suspicious"), (0.2, "wrong"), (np.inf, "wrong")],
)
def test_cs231n_bands(error, expected):
    assert band(error) == expected


def test_judge_line_cases():
    ok = judge_line(1.0, 1.0 + 1e-10, 1e-10, 1e-9, False, False, F64)
    assert ok == ("ok", "within the numerical error")
    assert judge_line(1.0, 1.001, 1e-3, 1e-9, False, False, F64)[0] == "wrong"
    assert judge_line(1.0, 1 + 1e-6, 1e-6, 1e-9, False, False, F64)[0] == "suspicious"
    assert judge_line(1.0, 1 + 1e-9, 1e-9, 1e-12, False, False, F64)[0] == "ok"
    assert judge_line(1.0, 1.001, 1e-3, 1e-3, False, False, F64)[0] == "inconclusive"
    assert judge_line(1.0, 0.0, -1.0, 1e-9, True, True, F64)[0] == "inconclusive"
    assert judge_line(1.0, 0.0, -1.0, 1e-9, True, False, F64)[0] == "wrong"
    assert judge_line(np.nan, 0.0, 0.0, 0.0, False, False, F64)[0] == "inconclusive"
    assert judge_line(0.0, 0.0, 0.0, 0.0, False, False, F64)[0] == "ok"


def test_combine_verdicts():
    assert combine_verdicts([]) == "inconclusive"
    assert combine_verdicts(["inconclusive", "ok"]) == "ok"
    assert combine_verdicts(["ok", "suspicious"]) == "suspicious"
    assert combine_verdicts(["suspicious", "wrong", "ok"]) == "wrong"


def test_a_numpy_gradient_check_flags_exactly_the_wrong_variable():
    """0.1% error in one 'variable' of a smooth function: wrong there, ok elsewhere."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=4)
    x = rng.normal(size=(6, 3))

    def loss(a_, b_):
        return float(np.mean(np.tanh(x @ a_ + b_) ** 2))

    def grads(a_, b_):
        z = np.tanh(x @ a_ + b_)
        dz = 2 * z * (1 - z**2) / z.size
        return x.T @ dz, dz.sum(axis=0) * 1.001  # the bias gradient is 0.1% off

    ga, gb = grads(a, b)
    verdicts = {}
    for name, value, grad, other in (("a", a, ga, b), ("b", b, gb, a)):
        h = fd.choose_step(value, 3e-5, 0.1)
        lines = []
        for index in sampling.choose_coordinates(grad, 2, 2, rng):
            d = np.zeros_like(value)
            d[index] = 1.0
            if name == "a":
                f = lambda v, b_=other: loss(v, b_)  # noqa: E731
            else:
                f = lambda v: loss(a, v)  # noqa: E731
            lines.append(sample_line(f, value, d, grad, h))
        noise = fd.estimate_noise([e.fourth_difference for e in lines], 1.0, EPS)
        verdicts[name] = combine_verdicts(judge(e, noise) for e in lines)
    assert verdicts == {"a": "ok", "b": "wrong"}


# -- steps and sampling ----------------------------------------------------------


def test_choose_step_scales_with_magnitude():
    assert fd.choose_step(np.full(3, 10.0), 1e-6, 1.0) == pytest.approx(1e-5)
    assert fd.choose_step(np.zeros(3), 1e-6, 0.5) == pytest.approx(5e-7)
    assert fd.choose_step(np.array([np.inf, 2.0]), 1e-2, 0.1) == pytest.approx(2e-2)
    with pytest.raises(ValueError, match="Received: relative_step=-1"):
        fd.choose_step(np.ones(2), -1, 1.0)


def test_choose_coordinates_top_then_random():
    g = np.array([[0.0, -3.0, 1.0], [2.0, 0.0, 0.5]])
    picks = sampling.choose_coordinates(
        g, top=2, random=3, rng=np.random.default_rng(0)
    )
    assert picks[:2] == [(0, 1), (1, 0)]
    assert len(picks) == len(set(picks)) == 5
    assert len(sampling.choose_coordinates(g, top=10, random=10)) == 6
    assert len(sampling.choose_coordinates(np.zeros(4), top=2, random=1)) == 1
    with pytest.raises(ValueError, match="Received: top=-1"):
        sampling.choose_coordinates(g, top=-1, random=0)


def test_random_direction_is_plus_minus_one():
    d = sampling.random_direction((7, 3), np.random.default_rng(2))
    assert d.shape == (7, 3)
    assert set(np.unique(d)) <= {-1.0, 1.0}


def test_reweighted_examples_breaks_a_cancelling_sum_but_not_a_zero_one():
    rng = np.random.default_rng(0)
    signs = np.resize([1.0, -1.0], 8)  # per-example gradients summing to 0
    weights = sampling.reweighted_examples(None, 8, rng)
    assert np.all((weights >= 0.5) & (weights <= 1.5))
    assert abs(np.dot(weights, signs)) > 1e-3
    assert np.dot(weights, np.zeros(8)) == 0.0
    given = np.array([[1.0, 0.0]] * 8)  # per time step; the zeros stay masked
    reweighted = sampling.reweighted_examples(given, 8, rng)
    assert reweighted.shape == (8, 2) and not np.any(reweighted[:, 1])
    assert sampling.reweighted_examples({"out": np.ones(8)}, 8, rng) is None
    assert sampling.reweighted_examples(np.ones(5), 8, rng) is None
