"""Plain scipy implementations of the label maps, in float64.

The oracle the tests compare the C++/CUDA engine against, and the baseline of the benchmarks.
Same conventions and signatures as :mod:`mud_iknn.labels` (see there), but numpy in, numpy out,
one image at a time under the hood, and no input validation beyond what numpy does.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["knn_distance_maps", "iknn_maps", "fidt_maps", "density_maps", "head_sigmas", "count_maps",
           "split_points"]


def split_points(points, offsets=None) -> list[np.ndarray]:
    """A list of per-image (N_i, 2) float64 arrays from a list, or from packed points + offsets.

    A single (N, 2) array without offsets is one image.
    """
    if offsets is None:
        if isinstance(points, (list, tuple)):
            return [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in points]
        return [np.asarray(points, dtype=np.float64).reshape(-1, 2)]
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    offsets = np.asarray(offsets, dtype=np.int64)
    return [points[offsets[b]:offsets[b + 1]] for b in range(len(offsets) - 1)]


def _pixel_centres(height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)


def knn_distance_maps(points, size, k=1, *, offsets=None, max_distance=None, workers=1) -> np.ndarray:
    """(B, H, W) float64: mean distance from each pixel centre to its min(k, N) nearest heads."""
    height, width = size
    images = split_points(points, offsets)
    out = np.empty((len(images), height, width), dtype=np.float64)
    centres = _pixel_centres(height, width)
    for b, pts in enumerate(images):
        n = min(k, len(pts))
        if n == 0:
            out[b] = np.inf
            continue
        dist, _ = cKDTree(pts).query(centres, k=n, workers=workers)
        dist = dist.reshape(len(centres), n)
        if max_distance is not None:
            dist = np.minimum(dist, max_distance)
        out[b] = dist.mean(axis=1).reshape(height, width)
    return out


def iknn_maps(points, size, k=1, *, offsets=None, max_distance=None, transform="inverse",
              workers=1) -> np.ndarray:
    """(B, H, W) float64: 1 / (D_k + 1), or 1 / sqrt(D_k + 1) for ``transform="inverse_sqrt"``."""
    d = knn_distance_maps(points, size, k, offsets=offsets, max_distance=max_distance, workers=workers)
    if transform == "inverse":
        return 1.0 / (d + 1.0)
    if transform == "inverse_sqrt":
        return 1.0 / np.sqrt(d + 1.0)
    raise ValueError(f"transform must be 'inverse' or 'inverse_sqrt', got {transform!r}")


def fidt_maps(points, size, *, alpha=0.02, beta=0.75, c=1.0, zero_below=0.0, offsets=None,
              workers=1) -> np.ndarray:
    """(B, H, W) float64 FIDT maps: 1 / (D^(alpha D + beta) + c), D the distance to the nearest head;
    0 without heads and below ``zero_below``."""
    d = knn_distance_maps(points, size, 1, offsets=offsets, workers=workers)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        value = 1.0 / (np.power(d, alpha * d + beta) + c)
    value[np.isinf(d)] = 0.0
    value[value < zero_below] = 0.0
    return value


def count_maps(points, size, stride=1, *, offsets=None) -> np.ndarray:
    """(B, ceil(H / s), ceil(W / s)) float64: the heads with 0 <= x < W, 0 <= y < H per s x s cell,
    a head in cell (floor(y) // s, floor(x) // s)."""
    height, width = size
    images = split_points(points, offsets)
    out = np.zeros((len(images), -(-height // stride), -(-width // stride)))
    for b, pts in enumerate(images):
        inside = pts[(pts[:, 0] >= 0) & (pts[:, 0] < width) & (pts[:, 1] >= 0) & (pts[:, 1] < height)]
        cells = np.floor(inside).astype(np.int64) // stride
        np.add.at(out[b], (cells[:, 1], cells[:, 0]), 1.0)
    return out


def head_sigmas(points: np.ndarray, size, k=3, beta=0.3) -> np.ndarray:
    """(N,) geometry-adaptive sigmas of one image's heads (CSRNet's rule).

    beta times the mean distance to the min(k, N - 1) nearest other heads; (H + W) / 8 alone.
    """
    height, width = size
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    n = len(pts)
    if n == 1:
        return np.array([(height + width) / 8.0])
    if n == 0:
        return np.zeros(0)
    m = min(k, n - 1)
    dist, _ = cKDTree(pts).query(pts, k=m + 1)
    return beta * dist.reshape(n, m + 1)[:, 1:].mean(axis=1)


def gaussian_kernel1d(sigma: float, truncate: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter's discrete kernel: (2r + 1,) weights summing to 1."""
    if sigma <= 1e-15:  # gaussian_filter leaves such an axis unfiltered
        return np.ones(1)
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * t * t / (sigma * sigma))
    return w / w.sum()


def density_maps(points, size, sigma="adaptive", *, k=3, beta=0.3, truncate=4.0, offsets=None) -> np.ndarray:
    """(B, H, W) float64 Gaussian density maps, unit mass per head, mass outside the map dropped."""
    height, width = size
    images = split_points(points, offsets)
    out = np.zeros((len(images), height, width), dtype=np.float64)
    for b, pts in enumerate(images):
        if isinstance(sigma, str):
            sigmas = head_sigmas(pts, size, k, beta)
        else:
            sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (len(pts),))
        for (x, y), s in zip(pts, sigmas):
            w = gaussian_kernel1d(float(s), truncate)
            r = len(w) // 2
            cx, cy = int(np.floor(x)), int(np.floor(y))
            x0, x1 = max(cx - r, 0), min(cx + r + 1, width)
            y0, y1 = max(cy - r, 0), min(cy + r + 1, height)
            if x0 >= x1 or y0 >= y1:
                continue
            out[b, y0:y1, x0:x1] += np.outer(w[y0 - cy + r:y1 - cy + r], w[x0 - cx + r:x1 - cx + r])
    return out
