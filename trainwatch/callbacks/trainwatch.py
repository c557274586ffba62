"""`TrainWatch`: every trainwatch monitor in one callback, at sensible defaults."""

from __future__ import annotations

import importlib

import keras
import numpy as np

from trainwatch.backends.model_functions import build_on_batch
from trainwatch.callbacks.base import Monitor, RunContext

# option name -> (module, class, keyword that receives the probe batch or None)
_PARTS = {
    "sanity_check": ("trainwatch.callbacks.sanity_check", "SanityCheck", "data"),
    "input_init": ("trainwatch.callbacks.input_init", "InputAndInitChecks", "data"),
    "loss_curve": ("trainwatch.callbacks.loss_curve", "LossCurve", None),
    "update_ratio": ("trainwatch.callbacks.update_ratio", "UpdateRatio", None),
    "distributions": ("trainwatch.callbacks.distributions", "Distributions", "probe"),
    "images": ("trainwatch.callbacks.first_layer_images", "FirstLayerImages", None),
    "gradient_check": ("trainwatch.callbacks.gradient_check", "GradientCheck", "data"),
}
_NUMERIC_DTYPES = {
    "bool",
    *(f"int{b}" for b in (8, 16, 32, 64)),
    *(f"uint{b}" for b in (8, 16, 32, 64)),
    "bfloat16",
    "float16",
    "float32",
    "float64",
}
_NEEDS_PROBE = ("sanity_check", "input_init", "distributions", "gradient_check")


def _is_overridden(callback, hook) -> bool:
    """Whether `callback` has its own `hook` (class method or per instance).

    Keras marks its no-op hooks `_is_default`; a part may also attach a hook
    to the instance (e.g. only when it runs on a step schedule).
    """
    return not getattr(getattr(callback, hook), "_is_default", False)


