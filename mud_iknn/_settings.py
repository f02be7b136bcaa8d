"""Settings dataclasses read back from plain dicts (JSON, TOML, command lines, checkpoints)."""
from __future__ import annotations

import dataclasses
import typing


def from_dict(cls, data: dict, what: str):
    """``cls(**data)`` for the dataclass ``cls``; a ValueError names the keys that are not its fields
    (``what`` names the settings in the message)."""
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{what} has unknown fields {sorted(unknown)}")
    return cls(**data)


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_types(obj, what: str) -> None:
    """ValueError naming the field when a field of the dataclass ``obj`` annotated bool, int, float
    or str (or Optional / a Union of those) holds a value of another type: settings parsed from
    text (e.g. ``--set amp=False``, where "False" is not JSON and stays a string) would otherwise
    pass as truthy strings. Fields of other types check themselves."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        hint = hints[f.name]
        allowed = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
        scalars = [t for t in allowed if t in _KINDS]
        value = getattr(obj, f.name)
        if not scalars or (value is None and type(None) in allowed):
            continue
        if len(scalars) < len([t for t in allowed if t is not type(None)]):
            continue  # a Union with other types: checked by the class itself
        ok = any(isinstance(value, t) and not (t in (int, float) and isinstance(value, bool)) or
                 (t is float and isinstance(value, int) and not isinstance(value, bool)) for t in scalars)
        if not ok:
            expected = " or ".join(_KINDS[t] for t in scalars) + (" or null" if type(None) in allowed else "")
            raise ValueError(f"{what} {f.name} must be {expected}, got {value!r}")
