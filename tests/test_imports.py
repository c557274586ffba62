"""`import trainwatch` imports only the active backend's framework.

Keras itself may import JAX whatever the backend (its Orbax checkpoint callback
does when JAX is installed), so the test checks what trainwatch adds on top of
`import keras`: nothing but the active framework.
"""

import json
import os
import subprocess
import sys

import keras
import pytest

FRAMEWORKS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}

SCRIPT = """
import json, sys
names = ("tensorflow", "jax", "torch")
import keras
before = {m for m in names if m in sys.modules}
import trainwatch
import trainwatch.callbacks
from trainwatch.backends import get_backend
get_backend()
after = {m for m in names if m in sys.modules}
print(json.dumps({"added": sorted(after - before), "present": sorted(after)}))
"""


def _run_on_this_backend(script):
    """Runs `script` in a fresh interpreter on this backend; its last line as JSON."""
    env = dict(
        os.environ, KERAS_BACKEND=keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="3"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_only_the_active_framework_is_imported():
    backend = keras.backend.backend()
    imported = _run_on_this_backend(SCRIPT)
    assert set(imported["added"]) <= {FRAMEWORKS[backend]}
    assert FRAMEWORKS[backend] in imported["present"]


def test_unsupported_backend_is_a_clear_error(monkeypatch):
    from trainwatch import backends

    monkeypatch.setattr(backends, "active_backend_name", lambda: "numpy")
    with pytest.raises(NotImplementedError, match="KERAS_BACKEND"):
        backends.get_backend()


CHECKS_SCRIPT = """
import json, sys
import numpy as np
import keras
import trainwatch
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, "softmax")])
model.compile("sgd", "sparse_categorical_crossentropy")
x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
y = np.arange(8) % 3
trainwatch.check_gradients(model, x, y)
trainwatch.sanity_check(model, x, y, overfit_steps=5, verbose=0)
print(json.dumps({"tensorflow": "tensorflow" in sys.modules}))
"""


def test_checks_do_not_import_tensorflow_on_other_backends():
    # Keras's serialization imports TensorFlow whenever it is installed; the
    # float64 shadow and the sanity copies are rebuilt without it (~2 s saved).
    if keras.backend.backend() == "tensorflow":
        pytest.skip("TensorFlow is the backend")
    assert _run_on_this_backend(CHECKS_SCRIPT) == {"tensorflow": False}
