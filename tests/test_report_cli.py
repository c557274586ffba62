"""`trainwatch report` on a real (tiny) training run: text, `--json`, exit codes."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import trainwatch
from trainwatch.cli import main
from trainwatch.findings import CODES, FINDINGS_FILENAME, SEVERITIES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A log dir written by a two-epoch TrainWatch run of a tiny classifier."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    log_dir = str(tmp_path_factory.mktemp("report") / "run")
    watch = trainwatch.TrainWatch(
        log_dir,
        probe=(x[:32], y[:32]),
        verbose=0,
        gradient_check=False,  # the slow parts are tested elsewhere
        sanity_check=False,
    )
    model.fit(
        x[:64],
        y[:64],
        validation_data=(x[64:], y[64:]),
        epochs=2,
        batch_size=16,
        callbacks=[watch],
        verbose=0,
    )
    keras.backend.clear_session()
    return log_dir


def test_text_report_names_the_run_and_the_final_values(run_dir, capsys):
    assert main(["report", run_dir]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"trainwatch report: {run_dir}")
    assert "Final epoch values:" in out
    assert "loss" in out and "accuracy" in out
    # Either the findings or the all-clear, never nothing.
    assert "Findings:" in out or "No findings" in out


def test_json_report_follows_the_contract(run_dir, capsys):
    assert main(["report", run_dir, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"findings", "summary"}
    for finding in data["findings"]:
        assert set(finding) == {
            "code",
            "severity",
            "step",
            "epoch",
            "where",
            "message",
            "advice",
        }
        assert finding["code"] in CODES
        assert finding["severity"] in SEVERITIES
    summary = data["summary"]
    assert summary["log_dir"] == run_dir
    assert np.isfinite(summary["final"]["train"]["epoch_loss"])
    assert np.isfinite(summary["final"]["validation"]["epoch_loss"])
    # The JSON report holds what the findings file holds.
    with open(os.path.join(run_dir, FINDINGS_FILENAME), encoding="utf-8") as f:
        saved = json.load(f)["findings"]
    key = lambda f: (f["code"], f["where"], f["step"])  # noqa: E731
    assert sorted(map(key, data["findings"])) == sorted(map(key, saved))


def test_fail_on_uses_the_findings(run_dir, capsys):
    status = main(["report", run_dir, "--fail-on", "warning"])
    data = json.loads(_run_cli(["report", run_dir, "--json"]).stdout)
    severities = {f["severity"] for f in data["findings"]}
    assert status == (1 if severities & {"error", "warning"} else 0)


def test_dir_without_logs_is_a_clear_message_and_exit_code_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a log")
    assert main(["report", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "holds no trainwatch logs" in captured.err
    assert str(tmp_path) in captured.err


def test_missing_dir_is_exit_code_2(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    assert main(["report", missing]) == 2
    assert "No such directory" in capsys.readouterr().err


def _run_cli(args):
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run(
        [sys.executable, "-m", "trainwatch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_python_dash_m_trainwatch_report(run_dir, tmp_path):
    result = _run_cli(["report", run_dir, "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["log_dir"] == run_dir
    result = _run_cli(["report", str(tmp_path)])
    assert result.returncode == 2
    assert "holds no trainwatch logs" in result.stderr
    result = _run_cli([])
    assert result.returncode == 2  # argparse: a command is required


def test_keras_tensorboard_logs_alone_are_no_trainwatch_run(tmp_path, capsys):
    # What Keras's own `TensorBoard` callback writes: epoch and batch scalars
    # and weight histograms. "nothing looks wrong" would be a false all-clear.
    from trainwatch.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "train"))
    writer.scalar("epoch_loss", 0.5, 1)
    writer.scalar("batch_loss", 0.5, 1)
    writer.histogram("sequential/dense/kernel/histogram", np.ones(4), 1)
    writer.close()
    assert main(["report", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "none written by trainwatch" in captured.err
    assert "TrainWatch" in captured.err


def test_a_file_is_not_called_a_missing_directory(tmp_path, capsys):
    path = tmp_path / "events.txt"
    path.write_text("x")
    assert main(["report", str(path)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_json_has_no_nan_or_infinity(tmp_path, capsys):
    # A run whose loss became NaN: strict JSON parsers reject NaN/Infinity.
    from trainwatch.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "train"))
    writer.scalar("epoch_loss", float("nan"), 1)
    writer.scalar("gradcheck/dense/bias", float("-inf"), 1)
    writer.text("trainwatch/findings", "none", 1)
    writer.close()
    assert main(["report", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out

    def reject(token):
        raise ValueError(f"invalid JSON token {token}")

    summary = json.loads(out, parse_constant=reject)["summary"]
    assert summary["final"]["train"]["epoch_loss"] is None
    assert summary["gradient_check_log10_relative_error"]["dense/bias"] is None


def test_report_piped_into_a_reader_that_stops_early(run_dir):
    # `trainwatch report DIR --json | head -1`: the reader is gone before the
    # report is written. No BrokenPipeError traceback.
    env = {**os.environ, "PYTHONPATH": REPO}
    process = subprocess.Popen(
        [sys.executable, "-m", "trainwatch", "report", run_dir, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    process.stdout.close()  # closed before the child writes: EPIPE for sure
    _, stderr = process.communicate(timeout=120)
    assert b"Traceback" not in stderr, stderr.decode()
    assert b"BrokenPipe" not in stderr
