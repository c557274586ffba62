"""The time budget of `RunContext`: when heavy probes may run again."""

import pytest

from trainwatch.callbacks import base
from trainwatch.callbacks.base import RunContext


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(base.time, "perf_counter", fake)
    return fake


def _spend(context, clock, part, seconds):
    with context.timed(part):
        clock.now += seconds


@pytest.mark.parametrize(
    "budget, trained, spent, affordable",
    [
        # At 5%, heavy probes fill 3% (2% of training time is left to the
        # always-on parts and to costs no timer sees).
        (0.05, 100.0, 2.4, True),  # 2.4 + 0.5 <= 3% of 100.5
        (0.05, 100.0, 2.6, False),  # within 5%, but past the heavy share
        # A small budget: heavy probes get half of it.
        (0.02, 100.0, 0.4, True),
        (0.02, 100.0, 0.6, False),
        # A budget of 1: all but 2%.
        (1.0, 10.0, 8.0, True),
    ],
)
def test_heavy_probes_leave_part_of_the_budget_free(
    clock, budget, trained, spent, affordable
):
    context = RunContext(None, verbose=0, budget=budget)
    context.start_training()
    assert context.can_afford("Probe.probe")  # never ran: always early
    _spend(context, clock, "Probe.probe", 0.5)
    _spend(context, clock, "Other.work", spent - 0.5)
    clock.now += trained - spent
    assert context.training_seconds() == pytest.approx(trained)
    assert context.can_afford("Probe.probe") is affordable


def test_due_keeps_a_part_within_its_own_share(clock):
    context = RunContext(None, verbose=0)
    context.start_training()
    assert context.due("Rules.rules", 0.01)  # never ran
    _spend(context, clock, "Rules.rules", 0.01)
    clock.now += 0.5
    assert not context.due("Rules.rules", 0.01)  # 0.01 s > 1% of 0.5 s
    clock.now += 0.6
    assert context.due("Rules.rules", 0.01)  # 0.01 s <= 1% of 1.1 s


def test_monitors_sharing_a_log_dir_write_one_complete_findings_table(tmp_path):
    from trainwatch.findings import Finding
    from trainwatch.tensorboard import read_events

    # Standalone monitors each keep a context; TensorBoard keeps one text
    # event per step and tag, so each table must hold the other's findings.
    curve, ratios = RunContext(tmp_path, verbose=0), RunContext(tmp_path, verbose=0)
    elsewhere = RunContext(tmp_path / "other", verbose=0)
    elsewhere.report(Finding("loss_noisy", "warning", "Noisy.", "Larger batches."))
    curve.report(Finding("loss_plateau", "warning", "Flat.", "Raise the lr."))
    ratios.report(Finding("update_ratio_low", "warning", "Small.", "Raise the lr."))
    table = read_events(str(tmp_path))["train"].texts["trainwatch/findings"][-1].text
    assert "update_ratio_low" in table and "loss_plateau" in table
    assert "loss_noisy" not in table  # another run directory's
    assert table.index("update_ratio_low") < table.index("loss_plateau")  # own first
    assert len(curve.findings) == len(ratios.findings) == 1  # each keeps its own
