"""Backend adapters: the only place that imports TensorFlow, JAX or PyTorch.

Each framework has one small module with the same names (`NAME`,
`value_and_grad`, `to_numpy`, `variable_values`, `x64_scope`, `jit`,
`computes_on_cpu`).
`get_backend()` imports the one for the active Keras backend, so no other
framework is ever imported. Code that works at the level of Keras models
(losses, gradients, the float64 shadow, layer captures) lives in
`model_functions.py` and `float64.py` and uses only these names.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_SUPPORTED = ("tensorflow", "jax", "torch")
_loaded: dict[str, ModuleType] = {}


def active_backend_name() -> str:
    """Returns the name of the active Keras backend (`keras.backend.backend()`)."""
    import keras

    return keras.backend.backend()


def get_backend() -> ModuleType:
    """Returns the adapter module for the active Keras backend.

    Returns:
        A module with `NAME`, `value_and_grad(fn, args)`, `to_numpy(x)`,
        `variable_values(variables)`, `x64_scope()`, `jit(fn)` and
        `computes_on_cpu()`.

    Raises:
        NotImplementedError: the active backend is not one trainwatch supports
            (e.g. `numpy` or `openvino`, which cannot compute gradients).

    Example:

    >>> from trainwatch.backends import get_backend
    >>> get_backend().NAME in ("tensorflow", "jax", "torch")
    True
    """
    name = active_backend_name()
    if name not in _SUPPORTED:
        raise NotImplementedError(
            "trainwatch needs gradients, which the "
            f"{name} backend cannot compute. Set KERAS_BACKEND to one of "
            f"{_SUPPORTED}. Received: backend={name!r}"
        )
    if name not in _loaded:
        _loaded[name] = importlib.import_module(f"trainwatch.backends.{name}_backend")
    return _loaded[name]


def computes_on_cpu() -> bool:
    """Whether the active Keras backend computes on the host CPU.

    `True` as well for a backend trainwatch does not support, and when the
    framework cannot say: the answer only picks the cheaper way of running
    callbacks, and both are correct.

    Example:

    >>> from trainwatch.backends import computes_on_cpu
    >>> computes_on_cpu() in (True, False)
    True
    """
    try:
        return bool(get_backend().computes_on_cpu())
    except Exception:  # never let a device query break a fit
        return True
