"""Which coordinates and directions of a variable a gradient check probes.

Sampling uniformly from one big vector misses what matters; the check instead
takes, in every variable, the coordinates with the largest analytic gradient
(where a wrong backward pass shows most clearly above round-off) plus a few
random ones (where a bug confined to part of a variable may hide), and one
random ±1 direction, which covers the whole variable at once.

Example:

>>> import numpy as np
>>> g = np.array([[0.1, -5.0], [0.0, 2.0]])
>>> [tuple(int(i) for i in c) for c in choose_coordinates(g, top=1, random=0)]
[(0, 1)]
"""

from __future__ import annotations

import numpy as np


def choose_coordinates(magnitudes, top, random, rng=None):
    """The `top` largest entries of `magnitudes`, then `random` others.

    Args:
        magnitudes: Array whose absolute values rank the coordinates (e.g. the
            analytic gradient), or `None`/all zeros for random picks only.
        top: How many of the largest to take.
        random: How many more to draw uniformly from the rest.
        rng: A `numpy.random.Generator`. Defaults to `None` (seed 0).

    Returns:
        A list of index tuples (distinct, at most `magnitudes.size`).

    Example:

    >>> import numpy as np
    >>> picks = choose_coordinates(np.arange(10.0), top=2, random=3)
    >>> picks[:2], len(set(picks))
    ([(9,), (8,)], 5)
    """
    if top < 0 or random < 0:
        raise ValueError(
            f"Expected non-negative counts. Received: top={top}, random={random}"
        )
    rng = np.random.default_rng(0) if rng is None else rng
    values = np.abs(np.nan_to_num(np.asarray(magnitudes, dtype=np.float64)))
    size = values.size
    shape = values.shape
    flat = values.reshape(-1)
    chosen = []
    if top and np.any(flat > 0):
        count = min(top, size, int(np.count_nonzero(flat)))
        if count < size:
            candidates = np.argpartition(-flat, count - 1)[:count]
        else:
            candidates = np.arange(size)
        chosen = [int(i) for i in candidates[np.argsort(-flat[candidates])]]
    wanted = min(size, len(chosen) + random)
    taken = set(chosen)
    while len(chosen) < wanted:
        need = wanted - len(chosen)
        for i in rng.integers(0, size, size=2 * need + 4):
            if int(i) not in taken:
                taken.add(int(i))
                chosen.append(int(i))
                if len(chosen) == wanted:
                    break
    return [tuple(int(j) for j in np.unravel_index(i, shape)) for i in chosen]


def random_direction(shape, rng=None):
    """A random ±1 (Rademacher) direction: every entry moves by the same amount.

    A step `h` along it moves each coordinate by exactly `h`, i.e. the variable
    as a whole by `h·√size`: the same relative change as a coordinate step. Its
    directional derivative `g·d` is a random-sign sum of all gradient entries,
    so an error confined to part of the variable still shows.

    Example:

    >>> import numpy as np
    >>> d = random_direction((100, 50), np.random.default_rng(1))
    >>> d.shape, sorted(set(d.ravel().tolist()))
    ((100, 50), [-1.0, 1.0])
    """
    rng = np.random.default_rng(0) if rng is None else rng
    bits = rng.random(size=shape, dtype=np.float32) < 0.5
    return np.where(bits, 1.0, -1.0)


def reweighted_examples(sample_weight, examples, rng=None, spread=0.5):
    """The sample weights with each example's scaled by a random factor.

    A variable's gradient over a batch can be exactly zero while no single
    example's is: at an L1 or hinge loss, an output bias gets `±1/n` from
    each example, and balanced signs cancel (with 8 examples and one MAE
    output, about one batch in four). Under random positive example weights
    such a sum is no longer zero, while a variable that no example's loss
    depends on still gets none: that tells the two apart.

    Args:
        sample_weight: `None` or an array whose first axis is the examples.
        examples: How many examples the batch holds.
        rng: A `numpy.random.Generator`. Defaults to `None` (seed 0).
        spread: The factors are drawn uniformly from `1 ± spread`. Defaults
            to `0.5`.

    Returns:
        A float64 array of the weights' shape (`(examples,)` for `None`), or
        `None` when `sample_weight` is a structure (several outputs) or has
        no examples axis.

    Example:

    >>> import numpy as np
    >>> weights = reweighted_examples(None, 4)
    >>> weights.shape, bool(np.all((weights >= 0.5) & (weights <= 1.5)))
    ((4,), True)
    >>> reweighted_examples(np.zeros((4, 3)), 4)[0].tolist()
    [0.0, 0.0, 0.0]
    """
    rng = np.random.default_rng(0) if rng is None else rng
    if sample_weight is None:
        weights = np.ones(examples)
    elif isinstance(sample_weight, (dict, list, tuple)):
        return None
    else:
        weights = np.asarray(sample_weight, dtype=np.float64)
        if weights.ndim == 0 or len(weights) != examples:
            return None
    factors = rng.uniform(1.0 - spread, 1.0 + spread, size=examples)
    return weights * factors.reshape((examples,) + (1,) * (weights.ndim - 1))
