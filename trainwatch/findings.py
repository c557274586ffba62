"""Findings: what trainwatch concluded, in plain words, with advice.

A `Finding` is the unit every monitor reports. Findings are gathered by a
`FindingLog`, which removes repeats, keeps them in order and saves them as the
JSON document that `trainwatch report --json` prints.

Codes are a contract (see the design brief); add new ones, never rename.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Iterable

SEVERITIES = ("error", "warning", "info")

CODES = (
    "gradient_wrong",
    "gradient_suspicious",
    "gradient_check_imprecise",
    "gradient_missing",
    "initial_loss_unexpected",
    "regularization_not_increasing_loss",
    "regularization_too_strong",
    "cannot_overfit_small_subset",
    "loss_nan",
    "loss_diverging",
    "loss_plateau",
    "update_ratio_high",
    "update_ratio_low",
    "dead_units",
    "saturated_units",
    "vanishing_gradients",
    "exploding_gradients",
    "overfitting",
    "underfitting",
    "inputs_not_normalized",
    "inputs_constant",
    "inputs_not_finite",
    "targets_not_normalized",
    "targets_out_of_range",
    "targets_are_class_ids",
    "labels_single_class",
    "softmax_single_unit",
    "init_scale_unusual",
    "loss_noisy",
    "weights_nan",
    "weights_not_updated",
    "event_files_shared",
    "monitor_failed",
)

FINDINGS_FILENAME = "trainwatch_findings.json"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One conclusion about the training run.

    Args:
        code: A stable identifier from `CODES`, e.g. `"loss_nan"`.
        severity: `"error"`, `"warning"` or `"info"`.
        message: What was seen, with the numbers.
        advice: What to try.
        step: Global training step (batches seen) when it was raised, or `None`.
        epoch: Epoch (0-based) when it was raised, or `None`.
        where: Layer or variable path it concerns, or `None` for the whole model.

    Example:

    >>> f = Finding("loss_nan", "error", "Loss became nan at step 12.",
    ...             "Lower the learning rate.", step=12, epoch=0)
    >>> f.to_dict()["code"]
    'loss_nan'
    """

    code: str
    severity: str
    message: str
    advice: str
    step: int | None = None
    epoch: int | None = None
    where: str | None = None

    def __post_init__(self):
        if self.code not in CODES:
            raise ValueError(
                f"Unknown finding code. Expected one of {CODES}. "
                f"Received: code={self.code!r}"
            )
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"Expected severity in {SEVERITIES}. "
                f"Received: severity={self.severity!r}"
            )

    def to_dict(self) -> dict:
        """Returns the JSON-ready form used by `trainwatch report --json`."""
        return {
            "code": self.code,
            "severity": self.severity,
            "step": None if self.step is None else int(self.step),
            "epoch": None if self.epoch is None else int(self.epoch),
            "where": self.where,
            "message": self.message,
            "advice": self.advice,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Finding:
        """Rebuilds a finding from `to_dict()` output."""
        return cls(
            code=data["code"],
            severity=data["severity"],
            message=data["message"],
            advice=data["advice"],
            step=data.get("step"),
            epoch=data.get("epoch"),
            where=data.get("where"),
        )

    def __str__(self) -> str:
        place = f" [{self.where}]" if self.where else ""
        when = f" step {self.step}" if self.step is not None else ""
        return (
            f"{self.severity.upper()} {self.code}{place}{when}: {self.message} "
            f"Advice: {self.advice}"
        )


class FindingLog:
    """An ordered, de-duplicated collection of findings.

    The same `(code, where)` pair is reported once: later repeats are dropped,
    so a condition that persists for a thousand steps is one finding.

    Args:
        path: File to save the findings to as JSON after every addition, or
            `None` to keep them in memory only. The file may be shared (two
            runs into one log dir): findings already in it are kept, ours are
            added. Defaults to `None`.

    Example:

    >>> log = FindingLog()
    >>> log.add(Finding("loss_plateau", "warning", "Flat.", "Raise lr."))
    True
    >>> log.add(Finding("loss_plateau", "warning", "Flat again.", "Raise lr."))
    False
    >>> len(log)
    1
    """

    def __init__(self, path: str | None = None):
        self.path = path
        self._findings: list[Finding] = []
        self._keys: set[tuple[str, str | None]] = set()

    def add(self, finding: Finding) -> bool:
        """Adds a finding unless its `(code, where)` was already reported.

        Returns:
            `True` if the finding was new and kept.
        """
        key = (finding.code, finding.where)
        if key in self._keys:
            return False
        self._keys.add(key)
        self._findings.append(finding)
        if self.path is not None:
            self.save()
        return True

    def extend(self, findings: Iterable[Finding]) -> list[Finding]:
        """Adds several findings; returns those that were new."""
        return [f for f in findings if self.add(f)]

    def __iter__(self):
        return iter(list(self._findings))

    def __len__(self) -> int:
        return len(self._findings)

    def to_json_dict(self) -> dict:
        """Returns `{"findings": [...]}` as `trainwatch report --json` prints."""
        return {"findings": [f.to_dict() for f in self._findings]}

    def save(self, path: str | None = None) -> None:
        """Writes the findings as JSON (atomically: temp file, then rename).

        Saving to the log's own `path` keeps the findings already in that file
        (another run into the same log dir), so no run's findings are lost.
        """
        path = path or self.path
        if path is None:
            raise ValueError("No path to save findings to. Received: path=None")
        data = self.to_json_dict()
        saved_text = None
        if path == self.path:
            ours = data["findings"]
            saved_text = _read_text(path)
            saved = _finding_dicts(saved_text)
            data["findings"] = [d for d in saved if d not in ours] + ours
        text = json.dumps(data, indent=2)
        if text == saved_text:
            return  # the file says it all already (e.g. a second monitor's save)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"  # per thread too
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)


def _read_text(path: str) -> str | None:
    """A file's text, or `None` if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, ValueError):
        return None


def _finding_dicts(text: str | None) -> list[dict]:
    """The finding dicts in a findings file's text; `[]` if there is none."""
    if text is None:
        return []
    try:
        findings = json.loads(text).get("findings", [])
        return [Finding.from_dict(d).to_dict() for d in findings]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


def load_findings(path: str) -> list[Finding]:
    """Reads findings saved by `FindingLog.save`."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return [Finding.from_dict(d) for d in data.get("findings", [])]
