"""The MUD-ikNN loss.

loss = count_loss + map_weight * map_loss, with

* count_loss = mean over the batch of (c_hat - c)^2 (heads^2);
* map_loss = mean over the batch of (sum over pixels of mean over the map channels of
  |M_hat - M|)^2, every predicted channel compared with the same label map M.

A count-only network (no map channels) has no map term: its loss is count_loss alone and it needs
no label maps.

M is any label kind of :mod:`mud_iknn.label_kinds` (ikNN, density, FIDT or count maps), made from
the packed head points on their device.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .point_losses import BayesianLoss, DMCountLoss, OTLoss

__all__ = ["count_loss", "map_loss", "MUDLoss", "BayesianLoss", "OTLoss", "DMCountLoss"]


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
