"""Synthetic crowds: procedurally rendered scenes with exact head points, the data set that ships.

Each image is a street-like scene seen by a tilted camera: the horizon lies above the frame, a
head's radius grows linearly with its image row (perspective), so far rows hold many small heads
and near rows few large ones. People stand in clumps (a smooth random crowd field), are drawn back
to front (head with hair over shoulders and torso, random skin, hair and clothing colours), so
nearer people partially hide farther ones; poles, stalls, road marks and round distractors add
clutter, and foreground objects occlude some heads. A head is annotated (its centre, exactly)
when at least ``min_visible`` of its disc is visible in the final picture.

Rendering is numpy on small per-object windows: a 256x256 scene with a few hundred heads takes a
few tens of milliseconds. Everything is a function of ``(seed, split, index)``: the same call
always yields the same image, and train / val / test never share a scene.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
from scipy.spatial import cKDTree

from .._checks import is_integer
from ..sample import CrowdSample

__all__ = ["SyntheticCrowds", "render_crowd"]

_SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}

_SKIN = np.array([[255, 219, 172], [241, 194, 125], [224, 172, 105], [198, 134, 66],
                  [141, 85, 36], [92, 56, 32]], dtype=np.float32)
_HAIR = np.array([[20, 18, 16], [45, 32, 24], [80, 58, 40], [120, 90, 55], [170, 150, 120],
                  [60, 60, 62]], dtype=np.float32)


def _ellipse_alpha(height, width, cx, cy, ax, ay):
    """(window slices, anti-aliased coverage (h, w) in [0, 1]) of an axis-aligned ellipse."""
    x0, x1 = max(int(np.floor(cx - ax - 1)), 0), min(int(np.ceil(cx + ax + 2)), width)
    y0, y1 = max(int(np.floor(cy - ay - 1)), 0), min(int(np.ceil(cy + ay + 2)), height)
    if x0 >= x1 or y0 >= y1:
        return None, None
    dx = (np.arange(x0, x1, dtype=np.float32) - cx) / ax
    dy = (np.arange(y0, y1, dtype=np.float32) - cy) / ay
    e = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
    alpha = np.clip((1.0 - e) * min(ax, ay) + 0.5, 0.0, 1.0)
    return (slice(y0, y1), slice(x0, x1)), alpha


def _paint(canvas, owner, window, alpha, colour, owner_id):
    """Blends ``colour`` ((3,) or (h, w, 3)) into ``canvas`` with ``alpha``; claims covered pixels."""
    a = alpha[..., None]
    canvas[window] = canvas[window] * (1.0 - a) + a * colour
    owner[window][alpha > 0.5] = owner_id


def _smooth_field(rng, height, width, cells):
    """(H, W) float32 smooth random field in [0, 1]: bilinear upsampling of a (cells + 1)^2 grid."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    gy = np.linspace(0, cells, height, dtype=np.float32)
    gx = np.linspace(0, cells, width, dtype=np.float32)
    iy = np.minimum(gy.astype(int), cells - 1)
    ix = np.minimum(gx.astype(int), cells - 1)
    fy, fx = (gy - iy)[:, None], (gx - ix)[None, :]
    top = grid[iy][:, ix] * (1 - fx) + grid[iy][:, ix + 1] * fx
    bottom = grid[iy + 1][:, ix] * (1 - fx) + grid[iy + 1][:, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def _background(rng, height, width):
    """(H, W, 3) float32 ground: a lit gradient, pavement texture, road marks, stalls and poles."""
    base = rng.uniform(70, 170, size=3).astype(np.float32)
    rows = np.linspace(0.75, 1.15, height, dtype=np.float32)[:, None, None]
    texture = (_smooth_field(rng, height, width, 6)[..., None] - 0.5) * rng.uniform(30, 70)
    canvas = base * rows + texture + rng.normal(0, 4, size=(height, width, 1)).astype(np.float32)
    owner = np.full((height, width), -1, dtype=np.int32)
    for _ in range(rng.integers(0, 4)):  # road marks / tiles
        y = int(rng.integers(0, height))
        thick = int(rng.integers(1, 4))
        canvas[y:y + thick] = canvas[y:y + thick] * 0.4 + 0.6 * rng.uniform(150, 250)
    for _ in range(rng.integers(1, 5)):  # stalls, signs, walls
        w, h = rng.uniform(0.08, 0.35) * width, rng.uniform(0.05, 0.3) * height
        x, y = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 0.9) * height
        ys, xs = slice(max(int(y), 0), max(int(y + h), 0)), slice(max(int(x), 0), max(int(x + w), 0))
        canvas[ys, xs] = rng.uniform(30, 230, size=3).astype(np.float32)
    return canvas, owner


