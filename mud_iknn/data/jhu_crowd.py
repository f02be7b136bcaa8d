"""JHU-Crowd++ (Sindagi et al., TPAMI 2020), read as distributed.

Layout under ``root`` (``jhu_crowd_v2.0``)::

    train/images/0001.jpg
    train/gt/0001.txt           # one head per row: x y w h o b
    train/image_labels.txt      # optional: name,count,scene,weather,distractor
    val/... test/...

Row fields: head centre (x, y), head box width and height (pixels), occlusion level o (1 visible,
2 partial, 3 full) and blur b (0/1). An empty file is an image with no heads. The sample meta holds
``boxes`` (N, 2) (w, h), ``occlusion`` (N,) and ``blur`` (N,), plus the image-level ``scene``,
``weather`` and ``distractor`` fields when ``image_labels.txt`` is present, and from them the
image's ``categories``, those the data set's paper reports results for: "low" (count 0-50),
"medium" (51-500) or "high" (over 500) by the listed count, and "weather" for a weather code of
1 (fog / haze), 2 (rain) or 3 (snow) (0: none).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from .common import AnnotatedImages, list_images, require_dir

__all__ = ["jhu_crowd", "read_jhu_points", "categories", "SPLITS"]

SPLITS = ("train", "val", "test")
_LABEL_FIELDS = ("count", "scene", "weather", "distractor")
DENSITY_CATEGORIES = (("low", 50), ("medium", 500), ("high", float("inf")))  # (name, largest count)
WEATHER_CODES = ("1", "2", "3")  # fog / haze, rain, snow


def categories(count: float, weather: str) -> list[str]:
    """JHU-Crowd++'s evaluation categories of an image with ``count`` heads and ``weather`` code."""
    density = next(name for name, top in DENSITY_CATEGORIES if count <= top)
    return [density, "weather"] if weather in WEATHER_CODES else [density]


def read_jhu_points(path: Path, image_labels: dict | None = None):
    """((N, 2) (x, y) array, meta) from a JHU-Crowd++ ``gt/NNNN.txt``; ValueError naming the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"annotation not found: {path}")
    rows = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.replace(",", " ").split()
            if not fields:
                continue
            try:
                values = [float(v) for v in fields]
            except ValueError:
                raise ValueError(f"{path}:{line_no}: expected numbers 'x y w h o b', got {line.strip()!r}") from None
            if len(values) != 6:
                raise ValueError(f"{path}:{line_no}: expected 6 fields 'x y w h o b', got {len(values)}")
            rows.append(values)
    table = np.array(rows, dtype=np.float64).reshape(-1, 6)
    meta = {"boxes": table[:, 2:4], "occlusion": table[:, 4].astype(np.int64), "blur": table[:, 5].astype(np.int64)}
    meta.update((image_labels or {}).get(Path(path).stem, {}))
    return table[:, :2], meta


def _read_image_labels(path: Path) -> dict:
    """{image name: {scene, weather, distractor, categories}} from ``image_labels.txt`` (absent: {});
    ValueError naming the file and line for a count that is not a number."""
    if not path.is_file():
        return {}
    labels = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            fields = [v.strip() for v in line.split(",")]
            if len(fields) >= 2 and fields[0]:
                record = dict(zip(_LABEL_FIELDS, fields[1:]))
                try:
                    count = float(record.pop("count"))
                except ValueError:
                    raise ValueError(f"{path}:{line_no}: the count {fields[1]!r} is not a number") from None
                weather = record.get("weather", "0")
                if weather not in ("0", *WEATHER_CODES):
                    raise ValueError(f"{path}:{line_no}: the weather code {weather!r} is not 0 (none), 1 (fog / "
                                     f"haze), 2 (rain) or 3 (snow)")
                record["categories"] = categories(count, weather)
                labels[fields[0]] = record
    return labels


def jhu_crowd(root, split: str = "train") -> AnnotatedImages:
    """JHU-Crowd++ split ``split`` ("train", "val" or "test"), in file-name order."""
    if split not in SPLITS:
        raise ValueError(f"JHU-Crowd++ split must be one of {SPLITS}, got {split!r}")
    root = require_dir(root, "JHU-Crowd++ root")
    split_dir = require_dir(root / split, f"JHU-Crowd++ {split}")
    images = require_dir(split_dir / "images", f"JHU-Crowd++ {split} images")
    items = [(img, split_dir / "gt" / f"{img.stem}.txt") for img in list_images(images)]
    reader = partial(read_jhu_points, image_labels=_read_image_labels(split_dir / "image_labels.txt"))
    return AnnotatedImages(items, reader, dataset="jhu_crowd", split=split, root=root)
