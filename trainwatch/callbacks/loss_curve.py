"""`LossCurve`: the loss of each logged batch, per-epoch metrics, the train/val gap.

What it writes (TensorBoard, Keras's `train`/`validation` run layout):

* every `update_freq` steps, in `train`, x-axis in global steps:
  `batch_loss`, the loss of that batch itself, recovered from Keras's running
  means, and `batch_loss_log10`, and also at the first step this callback
  sees (the initial loss: a run shorter than `update_freq` still gets its
  curve's start); at each epoch's start and end, `epoch` (epochs elapsed:
  plotted against steps, a line to read the step axis in epochs). With
  `steps_per_execution = s > 1` the hooks come every `s` steps and a single
  batch's loss cannot be recovered: `window_loss` (and
  `window_loss_log10`), the mean loss of the `s` batches run since the
  previous hook, replaces `batch_loss`. The epoch's last batch, which may be
  smaller than the others, is left out (the recovery assumes equal sizes).
* every epoch, x-axis in epochs: every entry of Keras's logs, `epoch_<name>`,
  training values in `train` and `val_*` values in `validation` under the
  same tag (`epoch_loss`, `epoch_accuracy`, custom metrics alike), and in
  `train` the gaps `gap/<name>` (how much worse validation is: `val - train`
  for losses and errors, `train - val` for accuracies and other scores).

Findings: `loss_nan`, `loss_diverging`, `loss_plateau`, `loss_noisy`,
`overfitting`, `underfitting` (see `trainwatch.rules.dynamics`).
"""

from __future__ import annotations

import math
import operator
import threading
from collections import deque

import keras

from trainwatch.backends import computes_on_cpu
from trainwatch.backends import model_functions as mf
from trainwatch.callbacks.base import Monitor
from trainwatch.numerics.curves import batch_losses, log10_or_none, window_mean_loss
from trainwatch.rules import dynamics

__all__ = ["LossCurve"]

_HIGHER_IS_BETTER = ("acc", "auc", "precision", "recall", "f1", "iou", "r2", "score")
_MAX_POINTS_PER_EPOCH = 2000
_RECENT_FOR_DIVERGENCE = 50
# The curve rules run at an epoch's end while they cost at most this share of
# the training time since they last ran (every epoch, unless epochs last less
# than ~0.1 s; before they first ran, their cost is taken as 1 ms), and always
# after the last epoch.
_RULES_PART = "LossCurve.rules"
_RULES_SHARE = 0.005
_RULES_FIRST_COST = 0.001  # seconds, before they first ran (~0.2-0.6 ms)
_MAX_QUEUED = 256  # batch losses queued at most before they are worked off


def higher_is_better(name: str) -> bool:
    """Whether a metric name looks like a score (accuracy, AUC…) rather than a loss.

    Example:

    >>> higher_is_better("sparse_categorical_accuracy"), higher_is_better("mae")
    (True, False)
    """
    name = name.lower()
    return any(key in name for key in _HIGHER_IS_BETTER)


def _accuracy_name(names):
    """The training accuracy metric to judge over/underfitting by, or `None`.

    Validation entries (`val_*`) are not candidates: they are compared with
    the training metric of the same name. Of several (a model with several
    outputs), the first in sorted order, so the choice never depends on the
    order the names came in.

    Example:

    >>> _accuracy_name(["val_cls_accuracy", "loss", "cls_accuracy"])
    'cls_accuracy'
    """
    candidates = sorted(
        n
        for n in names
        if "acc" in n.lower() and "top" not in n.lower() and not n.startswith("val_")
    )
    if "accuracy" in candidates:
        return "accuracy"
    return candidates[0] if candidates else None


def _validation_examples(model):
    """Examples in the validation run `fit` just did, or `None` if unknown.

    Read from the evaluation iterator Keras keeps during `fit` (arrays and
    other inputs of known batch size; `None` for datasets and generators).

    Example:

    >>> _validation_examples(object()) is None
    True
    """
    try:
        iterator = getattr(model, "_eval_epoch_iterator", None)
        adapter = getattr(iterator, "data_adapter", None)
        batches, size = adapter.num_batches, adapter.batch_size
        if not batches or not size:
            return None
        steps = getattr(iterator, "steps_per_epoch", None)
        if steps and steps < batches:  # `validation_steps` cut it short
            return int(steps) * int(size)
        last = adapter.partial_batch_size if adapter.has_partial_batch else None
        return (int(batches) - 1) * int(size) + int(last or size)
    except Exception:  # another Keras, another input: unknown
        return None


