"""Loss, gradients and layer captures of a compiled Keras model.

Everything here is stateless: the model is evaluated with
`model.stateless_call` on explicit variable values, so its variables, its
loss and metric trackers, its optimizer and its random state are never
touched. Evaluation is in inference mode (`training=False`) by default, which
holds dropout and other training-time randomness fixed.

The loss is split into its two parts, which the gradient check and the sanity
checks need apart:

* data loss: the compiled loss (`compile(loss=...)`) on `y` and the prediction;
* regularization loss: weight regularizers, activity regularizers and
  `add_loss` terms (what Keras adds to the data loss during training).

Only the framework-neutral adapter names (`value_and_grad`, `to_numpy`) are
used, so this module works on every backend without importing one.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import keras
import numpy as np

from trainwatch.backends import get_backend

PARTS = ("total", "data", "regularization")


class LossParts(NamedTuple):
    """A loss split into data and regularization parts (numpy floats)."""

    total: float
    data: float
    regularization: float


class GradientResult(NamedTuple):
    """Loss parts and the gradient of one part for every trainable variable.

    Attributes:
        loss: The `LossParts` at the current variable values.
        gradients: One numpy array per `model.trainable_variables` entry, in
            that order; `None` where the backend reports no gradient (the
            loss does not depend on the variable: TensorFlow and PyTorch).
        part: Which part was differentiated: `"total"`, `"data"` or
            `"regularization"`.
    """

    loss: LossParts
    gradients: list
    part: str


class LayerTrace(NamedTuple):
    """One layer's output on a batch and the loss gradient with respect to it.

    Attributes:
        layer: The Keras layer.
        name: The layer's path (e.g. `"sequential/dense_1"`), unique in the model.
        output: The layer's output, shape `(batch, ...)` (or sampled, see
            `feature_indices`).
        output_gradient: d(loss)/d(output), same shape as `output`, or `None`
            when the loss does not depend on the output.
        feature_indices: `None` when `output` is complete; otherwise the flat
            indices of the per-example features that were kept (the output was
            too large and was sampled), and `output` is `(batch, k)`.
        feature_shape: The per-example shape of the full output (e.g.
            `(28, 28, 32)`), so that `feature_indices` can be unravelled.
    """

    layer: object
    name: str
    output: np.ndarray
    output_gradient: np.ndarray | None
    feature_indices: np.ndarray | None
    feature_shape: tuple | None = None


class ModelNotReady(ValueError):
    """The model cannot be evaluated yet (not built, or compiled without a loss).

    A problem of the model's set-up, not of trainwatch: the message says what
    to do.
    """


def check_model_ready(model) -> None:
    """Raises a clear error unless `model` is a built, compiled Keras model.

    Raises:
        TypeError: `model` is not a `keras.Model`.
        ModelNotReady: the model is not built or not compiled with a loss (a
            `ValueError`).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Expected a keras.Model (Sequential, Functional or subclassed). "
            f"Received: model={type(model).__name__}"
        )
    if not model.built:
        raise ModelNotReady(
            f"Model {model.name!r} is not built: its variables do not exist yet. "
            "Call it on a batch (`model(x[:1])`) or give it an `Input` before "
            "`fit`, or give trainwatch a probe batch, which builds it. "
            f"Received: model.built={model.built}"
        )
    has_loss = getattr(model, "_compile_loss", None) is not None
    if not has_loss and not _overrides_compute_loss(model):
        raise ModelNotReady(
            f"Model {model.name!r} has no loss: compile it first, e.g. "
            "`model.compile(optimizer='adam', loss='sparse_categorical_crossentropy')`."
            f" Received: model.compiled={getattr(model, 'compiled', False)}"
        )


def check_labels_given(model, y, argument="y") -> None:
    """Raises a clear `ValueError` if `y` is `None` but the model's loss needs it.

    A model compiled with a loss compares its outputs with labels; only a
    model that computes its own loss (`compute_loss` overridden) may do
    without them.
    """
    if y is not None or _overrides_compute_loss(model):
        return
    if getattr(model, "_compile_loss", None) is None:
        return
    raise ValueError(
        f"Model {model.name!r} is compiled with a loss, which needs labels, but "
        f"`{argument}` is None. Pass the labels of the examples as `fit` gets "
        f"them. Received: {argument}=None"
    )


