"""A float64 shadow copy of a Keras model, and the mode in which it runs float64.

A float32 gradient check reports errors of 1e-2 on correct code, so the check
runs on a copy of the user's model rebuilt in float64. Two things stand in the
way, and both are handled here:

* every layer's config carries its dtype policy, so the copy is rebuilt from a
  config in which every floating dtype is replaced by float64;
* Keras's type promotion maps float64 to float32 on JAX and PyTorch
  (`keras.src.backend.common.dtypes.BIT64_TO_BIT32_DTYPE`), and JAX needs
  `jax_enable_x64`. `float64_mode()` lifts both, plus `floatx`, for the
  duration of a `with` block and restores them afterwards, so the user's run
  stays float32;
* on JAX, `ops.dot_product_attention` (which `MultiHeadAttention` calls when
  it has no dropout and returns no scores) always takes its softmax in float32:
  both `jax.nn.dot_product_attention` and Keras's own fallback
  (`_dot_product_attention_core`) cast the logits with `.astype(float32)`. So
  the query and key projections got float32 gradients in a "float64" check,
  which read as crossed kinks. Inside `float64_mode()` float64 attention runs
  as plain einsum and softmax ops instead (`float64_dot_product_attention`).

The user's model, its optimizer and the global Keras settings are left as they
were: only the shadow's own variables are written.

Custom layers, activations, regularizers and `Lambda` layers are rebuilt from
the live classes and functions the model holds (registered with Keras or not).
Their configs are the user's own: one that leaves out a constructor argument
rebuilds another function, so for a model that `uses_user_code` the gradient
check compares the shadow's loss and gradients with the model's before it
trusts the shadow.
"""

from __future__ import annotations

import contextlib
import copy
import math
import types
import weakref

import keras
import numpy as np

from trainwatch.backends import get_backend, model_copy

_FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64"}
_FLOAT_POLICIES = _FLOAT_DTYPES | {"mixed_float16", "mixed_bfloat16"}


class Float64Unavailable(RuntimeError):
    """The model cannot be rebuilt in float64; the message says why."""


def _promotion_table():
    from keras.src.backend.common import dtypes

    return dtypes.BIT64_TO_BIT32_DTYPE


@contextlib.contextmanager
def float64_mode():
    """Runs Keras in true float64 inside the block, then restores everything.

    Sets `floatx` and the global dtype policy to float64, stops Keras from
    demoting float64 results to float32 (JAX, PyTorch) and enables 64-bit
    arrays in JAX.

    Example:

    >>> with float64_mode():
    ...     keras.ops.tanh(np.ones(2)).dtype  # doctest: +SKIP
    'float64'
    """
    from keras.src.backend.common import global_state

    table = _promotion_table()
    old_floatx = keras.config.floatx()
    old_policy = global_state.get_global_attribute("dtype_policy", None)
    old_promotion = table.get("float64")
    try:
        keras.config.set_floatx("float64")
        global_state.set_global_attribute("dtype_policy", None)
        table["float64"] = "float64"
        with get_backend().x64_scope(), _float64_attention():
            yield
    finally:
        table["float64"] = old_promotion
        keras.config.set_floatx(old_floatx)
        global_state.set_global_attribute("dtype_policy", old_policy)


# Backends whose `dot_product_attention` computes its softmax in float32 even
# for float64 inputs (see the module docstring). TensorFlow and PyTorch keep
# float64: measured on a MultiHeadAttention model, 1e-9 and 1e-8.
_ATTENTION_SOFTMAX_IN_FLOAT32 = ("jax",)
# What masked logits become: JAX's value (finite even after a float32 cast).
_MASKED_LOGIT = -0.7 * float(np.finfo(np.float32).max)


