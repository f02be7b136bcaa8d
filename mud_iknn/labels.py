"""Training labels from head points: kNN distance, ikNN, FIDT, Gaussian density and count maps.

Conventions (shared by every function here and by :mod:`mud_iknn.reference`):

* Points are (x, y) in pixels, 0-based, x right, y down; the pixel at (row i, col j) is centred at
  (x = j, y = i). A map of size (H, W) is evaluated at every pixel centre.
* Heads outside [0, W) x [0, H) are real heads and shape the map near the border: the map of a
  crop, given every head shifted by the crop offset, equals that crop of the full map.
* ``points`` is a list of B arrays/tensors of shape (N_i, 2), or one packed (P, 2) array/tensor
  with ``offsets`` (B + 1 int64: first 0, last P, non-decreasing), or one (N, 2) array/tensor
  without ``offsets`` (B = 1). Coordinates of any real or integer dtype are converted to float32;
  other dtypes raise TypeError. The maps are training targets, not differentiable in the points:
  points that require grad are detached (the results never require grad).
* numpy arrays and CPU tensors run the multi-threaded C++ kernel (``torch.get_num_threads()``
  threads); CUDA tensors run the CUDA kernels on their device and the current stream. The result
  is a float32 torch.Tensor of shape (B, H, W) on the points' device, freshly allocated, or
  ``out`` when given (a contiguous float32 (B, H, W) tensor there, every pixel overwritten:
  repeated CPU calls then skip the page faults of a fresh output: a quarter of a 32-crop batch's
  kNN time, three quarters of its density time).
* ``validate=True`` checks that coordinates are finite and within +-1e18 pixels (squared
  distances beyond 1.8e19 px overflow float32) and that offsets are consistent; for CUDA inputs
  this reads one flag back from the device. ``validate=False`` skips those value checks (never the
  shape, dtype and device checks) so that a training loop makes its labels without any
  host-device synchronisation; NaN heads or bad offsets then give undefined maps, but the kernels
  clamp every index, so they never read or write outside their buffers.
* Limits (exported by ``mud_iknn._C``: MAX_IMAGES, MAX_POINTS, ...): at most 65535 images and
  2^31 - 1 heads per call, 2^31 - 1 pixels per map and 2^24 per side, k <= MAX_K, Gaussian widths
  up to 1e7 pixels (wider adaptive sigmas, from heads 3e7 px apart, are skipped), max_distance >=
  1e-18 px. The kernels square distances in float32: below
  1e-18 px distances lose relative precision (from about 1e-23 px they are 0).
"""
from __future__ import annotations

import functools
import math
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import _ops
from ._checks import as_float, is_integer

__all__ = ["knn_distance_maps", "iknn_maps", "fidt_maps", "density_maps", "head_sigmas", "count_maps",
           "pack_points", "MAX_K", "backend_info"]

MAX_K = _ops.MAX_K
backend_info = _ops.backend_info  # CUDA compiled in or not, its architectures, visible devices
_C = _ops._C                       # the engine's limits (csrc/labels.h)
_MAX_MAP_PIXELS = _C.MAX_MAP_PIXELS
_MAX_MAP_SIDE = _C.MAX_MAP_SIDE      # every pixel centre is exact in float32 (the kernels' coordinates)
_MAX_IMAGES = _C.MAX_IMAGES          # CUDA grid dimension
_MAX_POINTS = _C.MAX_POINTS          # int32 indices in the kernels
_MAX_SIGMA = _C.MAX_SIGMA            # kernels skip wider Gaussians (keeps radii in int range)
_MAX_TRUNCATE = _C.MAX_TRUNCATE
_MAX_COORDINATE = _C.MAX_COORDINATE  # squared distances of the kernels stay finite in float32
_MIN_DISTANCE = _C.MIN_DISTANCE      # and normal (distances below it lose relative precision, from 1e-23 px are 0)
_NO_PARAMS = (0.0, 0.0, 1.0, 0.0)    # the transform parameters of the kinds other than FIDT

PointsLike = Union[np.ndarray, torch.Tensor, Sequence[Union[np.ndarray, torch.Tensor]]]


