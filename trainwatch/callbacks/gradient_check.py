"""`GradientCheck`: `check_gradients` during training, after a warm-up.

A gradient check at initialisation is not characteristic (weights are tiny,
few units are at their kinks); the check runs once training has warmed up (a
number of steps, and by default once the loss on the check's examples has
started to fall), then every few epochs or steps. It is scheduled in the epoch
hook by default, so Keras's asynchronous batch dispatch stays on; with a step
frequency it adds a batch hook that only compares integers until a check is
due. Each check is bounded (a few forward passes per variable on a few
examples); inside `TrainWatch`, later checks are skipped while trainwatch is
over its time budget.

Logged (run `train`): `gradcheck/<variable.path>` (log10 of the worst probe's
relative error), `gradcheck_vector/<variable.path>` (log10 of the vector-form
relative error of its probes), `gradcheck_estimate/<variable.path>` (log10 of
the check's own error estimate),
`gradcheck_summary/*` scalars and the table as text
(`gradcheck_summary/table`); findings `gradient_wrong`, `gradient_suspicious`,
`gradient_missing`, `gradient_check_imprecise`. Findings are kept once per
`(code, where)`: a network that gets no gradient (one `gradient_missing` with
`where=None`) is reported at the first check that sees it, not at every one.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np

from trainwatch.backends import model_functions as mf
from trainwatch.callbacks.base import MID_EPOCH_SECONDS, Monitor
from trainwatch.gradient_check import check_gradients, validate_options

__all__ = ["GradientCheck", "GradientCheckError"]

ON_FAILURE = ("log", "warn", "stop", "raise")
_LOSS_DROP = 0.01  # the loss "has started to fall" once 1% below its first value
_LOG10_FLOOR = -16.0


class GradientCheckError(RuntimeError):
    """Raised by `GradientCheck(on_failure="raise")` when a gradient is wrong."""


def parse_check_freq(check_freq):
    """`"epoch"`, `"N epochs"`, `"N steps"` or an int (steps) → `(N, unit)`.

    Example:

    >>> parse_check_freq("epoch"), parse_check_freq("3 epochs"), parse_check_freq(50)
    ((1, 'epoch'), (3, 'epoch'), (50, 'step'))
    """
    if isinstance(check_freq, (int, np.integer)) and not isinstance(check_freq, bool):
        if check_freq >= 1:
            return int(check_freq), "step"
    elif isinstance(check_freq, str):
        text = check_freq.strip().lower()
        if text == "epoch":
            return 1, "epoch"
        match = re.fullmatch(r"(\d+)\s*(epoch|epochs|step|steps)", text)
        if match and int(match.group(1)) >= 1:
            return int(match.group(1)), match.group(2).rstrip("s")
    raise ValueError(
        'Expected check_freq to be "epoch", "N epochs", "N steps" or a positive '
        f"integer (steps). Received: check_freq={check_freq!r}"
    )


class GradientCheck(Monitor):
    """Checks the model's gradients against finite differences during training.

    Args:
        log_dir: Where to write TensorBoard logs, or `None` for no logs.
            Defaults to `None`.
        data: `(x, y)` or `(x, y, sample_weight)`: the examples to check on
            (only the first `max_examples` are used). Required.
        warmup_steps: No check before this many training steps. Defaults to
            `20`.
        wait_for_loss_drop: Also wait until the loss on `data` has fallen 1%
            below its value at the start of training (a characteristic point,
            not the initialisation), at most until `max_warmup_steps`.
            Defaults to `True`.
        max_warmup_steps: Check at the first opportunity after this many steps
            even if the loss has not fallen (it may not, because the gradient
            is wrong). Defaults to `None`: `10 × warmup_steps` (at least 100).
        check_freq: How often to check once warmed up: `"epoch"` (each epoch
            end), `"N epochs"`, or `N`/`"N steps"`. Defaults to `"epoch"`.
        max_checks: Stop checking after this many checks, or `None` for no
            limit. Defaults to `None`.
        on_failure: What to do when a gradient is wrong: `"log"` (findings
            only), `"warn"` (also a Python warning), `"stop"` (also
            `model.stop_training = True`) or `"raise"` (raise
            `GradientCheckError`). Defaults to `"warn"`.
        verbose: 0 silent, 1 print new findings. Defaults to 1.
        **check_options: Passed to `trainwatch.check_gradients`
            (`max_examples`, `coordinates`, `directions`, `relative_step`,
            `precision`, `seed`).

    Raises:
        ValueError: A bad argument; the message names it.

    Example:

    >>> check = GradientCheck("runs/exp1", data=(x[:8], y[:8]))  # doctest: +SKIP
    >>> model.fit(x, y, epochs=5, callbacks=[check])  # doctest: +SKIP
    >>> print(check.last_result)  # doctest: +SKIP
    """

    def __init__(
        self,
        log_dir=None,
        data=None,
        warmup_steps=20,
        wait_for_loss_drop=True,
        max_warmup_steps=None,
        check_freq="epoch",
        max_checks=None,
        on_failure="warn",
        verbose=1,
        **check_options,
    ):
        super().__init__(log_dir=log_dir, verbose=verbose)
        if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
            raise ValueError(
                "GradientCheck needs examples to check on: data=(x, y) or "
                f"(x, y, sample_weight). Received: data={_short(data)}"
            )
        for name, value in (("warmup_steps", warmup_steps),):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(
                    f"Expected an integer {name}. Received: {name}={value!r}"
                )
            if value < 0:
                raise ValueError(f"Expected {name} >= 0. Received: {name}={value!r}")
        if max_warmup_steps is not None and (
            isinstance(max_warmup_steps, bool)
            or not isinstance(max_warmup_steps, (int, np.integer))
            or max_warmup_steps < warmup_steps
        ):
            raise ValueError(
                "Expected max_warmup_steps to be None or an integer >= warmup_steps. "
                f"Received: max_warmup_steps={max_warmup_steps!r}"
            )
        if max_checks is not None and (
            isinstance(max_checks, bool)
            or not isinstance(max_checks, (int, np.integer))
            or max_checks < 1
        ):
            raise ValueError(
                "Expected max_checks to be None or a positive integer. "
                f"Received: max_checks={max_checks!r}"
            )
        if on_failure not in ON_FAILURE:
            raise ValueError(
                f"Expected on_failure in {ON_FAILURE}. "
                f"Received: on_failure={on_failure!r}"
            )
        try:
            validate_options(**check_options)
        except TypeError as error:
            raise ValueError(
                f"Unknown check option ({error}). Received: check_options="
                f"{sorted(check_options)}"
            ) from error
        self.data = tuple(data) + (None,) * (3 - len(data))
        self.warmup_steps = int(warmup_steps)
        self.wait_for_loss_drop = bool(wait_for_loss_drop)
        self.max_warmup_steps = (
            max(10 * self.warmup_steps, 100)
            if max_warmup_steps is None
            else int(max_warmup_steps)
        )
        self.check_every, self.check_unit = parse_check_freq(check_freq)
        self.max_checks = max_checks
        self.on_failure = on_failure
        self.check_options = dict(check_options)
        self.results = []  # [(step, GradientCheckResult)]
        self._initial_loss = None
        self._next_step = None
        self._error = None
        self.mid_epoch_seconds = MID_EPOCH_SECONDS
        self._mid_epoch_tried_at = -math.inf
        if self.check_unit == "step":
            # Only a step schedule needs a batch hook (it turns off Keras's
            # async dispatch); the epoch schedule leaves the default in place.
            self.on_train_batch_end = self._on_train_batch_end

    @property
    def last_result(self):
        """The latest `GradientCheckResult`, or `None` before the first check."""
        return self.results[-1][1] if self.results else None

    # -- hooks -----------------------------------------------------------------
    def build_batch(self):
        return self.data

    def begin(self):
        self._error = None
        self._next_step = None
        if self.wait_for_loss_drop and self._initial_loss is None:
            self._initial_loss = self._probe_loss()

    def epoch_end(self, epoch, logs):
        if self.check_unit == "epoch":
            if (epoch + 1) % self.check_every == 0:
                self._maybe_check()
        elif self._next_step is None or self.context.step >= self._next_step:
            # A step schedule whose batch hook was not called (a wrapper that
            # forwards only class-level hooks) still checks at epoch ends.
            self._next_step = self.context.step + self.check_every
            self._maybe_check()

    def end(self, logs):
        if not self.results:  # warm-up never ended: check once before leaving
            self._maybe_check(final=True)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._raise_pending()

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        self._raise_pending()

    def on_train_batch_begin(self, batch, logs=None):
        # Inside TrainWatch only, with the epoch schedule: a long epoch must
        # not hold back the first check until its end, nor the next ones. A
        # try mid-epoch (warm-up rules and budget as at an epoch's end) comes
        # once `mid_epoch_seconds` of training have passed since the last
        # check, or since training began, and at most that often. The main
        # thread, between steps; a clock read on every other batch.
        if self._owns_context or self.disabled or self.check_unit != "epoch":
            return
        context = self.context
        now = context.training_seconds()
        if now - self._mid_epoch_tried_at < self.mid_epoch_seconds:
            return
        if context.seconds_since(f"{type(self).__name__}.check") < (
            self.mid_epoch_seconds
        ):
            return
        self._mid_epoch_tried_at = now
        self.guard("mid_epoch", self._maybe_check)
        self._raise_pending()

    def _on_train_batch_end(self, batch, logs=None):
        step = self.step_for_batch(batch)
        if self._next_step is not None and step < self._next_step:
            return
        self._next_step = step + self.check_every
        self.guard("batch_end", self._maybe_check)
        self._raise_pending()

    # -- scheduling ----------------------------------------------------------
    def _maybe_check(self, final=False):
        if self.max_checks is not None and len(self.results) >= self.max_checks:
            return None
        step = self.context.step
        if not final:
            if step < self.warmup_steps:
                return None
            if not self.results:
                if self.wait_for_loss_drop and step < self.max_warmup_steps:
                    if not self._loss_has_fallen():
                        return None
            elif not self._owns_context and not self.context.can_afford(
                f"{type(self).__name__}.check"
            ):
                return None  # inside TrainWatch, over its time budget: skip this one
        return self.guard("check", self._check)

    def _probe_loss(self):
        model = self._model
        if model is None or not model.built:
            return None
        try:
            x, y, sample_weight = self.data
            n = self.check_options.get("max_examples", 8)
            x, y, sample_weight = (
                None if v is None else _head(v, n) for v in (x, y, sample_weight)
            )
            parts = mf.compute_loss_parts(
                self.model,
                mf.convert_batch(x),
                mf.convert_batch(y),
                mf.convert_batch(sample_weight),
                compiled=True,  # evaluated again until the loss falls
            )
        except Exception:  # no probe loss: fall back on the step count
            return None
        return parts.total if math.isfinite(parts.total) else None

    def _loss_has_fallen(self):
        current = self._probe_loss()
        if self._initial_loss is None:
            self._initial_loss = current
            return False
        if current is None:
            return False
        return current < self._initial_loss - _LOSS_DROP * abs(self._initial_loss)

    # -- the check -----------------------------------------------------------
    def _check(self):
        model = self.model  # on JAX this syncs the trained weights
        x, y, sample_weight = self.data
        try:
            result = check_gradients(model, x, y, sample_weight, **self.check_options)
        except (TypeError, ValueError) as error:  # not built, not compiled, ...
            self.report(
                "monitor_failed",
                "warning",
                f"GradientCheck could not run: {error}",
                "Pass a built, compiled model and `data=(x, y)` matching its "
                "inputs and loss.",
                where=type(self).__name__,
            )
            return None
        step = self.context.step
        self.results.append((step, result))
        self._write(result, step)
        for finding in result.findings:
            self.report_finding(finding)
        if result.failed:
            self._on_failure(result, step)
        return result

    def _write(self, result, step):
        writer = self.context.writer("train")
        if writer is None:
            return
        scalars = {}
        for variable in result.variables:
            if math.isfinite(variable.relative_error):
                scalars[f"gradcheck/{variable.path}"] = _log10(variable.relative_error)
            if math.isfinite(variable.vector_error):
                scalars[f"gradcheck_vector/{variable.path}"] = _log10(
                    variable.vector_error
                )
            if math.isfinite(variable.estimated_error):
                scalars[f"gradcheck_estimate/{variable.path}"] = _log10(
                    variable.estimated_error
                )
        if math.isfinite(result.max_relative_error):
            scalars["gradcheck_summary/max_log10_relative_error"] = _log10(
                result.max_relative_error
            )
        if math.isfinite(result.max_vector_error):
            scalars["gradcheck_summary/max_log10_vector_error"] = _log10(
                result.max_vector_error
            )
        scalars["gradcheck_summary/wrong_variables"] = float(len(result.failed))
        scalars["gradcheck_summary/seconds"] = float(result.seconds)
        writer.scalars(scalars, step)
        writer.text("gradcheck_summary/table", result.to_markdown(), step)
        writer.flush()

    def _on_failure(self, result, step):
        names = ", ".join(v.path for v in result.failed)
        message = f"Gradient check failed at step {step}: wrong gradient for {names}."
        if self.on_failure in ("warn", "stop", "raise"):
            warnings.warn(f"trainwatch: {message}", RuntimeWarning, stacklevel=2)
        if self.on_failure == "stop":
            self.model.stop_training = True
        if self.on_failure == "raise":
            self._error = GradientCheckError(f"{message}\n{result}")

    def _raise_pending(self):
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _head(value, count):
    import keras

    def take(leaf):
        array = np.asarray(leaf)
        return array[:count] if array.ndim else array

    return keras.tree.map_structure(take, value)


def _log10(value):
    return max(math.log10(value), _LOG10_FLOOR) if value > 0 else _LOG10_FLOOR


def _short(value):
    text = (
        repr(value)
        if not isinstance(value, (tuple, list))
        else f"{type(value).__name__} of {len(value)}"
    )
    return text if len(text) < 80 else text[:77] + "..."
