"""Whole-image counting and locating by sliding windows, and the benchmarks' metrics: counting
(MAE, RMSE, NAE, GAME), localization (precision, recall, F1 of one-to-one matches within a
distance, NWPU-Crowd's protocol), and NWPU-Crowd's test-server files.

As in the authors' code, windows of ``window`` x ``window`` pixels every ``stride`` pixels, except
that the last one along each axis is flush with the image's border (:func:`window_starts`: training
never shows a patch that overhangs the image, so no window does; only an image smaller than a window
is zero-padded); each window's predicted count is spread uniformly over its pixels inside the image;
where windows overlap, the per-pixel values are averaged; the image's count is the sum of that
stitched map. The windows' ikNN maps are
stitched the same way (each pixel the mean of the maps over it) and their local maxima are the
located heads (:func:`mud_iknn.localize`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._checks import is_integer, is_real
from .localize import DEFAULT_MIN_DISTANCE, DEFAULT_THRESHOLD, localize
from .sample import nearest_pixels

__all__ = ["window_starts", "Prediction", "predict_image", "count_metrics", "mean_count_baseline", "game_errors",
           "GAME_LEVELS",
           "match_counts", "localization_counts", "localization_metrics", "head_thresholds", "evaluate",
           "nwpu_image_id", "check_nwpu_ids", "write_nwpu_counts", "write_nwpu_points",
           "CALIBRATION_THRESHOLDS", "CALIBRATION_MIN_DISTANCES", "choose_localization", "calibrate_localization"]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows covering [0, length): 0, stride, 2*stride, ... below
    length - window, then length - window, so that no window reaches past the end (the last two
    may overlap by more than window - stride); [0] when length <= window (that window is padded).
    """
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"window must be positive and stride in [1, window], got window={window}, "
                         f"stride={stride}")
    if length <= window:
        return [0]
    return [*range(0, length - window, stride), length - window]


class Prediction(NamedTuple):
    """What :func:`predict_image` finds in one image.

    count: the predicted head count (the paper's: the windows' counts, overlaps averaged).
    density: (H, W) float32 count map on the CPU (heads per pixel; its sum is ``count``).
    iknn_map: (H, W) float32 stitched ikNN map on the CPU (each pixel the mean over the windows
    covering it of their maps, channels averaged), None for a network without map modules or
    with ``locate=False``.
    points: (N, 2) float32 located heads (x, y) in image pixels (:func:`mud_iknn.localize` on
    ``iknn_map``), None without a map.
    """

    count: float
    density: torch.Tensor
    iknn_map: Optional[torch.Tensor]
    points: Optional[torch.Tensor]


def _extend(maps: torch.Tensor, dim: int) -> torch.Tensor:
    """``maps`` with one more line on each side of ``dim``, extrapolated linearly (repeated if it has one)."""
    n = maps.shape[dim]
    first, last = maps.narrow(dim, 0, 1), maps.narrow(dim, n - 1, 1)
    if n > 1:
        first, last = 2 * first - maps.narrow(dim, 1, 1), 2 * last - maps.narrow(dim, n - 2, 1)
    return torch.cat([first, maps, last], dim)


