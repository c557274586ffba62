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
