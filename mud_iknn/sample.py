"""The unit every data-set reader yields and every transform consumes."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