def upsample_maps(maps: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, h, w) maps of a window at a label stride s (a power of two: h = w = ceil(window / s),
    label pixel r covering window pixels [s r, s r + s), as :class:`mud_iknn.model.MapNetwork` makes
    them) -> (B, C, window, window), bilinear with each label pixel's value at the centre of its
    block (where the label kinds place it), extrapolated linearly over the outer half label pixel.
    Nearest-neighbour blocks would be plateaus on every slope and a clamped border a flat band: each
    a row of spurious peaks for :func:`mud_iknn.localize`."""
    h, w = maps.shape[-2:]
    s = next((2 ** i for i in range(window.bit_length()) if -(-window // 2 ** i) == h), None)
    if s is None or w != h:
        raise ValueError(f"maps of {h} x {w} are not a {window} px window at a label stride of a power of two")
    extended = _extend(_extend(maps, -1), -2)
    up = F.interpolate(extended, size=((h + 2) * s, (h + 2) * s), mode="bilinear", align_corners=False)
    return up[..., s:s + window, s:s + window]


@torch.no_grad()
def predict_image(model: nn.Module, image: torch.Tensor, window: int = 224, stride: int = 128,
                  batch_size: int = 16, *, locate: bool = True, threshold: Optional[float] = None,
                  min_distance: Optional[int] = None) -> Prediction:
    """Counts and locates the heads of one whole image with sliding windows (:class:`Prediction`).

    model: returns (maps (B, C, h, w), counts (B,)) for (B, 3, window, window) uint8 images (a
    :class:`mud_iknn.model.MapNetwork`; maps coarser than the window, by a whole factor, are
    upsampled to it by :func:`upsample_maps`); it is run in eval mode on its own device and put
    back in the mode it was in.
    image: (3, H, W) uint8. locate: stitch the maps and locate the heads (False: the count and
    its density only). threshold, min_distance: passed to :func:`mud_iknn.localize`; None takes
    the model's calibrated ones (``model.localization``, a dict with "threshold" and
    "min_distance", as :func:`mud_iknn.train.load_checkpoint` sets it from
    :func:`calibrate_localization`), else ``DEFAULT_THRESHOLD`` / ``DEFAULT_MIN_DISTANCE``.
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
    total = torch.zeros(height, width, dtype=torch.float64)
    cover = torch.zeros(height, width, dtype=torch.float64)
    map_total = None
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(boxes), batch_size):
            batch_boxes = boxes[i:i + batch_size]
            batch = torch.stack([padded[:, y:y + window, x:x + window] for y, x in batch_boxes])
            maps, counts = model(batch.to(device))
            counts = counts.double().cpu()
            if locate and maps.shape[1]:
                maps = maps.float().mean(1, keepdim=True)
                if maps.shape[-2:] != (window, window):
                    maps = upsample_maps(maps, window)
                maps = maps[:, 0].cpu()
                if map_total is None:
                    map_total = torch.zeros(height, width, dtype=torch.float32)
            for n, ((y, x), c) in enumerate(zip(batch_boxes, counts)):
                h, w = min(window, height - y), min(window, width - x)
                total[y:y + h, x:x + w] += c / (h * w)
                cover[y:y + h, x:x + w] += 1
                if map_total is not None:
                    map_total[y:y + h, x:x + w] += maps[n, :h, :w]
    finally:
        model.train(was_training)
    density = total / cover
    iknn_map = points = None
    if map_total is not None:
        iknn_map = map_total / cover.float()
        calibrated = getattr(model, "localization", None) or {}
        threshold = calibrated.get("threshold", DEFAULT_THRESHOLD) if threshold is None else threshold
        min_distance = calibrated.get("min_distance", DEFAULT_MIN_DISTANCE) if min_distance is None else min_distance
        points = localize(iknn_map[None], threshold=threshold, min_distance=min_distance)[0]
    return Prediction(float(density.sum()), density.float(), iknn_map, points)


def count_metrics(predicted: Sequence[float], true: Sequence[float]) -> dict:
    """MAE, RMSE and NAE (mean of |error| / true count over images with a true count > 0).

    "rmse" is what crowd-counting papers and benchmarks report as "MSE": sqrt(mean(error^2)).
    """
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


GAME_LEVELS = (0, 1, 2, 3)


