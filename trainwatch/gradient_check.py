"""`check_gradients`: backprop gradients of a Keras model against finite differences.

The check runs on a float64 copy of the model (`trainwatch.backends.float64`),
in inference mode and through stateless calls, so the user's weights, optimizer
and random state are left exactly as they were. For every trainable variable
(biases too) it probes a few coordinates (the largest analytic gradients plus
random ones) and one random direction that covers the whole variable at once,
so the cost grows with the number of variables, not of parameters.

Each probe samples the loss at `θ + t·d`, `t = -2h, -h, 0, h, 2h`, with a step
`h` scaled to the variable's magnitude, and estimates its own numerical error
(round-off measured from fourth differences, truncation from a Richardson
comparison of steps `h` and `2h`); see `trainwatch.numerics`. A mismatch far
beyond that error is a bug; a kink (ReLU, max-pool, hinge, max) crossed by the
probe is reported as inconclusive, not as a bug. The data loss and the
regularization loss are checked apart.

Every mismatch is measured again at an eighth of the step before it is called
wrong or suspicious: a wrong gradient is wrong at any step, a mismatch made by
a kink near the point is not. A variable whose loss carries far more round-off
than the rest of the model (a layer on its path computing in float32) is told
from one that crosses kinks the same way, and said so in a note.

When the model cannot be rebuilt in float64 (e.g. an unregistered custom layer
or a subclassed model without `get_config`), the check runs in float32 on the
user's own model (stateless: nothing changes), with a float32 step (1e-2
relative) and bands of what float32 resolves (nothing below 3e-2 is reported,
wrong from 1e-1), and says so with a `gradient_check_imprecise` finding.

When no variable gets a gradient, or none before some layer (saturated
outputs, dead ReLUs, one cut after the last layer), that is one
`gradient_missing` finding with `where=None` and the cause the check can see
(`trainwatch.rules.no_gradient`), not one per variable.

Example:

>>> import keras, numpy as np
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, "tanh"),
...                           keras.layers.Dense(2)])
>>> model.compile(loss="mse")
>>> x, y = np.random.rand(8, 4), np.random.rand(8, 2)
>>> result = check_gradients(model, x, y)
>>> result.passed, result.precision
(True, 'float64')
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import NamedTuple

import keras
import numpy as np

from trainwatch.backends import float64, get_backend, model_copy
from trainwatch.backends import model_functions as mf
from trainwatch.findings import Finding
from trainwatch.numerics import finite_differences as fd
from trainwatch.numerics import gradcheck_sampling as sampling
from trainwatch.numerics.relative_error import (
    THRESHOLDS,
    combine_verdicts,
    confirm_verdict,
    judge_line,
    relative_error,
    vector_relative_error,
)
from trainwatch.rules import labels, no_gradient
from trainwatch.sanity import describe_loss, softmax_single_unit_finding

__all__ = [
    "GradientCheckResult",
    "LineCheck",
    "VariableCheck",
    "check_gradients",
]

PRECISIONS = ("auto", "float64", "float32")

# Step relative to a variable's RMS value, and the smallest RMS assumed (so a
# zero-initialised bias gets a step too), chosen by measurement on small MLPs
# on the three backends. float64: 3e-5 relative, at least 3e-6 absolute (worst
# probe ~1e-8; 1e-6 relative gave ~1e-7, 1e-7 relative ~1e-6: round-off).
# float32: 1e-2 relative, at least 1e-2 absolute (worst probe ~1e-3 with its
# truncation measured; 1e-4 left every probe inconclusive: round-off).
_RELATIVE_STEP = {"float64": 3e-5, "float32": 1e-2}
_MIN_SCALE = {"float64": 0.1, "float32": 1.0}
_ROUNDOFF_SIGMAS = 3.0  # round-off part of a line's error estimate, in std devs
_MIN_LINES_FOR_OWN_NOISE = 4
_NOISE_CAP = 30.0  # a variable's round-off is at most this times the model's
_TINY_GRADIENT = 1e-10
_ROUNDOFF_REASON = "round-off far above float64's"
# Compile the loss for the check's forward passes when running them eagerly
# would take longer than this. Tracing a `tf.function` without AutoGraph
# costs ~0.05 s for the digits MLP, then a pass takes 0.7 ms instead of 2.5
# (a first check: 0.34 -> 0.15 s); on PyTorch "compiled" means without
# autograd, which costs nothing.
_COMPILE_ABOVE_SECONDS = 0.1


class LineCheck(NamedTuple):
    """One probe of one variable: a coordinate or a random direction.

    Attributes:
        kind: `"coordinate"` or `"direction"`.
        index: The coordinate (a tuple), or `None` for a direction.
        part: `"data"` or `"regularization"`: which loss was differentiated.
        analytic: Backprop value: the gradient entry, or `g·d` for a direction.
        numeric: Centered-difference value of the same quantity.
        relative_error: `|analytic − numeric| / max(|analytic|, |numeric|)`.
        estimated_error: The probe's own numerical error estimate, relative to
            `max(|analytic|, |numeric|)`.
        kink: Whether the probe crossed a kink.
        verdict: `"ok"`, `"suspicious"`, `"wrong"` or `"inconclusive"`.
        reason: A few words on the verdict.
    """

    kind: str
    index: tuple | None
    part: str
    analytic: float
    numeric: float
    relative_error: float
    estimated_error: float
    kink: bool
    verdict: str
    reason: str

    def describe(self) -> str:
        where = "direction" if self.index is None else f"index {list(self.index)}"
        return (
            f"{where} ({self.part}): analytic {self.analytic:.10g}, numeric "
            f"{self.numeric:.10g}, relative error {_fmt(self.relative_error)} "
            f"(own error estimate {_fmt(self.estimated_error)})"
        )


@dataclasses.dataclass
class VariableCheck:
    """The gradient check of one trainable variable.

    Attributes:
        path: The Keras variable path, e.g. `"sequential/dense_1/kernel"`.
        layer: The path of the layer that owns it, e.g. `"sequential/dense_1"`.
        shape: The variable's shape.
        step: The finite-difference step used (absolute).
        verdict: `"ok"`, `"suspicious"`, `"wrong"` or `"inconclusive"`.
        relative_error: The largest relative error among conclusive probes
            (NaN when none was conclusive).
        vector_error: The vector form `‖a − n‖ / (‖a‖ + ‖n‖)` over the
            conclusive probes that crossed no kink, per loss part, the largest
            part (NaN when none). Never above `relative_error`, and less moved
            by a coordinate whose gradient is tiny next to the others'.
        estimated_error: The largest relative error the check estimated for
            itself among those probes: what "precise" meant here.
        coordinates: The coordinates probed.
        kinks: How many probes crossed a kink.
        lines: Every probe, as `LineCheck`s.
        gradient_missing: The framework returned no gradient (or an exactly
            zero one) for the data loss while the loss depends on it.
        notes: Anything else worth saying (tiny gradients, unused variable).
    """

    path: str
    layer: str
    shape: tuple
    step: float
    verdict: str
    relative_error: float
    estimated_error: float
    coordinates: list
    kinks: int
    lines: list
    gradient_missing: bool = False
    notes: list = dataclasses.field(default_factory=list)
    vector_error: float = float("nan")

    def worst(self, count=3) -> list:
        """The `count` probes with the largest relative error, worst first."""
        ranked = [line for line in self.lines if np.isfinite(line.relative_error)]
        ranked.sort(key=lambda line: -line.relative_error)
        bad = [line for line in ranked if line.verdict in ("wrong", "suspicious")]
        return (bad or ranked)[:count]


@dataclasses.dataclass
class GradientCheckResult:
    """What `check_gradients` found.

    Attributes:
        variables: One `VariableCheck` per trainable variable, in model order.
        precision: `"float64"` (the shadow model) or `"float32"` (fallback).
        findings: `Finding`s (`gradient_wrong`, `gradient_suspicious`,
            `gradient_missing`, `gradient_check_imprecise`), step unset; one
            `gradient_missing` with `where=None` when no variable gets a
            gradient, or none before some layer.
        loss: The loss at the checked weights (`LossParts`: total, data,
            regularization), or `None`.
        examples: How many examples the loss was computed on.
        seconds: Wall time of the check.
        message: Why the check ran in float32 or could not judge, if so.
    """

    variables: list
    precision: str
    findings: list
    loss: object = None
    examples: int = 0
    seconds: float = 0.0
    message: str = ""

    @property
    def passed(self) -> bool:
        """No variable wrong or suspicious, and at least one confirmed ok."""
        verdicts = [v.verdict for v in self.variables]
        if any(v in ("wrong", "suspicious") for v in verdicts):
            return False
        return "ok" in verdicts

    @property
    def failed(self) -> list:
        """The variables whose gradient is wrong."""
        return [v for v in self.variables if v.verdict == "wrong"]

    @property
    def max_relative_error(self) -> float:
        """The largest relative error of any conclusive probe (NaN if none)."""
        errors = [v.relative_error for v in self.variables]
        errors = [e for e in errors if np.isfinite(e)]
        return max(errors) if errors else float("nan")

    @property
    def max_vector_error(self) -> float:
        """The largest per-variable vector-form relative error (NaN if none)."""
        errors = [v.vector_error for v in self.variables]
        errors = [e for e in errors if np.isfinite(e)]
        return max(errors) if errors else float("nan")

    def summary(self) -> str:
        """One line: passed or failed, precision, worst errors."""
        state = "PASSED" if self.passed else "FAILED"
        if not self.passed and not self.failed:
            counts = [v.verdict for v in self.variables]
            if "suspicious" not in counts:
                state = "INCONCLUSIVE"
        return (
            f"Gradient check {state} ({self.precision}, {self.examples} examples, "
            f"{len(self.variables)} variables): max relative error "
            f"{_fmt(self.max_relative_error)} (one probe), "
            f"{_fmt(self.max_vector_error)} (vector form, one variable)."
        )

    def _rows(self):
        header = ["variable", "shape", "step", "rel. error", "vector form"]
        header += ["own estimate"]
        header += ["kinks", "verdict"]
        rows = []
        for v in self.variables:
            rows.append(
                [
                    v.path,
                    "x".join(str(s) for s in v.shape) or "scalar",
                    f"{v.step:.1e}",
                    _fmt(v.relative_error),
                    _fmt(v.vector_error),
                    _fmt(v.estimated_error),
                    f"{v.kinks}/{len(v.lines) // max(1, _parts_count(v))}",
                    v.verdict,
                ]
            )
        return header, rows

    def _details(self) -> list:
        lines = []
        for v in self.variables:
            if v.verdict in ("wrong", "suspicious"):
                lines.append(f"{v.path} (layer {v.layer}) is {v.verdict}:")
                lines += [f"  {line.describe()}" for line in v.worst()]
            for note in v.notes:
                lines.append(f"{v.path}: {note}")
        if self.message:
            lines.append(self.message)
        return lines

    def __str__(self) -> str:
        header, rows = self._rows()
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        text = [self.summary()]
        for row in [header] + rows:
            text.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        text += self._details()
        return "\n".join(text)

    def to_markdown(self) -> str:
        """The result as markdown (for TensorBoard's Text tab)."""
        header, rows = self._rows()
        text = [f"**{self.summary()}**", ""]
        text.append("| " + " | ".join(header) + " |")
        text.append("|" + " --- |" * len(header))
        for row in rows:
            text.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        details = self._details()
        if details:
            text += [""] + [f"    {line}" for line in details]
        return "\n".join(text)


def _parts_count(variable) -> int:
    return max(1, len({line.part for line in variable.lines}))


def _fmt(value) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.1e}"


