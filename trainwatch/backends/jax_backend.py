"""JAX adapter: gradients with `jax.value_and_grad`, 64-bit mode when asked."""

from __future__ import annotations

import jax
import numpy as np

NAME = "jax"
# Eager JAX compiles each primitive on first use, so a gradient check compiles
# its functions once per model instead (`model_functions.compiled_*`).
COMPILE_PER_MODEL = True


def value_and_grad(fn, args):
    """Evaluates `fn(args)` and the gradient of its scalar with respect to `args`.

    Args:
        fn: Callable taking the list `args` and returning `(scalar, aux)`.
        args: List of float arrays to differentiate with respect to.

    Returns:
        `(value, aux, grads)`: the scalar as a numpy float, `aux` as returned by
        `fn`, and one numpy array per arg (JAX returns zeros, never `None`,
        for an arg the scalar does not depend on).
    """
    (value, aux), grads = jax.value_and_grad(fn, has_aux=True)(list(args))
    return to_numpy(value), aux, [to_numpy(g) for g in grads]


def to_numpy(x) -> np.ndarray:
    """Copies an array (or Keras variable) to a numpy array on the host."""
    if hasattr(x, "value") and not isinstance(x, jax.Array):
        x = x.value
    return np.asarray(jax.device_get(x))


def computes_on_cpu() -> bool:
    """Whether JAX's default device is the host CPU (no GPU or TPU)."""
    return jax.default_backend() == "cpu"


def variable_values(variables) -> list:
    """The current values of Keras variables (JAX arrays)."""
    return [v.value for v in variables]


def x64_scope():
    """Context in which JAX keeps float64 arrays float64 (`jax_enable_x64`)."""
    return jax.enable_x64(True)


def jit(fn):
    """Compiles `fn(list_of_arrays)` for repeated calls with the same shapes.

    Used for the many forward passes of a gradient check (one compile, then
    ~1 ms a call instead of ~15 ms of eager dispatch). Call it, and the result,
    inside the same `x64_scope` as the arrays.
    """
    return jax.jit(fn)


# For functions compiled once per model and called a few hundred times on
# small batches, XLA's compile time dominates: its backend optimization level
# 0 cut it from 0.28 to 0.17 s (digits MLP, value and gradient) while calls
# stayed as fast (matrix products go to the same library kernels).
_QUICK_COMPILE = {"xla_backend_optimization_level": 0}


def jit_values_and_grads(fns):
    """Several `fn(args, *rest) -> (scalar, aux)` as one compiled function.

    Compiled for a short compile time rather than the fastest code. Call it
    inside the same `x64_scope` as the arrays.

    Returns:
        A function of `(args, *rest)` returning `[((scalar, aux), grads), ...]`,
        one entry per function, gradients with respect to `args`.
    """
    parts = [jax.value_and_grad(fn, has_aux=True) for fn in fns]

    def all_parts(*args):
        return [part(*args) for part in parts]

    return jax.jit(all_parts, compiler_options=_QUICK_COMPILE)


def jit_quick(fn):
    """`jax.jit(fn)` compiled for a short compile time (see `jit_values_and_grads`)."""
    return jax.jit(fn, compiler_options=_QUICK_COMPILE)


def abstract_call(fn, args):
    """Runs `fn(args)` on shapes only (`jax.eval_shape`): nothing is computed
    or compiled, but Python-side effects (such as recording the layers that
    ran and their output shapes) happen."""
    return jax.eval_shape(fn, args)


def quick_train_function(model):
    """Gives `model` a training step compiled for a short compile time.

    For copies trained a few dozen steps (the sanity check's overfit run),
    where compiling Keras's step with XLA's default optimization takes most
    of the time (0.57 s of 0.7 s on the digits MLP). Builds what Keras's
    `make_train_function` builds, with `_QUICK_COMPILE`; does nothing (Keras
    then compiles its own) where that does not apply: eager or uncompiled
    models, a distribution, Flax NNX, or a Keras whose trainer differs.

    Returns:
        `True` if the model got the quick step.
    """
    from keras.src.backend.config import is_nnx_enabled
    from keras.src.distribution import distribution_lib

    if (
        model.run_eagerly
        or not model.jit_compile
        or is_nnx_enabled()
        or distribution_lib.distribution() is not None
        or not callable(getattr(model, "_make_function", None))
    ):
        return False
    step = jax.jit(model.train_step, donate_argnums=0, compiler_options=_QUICK_COMPILE)
    model.train_function = model._make_function(step)
    return True


def private_train_step(loss_fn, optimizer, variables):
    """Training steps on a private copy of `variables`' values.

    For training a model without touching it (the sanity check's overfit run
    on a model that cannot be copied): the values and the optimizer's slots
    live here; the model's variables, optimizer and random state are never
    changed. The step is compiled once, for a short compile time.

    Args:
        loss_fn: `fn(trainable_values, *rest) -> (scalar, aux)`, traceable.
        optimizer: A fresh Keras optimizer; built here on `variables`.
        variables: The model's trainable variables (their current values
            start the copy).

    Returns:
        `step(*rest)`: one update of the copy; returns the loss before it.
    """
    import jax.numpy as jnp

    optimizer.build(variables)
    state = [
        [jnp.array(v.value) for v in variables],
        [jnp.array(v.value) for v in optimizer.variables],
    ]

    def update(values, slots, *rest):
        (value, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(values, *rest)
        values, slots = optimizer.stateless_apply(slots, grads, values)
        return value, values, slots

    compiled = jax.jit(update, compiler_options=_QUICK_COMPILE)

    def step(*rest):
        value, state[0], state[1] = compiled(state[0], state[1], *rest)
        return value

    return step