def _chance_accuracy(model):
    """What guessing scores on a single-output classifier: 1/classes (0.5 for
    one sigmoid unit), or `None` when the model's output does not say.

    Example:

    >>> _chance_accuracy(object()) is None
    True
    """
    try:
        (output,) = model.outputs
        units = output.shape[-1]
    except Exception:  # not built, several outputs, subclassed without outputs
        return None
    if not units or len(output.shape) < 2:
        return None
    return 0.5 if units == 1 else 1.0 / int(units)


# How fast the validation loss must still fall, at each validation, for an
# accuracy gap not to count as overfitting yet: 5% (dynamics.overfitting's
# default), and any fall at all in a model with BatchNormalization, whose
# moving statistics lag the batch statistics while the weights move fast. A
# CNN on digits with one BatchNormalization: validation accuracy 0.10-0.16 for
# five epochs against 0.16-0.48 in training, its loss falling 1-4% an epoch,
# then 0.30, 0.51, 0.66, 0.73 as the statistics caught up.
_VALIDATION_FALL = 0.05
_VALIDATION_FALL_BATCH_NORMALIZATION = 0.0


def _validation_fall(model):
    """The `val_fall` of `dynamics.overfitting` for `model`.

    Example:

    >>> _validation_fall(object())
    0.05
    """
    try:
        layers = model._flatten_layers(include_self=False, recursive=True)
        normalized = any(
            isinstance(layer, keras.layers.BatchNormalization) for layer in layers
        )
    except Exception:  # not a Keras model: the default
        return _VALIDATION_FALL
    return _VALIDATION_FALL_BATCH_NORMALIZATION if normalized else _VALIDATION_FALL


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