# -- options -----------------------------------------------------------------


def validate_options(
    max_examples=8,
    coordinates=4,
    directions=1,
    relative_step=None,
    precision="auto",
    seed=0,
):
    """Checks `check_gradients` options; raises `ValueError` naming the bad one.

    Example:

    >>> validate_options(coordinates=4)
    >>> validate_options(precision="float16")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Expected precision in (...). Received: precision='float16'
    """
    for name, value, low in (
        ("max_examples", max_examples, 1),
        ("coordinates", coordinates, 0),
        ("directions", directions, 0),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"Expected an integer {name}. Received: {name}={value!r}")
        if value < low:
            raise ValueError(f"Expected {name} >= {low}. Received: {name}={value!r}")
    if coordinates + directions < 1:
        raise ValueError(
            "Expected at least one probe per variable (coordinates + directions "
            f">= 1). Received: coordinates={coordinates}, directions={directions}"
        )
    if relative_step is not None and not (
        isinstance(relative_step, (int, float))
        and math.isfinite(relative_step)
        and 0 < relative_step < 1
    ):
        raise ValueError(
            "Expected relative_step to be None or a number in (0, 1). "
            f"Received: relative_step={relative_step!r}"
        )
    if precision not in PRECISIONS:
        raise ValueError(
            f"Expected precision in {PRECISIONS}. Received: precision={precision!r}"
        )


# -- the check ----------------------------------------------------------------