def _as_points_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array: pass only the valid points (its mask would be ignored)")
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise TypeError(f"{name} must hold real numbers, got numpy dtype {value.dtype}")
        if np.issubdtype(value.dtype, np.floating) and value.dtype.itemsize > 4:
            wide = np.abs(value[np.isfinite(value)])  # finite coordinates float32 cannot hold become inf
            if wide.size and wide.max() > _MAX_COORDINATE:
                raise ValueError(f"{name} holds coordinates beyond +-{_MAX_COORDINATE:g} pixels (largest "
                                 f"{float(wide.max()):g})")
        value = np.ascontiguousarray(value, dtype=np.float32)  # any width (long double too)
        value = torch.from_numpy(value if value.flags.writeable else value.copy())  # torch warns on read-only
    elif not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError, OverflowError) as err:
            raise TypeError(f"{name} must be an array or tensor of (x, y) pairs: {err}") from None
    if value.layout != torch.strided or value.is_nested:
        raise TypeError(f"{name} must be a dense (strided) tensor, got a {value.layout} one")
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    if value.dim() != 2 or value.shape[1] != 2:
        if value.numel() == 0 and value.dim() in (1, 2):
            value = value.reshape(0, 2)
        else:
            raise ValueError(f"{name} must have shape (N, 2) holding (x, y), got {tuple(value.shape)}")
    return value.detach().to(torch.float32).contiguous()


def _as_offsets_tensor(value) -> torch.Tensor:
    """``offsets`` as a (B + 1,) integer tensor (not yet checked for values); TypeError /
    ValueError naming it otherwise."""
    if not isinstance(value, torch.Tensor):
        array = np.asarray(value) if not isinstance(value, str) else np.asarray(value, dtype=object)
        if array.dtype.kind not in "iu" and array.size:  # strings, objects, floats: not offsets
            raise TypeError(f"offsets must be integers, got {array.dtype} values like {array.ravel()[:3].tolist()}")
        try:
            value = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
        except (OverflowError, TypeError, ValueError) as err:
            raise TypeError(f"offsets must be int64 integers: {err}") from None
    if value.dtype.is_floating_point or value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"offsets must be integers, got dtype {value.dtype}")
    if value.dim() != 1 or value.numel() < 1:
        raise ValueError(f"offsets must have shape (B + 1,), got {tuple(value.shape)}")
    return value


def _offsets_on(device: torch.device, values) -> torch.Tensor:
    """(B + 1,) int64 offsets known on the host, on ``device``: for CUDA through pinned memory and an
    asynchronous copy (a plain copy from pageable memory would wait for the stream's queued work)."""
    offsets = torch.as_tensor(values, dtype=torch.int64)
    if device.type != "cuda":
        return offsets
    return offsets.pin_memory().to(device, non_blocking=True)