def build_on_batch(model, batch) -> bool:
    """Builds an unbuilt model on a batch, as Keras's `fit` does on JAX and PyTorch.

    On TensorFlow, `fit` builds a subclassed model (one without an `Input`)
    only when it traces its first step, after `on_train_begin`: the checks
    that run there would find no variables. This builds it first, the way
    Keras builds it on the other backends (symbolically, no computation): the
    same layers make the same variables in the same order, so the weights
    are those `fit` would make.

    Args:
        model: A `keras.Model`.
        batch: `(x, y)` or `(x, y, sample_weight)` of training data (arrays or
            backend tensors), or `x` alone.

    Returns:
        `True` if the model is built now (or was already).

    Example:

    >>> import keras, numpy as np
    >>> class Net(keras.Model):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.dense = keras.layers.Dense(2)
    ...     def call(self, x):
    ...         return self.dense(x)
    >>> net = Net()
    >>> net.compile(loss="mse")
    >>> build_on_batch(net, (np.zeros((4, 3)), np.zeros((4, 2)))), len(net.weights)
    (True, 2)
    """
    if not isinstance(model, keras.Model) or model.built:
        return isinstance(model, keras.Model)
    if not isinstance(batch, (tuple, list)):
        batch = (batch,)
    symbolic_build = getattr(model, "_symbolic_build", None)  # private in Keras 3
    if symbolic_build is not None:
        try:
            symbolic_build(data_batch=tuple(batch))
        except Exception:  # else called on one example below
            pass
    if not model.built:
        x = batch[0]
        try:
            model(keras.tree.map_structure(lambda a: a[:1], x), training=False)
        except Exception:  # the checks then say it is not built
            return False
    return bool(model.built)


def _overrides_compute_loss(model) -> bool:
    return type(model).compute_loss is not keras.Model.compute_loss


def convert_batch(data, float_dtype=None):
    """Converts a (nested) batch to backend tensors.

    Args:
        data: Array, list/tuple/dict of arrays, or `None`.
        float_dtype: If given, floating arrays are cast to it (integer labels
            and token ids stay integers). Defaults to `None` (keep dtypes).

    Returns:
        The same structure of backend tensors.
    """
    if data is None:
        return None

    def convert(value):
        array = value
        if not hasattr(value, "dtype") or isinstance(value, np.ndarray):
            array = np.asarray(value)
            if float_dtype is not None and np.issubdtype(array.dtype, np.floating):
                array = array.astype(float_dtype)
            return keras.ops.convert_to_tensor(array)
        tensor = keras.ops.convert_to_tensor(value)
        if float_dtype is not None and keras.backend.is_float_dtype(tensor.dtype):
            tensor = keras.ops.cast(tensor, float_dtype)
        return tensor

    return keras.tree.map_structure(convert, data)


def _call_kwargs(model, training):
    if getattr(model, "_call_has_training_arg", False):
        return {"training": training}
    return {}


def _variable_values(variables):
    return get_backend().variable_values(variables)


_built_stand_ins: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _built_compile_loss(model, x, y, training):
    """The model's compiled loss, built, without building the model's own.

    `fit` builds the compiled loss itself when it is unbuilt, and that build
    draws one shuffle from the global random state (NumPy on JAX, PyTorch's
    generator on torch). Building the user's object here would make `fit`
    shuffle differently than without trainwatch, so an unbuilt loss is used
    through a built stand-in copy instead, also by a `compute_loss` override
    that calls the compiled loss (see `make_loss_function`).
    """
    compile_loss = getattr(model, "_compile_loss", None)
    if compile_loss is None or compile_loss.built:
        return compile_loss
    stand_in = _built_stand_ins.get(compile_loss)
    if stand_in is not None:
        return stand_in
    stand_in = _unbuilt_copy(compile_loss)
    y_pred, _ = model.stateless_call(
        _variable_values(model.trainable_variables),
        _variable_values(model.non_trainable_variables),
        x,
        **_call_kwargs(model, training),
    )
    stand_in.build(y, y_pred)
    _built_stand_ins[compile_loss] = stand_in
    return stand_in


def _unbuilt_copy(compile_loss):
    """A new, unbuilt compiled loss made from the same arguments.

    Not a copy of the object's attributes: its per-output loss trackers
    (`Mean` metrics that `build` adds to a list it shares with its `Tracker`)
    would be the user's, so building the copy added trackers to the user's
    loss, and `fit` then reported 0.0 for each output's loss of a
    multi-output model on TensorFlow (it read the copy's, never updated).
    """
    try:
        return type(compile_loss)(
            compile_loss._user_loss,
            loss_weights=compile_loss._user_loss_weights,
            reduction=compile_loss.reduction,
            output_names=compile_loss.output_names,
        )
    except (AttributeError, TypeError):  # another Keras: a copy of the object
        stand_in = object.__new__(type(compile_loss))  # copy.copy would pickle
        stand_in.__dict__.update(compile_loss.__dict__)
        return stand_in


