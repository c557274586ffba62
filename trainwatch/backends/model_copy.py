"""Copies of a Keras model for experiments that must not touch the original.

The sanity checks train and modify models; they do it on copies made here:

* `clone_with_weights` rebuilds a model from its config, copies its weights
  and gives every weight and activity regularizer to a function that may keep,
  replace or drop it (`without_regularizers`, `with_scaled_regularizers`);
* `copy_optimizer` makes a fresh optimizer of the same class and config;
* `preserved_random_state` restores Python's, NumPy's and Keras's global
  random state afterwards, so building and training a copy does not change
  what the user's run draws next.

Regularizers are set on the copy's variables and layers after it is built
(never deserialized from config), so custom regularizers need not be
registered. Backend-neutral Keras code: no framework is imported.
"""

from __future__ import annotations

import contextlib
import copy
import numbers
import random
import sys
import weakref

import keras
import numpy as np

from trainwatch.backends import get_backend
from trainwatch.backends.model_functions import DROPOUT_CLASSES

_REGULARIZER_SUFFIX = "_regularizer"
_SCALABLE_ATTRIBUTES = ("l1", "l2", "factor")


class CloneUnavailable(RuntimeError):
    """The model cannot be copied; the message says why."""


def short_error_text(error, limit=200) -> str:
    """An error's first line, at most `limit` characters.

    Keras's deserialization errors run to pages (they print whole configs);
    a report needs the gist.

    Example:

    >>> short_error_text(TypeError("bad config\\nconfig={...}"))
    'bad config'
    """
    lines = str(error).strip().splitlines()
    first = lines[0].strip().rstrip(".") if lines else type(error).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


# Initializers in a copy's config: its weights are overwritten with the
# original's right after it is built, so they start as zeros, the cheapest
# (on JAX every random initializer compiles a few programs on first use).
ZEROS_INITIALIZER = {
    "module": "keras.initializers",
    "class_name": "Zeros",
    "config": {},
    "registered_name": None,
}
_INITIALIZER_SUFFIX = "_initializer"


def is_initializer_entry(key, value) -> bool:
    """Whether a config entry is a serialized initializer (a copy may zero it)."""
    return (
        isinstance(key, str)
        and key.endswith(_INITIALIZER_SUFFIX)
        and isinstance(value, dict)
        and "class_name" in value
    )


@contextlib.contextmanager
def tensorflow_left_unimported():
    """Keeps Keras's (de)serialization from importing TensorFlow needlessly.

    `keras.saving.serialize_keras_object` asks whether TensorFlow is available
    (to convert `tf.TensorShape`s) and so imports it whenever it is installed,
    whatever the backend: about 2 s and hundreds of MB in a JAX or PyTorch
    process. When TensorFlow is not the backend and not imported, no
    TensorFlow object can be in the model, so the answer is "no" for the
    duration. Private Keras API: if its shape changes, nothing is done.

    Example:

    >>> with tensorflow_left_unimported():
    ...     config = keras.saving.serialize_keras_object(model)  # doctest: +SKIP
    """
    try:
        from keras.src.saving import serialization_lib

        lazy = serialization_lib.tf
    except (ImportError, AttributeError):
        lazy = None
    applies = (
        lazy is not None
        and keras.backend.backend() != "tensorflow"
        and "tensorflow" not in sys.modules
        and getattr(lazy, "_available", False) is None
    )
    if not applies:
        yield
        return
    lazy._available = False
    try:
        yield
    finally:
        lazy._available = None


# -- random state ------------------------------------------------------------


@contextlib.contextmanager
def preserved_random_state():
    """Restores the global random state when the block ends.

    Covers Python's `random`, NumPy's global generator and Keras's global
    `SeedGenerator` (what `keras.random.*` draws from when given no seed).
    Layers and initializers created without a seed take their seed from
    Python's `random`, so building a copy of a model inside this block leaves
    the user's next draw unchanged.

    Example:

    >>> with preserved_random_state():
    ...     _ = np.random.rand()
    """
    from keras.src.backend.common import global_state

    python_state = random.getstate()
    numpy_state = np.random.get_state()
    generator = global_state.get_global_attribute("global_seed_generator")
    generator_state = None
    if generator is not None:
        generator_state = np.array(keras.ops.convert_to_numpy(generator.state.value))
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        global_state.set_global_attribute("global_seed_generator", generator)
        if generator is not None:
            generator.state.assign(generator_state)