def pack_points(points: PointsLike, offsets=None, *, validate: bool = True):
    """Packed (P, 2) float32 points and (B + 1,) int64 offsets on the points' device.

    Accepts the three forms described in the module docstring. Raises ValueError/TypeError naming
    ``points`` or ``offsets`` for anything malformed.
    """
    offsets_ok = None  # with validate: a 0-d bool tensor on the points' device, read with the points' check
    if isinstance(points, (list, tuple)):
        if offsets is not None:
            raise ValueError("offsets must be None when points is a list of per-image arrays")
        parts = [_as_points_tensor(p, f"points[{i}]") for i, p in enumerate(points)]
        devices = {p.device for p in parts}
        if len(devices) > 1:
            raise ValueError(f"points: all images must be on one device, got {sorted(map(str, devices))}")
        device = parts[0].device if parts else torch.device("cpu")
        counts = [0] + [p.shape[0] for p in parts]
        packed = torch.cat(parts) if parts else torch.zeros(0, 2)
        offs = _offsets_on(device, np.cumsum(counts))
        packed = packed.to(device)
    else:
        packed = _as_points_tensor(points, "points")
        if offsets is None:
            offs = _offsets_on(packed.device, [0, packed.shape[0]])
        else:
            offsets = _as_offsets_tensor(offsets)
            if offsets.device != packed.device:
                raise ValueError(f"offsets is on {offsets.device} but points is on {packed.device}")
            offs = offsets.to(torch.int64).contiguous()
            if validate:
                offsets_ok = (offs[0] == 0) & (offs[-1] == packed.shape[0]) & (offs[1:] >= offs[:-1]).all()
    if packed.device.type not in ("cpu", "cuda"):
        raise ValueError(f"points must be on the CPU or a CUDA device, got {packed.device}")
    if validate:  # one read from the device for both checks
        points_ok = (packed.abs() <= _MAX_COORDINATE).all()  # False for NaN too
        if not bool(points_ok if offsets_ok is None else points_ok & offsets_ok):
            if offsets_ok is not None and not bool(offsets_ok):
                raise ValueError(f"offsets must start at 0, end at P = {packed.shape[0]} and never "
                                 f"decrease, got {offs.tolist() if offs.numel() <= 20 else 'a bad array'}")
            if not bool(torch.isfinite(packed).all()):
                raise ValueError("points holds NaN or infinite coordinates")
            raise ValueError(f"points holds coordinates beyond +-{_MAX_COORDINATE:g} pixels (largest "
                             f"{float(packed.abs().max()):g})")
    if offs.numel() - 1 > _MAX_IMAGES:
        raise ValueError(f"points: at most {_MAX_IMAGES} images per call, got {offs.numel() - 1}")
    if packed.shape[0] > _MAX_POINTS:
        raise ValueError(f"points: at most {_MAX_POINTS} heads per call, got {packed.shape[0]}")
    return packed, offs


def _check_size(size, map_pixels: bool = True) -> tuple[int, int]:
    """(H, W) of a map; ``map_pixels=False`` for a size whose map is smaller (count maps at a
    stride check their cells themselves)."""
    try:
        height, width = (int(s) for s in size)
        if any(int(s) != s or isinstance(s, (bool, np.bool_)) for s in size):
            raise TypeError
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"size must be a pair of integers (H, W), got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got (H, W) = ({height}, {width})")
    if max(height, width) > _MAX_MAP_SIDE:
        raise ValueError(f"size ({height}, {width}): each side must be at most {_MAX_MAP_SIDE} pixels")
    if map_pixels and height * width > _MAX_MAP_PIXELS:
        raise ValueError(f"size {height}x{width} exceeds the {_MAX_MAP_PIXELS} pixels one map may hold")
    return height, width


def _check_k(k, name="k", limit=MAX_K) -> int:
    if not is_integer(k):
        raise TypeError(f"{name} must be an integer, got {k!r}")
    if not 1 <= k <= limit:
        raise ValueError(f"{name} must be in [1, {limit}], got {k}")
    return int(k)


def _check_stride(stride) -> int:
    """A positive integer stride (cells of stride x stride pixels): TypeError / ValueError naming it."""
    if not is_integer(stride):
        raise TypeError(f"stride must be a positive integer, got {stride!r}")
    if stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    return int(stride)


def _check_positive(value, name: str, least: float = 0.0) -> float:
    value = as_float(value, name)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    if value < least:
        raise ValueError(f"{name} must be at least {least:g}, got {value:g}")
    return value


def _check_non_negative(value, name: str) -> float:
    number = as_float(value, name)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be non-negative and finite, got {value}")
    return number


class _OutputGuard:
    """Refuses a (B, H, W) float32 output larger than the host's memory (an over-committed
    allocation would only fail when written), and turns an allocation failure into an error that
    names the size."""

    def __init__(self, batch: int, height: int, width: int, device: torch.device):
        self.batch, self.height, self.width, self.device = batch, height, width, device

    def _error(self) -> MemoryError:
        gib = self.batch * self.height * self.width * 4 / 2**30
        return MemoryError(f"size ({self.height}, {self.width}) with batch {self.batch}: the {gib:.1f} GiB "
                           f"output cannot be allocated on {self.device}")

    def __enter__(self):
        if self.device.type == "cpu" and self.batch * self.height * self.width * 4 > _HOST_MEMORY_BYTES:
            raise self._error()
        return self

    def __exit__(self, exc_type, exc, tb):
        out_of_memory = exc_type is not None and (
            issubclass(exc_type, (torch.OutOfMemoryError, MemoryError)) or
            (issubclass(exc_type, RuntimeError) and "allocate" in str(exc)))
        if out_of_memory:
            raise self._error() from exc
        return False


