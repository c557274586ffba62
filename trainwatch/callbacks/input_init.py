"""`InputAndInitChecks`: are the inputs normalized and the weights well scaled?

Runs once, at train begin, and costs one forward pass on a small batch:

* Inputs: per-feature (per-channel for images) mean, std and range of the
  data given; `inputs_not_normalized` when scales are far from 1, differ by
  orders of magnitude between features or sit far from zero, `inputs_constant`
  for constant features (see `trainwatch.rules.inputs` for the thresholds).
  Integer inputs are token ids for an embedding and are skipped, except
  `uint8` (image bytes) and integers fed to a float `keras.Input`.
* Initialization: each trainable Dense/Conv kernel's variance against the He
  or Glorot reference for the activation that follows it, and the RMS of the
  signal entering each of those layers on the batch, layer after layer;
  `init_scale_unusual` when either is off by orders of magnitude (see
  `trainwatch.rules.initialization`). Skipped when the optimizer has already
  taken steps (a resumed or pretrained model is not "at init").
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np

from trainwatch.backends import model_functions
from trainwatch.backends.model_functions import (
    activation_layer_name as _activation_layer_name,
)
from trainwatch.backends.model_functions import activation_name as _activation_name
from trainwatch.callbacks.base import Monitor
from trainwatch.numerics import init_stats, input_stats
from trainwatch.rules import initialization, inputs

# Examples used for the forward pass (the input statistics read more).
FORWARD_EXAMPLES = 64


def _layer_classes(*names):
    """The `keras.layers` classes among `names` (ones this Keras lacks are left out)."""
    return tuple(
        getattr(keras.layers, name) for name in names if hasattr(keras.layers, name)
    )


_WEIGHTED = _layer_classes(
    "Dense",
    "EinsumDense",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
)
_NORMALIZATION = _layer_classes(
    "BatchNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "UnitNormalization",
    "RMSNormalization",
)
# Preprocessing layers at the start of a model that compute the same thing in
# training and inference: the inputs are judged as they come out of them.
_INPUT_PREPROCESSING = _layer_classes("Normalization", "Rescaling")
# A batch normalization first in the model standardizes each input feature
# with the statistics of the batch: its inputs need no normalization.
_INPUT_STANDARDIZING = _layer_classes("BatchNormalization")
# Layers that pass the signal on without changing which activation follows.
_PASS_THROUGH = _layer_classes(
    "Dropout",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Flatten",
    "Reshape",
    "Permute",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
    "Cropping1D",
    "Cropping2D",
    "Cropping3D",
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
)


class InputAndInitChecks(Monitor):
    """Checks input normalization and weight initialization at train begin.

    Writes `inputs/feature_mean_abs_max`, `inputs/feature_std_max`,
    `inputs/feature_std_min`, `inputs/rms` (per input as
    `inputs/<name>/...` when there are several), `init/variance_ratio/<kernel
    path>` (variance over the He reference for ReLU-family activations, over
    1/fan_in otherwise) and `init/signal_rms/<layer>` (RMS of the signal
    entering each Dense/Conv layer), and reports `inputs_not_normalized`,
    `inputs_constant` and `init_scale_unusual` findings.

    Args:
        log_dir: Where to write TensorBoard logs, or `None` for none.
            Defaults to `None`.
        data: The training inputs `x`, or `(x, y)` / `(x, y, sample_weight)`
            as given to `fit` (only `x` is read). Several inputs as a list or
            dict. A few hundred to a few thousand examples of the training set
            are plenty; statistics read at most 10 million numbers per input
            and the forward pass uses the first 64 examples. `None` checks
            the weights' variance only. Defaults to `None`.
        verbose: 0 silent, 1 print new warnings. Defaults to 1.

    Raises:
        TypeError: `data` is not arrays (or a list, dict or tuple of them).
        ValueError: an input has no batch dimension, or the inputs disagree
            on the number of examples.

    Example:

    ```python
    checks = trainwatch.InputAndInitChecks("runs/exp1", data=x_train[:1000])
    model.fit(x_train, y_train, epochs=5, callbacks=[checks])
    ```
    """

    def __init__(self, log_dir=None, data=None, verbose=1):
        super().__init__(log_dir=log_dir, verbose=verbose)
        self._x = _inputs_of(data)
        self._done = False

    # -- hooks ----------------------------------------------------------------
    def on_train_begin(self, logs=None):
        first_time = not self._done
        super().on_train_begin(logs)  # keeps the step, runs `begin` (inputs)
        if first_time:
            self.guard("init_checks", self._check_initialization)

    def build_batch(self):
        return None if self._x is None else (self._x,)

    def begin(self):
        if self._done:
            return
        self._done = True
        if self._x is not None:
            self._check_inputs()

    # -- inputs -----------------------------------------------------------------
    def _check_inputs(self):
        model = self._model
        names, arrays = _named_inputs(self._x, model)
        declared = _declared_dtypes(model, self._x, names)
        channels_first = keras.config.image_data_format() == "channels_first"
        inside = _model_layer_ids(model)
        consumers = _input_consumers(model, self._x, names, inside)
        stats = []
        for name, array in zip(names, arrays):
            if _is_token_ids(array, declared.get(name)):
                continue
            array = _as_the_model_sees_it(array, consumers.get(name), inside)
            if array is None:  # the model standardizes this input itself
                continue
            stats.append(
                input_stats.summarize_input(
                    array, name=name, channels_first=channels_first
                )
            )
        self._write_input_scalars(stats)
        for finding in inputs.input_findings(stats):
            self.report_finding(finding)

    def _write_input_scalars(self, stats):
        writer = self.context.writer("train")
        if writer is None or not stats:
            return
        values = {}
        for s in stats:
            prefix = "inputs" if len(stats) == 1 else f"inputs/{s.name}"
            graded = s.graded
            values[f"{prefix}/feature_mean_abs_max"] = float(np.max(np.abs(s.mean)))
            if graded.any():
                values[f"{prefix}/feature_std_max"] = float(s.std[graded].max())
                values[f"{prefix}/feature_std_min"] = float(s.std[graded].min())
                values[f"{prefix}/rms"] = input_stats.overall_rms(s)
        if len(stats) > 1:
            values["inputs/feature_mean_abs_max"] = max(
                float(np.max(np.abs(s.mean))) for s in stats
            )
        writer.scalars(values, self.context.step)

    # -- initialization ---------------------------------------------------------
    def _check_initialization(self):
        model = self._model
        if not getattr(model, "built", False) or _has_trained(model):
            return
        layers = _checked_layers(model)
        kernels = []
        for layer in layers:
            activation = _activation_after(layer)
            if activation is None:  # a normalization layer rescales its output
                continue
            kernels.append(
                init_stats.kernel_init_stats(
                    layer.kernel.path,
                    keras.ops.convert_to_numpy(layer.kernel.value),
                    activation,
                )
            )
        gains = []
        if self._x is not None and layers:
            signal = _signal_entering(model, self._x, layers)
            gains = init_stats.signal_gains(signal)
        writer = self.context.writer("train")
        if writer is not None:
            values = {f"init/variance_ratio/{k.path}": k.ratio for k in kernels}
            values.update({f"init/signal_rms/{name}": rms for name, rms, _ in gains})
            if values:
                writer.scalars(values, self.context.step)
        heads = [layer.kernel.path for layer in _heads(layers)]
        for finding in initialization.kernel_findings(kernels, heads=heads):
            self.report_finding(finding)
        for finding in initialization.signal_findings(gains):
            self.report_finding(finding)


# -- data ---------------------------------------------------------------------


def _inputs_of(data):
    """`x` out of `data`, as numpy arrays in the same structure (validated)."""
    if data is None:
        return None
    x = data
    if isinstance(data, tuple):
        if not 1 <= len(data) <= 3:
            raise TypeError(
                "Expected `data` as x, (x,), (x, y) or (x, y, sample_weight); pass "
                "several inputs as a list or dict. "
                f"Received: data=tuple of length {len(data)}"
            )
        x = data[0]
    if isinstance(x, dict):
        x = {key: _as_array(value, f"data[{key!r}]") for key, value in x.items()}
    elif isinstance(x, list):
        x = [_as_array(value, f"data[{i}]") for i, value in enumerate(x)]
    else:
        x = _as_array(x, "data")
    leaves = keras.tree.flatten(x)
    if not leaves:
        raise ValueError(f"Expected at least one input array. Received: data={data!r}")
    sizes = {leaf.shape[0] for leaf in leaves}
    if len(sizes) > 1:
        raise ValueError(
            "Expected every input in `data` to have the same number of examples. "
            f"Received: data with batch sizes {sorted(sizes)}"
        )
    return x


def _as_array(value, name):
    try:
        array = np.asarray(value)
    except Exception:
        try:
            array = np.asarray(keras.ops.convert_to_numpy(value))
        except Exception as error:
            raise TypeError(
                f"Expected `{name}` to be an array (numpy or a backend tensor). "
                f"Received: {name}={type(value).__name__}"
            ) from error
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == bool
    ):
        raise TypeError(
            f"Expected `{name}` to hold numbers. Received: {name}.dtype={array.dtype}"
        )
    if array.ndim < 1 or array.shape[0] < 1:
        raise ValueError(
            f"Expected `{name}` to have a batch dimension with at least one example. "
            f"Received: {name}.shape={array.shape}"
        )
    return array


def _model_input_tensors(model):
    with contextlib.suppress(Exception):
        tensors = getattr(model, "inputs", None)
        if tensors:
            return keras.tree.flatten(tensors)
    return []


def _useful_name(tensor):
    name = getattr(tensor, "name", None)
    if not name or name.startswith("keras_tensor"):
        return None
    return name


def _named_inputs(x, model):
    """`(names, arrays)` of the inputs, named as findings will call them."""
    if isinstance(x, dict):
        return list(map(str, x)), list(x.values())
    tensors = _model_input_tensors(model)
    if isinstance(x, list):
        names = [f"inputs[{i}]" for i in range(len(x))]
        if len(tensors) == len(x):
            names = [_useful_name(t) or n for t, n in zip(tensors, names)]
        return names, list(x)
    name = _useful_name(tensors[0]) if len(tensors) == 1 else None
    return [name or "inputs"], [x]


def _declared_dtypes(model, x, names):
    """`{input name: dtype of the matching keras.Input}` where it is known."""
    tensors = _model_input_tensors(model)
    if not tensors:
        return {}
    if isinstance(x, dict):
        by_name = {_useful_name(t): t.dtype for t in tensors}
        return {name: by_name[name] for name in names if name in by_name}
    if len(tensors) != len(names):
        return {}
    return {name: t.dtype for name, t in zip(names, tensors)}


def _model_layer_ids(model):
    with contextlib.suppress(Exception):
        return {id(layer) for layer in model._flatten_layers(include_self=False)}
    return set()


def _consumers_of(operation, inside):
    """The layers of the model (ids in `inside`) that take `operation`'s output."""
    consumers = []
    for node in getattr(operation, "_outbound_nodes", None) or []:
        layer = getattr(node, "operation", None)
        if isinstance(layer, keras.layers.Layer) and id(layer) in inside:
            if all(layer is not c for c in consumers):
                consumers.append(layer)
    return consumers


