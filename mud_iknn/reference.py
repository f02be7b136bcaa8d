"""Plain scipy implementations of the label maps, in float64.

The oracle the tests compare the C++/CUDA engine against, and the baseline of the benchmarks.
Same conventions and signatures as :mod:`mud_iknn.labels` (see there), but numpy in, numpy out,
one image at a time under the hood (:func:`head_sigmas` takes one image's points, no offsets), and
no input validation beyond what numpy does.
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
    """(B, ceil(H / s), ceil(W / s)) float64: the heads per s x s cell, a head in the pixel
    (floor(x + 0.5), floor(y + 0.5)) whose centre is nearest it, counted where that pixel is in the map,
    in cell (pixel row // s, pixel column // s)."""
    height, width = size
    images = split_points(points, offsets)
    out = np.zeros((len(images), -(-height // stride), -(-width // stride)))
    for b, pts in enumerate(images):
        with np.errstate(invalid="ignore"):
            pixels = np.floor(pts + 0.5)
            x, y = pixels[:, 0], pixels[:, 1]
            inside = pixels[(x >= 0) & (x < width) & (y >= 0) & (y < height)]
        cells = inside.astype(np.int64) // stride
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
            cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))  # the pixel whose centre is nearest
            x0, x1 = max(cx - r, 0), min(cx + r + 1, width)
            y0, y1 = max(cy - r, 0), min(cy + r + 1, height)
            if x0 >= x1 or y0 >= y1:
                continue
            out[b, y0:y1, x0:x1] += np.outer(w[y0 - cy + r:y1 - cy + r], w[x0 - cx + r:x1 - cx + r])
    return out


# ---- point losses: Bayesian loss and DM-Count's optimal transport, dense ------------------------
# Plain torch float64 implementations that build the N x (h * w) matrices the released code builds
# (Bayesian-Crowd-Counting's post_prob.py + bay_loss.py, DM-Count's ot_loss.py + bregman_pytorch.py),
# with the distances taken as (x - cx)^2 + (y - cy)^2 rather than their expanded form. Points are
# (x, y) in input pixels; cell (r, c) of a stride-s map is centred at (c s + s / 2, r s + s / 2).

import math as _math  # noqa: E402

import torch as _torch  # noqa: E402

__all__ += ["cell_squared_distances", "bayesian_posteriors", "bayesian_loss", "sinkhorn_knopp", "ot_loss"]

# exp(-t) rounds to 0 in float32 for t > 150 ln 2 (half the smallest subnormal): DM-Count's float32
# kernel K = exp(-C / reg) is 0 there, and so is this one.
FLOAT32_EXP_CUT = 150.0 * _math.log(2.0)


def cell_squared_distances(points, height: int, width: int, stride: float, scale: float = 1.0,
                           shift: float = 0.0) -> _torch.Tensor:
    """(N, height * width) float64 squared distances between heads and cell centres, both mapped
    by v -> v * scale + shift first (DM-Count's normalised coordinates: scale 2 / crop, shift -1)."""
    pts = _torch.as_tensor(points, dtype=_torch.float64).reshape(-1, 2) * scale + shift
    xs = (_torch.arange(width, dtype=_torch.float64) * stride + stride / 2) * scale + shift
    ys = (_torch.arange(height, dtype=_torch.float64) * stride + stride / 2) * scale + shift
    dx2 = (pts[:, 0:1] - xs[None, :]) ** 2
    dy2 = (pts[:, 1:2] - ys[None, :]) ** 2
    return (dy2[:, :, None] + dx2[:, None, :]).reshape(len(pts), height * width)


def bayesian_posteriors(points, height: int, width: int, stride: float, sigma: float,
                        background_distance=None) -> _torch.Tensor:
    """(N (+ 1), height * width) float64 posteriors of post_prob.py: a softmax over the heads, plus
    with ``background_distance`` d a last row of squared distance (d - sqrt(min_i dis))^2, of
    -dis / (2 sigma^2)."""
    dis = cell_squared_distances(points, height, width, stride)
    if background_distance is not None:
        nearest = _torch.sqrt(_torch.clamp(dis.min(dim=0, keepdim=True).values, min=0.0))
        dis = _torch.cat([dis, (background_distance - nearest) ** 2], 0)
    return _torch.softmax(-dis / (2.0 * sigma * sigma), dim=0)


def bayesian_loss(density, points, stride: int = 8, sigma: float = 8.0, background: bool = True,
                  background_ratio: float = 1.0, short_sides=None) -> _torch.Tensor:
    """Bayesian loss of bay_loss.py (float64 scalar, differentiable in ``density`` (B, 1, h, w)):
    the mean over images of sum |target - expected count| (target 1 per head, 0 for the
    background row); an image without heads contributes |sum of its density|."""
    batch, _, height, width = density.shape
    if short_sides is None:
        short_sides = [min(height, width) * stride] * batch
    total = density.new_zeros((), dtype=_torch.float64)
    for b, pts in enumerate(points):
        d = density[b].reshape(-1).to(_torch.float64)
        pts = _torch.as_tensor(pts, dtype=_torch.float64).reshape(-1, 2)
        if len(pts) == 0:
            total = total + d.sum().abs()
            continue
        bg = float(short_sides[b]) * background_ratio if background else None
        expected = (bayesian_posteriors(pts, height, width, stride, sigma, bg) * d[None, :]).sum(dim=1)
        target = _torch.ones_like(expected)
        if background:
            target[-1] = 0.0
        total = total + (target - expected).abs().sum()
    return total / batch


def sinkhorn_knopp(a, b, C, reg: float, iterations: int = 100, stop_threshold: float = 1e-9,
                   eval_freq: int = 10):
    """bregman_pytorch.py's sinkhorn_knopp in float64, K zero where float32 exp underflows:
    returns (u, v, K) with the transport plan u[:, None] * K * v[None, :]."""
    scaled = C / reg
    K = _torch.where(scaled > FLOAT32_EXP_CUT, _torch.zeros_like(scaled), _torch.exp(-scaled))
    a, b = (_torch.as_tensor(x, dtype=_torch.float64) for x in (a, b))
    return (*sinkhorn_iterations(a, b, K, iterations, stop_threshold, eval_freq), K)


def sinkhorn_iterations(a, b, K, iterations: int = 100, stop_threshold: float = 1e-9, eval_freq: int = 10):
    """bregman_pytorch.py's Sinkhorn-Knopp loop on the kernel K (N, M) between a (N,) and b (M,), in
    their dtype and on their device: (u, v) from uniform ones, v = b / (K^T u + 1e-16), u = a / (K v +
    1e-16), the error every eval_freq iterations, the previous iterate kept on NaN/inf."""
    eps = 1e-16
    u = _torch.ones_like(a) / len(a)
    v = _torch.ones_like(b) / len(b)
    it, err = 1, 1.0
    while err > stop_threshold and it <= iterations:
        upre, vpre = u, v
        v = b / (u @ K + eps)
        u = a / (K @ v + eps)
        if not (bool(_torch.isfinite(u).all()) and bool(_torch.isfinite(v).all())):
            u, v = upre, vpre
            break
        if it % eval_freq == 0:
            err = float(((b - (u @ K) * v) ** 2).sum())
        it += 1
    return u, v


def ot_loss(normed_density, density, points, stride: int = 8, reg: float = 10.0, iterations: int = 100,
            normalize_coordinates: bool = False):
    """DM-Count's OT_Loss.forward in float64: (loss, wasserstein, objective), each summed over the
    images with heads. ``loss`` is differentiable in ``density`` (its gradient is DM-Count's
    beta / count - <density, beta> / count^2), ``objective`` in ``normed_density``."""
    batch, _, height, width = density.shape
    crop = height * stride
    scale, shift = (2.0 / crop, -1.0) if normalize_coordinates else (1.0, 0.0)
    loss = 0.0 * density.sum().to(_torch.float64)  # in the graph even when no image has heads
    objective = 0.0 * normed_density.sum().to(_torch.float64)
    wasserstein = 0.0
    for i, pts in enumerate(points):
        pts = _torch.as_tensor(pts, dtype=_torch.float64).reshape(-1, 2)
        if len(pts) == 0:
            continue
        C = cell_squared_distances(pts, height, width, stride, scale, shift)
        source = normed_density[i, 0].reshape(-1).detach().to(_torch.float64)
        target = _torch.full((len(pts),), 1.0 / len(pts), dtype=_torch.float64)
        u, v, K = sinkhorn_knopp(target, source, C, reg, iterations)
        beta = reg * _torch.log(v + 1e-16)
        objective = objective + (normed_density[i, 0].reshape(-1).to(_torch.float64) * beta).sum()
        d = density[i, 0].reshape(-1).to(_torch.float64)
        dd = d.detach()
        count = dd.sum()
        grad = count / (count * count + 1e-8) * beta - (dd * beta).sum() / (count * count + 1e-8)
        loss = loss + (d * grad).sum()
        wasserstein += float((C * (u[:, None] * K * v[None, :])).sum())
    return loss, wasserstein, objective