def _host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: rely on the allocator's own error
        return 2**63


_HOST_MEMORY_BYTES = _host_memory_bytes()


def _check_out(out, batch: int, height: int, width: int, points: torch.Tensor) -> None:
    """Raises unless ``out`` can take (B, H, W) maps of ``points`` (memory overlap: the op checks)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.dtype != torch.float32:
        raise TypeError(f"out must be float32, got {out.dtype}")
    if tuple(out.shape) != (batch, height, width):
        raise ValueError(f"out must have shape (B, H, W) = ({batch}, {height}, {width}), got {tuple(out.shape)}")
    if out.device != points.device:
        raise ValueError(f"out is on {out.device} but points is on {points.device}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    if out.requires_grad:
        raise ValueError("out must not require grad (the maps are written in place)")


def knn_distance_maps(points: PointsLike, size, k: int = 1, *, offsets=None,
                      max_distance: Optional[float] = None, validate: bool = True,
                      out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, H, W) float32: D_k, the mean distance (pixels) from each pixel centre to its k nearest heads.

    With N < k heads the mean runs over the N available; with N = 0, D = +inf. ``max_distance``
    clips each distance at that value before the mean. k is at most ``MAX_K``. ``out``: see the
    module docstring.
    """
    return _knn(points, size, k, offsets, max_distance, "distance", validate, out)


def iknn_maps(points: PointsLike, size, k: int = 1, *, offsets=None,
              max_distance: Optional[float] = None, transform: str = "inverse",
              validate: bool = True, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, H, W) float32 inverse-kNN maps: M = 1 / (D_k + 1), or 1 / sqrt(D_k + 1) for
    ``transform="inverse_sqrt"``. 1 on a head, 0 where there are no heads; D_k as in
    :func:`knn_distance_maps`.
    """
    if transform not in ("inverse", "inverse_sqrt"):
        raise ValueError(f"transform must be 'inverse' or 'inverse_sqrt', got {transform!r}")
    return _knn(points, size, k, offsets, max_distance, transform, validate, out)


def fidt_maps(points: PointsLike, size, *, alpha: float = 0.02, beta: float = 0.75, c: float = 1.0,
              zero_below: float = 0.0, offsets=None, validate: bool = True,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, H, W) float32 focal inverse distance transform (FIDT) maps (Liang et al., FIDTM).

    I = 1 / (D^(alpha * D + beta) + c), D the exact distance (pixels) from each pixel centre to the
    nearest head: subpixel heads, duplicates and heads outside the map count as heads; no heads
    gives 0. The defaults are FIDTM's; ``zero_below=0.01`` also zeroes the values below 0.01, as
    FIDTM does (and lets the kernels skip the pixels beyond the distance where that starts).
    alpha, beta >= 0, c > 0 (at least 2^-126, so that 1 / c is a finite float32), none beyond
    float32's range. Computed in the kNN kernels (k = 1) as their transform. ``out``: see
    the module docstring.
    """
    alpha, beta, c, zero_below = _check_fidt(alpha, beta, c, zero_below)
    return _knn(points, size, 1, offsets, _fidt_reach(alpha, beta, c, zero_below), "fidt", validate, out,
                (alpha, beta, c, zero_below))


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32, 2^-126


def _check_fidt(alpha, beta, c, zero_below) -> tuple[float, float, float, float]:
    """FIDT's parameters as floats the float32 kernels hold: alpha, beta, zero_below >= 0, c > 0, none
    beyond float32's range (an infinite alpha makes 1^(alpha D) NaN) and c a normal float32, >= 2^-126
    (a head's value 1 / c must be finite); TypeError / ValueError naming the parameter."""
    alpha = _check_non_negative(alpha, "alpha")
    beta = _check_non_negative(beta, "beta")
    c = _check_positive(c, "c", _FLOAT32_TINY)
    zero_below = _check_non_negative(zero_below, "zero_below")
    for name, value in (("alpha", alpha), ("beta", beta), ("c", c), ("zero_below", zero_below)):
        if value > _FLOAT32_MAX:
            raise ValueError(f"{name} must be at most {_FLOAT32_MAX:g} (float32), got {value:g}")
    return alpha, beta, c, zero_below