def check_gradients(
    model,
    x,
    y,
    sample_weight=None,
    *,
    max_examples=8,
    coordinates=4,
    directions=1,
    relative_step=None,
    precision="auto",
    seed=0,
) -> GradientCheckResult:
    """Checks a model's backprop gradients against finite differences.

    Args:
        model: A built, compiled Keras model.
        x: Inputs (array, or list/dict of arrays for several inputs).
        y: Targets, matching the compiled loss.
        sample_weight: Optional per-example weights. Defaults to `None`.
        max_examples: Use only the first this many examples (few examples,
            few kinks, fast). Defaults to `8`.
        coordinates: Coordinates probed per variable: half the largest
            analytic gradients, half random. Defaults to `4`.
        directions: Random directions probed per variable (each covers the
            whole variable). Defaults to `1`.
        relative_step: Step relative to each variable's RMS value. Defaults to
            `None`: 3e-5 in float64, 1e-2 in float32. With `precision="auto"`
            it applies to the float64 check only: a fallback on float32 uses
            the float32 step (round-off would swamp a float64 one).
        precision: `"auto"` (float64, or float32 when the model cannot be
            rebuilt in float64), `"float64"` (raise if impossible) or
            `"float32"` (check the model as it is). Defaults to `"auto"`.
        seed: Seed of the random coordinates and directions. Defaults to `0`.

    Returns:
        A `GradientCheckResult`; `str(result)` is a readable table.

    Raises:
        TypeError: `model` is not a Keras model.
        ValueError: the model is not built or not compiled, `y` is `None`
            for a model compiled with a loss, or an option is invalid.
        trainwatch.backends.float64.Float64Unavailable: `precision="float64"`
            and the model cannot be rebuilt in float64 (with `"auto"`, the
            check falls back on float32 instead, for this or any failure of
            the float64 copy).

    Example:

    >>> result = check_gradients(model, x[:8], y[:8])  # doctest: +SKIP
    >>> print(result)  # doctest: +SKIP
    Gradient check PASSED (float64, 8 examples, 4 variables): max relative ...
    """
    mf.check_model_ready(model)
    mf.check_labels_given(model, y)
    validate_options(
        max_examples, coordinates, directions, relative_step, precision, seed
    )
    start = time.perf_counter()
    x, y, sample_weight = _first_examples((x, y, sample_weight), max_examples)
    examples = _count_examples(x)
    options = dict(coordinates=coordinates, directions=directions, seed=seed)
    with model_copy.preserved_random_state():
        result = None
        message = ""
        if precision in ("auto", "float64"):
            try:
                reference = None
                if float64.uses_user_code(model):  # the model's own, in float32
                    reference = _gradients(model, x, y, sample_weight, "float32")
                with float64.float64_mode():
                    shadow = float64.float64_shadow(model)
                    _check_aligned(model, shadow)
                    if reference is not None:
                        _check_same_function(
                            model, shadow, (x, y, sample_weight), reference
                        )
                    result = _run(
                        shadow, model, x, y, sample_weight, "float64",
                        relative_step, **options,
                    )  # fmt: skip
            except Exception as error:
                # No float64 copy (Float64Unavailable), or the copy would not
                # run in float64 (a custom loss or layer hard-wired to float32).
                if precision == "float64":
                    raise
                reason = _short_reason(error)
                message = (
                    f"No float64 check possible ({reason}). The check ran in "
                    f"float32 on the model itself: {_float32_caveat()}"
                )
                if relative_step is not None:
                    message += (
                        f" The step asked for (relative_step={relative_step}) "
                        "was meant for float64; float32 used its own "
                        f"({_RELATIVE_STEP['float32']})."
                    )
                    relative_step = None  # round-off would swamp a float64 step
        if result is None:
            result = _run(
                model, model, x, y, sample_weight, "float32", relative_step, **options
            )
            if not message:
                message = (
                    "The check ran in float32 as asked (precision='float32'): "
                    f"{_float32_caveat()}"
                )
            result.message = (message + " " + result.message).strip()
            result.findings.insert(
                0,
                Finding(
                    "gradient_check_imprecise",
                    "warning",
                    message,
                    "Give custom layers (and subclassed models) a "
                    "`get_config()` that lists all their constructor "
                    "arguments, so that the check can rebuild the model in "
                    "float64.",
                ),
            )
    result.examples = examples
    result.seconds = time.perf_counter() - start
    return result


def _float32_caveat() -> str:
    bands = THRESHOLDS["float32"]
    return (
        "float32 finite differences resolve relative errors of ~1e-2 at best, "
        f"so mismatches below {bands.suspicious:g} are not reported and a "
        f"gradient is called wrong from {bands.wrong:g} on (one off by a "
        "factor 2 is at 0.5)."
    )


def _short_reason(error) -> str:
    """Why there is no float64 copy, in one line (Keras's errors dump configs)."""
    text = str(error)
    missing = re.search(r"Could not locate class '([^']+)'", text)
    if missing:
        return (
            f"the model uses {missing.group(1)!r}, which is not registered for "
            "serialization (or has no `get_config`), so it cannot be rebuilt in "
            "float64"
        )
    first = model_copy.short_error_text(error)
    if not isinstance(error, float64.Float64Unavailable):
        first = f"the float64 copy failed: {type(error).__name__}: {first}"
    return first


# How far the float64 copy's loss and gradients may lie from the model's own,
# relative to them, by the model's compute dtype. In float32 round-off moves a
# loss by ~1e-6 of it and a gradient by ~1e-5 (more where a ReLU input lies
# within round-off of 0); a `get_config` that leaves out an argument usually
# moves them by far more.
_SAME_FUNCTION_TOLERANCE = {"float16": (3e-2, 1e-1), "bfloat16": (2e-1, 3e-1)}
_SAME_FUNCTION_TOLERANCE_FLOAT32 = (1e-4, 1e-2)


def _gradients(model, x, y, sample_weight, precision):
    batch = [mf.convert_batch(part, precision) for part in (x, y, sample_weight)]
    return mf.compute_gradients(model, *batch, part="data")


def _check_same_function(model, shadow, batch, reference):
    """Raises `Float64Unavailable` unless the float64 copy computes the model's
    loss (data and regularization parts) and data gradients on the batch.

    A copy rebuilt with custom classes is only as faithful as their
    `get_config`: one that leaves out a constructor argument rebuilds another
    function (or the same loss with other gradients, behind a
    `stop_gradient`), and a check of that would say nothing about the user's.
    """
    copied = _gradients(shadow, *batch, "float64")
    policy = getattr(model, "dtype_policy", None)
    compute = str(getattr(policy, "compute_dtype", "float32"))
    loss_tolerance, gradient_tolerance = _SAME_FUNCTION_TOLERANCE.get(
        compute, _SAME_FUNCTION_TOLERANCE_FLOAT32
    )
    advice = "a custom layer's `get_config` probably leaves out an argument"
    losses = [float(v) for v in (*reference.loss, *copied.loss)]
    if not all(map(math.isfinite, losses)):
        return  # nothing to compare: the check itself reports a non-finite loss
    for part in ("data", "regularization"):
        ours = float(getattr(reference.loss, part))
        theirs = float(getattr(copied.loss, part))
        scale = max(abs(ours), abs(theirs))
        if not abs(ours - theirs) <= loss_tolerance * scale + 1e-6:
            raise float64.Float64Unavailable(
                f"the float64 copy of {model.name!r} computes another {part} "
                f"loss than the model ({theirs:.7g} against {ours:.7g}): {advice}"
            )
    variables = model.trainable_variables
    for variable, ours, theirs in zip(variables, reference.gradients, copied.gradients):
        ours = np.zeros(variable.shape) if ours is None else np.asarray(ours)
        theirs = np.zeros(variable.shape) if theirs is None else np.asarray(theirs)
        ours, theirs = ours.astype(np.float64), theirs.astype(np.float64)
        scale = max(np.linalg.norm(ours), np.linalg.norm(theirs))
        difference = float(np.linalg.norm(ours - theirs))
        if math.isfinite(difference) and difference > gradient_tolerance * scale:
            raise float64.Float64Unavailable(
                f"the float64 copy of {model.name!r} gets other gradients for "
                f"{variable.path} than the model (they differ by "
                f"{difference / scale:.2g} of their size): {advice}"
            )


