"""`UpdateRatio`: the update-to-parameter ratio `‖ΔW‖ / ‖W‖` of every variable.

The update is what the optimizer actually applied in a step: the weights are
read at the beginning of a sampled step and at the beginning of the next one
(or at the epoch's end). Both reads happen in `on_train_batch_begin`, which
Keras always calls on the main thread before the step runs, so this callback
adds no batch-end hook and leaves Keras's asynchronous callback dispatch on.
The reduction runs on the device with `keras.ops`: two sums of squares per
variable, stacked into one small vector that is moved to the host one sample
later, once it is long computed (no device sync in the training loop).

On JAX the weights of a running epoch live in the trainer's state (the model's
variables are synced only at epoch ends); they are read from there without a
sync, and the sampled step's starting weights are copied on the device because
JAX donates them to the next step.

Sampling: the steps 1, 2, 4, 8, … below `update_freq`, then every
`update_freq`-th step, each of these taken while this callback's own time
stays within `time_share` of the training time (else it waits for the next
sample step: on a model whose steps take half a millisecond, a sample costs
about as much as a step). With `steps_per_execution = s > 1` the weights are
visible only every `s` steps: the ratio of the `s`-step update, divided by
`s`, is logged (the per-step average for updates that point the same way, a
lower bound otherwise).

What it writes, in `train`, x-axis in global steps: `update_ratio/<variable
path>` and `update_ratio_layer/<layer path>` as log10 of the ratio (variables
whose weights are all zero, such as biases at initialization, are skipped
until they are not), and the band `update_ratio_band/{low,healthy,high}`; a
custom-scalars layout (Custom Scalars tab) charts the layers against the
shaded healthy band.

Example:

>>> [t for t in range(1, 121) if _is_sample_step(t, 50)]
[1, 2, 4, 8, 16, 32, 50, 100]
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from trainwatch.backends.model_copy import base_optimizer
from trainwatch.callbacks.base import Monitor
from trainwatch.numerics import update_ratio as ur
from trainwatch.rules import dynamics

__all__ = ["UpdateRatio"]

_HISTORY = 20
_RULES_PART = "UpdateRatio.rules"
# The guarded hooks that sample (what `time_share` weighs; the rules run inside)
_SAMPLING_HOOKS = ("first_updates", "update_ratio", "epoch_end")
_compiled: dict[tuple[str, str], object] = {}


def _flatten(values):
    """All weights as one new float32 vector (a copy that survives donation)."""
    return ops.concatenate(
        [ops.reshape(ops.cast(v, "float32"), (-1,)) for v in values], axis=0
    )


def _sums_of_squares(before, values):
    """`[‖after_0 − before_0‖², ‖before_0‖², ‖after_1 − before_1‖², …]`."""
    sums = []
    offset = 0
    for value in values:
        size = int(np.prod(value.shape))
        old = before[offset : offset + size]
        new = ops.reshape(ops.cast(value, "float32"), (-1,))
        sums.append(ops.sum(ops.square(ops.subtract(new, old))))
        sums.append(ops.sum(ops.square(old)))
        offset += size
    return ops.stack(sums)


def _device_function(fn):
    """`fn` compiled once per process by the backend adapter (one dispatch a call).

    Eager `keras.ops` cost one dispatch per op and variable (~2 ms a sample on
    JAX for a small MLP); compiled, a sample is two calls. Falls back to eager
    when the adapter has no `jit`.
    """
    from trainwatch.backends import active_backend_name, get_backend

    key = (active_backend_name(), fn.__name__)
    if key not in _compiled:
        jit = getattr(get_backend(), "jit", None)
        _compiled[key] = jit(fn) if jit is not None else fn
    return _compiled[key]


def _is_ready(array) -> bool:
    """Whether reading `array` would not wait for the device (JAX's `is_ready`)."""
    is_ready = getattr(array, "is_ready", None)
    if not callable(is_ready):
        return True
    try:
        return bool(is_ready())
    except Exception:  # not an answer: read it
        return True


def _is_bias(path):
    """Whether a variable is a bias by its name: 1-D biases are told by their
    shape, but attention and recurrent layers keep theirs in 2-D arrays
    (`(heads, units)`, `(2, 3 * units)`), which start at zero and so have
    update ratios far above a weight's for many steps.

    Example:

    >>> _is_bias("mha/query/bias"), _is_bias("gru/gru_cell/recurrent_kernel")
    (True, False)
    """
    name = path.rsplit("/", 1)[-1].lower()
    return name == "bias" or name.endswith("_bias")


def _is_sample_step(step, freq):
    """Steps 1, 2, 4, 8, … below `freq`, then every multiple of `freq`."""
    if step < 1:
        return False
    if step % freq == 0:
        return True
    return step < freq and step & (step - 1) == 0


def _next_sample_step(steps_done, freq):
    """The first sample step after `steps_done` steps."""
    step = steps_done + 1
    if step < freq:
        power = 1 << (step - 1).bit_length()  # smallest power of two >= step
        return min(power, freq)
    return -(-step // freq) * freq


def _positive(name, value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ValueError(
            f"Expected `{name}` to be a positive number. Received: {name}={value!r}"
        )
    return number


class UpdateRatio(Monitor):
    """Logs `‖ΔW‖ / ‖W‖` per variable and per layer; flags a learning rate far off.

    A healthy ratio is about 1e-3 (CS231n): far below, the learning rate is
    too low; far above, too high. Sustained ratios beyond `warn_below` or
    `warn_above` (median of the last 5 samples of a weight variable; biases and
    other 1-D variables, and 2-D biases by their name, are charted but not
    judged) raise `update_ratio_low`
    or `update_ratio_high`, with the factor to change the learning rate by.
    Ratios that collapse after being too high (a network knocked dead by huge
    steps) do not raise `update_ratio_low`.

    Args:
        log_dir: Directory for TensorBoard logs, or `None` to only report
            findings. Defaults to `None`.
        update_freq: Measure every this many steps (plus the steps 1, 2, 4, …
            below it, to see the first updates). Each measurement costs two
            weight-sized reductions on the device. Defaults to `50`.
        band: `(low, high)` ratios of the healthy band drawn in TensorBoard.
            Defaults to `(1e-4, 1e-2)`.
        warn_below: Sustained ratio below which `update_ratio_low` is raised.
            Defaults to `3e-5`.
        warn_above: Sustained ratio above which `update_ratio_high` is raised.
            Defaults to `1e-1`.
        time_share: Share of the training time the measurements may take: a
            sample step from `update_freq` on is skipped while this
            callback's time so far (its samples, the ratios' logging and
            rules) is above it; the samples of the first updates are always
            taken. `None` takes every sample step. Defaults to `0.005`.
        verbose: 0 silent, 1 print each new warning or error finding.
            Defaults to `1`.

    Raises:
        ValueError: If `update_freq` is not a positive integer, or the band or
            thresholds are not positive and ordered.

    Example:

    ```python
    ratios = trainwatch.UpdateRatio("runs/exp1", update_freq=50)
    model.fit(x, y, epochs=5, callbacks=[ratios])
    ratios.latest   # {'sequential/dense/kernel': 0.0012, ...}
    ```
    """

    def __init__(
        self,
        log_dir=None,
        update_freq=50,
        band=(1e-4, 1e-2),
        warn_below=3e-5,
        warn_above=1e-1,
        time_share=0.005,
        verbose=1,
    ):
        super().__init__(log_dir=log_dir, verbose=verbose)
        if (
            isinstance(update_freq, bool)
            or not isinstance(update_freq, (int, np.integer))
            or update_freq < 1
        ):
            raise ValueError(
                "Expected `update_freq` to be a positive integer (steps). "
                f"Received: update_freq={update_freq!r}"
            )
        try:
            low, high = band
        except (TypeError, ValueError):
            low = high = None
        if low is None or not (_positive("band[0]", low) < _positive("band[1]", high)):
            raise ValueError(
                f"Expected `band` to be (low, high) with 0 < low < high. "
                f"Received: band={band!r}"
            )
        below = _positive("warn_below", warn_below)
        above = _positive("warn_above", warn_above)
        if below >= above:
            raise ValueError(
                "Expected `warn_below` < `warn_above`. "
                f"Received: warn_below={warn_below!r}, warn_above={warn_above!r}"
            )
        if time_share is not None:
            time_share = _positive("time_share", time_share)
        self.update_freq = int(update_freq)
        self.time_share = time_share
        self.samples_taken = 0
        self.band = (float(low), float(high))
        self.warn_below = below
        self.warn_above = above
        self.history: dict[str, list[float]] = {}
        self.latest: dict[str, float] = {}
        self.latest_by_layer: dict[str, float] = {}
        self._variables = []
        self._paths = []
        self._judged = []
        self._snapshot = None  # (step after, steps spanned, epoch, flat copy)
        self._pending = []  # [(step, epoch, steps spanned, device vector)]
        self._epoch_start_step = 0
        self._spe = 1
        self._steps = None
        self._learning_rate = None
        self._adaptive = False  # Adam-like: steps of about the learning rate
        self._momentum = None  # SGD's, named when the steps are far too large
        self._sizes = {}  # variable path -> number of weights
        self._weight_rms = {}  # variable path -> RMS of its latest sampled weights
        self._layout_written = False
        self._seen_high = False
        self._codes_reported = set()
        self._next_due = 1
        self._awaiting_build = False

    # -- Keras hooks ---------------------------------------------------------
    def begin(self):
        model = self._model
        # Unbuilt (TensorFlow, no `Input`, no probe): no variables yet; taken
        # up at the first sample step, after Keras built the model.
        self._awaiting_build = not model.built
        self._variables = list(model.trainable_variables)
        self._paths = [v.path for v in self._variables]
        weights = [
            p
            for v, p in zip(self._variables, self._paths)
            if len(v.shape) > 1 and not _is_bias(p)
        ]
        self._judged = weights or list(self._paths)
        self._spe = max(1, int(getattr(model, "steps_per_execution", 1) or 1))
        steps = (self.params or {}).get("steps")
        self._steps = int(steps) if steps else None
        self._snapshot = None
        self._learning_rate = _current_learning_rate(model)
        self._adaptive = _is_adaptive(getattr(model, "optimizer", None))
        self._momentum = _sgd_momentum(getattr(model, "optimizer", None))
        self._sizes = {
            p: int(np.prod(v.shape)) for v, p in zip(self._variables, self._paths)
        }
        self._weight_rms = {}
        self._write_layout()

    def epoch_begin(self, epoch):
        self._epoch_start_step = self.context.step
        self._next_due = _next_sample_step(self._epoch_start_step, self.update_freq)

    def on_train_batch_begin(self, batch, logs=None):
        steps_done = self._epoch_start_step + batch
        # Most batches: two comparisons and out (the step is kept where it is
        # used: findings come from the samples, and epoch ends set it).
        if self._snapshot is None and steps_done + self._spe < self._next_due:
            return
        if not self._variables and self._awaiting_build and self._model.built:
            self.guard("train_begin", self.begin)  # built by the first step
        if self.disabled or not self._variables:
            if self.disabled or not self._awaiting_build:
                self._next_due = math.inf  # nothing to sample: out at once
            return
        if self._owns_context and steps_done > self.context.step:
            self.context.step = steps_done
        if self._snapshot is not None or (
            self._samples_in(batch, steps_done) and self._within_share(steps_done)
        ):
            # The samples of the first updates (steps 1, 2, 4, … below
            # `update_freq`) come once per run: timed apart from the rest.
            part = "first_updates" if steps_done < self.update_freq else "update_ratio"
            self.guard(part, self._batch_begin, int(batch))

    def epoch_end(self, epoch, logs):
        if self._snapshot is not None:
            # The epoch's end: JAX has synced the model's variables by now.
            self._complete([v.value for v in self._variables])
        self._resolve(final=True)  # and waiting for the device costs nothing

    def end(self, logs):
        self._snapshot = None
        self._resolve(final=True)

    # -- internals -----------------------------------------------------------
    def _span(self, batch):
        """Steps the execution starting at `batch` runs (fewer at the epoch end)."""
        if self._steps is None:
            return self._spe
        return max(1, min(self._spe, self._steps - batch))

    def _samples_in(self, batch, steps_done):
        self._next_due = _next_sample_step(steps_done, self.update_freq)
        return self._next_due <= steps_done + self._span(batch)

    def _batch_begin(self, batch):
        steps_done = self._epoch_start_step + batch
        values = None
        if self._snapshot is not None:
            values = self._current_values()
            self._complete(values)
        if self._samples_in(batch, steps_done) and self._within_share(steps_done):
            values = values if values is not None else self._current_values()
            span = self._span(batch)
            before = _device_function(_flatten)(values)
            self._snapshot = (steps_done + span, span, self.context.epoch, before)
            self.samples_taken += 1

    def _within_share(self, steps_done):
        """Whether a sample now keeps this callback within `time_share`.

        The samples of the first updates (at most `log2(update_freq) + 1`)
        are always taken: the rules judge a learning rate far off by them.
        """
        if self.time_share is None or steps_done < self.update_freq:
            return True
        seconds_by_part = self.context.seconds_by_part
        name = type(self).__name__
        spent = sum(
            seconds_by_part.get(f"{name}.{hook}", 0.0) for hook in _SAMPLING_HOOKS
        )
        return spent <= self.time_share * self.context.training_seconds()

    def _current_values(self):
        """The trainable weights now, without syncing JAX's state to the model."""
        model = self._model
        state = getattr(model, "_jax_state", None)
        if state and not getattr(model, "_jax_state_synced", True):
            values = state.get("trainable_variables")
            if values is not None and len(values) == len(self._variables):
                return list(values)
        return [v.value for v in self._variables]

    def _complete(self, values):
        """Reduces the sampled update on the device; the host sees it later."""
        step, spanned, epoch, before = self._snapshot
        self._snapshot = None
        self._resolve()  # the earlier samples are long computed by now
        sums = _device_function(_sums_of_squares)(before, values)
        self._pending.append((step, epoch, spanned, sums))

    def _resolve(self, final=False):
        """Records the samples computed by now; with `final`, all of them.

        Mid-epoch, a sample still being computed (JAX runs asynchronously)
        waits for the next call: blocking on the device there releases the
        GIL to Keras's callback threads, and taking it back can cost
        milliseconds on a small model.
        """
        pending, self._pending = self._pending, []
        for index, item in enumerate(pending):
            step, epoch, spanned, vector = item
            if not final and not _is_ready(vector):
                self._pending = pending[index:]  # in order: the rest waits too
                break
            sums = np.asarray(ops.convert_to_numpy(vector), np.float64).tolist()
            self._record(step, epoch, spanned, sums[0::2], sums[1::2])
            # Judged at every sample: "sustained" is about the latest samples,
            # and a window skipped (lr far too high, then a dead network)
            # could never be judged again.
            with self.context.timed(_RULES_PART):
                self._judge(step, epoch)

    def _record(self, step, epoch, spanned, sq_update, sq_param):
        self._check_finite(step, epoch, sq_update, sq_param)
        per_variable = [ur.ratio(u, p, spanned) for u, p in zip(sq_update, sq_param)]
        per_layer = ur.layer_ratios(self._paths, sq_update, sq_param, spanned)
        values = {}
        for path, ratio, squares in zip(self._paths, per_variable, sq_param):
            self.latest[path] = ratio
            if self._adaptive and self._sizes.get(path) and squares > 0:
                self._weight_rms[path] = math.sqrt(squares / self._sizes[path])
            series = self.history.setdefault(path, [])
            series.append(ratio)
            del series[:-_HISTORY]
            if math.isfinite(ratio) and ratio > 0:
                values[f"update_ratio/{path}"] = math.log10(ratio)
        for layer, ratio in per_layer.items():
            self.latest_by_layer[layer] = ratio
            if math.isfinite(ratio) and ratio > 0:
                values[f"update_ratio_layer/{layer}"] = math.log10(ratio)
        writer = self.context.writer("train")
        if writer is not None and values:
            values.update(self._band_values())  # in the same event: nearly free
            writer.scalars(values, step=step)

    def _judge(self, step, epoch):
        """Turns the sampled history into findings."""
        findings = dynamics.update_ratio_findings(
            {path: self.history.get(path, ()) for path in self._judged},
            step=step,
            epoch=epoch,
            low=self.warn_below,
            high=self.warn_above,
            learning_rate=self._learning_rate,
            adaptive_ratios=self._adaptive_ratios(),
            momentum=self._momentum,
        )
        still = dynamics.weights_not_updated(self.history, step=step, epoch=epoch)
        if still is not None:
            findings.append(still)
        for finding in findings:
            if finding.code == "update_ratio_high":
                self._seen_high = True
            elif self._seen_high:
                # Ratios that collapse after steps far too large mean a network
                # knocked dead (dead ReLUs), not a learning rate too low.
                continue
            if finding.code in self._codes_reported:
                # One learning-rate verdict a run: the flagged set may grow
                # from one variable (`where` names it) to several (`where`
                # None), which the log would keep as a second finding.
                continue
            if self.context.report(finding):
                self._codes_reported.add(finding.code)

    def _adaptive_ratios(self):
        """`{path: lr / RMS of its weights}` under an adaptive optimizer, whose
        steps are about the learning rate per weight; `None` otherwise."""
        rate = self._learning_rate
        if not self._adaptive or rate is None or rate <= 0:
            return None
        return {path: rate / rms for path, rms in self._weight_rms.items() if rms > 0}

    def _check_finite(self, step, epoch, sq_update, sq_param):
        """Weights that became nan or inf: said even when the loss stays finite
        (TensorFlow's ReLU turns nan into 0, hiding it from the loss)."""
        bad = [
            path
            for path, u, w in zip(self._paths, sq_update, sq_param)
            if not (math.isfinite(u) and math.isfinite(w))
        ]
        if bad:
            shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
            self.report(
                "weights_nan",
                "error",
                f"{len(bad)} weight(s) became nan or inf by step {step}: {shown}. "
                "Training continues, but these weights are lost from here on.",
                dynamics.NAN_ADVICE,
            )

    def _band_values(self):
        """The band as three constant series, for the charts."""
        low, high = self.band
        return {
            "update_ratio_band/low": math.log10(low),
            "update_ratio_band/healthy": math.log10(ur.HEALTHY_RATIO),
            "update_ratio_band/high": math.log10(high),
        }

    def _write_layout(self):
        writer = self.context.writer("train")
        if writer is None or self._layout_written:
            return
        layers = list(dict.fromkeys(ur.layer_of(p) for p in self._paths))
        band = ("update_ratio_band/healthy", "update_ratio_band/low")
        band = band + ("update_ratio_band/high",)
        layer_series = [(f"update_ratio_layer/{layer}",) * 3 for layer in layers]
        writer.custom_scalars_layout(
            {
                "update ratio (log10 |dW|/|W|, healthy about -3)": {
                    "layers against the healthy band": {
                        "margin": [band, *layer_series]
                    },
                    "layers": ["^update_ratio_layer/", "^update_ratio_band/"],
                    "variables": ["^update_ratio/", "^update_ratio_band/"],
                }
            }
        )
        self._layout_written = True


# Optimizers that step each weight by about the learning rate, whatever the
# gradient's size (normalized by its running RMS, or its sign).
_ADAPTIVE_OPTIMIZERS = frozenset(
    {"Adam", "AdamW", "Adamax", "Nadam", "RMSprop", "Lion"}
)


def _is_adaptive(optimizer) -> bool:
    """Whether an optimizer (unwrapped from loss scaling) is Adam-like.

    Example:

    >>> _is_adaptive(None)
    False
    """
    return type(base_optimizer(optimizer)).__name__ in _ADAPTIVE_OPTIMIZERS


def _sgd_momentum(optimizer):
    """The momentum of an SGD optimizer (unwrapped from loss scaling) as a
    float, or `None` for other optimizers and unreadable values.

    Example:

    >>> _sgd_momentum(None) is None
    True
    """
    optimizer = base_optimizer(optimizer)
    if type(optimizer).__name__ != "SGD":
        return None
    try:
        return float(getattr(optimizer, "momentum", None))
    except (TypeError, ValueError):
        return None


def _current_learning_rate(model):
    """The optimizer's learning rate as a float, or `None` (e.g. a schedule)."""
    optimizer = base_optimizer(getattr(model, "optimizer", None))
    rate = getattr(optimizer, "_learning_rate", None)
    if rate is None or callable(rate):
        return None
    try:
        return float(ops.convert_to_numpy(rate))
    except Exception:
        return None
