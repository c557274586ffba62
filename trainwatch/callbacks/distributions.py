"""`Distributions`: per-layer activations and gradients on a fixed probe batch.

At train begin and every `histogram_freq` epochs, one forward and backward
pass on the probe batch (stateless, inference mode: the model and what it
learns are untouched) gives every layer's output, the gradient of the loss
with respect to it, and every weight's gradient. From them:

* histograms: `activations/<layer>`, `activation_gradients/<layer>`,
  `weights/<variable.path>`, `weight_gradients/<variable.path>`;
* scalars: `activation_mean/<layer>`, `activation_std/<layer>`,
  `activation_gradient_norm/<layer>`, `gradient_norm/<layer>` (its weights'
  gradient), `dead_fraction/<layer>` (ReLU layers), `saturated_fraction/<layer>`
  (tanh and sigmoid layers);
* findings: `dead_units`, `saturated_units`, `vanishing_gradients`,
  `exploding_gradients`.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np

from trainwatch.backends import get_backend
from trainwatch.backends import model_functions as mf
from trainwatch.callbacks.base import MID_EPOCH_SECONDS, Monitor
from trainwatch.numerics import distributions as nd
from trainwatch.rules import layers as rules
from trainwatch.validation import check_int

__all__ = [
    "Distributions",
    "LayerDistribution",
    "VariableDistribution",
    "activation_name",
    "distribution_findings",
    "measure_distributions",
]

_PROBE_PART = "Distributions.probe"

# Layers that pass their input on unchanged in inference mode, or only
# rearranged: their histograms would repeat the previous layer's.
_PASS_THROUGH = (
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.Identity,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
)

# Layers whose `activation` attribute is applied to what they output.
_ACTIVATED_LAYERS = (
    keras.layers.Activation,
    keras.layers.Dense,
    keras.layers.EinsumDense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
)


class LayerDistribution(NamedTuple):
    """What the probe measured on one layer.

    Attributes:
        name: The layer's path, e.g. `"sequential/dense"`.
        layer: The Keras layer.
        activation: Name of the activation that produced the output
            (`"relu"`, `"tanh"`, ...), or `None` when unknown or none.
        output: The output, `(batch, k)` flattened (sampled when large).
        output_gradient: d(loss)/d(output), same shape, or `None`.
        mean, std: Of the output.
        activation_gradient_norm: L2 norm of `output_gradient` (`nan` if none).
        gradient_norm: L2 norm of the gradient of the layer's trainable
            weights, or `None` for a layer without any.
        kernel_gradient_rms: RMS of the gradient of the layer's trainable
            matrices and filters (rank >= 2), the scale compared across depth;
            `None` if it has none, and for embeddings (sparse gradients) and
            attention query/key projections (tiny gradients by design).
        dead: `UnitCount` of dead units (ReLU, ReLU6), else `None`.
        saturated: `UnitCount` of saturated units (tanh, sigmoid, ...) of a
            hidden layer, else `None`.
    """

    name: str
    layer: object
    activation: str | None
    output: np.ndarray
    output_gradient: np.ndarray | None
    mean: float
    std: float
    activation_gradient_norm: float
    gradient_norm: float | None
    kernel_gradient_rms: float | None
    dead: nd.UnitCount | None
    saturated: nd.UnitCount | None


class VariableDistribution(NamedTuple):
    """A model variable's value and its gradient (`None`: not trainable or none)."""

    path: str
    value: np.ndarray
    gradient: np.ndarray | None


def activation_name(layer) -> str | None:
    """The activation that produced `layer`'s output, as a lowercase name.

    Known for `Activation`, `ReLU`, `LeakyReLU`, `ELU`, `PReLU`, `Softmax` and
    the Dense and convolution layers' `activation=` argument; `None` for any
    other layer (a custom layer may do anything in `call`).

    Example:

    >>> activation_name(keras.layers.Dense(4, activation="tanh"))
    'tanh'
    >>> activation_name(keras.layers.ReLU(negative_slope=0.1))
    'leaky_relu'
    """
    if isinstance(layer, keras.layers.ReLU):
        return "leaky_relu" if layer.negative_slope else "relu"
    for cls, name in (
        (keras.layers.LeakyReLU, "leaky_relu"),
        (keras.layers.PReLU, "prelu"),
        (keras.layers.ELU, "elu"),
        (keras.layers.Softmax, "softmax"),
    ):
        if isinstance(layer, cls):
            return name
    if isinstance(layer, _ACTIVATED_LAYERS):
        function = getattr(layer, "activation", None)
        return getattr(function, "__name__", None)
    return None