def _check_aligned(model, shadow):
    ours, theirs = model.trainable_variables, shadow.trainable_variables
    if len(ours) != len(theirs) or any(
        tuple(a.shape) != tuple(b.shape) for a, b in zip(ours, theirs)
    ):
        raise float64.Float64Unavailable(
            f"the float64 copy of {model.name!r} has different trainable variables"
        )


def _first_examples(data, count):
    """The first `count` examples of `(x, y, sample_weight)`: the first of
    nonzero weight when weights are given (weight 0 masks an example out:
    a check on masked examples only would see a flat loss)."""
    to_numpy = get_backend().to_numpy

    def as_array(value):
        array = value if isinstance(value, np.ndarray) else to_numpy(value)
        return np.asarray(array)

    rows = slice(0, count)
    weights = data[2]
    if weights is not None and not isinstance(weights, (dict, list, tuple)):
        w = as_array(weights)
        if w.ndim:
            weighted = np.flatnonzero(np.any(w.reshape(len(w), -1) != 0, axis=1))
            if 0 < len(weighted) and weighted[min(count, len(weighted)) - 1] >= count:
                rows = weighted[:count]  # some of the first are masked out

    def take(value):
        if value is None:
            return None
        array = as_array(value)
        if not array.ndim:
            return array
        if isinstance(rows, slice) or len(array) <= rows[-1]:
            return array[:count]
        return array[rows]

    return keras.tree.map_structure(take, data, none_is_leaf=True)


def _count_examples(x) -> int:
    for leaf in keras.tree.flatten(x):
        if leaf is not None and np.ndim(leaf):
            return int(np.shape(leaf)[0])
    return 0


class _Evaluator:
    """Loss parts of a model at its weights with one variable replaced.

    A check makes ~20 forward passes per variable. The first two run eagerly,
    the second is timed; if the rest would take long (a big model, or TensorFlow's and
    JAX's eager dispatch), the loss function is compiled once (`jax.jit`,
    `tf.function`; no autograd on PyTorch). Should compiling fail (a layer
    doing Python-side work), it stays eager.

    Args:
        expected_calls: How many evaluations the check will make.
    """

    def __init__(
        self, model, x, y, sample_weight, dtype, expected_calls, compiled=False
    ):
        backend = get_backend()
        self._backend = backend
        self.dtype = dtype
        loss_fn = mf.make_loss_function(model, x, y, sample_weight, "total")

        def parts(values):
            _, (_, data, regularization, _) = loss_fn(values)
            return data, regularization

        self._eager = parts
        self._compiled = None
        if compiled:  # compiled once per model, for this and every later check
            model_loss = mf.compiled_loss_function(model, x, y, "total")

            def compiled_parts(values):
                _, (_, data, regularization, _) = model_loss(
                    values, x, y, sample_weight
                )
                return data, regularization

            self._compiled = compiled_parts
        self._expected_calls = expected_calls
        self.arrays = [
            np.array(backend.to_numpy(v), dtype=dtype)
            for v in model.trainable_variables
        ]
        # Fresh tensors (not the variables): no autograd graph on PyTorch.
        self._values = [self._tensor(a) for a in self.arrays]
        self.calls = 0

    def _tensor(self, array):
        return keras.ops.convert_to_tensor(array, dtype=self.dtype)

    def __call__(self, index, array):
        values = list(self._values)
        values[index] = self._tensor(array)
        self.calls += 1
        if self._compiled is not None:
            try:
                return self._numbers(self._compiled(values))
            except Exception:  # not traceable: evaluate eagerly from now on
                self._compiled = None
        start = time.perf_counter()
        result = self._numbers(self._eager(values))
        if self.calls == 2:  # the first call may include one-off costs
            remaining = self._expected_calls - 2
            if (time.perf_counter() - start) * remaining > _COMPILE_ABOVE_SECONDS:
                self._compiled = self._backend.jit(self._eager)
        return result

    def _numbers(self, parts):
        to_numpy = self._backend.to_numpy
        return float(to_numpy(parts[0])), float(to_numpy(parts[1]))


def _run(
    eval_model,
    user_model,
    x,
    y,
    sample_weight,
    precision,
    relative_step,
    coordinates,
    directions,
    seed,
):
    dtype = np.float64 if precision == "float64" else np.float32
    name = precision
    xb = mf.convert_batch(x, name)
    yb = mf.convert_batch(y, name)
    swb = mf.convert_batch(sample_weight, name)
    # The float64 shadow is kept per model: on JAX its functions are compiled
    # once and serve every later check (eager where that fails); the user's
    # own model, checked in float32, is left as it is.
    compiled = eval_model is not user_model and mf.compiles_per_model()
    reg_grads = None
    if compiled:
        data_grads, reg_grads = mf.compute_gradients_of_parts(
            eval_model, xb, yb, swb, ("data", "regularization")
        )
    else:
        data_grads = mf.compute_gradients(eval_model, xb, yb, swb, part="data")
    loss = data_grads.loss
    variables = user_model.trainable_variables
    if not all(np.isfinite([loss.data, loss.regularization])):
        return _non_finite_result(variables, precision, loss)
    if reg_grads is None:
        reg_grads = mf.compute_gradients(eval_model, xb, yb, swb, part="regularization")
    check_reg = loss.regularization != 0.0 or any(
        g is not None and np.any(g) for g in reg_grads.gradients
    )
    lines_per_variable = coordinates + directions
    expected = 4 * sum(
        min(lines_per_variable, int(np.prod(v.shape)) + directions) for v in variables
    )
    evaluator = _Evaluator(eval_model, xb, yb, swb, dtype, expected, compiled)
    rng = np.random.default_rng(seed)
    rel = relative_step or _RELATIVE_STEP[precision]
    thresholds = THRESHOLDS[precision]
    eps = float(np.finfo(dtype).eps)

    probed = []
    for index in range(len(variables)):
        parts = {"data": data_grads.gradients[index]}
        if check_reg:
            parts["regularization"] = reg_grads.gradients[index]
        probed.append(
            _probe_variable(
                evaluator, index, parts, loss, rel, _MIN_SCALE[precision],
                coordinates, directions, rng,
            )
        )  # fmt: skip

    # Round-off per (variable, part), from the fourth differences; variables
    # with few probes borrow the median over all of them.
    pooled = {}
    for record in probed:
        for part, lines in record["lines"].items():
            pooled.setdefault(part, []).extend(e.fourth_difference for _, e in lines)
    checks = [
        _judge_variable(variable, record, pooled, loss, eps, thresholds, precision)
        for variable, record in zip(variables, probed)
    ]
    _note_cancelled_gradients(eval_model, checks, (x, y, sample_weight), name, rng)
    findings = []
    for check in checks:
        findings += _variable_findings(check, precision)
    findings = _point_past_weightless_layers(findings, checks, user_model)
    findings = _blame_label_rows(findings, user_model, y)
    whole = _no_gradient_scope(checks, probed)
    if whole is not None:  # (nearly) no variable gets a gradient: one finding
        evidence = _no_gradient_evidence(
            eval_model, user_model, (xb, yb, swb), y, loss, _count_examples(x)
        )
        findings = _replace_missing(
            findings, whole.paths, no_gradient.finding(whole, evidence)
        )
    return GradientCheckResult(checks, precision, findings, loss=loss)


