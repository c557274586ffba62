"""`SanityCheck`: the pre-training sanity checks, run when `fit` starts."""

from __future__ import annotations

import keras

from trainwatch.callbacks.base import Monitor, steps_trained
from trainwatch.sanity import CHECKS, sanity_check, validate_options

TEXT_TAG = "sanity/report"


class SanityCheck(Monitor):
    """Runs `trainwatch.sanity_check` on a batch of data when `fit` starts.

    The checks run at the first epoch's begin, before any step; a run that
    resumes at a later epoch (`initial_epoch`) or a model that has trained
    already skips them with a note.

    Checks the initial loss against its expected value (regularization off),
    that stronger regularizers raise the loss, and that a copy of the model
    can overfit ~20 examples (where the loss rose at the model's learning rate
    and falls at a lower one, the finding is `loss_diverging`: a rate too
    high). The user's model, optimizer and random state are untouched: `fit`
    continues exactly as it would without this callback. The report goes to
    TensorBoard's Text tab (tag `sanity/report`) and its findings to the
    run's findings; `self.result` keeps the `SanityReport`.

    Args:
        log_dir: Where to write TensorBoard logs, or `None` for no logs.
            Defaults to `None`.
        data: `(x, y)`: training examples to check with (the first
            `batch_size` are used, the first `subset_size` overfitted).
            `(x, y, sample_weight)` is taken too; the checks are unweighted
            (an untrained model's loss is judged per example). Required.
        checks: Which checks to run, from `("initial_loss", "regularization",
            "overfit")`. Defaults to all.
        verbose: 0 silent, 1 print progress, the report and new findings.
            Defaults to 1.
        **kwargs: Passed to `trainwatch.sanity_check` (`batch_size`,
            `subset_size`, `overfit_steps`, `overfit_ratio`,
            `learning_rate_boost`, `max_seconds`, `rtol`,
            `regularization_factor`).

    Raises:
        ValueError: `data` is not an `(x, y)` pair of equal length, or an
            unknown check or keyword is given.

    Example:

    >>> model.fit(x, y, epochs=5, callbacks=[
    ...     trainwatch.SanityCheck("runs/exp1", data=(x[:256], y[:256]))])
    ... # doctest: +SKIP
    """

    def __init__(self, log_dir=None, data=None, checks=CHECKS, verbose=1, **kwargs):
        super().__init__(log_dir=log_dir, verbose=verbose)
        if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
            raise ValueError(
                "Expected data=(x, y) or (x, y, sample_weight): training inputs "
                f"and labels to check with. Received: data={_describe(data)}"
            )
        data = tuple(data)[:2]
        # y may be None for a model that computes its own loss; whether the
        # model needs labels is checked against the model at train begin.
        lengths = [
            len(keras.tree.flatten(part)[0]) for part in data if part is not None
        ]
        if lengths[0] < 1 or len(set(lengths)) > 1:
            received = ", ".join(
                f"len({name})={n}" for name, n in zip(("x", "y"), lengths)
            )
            raise ValueError(
                "Expected x and y in `data` with the same number of examples, at "
                f"least one. Received: {received}"
            )
        # Unknown checks or options, and values out of range, fail here.
        validate_options(checks, **kwargs)
        self.data = tuple(data)
        self.checks = tuple(checks)
        self.options = dict(kwargs)
        self.result = None
        self._due = False  # the checks wait for this fit's first epoch begin

    def build_batch(self):
        return self.data

    def begin(self):
        # Run at this fit's first epoch begin, right after: only there does
        # Keras say which epoch the run starts at (`initial_epoch`).
        self._due = True

    def epoch_begin(self, epoch):
        if self._due:
            self._due = False
            self.guard("sanity", self._run_checks, int(epoch))

    def _run_checks(self, first_epoch):
        trained = steps_trained(self._model)
        if trained or first_epoch > 0:
            # A second `fit`, or a resumed run (weights from `load_weights`
            # leave the optimizer at step 0, but `initial_epoch` is > 0): the
            # checks are about an untrained model (its initial loss, whether
            # it can start learning), and a trained one would fail them.
            self.result = None
            done = (
                f"has already trained {trained} steps"
                if trained
                else f"resumes at epoch {first_epoch} (`initial_epoch`)"
            )
            note = (
                f"Skipped: the run {done}; these checks are about an untrained "
                "model. Call `trainwatch.sanity_check` on a fresh model to run "
                "them."
            )
            if self._verbose:
                print(f"[trainwatch] sanity checks: {note}")
            writer = self.context.writer("train")
            if writer is not None:
                writer.text(TEXT_TAG, note, self.context.step)
            return
        x, y = self.data
        self.result = sanity_check(
            self.model,
            x,
            y,
            checks=self.checks,
            verbose=self._verbose,
            **self.options,
        )
        writer = self.context.writer("train")
        if writer is not None:
            writer.text(TEXT_TAG, self.result.to_markdown(), self.context.step)
            writer.flush()
        for finding in self.result.findings:
            self.report_finding(finding)


def _describe(data):
    if isinstance(data, (tuple, list)):
        return f"{type(data).__name__} of length {len(data)}"
    return type(data).__name__