@functools.lru_cache(maxsize=64)  # a training loop asks for the same parameters every batch
def _fidt_reach(alpha: float, beta: float, c: float, zero_below: float) -> Optional[float]:
    """A distance (px) from which every FIDT value is below ``zero_below``, or None.

    Clipping the distances there changes no value of the map (they are zeroed either way), and the
    kernels skip the heads and tiles beyond it. I(D) decreases for D >= 1 (alpha, beta >= 0, not both
    0); the reach is where it falls below zero_below by a relative margin of 1e-4, far above the
    float32 kernels' error.
    """
    if zero_below <= 0.0 or alpha + beta <= 0.0:
        return None
    target = zero_below * (1.0 - 1e-4)

    def value(d: float) -> float:
        power = (alpha * d + beta) * math.log(d)
        return 0.0 if power > 700.0 else 1.0 / (math.exp(power) + c)

    low, high = 1.0, 1.0
    while value(high) > target:
        low, high = high, 2.0 * high
        if high > _MAX_REACH:
            return None
    for _ in range(60):
        middle = 0.5 * (low + high)
        low, high = (low, middle) if value(middle) <= target else (middle, high)
    return high * (1.0 + 1e-6)


_MAX_REACH = 2.0**30  # beyond any map's distances: no reach worth clipping at


def _knn(points, size, k, offsets, max_distance, transform, validate, out, params=_NO_PARAMS) -> torch.Tensor:
    height, width = _check_size(size)
    k = _check_k(k)
    clip = math.inf if max_distance is None else _check_positive(max_distance, "max_distance", _MIN_DISTANCE)
    packed, offs = pack_points(points, offsets, validate=validate)
    code = _ops.TRANSFORMS[transform]
    if out is not None:
        _check_out(out, offs.numel() - 1, height, width, packed)
        torch.ops.mud_iknn.knn_maps_out(packed, offs, k, clip, code, params, out)
        return out
    with _OutputGuard(offs.numel() - 1, height, width, packed.device):
        return torch.ops.mud_iknn.knn_maps(packed, offs, height, width, k, clip, code, params)


