"""trainwatch: Keras 3 callbacks that watch a neural network while it trains.

Example:

```python
import trainwatch

watch = trainwatch.TrainWatch("runs/exp1", probe=(x[:64], y[:64]))
model.fit(x, y, validation_data=(x_val, y_val), epochs=20, callbacks=[watch])
```

Then `tensorboard --logdir runs` and `trainwatch report runs/exp1`.

Public names are imported on first use, so `import trainwatch` stays light and
imports no framework but the active Keras backend's.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "TrainWatch": "trainwatch.callbacks.trainwatch",
    "Monitor": "trainwatch.callbacks.base",
    "GradientCheck": "trainwatch.callbacks.gradient_check",
    "LossCurve": "trainwatch.callbacks.loss_curve",
    "UpdateRatio": "trainwatch.callbacks.update_ratio",
    "Distributions": "trainwatch.callbacks.distributions",
    "FirstLayerImages": "trainwatch.callbacks.first_layer_images",
    "SanityCheck": "trainwatch.callbacks.sanity_check",
    "InputAndInitChecks": "trainwatch.callbacks.input_init",
    "GradientCheckError": "trainwatch.callbacks.gradient_check",
    "check_gradients": "trainwatch.gradient_check",
    "VariableCheck": "trainwatch.gradient_check",
    "measure_distributions": "trainwatch.callbacks.distributions",
    "GradientCheckResult": "trainwatch.gradient_check",
    "sanity_check": "trainwatch.sanity",
    "SanityReport": "trainwatch.sanity",
    "Finding": "trainwatch.findings",
    "read_report": "trainwatch.report",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trainwatch' has no attribute {name!r}")


def __dir__():
    return __all__
