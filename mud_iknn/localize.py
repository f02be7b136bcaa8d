"""Head positions from ikNN maps: the local maxima of a map (predicted or exact) are the heads.

An ikNN map is 1 / (D + 1) with D the distance to the nearest head(s): it peaks at every head and
its other local extrema are minima (points equidistant from several heads), so non-maximum
suppression finds the heads. Points follow the project's convention (:mod:`mud_iknn.labels`):
(x, y) in pixels, pixel (row i, col j) centred at (x = j, y = i).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from . import _C
from ._checks import is_integer, is_real

__all__ = ["localize", "DEFAULT_THRESHOLD", "DEFAULT_MIN_DISTANCE"]

DEFAULT_THRESHOLD = 0.16
"""Map value a peak must exceed. Chosen, with ``DEFAULT_MIN_DISTANCE``, by the F1 of the located
heads on the stitched maps of ``TrainConfig.small()`` models (bench/measure_localize_threshold.py,
tables in bench/RESULTS.md): trained on the bench's three ShanghaiTech-sized synthetic sets (their
test images) and on ``SyntheticCrowds``. Trained maps peak well below 1 at their heads, and how far
below depends on the training, so the threshold sits low: the first set's maps keep no head above
0.3. On an exact ikNN map a head is 1 and a pixel 4 px from every head 0.2. A trained checkpoint
carries its own, calibrated on its training images (:func:`mud_iknn.evaluate.calibrate_localization`);
these are for maps without one."""

DEFAULT_MIN_DISTANCE = 2
"""Peaks are kept more than this many pixels apart (Chebyshev): a 5 x 5 window, better than 1 and 3
on both measurements (1 keeps the trained maps' spurious side peaks; wider windows merge
neighbouring heads of dense crowds)."""


def _check_maps(maps) -> torch.Tensor:
    """(B, H, W) floating maps from (B, H, W) or (B, C, H, W) ``maps`` (channels averaged); NaN and
    infinite values are refused by :func:`_peaks`, which reads every value anyway."""
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
    return maps.float().contiguous()


def _not_finite() -> ValueError:
    return ValueError("maps hold NaN or infinite values")


_GATHER_ELEMENTS = 1 << 22  # candidates x window pixels gathered at once


def _window_values(flat: torch.Tensor, shape, b, i, j, di, dj, fill) -> torch.Tensor:
    """(K, D) values of ``flat`` (the (B, H, W) maps flattened) at (i + di, j + dj) of image b,
    ``fill`` outside the map."""
    _, height, width = shape
    ni, nj = i[:, None] + di, j[:, None] + dj
    inside = (ni >= 0) & (ni < height) & (nj >= 0) & (nj < width)
    index = (b[:, None] * height + ni.clamp(0, height - 1)) * width + nj.clamp(0, width - 1)
    return flat[index].masked_fill_(~inside, fill)


def _chunked(fn, count: int, width: int, device) -> torch.Tensor:
    """torch.cat of fn(slice) over slices of range(count), each of about _GATHER_ELEMENTS / width."""
    chunk = max(1, _GATHER_ELEMENTS // max(width, 1))
    parts = [fn(slice(s, s + chunk)) for s in range(0, count, chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool, device=device)


def _cpu_peaks(maps: torch.Tensor, threshold: float, radius: int, strict: bool) -> torch.Tensor:
    """(K,) int64 flat indices, ascending, of the peaks of the contiguous (B, H, W) float32 CPU
    ``maps`` as :func:`_peaks` defines them (radius >= 1), by the C++ pass of peaks.h (a second
    call only where they outnumber a first guess, as on large plateaus); ValueError where a value
    is NaN or infinite."""
    batch, height, width = maps.shape
    args = _C.PeakArgs()
    args.maps, args.batch, args.height, args.width = maps.data_ptr(), batch, height, width
    args.threshold, args.radius, args.strict = threshold, radius, strict
    threads = max(1, torch.get_num_threads())
    out = torch.empty(min(maps.numel(), 1 << 16), dtype=torch.int64)
    while True:
        args.out, args.capacity = out.data_ptr(), out.numel()
        found = _C.find_peaks(args, threads)
        if found < 0:
            raise _not_finite()
        if found <= out.numel():
            return out[:found]
        out = torch.empty(found, dtype=torch.int64)


def _peaks(maps: torch.Tensor, threshold: float, radius: int, flat_ok: bool):
    """(b, i, j) of the pixels above ``threshold`` that are the maximum of their (2 radius + 1)^2
    window, one per plateau (of equal maxima within a window, the highest raster index), and,
    unless ``flat_ok``, above the window's minimum. On the CPU (radius >= 1) one C++ pass; elsewhere
    torch ops whose dense work is one comparison and one nonzero, the rest running on the
    candidates: first against their 4 neighbours, then on the survivors' windows, then the
    survivors' plateaus. ValueError where a value is NaN or infinite (non-empty maps)."""
    if radius and maps.device.type == "cpu":  # the C++ pass checks the values as it reads them
        height, width = maps.shape[1:]
        linear = _cpu_peaks(maps, threshold, radius, strict=not flat_ok)
        return linear // (height * width), linear % (height * width) // width, linear % width
    if not all(math.isfinite(v) for v in torch.aminmax(maps)):  # NaN propagates
        raise _not_finite()
    return _torch_peaks(maps, threshold, radius, flat_ok)


