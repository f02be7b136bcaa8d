"""What counts as an integer or a real number in the arguments of the public functions: Python's
and numpy's scalars alike (``np.int64(3)``, ``np.float32(0.5)``), never a bool."""
from __future__ import annotations

import numpy as np

_BOOLS = (bool, np.bool_)


def is_integer(value) -> bool:
    """An int or numpy integer scalar (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, _BOOLS)


def is_real(value) -> bool:
    """An int, float or numpy integer / floating scalar (not a bool); it may be non-finite."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, _BOOLS)