class TrainWatch(Monitor):
    """Watches a training run: every trainwatch monitor in one Keras callback.

    Parts, each switched off with `False`, tuned with a dict of its keyword
    arguments, or on at its defaults with `True`:

    * `sanity_check`: initial loss, regularization, overfitting a tiny subset,
      at train begin (`SanityCheck`).
    * `input_init`: input normalization and initialization scale, at train
      begin (`InputAndInitChecks`).
    * `loss_curve`: per-batch loss, per-epoch metrics, train/validation gap,
      loss pathologies (`LossCurve`).
    * `update_ratio`: update-to-parameter ratio of every weight (`UpdateRatio`).
    * `distributions`: per-layer activation and gradient histograms, dead and
      saturated units, vanishing/exploding gradients (`Distributions`).
    * `images`: first-layer weights as images (`FirstLayerImages`).
    * `gradient_check`: float64 gradient checks after warm-up (`GradientCheck`).

    The log dir follows the layout of Keras's TensorBoard callback (`train/`,
    `validation/` runs) so both can be used side by side; findings go to a
    "trainwatch/findings" text dashboard and to `trainwatch_findings.json`,
    which `trainwatch report LOGDIR` prints.

    Args:
        log_dir: Directory for the logs, or `None` to only print findings.
            Checked at construction (a clear error before any training time is
            spent). Defaults to `"runs/trainwatch"`.
        probe: A small fixed batch `(x, y)` (or `(x, y, sample_weight)`) from the
            training data, used by the checks and probes; 32–256 examples is
            plenty. Without it, the parts that need it are switched off with a
            note. Defaults to `None`.
        verbose: 0 silent, 1 print each new warning or error. Defaults to 1.
        image_shape: Shape of one input image, for showing Dense first-layer
            weights over flattened images as pictures (e.g. `(28, 28)`).
            Defaults to `None` (only Conv2D filters, or inputs that are images).
        budget: Fraction of training time trainwatch may spend. Heavy probes
            (distributions, gradient checks) are spaced out to fill all of it
            but 2% of training time (left to the loss curve, the update ratios
            and costs no timer sees: at 5%, they fill 3%), while the first of
            each still comes early. They run at epoch ends, and in long epochs
            also mid-epoch once 30 s of training have passed since the last
            (the first gradient check too, after warm-up). Its own cost is
            logged as `trainwatch/overhead`. Defaults to 0.05.
        **parts: Per-part settings, see above.

    Example:

    ```python
    watch = trainwatch.TrainWatch("runs/exp1", probe=(x[:64], y[:64]))
    model.fit(x, y, validation_data=(x_val, y_val), epochs=20, callbacks=[watch])
    # then: tensorboard --logdir runs   and   trainwatch report runs/exp1
    ```
    """

    def __init__(
        self,
        log_dir="runs/trainwatch",
        probe=None,
        verbose=1,
        image_shape=None,
        budget=0.05,
        **parts,
    ):
        super().__init__(log_dir=log_dir, verbose=verbose)
        unknown = set(parts) - set(_PARTS)
        if unknown:
            raise ValueError(
                f"Unknown TrainWatch part(s) {sorted(unknown)}. Expected any of "
                f"{sorted(_PARTS)}. Received: {', '.join(sorted(unknown))}"
            )
        if probe is not None and not isinstance(probe, (tuple, list)):
            raise TypeError(
                "Expected `probe` to be a tuple `(x, y)` of a few training "
                f"examples. Received: probe={type(probe).__name__}"
            )
        self.probe = None if probe is None else _check_probe(tuple(probe))
        self._context = RunContext(log_dir, verbose, budget=budget)
        self._probe_given_to_parts = False
        self.image_shape = image_shape
        self.parts = []
        self.skipped_parts = {}
        for name, (module_name, class_name, probe_arg) in _PARTS.items():
            setting = parts.get(name, True)
            if setting is False or setting is None:
                continue
            kwargs = dict(setting) if isinstance(setting, dict) else {}
            if name in _NEEDS_PROBE and probe_arg and probe_arg not in kwargs:
                if self.probe is None:
                    self.skipped_parts[name] = "no probe batch given"
                    continue
                kwargs[probe_arg] = self.probe
                self._probe_given_to_parts = True
            if name == "images" and image_shape is not None:
                kwargs.setdefault("image_shape", image_shape)
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError) as error:
                self.skipped_parts[name] = f"not available ({error})"
                continue
            kwargs.setdefault("verbose", verbose)
            part = cls(**kwargs)
            part.bind(self._context)
            self.parts.append(part)
        self._batch_end_parts = [
            p for p in self.parts if _is_overridden(p, "on_train_batch_end")
        ]
        self._batch_begin_parts = [
            p for p in self.parts if _is_overridden(p, "on_train_batch_begin")
        ]
        if not self._batch_end_parts:
            # No part needs it: keep Keras's default (no-op) hook so that async
            # dispatch stays on; the step is then kept at epoch ends.
            self.on_train_batch_end = (
                keras.callbacks.Callback.on_train_batch_end.__get__(self)
            )

    @property
    def async_safe(self):
        """Whether Keras may run the batch-end hook in its worker threads:
        exactly when every part with a batch-end hook says so (read by Keras
        once per `fit`, as the parts decide by the device)."""
        parts = getattr(self, "_batch_end_parts", ())
        return all(getattr(p, "async_safe", False) for p in parts)

    def part(self, name_or_class):
        """Returns the part of that class (or class name), or `None`."""
        for p in self.parts:
            if type(p).__name__ == name_or_class or type(p) is name_or_class:
                return p
        return None

    # Keras plumbing: parts see the same model and params.
    def set_model(self, model):
        super().set_model(model)
        for p in self.parts:
            p.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for p in self.parts:
            p.set_params(params)

    def build_batch(self):
        return self.probe

    def on_train_begin(self, logs=None):
        model = self._model
        if self.probe is not None and model is not None and not model.built:
            # TensorFlow, no `Input`: built now, so that every part sees the
            # model's variables and the probe is checked against it.
            build_on_batch(model, self.probe)
        if self._probe_given_to_parts:
            # A probe that does not fit the model is the user's argument error:
            # say so now, before any training time is spent.
            _check_probe_fits(self._model, self.probe)
        super().on_train_begin(logs)

    def begin(self):
        for name, reason in self.skipped_parts.items():
            if self.verbose_level:
                print(f"[trainwatch] {name} is off: {reason}.")
        for p in self.parts:
            p.on_train_begin()

    @property
    def verbose_level(self):
        return self._verbose

    def epoch_begin(self, epoch):
        for p in self.parts:
            p.on_epoch_begin(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        # Steps done so far (the batch-end hook, which also counts them, may
        # run later in a worker thread): parts that work mid-epoch read it.
        steps_done = getattr(self, "_epoch_start_step", 0) + int(batch)
        if steps_done > self.context.step:
            self.context.step = steps_done
        for p in self._batch_begin_parts:
            p.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.step_for_batch(batch)
        for p in self._batch_end_parts:
            p.on_train_batch_end(batch, logs)

    def epoch_end(self, epoch, logs):
        for p in self.parts:
            p.on_epoch_end(epoch, logs)
        writer = self.context.writer("train")
        if writer is not None:
            seconds = self.context.seconds_in_trainwatch
            writer.scalar(
                "trainwatch/seconds_in_trainwatch", seconds, self.context.step
            )

    def end(self, logs):
        for p in self.parts:
            p.on_train_end(logs)


def _shapes(data):
    return keras.tree.map_structure(lambda a: tuple(np.shape(a)), data)


def _check_probe(probe):
    """Checks what can be checked without the model: arity, numbers, lengths."""
    if len(probe) not in (2, 3):
        raise ValueError(
            "Expected `probe` to be `(x, y)` or `(x, y, sample_weight)`. "
            f"Received: probe with {len(probe)} elements"
        )
    lengths = set()
    for name, data in zip(("x", "y", "sample_weight"), probe):
        for array in keras.tree.flatten(data) if data is not None else []:
            dtype = getattr(array, "dtype", None) or np.asarray(array).dtype
            try:
                dtype = keras.backend.standardize_dtype(dtype)
            except (TypeError, ValueError):  # strings, objects
                pass
            if dtype not in _NUMERIC_DTYPES:
                raise TypeError(
                    f"Expected `probe` to hold numbers, but its {name} has dtype "
                    f"{dtype}. Pass a few examples of the training data as `fit` "
                    f"gets them. Received: probe {name} dtype={dtype}"
                )
            if not np.shape(array):
                raise ValueError(
                    f"Expected `probe` {name} to have a batch axis. "
                    f"Received: probe {name} shape=()"
                )
            lengths.add(np.shape(array)[0])
    if len(lengths) > 1:
        raise ValueError(
            "Expected the arrays of `probe` to hold the same number of examples. "
            f"Received: probe shapes x={_shapes(probe[0])}, y={_shapes(probe[1])}"
        )
    return probe


def _check_probe_fits(model, probe):
    """Raises `ValueError` if the model or its loss cannot take the probe batch."""
    from trainwatch.backends import model_functions as mf

    try:
        mf.check_model_ready(model)
    except (TypeError, ValueError):
        return  # the parts report what they cannot do with such a model
    mf.check_labels_given(model, probe[1], argument="probe y")
    head = [
        None if d is None else keras.tree.map_structure(lambda a: a[:2], d)
        for d in probe
    ]
    try:
        mf.compute_loss_parts(model, *mf.convert_batch(tuple(head)))
    except (TypeError, ValueError) as error:
        reason = str(error).rstrip()
        if not reason.endswith("."):
            reason += "."
        raise ValueError(
            f"`probe` does not fit model {model.name!r}: {reason}"
            f"{_input_structure_hint(model, probe[0])} Pass a few "
            "examples of the training data, as `fit` gets them (same input "
            "shapes, same label format). Received: probe shapes "
            f"x={_shapes(probe[0])}, y={_shapes(probe[1])}"
        ) from error


def _input_structure_hint(model, x):
    """A sentence naming the model's named inputs when the probe's `x` lacks
    some of them (a functional model built on a dict of `Input`s), else `""`."""
    structure = getattr(model, "_inputs_struct", None)  # functional models
    if not isinstance(structure, dict):
        return ""
    expected = sorted(structure)
    missing = expected if not isinstance(x, dict) else sorted(set(structure) - set(x))
    if not missing:
        return ""
    keys = ", ".join(f"{k!r}: ..." for k in expected)
    return (
        f" The model takes a dict of inputs with keys {expected}; the probe's "
        f"x ({type(x).__name__}) lacks {missing}: pass `probe=({{{keys}}}, y)`."
    )
