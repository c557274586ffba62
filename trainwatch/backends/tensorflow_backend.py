"""TensorFlow adapter: gradients with `tf.GradientTape`, eager mode."""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

NAME = "tensorflow"


def value_and_grad(fn, args):
    """Evaluates `fn(args)` and the gradient of its scalar with respect to `args`.

    Args:
        fn: Callable taking the list `args` and returning `(scalar, aux)`.
        args: List of float tensors to differentiate with respect to.

    Returns:
        `(value, aux, grads)`: the scalar as a numpy float, `aux` as returned by
        `fn` (tensors left as they are), and one numpy array per arg, or `None`
        where the scalar does not depend on that arg.
    """
    args = [tf.convert_to_tensor(a) for a in args]
    with tf.GradientTape() as tape:
        for a in args:
            tape.watch(a)
        value, aux = fn(args)
    grads = tape.gradient(
        value, args, unconnected_gradients=tf.UnconnectedGradients.NONE
    )
    return to_numpy(value), aux, [None if g is None else to_numpy(g) for g in grads]


def to_numpy(x) -> np.ndarray:
    """Copies a tensor (or variable) to a numpy array on the host."""
    if isinstance(x, tf.IndexedSlices):
        x = tf.convert_to_tensor(x)
    if hasattr(x, "numpy"):
        return np.asarray(x.numpy())
    return np.asarray(x)


def computes_on_cpu() -> bool:
    """Whether TensorFlow sees no GPU or TPU to place work on."""
    return not any(tf.config.list_logical_devices(kind) for kind in ("GPU", "TPU"))


def variable_values(variables) -> list:
    """The current values of Keras variables, as tensors (not `tf.Variable`s).

    A `tf.Variable` handed to `stateless_call` stays a variable inside the
    layers' `call`, and `tf.custom_gradient` then refuses a `grad_fn` without a
    `variables` argument (a custom-gradient layer that trains under `fit`).
    """
    return [tf.convert_to_tensor(v.value) for v in variables]


def x64_scope():
    """TensorFlow computes in float64 whenever its inputs are float64."""
    return contextlib.nullcontext()


def jit(fn):
    """Traces `fn(list_of_tensors)` into a `tf.function` for repeated calls.

    Used for the many forward passes of a gradient check (one trace, then a
    few ms a call instead of ~30 ms in eager mode). Shapes stay exact
    (`reduce_retracing=False`): callers read static shapes while tracing, and a
    relaxed trace would hand them `None` dimensions for another model's shapes.

    Traced without AutoGraph first: converting `fn` and every Keras function
    it calls to graph control flow took ~0.3 s of a digits-MLP check's 0.37 s,
    and Keras layers need none. A model whose Python code branches on tensor
    values fails that trace; it is traced again with AutoGraph.
    """
    plain = tf.function(fn, reduce_retracing=False, autograph=False)
    converted = None

    def call(*args):
        nonlocal plain, converted
        if plain is not None:
            try:
                return plain(*args)
            except Exception:  # e.g. `if tensor > 0:` in a layer: AutoGraph
                plain = None
        if converted is None:
            converted = tf.function(fn, reduce_retracing=False)
        return converted(*args)

    return call


def private_train_step(loss_fn, optimizer, variables):
    """Training steps on a private copy of `variables`' values.

    For training a model without touching it (the sanity check's overfit run
    on a model that cannot be copied): the copy is a set of new variables
    (TensorFlow's optimizers have no stateless update), which the optimizer
    updates; the model's variables, optimizer and random state are never
    changed. The step is traced once.

    Args:
        loss_fn: `fn(trainable_values, *rest) -> (scalar, aux)`, traceable.
        optimizer: A fresh Keras optimizer; built here on the copy.
        variables: The model's trainable variables (their current values
            start the copy).

    Returns:
        `step(*rest)`: one update of the copy; returns the loss before it.
    """
    import keras

    copies = [
        keras.Variable(tf.identity(v.value), dtype=v.dtype, name=f"copy_{v.name}")
        for v in variables
    ]
    optimizer.build(copies)

    def update(*rest):
        with tf.GradientTape() as tape:
            values = [c.value for c in copies]
            value, _ = loss_fn(values, *rest)
        grads = tape.gradient(value, [c.value for c in copies])
        grads = [
            tf.zeros_like(c.value) if g is None else g for g, c in zip(grads, copies)
        ]
        optimizer.apply(grads, copies)
        return value

    return tf.function(update, autograph=False, reduce_retracing=False)
