"""Reads a trainwatch log directory back: findings and a short summary.

This is what `trainwatch report LOGDIR` prints. It works on a finished run and
on one still being written (it reads whatever has been flushed).
"""

from __future__ import annotations

import dataclasses
import math
import os

from trainwatch.findings import FINDINGS_FILENAME, Finding, load_findings

_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


class NoTrainwatchLogs(ValueError):
    """The directory holds no trainwatch logs."""


@dataclasses.dataclass
class RunReport:
    """What a log directory says about a training run.

    Attributes:
        log_dir: The directory read.
        findings: Every finding, errors first.
        final: Last value of each per-epoch scalar, by run and tag
            (e.g. `{"train": {"epoch_loss": 0.21}, "validation": {...}}`).
        update_ratios: Latest log10 update-to-parameter ratio by variable.
        gradient_checks: Latest log10 relative error by variable.
    """

    log_dir: str
    findings: list
    final: dict
    update_ratios: dict
    gradient_checks: dict

    def to_json_dict(self) -> dict:
        """The `--json` form: `{"findings": [...], "summary": {...}}`.

        Non-finite numbers (a loss that became NaN, a relative error of 0 as
        log10) are `null`: JSON has no NaN or Infinity, and `json.dumps`
        would write tokens that strict parsers (`jq`, JavaScript) reject.
        """
        return _finite_or_null(
            {
                "findings": [f.to_dict() for f in self.findings],
                "summary": {
                    "log_dir": self.log_dir,
                    "final": self.final,
                    "update_ratios_log10": self.update_ratios,
                    "gradient_check_log10_relative_error": self.gradient_checks,
                },
            }
        )

    def __str__(self) -> str:
        lines = [f"trainwatch report: {self.log_dir}", ""]
        train = self.final.get("train", {})
        validation = self.final.get("validation", {})
        if train or validation:
            lines.append("Final epoch values:")
            for tag in sorted(set(train) | set(validation)):
                if not tag.startswith("epoch_"):
                    continue
                t = _fmt(train.get(tag))
                v = _fmt(validation.get(tag))
                lines.append(f"  {tag[6:]:<32} train {t:>10}   validation {v:>10}")
            lines.append("")
        if self.update_ratios:
            lines.append("Update/parameter ratio (log10, healthy near -3):")
            for name, value in self.update_ratios.items():
                lines.append(f"  {name:<48} {value:7.2f}")
            lines.append("")
        if self.gradient_checks:
            lines.append(
                "Gradient check (log10 relative error; good at -7 or below, "
                "a wrong gradient is a finding):"
            )
            for name, value in self.gradient_checks.items():
                lines.append(f"  {name:<48} {value:7.2f}")
            lines.append("")
        if not self.findings:
            lines.append("No findings: nothing looks wrong.")
        else:
            counts = {s: 0 for s in _SEVERITY_ORDER}
            for f in self.findings:
                counts[f.severity] += 1
            lines.append(
                f"Findings: {counts['error']} error(s), {counts['warning']} "
                f"warning(s), {counts['info']} note(s)"
            )
            for f in self.findings:
                where = f" [{f.where}]" if f.where else ""
                when = f" at step {f.step}" if f.step is not None else ""
                lines.append(f"- {f.severity.upper()} {f.code}{where}{when}")
                lines.append(f"    {f.message}")
                lines.append(f"    Try: {f.advice}")
        return "\n".join(lines)


def _finite_or_null(value):
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# Tags only trainwatch writes. Keras's own `TensorBoard` callback writes
# `epoch_<metric>`, `batch_<metric>`, `evaluation_<metric>_vs_iterations` and
# `<weight path>/histogram`: a directory with only those is no trainwatch run.
_TRAINWATCH_TAG_PREFIXES = (
    "trainwatch/",
    "update_ratio",
    "gradcheck",
    "activation",
    "weights/",
    "weight_gradients/",
    "gradient_norm/",
    "dead_fraction/",
    "saturated_fraction/",
    "sanity",
    "init/",
    "inputs/",
    "first_layer/",
    "gap/",
)


