"""Sanity checks before training: initial loss, regularization, a tiny overfit.

Three quick experiments that catch bugs before hours of training (the CS231n
"before learning" checklist):

* **initial loss**: with regularization off (the data part of the loss), an
  untrained classifier should score about `ln(C)` (`ln 2` per output for
  binary cross-entropy; `mean(y**2)` for mean squared error with outputs near
  zero). Outputs that contradict `from_logits` and labels encoded for another
  loss are reported too.
* **regularization**: on a copy whose every regularizer is 10 times stronger,
  the regularization loss must rise.
* **overfit**: a copy with regularization and dropout off, trained with a
  fresh optimizer of the same class and config, must drive the loss on ~20
  examples to near zero within a bounded number of steps. If it does not, the
  loss says which way the learning rate is off: where it rose (or became nan)
  the rate is too high, and lower rates are tried (10x, then 100x lower), a
  subset that overfits only at a lower rate being reported as `loss_diverging`;
  where it fell too slowly, a 10x higher rate is tried. A mixed-precision
  `LossScaleOptimizer` is copied around a copy of its inner optimizer, whose
  learning rate is the one used.

The user's model, its optimizer and the global random state are untouched: the
loss is evaluated statelessly and everything that trains or changes runs on
copies (`trainwatch.backends.model_copy`), inside `preserved_random_state()`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import sys
import time
from typing import NamedTuple

import keras
import numpy as np

from trainwatch.backends import get_backend, model_copy
from trainwatch.backends import model_functions as mf
from trainwatch.findings import Finding
from trainwatch.numerics import expected_loss as el
from trainwatch.rules import labels, outputs, targets

CHECKS = ("initial_loss", "regularization", "overfit")
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"

_INITIAL_LOSS_ADVICE = (
    "Usual causes: a large output bias or output scale (start the last layer's "
    "bias at zero, or at the log of the class frequencies, and keep its weights "
    "small); a from_logits mismatch (softmax/sigmoid outputs need "
    "from_logits=False, raw outputs from_logits=True); labels encoded for another "
    "loss (one-hot labels need categorical_crossentropy, class indices "
    "sparse_categorical_crossentropy; class indices start at 0; binary labels are "
    "0/1, not -1/+1)."
)
_REGULARIZATION_ADVICE = (
    "A regularizer must return a non-negative penalty that grows with its "
    "coefficient: check the sign of custom regularizers and that their `__call__` "
    "uses their coefficient (`l1`, `l2` or `factor`), and that `add_loss` terms "
    "are not negative."
)
# A regularization loss this many times the data loss at the initial weights
# dominates training: the first steps shrink the weights instead of fitting.
# Not less: Keras's L2 sums over the weights, so a usual factor (1e-4) on a
# ResNet-50 for 10 classes already gives ~2x at He initialization, and trains.
REGULARIZATION_DOMINATES = 10.0
_STRONG_REGULARIZATION_ADVICE = (
    "Weaken the regularizers (L2 factors of 1e-5 to 1e-3 are usual; Keras's "
    "`L2(l)` adds `l * sum(w**2)` for each kernel, which grows with the layer's "
    "size), or check that the factor is not meant for a mean instead of a sum."
)
_OVERFIT_CAUSES = (
    "A working network memorizes 20 examples. If it cannot, look for a bug in the "
    "model (a frozen or disconnected layer, a narrow bottleneck, an output "
    "activation that cannot reach the targets), the loss or the labels (labels "
    "that do not belong to their inputs, a loss that does not fit the label "
    "encoding); too little capacity"
)


class LossSpec(NamedTuple):
    """Which known loss a model is compiled with.

    Attributes:
        kind: One of `trainwatch.numerics.expected_loss.LOSS_KINDS`, or `None`
            for a loss without a known expected initial value.
        from_logits: The loss's `from_logits` setting.
        name: The loss as the user gave it, for messages.
        label_smoothing: The loss's `label_smoothing` (0 when it has none).
    """

    kind: str | None
    from_logits: bool
    name: str
    label_smoothing: float = 0.0


class CheckResult(NamedTuple):
    """The outcome of one sanity check.

    Attributes:
        name: One of `CHECKS`.
        status: `"passed"`, `"failed"` or `"skipped"`.
        summary: One line with the numbers (or why it was skipped).
        values: The measured numbers, by name.
        findings: The findings it raised (empty unless it failed).
    """

    name: str
    status: str
    summary: str
    values: dict
    findings: tuple


class SanityReport:
    """The results of `sanity_check`: one `CheckResult` per check.

    `str(report)` is a readable table; `report.findings` the findings;
    `report["overfit"].values` the numbers of one check.

    Example:

    >>> report = sanity_check(model, x, y)  # doctest: +SKIP
    >>> report.passed, [f.code for f in report.findings]  # doctest: +SKIP
    (True, [])
    """

    def __init__(self, checks, seconds=0.0):
        self.checks = list(checks)
        self.seconds = float(seconds)

    @property
    def findings(self) -> list[Finding]:
        """Every finding of every check, in check order."""
        return [f for check in self.checks for f in check.findings]

    @property
    def passed(self) -> bool:
        """`True` when no check failed (skipped checks do not count)."""
        return all(check.status != FAILED for check in self.checks)

    def __getitem__(self, name) -> CheckResult:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(
            f"No check named {name!r}; this report has "
            f"{[c.name for c in self.checks]}. Received: name={name!r}"
        )

    def __iter__(self):
        return iter(self.checks)

    def __str__(self) -> str:
        width = max([len("check")] + [len(c.name) for c in self.checks])
        lines = [f"Sanity checks ({self.seconds:.1f} s)"]
        lines.append(f"  {'check':<{width}}  {'status':<7}  result")
        for check in self.checks:
            lines.append(f"  {check.name:<{width}}  {check.status:<7}  {check.summary}")
        for finding in self.findings:
            lines.append(f"  {finding}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        statuses = ", ".join(f"{c.name}={c.status}" for c in self.checks)
        return f"SanityReport({statuses})"

    def to_markdown(self) -> str:
        """The report as markdown, for TensorBoard's Text tab."""
        rows = ["| check | status | result |", "| --- | --- | --- |"]
        for check in self.checks:
            summary = check.summary.replace("|", "\\|")
            rows.append(f"| {check.name} | {check.status} | {summary} |")
        text = "\n".join(rows)
        if self.findings:
            text += "\n\n" + "\n".join(f"* {f}" for f in self.findings)
        return text + f"\n\nRan in {self.seconds:.1f} s."

    def to_dict(self) -> dict:
        """JSON-ready form: checks with their values, and the findings."""
        return {
            "seconds": self.seconds,
            "checks": [
                {
                    "name": c.name,
                    "status": c.status,
                    "summary": c.summary,
                    "values": dict(c.values),
                }
                for c in self.checks
            ],
            "findings": [f.to_dict() for f in self.findings],
        }


# -- the loss ----------------------------------------------------------------

_FUNCTION_KINDS = {
    "categorical_crossentropy": el.CATEGORICAL,
    "sparse_categorical_crossentropy": el.SPARSE_CATEGORICAL,
    "binary_crossentropy": el.BINARY,
    "mean_squared_error": el.MEAN_SQUARED_ERROR,
}


def _known_function_kind(fn):
    for name, kind in _FUNCTION_KINDS.items():
        if fn is getattr(keras.losses, name, None):
            return kind
    return None


def describe_loss(model) -> LossSpec:
    """Finds which known loss `model` was compiled with.

    Recognizes the Keras cross-entropies (categorical, sparse categorical,
    binary) and mean squared error as strings, functions or `Loss` objects,
    with their `from_logits`. Anything else (several outputs, other losses,
    an overridden `compute_loss`) has `kind=None`.

    Example:

    >>> model.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True))
    ... # doctest: +SKIP
    >>> describe_loss(model)  # doctest: +SKIP
    LossSpec(kind='binary_crossentropy', from_logits=True, name='BinaryCrossentropy')
    """
    loss = getattr(model, "loss", None)
    if type(model).compute_loss is not keras.Model.compute_loss:
        return LossSpec(None, False, f"{type(model).__name__}.compute_loss")
    if loss is None or isinstance(loss, (list, tuple, dict)):
        return LossSpec(None, False, repr(loss))
    if isinstance(loss, str):
        try:
            fn = keras.losses.get(loss)
        except (ValueError, TypeError):
            return LossSpec(None, False, loss)
        return LossSpec(_known_function_kind(fn), False, loss)
    if isinstance(loss, keras.losses.Loss):
        name = type(loss).__name__
        fn = getattr(loss, "fn", None)
        kind = _known_function_kind(fn) if fn is not None else None
        kwargs = getattr(loss, "_fn_kwargs", {}) or {}
        from_logits = bool(kwargs.get("from_logits", getattr(loss, "from_logits", 0)))
        smoothing = kwargs.get("label_smoothing", getattr(loss, "label_smoothing", 0))
        try:
            smoothing = float(smoothing or 0.0)
        except (TypeError, ValueError):
            smoothing = 0.0
        return LossSpec(kind, from_logits, name, smoothing)
    name = getattr(loss, "__name__", type(loss).__name__)
    return LossSpec(_known_function_kind(loss), False, name)


def _formula(expectation) -> str:
    if expectation.kind in (el.CATEGORICAL, el.SPARSE_CATEGORICAL):
        return f"ln({expectation.num_classes}) = {expectation.expected:.4g}"
    if expectation.kind == el.BINARY:
        return f"ln(2) = {expectation.expected:.4g}"
    if expectation.output_center:
        center = expectation.output_center
        return f"mean((y - {center:.3g})**2) = {expectation.expected:.4g}"
    return f"mean(y**2) = {expectation.expected:.4g}"


# -- helpers -----------------------------------------------------------------


def _take(data, n):
    return keras.tree.map_structure(lambda a: a[:n], data)


def _length(data):
    return int(keras.tree.flatten(data)[0].shape[0])


def _to_numpy(value):
    if isinstance(value, np.ndarray):
        return value
    return np.asarray(keras.ops.convert_to_numpy(value))


def _finding(code, severity, message, advice, where=None) -> Finding:
    return Finding(
        code=code, severity=severity, message=message, advice=advice, where=where
    )


def _say(verbose, text):
    if verbose:
        print(f"[trainwatch] sanity: {text}", file=sys.stdout, flush=True)


# -- check 1: initial loss -----------------------------------------------------


def _forward(model, x):
    """The model's prediction in inference mode, without touching its state."""
    kwargs = {"training": False} if model._call_has_training_arg else {}
    values = get_backend().variable_values  # tensors, not `tf.Variable`s
    y_pred, _ = model.stateless_call(
        values(model.trainable_variables),
        values(model.non_trainable_variables),
        x,
        **kwargs,
    )
    return y_pred


def _compiled_prediction_and_loss(model, xb, yb):
    """`(y_pred, data loss)` from one compiled pass where the backend compiles
    per model (JAX: eager, each primitive would compile on first use), else
    or on any failure `(None, None)`."""
    if not mf.compiles_per_model():
        return None, None
    try:
        loss_fn = mf.compiled_loss_function(model, xb, yb, "data")
        data, (_, _, _, y_pred) = loss_fn(mf.trainable_values_with(model), xb, yb)
        return y_pred, float(_to_numpy(data))
    except Exception:  # e.g. labels that do not fit the loss: said below
        return None, None


def _spread_note(expectation) -> str:
    if expectation.kind == el.MEAN_SQUARED_ERROR:
        return ""
    if expectation.output_spread <= el.SPREAD_CAP:
        return ""
    what = "squared logit" if expectation.kind == el.BINARY else "logit variance"
    return (
        f" The outputs are far from uninformative (mean {what} "
        f"{expectation.output_spread:.3g}, above {el.SPREAD_CAP:g}): the output layer "
        "is confident before training has started."
    )


def _check_initial_loss(model, x, y, spec, rtol) -> CheckResult:
    name = "initial_loss"
    xb, yb = mf.convert_batch(x), mf.convert_batch(y)
    values = {"loss_name": spec.name, "examples": _length(x)}
    y_pred, data_loss = _compiled_prediction_and_loss(model, xb, yb)
    if y_pred is None:
        y_pred = _forward(model, xb)
    if isinstance(y_pred, (list, tuple, dict)):
        return CheckResult(name, SKIPPED, "several outputs: skipped", values, ())
    constant = softmax_single_unit_finding(model, y_pred, spec.name)
    if constant is not None:  # no expected loss to compare: the output is 1
        summary = "softmax over a single output unit: the output is always 1"
        return CheckResult(name, FAILED, summary, values, (constant,))
    scale_findings = ()
    if spec.kind == el.MEAN_SQUARED_ERROR or targets.is_regression_loss(spec.name):
        try:
            y_true = _to_numpy(y)
            activation, layer = output_activation(model)
            predicted = _to_numpy(y_pred)
            scale = targets.target_range(y_true, activation, spec.name, where=layer)
            # out of range, then class ids, say more than the scale
            if scale is None:
                scale = targets.class_ids(y_true, predicted, spec.name, where=layer)
            if scale is None:
                scale = targets.target_scale(y_true, predicted, spec.name)
        except (TypeError, ValueError):  # targets of another structure: not judged
            scale = None
        scale_findings = () if scale is None else (scale,)
    elif spec.kind in (el.CATEGORICAL, el.SPARSE_CATEGORICAL):
        try:
            predicted = _to_numpy(y_pred)
            classes = int(predicted.shape[-1]) if predicted.ndim else 0
            one_class = labels.single_class_labels(_to_numpy(y), spec.kind, classes)
        except (TypeError, ValueError):  # labels of another structure: not judged
            one_class = None
        scale_findings = () if one_class is None else (one_class,)
    result = _judge_initial_loss(model, xb, yb, y, y_pred, data_loss, spec, rtol)
    return result._replace(findings=result.findings + scale_findings)


