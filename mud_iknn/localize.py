"""Head positions from ikNN maps: the local maxima of a map (predicted or exact) are the heads.

An ikNN map is 1 / (D + 1) with D the distance to the nearest head(s): it peaks at every head and
its other local extrema are minima (points equidistant from several heads), so non-maximum
suppression finds the heads. Points follow the project's convention (:mod:`mud_iknn.labels`):
(x, y) in pixels, pixel (row i, col j) centred at (x = j, y = i).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ["localize", "DEFAULT_THRESHOLD", "DEFAULT_MIN_DISTANCE"]

DEFAULT_THRESHOLD = 0.25
"""Map value a peak must exceed. Chosen on maps of ``TrainConfig.small()`` models trained on
``SyntheticCrowds`` (bench/measure_localize_threshold.py; bench/RESULTS.md): F1 at 8 px is flat
from about 0.15 to 0.35 there and falls off beyond; an exact ikNN map is 1 at a head and at most
1 / 4 three pixels from the nearest one."""

DEFAULT_MIN_DISTANCE = 3
"""Peaks are kept more than this many pixels apart (Chebyshev): the NMS window is 7 x 7 pixels,
which separates heads 6 px apart with room for their subpixel offsets."""


def _check_maps(maps) -> torch.Tensor:
    """(B, H, W) floating maps from (B, H, W) or (B, C, H, W) ``maps`` (channels averaged)."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"maps must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() not in (3, 4):
        raise ValueError(f"maps must have shape (B, H, W) or (B, C, H, W), got {tuple(maps.shape)}")
    if maps.dtype == torch.bool or maps.is_complex():
        raise TypeError(f"maps must hold real numbers, got dtype {maps.dtype}")
    maps = maps.detach()
    if not maps.is_floating_point():
        maps = maps.float()
    if maps.dim() == 4:
        if maps.shape[1] == 0:
            raise ValueError(f"maps have no channels: shape {tuple(maps.shape)}")
        maps = maps.mean(1)
    if maps.numel() and not bool(torch.isfinite(maps).all()):
        raise ValueError("maps hold NaN or infinite values")
    return maps.float()


def _refine(maps: torch.Tensor, b: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """(N, 2) (x, y) of the peaks (b, i, j), each moved by at most half a pixel per axis to the apex
    of a V (|x - x0| slope, the ikNN map's cusp) through it and its two neighbours; no move along an
    axis at the border or on a flat top."""
    height, width = maps.shape[-2:]
    centre = maps[b, i, j]
    offsets = []
    for axis, (index, size) in enumerate(((j, width), (i, height))):
        inside = (index > 0) & (index < size - 1)
        lo, hi = (index - 1).clamp(min=0), (index + 1).clamp(max=size - 1)
        before = maps[b, i, lo] if axis == 0 else maps[b, lo, j]
        after = maps[b, i, hi] if axis == 0 else maps[b, hi, j]
        drop = 2 * (centre - torch.minimum(before, after))
        shift = torch.where(inside & (drop > 0), (after - before) / torch.where(drop > 0, drop, 1.0),
                            torch.zeros_like(centre))
        offsets.append(index.float() + shift.clamp(-0.5, 0.5))
    return torch.stack(offsets, dim=1)


def localize(maps: torch.Tensor, *, threshold: float = DEFAULT_THRESHOLD,
             min_distance: int = DEFAULT_MIN_DISTANCE,
             counts: Optional[Union[torch.Tensor, Sequence[float]]] = None) -> list[torch.Tensor]:
    """Heads located as the local maxima of ikNN maps.

    Args:
        maps: (B, H, W) or (B, C, H, W) real tensor on any device (channels are averaged).
        threshold: a peak's map value must exceed it (ignored when ``counts`` is given).
        min_distance: a peak is the maximum of the (2 min_distance + 1)^2 window around it; of a
            plateau (equal maxima within a window) one pixel is kept, so peaks are more than
            ``min_distance`` pixels apart (Chebyshev). 0 keeps every pixel above the threshold.
        counts: None, or (B,) head counts: then image b gets its round(counts[b]) highest peaks
            (all its peaks if it has fewer), whatever their value; a peak must then rise above
            the lowest value of its window (a flat background holds no peaks).

    Returns:
        B float32 (N_b, 2) tensors of (x, y) pixel positions on ``maps``' device, in decreasing
        order of map value, each refined to subpixel precision (by at most 0.5 px per axis).

    Raises ValueError for a wrong rank, NaN/infinite maps, a negative ``min_distance``, a
    non-finite threshold or ``counts`` of the wrong length or with negative/NaN entries.
    """
    maps = _check_maps(maps)
    if isinstance(min_distance, bool) or not isinstance(min_distance, int) or min_distance < 0:
        raise ValueError(f"min_distance must be a non-negative integer, got {min_distance!r}")
    batch, height, width = maps.shape
    if counts is not None:
        counts = torch.as_tensor(counts, dtype=torch.float64).detach().cpu().reshape(-1)
        if counts.numel() != batch:
            raise ValueError(f"counts must hold one count per map ({batch}), got {counts.numel()}")
        if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
            raise ValueError(f"counts must be finite and non-negative, got {counts.tolist()}")
    elif not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold != threshold \
            or abs(threshold) == float("inf"):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if batch == 0 or height == 0 or width == 0:
        return [maps.new_zeros((0, 2)) for _ in range(batch)]
    size = 2 * min_distance + 1
    pooled = F.max_pool2d(maps[:, None], size, stride=1, padding=min_distance)[:, 0]
    peak = maps == pooled
    if counts is None:
        peak &= maps > threshold
    else:  # no threshold: keep out the flat background (a window holding one value)
        peak &= maps > -F.max_pool2d(-maps[:, None], size, stride=1, padding=min_distance)[:, 0]
    if min_distance:  # of equal maxima within a window keep the one of highest raster index
        index = torch.arange(height * width, device=maps.device, dtype=torch.float64).reshape(height, width)
        marked = torch.where(peak, index, torch.full_like(index, -1.0))  # float64: indices exact up to 2^53
        peak &= F.max_pool2d(marked[:, None], size, stride=1, padding=min_distance)[:, 0] == index
    b, i, j = peak.nonzero(as_tuple=True)
    values = maps[b, i, j]
    order = torch.argsort(values, descending=True, stable=True)
    order = order[torch.argsort(b[order], stable=True)]  # by image, decreasing value within each
    b, i, j = b[order], i[order], j[order]
    points = _refine(maps, b, i, j)
    per_image = torch.bincount(b, minlength=batch).tolist()
    result = list(torch.split(points, per_image))
    if counts is not None:
        result = [p[:int(round(float(c)))] for p, c in zip(result, counts)]
    return [p.contiguous() for p in result]
