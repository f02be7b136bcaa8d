"""The benchmark cases of the label engine: clustered crowds of several sizes, seeded."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import mud_iknn


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    height: int
    width: int
    heads: int  # per image

    @property
    def size(self):
        return (self.height, self.width)

    def points(self, seed: int = 0) -> list[np.ndarray]:
        """B arrays of (heads, 2) float32 (x, y): Gaussian clusters, 10% scattered past the border."""
        rng = np.random.default_rng(seed)
        return [_clustered(rng, self.heads, self.height, self.width) for _ in range(self.batch)]

    def packed(self, device="cpu", seed: int = 0):
        """points() packed: (P, 2) float32 points and (B + 1,) int64 offsets on `device`."""
        points, offsets = mud_iknn.pack_points(self.points(seed))
        return points.to(device), offsets.to(device)


def _clustered(rng, count, height, width):
    clusters = max(4, count // 250)
    centres = rng.uniform([0, 0], [width, height], size=(clusters, 2))
    pts = centres[rng.integers(0, clusters, count)] + rng.normal(0, 1, (count, 2)) * 0.06 * np.array([width, height])
    n_out = count // 10
    pts[:n_out] = rng.uniform([-0.2 * width, -0.2 * height], [1.2 * width, 1.2 * height], size=(n_out, 2))
    return pts.astype(np.float32)


CASES = {c.name: c for c in [
    Case("crop512_n300_b32", 32, 512, 512, 300),
    Case("img1024x768_n500", 1, 768, 1024, 500),
    Case("img2048_n5000", 1, 2048, 2048, 5000),
    Case("img4096_n12000", 1, 4096, 4096, 12000),
]}
QUICK = [Case("crop512_n300_b4", 4, 512, 512, 300), CASES["img1024x768_n500"]]