def softmax_single_unit_finding(model, y_pred, loss_name):
    """The `softmax_single_unit` finding of a model whose output is a softmax
    over one unit (its `where` is that layer's path), or `None`.

    Args:
        model: A Keras model.
        y_pred: Its predictions on some examples, or `None`.
        loss_name: The loss's name, for the message.
    """
    if y_pred is None:
        return None
    try:
        predicted = _to_numpy(y_pred)
        units = int(predicted.shape[-1]) if predicted.ndim >= 2 else None
        activation, layer = output_activation(model)
    except (TypeError, ValueError):
        return None
    return outputs.softmax_single_unit(
        activation, units, loss_name, predicted, where=layer
    )


def output_activation(model):
    """The activation of a single-output model's last layer.

    Args:
        model: A Keras model.

    Returns:
        `(activation name, layer path)`; `(None, None)` for a linear output
        or one that cannot be told.
    """
    model_outputs = getattr(model, "outputs", None) or []
    layer = None
    if len(model_outputs) == 1:
        history = getattr(model_outputs[0], "_keras_history", None)
        layer = getattr(history, "operation", None)
    if layer is None and isinstance(model, keras.Sequential) and model.layers:
        layer = model.layers[-1]
    if layer is None:
        return None, None
    name = mf.activation_layer_name(layer) or mf.activation_name(
        getattr(layer, "activation", None)
    )
    return name, getattr(layer, "path", layer.name)


def _output_center(model, kind, num_outputs) -> float:
    """What an untrained model's outputs sit near under mean squared error:
    0.5 behind a sigmoid, 1/outputs behind a softmax, else 0."""
    if kind != el.MEAN_SQUARED_ERROR:
        return 0.0
    activation, _ = output_activation(model)
    if activation in ("sigmoid", "hard_sigmoid"):
        return 0.5
    if activation == "softmax" and num_outputs and num_outputs > 1:
        return 1.0 / num_outputs
    return 0.0


def _judge_initial_loss(model, xb, yb, y, y_pred, data_loss, spec, rtol):
    name = "initial_loss"
    values = {"loss_name": spec.name, "examples": _length(xb)}
    problems = []
    try:
        if data_loss is None:
            data_loss = mf.compute_loss_parts(model, xb, yb).data
        values["loss"] = data_loss
    except Exception as error:  # a label/loss mismatch often fails right here
        problems.append(
            f"The data loss ({spec.name}) could not be computed on these labels "
            f"({type(error).__name__}: {str(error).strip()[:300]})."
        )
    if spec.kind is None and not problems:
        summary = (
            f"data loss {data_loss:.4g}; unknown loss {spec.name}: skipped "
            "(expected values are known for the cross-entropies and mean squared "
            "error)"
        )
        return CheckResult(name, SKIPPED, summary, values, ())

    expectation = None
    if spec.kind is not None:
        y_true, y_pred = _to_numpy(y), _to_numpy(y_pred)
        num_classes = int(y_pred.shape[-1]) if y_pred.ndim else 1
        problems = el.label_problems(spec.kind, y_true, num_classes) + problems
        problems += el.output_problems(spec.kind, y_pred, spec.from_logits)
        single = spec.kind in (el.CATEGORICAL, el.SPARSE_CATEGORICAL)
        if single and num_classes == 1:
            problems.append(
                "The model has a single output unit: a softmax over one class is "
                "always 1 and the loss always 0. Use binary_crossentropy with a "
                "sigmoid, or one unit per class."
            )
        elif data_loss is not None:
            expectation = el.initial_loss_expectation(
                spec.kind,
                y_true,
                y_pred,
                spec.from_logits,
                rtol=rtol,
                output_center=_output_center(model, spec.kind, num_classes),
            )

    if data_loss is None:
        summary = f"the data loss ({spec.name}) could not be computed"
    elif expectation is None:
        summary = f"data loss {data_loss:.4g} ({spec.name})"
    else:
        values.update(
            expected=expectation.expected,
            tolerance=expectation.tolerance,
            output_spread=expectation.output_spread,
            spread_allowance=expectation.spread_allowance,
            noise=expectation.noise,
            num_classes=expectation.num_classes,
            assumption=expectation.assumption,
        )
        summary = (
            f"data loss {data_loss:.4g} vs expected {_formula(expectation)} "
            f"(tolerance {expectation.tolerance:.3g}, {spec.name}"
            f"{', from_logits' if spec.from_logits else ''})"
        )
        deviation = data_loss - expectation.expected
        if not math.isfinite(data_loss):
            problems.insert(
                0,
                f"The initial data loss is {data_loss} before any update "
                f"(expected {_formula(expectation)}): the inputs or labels hold "
                "nan or inf, or the model computes them (the log or square root "
                "of a negative number or zero, a division by zero, an overflow).",
            )
        elif abs(deviation) > expectation.tolerance:
            problems.insert(
                0,
                f"The initial data loss is {data_loss:.4g}, expected "
                f"{_formula(expectation)} (assuming {expectation.assumption}); it "
                f"is off by {deviation:+.3g}, beyond the tolerance "
                f"{expectation.tolerance:.3g} ({rtol:g} of expected + sampling "
                f"noise {expectation.noise:.2g} + allowance "
                f"{expectation.spread_allowance:.2g} for the output spread "
                f"{expectation.output_spread:.3g})." + _spread_note(expectation),
            )
        elif problems:
            problems.insert(0, f"Initial {summary}.")
    if not problems:
        return CheckResult(name, PASSED, summary, values, ())
    values["problems"] = problems
    finding = _finding(
        "initial_loss_unexpected", "warning", " ".join(problems), _INITIAL_LOSS_ADVICE
    )
    return CheckResult(name, FAILED, summary, values, (finding,))


# -- check 2: regularization -------------------------------------------------


def _scalar(value) -> float:
    return float(np.sum(get_backend().to_numpy(value)))