@contextlib.contextmanager
def _float64_attention():
    """Routes float64 `dot_product_attention` through `float64_dot_product_attention`.

    Only on backends listed in `_ATTENTION_SOFTMAX_IN_FLOAT32`; other dtypes and
    a logits soft cap (JAX on TPU only, where there is no float64) go to the
    backend's own implementation as before. Restored on exit.
    """
    if keras.backend.backend() not in _ATTENTION_SOFTMAX_IN_FLOAT32:
        yield
        return
    from keras.src import backend

    module = backend.nn
    native = module.dot_product_attention

    def dot_product_attention(query, key, value, *args, **kwargs):
        arguments = dict(zip(_ATTENTION_ARGUMENTS, args), **kwargs)
        dtypes = [getattr(t, "dtype", None) for t in (query, key, value)]
        dtypes = [keras.backend.standardize_dtype(d) for d in dtypes if d is not None]
        if "float64" not in dtypes or arguments.get("attn_logits_soft_cap"):
            return native(query, key, value, *args, **kwargs)
        arguments.pop("flash_attention", None)  # the same math, unfused
        arguments.pop("attn_logits_soft_cap", None)
        return float64_dot_product_attention(query, key, value, **arguments)

    module.dot_product_attention = dot_product_attention
    try:
        yield
    finally:
        module.dot_product_attention = native


_ATTENTION_ARGUMENTS = (
    "bias", "mask", "scale", "is_causal", "flash_attention", "attn_logits_soft_cap",
)  # fmt: skip