_CANCELLED_NOTE = (
    "its data gradient is exactly zero on these examples, but not each "
    "example's: their contributions cancel (e.g. an L1/MAE or hinge loss with "
    "as many examples on either side). It is in use; other examples give it "
    "a gradient."
)


def _note_cancelled_gradients(model, checks, batch, precision, rng):
    """Tells a gradient whose examples cancel from a variable nothing uses.

    A variable with an exactly zero gradient and a flat loss looks unused, but
    an output bias under an L1 or hinge loss gets `±1/n` from each example and
    balanced signs cancel exactly. One more gradient pass, with the examples
    randomly reweighted (`sampling.reweighted_examples`), tells them apart:
    only there does a variable get a gradient. Runs only when some variable
    looks unused; where the pass is impossible (sample weights per output)
    or fails, the variable stays "not used".
    """
    unused = [position for position, check in enumerate(checks) if _unused(check)]
    if not unused:
        return
    x, y, sample_weight = batch
    weights = sampling.reweighted_examples(sample_weight, _count_examples(x), rng)
    if weights is None:
        return
    converted = [mf.convert_batch(part, precision) for part in (x, y, weights)]
    try:
        reweighted = mf.compute_gradients(model, *converted, part="data")
    except Exception:  # "not used" stays: the cautious reading
        return
    for position in unused:
        gradient = reweighted.gradients[position]
        if gradient is not None and np.any(gradient):
            check = checks[position]
            check.notes = [note for note in check.notes if "not used" not in note]
            check.notes.append(_CANCELLED_NOTE)


def _point_past_weightless_layers(findings, checks, model):
    """Widens `gradient_wrong`'s advice where the fault may lie after the
    variable's layer: its gradient is wrong, every checked variable of the
    later layers is right, and layers without weights sit in between (a
    custom activation or `custom_gradient` layer is checked through the
    variables before it only).

    Example:

    >>> _point_past_weightless_layers([], [], None)
    []
    """
    layers = list(getattr(model, "layers", None) or [])
    paths = [getattr(layer, "path", None) or layer.name for layer in layers]
    verdicts = {}
    for check in checks:
        verdicts.setdefault(check.layer, []).append(check.verdict)
    suspects = {}
    for index, path in enumerate(paths):
        if "wrong" not in verdicts.get(path, ()):
            continue
        later = paths[index + 1 :]
        weighted = [p for p in later if p in verdicts]
        if not weighted or any(v != "ok" for p in weighted for v in verdicts[p]):
            continue
        between = later[: later.index(weighted[0])]
        if between:
            suspects[path] = (between, weighted[0])
    if not suspects:
        return findings
    widened = []
    for finding in findings:
        layer = next((c.layer for c in checks if c.path == finding.where), None)
        if finding.code == "gradient_wrong" and layer in suspects:
            between, right = suspects[layer]
            names = ", ".join(between)
            finding = dataclasses.replace(
                finding,
                advice=(
                    f"The fault lies between layer {layer} and layer {right}, "
                    f"whose variables check out: in the backward pass of "
                    f"{names} (no weights of its own, so checked only through "
                    f"the variables before it), of {layer}, or in {right}'s "
                    "gradient with respect to its input. " + finding.advice
                ),
            )
        widened.append(finding)
    return widened


def _no_gradient_scope(checks, probed):
    """`no_gradient.scope` of a check's variables, or `None`.

    Returns `None` at once, without looking at any gradient array, when fewer
    than two variables get no gradient: the healthy case costs nothing.
    """
    lacking = sum(_unused(check) or check.gradient_missing for check in checks)
    if lacking < 2:
        return None
    return no_gradient.scope(
        (check.path, check.layer, _gradient_state(check, record))
        for check, record in zip(checks, probed)
    )


def _gradient_state(check, record) -> str:
    """What the check saw of a variable's data gradient (`no_gradient` states)."""
    if check.gradient_missing:
        return no_gradient.CUT
    if _unused(check):
        return no_gradient.FLAT
    grad = record["grads"].get("data")
    if grad is not None and np.any(grad):
        return no_gradient.LIVE
    return no_gradient.OTHER


def _unused(check) -> bool:
    """No gradient, and the data loss does not change with the variable."""
    return check.verdict not in ("wrong", "suspicious") and any(
        "not used" in note for note in check.notes
    )


def _no_gradient_evidence(eval_model, user_model, batch, y, loss, examples):
    """The loss kind and the predictions, for `no_gradient.finding` (one pass).

    Never raises: what cannot be gathered is left out of the evidence.
    """
    data_loss = getattr(loss, "data", math.nan)
    try:
        spec = describe_loss(user_model)
    except Exception:  # an unusual compile: the loss value alone is evidence
        return no_gradient.evidence(data_loss, examples)
    y_pred = None
    if spec.kind is not None:
        try:
            loss_fn = mf.make_loss_function(eval_model, *batch, part="data")
            _, (_, _, _, y_pred) = loss_fn(mf.trainable_values_with(eval_model))
            y_pred = np.asarray(get_backend().to_numpy(y_pred), dtype=np.float64)
        except Exception:  # no predictions: the loss value alone is evidence
            y_pred = None
    single_unit = _softmax_single_unit(user_model, y_pred, spec.name)
    try:
        return no_gradient.evidence(
            data_loss, examples, spec.kind, spec.from_logits, y, y_pred,
            float(keras.config.epsilon()), single_unit,
        )  # fmt: skip
    except Exception:  # labels and predictions that do not fit together
        return no_gradient.evidence(data_loss, examples)