def _weight_site_verdict(variable, regularizer, factor):
    """`(before, after, ok)` for one weight regularizer evaluated directly."""
    scaled, _ = model_copy.scale_regularizer(regularizer, factor)
    value = variable.value
    before, after = _scalar(regularizer(value)), _scalar(scaled(value))
    tol = 1e-6 * max(1.0, abs(before))
    if after > before + tol and before >= 0:
        return before, after, True
    if before == 0 and after == 0:  # e.g. L2 on a zero-initialized bias
        probe = keras.ops.full(tuple(variable.shape), 0.5, dtype=variable.dtype)
        p0, p1 = _scalar(regularizer(probe)), _scalar(scaled(probe))
        return before, after, p1 > p0 + 1e-6 * max(1.0, abs(p0)) and p0 >= 0
    return before, after, False


def _dominates_finding(regularization, data) -> Finding:
    return _finding(
        "regularization_too_strong",
        "warning",
        f"At the initial weights the regularization loss is {regularization:.4g}, "
        f"{regularization / data:.3g} times the data loss {data:.4g}: the first "
        "steps shrink the weights toward zero instead of fitting the data, and "
        "what the weights learn is worn away (the training accuracy can stay "
        "near chance while the loss falls).",
        _STRONG_REGULARIZATION_ADVICE,
    )


def _check_regularization(model, x, y, factor) -> CheckResult:
    name = "regularization"
    sites = model_copy.regularizer_sites(model)
    if not sites:
        return CheckResult(name, SKIPPED, "no regularizers: skipped", {}, ())
    values = {"factor": factor, "regularizers": len(sites)}
    culprits = []
    weight_before = weight_after = 0.0
    for where, kind, owner, regularizer in sites:
        if kind != "weight":
            continue
        before, after, ok = _weight_site_verdict(owner, regularizer, factor)
        weight_before += before
        weight_after += after
        if not ok:
            culprits.append(f"{where} ({before:.4g} -> {after:.4g})")
    xb, yb = mf.convert_batch(x), mf.convert_batch(y)
    note = ""
    try:
        stronger, hows = model_copy.with_scaled_regularizers(model, factor, xb)
        base = mf.compute_loss_parts(model, xb, yb)
        scaled = mf.compute_loss_parts(stronger, xb, yb)
        before, after = base.regularization, scaled.regularization
        values.update(total_before=base.total, total_after=scaled.total)
        if "output" in hows:
            note = " (regularizers without l1/l2/factor were scaled at their output)"
    except model_copy.CloneUnavailable as error:
        before, after = weight_before, weight_after
        activity = [where for where, kind, _, _ in sites if kind == "activity"]
        note = f" (weight regularizers only, evaluated directly: {error}"
        note += f"; activity regularizers not checked: {activity})" if activity else ")"
    values.update(regularization_before=before, regularization_after=after)
    summary = (
        f"regularization loss {before:.4g} -> {after:.4g} with every regularizer "
        f"x{factor:g} ({len(sites)} regularizer{'s' if len(sites) > 1 else ''})"
        f"{note}"
    )
    all_zero = before == 0 and after == 0 and not culprits
    rises = after > before + 1e-6 * max(1.0, abs(before)) and before >= 0
    if (rises or all_zero) and not culprits:
        if all_zero:
            summary += "; zero at the current weights"
        data = values.get("total_before", math.nan) - before
        if before > REGULARIZATION_DOMINATES * data > 0:
            summary += f"; {before / data:.3g} times the data loss {data:.4g}"
            return CheckResult(
                name, FAILED, summary, values, (_dominates_finding(before, data),)
            )
        return CheckResult(name, PASSED, summary, values, ())
    message = (
        f"Making every regularizer {factor:g} times stronger changed the "
        f"regularization loss from {before:.4g} to {after:.4g}; it should rise."
    )
    if before < 0:
        message += " The regularization loss is negative."
    if culprits:
        message += " Not rising: " + "; ".join(culprits) + "."
    where = culprits[0].split(" (")[0] if len(culprits) == 1 else None
    finding = _finding(
        "regularization_not_increasing_loss",
        "error",
        message,
        _REGULARIZATION_ADVICE,
        where=where,
    )
    values["culprits"] = culprits
    return CheckResult(name, FAILED, summary, values, (finding,))


# -- check 3: overfit a tiny subset ------------------------------------------


def _loss_value(result) -> float:
    if isinstance(result, dict):
        result = result.get("loss", next(iter(result.values())))
    if isinstance(result, (list, tuple)):
        result = result[0]
    return float(np.asarray(result))


def _compile_like(clone, model, optimizer, xs, ys):
    loss_weights = None
    compile_config = getattr(model, "_compile_config", None)
    if compile_config is not None:
        loss_weights = compile_config.config.get("loss_weights")
    clone.compile(optimizer=optimizer, loss=model.loss, loss_weights=loss_weights)
    # The optimizer's and the compiled loss and metrics' variables made now,
    # not in the first step: TensorFlow traces a step that creates variables
    # twice (the digits MLP's first step: 0.44 s with the optimizer built
    # first, 0.25 s with everything built first). Keras does this itself on
    # JAX and PyTorch (`_symbolic_build`, private API).
    with contextlib.suppress(Exception):  # else built in the first step
        clone._symbolic_build(data_batch=(xs, ys))
    with contextlib.suppress(Exception):
        optimizer.build(clone.trainable_variables)
    quick = getattr(get_backend(), "quick_train_function", None)
    if quick is not None:
        with contextlib.suppress(Exception):  # else Keras compiles its own step
            quick(clone)


def _give_data_as_fit_does(clone):
    """Hands `clone`'s train step its data the way `fit` does.

    `train_on_batch` passes `(x, y, None)`, `fit` (without sample weights)
    `(x, y)`: a custom `train_step` written `x, y = data`, a common pattern,
    works in `fit` and fails on the former. The step is wrapped on the copy
    only; the data is its last argument on every backend (JAX's step takes
    the state first).
    """
    step = clone.train_step

    def train_step(*args):
        *state, data = args
        if isinstance(data, (tuple, list)) and len(data) == 3 and data[2] is None:
            data = tuple(data[:2])
        return step(*state, data)

    clone.train_step = train_step


def _clone_stepper(clone, weights):
    """`make_step(optimizer, model, xs, ys)` training `clone` from `weights`."""
    _give_data_as_fit_does(clone)

    def make_step(optimizer, model, xs, ys):
        clone.set_weights(weights)
        _compile_like(clone, model, optimizer, xs, ys)
        return lambda: _loss_value(clone.train_on_batch(xs, ys))

    return make_step