def _clutter(rng, canvas, owner, count, scale, *, foreground):
    """Poles (thin vertical bars) and round non-head blobs (bags, balls, lamps); ``foreground``
    ones are drawn over the people and hide what is behind them."""
    height, width = owner.shape
    for _ in range(count):
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        if rng.random() < 0.5:
            x = rng.uniform(0, width)
            half = rng.uniform(0.3, 1.0) * scale * (2.0 if foreground else 1.0)
            y0 = rng.uniform(-0.2, 0.7) * height
            window = (slice(max(int(y0), 0), height), slice(max(int(x - half), 0), max(int(x + half) + 1, 0)))
            canvas[window] = colour
            owner[window] = -2
        else:
            r = rng.uniform(0.5, 2.0) * scale
            window, alpha = _ellipse_alpha(height, width, rng.uniform(0, width), rng.uniform(0, height),
                                           r * rng.uniform(1.0, 2.5), r)
            if window is not None:
                _paint(canvas, owner, window, alpha, colour, -2)


def _head_positions(rng, height, width, horizon, r_near, max_count):
    """(N, 2) (x, y) head centres: denser where heads are small (far) and where the crowd field is
    high, thinned so that heads of similar depth barely overlap."""
    rows = np.arange(height, dtype=np.float32)
    radius = r_near * (rows - horizon) / (height - horizon)
    crowd = _smooth_field(rng, height, width, int(rng.integers(2, 5)))
    crowd = np.clip((crowd - rng.uniform(0.0, 0.45)) * 3.0, 0.0, 1.0)
    packing = rng.uniform(0.3, 1.0)  # heads per (2 r)^2 cell inside the crowd
    density = crowd * (packing / (2.0 * radius[:, None]) ** 2)
    expected = float(density.sum())
    n = int(rng.poisson(expected))
    if n == 0:
        return np.zeros((0, 2), dtype=np.float64)
    cells = rng.choice(density.size, size=n, p=(density / expected).ravel())
    ys, xs = np.divmod(cells, width)
    pts = np.stack([xs + rng.random(n) - 0.5, ys + rng.random(n) - 0.5], axis=1)
    r = r_near * (pts[:, 1] - horizon) / (height - horizon)
    keep = np.ones(n, dtype=bool)
    for i, j in sorted(cKDTree(pts).query_pairs(r.max() * 1.3)):
        if keep[i] and keep[j] and np.hypot(*(pts[i] - pts[j])) < 1.1 * max(r[i], r[j]):
            keep[j] = False
    pts = pts[keep]
    if len(pts) > max_count:
        pts = pts[rng.choice(len(pts), size=max_count, replace=False)]
    return pts


