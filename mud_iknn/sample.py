"""The unit every data-set reader yields and every transform consumes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


def nearest_pixels(points: torch.Tensor) -> np.ndarray:
    """(N, 2) float64 (column, row) of the pixel nearest each (x, y) row of ``points`` (N, 2):
    floor(v + 0.5), pixel j covering [j - 0.5, j + 0.5), the rule of the density and count maps.
    The points are taken as the label kernels read them (float32), then in float64, where v + 0.5
    is exact; numpy, whose per-operation cost is a fraction of torch's on a patch's few heads."""
    return np.floor(points.detach().to("cpu", torch.float32).numpy().astype(np.float64) + 0.5)


@dataclass
class CrowdSample:
    """One annotated crowd image.

    image: (3, H, W) uint8 RGB. points: (N, 2) float32 head positions (x, y) in pixels, 0-based,
    pixel (row i, col j) centred at (x = j, y = i); heads outside the image are allowed (crops keep
    the heads around them). count: number of heads inside the image (defaults to N). name: an id
    for reports (usually the file name). meta: anything else the reader knows; readers of data sets
with head boxes (NWPU-Crowd, JHU-Crowd++) put their sizes there as ``boxes`` (N, 2) (w, h) in
pixels, one per point, and JHU-Crowd++'s its evaluation ``categories``.
    """

    image: torch.Tensor
    points: torch.Tensor
    name: str = ""
    count: float | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.count is None:
            self.count = float(self.points.shape[0])