def count_maps(points: PointsLike, size, stride: int = 1, *, offsets=None, validate: bool = True,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, ceil(H / s), ceil(W / s)) float32 count maps: heads per s x s cell of an (H, W) map.

    A head at (x, y) is in the pixel whose centre is nearest, (floor(x + 0.5), floor(y + 0.5)) (the
    density maps' rule: pixel j covers [j - 0.5, j + 0.5)); where that pixel is in the map it adds 1
    to cell (pixel row // s, pixel column // s), so each map sums to the heads inside (-0.5 <= x <
    W - 0.5, -0.5 <= y < H - 0.5); heads outside the map count nowhere. Deterministic on both
    backends. ``stride`` s: a positive integer; the limit on a map's pixels applies to its cells.
    ``out``: as in the module docstring, of shape (B, ceil(H / s), ceil(W / s)).
    """
    height, width = _check_size(size, map_pixels=False)
    stride = min(_check_stride(stride), max(height, width))  # a stride past the map's sides gives the same single cell
    rows, cols = -(-height // stride), -(-width // stride)
    if rows * cols > _MAX_MAP_PIXELS:
        raise ValueError(f"size {height}x{width} at stride {stride}: {rows}x{cols} cells exceed the "
                         f"{_MAX_MAP_PIXELS} one map may hold")
    packed, offs = pack_points(points, offsets, validate=validate)
    if out is not None:
        _check_out(out, offs.numel() - 1, rows, cols, packed)
        torch.ops.mud_iknn.count_maps_out(packed, offs, height, width, stride, out)
        return out
    with _OutputGuard(offs.numel() - 1, rows, cols, packed.device):
        return torch.ops.mud_iknn.count_maps(packed, offs, height, width, stride)


def head_sigmas(points: PointsLike, size, *, k: int = 3, beta: float = 0.3, offsets=None,
                validate: bool = True) -> torch.Tensor:
    """(P,) float32 geometry-adaptive Gaussian widths (pixels), one per head in packed order.

    sigma_i = beta * mean distance from head i to its min(k, N - 1) nearest other heads of the same
    image; a head alone in its image gets (H + W) / 8 (CSRNet's rule).
    """
    height, width = _check_size(size)
    k = _check_k(k, "k", MAX_K - 1)
    beta = _check_positive(beta, "beta")
    packed, offs = pack_points(points, offsets, validate=validate)
    return torch.ops.mud_iknn.head_sigmas(packed, offs, height, width, k, beta)


def density_maps(points: PointsLike, size, sigma: Union[str, float, torch.Tensor] = "adaptive", *,
                 k: int = 3, beta: float = 0.3, truncate: float = 4.0, offsets=None,
                 validate: bool = True, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, H, W) float32 Gaussian density maps: each head spreads unit mass (mass beyond the map dropped).

    The kernel is scipy.ndimage.gaussian_filter's: separable, weights exp(-t^2 / (2 sigma^2)) for
    integer t in [-r, r], r = int(truncate * sigma + 0.5), normalised per axis, centred on the
    head's pixel, the one whose centre is nearest: (floor(x + 0.5), floor(y + 0.5)), so that a
    mirrored or shifted crop's map is the mirrored or shifted map, as for the kNN maps. ``sigma``:
    "adaptive" (see :func:`head_sigmas`, with ``k`` and ``beta``), one float for every head, or a
    (P,) tensor of per-head widths in packed order.
    Deterministic on both backends: every pixel sums its heads in packed order (no atomics).
    ``out``: see the module docstring.
    """
    height, width = _check_size(size)
    truncate = _check_positive(truncate, "truncate")
    if truncate > _MAX_TRUNCATE:
        raise ValueError(f"truncate must be at most {_MAX_TRUNCATE}, got {truncate}")
    packed, offs = pack_points(points, offsets, validate=validate)
    if isinstance(sigma, str):
        if sigma != "adaptive":
            raise ValueError(f"sigma must be 'adaptive', a positive number or a (P,) tensor, got {sigma!r}")
        k = _check_k(k, "k", MAX_K - 1)
        beta = _check_positive(beta, "beta")
        sigmas = torch.ops.mud_iknn.head_sigmas(packed, offs, height, width, k, beta)
    elif isinstance(sigma, (torch.Tensor, np.ndarray)):
        if isinstance(sigma, np.ndarray) and sigma.dtype.kind != "f":
            raise ValueError(f"sigma as an array must be float of shape (P,) = ({packed.shape[0]},), "
                             f"got numpy {sigma.dtype} {sigma.shape}")
        sigmas = torch.as_tensor(np.asarray(sigma, dtype=np.float32) if isinstance(sigma, np.ndarray) else sigma)
        if sigmas.shape != (packed.shape[0],) or sigmas.is_complex() or not sigmas.is_floating_point():
            raise ValueError(f"sigma as a tensor must be float of shape (P,) = ({packed.shape[0]},), "
                             f"got {sigmas.dtype} {tuple(sigmas.shape)}")
        if sigmas.device != packed.device:
            raise ValueError(f"sigma is on {sigmas.device} but points is on {packed.device}")
        sigmas = sigmas.detach().to(torch.float32).contiguous()
        if validate and sigmas.numel() and not bool(((sigmas >= 0) & (sigmas <= _MAX_SIGMA)).all()):
            raise ValueError(f"sigma holds values outside [0, {_MAX_SIGMA:g}] (or NaN)")
    else:
        value = _check_positive(sigma, "sigma")
        if value > _MAX_SIGMA:
            raise ValueError(f"sigma must be at most {_MAX_SIGMA:g} pixels, got {value}")
        sigmas = torch.full((packed.shape[0],), value, dtype=torch.float32, device=packed.device)
    if out is not None:
        _check_out(out, offs.numel() - 1, height, width, packed)
        torch.ops.mud_iknn.density_maps_out(packed, offs, sigmas, truncate, out)
        return out
    with _OutputGuard(offs.numel() - 1, height, width, packed.device):
        return torch.ops.mud_iknn.density_maps(packed, offs, sigmas, height, width, truncate)