def _torch_peaks(maps: torch.Tensor, threshold: float, radius: int, flat_ok: bool):
    """:func:`_peaks` in torch ops, on any device."""
    shape, flat = maps.shape, maps.reshape(-1)
    height, width = shape[1:]
    linear = (flat > threshold).nonzero().squeeze(1)
    if radius:  # a window's maximum is >= its 4 neighbours
        centre, col, row = flat[linear], linear % width, linear // width % height
        ok = torch.ones_like(linear, dtype=torch.bool)
        for step, along, edge in ((-1, col, 0), (1, col, width - 1), (-width, row, 0), (width, row, height - 1)):
            ok &= (flat[(linear + step).clamp_(0, flat.numel() - 1)] <= centre) | (along == edge)
        linear = linear[ok]
    b, i, j = linear // (height * width), linear % (height * width) // width, linear % width
    if not radius:
        return b, i, j
    offsets = torch.arange(-radius, radius + 1, device=maps.device)
    di, dj = (g.reshape(-1) for g in torch.meshgrid(offsets, offsets, indexing="ij"))
    centre = flat[linear][:, None]

    def is_max(s):
        values = _window_values(flat, shape, b[s], i[s], j[s], di, dj, float("-inf"))
        ok = (values <= centre[s]).all(1)
        if not flat_ok:
            ok &= (values.masked_fill_(values == float("-inf"), float("inf")) < centre[s]).any(1)
        return ok

    keep = _chunked(is_max, len(b), di.numel(), maps.device)
    b, i, j = b[keep], i[keep], j[keep]
    peak = torch.zeros(flat.shape, dtype=torch.bool, device=maps.device)
    peak[(b * shape[1] + i) * shape[2] + j] = True
    later = (di > 0) | ((di == 0) & (dj > 0))  # raster-later pixels of the window
    first = _chunked(lambda s: ~_window_values(peak, shape, b[s], i[s], j[s], di[later], dj[later], False).any(1),
                     len(b), int(later.sum()), maps.device)
    return b[first], i[first], j[first]


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
            the lowest value of its window (a flat background holds no peaks), but for
            ``min_distance=0``, whose window is the pixel alone: its round(counts[b]) highest pixels.

    Returns:
        B float32 (N_b, 2) tensors of (x, y) pixel positions on ``maps``' device, in decreasing
        order of map value, each refined to subpixel precision (by at most 0.5 px per axis).

    Raises ValueError for a wrong rank, NaN/infinite maps, a negative ``min_distance``, a
    non-finite threshold or ``counts`` of the wrong length or with negative/NaN entries;
    TypeError for ``counts`` that are not numbers.
    """
    if not is_integer(min_distance) or min_distance < 0:
        raise ValueError(f"min_distance must be a non-negative integer, got {min_distance!r}")
    min_distance = int(min_distance)
    maps = _check_maps(maps)
    batch, height, width = maps.shape
    if counts is not None:
        try:
            counts = torch.as_tensor(counts, dtype=torch.float64).detach().cpu().reshape(-1)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"counts must be (B,) numbers, got {counts!r}: {err}") from None
        if counts.numel() != batch:
            raise ValueError(f"counts must hold one count per map ({batch}), got {counts.numel()}")
        if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
            raise ValueError(f"counts must be finite and non-negative, got {counts.tolist()}")
    elif not is_real(threshold) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    else:
        threshold = float(threshold)
    if batch == 0 or height == 0 or width == 0:
        return [maps.new_zeros((0, 2)) for _ in range(batch)]
    # The windows are clipped to the map: any radius from max(H, W) - 1 on is the whole map (a wider
    # one would only cost: the torch path builds its (2 radius + 1)^2 offsets, the C++ one takes an int).
    radius = min(min_distance, max(height, width))
    b, i, j = _peaks(maps, threshold if counts is None else float("-inf"), radius, flat_ok=counts is None)
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
