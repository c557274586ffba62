"""End to end with the real viewer: a TrainWatch run, a TensorBoard server, a browser.

A short training run writes its logs; a real `tensorboard` server (a
subprocess, always killed at teardown) must serve our scalars, histograms,
images and text through its HTTP data API, and a headless Chromium must render
the Time Series dashboard with our scalars on it. Run on the PyTorch backend
only: the files do not depend on the backend, CI runs the suite three times,
and PyTorch's run is the shortest.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest

import trainwatch
from trainwatch.tensorboard import decode_png, read_events

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the end-to-end TensorBoard test runs on the PyTorch backend only "
    "(the event files do not depend on the backend; this keeps CI short)",
)

TENSORBOARD = os.path.join(os.path.dirname(sys.executable), "tensorboard")
CHROMIUM = "/usr/bin/chromium"
START_TIMEOUT_S = 90  # bounded waits: a broken server fails the test, never hangs it
BROWSER_TIMEOUT_S = 120


def train(directory):
    """Logs a two-epoch TrainWatch run of a tiny convolutional classifier."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > 0).astype("int32")
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    watch = trainwatch.TrainWatch(
        directory,
        probe=(x[:32], y[:32]),
        verbose=0,
        # What the viewer shows, without the slow parts (tested elsewhere).
        gradient_check=False,
        sanity_check=False,
        input_init=False,
        update_ratio=False,
    )
    model.fit(
        x[:48],
        y[:48],
        validation_data=(x[48:], y[48:]),
        epochs=2,
        batch_size=16,
        callbacks=[watch],
        verbose=0,
    )
    keras.backend.clear_session()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode("utf-8"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`(url, log_dir)`: a real TensorBoard serving a TrainWatch run's logs.

    The server starts first and loads the files as they are written (it takes
    seconds to start); it is always killed at the end.
    """
    if not os.path.exists(TENSORBOARD):
        pytest.skip(f"no tensorboard executable at {TENSORBOARD}")
    log_dir = tmp_path_factory.mktemp("e2e") / "exp1"
    log_dir.mkdir()
    port = _free_port()
    output = open(log_dir.parent / "tensorboard.log", "wb")
    command = [TENSORBOARD, "--logdir", str(log_dir), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--reload_interval", "1"]
    process = subprocess.Popen(
        command,
        stdout=output,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        start_new_session=True,  # its data server child goes with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        train(str(log_dir))
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                output.flush()
                log = (log_dir.parent / "tensorboard.log").read_text(errors="replace")
                pytest.fail(f"tensorboard exited with {process.returncode}:\n{log}")
            try:
                _get_json(url + "/data/runs")
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    pytest.fail(f"tensorboard did not answer in {START_TIMEOUT_S} s")
                time.sleep(0.25)
        yield url, str(log_dir)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # nothing to save: no waiting
        process.wait(timeout=30)
        output.close()


def _wait_for(fetch, ready, what):
    """Polls `fetch()` until `ready(result)` (TensorBoard loads files lazily)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        result = fetch()
        if ready(result):
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"TensorBoard never served {what}; last answer: {result}")
        time.sleep(0.25)


def test_data_api_serves_our_runs_and_tags(served):
    server, log_dir = served
    runs = _wait_for(
        lambda: _get_json(server + "/data/runs"),
        lambda r: {"train", "validation"} <= set(r),
        "the train and validation runs",
    )
    assert {"train", "validation"} <= set(runs)

    ours = read_events(log_dir)

    def tags(plugin):
        return _wait_for(
            lambda: _get_json(f"{server}/data/plugin/{plugin}/tags"),
            lambda t: bool(t.get("train")),
            f"{plugin} tags",
        )

    scalars = tags("scalars")
    assert "epoch_loss" in scalars["train"]
    assert "epoch_loss" in scalars.get("validation", {})
    assert set(ours["train"].scalars) <= set(scalars["train"])

    histograms = tags("histograms")
    assert set(ours["train"].histograms) <= set(histograms["train"])
    assert any(t.startswith("activations/") for t in histograms["train"])

    images = tags("images")
    assert ours["train"].images, "FirstLayerImages wrote no image"
    assert set(ours["train"].images) <= set(images["train"])

    tag = sorted(ours["train"].images)[0]
    entries = _get_json(
        f"{server}/data/plugin/images/images?"
        + urllib.parse.urlencode({"run": "train", "tag": tag})
    )
    assert entries, f"no images listed for {tag}"
    url = f"{server}/data/plugin/images/individualImage?{entries[-1]['query']}"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == ours["train"].images[tag][-1].png

    texts = tags("text")
    assert "trainwatch/findings" in texts["train"]

    # Values, not only names: the epoch losses TensorBoard serves are ours.
    served = _get_json(f"{server}/data/plugin/scalars/scalars?run=train&tag=epoch_loss")
    expected = [(e.step, e.value) for e in ours["train"].scalars["epoch_loss"]]
    got = [(int(step), value) for _, step, value in served]
    assert [s for s, _ in got] == [s for s, _ in expected]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in expected])


def _chromium(url, tmp_path, *mode):
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *mode,
        "--window-size=1400,1000",
        # Virtual time (runs ahead when idle): long enough for the cards to draw.
        "--virtual-time-budget=30000",
        url,
    ]
    return subprocess.run(
        [CHROMIUM, *flags],
        capture_output=True,
        timeout=BROWSER_TIMEOUT_S,
        start_new_session=True,
    )


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium); "
    "the TensorBoard data API is still tested without it",
)
def test_browser_renders_our_scalars(served, tmp_path):
    server, _ = served
    # Wait until the data are loaded, so the page shows them on first render.
    _wait_for(
        lambda: _get_json(server + "/data/plugin/scalars/tags"),
        lambda t: "epoch_loss" in t.get("train", {}),
        "epoch_loss",
    )
    # The Time Series dashboard, filtered to our per-epoch scalars.
    page = server + "/?tagFilter=epoch_#timeseries"
    screenshot = tmp_path / "tensorboard.png"
    browser = _chromium(page, tmp_path, "--dump-dom", f"--screenshot={screenshot}")
    assert browser.returncode == 0, browser.stderr.decode(errors="replace")[-2000:]
    html = browser.stdout.decode("utf-8", errors="replace")
    assert "tb-webapp" in html, "TensorBoard's app did not load"
    assert "Tags matching filter" in html
    assert "epoch_loss" in html, "the Time Series dashboard shows no epoch_loss card"

    assert screenshot.exists() and screenshot.stat().st_size > 10_000
    pixels = decode_png(screenshot.read_bytes())
    assert pixels.shape[:2] == (1000, 1400)
    rgb = pixels[..., :3].reshape(-1, 3).astype(int)
    assert len(np.unique(rgb, axis=0)) > 50, "the screenshot is blank"
    # TensorBoard's orange header bar is there: the app rendered, not an error.
    orange = np.abs(rgb - [245, 124, 0]).sum(axis=1) < 40
    assert orange.mean() > 0.01
    if os.environ.get("TRAINWATCH_KEEP_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["TRAINWATCH_KEEP_SCREENSHOT"])