# -- regularizers ------------------------------------------------------------


class ScaledRegularizer(keras.regularizers.Regularizer):
    """`factor` times another regularizer's value (for ones we cannot rescale).

    Example:

    >>> reg = ScaledRegularizer(keras.regularizers.L2(0.5), 10.0)
    >>> float(reg(keras.ops.ones((2,))))
    10.0
    """

    def __init__(self, regularizer, factor):
        self.regularizer = regularizer
        self.factor = float(factor)

    def __call__(self, x):
        return self.factor * self.regularizer(x)

    def get_config(self):
        return {"factor": self.factor}


def scale_regularizer(regularizer, factor):
    """A copy of `regularizer` with its strength multiplied by `factor`.

    The coefficients `l1`, `l2` and `factor` (Keras's `L1`, `L2`, `L1L2`,
    `OrthogonalRegularizer`, and custom regularizers that use those names) are
    scaled on a shallow copy. A regularizer without such an attribute is
    wrapped in `ScaledRegularizer`, which scales its output.

    Args:
        regularizer: A regularizer (any callable on a tensor).
        factor: The multiplier.

    Returns:
        `(scaled, how)`: the new regularizer and `"coefficients l2"` (the
        attributes scaled) or `"output"` (wrapped).

    Example:

    >>> scaled, how = scale_regularizer(keras.regularizers.L2(0.01), 10)
    >>> round(scaled.l2, 6), how
    (0.1, 'coefficients l2')
    """
    scaled = copy.copy(regularizer)
    names = []
    for name in _SCALABLE_ATTRIBUTES:
        value = getattr(regularizer, name, None)
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, numbers.Number) or hasattr(value, "dtype"):
            try:
                setattr(scaled, name, value * factor)
            except (AttributeError, TypeError):
                continue
            names.append(name)
    if names:
        return scaled, "coefficients " + ", ".join(names)
    return ScaledRegularizer(regularizer, factor), "output"


def regularizer_sites(model) -> list:
    """Every regularizer in `model`: `(where, kind, owner, regularizer)` tuples.

    `kind` is `"weight"` (owner: the variable, `where` its path) or `"activity"`
    (owner: the layer, `where` its path). Only trainable weights are listed:
    Keras adds regularization losses for those only.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(
    ...     2, kernel_regularizer="l2", name="hidden")], name="net")
    >>> [(where, kind) for where, kind, _, _ in regularizer_sites(model)]
    [('net/hidden/kernel', 'weight')]
    """
    sites = []
    for variable in model.trainable_weights:
        if getattr(variable, "regularizer", None) is not None:
            sites.append((variable.path, "weight", variable, variable.regularizer))
    for layer in _all_layers(model):
        regularizer = getattr(layer, "activity_regularizer", None)
        if regularizer is not None:
            where = getattr(layer, "path", None) or layer.name
            sites.append((where, "activity", layer, regularizer))
    return sites


def _all_layers(model):
    return list(model._flatten_layers(include_self=True, recursive=True))


# -- cloning -----------------------------------------------------------------