def _is_trainwatch_tag(tag) -> bool:
    return (
        tag.startswith(_TRAINWATCH_TAG_PREFIXES)
        or tag == "epoch"
        or tag.endswith("_loss_log10")
    )


def _fmt(value) -> str:
    if value is None:
        return "-"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4f}"
    return f"{value:.3e}"


def _find_findings_files(log_dir):
    found = []
    for root, _, files in os.walk(log_dir):
        if FINDINGS_FILENAME in files:
            found.append(os.path.join(root, FINDINGS_FILENAME))
    return sorted(found)


def _latest(events):
    return events[-1].value if events else None


def read_report(log_dir: str) -> RunReport:
    """Reads findings and summary scalars from a trainwatch log directory.

    Args:
        log_dir: The directory given to `TrainWatch` (or any monitor).

    Returns:
        A `RunReport`.

    Raises:
        NoTrainwatchLogs: the directory does not exist or holds neither a
            findings file nor trainwatch event files.

    Example:

    >>> report = read_report("runs/digits")  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    """
    if os.path.exists(log_dir) and not os.path.isdir(log_dir):
        raise NoTrainwatchLogs(
            f"{log_dir!r} is a file, not a directory. Pass the `log_dir` you gave "
            f"to trainwatch.TrainWatch. Received: log_dir={log_dir!r}"
        )
    if not os.path.isdir(log_dir):
        raise NoTrainwatchLogs(
            f"No such directory: {log_dir!r}. Pass the `log_dir` you gave to "
            f"trainwatch.TrainWatch. Received: log_dir={log_dir!r}"
        )
    findings = []
    findings_files = _find_findings_files(log_dir)
    for path in findings_files:
        findings.extend(load_findings(path))
    from trainwatch.tensorboard import read_events

    runs = read_events(log_dir)
    final, update_ratios, gradient_checks = {}, {}, {}
    has_trainwatch_tags = False
    for run_name, run in runs.items():
        run_key = os.path.basename(run_name) or run_name
        for tag, events in run.scalars.items():
            value = _latest(events)
            if value is None:
                continue
            if tag.startswith("update_ratio/"):
                update_ratios[tag[len("update_ratio/") :]] = value
            elif tag.startswith("gradcheck/"):
                gradient_checks[tag[len("gradcheck/") :]] = value
            elif tag.startswith("epoch_"):
                final.setdefault(run_key, {})[tag] = value
        if any(_is_trainwatch_tag(tag) for tag in run.tags()):
            has_trainwatch_tags = True
    if not findings_files and not has_trainwatch_tags:
        if runs:
            raise NoTrainwatchLogs(
                f"{log_dir!r} holds TensorBoard logs but none written by trainwatch "
                f"(no {FINDINGS_FILENAME} and no trainwatch tags; Keras's own "
                "`TensorBoard` callback writes only `epoch_*`, `batch_*` and weight "
                "histograms). Add `trainwatch.TrainWatch(log_dir)` to the callbacks "
                f"of `fit` and report on its log_dir. Received: log_dir={log_dir!r}"
            )
        raise NoTrainwatchLogs(
            f"{log_dir!r} holds no trainwatch logs (no {FINDINGS_FILENAME} and no "
            "trainwatch event files). Train with `trainwatch.TrainWatch(log_dir)` "
            f"first. Received: log_dir={log_dir!r}"
        )
    findings = _dedupe(findings)
    findings.sort(key=lambda f: (_SEVERITY_ORDER[f.severity], f.step or 0))
    return RunReport(
        log_dir,
        findings,
        final,
        {k: v for k, v in sorted(update_ratios.items()) if math.isfinite(v)},
        dict(sorted(gradient_checks.items())),
    )


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen, unique = set(), []
    for f in findings:
        key = (f.code, f.where, f.step, f.message)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique
