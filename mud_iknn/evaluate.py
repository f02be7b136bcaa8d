"""Whole-image counting by sliding windows, and the count metrics MAE, RMSE and NAE.

As in the authors' code: windows of ``window`` x ``window`` pixels every ``stride`` pixels, the
image zero-padded at the bottom and right so that the windows cover it; each window's predicted
count is spread uniformly over its pixels inside the image; where windows overlap, the per-pixel
values are averaged; the image's count is the sum of that stitched map.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

__all__ = ["window_starts", "predict_image", "count_metrics", "evaluate"]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets 0, stride, 2*stride, ... of the windows covering [0, length)."""
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"window must be positive and stride in [1, window], got window={window}, "
                         f"stride={stride}")
    extra = max(length - window, 0)
    return [i * stride for i in range(-(-extra // stride) + 1)]


@torch.no_grad()
def predict_image(model: nn.Module, image: torch.Tensor, window: int = 224, stride: int = 128,
                  batch_size: int = 16) -> tuple[float, torch.Tensor]:
    """(count, map): the predicted head count of one whole image and its stitched (H, W) float32 map
    (heads per pixel, on the CPU) whose sum is the count.

    model: returns (maps, counts (B,)) for (B, 3, window, window) uint8 images (a
    :class:`mud_iknn.model.MapNetwork`); it is run in eval mode on its own device and put back in
    the mode it was in. image: (3, H, W) uint8.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be a (3, H, W) tensor, got {getattr(image, 'shape', type(image))}")
    if image.dtype != torch.uint8:
        raise TypeError(f"image must be uint8, got {image.dtype}")
    _, height, width = image.shape
    ys, xs = window_starts(height, window, stride), window_starts(width, window, stride)
    padded = image.new_zeros((3, ys[-1] + window, xs[-1] + window))
    padded[:, :height, :width] = image
    boxes = [(y, x) for y in ys for x in xs]
    device = next(model.parameters(), torch.empty(0)).device  # the CPU for a model without any (OnnxModel)
    was_training = model.training
    model.eval()
    try:
        counts = []
        for i in range(0, len(boxes), batch_size):
            batch = torch.stack([padded[:, y:y + window, x:x + window] for y, x in boxes[i:i + batch_size]])
            counts.append(model(batch.to(device))[1].float().cpu())
        counts = torch.cat(counts).double()
    finally:
        model.train(was_training)
    total = torch.zeros(height, width, dtype=torch.float64)
    cover = torch.zeros(height, width, dtype=torch.float64)
    for (y, x), c in zip(boxes, counts):
        h, w = min(window, height - y), min(window, width - x)
        total[y:y + h, x:x + w] += c / (h * w)
        cover[y:y + h, x:x + w] += 1
    density = total / cover
    return float(density.sum()), density.float()


def count_metrics(predicted: Sequence[float], true: Sequence[float]) -> dict:
    """MAE, RMSE and NAE (mean of |error| / true count over images with a true count > 0)."""
    predicted = torch.as_tensor(list(predicted), dtype=torch.float64)
    true = torch.as_tensor(list(true), dtype=torch.float64)
    if predicted.shape != true.shape or predicted.numel() == 0:
        raise ValueError(f"predicted and true must be non-empty and equally long, got "
                         f"{predicted.numel()} and {true.numel()}")
    err = (predicted - true).abs()
    positive = true > 0
    nae = float((err[positive] / true[positive]).mean()) if bool(positive.any()) else math.nan
    return {"mae": float(err.mean()), "rmse": float(err.pow(2).mean().sqrt()), "nae": nae}


def evaluate(model: nn.Module, dataset, window: int = 224, stride: int = 128, batch_size: int = 16,
             progress: bool = False, limit: Optional[int] = None) -> dict:
    """Counts every image of ``dataset`` (a sequence of CrowdSample) with :func:`predict_image`.

    Returns {"mae", "rmse", "nae", "per_image": [{"name", "count", "predicted"}, ...]}.
    ``limit`` evaluates only the first ``limit`` images.
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    indices = range(n)
    if progress:
        from tqdm.auto import tqdm
        indices = tqdm(indices, desc="evaluate", unit="image")
    per_image = []
    for i in indices:
        sample = dataset[i]
        predicted, _ = predict_image(model, sample.image, window, stride, batch_size)
        per_image.append({"name": sample.name, "count": float(sample.count), "predicted": predicted})
    metrics = count_metrics([r["predicted"] for r in per_image], [r["count"] for r in per_image])
    metrics["per_image"] = per_image
    return metrics