def game_errors(density: torch.Tensor, points, levels: Sequence[int] = GAME_LEVELS) -> list[float]:
    """GAME(L) of one image for each L of ``levels``: the absolute count errors summed over a
    2^L x 2^L grid of cells (Guerrero-Gomez-Olmedo et al. 2015); GAME(0) = |count error|.

    density: (H, W) predicted count map (heads per pixel). points: (N, 2) true heads (x, y), each
    counted in the pixel nearest it (clamped into the image: heads just past the border count at
    the border, as in the image's count). Cell c of 2^L along an axis of n pixels holds the pixels
    [floor(c n / 2^L), floor((c + 1) n / 2^L)).
    """
    density = torch.as_tensor(density, dtype=torch.float64).detach().cpu()
    if density.dim() != 2:
        raise ValueError(f"density must have shape (H, W), got {tuple(density.shape)}")
    pixels = torch.from_numpy(nearest_pixels(torch.as_tensor(_as_points(points, "points"))))
    height, width = density.shape
    cols = pixels[:, 0].clamp(0, width - 1).long()
    rows = pixels[:, 1].clamp(0, height - 1).long()
    errors = []
    for level in levels:
        if not is_integer(level) or level < 0:
            raise ValueError(f"GAME levels must be non-negative integers, got {level!r}")
        level = int(level)
        n = 2 ** level
        row_cell = _cells(height, n)
        col_cell = _cells(width, n)
        predicted = torch.zeros(n * n, dtype=torch.float64).index_add_(
            0, (row_cell[:, None] * n + col_cell[None]).reshape(-1), density.reshape(-1))
        true = torch.bincount(row_cell[rows] * n + col_cell[cols], minlength=n * n).double()
        errors.append(float((predicted - true).abs().sum()))
    return errors


