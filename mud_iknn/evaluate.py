"""Whole-image counting by sliding windows, and the benchmarks' metrics: counting (MAE, RMSE, NAE)
and localization (precision, recall, F1 of one-to-one matches within a distance).

As in the authors' code: windows of ``window`` x ``window`` pixels every ``stride`` pixels, the
image zero-padded at the bottom and right so that the windows cover it; each window's predicted
count is spread uniformly over its pixels inside the image; where windows overlap, the per-pixel
values are averaged; the image's count is the sum of that stitched map.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

__all__ = ["window_starts", "predict_image", "count_metrics", "mean_count_baseline", "match_counts",
           "localization_counts", "localization_metrics", "head_thresholds", "evaluate"]


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
    device = next(model.parameters()).device
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


def mean_count_baseline(train_counts: Sequence[float], test_counts: Sequence[float]) -> dict:
    """:func:`count_metrics` of predicting the mean training count for every test image, plus that
    ``prediction``: the bar any trained model has to clear."""
    train_counts = [float(c) for c in train_counts]
    if not train_counts:
        raise ValueError("train_counts is empty: the baseline needs at least one training count")
    prediction = sum(train_counts) / len(train_counts)
    return {**count_metrics([prediction] * len(test_counts), list(test_counts)), "prediction": prediction}


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


def _as_points(value, name: str) -> np.ndarray:
    array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 2)
    if array.ndim != 2 or array.shape[1] != 2 or not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite (N, 2) (x, y) points, got an array of shape {array.shape}")
    return array


def match_counts(predicted, truth, radius: Union[float, np.ndarray]) -> tuple[int, int, int]:
    """(tp, fp, fn) of the largest one-to-one matching of ``predicted`` to ``truth`` heads in which a
    matched pair lies within ``radius`` (distance <= radius, pixels) -- NWPU-Crowd's protocol.

    predicted: (P, 2), truth: (G, 2) (x, y) points (arrays or tensors). radius: a positive number,
    or (G,) positive radii, one per true head. Only the pairs within the radius are built (a k-d
    tree) and matched by Hopcroft-Karp on that sparse graph (every connected component on its
    own): memory O(P + G + pairs), never a P x G matrix. The count of matches is that of the
    Hungarian assignment of the dense 0/1 cost matrix (``scipy.optimize.linear_sum_assignment``).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching
    from scipy.spatial import cKDTree

    predicted, truth = _as_points(predicted, "predicted"), _as_points(truth, "truth")
    radius = np.asarray(radius, dtype=np.float64)
    if radius.ndim not in (0, 1) or (radius.ndim == 1 and radius.shape != (len(truth),)):
        raise ValueError(f"radius must be a number or one per true head ({len(truth)}), got shape {radius.shape}")
    if radius.size and not (np.isfinite(radius).all() and (radius > 0).all()):
        raise ValueError(f"thresholds must be positive and finite, got {radius.min() if radius.ndim else radius}")
    if len(predicted) == 0 or len(truth) == 0:
        return 0, len(predicted), len(truth)
    pairs = cKDTree(predicted).sparse_distance_matrix(cKDTree(truth), float(radius.max()), output_type="ndarray")
    if radius.ndim:
        pairs = pairs[pairs["v"] <= radius[pairs["j"]]]
    graph = csr_matrix((np.ones(len(pairs), dtype=np.int8), (pairs["i"], pairs["j"])),
                       shape=(len(predicted), len(truth)))
    tp = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
    return tp, len(predicted) - tp, len(truth) - tp


def head_thresholds(boxes) -> dict[str, np.ndarray]:
    """NWPU-Crowd's per-head thresholds from (G, 2) head box sizes (w, h) in pixels:
    {"sigma_s": min(w, h) / 2, "sigma_l": sqrt(w^2 + h^2) / 2}, each (G,)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 2)
    return {"sigma_s": boxes.min(1) / 2, "sigma_l": np.hypot(boxes[:, 0], boxes[:, 1]) / 2}


Threshold = Union[float, str]


def _threshold_name(threshold: Threshold) -> str:
    if isinstance(threshold, str):
        if threshold not in ("sigma_s", "sigma_l"):
            raise ValueError(f"thresholds must be positive numbers (pixels) or 'sigma_s' / 'sigma_l', "
                             f"got {threshold!r}")
        return threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"thresholds must be positive numbers (pixels) or 'sigma_s' / 'sigma_l', got {threshold!r}")
    return f"{float(threshold):g}px"


def localization_counts(predicted: Sequence, truth: Sequence, thresholds: Sequence[Threshold],
                        boxes: Optional[Sequence] = None) -> np.ndarray:
    """(B, T, 3) int64 (tp, fp, fn) of every image and threshold (see :func:`match_counts`).

    predicted, truth: B (N_b, 2) (x, y) points each. thresholds: T distances in pixels, or
    "sigma_s" / "sigma_l" for NWPU-Crowd's per-head thresholds (:func:`head_thresholds`), which
    need ``boxes``: B (G_b, 2) head box sizes (w, h), one per true head.
    """
    predicted, truth, thresholds = list(predicted), list(truth), list(thresholds)
    if len(predicted) != len(truth):
        raise ValueError(f"predicted and truth must hold the same number of images, got {len(predicted)} "
                         f"and {len(truth)}")
    names = [_threshold_name(t) for t in thresholds]
    if not names:
        raise ValueError("thresholds must not be empty")
    per_head = any(isinstance(t, str) for t in thresholds)
    if per_head:
        if boxes is None:
            raise ValueError("thresholds 'sigma_s' / 'sigma_l' need boxes (the true heads' (w, h))")
        boxes = list(boxes)
        if len(boxes) != len(truth):
            raise ValueError(f"boxes must hold one array per image ({len(truth)}), got {len(boxes)}")
    out = np.zeros((len(truth), len(thresholds), 3), dtype=np.int64)
    for b, (p, g) in enumerate(zip(predicted, truth)):
        sigmas = None
        if per_head:
            sigmas = head_thresholds(boxes[b])
            if len(sigmas["sigma_s"]) != len(_as_points(g, "truth")):
                raise ValueError(f"image {b}: {len(sigmas['sigma_s'])} boxes for {len(_as_points(g, 'truth'))} "
                                 f"true heads")
        for t, threshold in enumerate(thresholds):
            out[b, t] = match_counts(p, g, sigmas[threshold] if isinstance(threshold, str) else threshold)
    return out


def _scores(tp: int, fp: int, fn: int) -> dict:
    """precision, recall, F1 (NaN where undefined: no predictions, no truth, neither) and the counts."""
    ratio = lambda a, b: a / b if b else math.nan  # noqa: E731
    return {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "tp": int(tp), "fp": int(fp), "fn": int(fn)}


def localization_metrics(predicted: Sequence, truth: Sequence, thresholds: Sequence[Threshold] = (4, 8, 16),
                         boxes: Optional[Sequence] = None) -> dict:
    """Localization metrics of a data set, as NWPU-Crowd reports them: tp, fp and fn summed over the
    images, then precision = tp / (tp + fp), recall = tp / (tp + fn), F1 = 2 tp / (2 tp + fp + fn).

    Arguments as in :func:`localization_counts`. Returns {name: {"precision", "recall", "f1", "tp",
    "fp", "fn"}} with names "4px", "8px", ... and "sigma_s" / "sigma_l"; a ratio without a
    denominator (no predictions for precision, no true heads for recall) is NaN.
    """
    totals = localization_counts(predicted, truth, thresholds, boxes).sum(0)
    return {_threshold_name(t): _scores(*row) for t, row in zip(thresholds, totals.tolist())}