def _blame_label_rows(findings, model, y) -> list:
    """`findings` with wrong gradients put down to label rows that are not
    distributions under categorical cross-entropy, where they are not."""
    judged = ("gradient_wrong", "gradient_suspicious")
    if not any(f.code in judged for f in findings):
        return findings
    try:
        kind = describe_loss(model).kind
        note = labels.label_rows_not_distributions(get_backend().to_numpy(y), kind)
    except Exception:  # labels of another structure: the findings stand
        return findings
    if note is None:
        return findings
    return [
        dataclasses.replace(f, message=f"{f.message} {note}", advice=labels.ROWS_ADVICE)
        if f.code in judged
        else f
        for f in findings
    ]


def _softmax_single_unit(model, y_pred, loss_name):
    """The output layer's path when it is a softmax over one unit, else `None`."""
    try:
        finding = softmax_single_unit_finding(model, y_pred, loss_name)
    except Exception:  # an unusual model: not judged
        return None
    return None if finding is None else finding.where


def _replace_missing(findings, paths, finding) -> list:
    """`findings` with the `gradient_missing` of `paths` replaced by `finding`."""
    paths = set(paths)
    kept, position = [], None
    for item in findings:
        if item.code == "gradient_missing" and item.where in paths:
            position = len(kept) if position is None else position
            continue
        kept.append(item)
    kept.insert(len(kept) if position is None else position, finding)
    return kept


class _Probe(NamedTuple):
    """One line through a variable's value: a coordinate axis or a direction."""

    kind: str  # "coordinate" or "direction"
    index: tuple | None  # the coordinate, for a coordinate line
    direction: np.ndarray | None  # the direction, for a direction line


class _LineSampler:
    """Loss parts along one variable's probe lines, at any step.

    Every line is sampled at `t = -2h, -h, 0, h, 2h`; the same line can be
    sampled again at a smaller step (`measure(position, step)`) to tell a
    kink or round-off from a wrong gradient.
    """

    def __init__(self, evaluator, index, grads, base):
        self._evaluator = evaluator
        self._index = index
        self._grads = grads
        self._base = base
        self.theta32 = evaluator.arrays[index]  # working dtype
        self.theta = self.theta32.astype(np.float64, copy=False)
        self.probes = []
        self._cache = {}

    def measure(self, position, step) -> dict:
        """`{part: LineEstimate}` of probe `position` with step `step`."""
        key = (position, float(step))
        if key not in self._cache:
            probe = self.probes[position]
            if probe.kind == "coordinate":
                self._cache[key] = self._coordinate(probe.index, step)
            else:
                self._cache[key] = self._direction(probe.direction, step)
        return self._cache[key]

    def _point(self, array):
        return dict(
            zip(("data", "regularization"), self._evaluator(self._index, array))
        )

    def _coordinate(self, coordinate, step):
        theta, work = self.theta, self.theta32.copy()
        values = {part: [0.0] * 5 for part in self._grads}
        offsets = [0.0] * 5
        for slot, multiple in enumerate(fd.OFFSETS):
            point = self._base
            if multiple != 0:
                work[coordinate] = theta[coordinate] + multiple * step
                offsets[slot] = float(work[coordinate]) - theta[coordinate]
                point = self._point(work)
            for part in values:
                values[part][slot] = point[part]
        half = (offsets[3] - offsets[1]) / 2.0 or step
        estimates = {}
        for part, grad in self._grads.items():
            slope = 0.0 if grad is None else float(grad[coordinate])
            linear = [slope * t for t in offsets]
            estimates[part] = fd.analyze_line(values[part], linear, half)
        return estimates

    def _direction(self, direction, step):
        theta = self.theta
        values = {part: [0.0] * 5 for part in self._grads}
        linear = {part: [0.0] * 5 for part in self._grads}
        for slot, multiple in enumerate(fd.OFFSETS):
            point = self._base
            if multiple != 0:
                moved = theta + (multiple * step) * direction
                moved = moved.astype(self.theta32.dtype, copy=False)
                applied = moved.astype(np.float64, copy=False) - theta
                point = self._point(moved)
                for part, grad in self._grads.items():
                    if grad is not None:
                        linear[part][slot] = float(np.vdot(grad, applied))
            for part in values:
                values[part][slot] = point[part]
        return {
            part: fd.analyze_line(values[part], linear[part], step)
            for part in self._grads
        }


def _probe_variable(
    evaluator, index, parts, loss, rel, min_scale, coordinates, directions, rng
):
    grads = {}
    for part, grad in parts.items():
        grads[part] = None if grad is None else np.asarray(grad, dtype=np.float64)
    base = {"data": loss.data, "regularization": loss.regularization}
    sampler = _LineSampler(evaluator, index, grads, base)
    step = fd.choose_step(sampler.theta, rel, min_scale)
    ranking = grads.get("data")
    if ranking is None or not np.any(ranking):
        ranking = grads.get("regularization")
    top = coordinates // 2
    if ranking is None or not np.any(ranking):  # no gradient: random picks only
        ranking, top = np.zeros(sampler.theta.shape), 0
    picks = sampling.choose_coordinates(ranking, top, coordinates - top, rng)
    sampler.probes += [_Probe("coordinate", c, None) for c in picks]
    for _ in range(directions):
        direction = sampling.random_direction(sampler.theta.shape, rng)
        sampler.probes.append(_Probe("direction", None, direction))
    lines = {part: [] for part in parts}
    for position, probe in enumerate(sampler.probes):
        for part, estimate in sampler.measure(position, step).items():
            lines[part].append(((probe.kind, probe.index), estimate))
    return {
        "step": step,
        "coordinates": picks,
        "grads": grads,
        "lines": lines,
        "sampler": sampler,
    }


class _Judged(NamedTuple):
    verdict: str
    reason: str
    kink: bool
    estimated: float  # absolute error estimate


def _estimated_error(estimate, noise) -> float:
    """A line's absolute error estimate: truncation plus round-off."""
    roundoff = fd.roundoff_error(noise, estimate.step)
    return estimate.truncation + _ROUNDOFF_SIGMAS * roundoff


def _judge_estimate(estimate, noise, thresholds) -> _Judged:
    estimated = _estimated_error(estimate, noise)
    kink = fd.detect_kink(estimate, noise)
    explained = kink and fd.kink_explains(estimate, thresholds.significance * estimated)
    verdict, reason = judge_line(
        estimate.analytic,
        estimate.numeric,
        estimate.error,
        estimated,
        kink,
        explained,
        thresholds,
    )
    return _Judged(verdict, reason, kink, estimated)