def _private_step(optimizer, model, xs, ys):
    """Steps on private copies of the model's weights (no copy of the model).

    For models that cannot be copied (subclassed, no `get_config`): the data
    loss in inference mode (dropout off, batch statistics fixed, no
    regularization), differentiated and applied to values that only this
    function holds; the model itself is never changed.
    """
    # The loss is not scaled here: a mixed-precision `LossScaleOptimizer`
    # would divide the gradients by its scale. Its inner optimizer applies them.
    optimizer = model_copy.base_optimizer(optimizer)
    loss_fn = mf.batch_loss_function(model, xs, ys, part="data", training=False)
    non_trainable = get_backend().variable_values(model.non_trainable_variables)
    step = get_backend().private_train_step(
        loss_fn, optimizer, model.trainable_variables
    )
    return lambda: _loss_value(step(non_trainable, xs, ys, None))


def _fresh_optimizer(optimizer, lr_factor):
    """`(optimizer, learning_rate)`: a fresh copy of `optimizer` (see
    `model_copy.copy_optimizer`); a `LossScaleOptimizer` is copied around a
    fresh copy of its inner optimizer, whose learning rate is the one read
    and scaled."""
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return model_copy.copy_optimizer(optimizer, lr_factor)
    inner, rate = _fresh_optimizer(optimizer.inner_optimizer, lr_factor)
    config = optimizer.get_config()
    config.pop("inner_optimizer", None)
    return type(optimizer)(inner, **config), rate


def _rate_label(rate, optimizer, factor=1.0) -> str:
    """`"lr 0.01"` for a constant rate, else what sets the rate.

    `optimizer` is the user's: a schedule's largest rate (what the copy
    trains at, see `model_copy.copy_optimizer`) is said to be its first rate,
    or its peak and where that is (after a warm-up), times `factor` (the
    learning-rate factor of the attempt) where that is not 1.
    """
    base = model_copy.base_optimizer(optimizer)
    learning_rate = getattr(base, "_learning_rate", None)
    is_schedule = isinstance(
        learning_rate, keras.optimizers.schedules.LearningRateSchedule
    )
    if rate is not None:
        times = "" if factor == 1 else f"{factor:g}x "
        if not is_schedule:
            return f"lr {rate:.3g}"
        which = "first rate"
        with contextlib.suppress(Exception):
            _, step = model_copy.schedule_peak(learning_rate)
            if step > 0:
                which = f"peak rate, at step {step}"
        return f"lr {rate:.3g} ({times}the schedule's {which})"
    if is_schedule:
        return "lr schedule"
    if callable(learning_rate):
        return "lr callable"
    return "lr unknown"


_RISE_FACTOR = 1.5  # a peak this far above the first loss: the rate is too high
_END_RISE = 1.1  # or an attempt that ends this far above its first loss
_STUCK_STEPS = 50  # the same loss this many steps in a row: nothing more to learn
_STUCK_RTOL = 1e-6  # "the same": within this fraction (float32 rounding)
_LOWERINGS = 2  # lower rates tried after the loss rose at the user's rate


def _overfit_target(first, floor, ratio) -> float:
    """`ratio` of the way from the loss's floor to its first value (from 0
    when the floor is 0 or the first loss is not above it)."""
    if floor > 0.0 and math.isfinite(first) and first > floor:
        return floor + ratio * (first - floor)
    return ratio * abs(first)


def _rose(first, peak, last) -> bool:
    """Whether an attempt's loss rose: became non-finite, peaked at
    `_RISE_FACTOR` times its first value, or ended `_END_RISE` times above it
    (as far from the first value as those factors, for a negative loss)."""
    if not (math.isfinite(first) and math.isfinite(last)):
        return True
    scale = abs(first)
    peaked = peak > first + (_RISE_FACTOR - 1) * scale
    return peaked or last > first + (_END_RISE - 1) * scale


def _train_attempt(
    make_step, model, xs, ys, lr_factor, steps, ratio, deadline, verbose, floor=0.0
):
    """Trains one fresh copy at the user's learning rate times `lr_factor`
    until the loss reaches `ratio` of the way from `floor` (the least loss
    the targets allow) to its first value, `steps` steps pass,
    the deadline passes, the loss is not finite or it stays the same (within
    `_STUCK_RTOL`) for `_STUCK_STEPS` steps in a row: the steps no longer
    change it (dead ReLUs, a saturated softmax after too large a step)."""
    optimizer, rate = _fresh_optimizer(model.optimizer, lr_factor)
    train_step = make_step(optimizer, model, xs, ys)
    label = _rate_label(rate, model.optimizer, lr_factor)
    _say(verbose, f"overfitting {_length(xs)} examples ({label}, up to {steps} steps)")
    first = best = last = peak = float("nan")
    target = None
    step = peak_step = same = 0
    timed_out = stuck = False
    for step in range(1, steps + 1):
        last = train_step()
        if step == 1:
            first = best = peak = anchor = last
            peak_step = 1
            target = _overfit_target(first, floor, ratio)
        if not math.isfinite(last):
            break
        best = min(best, last)
        if last > peak:
            peak, peak_step = last, step
        if last <= target:
            break
        if abs(last - anchor) <= _STUCK_RTOL * abs(anchor):
            same += 1
        else:
            anchor, same = last, 0
        if same >= _STUCK_STEPS:
            stuck = True
            break
        if verbose and step % 100 == 0:
            _say(
                verbose, f"  step {step}/{steps}: loss {last:.4g} (target {target:.3g})"
            )
        if time.perf_counter() > deadline:
            timed_out = True
            break
    reached = target is not None and math.isfinite(last) and last <= target
    _say(
        verbose,
        f"  {'reached' if reached else 'stopped at'} loss {last:.4g} "
        f"after {step} steps (target {target:.3g})"
        + (" (the loss stopped changing)" if stuck else ""),
    )
    return {
        "learning_rate": rate,
        "learning_rate_label": label,
        "learning_rate_factor": lr_factor,
        "steps": step,
        "first_loss": first,
        "last_loss": last,
        "best_loss": best,
        "peak_loss": peak,
        "peak_step": peak_step,
        "target": target,
        "floor": floor,
        "reached": reached,
        "rose": not reached and _rose(first, peak, last),
        "stuck": stuck,
        "timed_out": timed_out,
    }


