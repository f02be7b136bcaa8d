"""What counts as an integer or a real number in the arguments of the public functions: Python's
and numpy's scalars alike (``np.int64(3)``, ``np.float32(0.5)``), never a bool."""
from __future__ import annotations

import math

import numpy as np

_BOOLS = (bool, np.bool_)


def is_integer(value) -> bool:
    """An int or numpy integer scalar (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, _BOOLS)


def is_real(value) -> bool:
    """An int, float or numpy integer / floating scalar (not a bool); it may be non-finite."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, _BOOLS)


def as_float(value, name: str) -> float:
    """A real argument as a float, an int beyond float's range as +-inf; TypeError naming it otherwise."""
    if not is_real(value):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
