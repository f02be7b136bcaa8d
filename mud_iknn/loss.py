"""The MUD-ikNN loss, and the choice of map label (ikNN or Gaussian density) it is trained against.

loss = count_loss + map_weight * map_loss, with

* count_loss = mean over the batch of (c_hat - c)^2 (heads^2);
* map_loss = mean over the batch of (sum over pixels of mean over the map channels of
  |M_hat - M|)^2, every predicted channel compared with the same label map M.

A count-only network (no map channels) has no map term: its loss is count_loss alone and it needs
no label maps.

:class:`LabelSpec` makes M from packed head points on their device, through
:func:`mud_iknn.iknn_maps` or :func:`mud_iknn.density_maps`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from . import _settings, labels
from .point_losses import BayesianLoss, DMCountLoss, OTLoss

__all__ = ["LabelSpec", "count_loss", "map_loss", "MUDLoss", "BayesianLoss", "OTLoss", "DMCountLoss"]


@dataclass(frozen=True)
class LabelSpec:
    """Which map label the map modules learn.

    kind: "iknn" (the paper's inverse k-nearest-neighbour maps) or "density" (geometry-adaptive
    Gaussian density maps, the baseline it is compared with).
    k: neighbours; None means 1 for "iknn" (the paper's final setup) and 3 for "density" (CSRNet's rule).
    transform, max_distance: for "iknn" (see :func:`mud_iknn.iknn_maps`); max_distance=112 is the
    2019 code's clipping.
    sigma, beta, truncate: for "density" (see :func:`mud_iknn.density_maps`).
    """

    kind: str = "iknn"
    k: Optional[int] = None
    transform: str = "inverse"
    max_distance: Optional[float] = None
    sigma: Union[str, float] = "adaptive"
    beta: float = 0.3
    truncate: float = 4.0

    def __post_init__(self):
        _settings.check_types(self, "label spec")
        if self.kind not in ("iknn", "density"):
            raise ValueError(f"label kind must be 'iknn' or 'density', got {self.kind!r}")
        if self.k is not None and self.k < 1:  # (its type: check_types above)
            raise ValueError(f"label k must be a positive integer or None, got {self.k!r}")
        if self.transform not in ("inverse", "inverse_sqrt"):
            raise ValueError(f"label transform must be 'inverse' or 'inverse_sqrt', got {self.transform!r}")
        if self.max_distance is not None and not (self.max_distance > 0 and math.isfinite(self.max_distance)):
            raise ValueError(f"label max_distance must be positive or None, got {self.max_distance!r}")
        if isinstance(self.sigma, str) and self.sigma != "adaptive":
            raise ValueError(f"label sigma must be 'adaptive' or a positive number, got {self.sigma!r}")

    @property
    def neighbours(self) -> int:
        """k with the per-kind default applied."""
        if self.k is not None:
            return self.k
        return 1 if self.kind == "iknn" else 3

    def make(self, points: torch.Tensor, offsets: torch.Tensor, size: tuple[int, int], *,
             stride: int = 1, validate: bool = False) -> torch.Tensor:
        """(B, H', W') float32 label maps on the points' device.

        points: packed (P, 2) float32 (x, y) in input pixels; offsets: (B + 1) int64; size: (H', W')
        of the label. With ``stride`` s > 1 the label pixel (i, j) covers input pixels
        [s*i, s*i + s) and points are mapped to x' = (x - (s - 1) / 2) / s (distances and sigmas
        are then in label pixels). validate=False (the default here) skips the value checks that
        would synchronise with the device: the training loop builds offsets itself.
        """
        if stride != 1:
            points = (points - (stride - 1) / 2.0) / stride
        if self.kind == "iknn":
            return labels.iknn_maps(points, size, self.neighbours, offsets=offsets,
                                    max_distance=self.max_distance, transform=self.transform,
                                    validate=validate)
        return labels.density_maps(points, size, self.sigma, k=self.neighbours, beta=self.beta,
                                   truncate=self.truncate, offsets=offsets, validate=validate)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LabelSpec":
        return _settings.from_dict(cls, data, "label spec")


def count_loss(predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """mean((c_hat - c)^2) over the batch; predicted and true are (B,) counts."""
    if predicted.shape != true.shape:
        raise ValueError(f"predicted counts {tuple(predicted.shape)} and true counts {tuple(true.shape)} differ")
    return (predicted - true).pow(2).mean()


def map_loss(predicted: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """mean over b of (sum over pixels of mean over channels |M_hat[b, c] - M[b]|)^2.

    predicted: (B, C, H, W) maps, C >= 1; label: (B, H, W) (or (B, 1, H, W)), the same for every
    channel. Units: (label units x pixels)^2.
    """
    if predicted.dim() == 4 and predicted.shape[1] == 0:
        raise ValueError("predicted maps have no channels (a count-only network): there is no map loss "
                         "to compute")
    if label.dim() == 3:
        label = label.unsqueeze(1)
    if predicted.dim() != 4 or label.shape[0] != predicted.shape[0] or label.shape[1] != 1 \
            or label.shape[2:] != predicted.shape[2:]:
        raise ValueError(f"predicted maps must be (B, C, H, W) and label (B, H, W) of the same B, H, W; "
                         f"got {tuple(predicted.shape)} and {tuple(label.shape)}")
    per_image = (predicted - label).abs().mean(dim=1).sum(dim=(1, 2))
    return per_image.pow(2).mean()


class MUDLoss(nn.Module):
    """count_loss + map_weight * map_loss (map_weight = lambda, 1 in the paper).

    forward(maps (B, C, H, W), counts (B,), label (B, H, W) or None, true_counts (B,)) returns
    (total loss, {"count_loss": ..., "map_loss": ...}) as 0-dim float32 tensors. With C = 0 (a
    count-only network) the label is not used (None is the expected value), the total is count_loss
    itself and "map_loss" is an exact 0; with C >= 1 a label is required.
    """

    def __init__(self, map_weight: float = 1.0):
        super().__init__()
        if not (map_weight >= 0 and math.isfinite(map_weight)):
            raise ValueError(f"map_weight must be a non-negative number, got {map_weight!r}")
        self.map_weight = float(map_weight)

    def forward(self, maps: torch.Tensor, counts: torch.Tensor, label: Optional[torch.Tensor],
                true_counts: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c_loss = count_loss(counts.float(), true_counts.float())
        if maps.dim() == 4 and maps.shape[1] == 0:
            return c_loss, {"count_loss": c_loss, "map_loss": torch.zeros_like(c_loss)}
        if label is None:
            raise ValueError(f"label is None but the predicted maps have {maps.shape[1]} channels; only a "
                             f"count-only network (no map channels) trains without label maps")
        m_loss = map_loss(maps.float(), label.float())
        return c_loss + self.map_weight * m_loss, {"count_loss": c_loss, "map_loss": m_loss}