def float64_dot_product_attention(
    query, key, value, bias=None, mask=None, scale=None, is_causal=False
):
    """`ops.dot_product_attention` as plain ops, in the inputs' own precision.

    `softmax(q·kᵀ · scale + bias)` over the key axis, masked where `mask` is
    false (and above the diagonal when `is_causal`), then applied to `value`;
    key and value heads are repeated for grouped-query attention. Layout
    `(batch, time, heads, depth)`, as in Keras.

    Example:

    >>> q = np.random.rand(1, 3, 2, 4)
    >>> float64_dot_product_attention(q, q, q).shape  # doctest: +SKIP
    (1, 3, 2, 4)
    """
    ops = keras.ops
    query = ops.convert_to_tensor(query)
    key = ops.convert_to_tensor(key)
    value = ops.convert_to_tensor(value)
    dtype = keras.backend.result_type(query.dtype, key.dtype, value.dtype)
    query, key, value = (ops.cast(t, dtype) for t in (query, key, value))
    heads, key_heads = query.shape[2], key.shape[2]
    if key_heads != heads:  # grouped-query attention: head n reads n // group
        key = ops.repeat(key, heads // key_heads, axis=2)
        value = ops.repeat(value, heads // key_heads, axis=2)
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    logits = ops.einsum("btnh,bsnh->bnts", query, key)
    logits = logits * ops.convert_to_tensor(scale, dtype=dtype)
    if bias is not None:
        logits = logits + ops.cast(bias, dtype)
    keep = None if mask is None else ops.cast(mask, "bool")
    if is_causal:
        causal = np.tril(np.ones(logits.shape[-2:], dtype=bool))
        causal = ops.convert_to_tensor(causal)
        keep = causal if keep is None else ops.logical_and(keep, causal)
    if keep is not None:
        masked = ops.convert_to_tensor(_MASKED_LOGIT, dtype=dtype)
        logits = ops.where(keep, logits, masked)
    probabilities = ops.softmax(logits, axis=-1)
    return ops.einsum("bnts,bsnh->btnh", probabilities, value)


def _retype(config):
    """Returns `config` with every floating dtype or dtype policy set to float64."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "dtype":
                out[key] = _retype_dtype(value)
            elif model_copy.is_initializer_entry(key, value):
                out[key] = model_copy.ZEROS_INITIALIZER  # overwritten by the copy
            else:
                out[key] = _retype(value)
        return out
    if isinstance(config, list):
        return [_retype(item) for item in config]
    if isinstance(config, tuple):
        return tuple(_retype(item) for item in config)
    return config


def _retype_dtype(value):
    if isinstance(value, str):
        return "float64" if value in _FLOAT_POLICIES else value
    if isinstance(value, dict):
        inner = value.get("config", {})
        name = inner.get("name") if isinstance(inner, dict) else None
        class_name = value.get("class_name", "")
        if class_name == "DTypePolicy" and name in _FLOAT_POLICIES:
            return "float64"
        if class_name == "DTypePolicyMap":
            return "float64"
        return _retype(value)
    return value


def _float64_loss(loss):
    """A copy of a compiled loss that computes in float64."""
    if isinstance(loss, keras.losses.Loss):
        loss64 = copy.copy(loss)
        loss64._dtype_policy = keras.DTypePolicy("float64")
        loss64._dtype = "float64"
        return loss64
    if isinstance(loss, dict):
        return {k: _float64_loss(v) for k, v in loss.items()}
    if isinstance(loss, (list, tuple)):
        # A list, not `type(loss)(...)`: TensorFlow tracks a model's `loss`
        # list as a `ListWrapper`, which cannot be built from a generator.
        losses = [_float64_loss(v) for v in loss]
        return tuple(losses) if isinstance(loss, tuple) else losses
    return loss  # a string (rebuilt under floatx float64) or a plain function


_CONFIGURED_OBJECTS = (
    keras.regularizers.Regularizer,
    keras.constraints.Constraint,
    keras.initializers.Initializer,
)


def _is_keras_own(obj) -> bool:
    return getattr(obj, "__module__", "").split(".")[0] == "keras"


def user_objects(model) -> dict:
    """The user's classes and functions a model's config refers to, by name.

    Layer classes (the model's own too), and the functions and regularizer,
    constraint or initializer objects its layers hold (a custom activation),
    that do not come from Keras, under both their class or function name and
    their registered name: what `deserialize_keras_object` needs as
    `custom_objects` to rebuild the model whether they were registered or not.

    Example:

    >>> def swish(x):
    ...     return x * keras.ops.sigmoid(x)
    >>> model = keras.Sequential([keras.layers.Dense(2, activation=swish)])
    >>> sorted(user_objects(model))
    ['swish']
    """
    found = {}

    def add(obj):
        if _is_keras_own(obj):
            return
        name = getattr(obj, "__name__", None)
        if not name or name == "<lambda>":
            return  # a lambda has no name to be found by
        found[name] = obj
        try:
            found[keras.saving.get_registered_name(obj)] = obj
        except Exception:  # no registered name: the plain one serves
            pass

    for layer in model._flatten_layers(include_self=True, recursive=True):
        add(type(layer))
        for value in vars(layer).values():
            if isinstance(value, types.FunctionType) and not _is_method(value):
                add(value)
            elif isinstance(value, _CONFIGURED_OBJECTS):
                add(type(value))
    return found


def _is_method(function) -> bool:
    """A function defined in a class (Keras keeps a layer's wrapped `build`
    on the instance), not a module's or a local one."""
    qualified = function.__qualname__
    return qualified != function.__name__ and not qualified.endswith(
        f"<locals>.{function.__name__}"
    )


def _has_lambda(model) -> bool:
    return any(
        isinstance(layer, keras.layers.Lambda)
        for layer in model._flatten_layers(include_self=True, recursive=True)
    )


def uses_user_code(model) -> bool:
    """Whether the float64 shadow of `model` is rebuilt with the user's own
    classes or functions (custom layers, activations, `Lambda` layers), whose
    configs may leave something out: it then computes the model's function
    only if their losses and gradients agree.

    Example:

    >>> uses_user_code(keras.Sequential([keras.layers.Dense(2)]))
    False
    """
    return bool(user_objects(model)) or _has_lambda(model)


def make_float64_shadow(model):
    """Rebuilds `model` in float64, copies its weights and compiles its loss.

    Must be called inside `float64_mode()`, and the shadow evaluated there too.

    Args:
        model: A built, compiled Keras model (Sequential, Functional, or a
            subclassed model that implements `get_config`).

    Returns:
        A new `keras.Model` whose variables hold the user's values in float64.
        Custom classes and functions are taken from the model itself
        (`user_objects`).

    Raises:
        Float64Unavailable: the model cannot be serialized and rebuilt (e.g. a
            subclassed model or custom layer whose `get_config` does not list
            its constructor arguments), or the rebuilt model's variables do not
            match the original's.

    Example:

    >>> with float64_mode():
    ...     shadow = make_float64_shadow(model)  # doctest: +SKIP
    """
    if keras.config.floatx() != "float64":
        raise RuntimeError("make_float64_shadow must run inside float64_mode().")
    live = user_objects(model)
    has_lambda = _has_lambda(model)
    try:
        with model_copy.tensorflow_left_unimported():
            serialized = keras.saving.serialize_keras_object(model)
            serialized = dict(serialized)
            serialized.pop("compile_config", None)
            serialized = _retype(serialized)
            # A `Lambda` layer gets the user's own function back, live: Keras
            # would rebuild a Python lambda from bytecode without its globals.
            serialized, lambdas = model_copy.live_lambda_callables(model, serialized)
            # `safe_mode=False` lets any other `Lambda` function come back: it
            # is the user's own, serialized a moment ago in this process.
            shadow = keras.saving.deserialize_keras_object(
                serialized, custom_objects={**live, **lambdas}, safe_mode=not has_lambda
            )
    except Exception as error:  # any failure to rebuild means "no float64 copy"
        raise Float64Unavailable(
            f"Could not rebuild model {model.name!r} from its config in float64 "
            f"({type(error).__name__}: {error}). Give custom layers (and "
            "subclassed models) a `get_config()` that lists their constructor "
            "arguments."
        ) from error
    if not shadow.built:
        build_config = (
            model.get_build_config() if hasattr(model, "get_build_config") else None
        )
        try:
            if build_config:
                shadow.build_from_config(_retype(build_config))
        except Exception as error:
            raise Float64Unavailable(
                f"Could not build the float64 copy of {model.name!r}: {error}"
            ) from error
    model_copy.copy_weights(model, shadow, Float64Unavailable, dtype="float64")
    compile_config = getattr(model, "_compile_config", None)
    loss_weights = None
    if compile_config is not None:
        loss_weights = compile_config.config.get("loss_weights")
    if getattr(model, "_compile_loss", None) is not None:
        shadow.compile(
            optimizer="sgd", loss=_float64_loss(model.loss), loss_weights=loss_weights
        )
    elif model.compiled:
        shadow.compile(optimizer="sgd")
    return shadow


def fraction_beyond_float32(values) -> float:
    """Fraction of finite entries that float32 cannot represent exactly.

    A measured proof of float64 computation: results computed in float32 and
    widened afterwards round-trip through float32 unchanged (fraction 0.0);
    results of real float64 arithmetic almost never do (fraction near 1.0).

    Example:

    >>> fraction_beyond_float32(np.float32([0.1, 0.2]).astype(np.float64))
    0.0
    >>> fraction_beyond_float32(np.array([0.1, 0.2]))
    1.0
    """
    array = np.asarray(values, dtype=np.float64).ravel()
    array = array[np.isfinite(array) & (array != 0)]
    if array.size == 0:
        return 0.0
    roundtrip = array.astype(np.float32).astype(np.float64)
    return float(np.mean(roundtrip != array))


# One shadow per user model, kept between checks: `{model: (compiled loss
# (weak), shadow)}`. The shadow does not refer to the user's model, so the
# entry goes with it.
_shadows: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Larger models get a new shadow at each check instead: kept, it would hold
# 8 bytes a parameter (200 MB here) for the whole run, and against the check's
# own arithmetic at that size rebuilding costs little.
KEEP_SHADOWS_UP_TO_PARAMETERS = 25_000_000


def float64_shadow(model):
    """The float64 shadow of `model`, made once and then refreshed with its weights.

    Rebuilding a shadow costs a serialization round trip and, on JAX, the
    compilation of its functions; a model checked every few epochs keeps one.
    It is made anew when the model was compiled again (another loss) or its
    weights changed in number, and at every call for models of more than
    `KEEP_SHADOWS_UP_TO_PARAMETERS` parameters (memory). Must be called inside
    `float64_mode()`.

    Raises:
        Float64Unavailable: as `make_float64_shadow`.

    Example:
    >>> with float64_mode():
    ...     float64_shadow(model) is float64_shadow(model)  # doctest: +SKIP
    True
    """
    if _parameter_count(model) > KEEP_SHADOWS_UP_TO_PARAMETERS:
        _shadows.pop(model, None)
        return make_float64_shadow(model)
    compile_loss = getattr(model, "_compile_loss", None)
    entry = _shadows.get(model)
    if entry is not None:
        loss_ref, shadow = entry
        if (loss_ref() if loss_ref is not None else None) is compile_loss:
            try:
                model_copy.copy_weights(
                    model, shadow, Float64Unavailable, dtype="float64"
                )
                return shadow
            except Float64Unavailable:
                pass  # other weights in number or shape: a new shadow
    shadow = make_float64_shadow(model)
    loss_ref = weakref.ref(compile_loss) if compile_loss is not None else None
    _shadows[model] = (loss_ref, shadow)
    return shadow


def _parameter_count(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.weights)