def _strip_config(config, zero_dropout):
    """The config with regularizers removed and, if asked, dropout set to 0."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key.endswith(_REGULARIZER_SUFFIX):
                out[key] = None
            elif is_initializer_entry(key, value):
                out[key] = ZEROS_INITIALIZER
            elif zero_dropout and key in ("dropout", "recurrent_dropout"):
                out[key] = 0.0 if isinstance(value, numbers.Number) else value
            else:
                out[key] = _strip_config(value, zero_dropout)
        return out
    if isinstance(config, list):
        return [_strip_config(item, zero_dropout) for item in config]
    return config


def _config_without_regularizers(layer):
    """`layer.get_config()` with its regularizers detached while it runs.

    Serializing a custom regularizer needs its `get_config` (and rebuilding it
    needs it registered); the copy gets its regularizers afterwards anyway, so
    they are left out of the config. The layer's attributes are restored.
    """
    detached = {
        name: value
        for name, value in vars(layer).items()
        if name.endswith(_REGULARIZER_SUFFIX) and value is not None
    }
    try:
        for name in detached:
            setattr(layer, name, None)
        return layer.get_config()
    finally:
        for name, value in detached.items():
            setattr(layer, name, value)


def _live_lambda_config(layer, config) -> dict:
    """A `Lambda` layer's config with its own function (and callable output
    shape and mask) in place of their serialized bytecode.

    Keras rebuilds a Python lambda from bytecode without its module's
    globals, so `lambda t: keras.ops.abs(t[0] - t[1])` fails in the copy
    ("could not infer the shape of the Lambda's output"); the copy runs in
    the same process and can call the user's function itself.
    """
    config = dict(config)
    config["function"] = layer.function
    for key, live in (("output_shape", layer._output_shape), ("mask", layer.mask)):
        if callable(live):
            config[key] = live
        elif key == "output_shape" and isinstance(config.get(key), list):
            config[key] = tuple(config[key])
    config["arguments"] = dict(layer.arguments)
    return config


def live_lambda_callables(model, serialized) -> tuple[dict, dict]:
    """Points the `Lambda` layers of a serialized model at their live callables.

    Each `Lambda` layer config in `serialized` (matched to `model`'s layers by
    name; names used twice are left alone) gets its function and callable
    output shape as names of entries in the returned custom objects, and its
    callable mask as the object itself (`Lambda.from_config` passes masks
    through untouched). Deserialize with those custom objects.

    Args:
        model: The live model.
        serialized: `keras.saving.serialize_keras_object(model)`, not modified.

    Returns:
        `(serialized copy, custom objects)`.

    Example:

    >>> config = keras.saving.serialize_keras_object(model)  # doctest: +SKIP
    >>> config, objects = live_lambda_callables(model, config)  # doctest: +SKIP
    >>> copy = keras.saving.deserialize_keras_object(
    ...     config, custom_objects=objects
    ... )  # doctest: +SKIP
    """
    layers, seen = {}, set()
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Lambda):
            if layer.name in seen:
                layers.pop(layer.name, None)
            else:
                layers[layer.name] = layer
            seen.add(layer.name)
    objects = {}

    def visit(node):
        if isinstance(node, list):
            return [visit(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {key: visit(value) for key, value in node.items()}
        inner = out.get("config")
        if out.get("class_name") == "Lambda" and isinstance(inner, dict):
            layer = layers.get(inner.get("name"))
            if layer is not None:
                inner = dict(inner)
                key = f"trainwatch_live_lambda_{len(objects)}"
                objects[key], inner["function"] = layer.function, key
                if callable(layer._output_shape):
                    key = f"trainwatch_live_lambda_{len(objects)}"
                    objects[key], inner["output_shape"] = layer._output_shape, key
                if callable(layer.mask):
                    inner["mask"] = layer.mask
                out["config"] = inner
        return out

    return visit(serialized), objects


def _clone_layer_function(zero_dropout):
    def clone_layer(layer):
        config = _strip_config(_config_without_regularizers(layer), zero_dropout)
        if isinstance(layer, keras.layers.Lambda):
            return keras.layers.Lambda(**_live_lambda_config(layer, config))
        if zero_dropout and type(layer).__name__ in DROPOUT_CLASSES:
            config["rate"] = 0.0
        if zero_dropout and isinstance(layer, keras.layers.GaussianNoise):
            config["stddev"] = 0.0
        clone = layer.__class__.from_config(config)
        if zero_dropout:
            _augmentation_off(clone)
        return clone

    return clone_layer


def _rebuild(model, zero_dropout, sample_input):
    if isinstance(model, keras.Sequential) or _is_functional(model):
        return keras.models.clone_model(
            model, clone_function=_clone_layer_function(zero_dropout), recursive=True
        )
    try:
        clone = keras.models.clone_model(model)
    except Exception as error:  # no usable `get_config`: copy the object itself
        clone = _deep_copy(model, error)
    if zero_dropout:
        _zero_dropout_in_place(clone)
    if not clone.built:
        build_config = model.get_build_config() if model.built else None
        if build_config:
            with contextlib.suppress(Exception):
                clone.build_from_config(build_config)
    if not clone.built or len(clone.weights) != len(model.weights):
        if sample_input is None:
            raise CloneUnavailable(
                f"The copy of {model.name!r} could not be built: pass a sample input."
            )
        clone(sample_input, **_training_kwargs(clone))
    return clone


def _deep_copy(model, config_error):
    """`copy.deepcopy(model)`, for subclassed models that cannot be rebuilt
    from their config; raises `config_error` if the object cannot be copied
    either (the config is what the user can fix)."""
    try:
        clone = copy.deepcopy(model)
    except Exception:
        raise config_error from None
    if len(clone.weights) != len(model.weights):
        raise config_error
    return clone


def _zero_dropout_in_place(model):
    """Sets the rate of every dropout and noise layer inside `model` to 0, and
    runs its image augmentation layers as at inference."""
    for layer in _all_layers(model):
        if type(layer).__name__ in DROPOUT_CLASSES and hasattr(layer, "rate"):
            layer.rate = 0.0
        if isinstance(layer, keras.layers.GaussianNoise):
            layer.stddev = 0.0
        _augmentation_off(layer)


def _augmentation_off(layer):
    """Makes an image preprocessing layer of a copy (`RandomFlip`,
    `RandomTranslation`, …) compute as at inference, also while the copy
    trains: random augmentation is a regularizer, and the overfit check
    memorizes its examples as they are. At inference most of these layers
    pass their input through (`RandomCrop` crops the center)."""
    bases = {cls.__name__ for cls in type(layer).__mro__}
    if "BaseImagePreprocessingLayer" not in bases:
        return
    call = layer.call

    def call_at_inference(*args, **kwargs):
        if "training" in kwargs:
            kwargs["training"] = False
        return call(*args, **kwargs)

    layer.call = call_at_inference


def _is_functional(model):
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def _training_kwargs(model):
    if getattr(model, "_call_has_training_arg", False):
        return {"training": False}
    return {}


def copy_weights(model, target, error_cls, dtype=None):
    """Copies `model`'s weights into `target`, a rebuilt copy of it.

    Weights are paired in order (`model.weights` with `target.weights`), read
    to the host and assigned. Used for the copies made here and for the
    float64 shadow (`trainwatch.backends.float64.make_float64_shadow`).

    Args:
        model: The Keras model whose weights are read.
        target: A built model with the same weights in the same order.
        error_cls: The exception class raised when the weights do not match
            (the caller's "no copy" error, e.g. `CloneUnavailable`).
        dtype: Floating weights are cast to this dtype, then every value to
            its target variable's dtype, before assignment. Defaults to
            `None`: values are assigned as read.

    Raises:
        error_cls: `target` has a different number of weights than `model`,
            or a weight whose shape differs from the original's. The message
            names the model or both weights' paths.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> copy_weights(model, other, CloneUnavailable)
    >>> np.allclose(other.get_weights()[0], model.get_weights()[0])
    True
    """
    what = "copy" if dtype is None else f"{keras.backend.standardize_dtype(dtype)} copy"
    source, destination = model.weights, target.weights
    if len(source) != len(destination):
        raise error_cls(
            f"The {what} of {model.name!r} has {len(destination)} weights, the "
            f"model {len(source)}: the model's `get_config` does not describe it "
            "fully, or it creates weights outside `build`."
        )
    to_numpy = get_backend().to_numpy
    for src, dst in zip(source, destination):
        if tuple(src.shape) != tuple(dst.shape):
            raise error_cls(
                f"Weight {src.path} has shape {tuple(src.shape)} but its {what} "
                f"{dst.path} has {tuple(dst.shape)}."
            )
        value = np.asarray(to_numpy(src))
        if dtype is not None:
            if np.issubdtype(value.dtype, np.floating):
                value = value.astype(dtype)
            value = value.astype(keras.backend.standardize_dtype(dst.dtype))
        dst.assign(value)
    _finalize_layer_states(target)


def _finalize_layer_states(model):
    """Lets layers that derive state from their weights derive it again.

    Preprocessing layers such as an adapted `Normalization` compute the
    constants their `call` uses (`mean`, `variance`) from their weights in
    `finalize_state()`, which Keras calls after loading weights. Assigning the
    weights alone leaves the copy's constants at their initial values (a
    copy that no longer normalizes its inputs).
    """
    for layer in _all_layers(model):
        finalize = getattr(layer, "finalize_state", None)
        if callable(finalize) and layer.built and layer.weights:
            finalize()


def _apply_regularizers(model, clone, regularizer_fn):
    for src, dst in zip(model.weights, clone.weights):
        original = getattr(src, "regularizer", None)
        dst.regularizer = None if original is None else regularizer_fn(original)
    source_layers, target_layers = _all_layers(model), _all_layers(clone)
    if len(source_layers) != len(target_layers):
        raise CloneUnavailable(
            f"The copy of {model.name!r} has {len(target_layers)} layers, the model "
            f"{len(source_layers)}."
        )
    for src, dst in zip(source_layers, target_layers):
        original = getattr(src, "activity_regularizer", None)
        replacement = None if original is None else regularizer_fn(original)
        if replacement is not None or getattr(dst, "activity_regularizer", None):
            dst.activity_regularizer = replacement


def clone_with_weights(
    model, regularizer_fn=None, zero_dropout=False, sample_input=None
):
    """A new model with the same architecture and weights as `model`.

    Sequential and Functional models (nested ones too) are rebuilt layer by
    layer from their configs; subclassed models through their `get_config`.
    The copy is uncompiled and owns its variables: training it leaves `model`
    as it was.

    Args:
        model: A built Keras model.
        regularizer_fn: Maps each of `model`'s regularizers (weight and
            activity) to the one the copy gets, or to `None` to drop it.
            Defaults to `None`: keep them all.
        zero_dropout: Set dropout rates (and `GaussianNoise`) to 0 in the copy.
            Defaults to `False`.
        sample_input: A batch to build a subclassed copy with, when its build
            config is not enough. Defaults to `None`.

    Returns:
        The copy, a built, uncompiled `keras.Model`.

    Raises:
        CloneUnavailable: the model cannot be rebuilt from its config (a
            subclassed model without `get_config`, an unregistered custom
            layer) or the copy's weights do not match the original's.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> copy_ = clone_with_weights(model)
    >>> np.allclose(copy_.get_weights()[0], model.get_weights()[0])
    True
    """
    if regularizer_fn is None:

        def regularizer_fn(regularizer):
            return regularizer

    if not model.built:
        raise CloneUnavailable(f"Model {model.name!r} is not built.")
    try:
        with preserved_random_state(), tensorflow_left_unimported():
            clone = _rebuild(model, zero_dropout, sample_input)
    except CloneUnavailable:
        raise
    except Exception as error:  # any failure to rebuild means "no copy"
        raise CloneUnavailable(
            f"Could not rebuild model {model.name!r} from its config "
            f"({type(error).__name__}: {short_error_text(error, 120)}). Give "
            "subclassed models and custom layers a `get_config()` that lists "
            "their constructor arguments."
        ) from error
    copy_weights(model, clone, CloneUnavailable)
    _apply_regularizers(model, clone, regularizer_fn)
    return clone


def without_regularizers(model, zero_dropout=True, sample_input=None):
    """A copy of `model` with no regularizers (and, by default, no dropout).

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((3,)), keras.layers.Dense(2, kernel_regularizer="l2")])
    >>> regularizer_sites(without_regularizers(model))
    []
    """
    return clone_with_weights(
        model, lambda _: None, zero_dropout=zero_dropout, sample_input=sample_input
    )


def with_scaled_regularizers(model, factor, sample_input=None):
    """A copy of `model` whose every regularizer is `factor` times stronger.

    Returns:
        `(copy, hows)`: the copy and, per regularizer, how it was scaled (see
        `scale_regularizer`).

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((3,)), keras.layers.Dense(2, kernel_regularizer="l2")])
    >>> stronger, hows = with_scaled_regularizers(model, 10.0)
    >>> hows
    ['coefficients l2']
    """
    hows = []

    def scale(regularizer):
        scaled, how = scale_regularizer(regularizer, factor)
        hows.append(how)
        return scaled

    clone = clone_with_weights(model, scale, sample_input=sample_input)
    return clone, hows


# -- optimizer ---------------------------------------------------------------


def base_optimizer(optimizer):
    """The optimizer that holds the learning rate.

    Mixed precision wraps the user's optimizer in a `LossScaleOptimizer`,
    whose own `_learning_rate` is a placeholder (0): the rate is its inner
    optimizer's. Any other optimizer (or `None`) is returned as it is.

    Example:

    >>> adam = keras.optimizers.Adam(1e-2)
    >>> base_optimizer(keras.optimizers.LossScaleOptimizer(adam)) is adam
    True
    """
    while isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer


# Steps at which a schedule is read for its peak: 0, then doubling up to 65536.
_SCHEDULE_STEPS = [0, *(2**k for k in range(17))]
_schedule_peaks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def schedule_peak(schedule):
    """`(rate, step)`: the largest rate of a `LearningRateSchedule` over its
    first 65536 steps, and the step it is at.

    Read at step 0 and at powers of 2, then around the largest of those ever
    more finely, down to single steps; kept per schedule. A decaying
    schedule peaks at step 0 (18 reads); a warm-up (`CosineDecay` with
    `warmup_steps`, whose rate starts at 0 by default) peaks where it ends
    (~45 reads: ~1 s on JAX, whose `cond` is traced at each eager call).

    Raises:
        Exception: Whatever the schedule raises at step 0 (unreadable).

    Example:

    >>> decay = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    >>> rate, step = schedule_peak(decay)
    >>> round(rate, 6), step
    (0.1, 0)
    >>> warm = keras.optimizers.schedules.CosineDecay(
    ...     0.0, 500, warmup_target=1e-3, warmup_steps=30
    ... )
    >>> rate, step = schedule_peak(warm)
    >>> round(rate, 6), step
    (0.001, 30)
    """
    with contextlib.suppress(TypeError):  # not weak-referenceable: not kept
        if schedule in _schedule_peaks:
            return _schedule_peaks[schedule]
    rates = {}

    def rate_at(step):
        if step not in rates:
            rates[step] = float(keras.ops.convert_to_numpy(schedule(step)))
        return rates[step]

    steps = [0]
    for step in _SCHEDULE_STEPS[1:]:
        try:
            rate_at(step)
        except Exception:  # e.g. a schedule defined for fewer steps
            break
        steps.append(step)
    rate_at(0)
    while True:
        best = max(range(len(steps)), key=lambda i: (rates[steps[i]], -i))
        low, high = steps[max(best - 1, 0)], steps[min(best + 1, len(steps) - 1)]
        if high - low <= 2:
            break
        count = min(high - low + 1, 9)
        steps = sorted({int(round(v)) for v in np.linspace(low, high, count)})
        for step in steps:
            rate_at(step)
    peak = rates[steps[best]], steps[best]
    with contextlib.suppress(TypeError):
        _schedule_peaks[schedule] = peak
    return peak


def copy_optimizer(optimizer, learning_rate_factor=1.0):
    """A fresh optimizer of the same class and config (no slots, step 0).

    A `LearningRateSchedule` is replaced by its largest rate (`schedule_peak`):
    the copy trains for a few hundred steps, over which a schedule meant for
    a whole run (decaying every 10 steps, say) would take the rate to
    nothing, and a warm-up starting at 0 would not train it at all.

    Args:
        optimizer: A Keras optimizer, or `None` for a default `Adam`.
        learning_rate_factor: Multiplies the learning rate. Defaults to `1.0`.

    Returns:
        `(optimizer, learning_rate)`; `learning_rate` is the new constant
        rate, or `None` when the rate is neither a number nor a schedule
        whose first rate can be read (a callable: then `factor != 1` raises).

    Raises:
        ValueError: `learning_rate_factor != 1` with a rate that is neither.

    Example:

    >>> opt, lr = copy_optimizer(keras.optimizers.SGD(0.1), learning_rate_factor=10)
    >>> type(opt).__name__, round(lr, 6)
    ('SGD', 1.0)
    """
    if optimizer is None:
        optimizer = keras.optimizers.Adam()
    config = optimizer.get_config()
    rate = config.get("learning_rate")
    schedule = getattr(optimizer, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        with contextlib.suppress(Exception):  # unreadable: kept as a schedule
            rate, _ = schedule_peak(schedule)
    if isinstance(rate, numbers.Number):
        rate = float(rate) * learning_rate_factor
        config["learning_rate"] = rate
    else:
        if learning_rate_factor != 1:
            raise ValueError(
                "Cannot scale a learning-rate schedule. "
                f"Received: learning_rate_factor={learning_rate_factor}"
            )
        rate = None
    try:
        with tensorflow_left_unimported():
            serialized = keras.optimizers.serialize(optimizer)
            serialized["config"] = config
            fresh = keras.optimizers.deserialize(serialized)
    except Exception:  # unregistered custom optimizer: its own from_config
        fresh = type(optimizer).from_config(config)
    return fresh, rate