def _unit_axis(layer) -> int:
    return 0 if getattr(layer, "data_format", None) == "channels_first" else -1


def _output_layer_ids(model, traces) -> set:
    """Layers whose outputs are the model's outputs (saturation there is fine)."""
    ids = set()

    def visit(tensor):
        history = getattr(tensor, "_keras_history", None)
        operation = getattr(history, "operation", None)
        if operation is None:
            return
        inner = getattr(operation, "outputs", None)
        if isinstance(operation, keras.Model) and inner:
            for t in keras.tree.flatten(inner):
                visit(t)
        else:
            ids.add(id(operation))

    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if outputs:
        for tensor in keras.tree.flatten(outputs):
            visit(tensor)
    elif traces:
        ids.add(id(traces[-1].layer))  # subclassed: the last layer called
    return ids


def _has_matrix_weights(layer) -> bool:
    if isinstance(layer, keras.layers.Embedding):
        return False
    return any(len(v.shape) >= 2 for v in layer.trainable_variables)


def _attention_query_key_ids(model) -> set:
    """Query and key projections of attention layers.

    Their gradients pass through the attention softmax and are tiny at
    initialization by design: they say nothing about depth.
    """
    ids = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for attribute in ("_query_dense", "_key_dense"):
            projection = getattr(layer, attribute, None)
            if isinstance(projection, keras.layers.Layer):
                ids.add(id(projection))
    return ids


def measure_distributions(model, x, y, sample_weight=None, max_features=4096):
    """Measures every layer and variable on one batch, in one backward pass.

    Stateless and in inference mode: the model's weights, optimizer, metrics
    and random state are untouched. Layers that only pass values on
    (`Flatten`, `Reshape`, `Dropout` in inference mode, ...) are left out:
    their histograms would repeat the previous layer's.

    Args:
        model: A built, compiled Keras model.
        x, y, sample_weight: The probe batch (numpy arrays or nested
            structures of them, or tensors).
        max_features: Per-example output features kept per layer; larger
            outputs are sampled on the device (all channels of the sampled
            positions). Defaults to `4096`.

    Returns:
        `(layers, variables)`: a list of `LayerDistribution` in call order and
        a list of `VariableDistribution` (every float variable of the model).

    Example:

    >>> layers, variables = measure_distributions(model, x[:64], y[:64])
    ... # doctest: +SKIP
    >>> [(d.name, d.dead) for d in layers if d.dead]  # doctest: +SKIP
    [('sequential/dense', UnitCount(count=3, total=64))]
    """
    backend = get_backend()
    probed = [
        layer for layer in mf.leaf_layers(model) if not isinstance(layer, _PASS_THROUGH)
    ]
    traces, result = mf.layer_outputs_and_gradients(
        model,
        mf.convert_batch(x),
        mf.convert_batch(y),
        mf.convert_batch(sample_weight),
        layers=probed,
        max_features=max_features,
        return_weight_gradients=True,
    )
    gradient_by_id = {
        id(v): g for v, g in zip(model.trainable_variables, result.gradients)
    }
    outputs = _output_layer_ids(model, traces)
    query_key = _attention_query_key_ids(model)
    layers = [
        _layer_distribution(
            trace,
            gradient_by_id,
            is_output=id(trace.layer) in outputs,
            in_depth_profile=id(trace.layer) not in query_key,
        )
        for trace in traces
    ]
    return layers, _variable_distributions(model, gradient_by_id, backend)