def _cells(length: int, n: int) -> torch.Tensor:
    """(length,) int64 cell of every pixel along an axis split into n cells at floor(c length / n)."""
    bounds = torch.tensor([c * length // n for c in range(1, n)], dtype=torch.int64)
    return torch.bucketize(torch.arange(length), bounds, right=True)


def _image_only(dataset, index: int):
    """(name, (3, H, W) uint8 image) of item ``index`` without its annotation where the data set can
    (file-backed readers: test splits whose labels are not public), else from the sample."""
    if hasattr(dataset, "image_only"):
        return dataset.image_only(index)
    sample = dataset[index]
    return sample.name, sample.image


def evaluate(model: nn.Module, dataset, window: int = 224, stride: int = 128, batch_size: int = 16,
             progress: bool = False, limit: Optional[int] = None, *, localization: bool = False,
             thresholds: Sequence[Threshold] = (4, 8, 16), labels: bool = True) -> dict:
    """Counts (and with ``localization`` locates) every image of ``dataset`` (a sequence of
    CrowdSample) with :func:`predict_image`.

    Returns {"mae", "rmse", "nae", "game": {"0": GAME(0), ..., "3": GAME(3)} (means over the
    images), "per_image": [{"name", "count", "predicted", "game": [GAME(0..3)]}, ...]}, plus
    with ``localization`` "localization" (:func:`localization_metrics` at ``thresholds``, and at
    "sigma_s" / "sigma_l" where every image has head ``boxes`` in its meta) and "points" (the
    located (x, y), a list of pairs) in every per-image entry; where the images' meta hold
    "categories" (JHU-Crowd++: low / medium / high / weather), "categories": {name: {"images",
    "mae", "rmse", "nae"[, "localization"]}}. ``labels=False``: predictions only, for splits
    without public labels: {"per_image": [{"name", "predicted"[, "points"]}]}, no metrics.
    ``limit`` evaluates only the first ``limit`` images.
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    indices = range(n)
    if progress:
        from tqdm.auto import tqdm
        indices = tqdm(indices, desc="evaluate", unit="image")
    per_image, truth, boxes, categories = [], [], [], []
    for i in indices:
        if labels:
            sample = dataset[i]
            name, image = sample.name, sample.image
        else:
            name, image = _image_only(dataset, i)
        prediction = predict_image(model, image, window, stride, batch_size, locate=localization)
        record = {"name": name, "predicted": prediction.count}
        if labels:
            record["count"] = float(sample.count)
            record["game"] = game_errors(prediction.density, sample.points)
            truth.append(sample.points)
            boxes.append(sample.meta.get("boxes"))
            categories.append(sample.meta.get("categories", ()))
        if localization:
            if prediction.points is None:
                raise ValueError("localization needs a model with map modules (this one predicts counts only)")
            record["points"] = prediction.points.tolist()
        per_image.append(record)
    if not labels:
        return {"per_image": per_image}
    if localization:
        with_boxes = all(b is not None for b in boxes)
        thresholds = _threshold_list(thresholds) + (["sigma_s", "sigma_l"] if with_boxes else [])
        counts = localization_counts([r["points"] for r in per_image], truth, thresholds,
                                     boxes if with_boxes else None)

    def summary(chosen: list[int]) -> dict:
        result = count_metrics([per_image[i]["predicted"] for i in chosen], [per_image[i]["count"] for i in chosen])
        if localization:
            result["localization"] = {_threshold_name(t): _scores(*row)
                                      for t, row in zip(thresholds, counts[chosen].sum(0).tolist())}
        return result

    metrics = summary(list(range(len(per_image))))
    game = np.mean([r["game"] for r in per_image], axis=0)
    metrics["game"] = {str(level): float(v) for level, v in zip(GAME_LEVELS, game)}
    names = sorted({c for cs in categories for c in cs})
    if names:
        metrics["categories"] = {c: {"images": sum(c in cs for cs in categories),
                                     **summary([i for i, cs in enumerate(categories) if c in cs])} for c in names}
    metrics["per_image"] = per_image
    return metrics


def nwpu_image_id(name: str) -> int:
    """NWPU-Crowd's numeric image id of an image name ("3110" -> 3110); ValueError otherwise."""
    if not (isinstance(name, str) and name.isdigit()):
        raise ValueError(f"NWPU-Crowd test-server files need numeric image ids (as NWPU-Crowd's 0001 ... 5109); "
                         f"image {name!r} has none")
    return int(name)


def check_nwpu_ids(dataset) -> None:
    """ValueError unless every image of ``dataset`` has a numeric id (see :func:`nwpu_image_id`):
    file-backed readers are checked by file name, other data sets by their first sample's name."""
    names = [image.stem for image, _ in dataset.items] if hasattr(dataset, "items") else [dataset[0].name]
    for name in names:
        nwpu_image_id(name)


def write_nwpu_counts(path, per_image: Sequence[dict]) -> Path:
    """Writes NWPU-Crowd's counting submission: one line "<id> <count>" per image (entries with
    "name" and "predicted", e.g. :func:`evaluate`'s "per_image"), in id order."""
    rows = sorted((nwpu_image_id(r["name"]), float(r["predicted"])) for r in per_image)
    return _write_lines(path, [f"{i} {count:.4f}" for i, count in rows])


def write_nwpu_points(path, per_image: Sequence[dict]) -> Path:
    """Writes NWPU-Crowd's localization submission: one line "<id> <n> x1 y1 ... xn yn" per image
    (entries with "name" and "points"), the coordinates rounded to integers as the server wants."""
    rows = sorted((nwpu_image_id(r["name"]), np.rint(np.asarray(r["points"], dtype=np.float64).reshape(-1, 2)))
                  for r in per_image)
    return _write_lines(path, [" ".join([str(i), str(len(p)), *(str(int(v)) for v in p.reshape(-1))])
                               for i, p in rows])


def _write_lines(path, lines: list[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


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
    or (G,) radii >= 0, one per true head (a degenerate head box gives 0: exact matches only). Only the pairs within the radius are built (a k-d
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
    if radius.ndim == 0 and not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"thresholds must be positive and finite, got {float(radius)}")
    if radius.ndim == 1 and radius.size and not (np.isfinite(radius).all() and (radius >= 0).all()):
        raise ValueError(f"per-head thresholds must be finite and >= 0, got {radius.min()}")
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


def _threshold_list(thresholds) -> list:
    """``thresholds`` as a list; one threshold alone (a number or a name) is a list of one."""
    return [thresholds] if isinstance(thresholds, str) or is_real(thresholds) else list(thresholds)


def _threshold_name(threshold: Threshold) -> str:
    if isinstance(threshold, str):
        if threshold not in ("sigma_s", "sigma_l"):
            raise ValueError(f"thresholds must be positive numbers (pixels) or 'sigma_s' / 'sigma_l', "
                             f"got {threshold!r}")
        return threshold
    if not is_real(threshold) or not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"thresholds must be positive numbers (pixels) or 'sigma_s' / 'sigma_l', got {threshold!r}")
    return f"{float(threshold):g}px"


def localization_counts(predicted: Sequence, truth: Sequence, thresholds: Sequence[Threshold],
                        boxes: Optional[Sequence] = None) -> np.ndarray:
    """(B, T, 3) int64 (tp, fp, fn) of every image and threshold (see :func:`match_counts`).

    predicted, truth: B (N_b, 2) (x, y) points each. thresholds: T distances in pixels, or
    "sigma_s" / "sigma_l" for NWPU-Crowd's per-head thresholds (:func:`head_thresholds`), which
    need ``boxes``: B (G_b, 2) head box sizes (w, h), one per true head; one threshold alone is T = 1.
    """
    predicted, truth, thresholds = list(predicted), list(truth), _threshold_list(thresholds)
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
    thresholds = _threshold_list(thresholds)
    totals = localization_counts(predicted, truth, thresholds, boxes).sum(0)
    return {_threshold_name(t): _scores(*row) for t, row in zip(thresholds, totals.tolist())}


CALIBRATION_THRESHOLDS = tuple(round(0.06 + 0.02 * k, 2) for k in range(18))
"""The map thresholds :func:`choose_localization` tries: 0.06, 0.08, ..., 0.40."""

CALIBRATION_MIN_DISTANCES = (1, 2, 3)
"""The min_distance values (pixels, Chebyshev) :func:`choose_localization` tries."""


def choose_localization(maps: Sequence[torch.Tensor], truth: Sequence, *,
                        thresholds: Sequence[float] = CALIBRATION_THRESHOLDS,
                        min_distances: Sequence[int] = CALIBRATION_MIN_DISTANCES, radius: float = 8) -> dict:
    """The :func:`mud_iknn.localize` settings that locate the true heads best on these maps.

    maps: B (H_b, W_b) ikNN maps (e.g. :class:`Prediction`'s ``iknn_map``); truth: B (N_b, 2)
    (x, y) true heads in the maps' pixels. Every (threshold, min_distance) of the grid locates
    the heads of every map; the F1 at ``radius`` pixels (:func:`localization_metrics`, tp / fp /
    fn summed over the maps) decides; of equal F1s the larger threshold, then the smaller
    min_distance wins. Returns {"threshold", "min_distance", "f1_8px"} ("f1_<radius>px" in
    general; 0.0 where no setting matches any head).
    """
    maps, truth = list(maps), list(truth)
    if not maps or len(maps) != len(truth):
        raise ValueError(f"maps and truth must be non-empty and of the same length, got {len(maps)} and {len(truth)}")
    thresholds, min_distances = list(thresholds), list(min_distances)  # numpy arrays too
    if not thresholds or not min_distances:
        raise ValueError("thresholds and min_distances must not be empty")
    name = _threshold_name(radius)
    best = None
    for threshold in sorted(thresholds, reverse=True):
        for min_distance in sorted(min_distances):
            located = [localize(m[None], threshold=threshold, min_distance=min_distance)[0] for m in maps]
            f1 = localization_metrics(located, truth, (radius,))[name]["f1"]
            f1 = 0.0 if math.isnan(f1) else f1
            if best is None or f1 > best[f"f1_{name}"]:
                best = {"threshold": float(threshold), "min_distance": int(min_distance), f"f1_{name}": float(f1)}
    return best


def calibrate_localization(model: nn.Module, dataset, window: int = 224, stride: int = 128, limit: int = 16,
                           batch_size: int = 16) -> dict:
    """:func:`choose_localization` on the stitched ikNN maps (:func:`predict_image`) of ``limit``
    images of ``dataset`` (a sequence of CrowdSample) spread evenly over it (all of them when it
    holds fewer; deterministic), at 8 px. ValueError for a model without map modules.
    """
    if limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    n = len(dataset)
    if n == 0:
        raise ValueError("calibrate_localization needs at least one labelled image")
    indices = sorted({i * n // min(limit, n) for i in range(min(limit, n))})
    maps, truth = [], []
    for i in indices:
        sample = dataset[i]
        prediction = predict_image(model, sample.image, window, stride, batch_size)
        if prediction.iknn_map is None:
            raise ValueError("calibrate_localization needs a model with map modules (this one predicts counts only)")
        maps.append(prediction.iknn_map)
        truth.append(sample.points)
    return choose_localization(maps, truth)
