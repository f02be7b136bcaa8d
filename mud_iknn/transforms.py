"""Training augmentation that moves image and head points together, and batch collation.

Every function takes and returns a :class:`mud_iknn.sample.CrowdSample` (image (3, H, W) uint8,
points (N, 2) float32 (x, y), pixel (row i, col j) centred at (x = j, y = i)). Heads outside the
image are kept: they shape the labels near the border. ``count`` is always the number of heads
inside the (cropped) image. Randomness comes from an explicit ``torch.Generator`` so that a
sample's augmentation is reproducible from a seed, whatever process makes it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .sample import CrowdSample, nearest_pixels

__all__ = ["crop", "hflip", "rescale", "TrainTransform", "CrowdBatch", "collate_crowd", "count_inside"]


def count_inside(points: torch.Tensor, height: int, width: int) -> float:
    """Number of (x, y) points in a height x width image: whose nearest pixel (floor(x + 0.5),
    floor(y + 0.5)) is one of its own, the rule of the density and count maps (pixel j covers
    [j - 0.5, j + 0.5))."""
    return float(_count_within(points, 0, width, 0, height))


def _count_within(points: torch.Tensor, x0: int, x1: int, y0: int, y1: int) -> int:
    """Number of (x, y) rows of ``points`` (N, 2) whose nearest pixel is in columns [x0, x1) and rows
    [y0, y1) (:func:`~mud_iknn.sample.nearest_pixels`)."""
    p = nearest_pixels(points)
    x, y = p[:, 0], p[:, 1]
    return int(np.count_nonzero((x >= x0) & (x < x1) & (y >= y0) & (y < y1)))


def _with(sample: CrowdSample, image: torch.Tensor, points: torch.Tensor, count: float) -> CrowdSample:
    return CrowdSample(image=image, points=points, name=sample.name, count=count, meta=dict(sample.meta))


def crop(sample: CrowdSample, top: int, left: int, height: int, width: int) -> CrowdSample:
    """The (height, width) window of the image whose top-left pixel is (top, left).

    Parts of the window outside the image are zeros. All heads are kept, shifted by (-left, -top);
    the count is the number of heads inside both the window and the original image.
    """
    if height < 1 or width < 1:
        raise ValueError(f"crop size must be positive, got ({height}, {width})")
    image = sample.image
    _, img_h, img_w = image.shape
    out = image.new_zeros((image.shape[0], height, width))
    y0, y1 = max(top, 0), min(top + height, img_h)
    x0, x1 = max(left, 0), min(left + width, img_w)
    if y0 < y1 and x0 < x1:
        out[:, y0 - top:y1 - top, x0 - left:x1 - left] = image[:, y0:y1, x0:x1]
    points = sample.points.to(torch.float32) - torch.tensor([left, top], dtype=torch.float32)
    # inside the window and inside the original image, in the window's coordinates
    count = _count_within(points, max(0, -left), min(width, img_w - left), max(0, -top), min(height, img_h - top))
    return _with(sample, out, points, float(count))


def hflip(sample: CrowdSample) -> CrowdSample:
    """Mirror left-right: column j -> W - 1 - j, x -> W - 1 - x (pixel centres at integers).

    The mirror maps the image's pixels onto themselves, so the heads that :func:`count_inside`
    counts stay counted (but for those exactly on the outer edge, x = -0.5 or W - 0.5); the count
    moves with any that cross it.
    """
    height, width = sample.image.shape[-2:]
    points = sample.points.to(torch.float32).clone()
    points[:, 0] = (width - 1) - points[:, 0]
    count = sample.count - count_inside(sample.points, height, width) + count_inside(points, height, width)
    return _with(sample, sample.image.flip(-1), points, count)


def rescale(sample: CrowdSample, factor: float) -> CrowdSample:
    """Resize by ``factor`` (bilinear, antialiased) to round(H * factor) x round(W * factor).

    Pixel centres map as x' = (x + 0.5) * fx - 0.5 with fx = W' / W (likewise y), so heads stay
    on the same image content; every head is kept, and the count is recomputed for the new extent.
    """
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"factor must be positive and finite, got {factor!r}")
    _, height, width = sample.image.shape
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    image = F.interpolate(sample.image[None].float(), size=(new_h, new_w), mode="bilinear",
                          align_corners=False, antialias=True)[0]
    image = image.round().clamp(0, 255).to(sample.image.dtype)
    scale = torch.tensor([new_w / width, new_h / height], dtype=torch.float32)
    points = (sample.points.to(torch.float32) + 0.5) * scale - 0.5
    return _with(sample, image, points, count_inside(points, new_h, new_w))


@dataclass
class TrainTransform:
    """The authors' training augmentation: optional random scale, random crop, random flip.

    patch_size: the square crop S (224); images smaller than S after scaling are zero-padded
    (placed at the top-left, the rest of the patch zeros). flip_p: probability of a horizontal
    flip (0.5). scale_range: None, or (low, high): a factor drawn log-uniformly from it rescales
    the image before cropping (correct because labels are made afterwards, from the points).
    Crops are uniform over all positions where the patch lies inside the (padded) image.
    """

    patch_size: int = 224
    flip_p: float = 0.5
    scale_range: Optional[Sequence[float]] = None

    def __post_init__(self):
        if isinstance(self.patch_size, bool) or not isinstance(self.patch_size, int) or self.patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {self.patch_size!r}")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {self.flip_p!r}")
        if self.scale_range is not None:
            low, high = self.scale_range
            if not (0 < low <= high and math.isfinite(high)):
                raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range!r}")

    def __call__(self, sample: CrowdSample, generator: Optional[torch.Generator] = None) -> CrowdSample:
        def uniform() -> float:
            return float(torch.rand((), generator=generator))

        if self.scale_range is not None:
            low, high = self.scale_range
            sample = rescale(sample, math.exp(math.log(low) + uniform() * (math.log(high) - math.log(low))))
        s = self.patch_size
        _, height, width = sample.image.shape
        top = int(torch.randint(max(height - s, 0) + 1, (), generator=generator))
        left = int(torch.randint(max(width - s, 0) + 1, (), generator=generator))
        sample = crop(sample, top, left, s, s)
        if uniform() < self.flip_p:
            sample = hflip(sample)
        return sample


@dataclass
class CrowdBatch:
    """A training batch: images (B, 3, S, S) uint8, packed head points (P, 2) float32 (x, y) in
    patch pixels with offsets (B + 1) int64 (image b owns points[offsets[b]:offsets[b + 1]]),
    counts (B,) float32 (heads inside each patch), names (B strings).
    """

    images: torch.Tensor
    points: torch.Tensor
    offsets: torch.Tensor
    counts: torch.Tensor
    names: list = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device, non_blocking: bool = False) -> "CrowdBatch":
        """The batch on ``device`` (names stay on the host)."""
        return CrowdBatch(*(t.to(device, non_blocking=non_blocking)
                            for t in (self.images, self.points, self.offsets, self.counts)), self.names)

    def pin_memory(self) -> "CrowdBatch":
        """Page-locked copies (DataLoader(pin_memory=True) calls this)."""
        return CrowdBatch(*(t.pin_memory() for t in (self.images, self.points, self.offsets, self.counts)),
                          self.names)


def collate_crowd(samples: Sequence[CrowdSample]) -> CrowdBatch:
    """Stacks equally sized samples into a :class:`CrowdBatch` (points packed in sample order)."""
    if not samples:
        raise ValueError("samples must not be empty")
    shapes = {tuple(s.image.shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"samples must have images of one shape (crop them first), got {sorted(shapes)}")
    images = torch.stack([s.image for s in samples])
    if images.dtype != torch.uint8:
        raise TypeError(f"sample images must be uint8, got {images.dtype}")
    points = torch.cat([s.points.to(torch.float32).reshape(-1, 2) for s in samples])
    sizes = torch.tensor([0] + [s.points.shape[0] for s in samples], dtype=torch.int64)
    counts = torch.tensor([float(s.count) for s in samples], dtype=torch.float32)
    return CrowdBatch(images, points, sizes.cumsum(0), counts, [s.name for s in samples])