def _layer_distribution(trace, gradient_by_id, is_output, in_depth_profile):
    layer = trace.layer
    output = np.asarray(trace.output).reshape(trace.output.shape[0], -1)
    gradient = trace.output_gradient
    if gradient is not None:
        gradient = np.asarray(gradient).reshape(output.shape)
    name = activation_name(layer)
    dead = saturated = None
    if name in nd.DEAD_ACTIVATIONS or name in nd.SATURATING_ACTIVATIONS:
        ids = nd.unit_ids(trace.feature_shape, trace.feature_indices, _unit_axis(layer))
        if name in nd.DEAD_ACTIVATIONS:
            dead = nd.dead_units(output, ids)
        elif not is_output:  # a confident output layer is not a problem
            saturated = nd.saturated_units(output, ids, nd.SATURATING_ACTIVATIONS[name])
    variables = layer.trainable_variables
    weight_gradients = [gradient_by_id.get(id(v)) for v in variables]
    matrices = [g for v, g in zip(variables, weight_gradients) if len(v.shape) >= 2]
    mean, std = nd.mean_and_std(output)
    return LayerDistribution(
        name=trace.name,
        layer=layer,
        activation=name,
        output=output,
        output_gradient=gradient,
        mean=mean,
        std=std,
        activation_gradient_norm=(
            float("nan") if gradient is None else nd.l2_norm([gradient])
        ),
        gradient_norm=nd.l2_norm(weight_gradients) if variables else None,
        kernel_gradient_rms=(
            nd.rms(matrices)
            if in_depth_profile and _has_matrix_weights(layer)
            else None
        ),
        dead=dead,
        saturated=saturated,
    )


def _variable_distributions(model, gradient_by_id, backend):
    variables = []
    seen = set()
    for variable in model.weights:
        if id(variable) in seen or not keras.backend.is_float_dtype(variable.dtype):
            continue
        seen.add(id(variable))
        path = getattr(variable, "path", None) or variable.name
        variables.append(
            VariableDistribution(
                path, backend.to_numpy(variable), gradient_by_id.get(id(variable))
            )
        )
    return variables


def distribution_findings(
    layers,
    step=None,
    epoch=None,
    dead_threshold=0.4,
    saturated_threshold=0.25,
    gradient_ratio=100.0,
) -> list:
    """The findings of the layer rules on `measure_distributions`'s layers.

    Args:
        layers: `LayerDistribution`s from `measure_distributions`.
        step, epoch: When they were measured. Default to `None`.
        dead_threshold: Share of dead units that makes a ReLU layer a
            `dead_units` finding. Defaults to `0.4`.
        saturated_threshold: Share of saturated units that makes a hidden
            tanh/sigmoid layer a `saturated_units` finding. Defaults to `0.25`.
        gradient_ratio: Ratio of RMS weight gradients between an earlier and a
            later layer that counts as vanishing (or, inverted, exploding).
            Defaults to `100.0`.

    Returns:
        A list of `Finding`s: `dead_units`, `saturated_units`,
        `vanishing_gradients`, `exploding_gradients`.

    Example:

    >>> layers, _ = measure_distributions(model, x, y)  # doctest: +SKIP
    >>> [f.code for f in distribution_findings(layers)]  # doctest: +SKIP
    ['dead_units']
    """
    dead = {d.name: tuple(d.dead) for d in layers if d.dead is not None}
    saturated = {d.name: tuple(d.saturated) for d in layers if d.saturated}
    activations = {d.name: d.activation for d in layers}
    depth = [
        (d.name, d.kernel_gradient_rms)
        for d in layers
        if d.kernel_gradient_rms is not None
    ]
    return (
        rules.dead_units(dead, step=step, epoch=epoch, warn_fraction=dead_threshold)
        + rules.saturated_units(
            saturated,
            activations,
            step=step,
            epoch=epoch,
            warn_fraction=saturated_threshold,
        )
        + rules.gradient_depth(depth, step=step, epoch=epoch, factor=gradient_ratio)
    )