def _judge_part(part, lines, sampler, step, noise, own_noise, thresholds, float64):
    """Verdicts on one loss part's lines of one variable.

    Returns `(judged, roundoff)`: a `_Judged` per line, and, in a float64
    check, the variable's own round-off when it is far above the model's and
    was read as kinks (a layer computing in float32 on its path), else `None`.
    """
    judged = [_judge_estimate(estimate, noise, thresholds) for _, estimate in lines]
    smaller = step / fd.SHRINK
    roundoff = None
    kinked = [i for i, j in enumerate(judged) if j.kink and j.verdict != "ok"]
    suspect = float64 and own_noise > noise
    if suspect and len(kinked) >= 2 and 2 * len(kinked) >= len(lines):
        # Mostly "kinks" at a variable whose loss is noisier than the model's:
        # if nothing shrinks with the step, it is round-off (a layer on its
        # path computing in float32), not kinks.
        big = [lines[i][1].fourth_difference for i in kinked]
        small = [sampler.measure(i, smaller)[part].fourth_difference for i in kinked]
        if fd.roundoff_not_kinks(big, small):
            roundoff = own_noise
            judged = [
                _judge_estimate(estimate, roundoff, thresholds) for _, estimate in lines
            ]
    confirmed = []
    for position, ((_, estimate), line) in enumerate(zip(lines, judged)):
        if line.verdict in ("wrong", "suspicious"):
            again = sampler.measure(position, smaller)[part]
            verdict, reason = confirm_verdict(
                line.verdict,
                line.reason,
                estimate.error,
                line.estimated,
                (again.error, _estimated_error(again, roundoff or noise)),
            )
            if verdict != line.verdict:
                line = _Judged(verdict, reason, True, line.estimated)
        if roundoff is not None and line.verdict == "inconclusive":
            line = line._replace(reason=_ROUNDOFF_REASON, kink=False)
        confirmed.append(line)
    return confirmed, roundoff


def _judge_variable(variable, record, pooled, loss, eps, thresholds, precision):
    path = variable.path
    layer = path.rsplit("/", 1)[0] if "/" in path else path
    all_lines = []
    kinks = set()
    notes = []
    missing = False
    for part, lines in record["lines"].items():
        grad = record["grads"][part]
        if part == "regularization" and _flat_without_gradient(grad, lines):
            continue  # no regularizer on this variable: nothing to check
        value_scale = abs(loss.data if part == "data" else loss.regularization)
        fourths = [e.fourth_difference for _, e in lines]
        noise = fd.estimate_noise(fourths, value_scale, eps)
        overall = fd.estimate_noise(pooled[part], value_scale, eps)
        if len(lines) < _MIN_LINES_FOR_OWN_NOISE:
            noise = max(noise, overall)
        # A variable whose every probe crosses a kink (a bias at a ReLU's
        # corner) would read the kinks as noise: cap it by the whole model's.
        own_noise = noise
        noise = min(noise, _NOISE_CAP * overall)
        judged, roundoff = _judge_part(
            part, lines, record["sampler"], record["step"], noise, own_noise,
            thresholds, precision == "float64",
        )  # fmt: skip
        for position, (((kind, index), estimate), line) in enumerate(
            zip(lines, judged)
        ):
            if line.kink:
                kinks.add(position)
            scale = max(abs(estimate.analytic), abs(estimate.numeric))
            all_lines.append(
                LineCheck(
                    kind=kind,
                    index=index,
                    part=part,
                    analytic=estimate.analytic,
                    numeric=estimate.numeric,
                    relative_error=relative_error(estimate.analytic, estimate.numeric),
                    estimated_error=line.estimated / scale if scale else 0.0,
                    kink=line.kink,
                    verdict=line.verdict,
                    reason=line.reason,
                )
            )
        part_lines = [line for line in all_lines if line.part == part]
        if roundoff is not None:
            notes.append(
                _roundoff_note(part, part_lines, roundoff, overall, value_scale)
            )
        elif (
            precision == "float64"
            and overall > _LOW_PRECISION_ROUNDOFF * value_scale
            and any(line.verdict == "inconclusive" for line in part_lines)
        ):
            notes.append(_low_precision_note(part, overall, value_scale))
        part_verdict = combine_verdicts(line.verdict for line in part_lines)
        zero_gradient = grad is not None and not np.any(grad)
        if grad is None or zero_gradient:
            if part_verdict == "wrong":
                if part == "data":
                    missing = True
                what = "no gradient" if grad is None else "an exactly zero gradient"
                notes.append(
                    f"backprop gives {what} for the {part} loss, but the loss "
                    "changes with this variable."
                )
            elif part == "data" and all(line.numeric == 0.0 for line in part_lines):
                notes.append(
                    "gets no gradient (or an exactly zero one) and the data loss "
                    "does not change with it on these examples: the variable is "
                    "not used, or every unit it feeds is inactive."
                )
    if record["grads"].get("data") is not None:
        largest = float(np.max(np.abs(record["grads"]["data"]), initial=0.0))
        if 0.0 < largest < _TINY_GRADIENT:
            data_lines = [line for line in all_lines if line.part == "data"]
            if _flat_within_roundoff(data_lines):
                notes.append(
                    "the data loss does not change with it beyond round-off, and "
                    f"backprop agrees (max |g| = {largest:.1e}): {_LOSS_INDEPENDENT}"
                )
            else:
                notes.append(
                    f"its gradients are tiny (max |g| = {largest:.1e} < 1e-10): "
                    "round-off may hide errors; the check's own estimate says "
                    "how much."
                )
    conclusive = [line for line in all_lines if line.verdict != "inconclusive"]
    worst = max(conclusive, key=lambda line: line.relative_error, default=None)
    return VariableCheck(
        path=path,
        layer=layer,
        shape=tuple(int(s) for s in variable.shape),
        step=record["step"],
        verdict=combine_verdicts(line.verdict for line in all_lines),
        relative_error=float("nan") if worst is None else worst.relative_error,
        estimated_error=max(
            (line.estimated_error for line in conclusive), default=float("nan")
        ),
        coordinates=list(record["coordinates"]),
        kinks=len(kinks),
        lines=all_lines,
        gradient_missing=missing,
        notes=notes,
        vector_error=_vector_error(conclusive),
    )


def _vector_error(conclusive_lines) -> float:
    """The vector-form relative error of the probes that crossed no kink,
    per loss part; the largest part's (NaN when no probe qualifies)."""
    by_part = {}
    for line in conclusive_lines:
        if not line.kink and line.index is not None:
            pair = by_part.setdefault(line.part, ([], []))
            pair[0].append(line.analytic)
            pair[1].append(line.numeric)
    errors = [vector_relative_error(a, n) for a, n in by_part.values()]
    return max(errors, default=float("nan"))


_LOSS_INDEPENDENT = (
    "the loss does not depend on it, as with a bias that a softmax or a "
    "normalization cancels (attention's key bias adds the same amount to "
    "every logit of a query). There is nothing to check."
)