def _first_layer(layer, inside):
    """`layer`, or the first layer inside it when it is a nested model."""
    for _ in range(8):
        if not isinstance(layer, keras.Model):
            return layer
        if isinstance(layer, keras.Sequential):
            layer = layer.layers[0] if layer.layers else None
        else:
            tensors = _model_input_tensors(layer)
            if len(tensors) != 1:
                return None
            operation = getattr(tensors[0]._keras_history, "operation", None)
            inner = _consumers_of(operation, _model_layer_ids(layer))
            layer = inner[0] if len(inner) == 1 else None
    return None


def _input_consumers(model, x, names, inside):
    """`{input name: the one layer that takes it first}`, where the graph says.

    Sequential and Functional models only (a subclassed model has no graph);
    an input that goes to several layers at once is left out. `inside`: the
    ids of the model's layers.
    """
    if isinstance(model, keras.Sequential):
        layers = model.layers
        first = _first_layer(layers[0], inside) if layers and len(names) == 1 else None
        return {names[0]: first} if first is not None else {}
    tensors = _model_input_tensors(model)
    if isinstance(x, dict):
        by_name = {_useful_name(t): t for t in tensors}
        paired = [(name, by_name.get(name)) for name in names]
    elif len(tensors) == len(names):
        paired = list(zip(names, tensors))
    else:
        return {}
    consumers = {}
    for name, tensor in paired:
        history = getattr(tensor, "_keras_history", None)
        operation = getattr(history, "operation", None)
        if operation is None:
            continue
        layers = _consumers_of(operation, inside)
        if len(layers) == 1:
            first = _first_layer(layers[0], inside)
            if first is not None:
                consumers[name] = first
    return consumers