def _check_probe(probe):
    """Validates a `(x, y)` or `(x, y, sample_weight)` probe batch.

    Raises:
        ValueError: If `probe` is missing, has another structure, or holds
            no examples.
    """
    if not isinstance(probe, (tuple, list)) or len(probe) not in (2, 3):
        raise ValueError(
            "`probe` must be a tuple `(x, y)` or `(x, y, sample_weight)` of a few "
            "dozen training examples, e.g. `probe=(x_train[:64], y_train[:64])`. "
            f"Received: probe={_describe(probe)}"
        )
    first = keras.tree.flatten(probe[0])
    if not first or not getattr(first[0], "shape", None) or first[0].shape[0] < 1:
        raise ValueError(
            "`probe` must hold at least one example (x with a batch axis). "
            f"Received: probe={_describe(probe)}"
        )
    return tuple(probe) + (None,) * (3 - len(probe))


def _describe(value):
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_describe(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"<{type(value).__name__} shape={tuple(shape)}>"
    return repr(value)


class Distributions(Monitor):
    """Per-layer activation and gradient distributions, dead and saturated units.

    At train begin and every `histogram_freq` epochs, runs one stateless
    forward and backward pass on the probe batch (inference mode: dropout off,
    BatchNormalization on its moving statistics) and writes, for every layer
    reached (nested models and subclassed models included; not those that
    only pass values on, like `Flatten` and `Dropout`):

    * histograms `activations/<layer>` and `activation_gradients/<layer>` (the
      output and d(loss)/d(output)), `weights/<variable.path>` and
      `weight_gradients/<variable.path>`;
    * scalars `activation_mean/`, `activation_std/`, `activation_gradient_norm/`,
      `gradient_norm/` (of the layer's weights), `dead_fraction/` (ReLU) and
      `saturated_fraction/` (tanh, sigmoid, hidden layers) `<layer>`.

    Findings: `dead_units` (`dead_threshold` or more of a ReLU layer's units
    are zero for every probe example), `saturated_units` (`saturated_threshold`
    or more of a hidden tanh/sigmoid layer's units are near its bounds for 90%
    of the examples), `vanishing_gradients` and `exploding_gradients` (the RMS
    weight gradient of an earlier layer is `gradient_ratio` times smaller or
    larger than a later one's).

    The model, its optimizer and its random state are never changed: training
    gives the same weights with and without this callback. On its own it
    probes exactly every `histogram_freq` epochs; as a part of `TrainWatch` it
    skips a probe that would take trainwatch over its time budget.

    Args:
        log_dir: Where to write TensorBoard logs (`<log_dir>/train`), or `None`
            to only report findings. Defaults to `None`.
        probe: `(x, y)` or `(x, y, sample_weight)`: a fixed batch of training
            examples (32 to 256 is plenty). Required.
        histogram_freq: Probe every this many epochs (and at train begin);
            0 probes only at train begin. Defaults to `1`.
        max_features: Output features kept per example and layer; larger
            outputs are sampled (the same positions for every example, all
            channels of a position), which bounds memory. Defaults to `4096`.
        buckets: Histogram buckets. Defaults to `30`.
        dead_threshold: Share of a ReLU layer's units that must be dead for a
            finding. Defaults to `0.4`.
        saturated_threshold: Share of a hidden tanh/sigmoid layer's units that
            must be saturated for a finding. Defaults to `0.25`.
        gradient_ratio: Ratio of RMS weight gradients across depth that counts
            as vanishing or exploding. Defaults to `100.0`.
        verbose: 0 silent, 1 print new findings. Defaults to `1`.

    Raises:
        ValueError: If `probe` is missing or malformed, or a number is out of
            range.

    Example:

    >>> model.fit(x, y, epochs=5, callbacks=[
    ...     Distributions("runs/exp1", probe=(x[:64], y[:64]))])  # doctest: +SKIP
    """

    def __init__(
        self,
        log_dir=None,
        probe=None,
        histogram_freq=1,
        max_features=4096,
        buckets=30,
        dead_threshold=0.4,
        saturated_threshold=0.25,
        gradient_ratio=100.0,
        verbose=1,
    ):
        super().__init__(log_dir=log_dir, verbose=verbose)
        self.probe = _check_probe(probe)
        self.histogram_freq = check_int("histogram_freq", histogram_freq, 0)
        self.max_features = check_int("max_features", max_features, 1)
        self.buckets = check_int("buckets", buckets, 1)
        for name, value in (
            ("dead_threshold", dead_threshold),
            ("saturated_threshold", saturated_threshold),
        ):
            if not 0.0 < value <= 1.0:
                raise ValueError(
                    f"`{name}` must be in (0, 1]. Received: {name}={value!r}"
                )
        if not gradient_ratio > 1.0:
            raise ValueError(
                "`gradient_ratio` must be greater than 1. "
                f"Received: gradient_ratio={gradient_ratio!r}"
            )
        self.thresholds = {
            "dead_threshold": dead_threshold,
            "saturated_threshold": saturated_threshold,
            "gradient_ratio": gradient_ratio,
        }
        self.last_layers = None
        self.last_variables = None
        self._probe_tensors = None
        self.mid_epoch_seconds = MID_EPOCH_SECONDS

    def build_batch(self):
        return self.probe

    def begin(self):
        self._probe_tensors = None  # converted on the first probe of this fit
        self._probe()

    def epoch_end(self, epoch, logs):
        if not self.histogram_freq or (epoch + 1) % self.histogram_freq:
            return
        if not self._owns_context and not self.context.can_afford(_PROBE_PART):
            return  # inside TrainWatch, over its time budget: skip this probe
        self._probe()

    def on_train_batch_begin(self, batch, logs=None):
        # Inside TrainWatch only (on its own, the schedule is exact): a long
        # epoch gets probes mid-epoch, `mid_epoch_seconds` of training apart
        # at least and within the budget. The main thread, between steps;
        # two clock reads on every other batch.
        if self._owns_context or self.disabled or not self.histogram_freq:
            return
        context = self.context
        if context.seconds_since(_PROBE_PART) < self.mid_epoch_seconds:
            return
        if context.can_afford(_PROBE_PART):
            self.guard("probe", self._probe)

    def _probe(self):
        with self.context.timed(_PROBE_PART):
            self._probe_and_report()

    def _probe_and_report(self):
        model = self.model
        mf.check_model_ready(model)
        if self._probe_tensors is None:
            self._probe_tensors = tuple(mf.convert_batch(d) for d in self.probe)
        x, y, sample_weight = self._probe_tensors
        layers, variables = measure_distributions(
            model, x, y, sample_weight, max_features=self.max_features
        )
        self.last_layers, self.last_variables = layers, variables
        step = self.context.step
        writer = self.context.writer("train")
        if writer is not None:
            self._write(writer, layers, variables, step)
        findings = distribution_findings(
            layers, step, self.context.epoch, **self.thresholds
        )
        for finding in findings:
            self.context.report(finding)

    def _write(self, writer, layers, variables, step):
        scalars = {}
        for d in layers:
            writer.histogram(f"activations/{d.name}", d.output, step, self.buckets)
            if d.output_gradient is not None:
                writer.histogram(
                    f"activation_gradients/{d.name}",
                    d.output_gradient,
                    step,
                    self.buckets,
                )
            scalars[f"activation_mean/{d.name}"] = d.mean
            scalars[f"activation_std/{d.name}"] = d.std
            scalars[f"activation_gradient_norm/{d.name}"] = d.activation_gradient_norm
            if d.gradient_norm is not None:
                scalars[f"gradient_norm/{d.name}"] = d.gradient_norm
            if d.dead is not None:
                scalars[f"dead_fraction/{d.name}"] = d.dead.fraction
            if d.saturated is not None:
                scalars[f"saturated_fraction/{d.name}"] = d.saturated.fraction
        for v in variables:
            writer.histogram(f"weights/{v.path}", v.value, step, self.buckets)
            if v.gradient is not None:
                writer.histogram(
                    f"weight_gradients/{v.path}", v.gradient, step, self.buckets
                )
        writer.scalars(scalars, step)
