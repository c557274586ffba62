"""PyTorch adapter: gradients with `torch.autograd.grad`."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

NAME = "torch"


def value_and_grad(fn, args):
    """Evaluates `fn(args)` and the gradient of its scalar with respect to `args`.

    Args:
        fn: Callable taking the list `args` and returning `(scalar, aux)`.
        args: List of float tensors to differentiate with respect to.

    Returns:
        `(value, aux, grads)`: the scalar as a numpy float, `aux` as returned by
        `fn` (detached), and one numpy array per arg, or `None` where the scalar
        does not depend on that arg.
    """
    leaves = []
    for a in args:
        t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
        leaves.append(t.detach().requires_grad_(True))
    with torch.enable_grad():
        value, aux = fn(leaves)
        if value.requires_grad:
            grads = torch.autograd.grad(value, leaves, allow_unused=True)
        else:
            grads = [None] * len(leaves)
    aux = _detach(aux)
    return to_numpy(value), aux, [None if g is None else to_numpy(g) for g in grads]


def _detach(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach()
    if isinstance(tree, (list, tuple)):
        return type(tree)(_detach(t) for t in tree)
    if isinstance(tree, dict):
        return {k: _detach(v) for k, v in tree.items()}
    return tree


def to_numpy(x) -> np.ndarray:
    """Copies a tensor (or Keras variable) to a numpy array on the host."""
    if hasattr(x, "value") and not isinstance(x, torch.Tensor):
        x = x.value
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16: widen, exactly
            x = x.float()
        return x.detach().cpu().numpy()
    return np.asarray(x)


def computes_on_cpu() -> bool:
    """Whether Keras places PyTorch tensors on the host CPU (no CUDA or MPS).

    Keras's own choice, `keras.device(...)` scopes included; where its
    internals differ, whether CUDA or MPS is available.
    """
    try:
        from keras.src.backend.torch.core import get_device

        return str(get_device()).startswith("cpu")
    except (ImportError, AttributeError):
        mps = getattr(torch.backends, "mps", None)
        return not (torch.cuda.is_available() or (mps and mps.is_available()))


def variable_values(variables) -> list:
    """The current values of Keras variables (their tensors)."""
    return [v.value for v in variables]


def x64_scope():
    """PyTorch computes in float64 whenever its inputs are float64."""
    return contextlib.nullcontext()


def jit(fn):
    """`fn` run without autograd (PyTorch's eager mode needs no compiling).

    Used for the many forward passes of a gradient check: no graph is recorded.
    """

    def no_grad_fn(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return no_grad_fn


def private_train_step(loss_fn, optimizer, variables):
    """Training steps on a private copy of `variables`' values.

    For training a model without touching it (the sanity check's overfit run
    on a model that cannot be copied): the values and the optimizer's slots
    live here; the model's variables, optimizer and random state are never
    changed.

    Args:
        loss_fn: `fn(trainable_values, *rest) -> (scalar, aux)`.
        optimizer: A fresh Keras optimizer; built here on `variables`.
        variables: The model's trainable variables (their current values
            start the copy).

    Returns:
        `step(*rest)`: one update of the copy; returns the loss before it.
    """
    optimizer.build(variables)
    state = [
        [v.value.detach().clone() for v in variables],
        [v.value.detach().clone() for v in optimizer.variables],
    ]

    def step(*rest):
        leaves = [v.requires_grad_(True) for v in state[0]]
        with torch.enable_grad():
            value, _ = loss_fn(leaves, *rest)
            grads = torch.autograd.grad(value, leaves, allow_unused=True)
        grads = [torch.zeros_like(v) if g is None else g for g, v in zip(grads, leaves)]
        with torch.no_grad():
            values, state[1] = optimizer.stateless_apply(
                state[1], grads, [v.detach() for v in leaves]
            )
        state[0] = [v.detach() for v in values]
        return value.detach()

    return step
