"""Shared test setup: quiet frameworks, fixed seeds, the active backend's name."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fixed_seed_and_clean_session():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture
def backend_name():
    return keras.backend.backend()


@pytest.fixture
def watch_with_only():
    """Makes a `TrainWatch` with only the named parts on, quiet, at a budget of 1.

    Example: `watch_with_only(tmp_path, probe, ("distributions",), images=False)`;
    the options go to `TrainWatch` as they are.
    """

    def make(log_dir, probe, parts, **options):
        import trainwatch
        from trainwatch.callbacks.trainwatch import _PARTS

        off = {name: False for name in _PARTS if name not in parts}
        off.update(options)
        return trainwatch.TrainWatch(log_dir, probe=probe, verbose=0, budget=1.0, **off)

    return make