def make_loss_function(model, x, y, sample_weight=None, part="total", training=False):
    """Builds `fn(trainable_values) -> (loss_part, aux)` for differentiation.

    Args:
        model: A built, compiled Keras model.
        x, y, sample_weight: The batch, already converted with `convert_batch`.
        part: Which loss `fn` returns: `"total"`, `"data"` or
            `"regularization"`. Defaults to `"total"`.
        training: Run layers in training mode. Defaults to `False` (dropout off).

    Returns:
        A function of a list of trainable-variable values that returns the
        chosen scalar and an aux tuple `(total, data, regularization, y_pred)`.
    """
    loss_of_batch = batch_loss_function(model, x, y, part, training)
    non_trainable = _variable_values(model.non_trainable_variables)

    def loss_fn(trainable_values):
        return loss_of_batch(trainable_values, non_trainable, x, y, sample_weight)

    return loss_fn


def _fresh(sample_weight):
    """A copy of the sample weights, for one loss evaluation.

    Keras's `losses.loss.apply_mask` multiplies them in place
    (`sample_weight *= mask`) when the model's output carries a mask
    (`mask_zero=True`, `Masking`): on PyTorch that scaled the caller's tensor
    by `total / valid` steps at every call, so a gradient check's later
    evaluations saw other weights (a loss growing 1.2x a call, finite
    differences of 1e15).
    """
    if sample_weight is None:
        return None
    return keras.tree.map_structure(
        lambda weights: None if weights is None else keras.ops.copy(weights),
        sample_weight,
    )


