"""Settings dataclasses read back from plain dicts (JSON, TOML, command lines, checkpoints)."""
from __future__ import annotations

import dataclasses
import json
import typing

from ._checks import is_integer, is_real


def from_dict(cls, data: dict, what: str):
    """``cls(**data)`` for the dataclass ``cls``; a ValueError names the keys that are not its fields
    (``what`` names the settings in the message)."""
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{what} has unknown fields {sorted(unknown)}")
    return cls(**data)


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _is(value, kind) -> bool:
    """isinstance for settings: a bool is no int or float, an int is a float."""
    if kind is bool or kind is str:
        return isinstance(value, kind)
    return isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)


def _python_number(value, kinds):
    """A numpy scalar as the Python int or float a setting of ``kinds`` holds (settings are saved as
    JSON and in checkpoints); None for anything else."""
    if isinstance(value, (int, float)):
        return None
    if int in kinds and is_integer(value):
        return int(value)
    if float in kinds and is_real(value):
        return float(value)
    return None


def check_types(obj, what: str) -> None:
    """ValueError naming the field when a field of the dataclass ``obj`` annotated bool, int, float
    or str (or Optional / a Union of those) holds a value of another type: settings parsed from
    text (e.g. ``--set amp=False``, where "False" is not JSON and stays a string) would otherwise
    pass as truthy strings. A numpy scalar in an int or float field becomes the Python number.
    Fields of other types check themselves."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        hint = hints[f.name]
        allowed = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
        optional = type(None) in allowed
        kinds = [t for t in allowed if t is not type(None)]
        if not all(t in _KINDS for t in kinds):
            continue  # a class, or a Union with one: checked by the dataclass itself
        value = getattr(obj, f.name)
        number = _python_number(value, kinds)
        if number is not None:
            object.__setattr__(obj, f.name, number)  # frozen dataclasses too
            continue
        if (value is None and optional) or any(_is(value, t) for t in kinds):
            continue
        expected = " or ".join(_KINDS[t] for t in kinds) + (" or null" if optional else "")
        raise ValueError(f"{what} {f.name} must be {expected}, got {value!r}")


_PYTHON_LITERALS = {"True": True, "False": False, "None": None}


def apply_setting(settings: dict, assignment: str) -> None:
    """Applies ``KEY=VALUE`` to the nested settings dict ``settings`` in place: a dotted KEY reaches
    nested settings (``label.k=3``); VALUE is parsed as JSON (Python's True / False / None too),
    else kept as a string. ValueError if malformed."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ValueError(f"expects KEY=VALUE, got {assignment!r}")
    try:
        value = _PYTHON_LITERALS[text] if text in _PYTHON_LITERALS else json.loads(text)
    except ValueError:
        value = text
    *parents, leaf = key.split(".")
    node = settings
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"{key}: {part} is not a group of settings")
    node[leaf] = value


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied, nested settings (dicts) merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
