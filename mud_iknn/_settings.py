"""Settings dataclasses read back from plain dicts (JSON, TOML, checkpoints)."""
from __future__ import annotations

import dataclasses


def from_dict(cls, data: dict, what: str):
    """``cls(**data)`` for the dataclass ``cls``; a ValueError names the keys that are not its fields
    (``what`` names the settings in the message)."""
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{what} has unknown fields {sorted(unknown)}")
    return cls(**data)
