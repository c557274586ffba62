"""Distributed training: TrainWatch under `tf.distribute.MirroredStrategy`
(TensorFlow) and Keras's `DataParallel` distribution (JAX), each on two CPU
devices in a fresh interpreter (devices are fixed at framework start).

One writer per run, no duplicated events; the core (loss curve, update ratio,
findings) works; any part that cannot run under distribution becomes a
`monitor_failed` finding, never a crash.
"""

import collections
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from trainwatch.findings import FINDINGS_FILENAME, load_findings
from trainwatch.tensorboard import read_events

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS, STEPS_PER_EPOCH = 2, 4  # 64 training examples, global batch 16

SETUP = {
    "tensorflow": """
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        replicas = strategy.num_replicas_in_sync
        scope = strategy.scope
    """,
    "jax": """
        import contextlib
        devices = keras.distribution.list_devices("cpu")
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices)
        )
        replicas = len(devices)
        scope = contextlib.nullcontext
    """,
}

SCRIPT = """
import json, os, sys
import keras
import numpy as np
{setup}
import trainwatch

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(80, 6)).astype("float32")
y = ((x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5)).astype("int32")
with scope():
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(
        keras.optimizers.Adam(1e-2),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
watch = trainwatch.TrainWatch(
    sys.argv[1], probe=(x[:32], y[:32]), verbose=0, loss_curve={{"update_freq": 2}},
    gradient_check={{"max_examples": 4, "coordinates": 2}},
)
history = model.fit(
    x[:64], y[:64], validation_data=(x[64:], y[64:]),
    epochs={epochs}, batch_size=16, callbacks=[watch], verbose=0,
)
print(json.dumps({{
    "replicas": replicas,
    "loss": history.history["loss"],
    "val_loss": history.history["val_loss"],
    "parts": [type(p).__name__ for p in watch.parts],
    "seconds": {{k: round(v, 2) for k, v in watch.context.seconds_by_part.items()}},
}}))
"""


def run_distributed(backend, log_dir):
    code = SCRIPT.format(setup=textwrap.dedent(SETUP[backend]), epochs=EPOCHS)
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": REPO,
    }
    if backend == "jax":
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
        ).strip()
        env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", code, str(log_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_logs(log_dir, info):
    runs = read_events(str(log_dir))
    assert {"train", "validation"} <= set(runs)
    for run in ("train", "validation"):
        files = [n for n in os.listdir(log_dir / run) if "tfevents" in n]
        assert len(files) == 1, f"{run}: one writer expected, found {files}"
        # No duplicated events: every (tag, step) once.
        for kind in ("scalars", "histograms", "images"):
            for tag, events in getattr(runs[run], kind).items():
                counts = collections.Counter(e.step for e in events)
                repeated = {s: n for s, n in counts.items() if n > 1}
                assert not repeated, f"{run} {kind} {tag}: steps written twice"
    train = runs["train"]
    # The core: loss curve, update ratio, findings.
    epoch_steps = [e.step for e in train.scalars["epoch_loss"]]
    expected = list(range(EPOCHS))  # per-epoch values: x-axis in epochs
    assert epoch_steps == expected
    assert [e.step for e in runs["validation"].scalars["epoch_loss"]] == expected
    # The values are the global ones Keras reports, not one replica's.
    np.testing.assert_allclose(
        [e.value for e in train.scalars["epoch_loss"]], info["loss"], rtol=1e-5
    )
    np.testing.assert_allclose(
        [e.value for e in runs["validation"].scalars["epoch_loss"]],
        info["val_loss"],
        rtol=1e-5,
    )
    assert all(np.isfinite(e.value) for e in train.scalars["batch_loss"])
    assert any(tag.startswith("batch_") for tag in train.scalars), sorted(train.scalars)
    assert any(tag.startswith("update_ratio/") for tag in train.scalars), sorted(
        train.scalars
    )
    findings = load_findings(os.path.join(log_dir, FINDINGS_FILENAME))
    failed = {f.where: f.message for f in findings if f.code == "monitor_failed"}
    assert "LossCurve" not in failed and "UpdateRatio" not in failed, failed
    assert "trainwatch/findings" in train.texts
    return failed


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="tf.distribute.MirroredStrategy needs the TensorFlow backend",
)
def test_mirrored_strategy_two_cpu_replicas(tmp_path):
    info = run_distributed("tensorflow", tmp_path)
    assert info["replicas"] == 2
    assert len(info["loss"]) == EPOCHS
    failed = check_logs(tmp_path, info)
    print("parts failing under MirroredStrategy:", failed)


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras.distribution.DataParallel is tested on the JAX backend",
)
def test_keras_data_parallel_two_host_devices(tmp_path):
    info = run_distributed("jax", tmp_path)
    assert info["replicas"] == 2
    assert len(info["loss"]) == EPOCHS
    failed = check_logs(tmp_path, info)
    print("parts failing under DataParallel:", failed)