def _next_factor(attempts, boost):
    """The learning-rate factor of the next attempt, or `None` for no more.

    A loss that rose (or became non-finite) means the rate is too high: lower
    rates are tried (divided by `boost`, at most `_LOWERINGS` times, while the
    loss keeps rising), never a higher one. A loss that did not rise but did
    not reach the target either is what too low a rate looks like (a steady,
    slow fall): one attempt at `boost` times the rate.
    """
    last = attempts[-1]
    if last["reached"] or not boost or boost == 1:
        return None
    if last["rose"]:
        lowered = sum(a["learning_rate_factor"] < 1 for a in attempts)
        if last["learning_rate_factor"] <= 1 and lowered < _LOWERINGS:
            return last["learning_rate_factor"] / boost
        return None
    return boost if len(attempts) == 1 else None


def _how_it_went(attempt) -> str:
    """How one attempt went, e.g. `"at lr 5 the loss rose to 9.191 (3.9x its
    start) by step 5 and ended at 2.303 after 152 steps"`."""
    at = f"at {attempt['learning_rate_label']}"
    last = attempt["last_loss"]
    if attempt["reached"]:
        return f"{at} it reached {last:.4g} in {attempt['steps']} steps"
    if not math.isfinite(last):
        return f"{at} the loss became {last} at step {attempt['steps']}"
    if attempt["rose"]:
        peak, first = attempt["peak_loss"], attempt["first_loss"]
        rise = f" ({peak / first:.1f}x its start)" if first > 0 else ""
        return (
            f"{at} the loss rose to {peak:.4g}{rise} by step {attempt['peak_step']} "
            f"and ended at {last:.4g} after {attempt['steps']} steps"
            + (", no longer changing" if attempt["stuck"] else "")
        )
    return (
        f"{at} the loss fell to {attempt['best_loss']:.4g} in {attempt['steps']} "
        "steps" + (", then stopped changing" if attempt["stuck"] else "")
    )


_ON_A_COPY = "a copy of the model"
_ON_PRIVATE_WEIGHTS = "private copies of the model's weights (in inference mode)"


def _error_text(error) -> str:
    return f"{type(error).__name__}: {model_copy.short_error_text(error)}"


def _overfit_advice(attempts, boost) -> str:
    """The usual causes, and what the attempts say about the learning rate:
    too low only where the loss did not rise at the user's rate."""
    rose = [a["learning_rate_label"] for a in attempts if a["rose"]]
    fell = [a["learning_rate_label"] for a in attempts if not a["rose"]]
    if not attempts[0]["rose"]:
        if not rose:
            return _OVERFIT_CAUSES + "; or too low a learning rate."
        return (
            f"{_OVERFIT_CAUSES}; or too low a learning rate (at {rose[0]}, "
            f"{boost:g}x yours, the loss rose: try one in between)."
        )
    if fell:
        lead = (
            f"Your learning rate is too high (the loss rose at {', '.join(rose)}), "
            f"but a lower one did not reach the target either ({', '.join(fell)})."
        )
    else:
        where = "your rate" if len(rose) == 1 else "every rate tried"
        lead = (
            f"The loss rose at {where} ({', '.join(rose)}): lower the learning "
            "rate further, or clip gradients (`clipnorm=1.0`)."
        )
    return f"{lead} {_OVERFIT_CAUSES}."


def _too_high_finding(attempts, n, how) -> Finding:
    """`loss_diverging`: the subset overfits at a lower rate than the user's."""
    yours, final = attempts[0], attempts[-1]
    factor = 1 / final["learning_rate_factor"]
    message = (
        f"Training {how} on {n} examples with regularization and dropout off: "
        + "; ".join(_how_it_went(a) for a in attempts)
        + f" (target {final['target']:.3g}). It overfits at "
        f"{final['learning_rate_label']} but not at your "
        f"{yours['learning_rate_label']}: your learning rate is likely too high."
    )
    advice = (
        f"Lower the learning rate about {factor:.3g}x (from "
        f"{yours['learning_rate']:.3g} to ~{final['learning_rate']:.3g}); gradient "
        "clipping (`clipnorm=1.0`) and a warm-up also help a diverging start."
    )
    # Its own `where`: the run's `loss_diverging`, if training diverges too,
    # is its own finding with the run's numbers (findings are kept per code
    # and place), not hidden behind this one.
    return _finding("loss_diverging", "warning", message, advice, where="sanity check")


def _loss_not_finite(results) -> bool:
    """Whether the initial loss check measured a nan or inf loss."""
    for result in results:
        if result.name == "initial_loss":
            loss = result.values.get("loss")
            return loss is not None and not math.isfinite(loss)
    return False


_STILL_LEARNING = 0.1  # a loss this far down when time ran out: no verdict


def _output_constant(results) -> bool:
    """Whether the initial loss check found a softmax over a single unit."""
    return any(
        finding.code == "softmax_single_unit"
        for result in results
        for finding in result.findings
    )


def _cut_short_while_learning(attempt) -> bool:
    """Whether an attempt ran out of time while memorizing: its loss had
    fallen to `_STILL_LEARNING` of its start (of 0.02 wanted), without rising
    or stalling. A slow model (an LSTM in float16 on a busy CPU: 0.69 to 0.033
    in 158 steps, 60 s) says nothing about a bug. Where the loss has a floor
    (soft targets), measured from it, and running out of steps counts too:
    the excess over the floor shrinks like a squared error, slowly at the end
    (a convolutional autoencoder of digits: 0.70 to 0.233 over a floor of
    0.214 in 1000 steps, 4% of the way)."""
    first, best = attempt["first_loss"], attempt["best_loss"]
    floor = attempt.get("floor", 0.0)
    return (
        (attempt["timed_out"] or floor > 0.0)
        and not (attempt["rose"] or attempt["stuck"])
        and math.isfinite(first)
        and first > floor
        and best - floor <= _STILL_LEARNING * (first - floor)
    )


def _loss_floor(model, y) -> float:
    """The least loss the model's (known, single) loss allows on targets `y`:
    above 0 for cross-entropies of soft or smoothed targets; else 0."""
    spec = describe_loss(model)
    if spec.kind is None or isinstance(y, (list, tuple, dict)):
        return 0.0
    try:
        return el.loss_floor(spec.kind, _to_numpy(y), spec.label_smoothing)
    except (TypeError, ValueError):
        return 0.0


