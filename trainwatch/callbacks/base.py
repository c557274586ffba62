"""What every trainwatch callback shares: the run context and the `Monitor` base.

A `RunContext` holds what the monitors of one training run share: the log
directory and its TensorBoard writers (one per run, `train` and `validation`,
the layout of Keras's own TensorBoard callback), the findings, the global step
and the time spent in trainwatch. `TrainWatch` makes one and hands it to all
its parts; a monitor used on its own makes its own.

`Monitor` is the base of the callbacks. It keeps the global step (so a second
`fit` call or a resumed run continues where the last one stopped), isolates
failures (a monitor that raises becomes a `monitor_failed` finding, never a
crashed training run) and flushes what was written at every epoch end, at train
end and when the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import time
import traceback
import warnings
import weakref

import keras

from trainwatch.backends.model_functions import ModelNotReady, build_on_batch
from trainwatch.findings import FINDINGS_FILENAME, Finding, FindingLog

_MAX_FAILURES = 3
# Inside TrainWatch, heavy probes also run mid-epoch once this much training
# time has passed since they last ran (within the budget): long epochs must
# not leave them blind until the epoch ends. Shorter epochs are unaffected.
MID_EPOCH_SECONDS = 30.0
# Heavy probes leave this much of the training time unfilled by their own
# timed cost (or half the budget, if that is less): it is for the parts that
# always run (loss curve, update ratios) and for what no timer of ours sees:
# the training loop slowed by our work on a busy machine, device syncs.
# Measured on JAX (2-core CPU): the timed share was about half of the real
# slowdown.
RESERVED_TIME_SHARE = 0.02
_open_contexts: weakref.WeakSet = weakref.WeakSet()


def _flush_all_at_exit():
    for context in list(_open_contexts):
        with contextlib.suppress(Exception):
            context.flush()


atexit.register(_flush_all_at_exit)


def validate_log_dir(log_dir):
    """Checks that `log_dir` is `None` or a directory we can create and write.

    Raises:
        TypeError: `log_dir` is not a string or path.
        ValueError: the directory cannot be created or written.
    """
    if log_dir is None:
        return None
    if not isinstance(log_dir, (str, os.PathLike)):
        raise TypeError(
            "Expected `log_dir` to be a str or os.PathLike. "
            f"Received: log_dir={log_dir!r}"
        )
    log_dir = os.fspath(log_dir)
    if not log_dir:
        raise ValueError("Expected a non-empty `log_dir`. Received: log_dir=''")
    try:
        os.makedirs(log_dir, exist_ok=True)
        probe = os.path.join(log_dir, f".trainwatch_write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise ValueError(
            f"Cannot write TensorBoard logs to {log_dir!r} ({error.strerror or error})."
            " Choose a directory you can write to. "
            f"Received: log_dir={log_dir!r}"
        ) from error
    return log_dir


class RunContext:
    """State shared by the monitors of one training run.

    Args:
        log_dir: Directory for TensorBoard event files and the findings file,
            or `None` to log nothing (findings are still collected and printed).
        verbose: 0 silent, 1 print each new warning or error finding once.
            Defaults to 1.

    Example:

    >>> context = RunContext(None, verbose=0)
    >>> context.writer("train") is None
    True
    """

    def __init__(self, log_dir=None, verbose=1, budget=0.05):
        self.log_dir = validate_log_dir(log_dir)
        self.verbose = verbose
        if not (isinstance(budget, (int, float)) and 0 < budget <= 1):
            raise ValueError(
                "Expected `budget` (the fraction of training time trainwatch may "
                f"spend) in (0, 1]. Received: budget={budget!r}"
            )
        self.budget = float(budget)
        self.train_started_at = None
        self._fit_started_wall_time = time.time()
        self._epochs_checked_for_writers = 0
        self._seconds_before_this_fit = 0.0
        path = os.path.join(self.log_dir, FINDINGS_FILENAME) if self.log_dir else None
        self.findings = FindingLog(path)
        self._writers = {}
        self.step = 0  # global training step: batches seen in all fit calls
        self.epoch = 0
        self.seconds_in_trainwatch = 0.0
        self.seconds_by_part: dict[str, float] = {}
        self._last_cost: dict[str, float] = {}
        self.first_seconds_by_part: dict[str, float] = {}  # each part's first run
        self._last_done_at: dict[str, float] = {}  # training seconds at its end
        self._timing_depth = 0
        self._published_count = None  # findings written to the log and file
        _open_contexts.add(self)

    def writer(self, run="train"):
        """The TensorBoard writer of a run (`"train"`, `"validation"`), or `None`.

        Writers are created on first use, so no empty event files appear.
        What a hook wrote is handed to the OS when the hook ends (`guard`
        flushes, and so does the loss curve after working off its queue), so
        a `fit` stopped by an exception or Ctrl-C leaves everything logged so
        far readable: Keras calls no `on_train_end` then. Once per hook, not
        once per event: during a JAX `fit` each flush (a system call) hands
        the GIL to Keras's callback threads.
        """
        if self.log_dir is None:
            return None
        if run not in self._writers:
            # One writer (one event file) per directory for all monitors that
            # write there, standalone ones included: TensorBoard follows only
            # a run's newest file while it reloads.
            from trainwatch.tensorboard.writer import shared_writer

            self._writers[run] = shared_writer(os.path.join(self.log_dir, run))
        return self._writers[run]

    def report(self, finding: Finding) -> bool:
        """Records a finding; prints and logs it as text the first time.

        Returns:
            `True` if the finding was new.
        """
        is_new = self.findings.add(finding)
        if not is_new:
            return False
        if self.verbose and finding.severity in ("error", "warning"):
            print(f"[trainwatch] {finding}", file=sys.stderr)
        writer = self.writer("train")
        if writer is not None:
            writer.text("trainwatch/findings", self.findings_table(), self.step)
            writer.flush()
        self._published_count = len(self.findings)  # `add` saved the file
        return True

    def findings_table(self) -> str:
        """The markdown table of this run directory's findings: this context's,
        then those of the other live contexts writing to the same `log_dir`
        (standalone monitors each keep their own), once each.

        TensorBoard keeps one text event per step and tag, so a table of one
        monitor's findings would hide another's written at the same step.

        Example:

        >>> table = RunContext(None, verbose=0).findings_table()
        >>> table.endswith("No findings yet. | |")
        True
        """
        findings = list(self.findings)
        if self.log_dir is not None:
            seen = {(f.code, f.where) for f in findings}
            here = os.path.realpath(self.log_dir)
            for other in list(_open_contexts):
                if other is self or other.log_dir is None:
                    continue
                if os.path.realpath(other.log_dir) != here:
                    continue
                for finding in other.findings:
                    if (finding.code, finding.where) not in seen:
                        seen.add((finding.code, finding.where))
                        findings.append(finding)
        return findings_markdown(findings)

    def publish_findings(self):
        """Writes the findings table and file as they stand, even when empty.

        Called at train end (and at train begin when there are findings), so
        that a clean run says so in the Text tab and leaves a findings file
        for `trainwatch report`. Skipped when nothing changed since the
        findings were last written.
        """
        if self._published_count == len(self.findings):
            return
        self._published_count = len(self.findings)
        writer = self.writer("train")
        if writer is not None:
            writer.text("trainwatch/findings", self.findings_table(), self.step)
            writer.flush()
        if self.findings.path is not None:
            self.findings.save()

    @contextlib.contextmanager
    def timed(self, part: str):
        """Times the block under `part`; nested blocks are not counted twice.

        Only the outermost block adds to `seconds_in_trainwatch`; every block
        records its own time in `seconds_by_part` and as the part's last cost
        (which `can_afford` uses).
        """
        start = time.perf_counter()
        self._timing_depth += 1
        try:
            yield
        finally:
            self._timing_depth -= 1
            elapsed = time.perf_counter() - start
            if self._timing_depth == 0:
                self.seconds_in_trainwatch += elapsed
            self.seconds_by_part[part] = self.seconds_by_part.get(part, 0.0) + elapsed
            self._last_cost[part] = elapsed
            self.first_seconds_by_part.setdefault(part, elapsed)
            self._last_done_at[part] = self.training_seconds()

    def start_training(self):
        """Marks the start of a `fit` call (training time accumulates across calls)."""
        if self.train_started_at is not None:
            self._seconds_before_this_fit += time.perf_counter() - self.train_started_at
        self.train_started_at = time.perf_counter()
        self._fit_started_wall_time = time.time()
        if self._epochs_checked_for_writers > 0:  # not once it was reported
            self._epochs_checked_for_writers = 0

    def training_seconds(self) -> float:
        """Wall time spent in `fit` so far (all calls), trainwatch included."""
        if self.train_started_at is None:
            return self._seconds_before_this_fit
        return (
            self._seconds_before_this_fit + time.perf_counter() - self.train_started_at
        )

    def overhead_fraction(self) -> float:
        """Fraction of training wall time spent in trainwatch so far."""
        total = self.training_seconds()
        return self.seconds_in_trainwatch / total if total > 0 else 0.0

    def can_afford(self, part: str) -> bool:
        """Whether running heavy `part` again keeps trainwatch within its time budget.

        A part that has never run can always run (the first probe comes early);
        after that, it may run when trainwatch's total time plus the part's
        last cost stays within the budget less `RESERVED_TIME_SHARE` (or half
        the budget, if that is more), as a share of the training time. At the
        default budget of 5%, heavy probes fill up to 3%.

        Args:
            part: The name the part is timed under (see `timed`).

        Example:

        >>> context = RunContext(None, verbose=0)
        >>> context.can_afford("GradientCheck.check")  # never ran: early
        True
        """
        last = self._last_cost.get(part)
        if last is None:
            return True
        spent = self.seconds_in_trainwatch + last
        share = max(self.budget - RESERVED_TIME_SHARE, self.budget / 2)
        return spent <= share * (self.training_seconds() + last)

    def due(self, part: str, share: float, first_cost: float = 0.0) -> bool:
        """Whether a recurring, skippable `part` should run now.

        Keeps the part's own cost within `share` of the training time: it runs
        when its last cost is at most `share` of the training time that has
        passed since it last finished. A part that has never run is due once
        `first_cost` (its cost assumed before it ran) would be. Unlike
        `can_afford`, which weighs trainwatch's total against the budget, this
        cannot be starved by the other parts: on long epochs a cheap part runs
        every time, on epochs of a few milliseconds it runs every few epochs.

        Args:
            part: The name the part is timed under (see `timed`).
            share: Fraction of training time the part may take, e.g. `0.005`.
            first_cost: Seconds assumed as its cost before it first ran.
                Defaults to 0 (due at once).

        Example:

        >>> context = RunContext(None, verbose=0)
        >>> context.due("rules", 0.01), context.due("rules", 0.01, first_cost=1.0)
        (True, False)
        """
        last = self._last_cost.get(part, first_cost)
        return last <= share * self.seconds_since(part)

    def seconds_since(self, part: str) -> float:
        """Training seconds since `part` last finished (since training began if never).

        Example:

        >>> RunContext(None, verbose=0).seconds_since("Distributions.probe")
        0.0
        """
        return self.training_seconds() - self._last_done_at.get(part, 0.0)

    def check_other_writers(self, at_epoch_end=True):
        """An `event_files_shared` finding when another writer (Keras's
        `TensorBoard` callback given this `log_dir`) appends to this run's
        directories, or `None`.

        Looked for at the first two epoch ends of each `fit` (the other
        callback may write its first event after ours, in the same epoch end)
        and at its end: a directory listing each, not every epoch.

        Args:
            at_epoch_end: Whether called at an epoch end (counted), not at
                the train end. Defaults to `True`.
        """
        if self.log_dir is None or self._epochs_checked_for_writers < 0:
            return None
        if at_epoch_end:
            if self._epochs_checked_for_writers >= 2:
                return None
            self._epochs_checked_for_writers += 1
        from trainwatch.rules.event_files import shared_event_files
        from trainwatch.tensorboard.writer import event_files_of_other_writers

        runs = sorted(set(self._writers) | {"train", "validation"})
        since = self._fit_started_wall_time
        finding = shared_event_files(
            {
                run: event_files_of_other_writers(
                    os.path.join(self.log_dir, run), since
                )
                for run in runs
            }
        )
        if finding is not None:
            self._epochs_checked_for_writers = -1  # said once per context
        return finding

    def flush(self):
        """Makes everything written so far readable on disk."""
        for writer in self._writers.values():
            writer.flush()

    def close(self):
        """Closes this run's event files (writers shared with other monitors
        in the same directory too: their next write opens a new file)."""
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def findings_markdown(findings) -> str:
    """The findings as a markdown table for TensorBoard's Text tab."""
    rows = [
        "| severity | code | step | where | message | advice |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in findings:
        cells = [f.severity, f.code, "" if f.step is None else str(f.step)]
        cells += [f.where or "", f.message, f.advice]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if len(rows) == 2:
        rows.append("| info | | | | No findings yet. | |")
    return "\n".join(rows)


def steps_trained(model) -> int:
    """Optimizer steps `model` has taken: 0 without an optimizer, or when its
    step count cannot be read."""
    iterations = getattr(getattr(model, "optimizer", None), "iterations", None)
    if iterations is None:
        return 0
    try:
        return int(keras.ops.convert_to_numpy(iterations))
    except Exception:  # not a number we can read: as if untrained
        return 0


class Monitor(keras.callbacks.Callback):
    """Base of trainwatch callbacks: shared context, step keeping, isolation.

    Subclasses implement any of `begin()`, `epoch_end(epoch, logs)`, `end()`
    (and a batch hook if they must), run their work through `self.guard(...)`
    and report findings with `self.report(...)`.

    Args:
        log_dir: Where to write TensorBoard logs, or `None` for no logs.
            Defaults to `None`.
        verbose: 0 silent, 1 print new findings. Defaults to 1.
    """

    def __init__(self, log_dir=None, verbose=1):
        super().__init__()
        self._log_dir = log_dir
        self._verbose = verbose
        # With a log dir, the context (which checks that the directory can be
        # written) is made now: a bad `log_dir` fails at construction, and
        # `fit` does not pay for the check. `TrainWatch` replaces it (`bind`).
        self._context = None if log_dir is None else RunContext(log_dir, verbose)
        self._owns_context = True
        self._failures = 0
        self.disabled = False

    # -- context ---------------------------------------------------------
    @property
    def context(self) -> RunContext:
        if self._context is None:
            self._context = RunContext(self._log_dir, self._verbose)
        return self._context

    def bind(self, context: RunContext):
        """Shares `context` (used by `TrainWatch` to give all parts one log)."""
        self._context = context
        self._owns_context = False
        return self

    def report_finding(self, finding: Finding) -> bool:
        """Reports a `Finding` made elsewhere (a rule, a check) at the current
        step and epoch, as `report` does."""
        return self.report(
            finding.code,
            finding.severity,
            finding.message,
            finding.advice,
            where=finding.where,
        )

    def report(self, code, severity, message, advice, where=None) -> bool:
        """Reports a finding at the current step and epoch."""
        finding = Finding(
            code=code,
            severity=severity,
            message=message,
            advice=advice,
            step=self.context.step,
            epoch=self.context.epoch,
            where=where,
        )
        return self.context.report(finding)

    def guard(self, part, fn, *args, **kwargs):
        """Runs `fn`, timing it, and flushes what it wrote; an exception
        becomes a finding, not a crash.

        After repeated failures the monitor disables itself.
        """
        if self.disabled:
            return None
        try:
            with self.context.timed(f"{type(self).__name__}.{part}"):
                result = fn(*args, **kwargs)
                self.context.flush()  # what the hook wrote: readable now
                return result
        except Exception as error:  # diagnostics must never stop training
            self._failures += 1
            summary = "".join(traceback.format_exception_only(type(error), error))
            if self._failures >= _MAX_FAILURES:
                self.disabled = True
            warnings.warn(
                f"trainwatch {type(self).__name__} failed in {part}: {summary.strip()}",
                RuntimeWarning,
                stacklevel=2,
            )
            advice = (
                "This is a trainwatch problem, not a training problem; please "
                "report it with the model summary. Training continues."
            )
            if isinstance(error, ModelNotReady):  # the model's set-up, said in it
                advice = "Do what the message says. Training continues."
            try:
                self.report(
                    "monitor_failed",
                    "warning",
                    f"{type(self).__name__} failed during {part}: {summary.strip()}"
                    + (" It was switched off." if self.disabled else ""),
                    advice,
                    where=type(self).__name__,
                )
            except Exception:  # e.g. the log dir became unwritable: warned above
                pass
            return None

    # -- step keeping (only the owner of the context moves the step) --------
    def on_train_begin(self, logs=None):
        if self._owns_context:
            self.context.start_training()
            self.context.step = max(self.context.step, steps_trained(self._model))
        model = self._model
        if model is not None and not model.built:  # TensorFlow, no `Input`
            batch = self.build_batch()
            if batch is not None:
                build_on_batch(model, batch)
        self.guard("train_begin", self.begin)
        if self._owns_context and len(self.context.findings):
            # Found before training (or in an earlier fit): readable at once.
            # A clean table waits for the train end (two fewer files to write
            # in the moment `fit` starts).
            self.guard("findings", self.context.publish_findings)

    def on_epoch_begin(self, epoch, logs=None):
        if self._owns_context:
            self.context.epoch = epoch
            self._epoch_start_step = self.context.step
        self.guard("epoch_begin", self.epoch_begin, epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self._owns_context:
            steps = (self.params or {}).get("steps")
            start = getattr(self, "_epoch_start_step", self.context.step)
            if steps and self.context.step < start + steps:
                self.context.step = start + steps
        self.guard("epoch_end", self.epoch_end, epoch, dict(logs or {}))
        if self._owns_context:
            self.guard("event_files", self._report_other_writers, True)
        self.context.flush()

    def on_train_end(self, logs=None):
        self.guard("train_end", self.end, dict(logs or {}))
        if self._owns_context:
            self.guard("event_files", self._report_other_writers, False)
            self.guard("findings", self.context.publish_findings)
        self.context.flush()

    def _report_other_writers(self, at_epoch_end):
        finding = self.context.check_other_writers(at_epoch_end)
        if finding is not None:
            self.report_finding(finding)

    def step_for_batch(self, batch) -> int:
        """Global step after training batch `batch` (0-based within the epoch).

        With `steps_per_execution = s`, Keras names an epoch's last, shorter
        execution by where a full one would end (44 steps, `s = 8`: batch 47),
        so the step is capped at the epoch's length where `fit` knows it.
        """
        if self._owns_context:
            start = getattr(self, "_epoch_start_step", 0)
            done = int(batch) + 1
            steps = (self.params or {}).get("steps")
            if steps:
                done = min(done, int(steps))
            self.context.step = start + done
        return self.context.step

    # -- hooks for subclasses ----------------------------------------------
    def build_batch(self):
        """A training batch to build an unbuilt model on at train begin, or `None`.

        TensorFlow's `fit` builds a model without an `Input` only in its first
        step; monitors that look at the model in `begin` return their data
        here so that it is built first (`build_on_batch`).
        """
        return None

    def begin(self):
        """Called at train begin (guarded)."""

    def epoch_begin(self, epoch):
        """Called at epoch begin (guarded)."""

    def epoch_end(self, epoch, logs):
        """Called at epoch end with a copy of Keras's logs (guarded)."""

    def end(self, logs):
        """Called at train end (guarded)."""