class LossCurve(Monitor):
    """Logs the training loss curve, per-epoch metrics and the train/val gap.

    Keras's `logs["loss"]` in a batch hook is the running mean of the loss
    since the epoch began; this callback recovers the loss of the batch itself
    from two consecutive running means (`L_k = k·m_k − (k−1)·m_{k−1}`, exact
    for equal batch sizes; the epoch's last batch, which may be smaller, is
    left out). It checks every batch for a non-finite loss, and at epoch
    ends judges the curve (diverging, plateau, noisy) and the gap
    (overfitting): every epoch, unless epochs are so short (less than ~0.1 s)
    that the rules would take more than 0.5% of the training time, then every
    few epochs; always after the last. At train end, underfitting.

    The batch hook is cheap and thread-safe. On a GPU or TPU it says so
    (`async_safe`), and Keras keeps running batch hooks in its worker threads
    on JAX and PyTorch while the device computes; on a CPU it runs them in
    step with training instead, which is cheaper there (see `async_safe`).

    Args:
        log_dir: Directory for TensorBoard logs (`train/`, `validation/`
            runs), or `None` to only report findings. Defaults to `None`.
        update_freq: Write the batch-level loss every this many steps, or
            `"epoch"` to write only per-epoch values (non-finite losses are
            still caught at every batch). Each write costs ~0.1 ms.
            Defaults to `50`.
        stop_on_nan: Stop training (`model.stop_training = True`) at the first
            non-finite loss. Defaults to `False`: training continues.
        verbose: 0 silent, 1 print each new warning or error finding.
            Defaults to `1`.

    Raises:
        ValueError: If `update_freq` is not a positive integer or `"epoch"`.
        TypeError: If `stop_on_nan` is not a bool.

    Example:

    ```python
    curve = trainwatch.LossCurve("runs/exp1", update_freq=50)
    model.fit(x, y, validation_data=(x_val, y_val), epochs=20, callbacks=[curve])
    [f.code for f in curve.context.findings]   # e.g. ['overfitting']
    ```
    """

    @property
    def async_safe(self):
        """Whether Keras may run the batch-end hook in its worker threads.

        Only where an accelerator computes. Keras's asynchronous dispatch
        (JAX, PyTorch) hands every step's hooks to a thread pool so that the
        host can queue the next step while a device is busy. When the CPU
        itself computes there is nothing to overlap, and the hand-off costs
        time: a plain `fit` of the digits MLP (batch 32, verbose 0) ran 25%
        slower than the same fit with a do-nothing synchronous batch hook, on
        JAX (and 8% on PyTorch); with 10 ms steps the two were equal. Read by
        Keras once per `fit`.
        """
        return not computes_on_cpu()

    def __init__(self, log_dir=None, update_freq=50, stop_on_nan=False, verbose=1):
        super().__init__(log_dir=log_dir, verbose=verbose)
        if update_freq != "epoch":
            try:
                freq = operator.index(update_freq)
            except TypeError:
                freq = 0
            if isinstance(update_freq, bool) or freq < 1:
                raise ValueError(
                    "Expected `update_freq` to be a positive integer (steps) or "
                    f"'epoch'. Received: update_freq={update_freq!r}"
                )
            update_freq = freq
        if not isinstance(stop_on_nan, bool):
            raise TypeError(
                "Expected `stop_on_nan` to be a bool. "
                f"Received: stop_on_nan={stop_on_nan!r}"
            )
        self.update_freq = update_freq
        self.stop_on_nan = stop_on_nan
        self._lock = threading.Lock()
        self.initial_loss = None
        self.history: dict[str, list] = {}  # per global epoch, `None` where missing
        self.epochs_seen = 0
        self.validation_examples = None  # of the latest validation, if known
        self._judged_epochs = 0
        self._global_epoch = -1
        self._nan_seen = False
        self._steps_per_execution = 1
        self._steps = None
        self._epoch_start_step = 0
        self._means = {}
        # The epoch's recovered batch losses: those computed, as steps and
        # losses side by side (floats and ints: no objects for Python's
        # garbage collector to count), and runs of running means whose losses
        # are computed only when the curve rules read them (they often skip an
        # epoch of short steps).
        self._settled_steps = deque(maxlen=_MAX_POINTS_PER_EPOCH)
        self._settled_losses = deque(maxlen=_MAX_POINTS_PER_EPOCH)
        self._unsettled = []  # [(step of the first, count before, mean before, means)]
        self._unsettled_count = 0
        self._queue = deque()
        # The queue is worked off once a batch loss is due to be written (every
        # `update_freq` batches) or, with per-epoch logging, every
        # `_MAX_QUEUED` batches; each working-off has a fixed cost (a lock, a
        # sort, a flush) that an epoch of short steps feels.
        self._drain_every = (
            _MAX_QUEUED if update_freq == "epoch" else min(update_freq, _MAX_QUEUED)
        )
        self._writer = None
        self._val_fall = _VALIDATION_FALL

    # -- Keras hooks ---------------------------------------------------------
    def begin(self):
        spe = getattr(self._model, "steps_per_execution", 1)
        self._steps_per_execution = max(1, int(spe or 1))
        steps = (self.params or {}).get("steps")
        self._steps = int(steps) if steps else None
        # Created here, on the main thread: the batch hook runs in worker threads.
        self._writer = self.context.writer("train")
        self._val_fall = _validation_fall(self._model)  # the layers stay put

    def epoch_begin(self, epoch):
        if self._queue:  # usually worked off at the last epoch's end already
            self._drain()
        self._global_epoch = max(int(epoch), self._global_epoch + 1)
        self._epoch_start_step = self.context.step
        with self._lock:
            self._means = {}
            self._settled_steps.clear()
            self._settled_losses.clear()
            self._unsettled, self._unsettled_count = [], 0

    def on_train_batch_begin(self, batch, logs=None):
        # The main thread, between steps: work off what the batch-end hooks
        # queued. Doing it in Keras's worker threads instead, with its file
        # writes, costs far more than the work itself: each blocking call
        # hands the GIL back and forth with the training loop (measured on
        # JAX, digits MLP: 1.20x plain fit against 1.05x).
        if len(self._queue) >= self._drain_every:
            self._drain()

    def on_train_batch_end(self, batch, logs=None):
        # Runs in Keras's worker threads on JAX/PyTorch with an accelerator
        # (possibly out of order), unless a callback without `async_safe`
        # turns that off; on the main thread otherwise. Kept
        # to a microsecond: queue the running mean. The queue is worked off
        # every `update_freq` batches (at most 256) on the main thread: here
        # when this is it, else at the next batch's begin; at once at a
        # non-finite loss when `stop_on_nan` asks to stop there; and at the
        # epoch's end (under a lock, no device work, no shared timers).
        if self.disabled or not logs:
            return
        loss = logs.get("loss")
        if loss is None:
            return
        finite = True
        if self.stop_on_nan:  # must know now: convert (waits for the step)
            try:
                loss = float(loss)
            except (TypeError, ValueError):  # not one number: nothing to watch
                return
            finite = -math.inf < loss < math.inf
        # Otherwise the tensor is queued as it is and converted when the queue
        # is worked off, long computed by then; comparing the tensor here
        # would run tensor ops (~57 µs of CPU a step on JAX).
        self._queue.append((batch, loss))
        if not finite or (
            len(self._queue) >= self._drain_every
            and threading.current_thread() is threading.main_thread()
        ):
            self._drain()

    def _drain(self, flush=True):
        try:
            with self._lock:
                items = []
                while self._queue:
                    items.append(self._queue.popleft())
                items.sort(key=operator.itemgetter(0))
                if not self._take_in_run(items):
                    for batch, loss in items:
                        self._batch_end(int(batch), _number(loss))
            if flush:  # readable at once (a no-op if nothing was written)
                self.context.flush()
        except Exception as error:  # never crash training
            self.guard("batch_end", _reraise, error)

    def epoch_end(self, epoch, logs):
        # Keras has run every batch hook of the epoch by now; `guard` flushes
        # once what this hook writes (one system call fewer an epoch).
        self._drain(flush=False)
        writer = self.context.writer("train")
        val_writer = None
        g = self._global_epoch if self._global_epoch >= 0 else int(epoch)
        train, val = {}, {}
        for name, value in logs.items():
            number = _number(value)
            if number is None:
                continue
            if name.startswith("val_"):
                val[name[4:]] = number
            else:
                train[name] = number
        gaps = {}
        for name, t in train.items():
            if name in val:
                v = val[name]
                gaps[name] = t - v if higher_is_better(name) else v - t
        if writer is not None:
            values = {f"epoch_{n}": v for n, v in train.items()}
            values.update({f"gap/{n}": v for n, v in gaps.items()})
            writer.scalars(values, step=g)  # one event: metrics and gaps
            # epochs elapsed against steps: a straight line within each epoch
            # (each epoch's start is the previous end, written before)
            if self._epoch_start_step == 0:
                writer.scalar("epoch", g, step=0)
            writer.scalar("epoch", g + 1, step=self.context.step)
            if val:
                val_writer = self.context.writer("validation")
                val_writer.scalars({f"epoch_{n}": v for n, v in val.items()}, step=g)
        if val:  # the overfitting rule weighs the gap against its sampling noise
            self.validation_examples = _validation_examples(self._model)
        self._record_history(g, train, val)
        self.epochs_seen += 1
        loss = train.get("loss")
        if loss is not None and not math.isfinite(loss):
            with self._lock:
                self._on_non_finite(loss, self.context.step)
        planned = (self.params or {}).get("epochs")
        last_planned = bool(planned) and int(epoch) + 1 >= int(planned)
        if last_planned or self.context.due(
            _RULES_PART, _RULES_SHARE, first_cost=_RULES_FIRST_COST
        ):
            self._judge_curve()

    def end(self, logs):
        if self._judged_epochs < self.epochs_seen:  # e.g. stopped early
            self._judge_curve()
        score = _accuracy_name(self.history)
        if score is None or self._nan_seen:  # nan weights: no verdict on capacity
            return
        finding = dynamics.underfitting(
            self.history[score],
            self.history.get(f"val_{score}", ()),
            metric=score,
            step=self.context.step,
            epoch=self.context.epoch,
            train_losses=self.history.get("loss", ()),
            val_losses=self.history.get("val_loss", ()),
            dropout_rates=self._dropout_rates(),
        )
        if finding is not None:
            self.context.report(finding)

    def _dropout_rates(self):
        """The model's dropout rates, `()` where they cannot be read."""
        try:
            return mf.dropout_rates(self._model)
        except Exception:  # an unusual model: underfitting judged without them
            return ()

    # -- internals -----------------------------------------------------------
    @property
    def _points(self):
        """The epoch's recovered `(step, loss)` points, in step order (the runs
        taken in so far computed first; call under the lock)."""
        self._settle()
        return list(zip(self._settled_steps, self._settled_losses))

    def _settle(self):
        """Computes the batch losses of the runs taken in so far."""
        for step, count_before, mean_before, means in self._unsettled:
            self._settled_steps.extend(range(step, step + len(means)))
            self._settled_losses.extend(batch_losses(count_before, mean_before, means))
        self._unsettled, self._unsettled_count = [], 0

    def _batch_end(self, batch, loss):
        """Takes in one running mean (called under the lock, in batch order)."""
        if loss is None:
            return
        spe = self._steps_per_execution
        after = batch + 1 if self._steps is None else min(batch + 1, self._steps)
        before = max(batch + 1 - spe, 0)
        start = self._epoch_start_step
        self._keep_step(start + after)
        self._remember_means({after: loss}, after)
        pairs = []
        if before == 0:
            pairs.append((0, 0.0, after, loss))
        elif before in self._means:
            pairs.append((before, self._means[before], after, loss))
        following = (
            after + spe if self._steps is None else min(after + spe, self._steps)
        )
        if following in self._means and following > after:
            pairs.append((after, loss, following, self._means[following]))
        to_write = {}
        for count_before, mean_before, count_after, mean_after in pairs:
            # A running mean stays non-finite for the rest of the epoch once a
            # batch loss is: the first non-finite mean follows a finite one.
            if not math.isfinite(mean_after) and math.isfinite(mean_before):
                self._on_non_finite(mean_after, start + count_after)
            values = self._on_window_loss(
                count_before, mean_before, count_after, mean_after
            )
            if values:
                to_write.setdefault(start + count_after, {}).update(values)
        if self._writer is not None:
            for at, values in to_write.items():  # one event per step
                self._writer.scalars(values, step=at)

    def _take_in_run(self, items):
        """`_batch_end` for a run of consecutive batches at once (the usual case).

        Takes in `items` (sorted `(batch, running mean)`) and returns `True`
        when they are consecutive batches following a known mean, one step an
        execution, with finite losses and no later mean waiting; else takes
        in nothing and returns `False` (the general path then does).
        """
        if len(items) < 2 or self._steps_per_execution != 1:
            return False
        first, last = int(items[0][0]), int(items[-1][0])
        steps = self._steps
        if (
            last - first != len(items) - 1
            or (first and first not in self._means)
            or last + 2 in self._means
            or (steps is not None and last >= steps)
        ):
            return False
        try:
            means = [float(loss) for _, loss in items]
        except (TypeError, ValueError):
            return False
        # A sum of finite means is finite unless it overflows: then each is looked at.
        if not math.isfinite(sum(means)) and not all(map(math.isfinite, means)):
            return False
        mean_before = self._means.get(first, 0.0)
        start = self._epoch_start_step
        # Only the newest mean is looked up later (the next run continues
        # from it; a late batch's neighbours are never inside a run).
        self._remember_means({last + 1: means[-1]}, last + 1)
        self._keep_step(start + last + 1)
        # The epoch's last batch may be smaller: no exact recovery.
        recovered = len(items) if steps is None else min(len(items), steps - 1 - first)
        if recovered <= 0:
            return True
        offset = start + first + 1
        self._unsettled.append((offset, first, mean_before, means[:recovered]))
        self._unsettled_count += recovered
        if self._unsettled_count > _MAX_POINTS_PER_EPOCH:
            self._settle()  # computed now: memory stays bounded
        initial = self.initial_loss is None and first == 0
        if initial:  # the first batch's loss is its running mean
            self.initial_loss = batch_losses(0, 0.0, means[:1])[0]
        freq = self.update_freq
        if freq == "epoch" or self._writer is None:
            return True
        due = range(-offset % freq, recovered, freq)  # steps that are multiples
        if initial and 0 not in due:  # the curve starts at its start
            due = [0, *due]
        for i in due:
            # The same float64 arithmetic as for all of them at once.
            before = means[i - 1] if i else mean_before
            (loss,) = batch_losses(first + i, before, means[i : i + 1])
            self._writer.scalars(self._loss_scalars(loss), step=offset + i)
        return True

    def _keep_step(self, step):
        """Moves the owned context's step to `step` (monotone even when hooks
        run out of order)."""
        if self._owns_context and step > self.context.step:
            self.context.step = step

    def _remember_means(self, means_by_count, newest):
        """Keeps running means by batch count; drops those far behind `newest`."""
        self._means.update(means_by_count)
        if len(self._means) > 256:
            oldest = newest - 64 * self._steps_per_execution
            for old in [k for k in self._means if k < oldest]:
                del self._means[old]

    def _loss_scalars(self, value):
        """The scalars of one recovered loss: itself and its log10."""
        tag = "batch_loss" if self._steps_per_execution == 1 else "window_loss"
        values = {tag: value}
        log10 = log10_or_none(value)
        if log10 is not None:
            values[f"{tag}_log10"] = log10
        return values

    def _on_window_loss(self, count_before, mean_before, count_after, mean_after):
        """Records the recovered loss; returns the scalars to write, if any."""
        if self._steps is not None and count_after >= self._steps:
            return None  # the epoch's last batch may be smaller: no exact recovery
        value = window_mean_loss(count_before, mean_before, count_after, mean_after)
        start = self._epoch_start_step
        step = start + count_after
        initial = self.initial_loss is None and count_before == 0
        if initial:
            self.initial_loss = value
        self._settle()  # in step order
        self._settled_steps.append(step)
        self._settled_losses.append(value)
        freq = self.update_freq
        if freq == "epoch" or (
            not initial
            and (start + count_after) // freq <= (start + count_before) // freq
        ):
            return None
        return self._loss_scalars(value)

    def _on_non_finite(self, loss, step):
        if self._nan_seen:
            return
        self._nan_seen = True
        if self.stop_on_nan and self._model is not None:
            self._model.stop_training = True
        self.context.report(
            dynamics.loss_nan(
                loss, step=step, epoch=self._global_epoch, stopping=self.stop_on_nan
            )
        )
        self.context.flush()

    def _record_history(self, g, train, val):
        names = set(self.history) | set(train) | {f"val_{n}" for n in val}
        for name in names:
            series = self.history.setdefault(name, [])
            series.extend([None] * (self.epochs_seen - len(series)))
            if name.startswith("val_"):
                series.append(val.get(name[4:]))
            else:
                series.append(train.get(name))

    def _judge_curve(self):
        """Runs the curve and gap rules on everything seen so far (timed)."""
        self._judged_epochs = self.epochs_seen
        if self._nan_seen:
            return
        with self.context.timed(_RULES_PART):
            self._judge_epoch()

    def _judge_epoch(self):
        step = self.context.step
        g = self._global_epoch
        with self._lock:
            self._settle()
            steps, losses = list(self._settled_steps), list(self._settled_losses)
        score = _accuracy_name(self.history)
        findings = [
            dynamics.loss_diverging(
                self.history.get("loss", ()),
                self.initial_loss,
                losses[-_RECENT_FOR_DIVERGENCE:],
                step=step,
                epoch=g,
            ),
            dynamics.loss_plateau(
                self.history.get("loss", ()),
                self.initial_loss,
                steps_seen=step,
                step=step,
                epoch=g,
                scores=self.history.get(score, ()) if score else (),
            ),
            dynamics.loss_noisy(
                losses,
                self.initial_loss,
                steps=steps,
                step=step,
                epoch=g,
                batches_per_point=self._steps_per_execution,
            ),
        ]
        findings.append(
            dynamics.overfitting(
                self.history.get("loss", ()),
                self.history.get("val_loss", ()),
                self.history.get(score, ()) if score else (),
                self.history.get(f"val_{score}", ()) if score else (),
                metric=score or "accuracy",
                step=step,
                epoch=g,
                val_examples=self.validation_examples,
                chance=_chance_accuracy(self._model),
                val_fall=self._val_fall,
            )
        )
        for finding in findings:
            if finding is not None:
                self.context.report(finding)


def _reraise(error):
    raise error
