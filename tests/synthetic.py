"""A tiny synthetic crowd data set for the training tests: bright blobs on a dark, noisy background."""
import torch
from torch.utils.data import Dataset

from mud_iknn.sample import CrowdSample


class Blobs(Dataset):
    """``n`` images of (size, size) with 0..max_heads Gaussian blobs (sigma 1.5 px), one per head."""

    def __init__(self, n: int = 8, size: int = 48, max_heads: int = 12, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                indexing="ij")
        self.samples = []
        for i in range(n):
            heads = int(torch.randint(0, max_heads + 1, (), generator=g))
            points = torch.rand(heads, 2, generator=g) * (size - 1)
            image = torch.rand(size, size, generator=g) * 30
            for x, y in points.tolist():
                image += 220 * torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5 ** 2))
            image = image.clamp(0, 255).to(torch.uint8).expand(3, size, size).clone()
            self.samples.append(CrowdSample(image=image, points=points, name=f"blobs{i}"))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]