def batch_loss_function(model, x, y, part="total", training=False):
    """`fn(trainable, non_trainable, x, y, sample_weight) -> (loss_part, aux)`.

    The loss of `make_loss_function` with the variable values and the batch as
    arguments, so that one compiled function serves every call with the same
    shapes (`compiled_gradient_function`). `x` and `y` are only used to build
    the compiled loss when it is unbuilt.

    Args:
        model: A built, compiled Keras model.
        x, y: A batch (converted with `convert_batch`).
        part: `"total"`, `"data"` or `"regularization"`. Defaults to `"total"`.
        training: Run layers in training mode. Defaults to `False`.

    Returns:
        The function; its aux is `(total, data, regularization, y_pred)`.
    """
    if part not in PARTS:
        raise ValueError(f"Expected part in {PARTS}. Received: part={part!r}")
    compile_loss = _built_compile_loss(model, x, y, training)
    kwargs = _call_kwargs(model, training)
    custom_loss = _overrides_compute_loss(model) or model._compile_loss is None

    def loss_of_batch(trainable_values, non_trainable, x, y, sample_weight):
        sample_weight = _fresh(sample_weight)
        y_pred, _, extra_losses = model.stateless_call(
            trainable_values, non_trainable, x, return_losses=True, **kwargs
        )
        mapping = list(zip(model.trainable_variables, trainable_values))
        mapping += list(zip(model.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping):
            regularization = None
            for loss in extra_losses:
                term = model._aggregate_additional_loss(loss)
                regularization = (
                    term if regularization is None else regularization + term
                )
            if custom_loss:
                model._losses_override = list(extra_losses)
                # A `compute_loss` override that calls the compiled loss
                # (`super().compute_loss`) gets the built stand-in too.
                own_loss = model._compile_loss
                if compile_loss is not None:
                    model._compile_loss = compile_loss
                try:
                    total = model._compute_loss(
                        x, y, y_pred, sample_weight=sample_weight, training=training
                    )
                finally:
                    model._losses_override = []
                    model._compile_loss = own_loss
                if regularization is None:
                    regularization = keras.ops.zeros((), dtype=total.dtype)
                data = total - regularization
            else:
                data = compile_loss(y, y_pred, sample_weight)
                if regularization is None:
                    regularization = keras.ops.zeros((), dtype=data.dtype)
                regularization = keras.ops.cast(regularization, data.dtype)
                total = data + regularization
        chosen = {"total": total, "data": data, "regularization": regularization}[part]
        return chosen, (total, data, regularization, y_pred)

    return loss_of_batch


# Compiled functions are kept on the model they belong to (JAX). Compiling
# costs about as much as one eager check of a small model, but a first check
# in a new process runs ~100 primitives eagerly, each compiled on first use
# (measured, digits MLP: 3.9 s eager against 0.7 s compiled), and every later
# check of the same model reuses the compiled code (0.3 s against 0.02 s).
_COMPILED_ATTRIBUTE = "_trainwatch_compiled_functions"


def compiles_per_model() -> bool:
    """Whether the backend compiles the check's functions once per model (JAX)."""
    return bool(getattr(get_backend(), "COMPILE_PER_MODEL", False))


class _CompiledFunctions(dict):
    """The compiled functions of one model; its copies and pickles start empty."""

    def __copy__(self):
        return _CompiledFunctions()

    def __deepcopy__(self, memo):
        return _CompiledFunctions()

    def __reduce__(self):
        return (_CompiledFunctions, ())


def _compiled_functions(model) -> _CompiledFunctions:
    # On the model itself (not in a weak map, whose values would keep their
    # model alive), set past Keras's attribute tracking.
    functions = model.__dict__.get(_COMPILED_ATTRIBUTE)
    if functions is None:
        functions = _CompiledFunctions()
        object.__setattr__(model, _COMPILED_ATTRIBUTE, functions)
    return functions


def _compiled(model, key, make):
    """The model's compiled function under `key`, made on first use; `None`
    once compiling it failed (`_give_up_compiling`)."""
    functions = _compiled_functions(model)
    if key not in functions:
        functions[key] = make()
    return functions[key]


def _give_up_compiling(model, key):
    """Remembers that `key` cannot be compiled for `model`: eager from now on."""
    _compiled_functions(model)[key] = None


def compiled_gradient_function(model, x, y, parts=("total",), training=False):
    """`fn(trainable_values, x, y, sample_weight) -> [(value, aux, grads), ...]`.

    One compiled function for the gradients of all `parts`, compiled once per
    model, parts and mode and reused by every later call with the same shapes
    and dtypes: for a model checked again and again, such as the float64
    shadow a gradient check keeps. The non-trainable values are read from the
    model at each call. Should it fail to compile or run compiled (Python-side
    work on the values), it runs eagerly, for this model from then on; a real
    error then raises from there.

    Args:
        model: A built, compiled Keras model.
        x, y: A batch, to build an unbuilt compiled loss.
        parts: Loss parts, each of `"total"`, `"data"`, `"regularization"`.
            Defaults to `("total",)`.
        training: Defaults to `False`.
    """
    backend = get_backend()
    parts = tuple(parts)
    fns = [batch_loss_function(model, x, y, part, training) for part in parts]
    key = ("gradient", parts, bool(training))

    def gradient_fn(trainable_values, x, y, sample_weight=None):
        values = list(trainable_values)
        non_trainable = _variable_values(model.non_trainable_variables)
        compiled = _compiled(model, key, lambda: backend.jit_values_and_grads(fns))
        if compiled is not None:
            try:
                results = compiled(values, non_trainable, x, y, sample_weight)
                return [(value, aux, grads) for (value, aux), grads in results]
            except Exception:
                _give_up_compiling(model, key)
        return [
            backend.value_and_grad(
                lambda v, fn=fn: fn(v, non_trainable, x, y, sample_weight), values
            )
            for fn in fns
        ]

    return gradient_fn


def compiled_loss_function(model, x, y, part="total", training=False):
    """`fn(trainable_values, x, y, sample_weight) -> (loss_part, aux)`, compiled.

    Like `compiled_gradient_function` (eager where compiling fails), without
    the gradient.
    """
    backend = get_backend()
    loss_of_batch = batch_loss_function(model, x, y, part, training)
    key = ("loss", part, bool(training))

    def make():
        return getattr(backend, "jit_quick", backend.jit)(loss_of_batch)

    def loss_fn(trainable_values, x, y, sample_weight=None):
        args = (list(trainable_values), _variable_values(model.non_trainable_variables))
        compiled = _compiled(model, key, make)
        if compiled is not None:
            try:
                return compiled(*args, x, y, sample_weight)
            except Exception:
                _give_up_compiling(model, key)
        return loss_of_batch(*args, x, y, sample_weight)

    return loss_fn


def _loss_parts_from_aux(aux) -> LossParts:
    to_numpy = get_backend().to_numpy
    total, data, regularization, _ = aux
    return LossParts(
        float(to_numpy(total)), float(to_numpy(data)), float(to_numpy(regularization))
    )


def compute_loss_parts(
    model, x, y, sample_weight=None, overrides=None, training=False, compiled=False
) -> LossParts:
    """Evaluates the loss (data and regularization parts) without gradients.

    Args:
        model: A built, compiled Keras model.
        x, y, sample_weight: The batch (converted with `convert_batch`).
        overrides: Optional `{index: value}` replacing the values of some
            `model.trainable_variables` (by index) for this evaluation only,
            e.g. a perturbed copy for finite differences. Values may be numpy
            arrays; they are cast to the variable's dtype. Defaults to `None`.
        training: Defaults to `False` (inference mode).
        compiled: Use the function compiled once per model
            (`compiled_loss_function`), where `compiles_per_model()`: for a
            loss evaluated again and again. Defaults to `False`.

    Returns:
        `LossParts` of numpy floats.

    Example:

    >>> parts = compute_loss_parts(model, *convert_batch((x, y)))  # doctest: +SKIP
    >>> parts.total == parts.data + parts.regularization  # doctest: +SKIP
    """
    values = trainable_values_with(model, overrides)
    if compiled and compiles_per_model():
        loss_fn = compiled_loss_function(model, x, y, "total", training)
        _, aux = loss_fn(values, x, y, sample_weight)
    else:
        loss_fn = make_loss_function(model, x, y, sample_weight, "total", training)
        _, aux = loss_fn(values)
    return _loss_parts_from_aux(aux)


def trainable_values_with(model, overrides=None) -> list:
    """The trainable variables' current values, some replaced by `overrides`."""
    values = _variable_values(model.trainable_variables)
    for index, value in (overrides or {}).items():
        variable = model.trainable_variables[index]
        values[index] = keras.ops.convert_to_tensor(
            np.asarray(value).astype(keras.backend.standardize_dtype(variable.dtype))
        )
    return values


def compute_gradients(
    model,
    x,
    y,
    sample_weight=None,
    part="total",
    training=False,
    overrides=None,
    compiled=False,
) -> GradientResult:
    """Loss parts and the backprop gradient of one part for every trainable variable.

    Args:
        model: A built, compiled Keras model.
        x, y, sample_weight: The batch (converted with `convert_batch`).
        part: `"total"`, `"data"` or `"regularization"`. Defaults to `"total"`.
        training: Defaults to `False` (inference mode: dropout off).
        overrides: As in `compute_loss_parts`. Defaults to `None`.
        compiled: Use the function compiled once per model
            (`compiled_gradient_function`; only where `compiles_per_model()`).
            Defaults to `False`.

    Returns:
        A `GradientResult`; `gradients[i]` belongs to
        `model.trainable_variables[i]`.

    Example:

    >>> xb, yb = convert_batch(x), convert_batch(y)  # doctest: +SKIP
    >>> result = compute_gradients(model, xb, yb, part="data")  # doctest: +SKIP
    >>> len(result.gradients) == len(model.trainable_variables)  # doctest: +SKIP
    True
    """
    if compiled:
        [result] = compute_gradients_of_parts(
            model, x, y, sample_weight, (part,), training, overrides
        )
        return result
    backend = get_backend()
    values = trainable_values_with(model, overrides)
    loss_fn = make_loss_function(model, x, y, sample_weight, part, training)
    _, aux, grads = backend.value_and_grad(loss_fn, values)
    return GradientResult(_loss_parts_from_aux(aux), grads, part)


def compute_gradients_of_parts(
    model, x, y, sample_weight=None, parts=PARTS, training=False, overrides=None
) -> list:
    """`compute_gradients` of several parts in one compiled pass (JAX).

    Only where `compiles_per_model()`; compiled once per model and parts
    (eager where compiling fails, see `compiled_gradient_function`).

    Returns:
        One `GradientResult` per part, in the order of `parts`.
    """
    backend = get_backend()
    values = trainable_values_with(model, overrides)
    gradient_fn = compiled_gradient_function(model, x, y, parts, training)
    return [
        GradientResult(
            _loss_parts_from_aux(aux), [backend.to_numpy(g) for g in grads], part
        )
        for part, (_, aux, grads) in zip(
            parts, gradient_fn(values, x, y, sample_weight)
        )
    ]


# Keras layers that apply an activation, by class name.
_ACTIVATION_LAYERS = {
    "ReLU": "relu",
    "LeakyReLU": "leaky_relu",
    "PReLU": "prelu",
    "ELU": "elu",
    "Softmax": "softmax",
}


def activation_name(activation):
    """Name of an activation function or layer, `None` for none/linear.

    Example:

    >>> activation_name(keras.activations.tanh), activation_name("linear")
    ('tanh', None)
    """
    if activation is None:
        return None
    if isinstance(activation, keras.layers.Layer):
        return activation_layer_name(activation)
    name = activation if isinstance(activation, str) else None
    name = name or getattr(activation, "__name__", None) or type(activation).__name__
    return None if name == "linear" else name


def activation_layer_name(layer):
    """The activation a layer applies, or `None` if it is no activation layer.

    Example:

    >>> activation_layer_name(keras.layers.ReLU())
    'relu'
    """
    if isinstance(layer, keras.layers.Activation):
        return activation_name(layer.activation) or "linear"
    for cls in type(layer).__mro__:
        if cls.__name__ in _ACTIVATION_LAYERS and cls.__module__.startswith("keras"):
            return _ACTIVATION_LAYERS[cls.__name__]
    return None


# Keras's dropout layers, by class name (`model_copy` zeroes their rates too).
DROPOUT_CLASSES = (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "AlphaDropout",
    "GaussianDropout",
)


def dropout_rates(model) -> list:
    """`(layer path, rate)` of every Keras dropout layer in `model`, in order.

    Layers whose `rate` is not a number (a custom subclass) are left out.
    """
    rates = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        keras_class = any(
            cls.__name__ in DROPOUT_CLASSES and cls.__module__.startswith("keras")
            for cls in type(layer).__mro__
        )
        rate = getattr(layer, "rate", None)
        if keras_class and isinstance(rate, (int, float)):
            rates.append((getattr(layer, "path", None) or layer.name, float(rate)))
    return rates


def leaf_layers(model) -> list:
    """Every layer reached from `model` that has no sublayers, in model order.

    Nested models and layers that hold layers are walked into; `InputLayer`s
    are skipped. Recurrent layers (`keras.layers.RNN`: LSTM, GRU, ...) count
    as leaves: their cells run inside a loop (`lax.scan` on JAX), where an
    output cannot be captured.
    """
    layers = model._flatten_layers(include_self=False, recursive=True)
    in_loops = set()
    for layer in layers:
        if isinstance(layer, keras.layers.RNN):
            in_loops.update(id(s) for s in layer._flatten_layers(include_self=False))
    leaves = []
    for layer in layers:
        if isinstance(layer, keras.layers.InputLayer) or id(layer) in in_loops:
            continue
        is_rnn = isinstance(layer, keras.layers.RNN)
        if not is_rnn and layer._flatten_layers(include_self=False, recursive=False):
            continue
        leaves.append(layer)
    return leaves


def _layer_name(layer) -> str:
    return getattr(layer, "path", None) or layer.name


def _first_float_index(flat_outputs):
    for i, tensor in enumerate(flat_outputs):
        if hasattr(tensor, "dtype") and keras.backend.is_float_dtype(
            keras.backend.standardize_dtype(tensor.dtype)
        ):
            if len(tensor.shape) >= 1:
                return i
    return None


class _LayerCapture:
    """Patches layers' `call` to record outputs and add a zero probe tensor.

    Adding a zero tensor `probe` to a layer's output leaves the forward pass
    unchanged, and d(loss)/d(probe) equals d(loss)/d(output): so one backward
    pass yields the gradient with respect to every layer's output, on any
    backend and any model type (Sequential, Functional, subclassed).

    A layer whose output is sampled gets a probe of the sampled shape
    `(batch, k)`, spread onto the output by a gather (`inverse[j]` is the probe
    column of feature `j`, or the extra zero column `k` for a feature not
    kept): its gradient is then only the kept features, on the device.
    """

    def __init__(self, layers):
        self.layers = layers
        self.probes = {}
        self.inverses = {}
        self.outputs = {}

    def __enter__(self):
        for layer in self.layers:
            original = layer.call
            layer.__dict__["call"] = self._wrap(layer, original)
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            layer.__dict__.pop("call", None)
        return False

    def _wrap(self, layer, original):
        key = id(layer)

        def call(*args, **kwargs):
            outputs = original(*args, **kwargs)
            if key in self.outputs:  # shared layer: record its first call only
                return outputs
            flat = keras.tree.flatten(outputs)
            index = _first_float_index(flat)
            if index is None:
                return outputs
            tensor = flat[index]
            probe = self.probes.get(key)
            if probe is not None:
                probe = keras.ops.cast(probe, tensor.dtype)
                inverse = self.inverses.get(key)
                if inverse is not None:
                    zero = keras.ops.zeros_like(probe[:, :1])
                    padded = keras.ops.concatenate([probe, zero], axis=1)
                    spread = keras.ops.take(padded, inverse, axis=1)
                    probe = keras.ops.reshape(spread, keras.ops.shape(tensor))
                tensor = tensor + probe
                flat = list(flat)
                flat[index] = tensor
                outputs = keras.tree.pack_sequence_as(outputs, flat)
            self.outputs[key] = tensor
            return outputs

        return call


def _sample_features(feature_shape, max_features, rng):
    """Sorted flat feature indices to keep, or `None` to keep them all.

    Whole rows of the last axis (all channels of a position) are kept when
    they fit, so that per-channel statistics see every channel.
    """
    size = int(np.prod(feature_shape, dtype=np.int64))
    if size <= max_features:
        return None
    channels = int(feature_shape[-1]) if feature_shape else 1
    if 0 < channels <= max_features:
        positions = np.sort(
            rng.choice(size // channels, size=max_features // channels, replace=False)
        )
        return (positions[:, None] * channels + np.arange(channels)).ravel()
    return np.sort(rng.choice(size, size=max_features, replace=False))


def layer_outputs_and_gradients(
    model,
    x,
    y,
    sample_weight=None,
    layers=None,
    max_features=65536,
    training=False,
    seed=0,
    return_weight_gradients=False,
):
    """Every layer's output on a batch and the gradient of the loss w.r.t. it.

    Works for Sequential, Functional (several inputs and outputs) and
    subclassed models, nested models included: layers are intercepted at call
    time, not read from a graph.

    Args:
        model: A built, compiled Keras model.
        x, y, sample_weight: The batch (converted with `convert_batch`).
        layers: Layers to capture. Defaults to `leaf_layers(model)`.
        max_features: Per-example features kept per layer; a larger output is
            sampled on the device, before the copy to the host (the same
            feature positions for every example, so a unit that is zero for
            every example stays visible; all channels of a sampled position are
            kept when they fit). Defaults to 65536.
        training: Defaults to `False` (inference mode).
        seed: Seed of the feature sampling. Defaults to 0.
        return_weight_gradients: Also return the gradient of the total loss
            for every trainable variable, from the same backward pass.
            Defaults to `False`.

    Returns:
        One `LayerTrace` per captured layer that produced a float output, in
        call order. A layer that was not called in the forward pass is absent.
        With `return_weight_gradients=True`, a tuple `(traces,
        GradientResult)` (`part="total"`).

    Example:

    >>> traces = layer_outputs_and_gradients(model, xb, yb)  # doctest: +SKIP
    >>> [t.name for t in traces]  # doctest: +SKIP
    ['sequential/dense', 'sequential/dense_1']
    """
    backend = get_backend()
    layers = leaf_layers(model) if layers is None else list(layers)
    loss_fn = make_loss_function(model, x, y, sample_weight, "total", training)
    values = _variable_values(model.trainable_variables)
    plan_key = (
        _batch_signature((x, y, sample_weight)),
        tuple(id(layer) for layer in layers),
        bool(training),
    )
    plan = _plans.get(model, {}).get(plan_key)

    rng = np.random.default_rng(seed)
    compiled = compiles_per_model()
    try:
        with _LayerCapture(layers) as capture:
            if plan is None:
                _shape_pass(backend, capture, loss_fn, values, compiled)
                shapes = {k: tuple(t.shape) for k, t in capture.outputs.items()}
                order = list(capture.outputs)
                capture.outputs = {}
                _plans.setdefault(model, {})[plan_key] = (order, shapes)
            else:
                order, shapes = plan
        traced = None
        if compiled:
            traced = _compiled_trace_with_probes(
                model, layers, x, y, sample_weight, training, values,
                (plan_key, order, shapes, max_features, seed),
            )  # fmt: skip
        if traced is None:
            with _LayerCapture(layers) as capture:
                traced = _trace_with_probes(
                    backend, capture, loss_fn, values, order, shapes, max_features, rng
                )
    except Exception:
        if plan is None:
            raise
        # The remembered plan did not fit this pass (data-dependent control
        # flow ran other layers, or gave other shapes): forget it and trace
        # again with a shape pass; a real error then raises from there.
        _plans.pop(model, None)
        return layer_outputs_and_gradients(
            model,
            x,
            y,
            sample_weight,
            layers,
            max_features,
            training,
            seed,
            return_weight_gradients,
        )
    order, shapes, indices, outputs, aux, grads = traced
    n_values = len(values)

    by_id = {id(layer): layer for layer in layers}
    traces = []
    for key, output, grad in zip(order, outputs, grads[n_values:]):
        layer = by_id[key]
        traces.append(
            LayerTrace(
                layer,
                _layer_name(layer),
                backend.to_numpy(output),
                grad,
                indices[key],
                shapes[key][1:],
            )
        )
    if not return_weight_gradients:
        return traces
    return traces, GradientResult(
        _loss_parts_from_aux(aux), list(grads[:n_values]), "total"
    )


def _shape_pass(backend, capture, loss_fn, values, abstract):
    """Runs the forward pass that records which layers run and their shapes.

    With `abstract`, on shapes only where the backend can (nothing to compile
    on JAX); a model whose path depends on its data's values cannot be traced
    that way and runs for real.
    """
    abstract_call = getattr(backend, "abstract_call", None) if abstract else None
    if abstract_call is not None:
        try:
            abstract_call(loss_fn, values)
            return
        except Exception:
            capture.outputs = {}
    loss_fn(values)


# Output shapes of the captured layers, by model, then by batch signature and
# layers: the shape pass runs once per model and probe shape, not every probe.
_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _batch_signature(data):
    return tuple(
        (tuple(t.shape), str(t.dtype))
        for t in keras.tree.flatten(data)
        if hasattr(t, "shape")
    )


def _compiled_trace_with_probes(
    model, layers, x, y, sample_weight, training, values, plan
):
    """`_trace_with_probes` compiled once per model and plan (JAX), or `None`.

    The probes, the sampled features and the layer capture are made once and
    kept with the compiled pass; variable values and the batch are its
    arguments. `None` when the pass cannot be compiled (eager from then on).
    """
    backend = get_backend()
    plan_key, order, shapes, max_features, seed = plan

    def make():
        capture = _LayerCapture(layers)
        rng = np.random.default_rng(seed)
        probes, indices, gathers = _make_probes(
            capture, order, shapes, max_features, rng
        )
        loss_of_batch = batch_loss_function(model, x, y, "total", training)
        n_values = len(values)

        def fn(args, non_trainable, x, y, sample_weight):  # runs when traced
            capture.outputs = {}  # none left from an earlier trace
            capture.probes = dict(zip(order, args[n_values:]))
            loss, aux = loss_of_batch(
                args[:n_values], non_trainable, x, y, sample_weight
            )
            outputs = _captured_outputs(capture, order, shapes, gathers)
            return loss, (outputs, aux)

        return [capture, backend.jit_values_and_grads([fn]), probes, indices]

    key = ("probe", plan_key, max_features, seed)
    entry = _compiled(model, key, make)
    if entry is None:
        return None
    capture, compiled, probes, indices = entry
    non_trainable = _variable_values(model.non_trainable_variables)
    try:
        with capture:  # layers patched only matter while tracing
            [((_, (outputs, aux)), grads)] = compiled(
                list(values) + probes, non_trainable, x, y, sample_weight
            )
    except Exception:
        _give_up_compiling(model, key)
        return None
    finally:
        capture.probes = {}
    grads = [backend.to_numpy(g) for g in grads]
    return order, shapes, indices, outputs, aux, grads


def _make_probes(capture, order, shapes, max_features, rng):
    """Zero probes (sampled where outputs are large), their indices and gathers."""
    probes, indices, gathers = [], {}, {}
    for key in order:
        batch, feature_shape = shapes[key][0], shapes[key][1:]
        kept = _sample_features(feature_shape, max_features, rng)
        indices[key] = kept
        if kept is None:
            shape = shapes[key]
        else:
            shape = (batch, len(kept))
            size = int(np.prod(feature_shape, dtype=np.int64))
            inverse = np.full(size, len(kept), dtype="int32")
            inverse[kept] = np.arange(len(kept), dtype="int32")
            capture.inverses[key] = keras.ops.convert_to_tensor(inverse)
            gathers[key] = keras.ops.convert_to_tensor(kept.astype("int32"))
        probes.append(keras.ops.zeros(shape, dtype=keras.backend.floatx()))
    return probes, indices, gathers


def _captured_outputs(capture, order, shapes, gathers):
    outputs = []
    for key in order:
        output = capture.outputs[key]
        if key in gathers:
            output = keras.ops.reshape(output, (shapes[key][0], -1))
            output = keras.ops.take(output, gathers[key], axis=1)
        outputs.append(output)
    return outputs


def _trace_with_probes(
    backend, capture, loss_fn, values, order, shapes, max_features, rng
):
    """One forward and backward pass with a (sampled) zero probe on every layer.

    Returns:
        `(order, shapes, indices, outputs, aux, grads)`; `grads` holds the
        variables' gradients, then the probes'.
    """
    probes, indices, gathers = _make_probes(capture, order, shapes, max_features, rng)
    n_values = len(values)

    def fn(args):
        capture.probes = dict(zip(order, args[n_values:]))
        loss, aux = loss_fn(args[:n_values])
        return loss, (_captured_outputs(capture, order, shapes, gathers), aux)

    _, (outputs, aux), grads = backend.value_and_grad(fn, values + probes)
    capture.probes = {}
    return order, shapes, indices, outputs, aux, grads