def render_crowd(rng: np.random.Generator, size: tuple[int, int], *, max_count: int = 600,
                 min_visible: float = 0.35):
    """One synthetic crowd scene.

    Returns (image (H, W, 3) uint8 RGB, points (N, 2) float64 (x, y) pixel centres of the visible
    heads, meta) where meta holds ``head_radius`` (N,) pixels, ``visible_fraction`` (N,),
    ``horizon`` (the row of the vanishing line, negative: above the frame) and ``drawn`` (heads
    drawn, hidden ones included). At most ``max_count`` people are drawn.
    """
    height, width = int(size[0]), int(size[1])
    short = min(height, width)
    horizon = -rng.uniform(0.2, 1.5) * height
    r_near = rng.uniform(0.02, 0.05) * short
    canvas, owner = _background(rng, height, width)
    _clutter(rng, canvas, owner, int(rng.integers(0, 6)), 0.3 * r_near, foreground=False)

    heads = _head_positions(rng, height, width, horizon, r_near, max_count)
    heads = heads[np.argsort(heads[:, 1], kind="stable")]  # back to front
    n = len(heads)
    radius = r_near * (heads[:, 1] - horizon) / (height - horizon)
    head_area = np.zeros(n)
    skin = _SKIN[rng.integers(0, len(_SKIN), n)] * rng.uniform(0.8, 1.1, (n, 1)).astype(np.float32)
    hair = _HAIR[rng.integers(0, len(_HAIR), n)]
    cloth = (0.55 * rng.uniform(10, 245, size=(n, 3)) + 0.45 * rng.uniform(20, 200, size=(n, 1))).astype(np.float32)
    facing_away = rng.random(n) < 0.3
    for k, ((x, y), r) in enumerate(zip(heads, radius)):
        # torso and shoulders, shaded darker towards the bottom
        window, alpha = _ellipse_alpha(height, width, x, y + 3.4 * r, 1.6 * r, 2.6 * r)
        if window is not None:
            shade = np.linspace(1.0, 0.6, alpha.shape[0], dtype=np.float32)[:, None, None]
            _paint(canvas, owner, window, alpha, cloth[k] * shade, -2)
        window, alpha = _ellipse_alpha(height, width, x, y + 1.5 * r, 1.75 * r, 0.9 * r)
        if window is not None:
            _paint(canvas, owner, window, alpha, cloth[k] * 1.08, -2)
        # head: skin face with a hair cap (all hair when facing away), lit from the top left
        window, alpha = _ellipse_alpha(height, width, x, y, 0.85 * r, r)
        if window is None:
            continue
        rows = np.arange(window[0].start, window[0].stop, dtype=np.float32)[:, None] - y
        cols = np.arange(window[1].start, window[1].stop, dtype=np.float32)[None, :] - x
        hair_line = -0.15 * r + 0.25 * np.abs(cols)
        is_hair = np.ones_like(alpha, dtype=bool) if facing_away[k] else rows < hair_line
        light = 1.1 - 0.25 * (rows + cols) / (2 * r)
        colour = np.where(is_hair[..., None], hair[k], skin[k]) * light[..., None]
        _paint(canvas, owner, window, alpha, colour, k)
        head_area[k] = np.count_nonzero(alpha > 0.5)

    _clutter(rng, canvas, owner, int(rng.integers(0, 4)), 0.5 * r_near, foreground=True)
    visible = np.bincount(owner[owner >= 0], minlength=n)[:n] / np.maximum(head_area, 1.0)
    shown = (visible >= min_visible) & (head_area > 0)

    brightness = rng.uniform(0.75, 1.2)
    canvas = canvas * brightness + rng.normal(0, 3, size=canvas.shape).astype(np.float32)
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    meta = {"head_radius": radius[shown], "visible_fraction": visible[shown], "horizon": float(horizon),
            "drawn": int(n)}
    return image, heads[shown], meta


class SyntheticCrowds(torch.utils.data.Dataset):
    """``num_images`` synthetic crowd scenes of ``size`` (H, W) pixels, rendered on access.

    Yields :class:`~mud_iknn.sample.CrowdSample` (image (3, H, W) uint8, exact head points (N, 2)
    float32 (x, y), name ``synthetic_<split>_<index>``, meta from :func:`render_crowd`). Scene
    ``index`` of ``split`` ("train", "val" or "test") depends only on (seed, split, index).
    ``cache=True`` keeps rendered samples in memory (cheap at demo scale).
    """

    def __init__(self, num_images: int = 200, size: Union[int, tuple[int, int]] = 192, *, seed: int = 0,
                 split: str = "train", max_count: int = 600, cache: bool = True):
        if split not in _SPLIT_STREAMS:
            raise ValueError(f"synthetic split must be one of {tuple(_SPLIT_STREAMS)}, got {split!r}")
        if not is_integer(num_images) or num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
        size = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        if len(size) != 2 or not all(map(is_integer, size)) or min(size) < 32:
            raise ValueError(f"size must be (H, W) of at least 32 pixels each, got {size!r}")
        if not is_integer(seed) or seed < 0:  # numpy's seed sequence takes no negative entry
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not is_integer(max_count) or max_count < 0:
            raise ValueError(f"max_count must be a non-negative integer, got {max_count!r}")
        self.num_images = int(num_images)
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.split = split
        self.max_count = int(max_count)
        self._cache: Optional[dict] = {} if cache else None

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> CrowdSample:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} synthetic images")
        index %= self.num_images
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        rng = np.random.default_rng([self.seed, _SPLIT_STREAMS[self.split], index])
        image, points, meta = render_crowd(rng, self.size, max_count=self.max_count)
        sample = CrowdSample(image=torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                             points=torch.from_numpy(points.astype(np.float32)),
                             name=f"synthetic_{self.split}_{index:05d}",
                             meta={"dataset": "synthetic", "split": self.split, "seed": self.seed, **meta})
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def counts(self) -> np.ndarray:
        """(len,) float64 head counts (renders every scene not yet cached)."""
        return np.array([self[i].count for i in range(len(self))], dtype=np.float64)

    def __repr__(self) -> str:
        return (f"SyntheticCrowds({self.num_images} images, size={self.size}, seed={self.seed}, "
                f"split={self.split!r})")