def _flat_within_roundoff(lines) -> bool:
    """Every probe's numerical slope is within its own error estimate of 0."""
    return bool(lines) and all(
        line.verdict == "inconclusive"
        and abs(line.numeric)
        <= line.estimated_error * max(abs(line.analytic), abs(line.numeric))
        for line in lines
    )


def _roundoff_note(part, lines, roundoff, overall, value_scale) -> str:
    """Says plainly that a variable's loss carries round-off far above the model's."""
    scale = value_scale or 1.0
    reached = [
        line.estimated_error for line in lines if np.isfinite(line.estimated_error)
    ]
    precision = min(reached, default=float("nan"))
    return (
        f"the {part} loss carries round-off of {_fmt(roundoff / scale)} of its "
        f"value along this variable, {roundoff / overall:.1e} times the rest of "
        "the model's (float64 arithmetic gives ~1e-16, float32 ~1e-7): a layer "
        "on its path computes in a lower precision than float64 inside the "
        "check (a hard-coded cast to float32, or an op that computes in "
        "float32 on this backend). This is neither a kink nor a bug; the check "
        f"can resolve this variable's gradient only to ~{_fmt(precision)} "
        "(relative)."
    )


# Round-off of the whole float64 loss, relative to it, from which a lower
# precision somewhere in the model is the likelier cause (float64 arithmetic
# leaves ~1e-16 to 1e-14, float32 ~1e-7).
_LOW_PRECISION_ROUNDOFF = 1e-11


def _low_precision_note(part, overall, value_scale) -> str:
    """Says why a float64 check is imprecise throughout: the copy is not all
    float64 (a custom layer that casts to float32)."""
    return (
        f"the {part} loss carries round-off of {_fmt(overall / value_scale)} of "
        "its value throughout the model (float64 arithmetic gives ~1e-16, "
        "float32 ~1e-7): a layer computes in a lower precision than float64 "
        "inside the check (a hard-coded cast to float32, or an op that computes "
        "in float32 on this backend), which blurs the check of the variables "
        "before it. This is neither a kink nor a bug."
    )


def _flat_without_gradient(grad, lines) -> bool:
    if grad is not None and np.any(grad):
        return False
    return all(
        e.numeric == 0.0 and e.error_2h == 0.0 and e.fourth_difference == 0.0
        for _, e in lines
    )


def _variable_findings(check: VariableCheck, precision) -> list:
    findings = []
    worst = "; ".join(line.describe() for line in check.worst())
    bad_parts = sorted({line.part for line in check.lines if line.verdict == "wrong"})
    part_words = " and ".join(bad_parts) or "data"
    look_at = (
        f"Look at the backward pass of layer {check.layer}: a custom gradient "
        "(`stop_gradient`, `custom_gradient`), values computed outside Keras ops "
        "(numpy, `.numpy()`, Python floats) or an op that does not "
        "differentiate as intended."
    )
    if "regularization" in bad_parts and "data" not in bad_parts:
        look_at = (
            f"Look at the regularizers and `add_loss` terms of layer "
            f"{check.layer}: the data loss's gradient agrees, the "
            "regularization's does not."
        )
    if check.gradient_missing:
        findings.append(
            Finding(
                "gradient_missing",
                "error",
                f"No gradient reaches {check.path} (layer {check.layer}) although "
                f"the {part_words} loss changes with it. {worst}",
                look_at + " Something cuts the graph between this variable and "
                "the loss (`stop_gradient`, a cast to an integer, a numpy round "
                "trip).",
                where=check.path,
            )
        )
    elif check.verdict == "wrong":
        findings.append(
            Finding(
                "gradient_wrong",
                "error",
                f"The gradient of {check.path} (layer {check.layer}, {part_words} "
                f"loss) disagrees with finite differences: relative error "
                f"{_fmt(check.relative_error)} while the {precision} check "
                f"estimates its own error at {_fmt(check.estimated_error)}. "
                f"Worst: {worst}",
                look_at,
                where=check.path,
            )
        )
    elif check.verdict == "suspicious":
        findings.append(
            Finding(
                "gradient_suspicious",
                "warning",
                f"The gradient of {check.path} (layer {check.layer}) differs "
                f"slightly from finite differences: relative error "
                f"{_fmt(check.relative_error)}, beyond the check's own error "
                f"estimate {_fmt(check.estimated_error)}. Worst: {worst}",
                look_at + " A small error can also come from float32 math "
                "inside a layer (a hard-coded cast).",
                where=check.path,
            )
        )
    elif _unused(check):
        findings.append(
            Finding(
                "gradient_missing",
                "warning",
                f"{check.path} (layer {check.layer}) gets no gradient and the loss "
                "does not depend on it on the checked examples: training will not "
                "change it.",
                "Check that the layer is connected to the model's output (or mark "
                "it `trainable=False`); if it feeds ReLUs, they may all be dead.",
                where=check.path,
            )
        )
    elif check.verdict == "inconclusive":
        reasons = sorted({line.reason for line in check.lines})
        advice = (
            "Check again later in training or with other examples "
            "(`max_examples`, `seed`); fewer examples cross fewer kinks."
        )
        low_precision = any("lower precision than float64" in n for n in check.notes)
        if any(_LOSS_INDEPENDENT in note for note in check.notes):
            advice = (
                "Nothing to do where the layer is meant to be cancelled "
                "(attention's key bias); otherwise look at what makes the "
                "loss independent of this variable."
            )
        elif _ROUNDOFF_REASON in reasons or low_precision:
            advice = (
                "Look for a layer between this variable and the loss that casts "
                "to float32 or uses an op computing in float32 on this backend: "
                "its gradient can be checked to float32 precision only. If the "
                "cast is deliberate, nothing is wrong."
            )
        findings.append(
            Finding(
                "gradient_check_imprecise",
                "info",
                f"No verdict on {check.path} (layer {check.layer}): "
                f"{', '.join(reasons)}. " + " ".join(check.notes),
                advice,
                where=check.path,
            )
        )
    return findings


def _non_finite_result(variables, precision, loss):
    message = (
        f"The loss on the check batch is not finite (data {loss.data}, "
        f"regularization {loss.regularization}): no gradient can be checked."
    )
    checks = []
    for variable in variables:
        path = variable.path
        checks.append(
            VariableCheck(
                path=path,
                layer=path.rsplit("/", 1)[0] if "/" in path else path,
                shape=tuple(int(s) for s in variable.shape),
                step=float("nan"),
                verdict="inconclusive",
                relative_error=float("nan"),
                estimated_error=float("nan"),
                coordinates=[],
                kinks=0,
                lines=[],
                notes=[],
            )
        )
    finding = Finding(
        "gradient_check_imprecise",
        "warning",
        message,
        "Look for nan/inf in the inputs or labels, or weights that already "
        "diverged (lower the learning rate).",
    )
    return GradientCheckResult(checks, precision, [finding], loss=loss, message=message)