def _as_the_model_sees_it(array, layer, inside, max_layers=4):
    """The input after the model's leading preprocessing layers.

    An adapted `Normalization` or a `Rescaling` first in the model normalizes
    the inputs inside it: the rules judge what comes out of them (raw pixels
    through `Rescaling(1/255)` are fine, `Rescaling(1.0)` is not). Returns
    `None` when a `BatchNormalization` first in the model standardizes them.
    """
    for _ in range(max_layers):
        if layer is None:
            return array
        if isinstance(layer, _INPUT_STANDARDIZING):
            return None
        if not isinstance(layer, _INPUT_PREPROCESSING):
            return array
        try:
            array = np.asarray(keras.ops.convert_to_numpy(layer(array)))
        except Exception:  # judge the raw input rather than fail
            return array
        following = _consumers_of(layer, inside)
        layer = _first_layer(following[0], inside) if len(following) == 1 else None
    return array


def _is_token_ids(array, declared_dtype):
    if not np.issubdtype(array.dtype, np.integer):
        return False
    if declared_dtype is not None:
        return not keras.backend.is_float_dtype(declared_dtype)
    return array.dtype != np.uint8


def _forward_batch(x):
    floatx = keras.backend.floatx()

    def take(array):
        array = array[:FORWARD_EXAMPLES]
        if np.issubdtype(array.dtype, np.floating) or array.dtype in (bool, np.uint8):
            array = array.astype(floatx)
        return keras.ops.convert_to_tensor(array)

    return keras.tree.map_structure(take, x)


