"""Rule: another writer appends to trainwatch's run directories.

While TensorBoard reloads it reads only the newest event file of each run
directory (unless started with `--reload_multifile=true`). When Keras's own
`TensorBoard` callback is given trainwatch's `log_dir`, both append to
`train/` and `validation/` at once, and whichever file is older stops being
read: with Keras's callback, trainwatch's update ratios, gradient checks,
histograms and findings table do not appear until TensorBoard is restarted
(nothing is lost: a restarted TensorBoard and `trainwatch report` read every
file). The model is not at fault; the set-up of the logs is.

Pure function: file names in, one `Finding` or `None` out.

Example:

>>> shared_event_files({"train": ["events.out.tfevents.1.host.2.v2"]}).code
'event_files_shared'
>>> shared_event_files({"train": [], "validation": []}) is None
True
"""

from __future__ import annotations

from trainwatch.findings import Finding

__all__ = ["shared_event_files"]

ADVICE = (
    "Give the other writer a directory of its own, e.g. "
    "`keras.callbacks.TensorBoard(log_dir + '/keras')` beside "
    "`TrainWatch(log_dir)`: TensorBoard shows both under one `--logdir`. Or "
    "start TensorBoard with `--reload_multifile=true`. Nothing was lost: "
    "`trainwatch report` and a restarted TensorBoard read every file."
)


def shared_event_files(files_by_run) -> Finding | None:
    """`event_files_shared` when other writers append to trainwatch's runs.

    Args:
        files_by_run: `{run directory name: [event file names]}` of the files
            another writer changed during this run, e.g. from
            `tensorboard.writer.event_files_of_other_writers`.

    Returns:
        An `event_files_shared` warning naming the runs and files, or `None`
        when no run has such files.
    """
    shared = {run: sorted(names) for run, names in files_by_run.items() if names}
    if not shared:
        return None
    runs = sorted(shared)
    listed = "; ".join(f"{run}/: {', '.join(shared[run])}" for run in runs)
    return Finding(
        "event_files_shared",
        "warning",
        f"Another writer appends to the same run directories as trainwatch "
        f"({listed}); Keras's `TensorBoard` callback given the same `log_dir` "
        "does. While it reloads, TensorBoard reads only the newest event file "
        "of each run, so the other file's new points (trainwatch's update "
        "ratios, gradient checks, histograms and findings, or Keras's own) "
        "stay unseen until TensorBoard restarts, and metrics both write "
        "(epoch_loss) appear twice per step.",
        ADVICE,
        where=", ".join(f"{run}/" for run in runs),
    )
