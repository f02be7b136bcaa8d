"""The registry of label kinds: what map the map modules learn, and how it is made from head points.

Each kind is a small frozen dataclass of its own parameters (defaults, validation, a line of help
each) with ``make(points, size, offsets)`` calling the label engine; :data:`KINDS` maps its name to
it. Training (``TrainConfig.label``), checkpoints, the command line (``mud-iknn labels --kind``,
``mud-iknn train --label`` and their options) and the docs all read this registry, so a new kind is
one class here and one line in :data:`KINDS`.

Kinds: ``iknn`` (the paper's inverse kNN maps), ``density`` (Gaussian density maps, CSRNet's
geometry-adaptive ones by default), ``fidt`` (FIDTM's focal inverse distance transform), ``count``
(heads per label pixel, as DM-Count and P2PNet-style methods train on).

Serialised as ``{"kind": name, **parameters}`` (:meth:`LabelKind.to_dict`, :func:`from_dict`).
The flat form written before the registry (every kind's options in one dict: kind, k, transform,
max_distance, sigma, beta, truncate) still loads.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

import torch

from . import _settings, labels
from ._checks import as_float, is_integer

__all__ = ["LabelKind", "IknnLabel", "DensityLabel", "FidtLabel", "CountLabel", "KINDS", "from_dict",
           "label_kind"]


def option(default, help: str, *, choices: Optional[tuple] = None, bound: Optional[str] = None):
    """A parameter of a label kind: its default, the line of help the command line shows, and for a
    number its ``bound`` ("positive" or "non-negative", checked with the kind) or for a string its
    ``choices``."""
    return field(default=default, metadata={"help": help, "choices": choices, "bound": bound})


_BOUNDS = {"positive": lambda v: v > 0, "non-negative": lambda v: v >= 0}


@dataclass(frozen=True)
class LabelKind:
    """A kind of label map and its parameters; subclasses add the parameters, ``_check`` them and
    ``_make`` the maps."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line: what the map is

    def __post_init__(self):
        _settings.check_types(self, f"label kind {self.name}:")
        for f in dataclasses.fields(self):
            value, choices, bound = getattr(self, f.name), f.metadata["choices"], f.metadata["bound"]
            if choices and value not in choices:
                raise ValueError(f"label kind {self.name}: {f.name} must be one of {', '.join(map(repr, choices))}, "
                                 f"got {value!r}")
            if bound and isinstance(value, (int, float)) \
                    and not (math.isfinite(as_float(value, f.name)) and _BOUNDS[bound](value)):
                raise ValueError(f"label kind {self.name}: {f.name} must be {bound} and finite, got {value!r}")
        try:
            self._check()
        except (TypeError, ValueError) as err:
            raise ValueError(f"label kind {self.name}: {err}") from None

    def _check(self) -> None:
        """Raises TypeError / ValueError naming a parameter the engine would refuse."""

    @property
    def kind(self) -> str:
        return self.name

    def make(self, points, size: tuple[int, int], offsets=None, *, stride: int = 1,
             validate: bool = False, input_size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """(B, H', W') float32 label maps on the points' device.

        points: packed (P, 2) float32 (x, y) in input pixels (or any form :mod:`mud_iknn.labels`
        takes); offsets: (B + 1) int64; size: (H', W') of the label. With ``stride`` s > 1 label
        pixel (i, j) covers input pixels [s*i, s*i + s) x [s*j, s*j + s). ``input_size``: (H, W) of
        the input, with H' = ceil(H / s) and W' = ceil(W / s) (default (s H', s W')): where s does not
        divide it, the last label pixels reach past the input, and a head there (outside the input)
        is no head of the count maps (for the other kinds heads outside shape the map anyway).
        validate=False (the default here) skips the value checks that would synchronise with the
        device: a training loop builds its offsets itself.
        """
        if not is_integer(stride) or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")
        size, stride = tuple(size), int(stride)
        if input_size is None:
            input_size = (size[0] * stride, size[1] * stride)
        else:
            input_size = labels._check_size(input_size, map_pixels=False)
            if tuple(-(-n // stride) for n in input_size) != tuple(size):
                raise ValueError(f"input_size {input_size} at stride {stride} gives labels of "
                                 f"{tuple(-(-n // stride) for n in input_size)}, not size {size}")
        return self._make(points, size, offsets, stride, validate, input_size)

    def _make(self, points, size, offsets, stride, validate, input_size) -> torch.Tensor:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"kind": self.name, **dataclasses.asdict(self)}

    @classmethod
    def parameters(cls) -> list[dataclasses.Field]:
        """The kind's parameters (name, default, metadata["help"], ["choices"] and ["bound"])."""
        return list(dataclasses.fields(cls))


def _scaled_call(maps, points, size, offsets, stride, validate, **params):
    """``maps(points in label pixels, size, ...)`` for the distance-based kinds: x' = (x - (s - 1) / 2) / s
    puts the label pixels' centres on the centres of their input pixel blocks (distances and sigmas
    are then in label pixels)."""
    if stride != 1:
        points, offsets = labels.pack_points(points, offsets, validate=validate)
        points = (points - (stride - 1) / 2.0) / stride
    return maps(points, size, offsets=offsets, validate=validate, **params)


@dataclass(frozen=True)
class IknnLabel(LabelKind):
    name: ClassVar[str] = "iknn"
    summary: ClassVar[str] = "inverse kNN maps 1 / (D_k + 1) (MUD-ikNN)"
    k: int = option(1, "nearest heads whose mean distance D_k is taken (the paper's final setup: 1)")
    transform: str = option("inverse", "1/(D+1) (inverse) or 1/sqrt(D+1) (inverse_sqrt)",
                            choices=("inverse", "inverse_sqrt"))
    max_distance: Optional[float] = option(None, "clip each distance at this many pixels before the mean "
                                                 "(the 2019 code: 112)", bound="positive")

    def _check(self):
        labels._check_k(self.k)
        if self.max_distance is not None:
            labels._check_positive(self.max_distance, "max_distance", labels._MIN_DISTANCE)

    def _make(self, points, size, offsets, stride, validate, input_size):
        return _scaled_call(labels.iknn_maps, points, size, offsets, stride, validate, k=self.k,
                            max_distance=self.max_distance, transform=self.transform)


@dataclass(frozen=True)
class DensityLabel(LabelKind):
    name: ClassVar[str] = "density"
    summary: ClassVar[str] = "Gaussian density maps, unit mass per head (CSRNet's adaptive sigmas by default)"
    sigma: Union[str, float] = option("adaptive", "'adaptive' (beta x mean distance to the k nearest other "
                                                  "heads) or a fixed width in pixels")
    k: int = option(3, "adaptive sigma: nearest other heads")
    beta: float = option(0.3, "adaptive sigma: factor", bound="positive")
    truncate: float = option(4.0, "Gaussians cut at this many sigmas", bound="positive")

    def _check(self):
        if isinstance(self.sigma, str):
            if self.sigma != "adaptive":
                raise ValueError(f"sigma must be 'adaptive' or a positive number, got {self.sigma!r}")
        elif labels._check_positive(self.sigma, "sigma") > labels._MAX_SIGMA:
            raise ValueError(f"sigma must be at most {labels._MAX_SIGMA:g} pixels, got {self.sigma}")
        labels._check_k(self.k, "k", labels.MAX_K - 1)
        if self.truncate > labels._MAX_TRUNCATE:
            raise ValueError(f"truncate must be at most {labels._MAX_TRUNCATE}, got {self.truncate}")

    def _make(self, points, size, offsets, stride, validate, input_size):
        return _scaled_call(labels.density_maps, points, size, offsets, stride, validate, sigma=self.sigma,
                            k=self.k, beta=self.beta, truncate=self.truncate)


@dataclass(frozen=True)
class FidtLabel(LabelKind):
    name: ClassVar[str] = "fidt"
    summary: ClassVar[str] = "focal inverse distance transform 1 / (D^(alpha D + beta) + c) (FIDTM)"
    alpha: float = option(0.02, "exponent slope", bound="non-negative")
    beta: float = option(0.75, "exponent offset", bound="non-negative")
    c: float = option(1.0, "added to the power", bound="positive")
    zero_below: float = option(0.0, "values below it set to 0 (FIDTM's 0.01)", bound="non-negative")

    def _check(self):
        labels._check_fidt(self.alpha, self.beta, self.c, self.zero_below)

    def _make(self, points, size, offsets, stride, validate, input_size):
        return _scaled_call(labels.fidt_maps, points, size, offsets, stride, validate, alpha=self.alpha,
                            beta=self.beta, c=self.c, zero_below=self.zero_below)


@dataclass(frozen=True)
class CountLabel(LabelKind):
    name: ClassVar[str] = "count"
    summary: ClassVar[str] = "heads per label pixel (each covers stride x stride input pixels)"

    def _make(self, points, size, offsets, stride, validate, input_size):
        return labels.count_maps(points, input_size, stride, offsets=offsets, validate=validate)


#: kind name -> its class
KINDS: dict[str, type[LabelKind]] = {cls.name: cls for cls in (IknnLabel, DensityLabel, FidtLabel, CountLabel)}

# The flat settings of every label before the registry (mud_iknn.loss.LabelSpec): kind, k (None:
# 1 for iknn, 3 for density), then iknn's transform and max_distance, density's sigma, beta, truncate.
_FLAT_KEYS = {"kind", "k", "transform", "max_distance", "sigma", "beta", "truncate"}


def label_kind(name: str, **parameters) -> LabelKind:
    """The label kind ``name`` with these parameters (the others at their defaults)."""
    if name not in KINDS:
        raise ValueError(f"label kind must be one of {', '.join(KINDS)}, got {name!r}")
    cls = KINDS[name]
    unknown = set(parameters) - {f.name for f in cls.parameters()}
    if unknown:
        own = ", ".join(f.name for f in cls.parameters()) or "none"
        raise ValueError(f"label kind {name} has no setting {', '.join(sorted(unknown))} (its settings: {own})")
    return cls(**parameters)


def from_dict(data: dict) -> LabelKind:
    """The label kind a dict describes: ``{"kind": name, **parameters}`` (kind defaults to iknn),
    or the flat form of checkpoints written before the registry."""
    if not isinstance(data, dict):
        raise ValueError(f"a label must be a dict of its settings, got {data!r}")
    data = dict(data)
    name = data.pop("kind", "iknn")
    if set(data) | {"kind"} == _FLAT_KEYS and name in ("iknn", "density"):
        own = {f.name for f in KINDS[name].parameters()}
        data = {key: value for key, value in data.items() if key in own and not (key == "k" and value is None)}
    return label_kind(name, **data)
