"""Argument checks shared by the callbacks and the writer (pure Python)."""

import operator


def check_int(name, value, minimum):
    """Returns `value` as an int, or raises a clear error naming the argument.

    Raises:
        TypeError: `value` is not an integer.
        ValueError: `value` is below `minimum`.

    Example:

    >>> check_int("histogram_freq", 2, 1)
    2
    """
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(
            f"`{name}` must be an integer. Received: {name}={value!r}"
        ) from None
    if number < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}. Received: {name}={value!r}")
    return number