def _check_overfit(model, x, y, subset_size, steps, ratio, boost, max_seconds, verbose):
    name = "overfit"
    n = min(subset_size, _length(x))
    xs, ys = _take(x, n), _take(y, n)
    xs, ys = mf.convert_batch(xs), mf.convert_batch(ys)
    steppers, problems, details = [], [], []  # why not on a copy: short, long
    try:
        clone = model_copy.without_regularizers(
            model, zero_dropout=True, sample_input=xs
        )
        steppers.append((_clone_stepper(clone, model.get_weights()), _ON_A_COPY))
    except model_copy.CloneUnavailable as error:
        problems.append("the model cannot be copied")
        details.append(f"{problems[-1]} ({model_copy.short_error_text(error)})")
    # Without a copy, or when training the copy fails (e.g. a custom
    # `train_step` that does not run on it): private copies of the weights,
    # trained on the data loss in inference mode.
    steppers.append((_private_step, _ON_PRIVATE_WEIGHTS))
    deadline = time.perf_counter() + max_seconds
    args = (model, xs, ys)
    floor = _loss_floor(model, _take(y, n))
    for make_step, how in steppers:
        try:
            attempts = [
                _train_attempt(
                    make_step, *args, 1.0, steps, ratio, deadline, verbose, floor
                )
            ]
            break
        except Exception as error:
            problems.append(f"training {how} failed ({_error_text(error)})")
            details.append(problems[-1])
            _say(verbose, f"  {problems[-1]}")
    else:
        summary = f"could not train the model: skipped ({'; '.join(details)})"
        return CheckResult(name, SKIPPED, summary, {"problems": details}, ())
    scalable = attempts[0]["learning_rate"] is not None  # else a callable rate
    while scalable and time.perf_counter() < deadline:
        factor = _next_factor(attempts, boost)
        if factor is None:
            break
        if attempts[-1]["rose"]:
            _say(verbose, "  the loss rose: the learning rate is likely too high")
        attempts.append(
            _train_attempt(
                make_step, *args, factor, steps, ratio, deadline, verbose, floor
            )
        )
    final = attempts[-1]
    values = {"examples": n, "attempts": attempts, "trained": how}
    values.update({k: final[k] for k in ("first_loss", "last_loss", "target", "steps")})
    tried = " then ".join(
        f"{a['steps']} steps at {a['learning_rate_label']}" for a in attempts
    )
    if problems:
        values["problems"] = details
        tried += f" (on private copies of its weights: {'; '.join(problems)})"
    if final["reached"]:
        summary = (
            f"loss {final['first_loss']:.4g} -> {final['last_loss']:.4g} (target "
            f"{final['target']:.3g}) on {n} examples in {tried}"
        )
        if final["learning_rate_factor"] > 1:
            summary += f"; only with the learning rate x{boost:g}: yours may be low"
            return CheckResult(name, PASSED, summary, values, ())
        if final["learning_rate_factor"] == 1:
            return CheckResult(name, PASSED, summary, values, ())
        lower = 1 / final["learning_rate_factor"]
        summary += f"; only with the learning rate /{lower:.3g}: yours is too high"
        return CheckResult(
            name, FAILED, summary, values, (_too_high_finding(attempts, n, how),)
        )
    if not math.isfinite(attempts[0]["first_loss"]):
        summary = (
            f"the loss on these {n} examples is {attempts[0]['first_loss']} before "
            "any update: nothing to overfit (see the initial loss check)"
        )
        return CheckResult(name, SKIPPED, summary, values, ())
    best = min(a["best_loss"] for a in attempts)
    stopped = " (stopped by the time budget)" if final["timed_out"] else ""
    summary = (
        f"loss {final['first_loss']:.4g} -> {final['last_loss']:.4g}, target "
        f"{final['target']:.3g} not reached on {n} examples in {tried}{stopped}"
    )
    if _cut_short_while_learning(final) and not any(a["rose"] for a in attempts):
        if floor > 0.0 and not final["timed_out"]:
            summary += (
                f": the loss was still falling ({_STILL_LEARNING:g} of the way "
                f"from its floor of {floor:.4g} to its start, or less; soft "
                "targets are approached slowly), no verdict in the steps given"
            )
        else:
            summary += (
                f": the loss was still falling ({_STILL_LEARNING:g} of its start "
                "or less), no verdict in the time given"
            )
        return CheckResult(name, SKIPPED, summary, values, ())
    if floor > 0.0:
        near = (
            f"near its floor of {floor:.4g} (the targets' own entropy: no "
            "prediction does better)"
        )
        share = f"{ratio:g} of the way from the floor to the start"
    else:
        near, share = "near zero", f"{ratio:g} of the start"
    message = (
        f"Training {how} on {n} examples with regularization and "
        f"dropout off did not drive the loss {near}: from "
        f"{final['first_loss']:.4g} the best reached was {best:.4g} (target "
        f"{final['target']:.3g}, {share}) in {tried}{stopped}."
    )
    if any(a["rose"] or a["stuck"] for a in attempts):
        went = "; ".join(_how_it_went(a) for a in attempts)
        message += f" In turn: {went}."
    finding = _finding(
        "cannot_overfit_small_subset",
        "warning",
        message,
        _overfit_advice(attempts, boost),
    )
    return CheckResult(name, FAILED, summary, values, (finding,))


# -- the entry point ---------------------------------------------------------


def _validate(
    checks,
    batch_size,
    subset_size,
    overfit_steps,
    overfit_ratio,
    regularization_factor,
    learning_rate_boost,
    max_seconds,
):
    unknown = [c for c in checks if c not in CHECKS]
    if unknown or not checks:
        raise ValueError(f"Expected checks from {CHECKS}. Received: checks={checks!r}")
    for arg, value in (
        ("batch_size", batch_size),
        ("subset_size", subset_size),
        ("overfit_steps", overfit_steps),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"Expected a positive integer. Received: {arg}={value!r}")
    if not 0 < overfit_ratio < 1:
        raise ValueError(
            f"Expected 0 < overfit_ratio < 1. Received: overfit_ratio={overfit_ratio!r}"
        )
    if not regularization_factor > 1:
        raise ValueError(
            "Expected regularization_factor > 1 (a stronger regularizer). "
            f"Received: regularization_factor={regularization_factor!r}"
        )
    boost = learning_rate_boost
    if boost is not None and (
        isinstance(boost, bool) or not isinstance(boost, numbers.Real) or boost < 1
    ):
        raise ValueError(
            "Expected learning_rate_boost >= 1 (the factor by which the rate is "
            f"raised or lowered), or None. Received: learning_rate_boost={boost!r}"
        )
    if not max_seconds > 0:
        raise ValueError(
            f"Expected max_seconds > 0. Received: max_seconds={max_seconds!r}"
        )


def validate_options(checks=CHECKS, **options):
    """Raises what `sanity_check` would raise for these options, before any
    model is there (the `SanityCheck` callback calls it at construction).

    Raises:
        ValueError: An unknown check or option, or a value out of range.

    Example:

    >>> validate_options(subset_size=0)
    Traceback (most recent call last):
    ...
    ValueError: Expected a positive integer. Received: subset_size=0
    """
    parameters = inspect.signature(sanity_check).parameters
    known = [n for n, p in parameters.items() if p.default is not p.empty]
    known = [n for n in known if n not in ("checks", "verbose")]
    unknown = [name for name in options if name not in known]
    if unknown:
        raise ValueError(
            f"Unknown sanity_check option(s) {unknown}; expected some of "
            f"{tuple(known)}. Received: kwargs={options!r}"
        )
    values = {n: parameters[n].default for n in known} | options
    validated = list(inspect.signature(_validate).parameters)[1:]  # after checks
    _validate(tuple(checks), **{name: values[name] for name in validated})