# -- layers -------------------------------------------------------------------


def _has_trained(model):
    optimizer = getattr(model, "optimizer", None)
    iterations = getattr(optimizer, "iterations", None)
    if iterations is None:
        return False
    with contextlib.suppress(Exception):
        return int(keras.ops.convert_to_numpy(iterations)) > 0
    return False


def _checked_layers(model):
    """Dense/Conv leaf layers with a trainable float kernel, in model order."""
    layers = []
    for layer in model_functions.leaf_layers(model):
        if not isinstance(layer, _WEIGHTED):
            continue
        kernel = getattr(layer, "kernel", None)
        if not isinstance(kernel, keras.Variable) or not kernel.trainable:
            continue
        if not keras.backend.is_float_dtype(kernel.dtype):
            continue
        layers.append(layer)
    return layers


def _heads(layers):
    """The layers with no other of `layers` after them (output layers).

    Follows the graph of Sequential and Functional models; a subclassed model
    has no graph, and there the last of `layers` (model order) is the head.
    """
    checked = {id(layer) for layer in layers}
    if not any(getattr(layer, "_outbound_nodes", None) for layer in layers):
        return layers[-1:]
    heads = []
    for layer in layers:
        seen, frontier, feeds_another = set(), [layer], False
        while frontier and not feeds_another:
            current = frontier.pop()
            for node in getattr(current, "_outbound_nodes", None) or []:
                operation = getattr(node, "operation", None)
                if operation is None or id(operation) in seen:
                    continue
                seen.add(id(operation))
                if id(operation) in checked:
                    feeds_another = True
                    break
                frontier.append(operation)
        if not feeds_another:
            heads.append(layer)
    return heads


def _next_layer(layer):
    """The first layer that consumes `layer`'s output in a graph, or `None`."""
    nodes = getattr(layer, "_outbound_nodes", None) or []
    for node in nodes:
        operation = getattr(node, "operation", None)
        if isinstance(operation, keras.layers.Layer):
            return operation
    return None


def _activation_after(layer, max_hops=4):
    """The activation that follows `layer`'s kernel, `None` if normalized first.

    The layer's own `activation` if it has one; else, in a Sequential or
    Functional graph, the next activation layer, looking past dropout, pooling
    and reshaping layers. A normalization layer met first returns `None`: it
    rescales the output, so the kernel's scale does not matter.
    """
    own = _activation_name(getattr(layer, "activation", None))
    if own is not None:
        return own
    current = layer
    for _ in range(max_hops):
        current = _next_layer(current)
        if current is None:
            return "linear"
        if isinstance(current, _NORMALIZATION):
            return None
        name = _activation_layer_name(current)
        if name is not None:
            return name
        if not isinstance(current, _PASS_THROUGH):
            return "linear"
    return "linear"


class _InputRecorder:
    """Patches layers' `call` to record the RMS of the tensor entering each.

    Only a scalar per layer is kept (on the device), not the activations.
    """

    def __init__(self, layers):
        self.layers = layers
        self.entering = {}

    def __enter__(self):
        for layer in self.layers:
            layer.__dict__["call"] = self._wrap(layer, layer.call)
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            layer.__dict__.pop("call", None)
        return False

    def _wrap(self, layer, original):
        key = id(layer)

        def call(*args, **kwargs):
            if key not in self.entering:
                value = args[0] if args else kwargs.get("inputs")
                leaves = keras.tree.flatten(value) if value is not None else []
                if leaves:
                    self.entering[key] = _rms(leaves[0])
            return original(*args, **kwargs)

        return call


def _rms(tensor):
    tensor = keras.ops.cast(tensor, "float32")
    return keras.ops.sqrt(keras.ops.mean(keras.ops.square(tensor)))


def _signal_entering(model, x, layers):
    """`[(layer path, RMS of its input)]` on a batch, in call order (stateless)."""
    batch = _forward_batch(x)
    # Constants, not variables: no autograd graph (PyTorch) keeps activations.
    trainable = [keras.ops.stop_gradient(v.value) for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    kwargs = (
        {"training": False} if getattr(model, "_call_has_training_arg", False) else {}
    )
    with _InputRecorder(layers) as recorder:
        model.stateless_call(trainable, non_trainable, batch, **kwargs)
    by_id = {id(layer): layer for layer in layers}
    signal = []
    for key, value in recorder.entering.items():
        layer = by_id[key]
        name = getattr(layer, "path", None) or layer.name
        signal.append((name, float(keras.ops.convert_to_numpy(value))))
    return signal