def sanity_check(
    model,
    x,
    y,
    checks=CHECKS,
    batch_size=256,
    rtol=0.1,
    regularization_factor=10.0,
    subset_size=20,
    overfit_steps=500,
    overfit_ratio=0.02,
    learning_rate_boost=10.0,
    max_seconds=60.0,
    verbose=1,
) -> SanityReport:
    """Runs the sanity checks that belong before training.

    1. `initial_loss`: the data loss (regularization off) on the first
       `batch_size` examples against its expected value (`ln(C)` for a
       `C`-class cross-entropy, `ln 2` for binary cross-entropy, `mean(y**2)`
       for mean squared error), with a tolerance that grows with the measured
       output spread; also outputs that contradict `from_logits`, and labels
       that do not fit the loss.
    2. `regularization`: a copy with every regularizer `regularization_factor`
       times stronger must have a higher regularization loss.
    3. `overfit`: a copy without regularization or dropout, trained with a
       fresh optimizer of the model's class and config on the first
       `subset_size` examples, must reach `overfit_ratio` times its starting
       loss within `overfit_steps` steps (measured from the loss's floor, the
       targets' entropy, for a cross-entropy of soft or smoothed targets). If
       it does not and its loss rose
       (peaked at 1.5 times its start, ended 1.1 times above it, or became
       nan or inf), the learning rate is too high: the rate divided by
       `learning_rate_boost` is tried, and divided again while the loss keeps
       rising (at most twice); a subset that overfits only at a lower rate is
       reported as `loss_diverging`. If the loss did not rise, the rate times
       `learning_rate_boost` is tried once (the rate may be too low). An
       attempt whose loss stops changing for 50 steps ends early.

    The model's weights, optimizer and the global random state are untouched.
    The copy's train step gets its data as `fit` gives it (`(x, y)`). Where
    the model cannot be copied (a subclassed model without `get_config`) or
    training its copy fails (e.g. a custom `train_step` that does not run on
    the copy), the `overfit` check trains private copies of the weights on
    the data loss in inference mode instead, and says so; a check that
    cannot run at all is skipped, with the reason.

    Args:
        model: A built, compiled Keras model.
        x: Inputs (array, or list/dict of arrays), at least one example.
        y: Labels, as given to `fit`.
        checks: Which checks to run. Defaults to all of `CHECKS`.
        batch_size: Examples used for the initial-loss and regularization
            checks. Defaults to `256`.
        rtol: Relative part of the initial-loss tolerance. Defaults to `0.1`.
        regularization_factor: How much stronger the regularizers get.
            Defaults to `10.0`.
        subset_size: Examples to overfit. Defaults to `20`.
        overfit_steps: Training steps per overfitting attempt. Defaults to
            `500`.
        overfit_ratio: Success when the loss falls to this fraction of its
            starting value (of the way from its floor, where soft or smoothed
            targets keep a cross-entropy above 0). Defaults to `0.02`.
        learning_rate_boost: Factor by which the learning rate is raised
            (the loss fell too slowly) or lowered (the loss rose) for further
            attempts; `None` or `1` for no further attempt. Defaults to
            `10.0`.
        max_seconds: Time budget of the overfitting check. Defaults to `60.0`.
        verbose: 0 silent, 1 progress lines. Defaults to `1`.

    Returns:
        A `SanityReport`.

    Raises:
        TypeError: `model` is not a Keras model.
        ValueError: the model is not built or compiled, or an argument is out
            of range.

    Example:

    >>> from sklearn.datasets import load_digits  # doctest: +SKIP
    >>> digits = load_digits()  # doctest: +SKIP
    >>> x, y = digits.data / 16.0, digits.target  # doctest: +SKIP
    >>> model = keras.Sequential([keras.Input((64,)),
    ...     keras.layers.Dense(64, activation="relu"),
    ...     keras.layers.Dense(10, activation="softmax")])  # doctest: +SKIP
    >>> model.compile("adam", "sparse_categorical_crossentropy")  # doctest: +SKIP
    >>> print(sanity_check(model, x, y, verbose=0))  # doctest: +SKIP
    Sanity checks (1.9 s)
      check           status   result
      initial_loss    passed   data loss 2.356 vs expected ln(10) = 2.303 ...
      regularization  skipped  no regularizers: skipped
      overfit         passed   loss 2.38 -> 0.0467 (target 0.0476) ...
    """
    mf.check_model_ready(model)
    checks = tuple(checks)
    _validate(
        checks,
        batch_size,
        subset_size,
        overfit_steps,
        overfit_ratio,
        regularization_factor,
        learning_rate_boost,
        max_seconds,
    )
    mf.check_labels_given(model, y)
    if _length(x) < 1 or (y is not None and _length(x) != _length(y)):
        raise ValueError(
            "Expected x and y with the same number of examples, at least one. "
            f"Received: len(x)={_length(x)}, len(y)={_length(y)}"
        )
    start = time.perf_counter()
    xb, yb = _take(x, batch_size), _take(y, batch_size)
    results = []
    with model_copy.preserved_random_state():
        for check in CHECKS:
            if check not in checks:
                continue
            if check == "initial_loss":
                results.append(
                    _check_initial_loss(model, xb, yb, describe_loss(model), rtol)
                )
            elif check == "regularization":
                results.append(
                    _check_regularization(model, xb, yb, regularization_factor)
                )
            elif _loss_not_finite(results):
                summary = (
                    "the initial loss is not finite on these examples: nothing to "
                    "overfit (see the initial loss check)"
                )
                results.append(CheckResult(check, SKIPPED, summary, {}, ()))
            elif _output_constant(results):
                summary = (
                    "the output is a softmax over one unit, always 1: nothing "
                    "to overfit (see the initial loss check)"
                )
                results.append(CheckResult(check, SKIPPED, summary, {}, ()))
            else:
                results.append(
                    _check_overfit(
                        model,
                        x,
                        y,
                        subset_size,
                        overfit_steps,
                        overfit_ratio,
                        learning_rate_boost,
                        max_seconds,
                        verbose,
                    )
                )
    report = SanityReport(results, time.perf_counter() - start)
    if verbose:
        print(report, flush=True)
    return report
