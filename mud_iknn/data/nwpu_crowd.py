"""NWPU-Crowd (Wang et al., TPAMI 2020), read as distributed.

Layout under ``root``::

    images/0001.jpg
    jsons/0001.json      # {"img_id": ..., "human_num": N, "points": [[x, y], ...],
                         #  "boxes": [[x1, y1, x2, y2], ...] (head boxes, one per point)}
    mats/0001.mat        # annPoints: (N, 2) (x, y)  (used when the JSON is absent)
    train.txt val.txt test.txt   # one image per line: "0001 <illumination> <scene level>"

Splits come from the list files; without them only ``split="all"`` (every annotated image) works.
The test annotations are not public: a split without any of its annotations is ``labelled =
False`` and reading a sample raises FileNotFoundError naming its missing annotation
(``image_only`` reads its image alone). Where the JSON has head boxes, the
sample meta holds ``boxes`` (N, 2) (w, h) in pixels, for NWPU-Crowd's per-head localization
thresholds (:func:`mud_iknn.evaluate.head_thresholds`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .common import AnnotatedImages, list_images, read_annpoints_mat, require_dir

__all__ = ["nwpu_crowd", "read_nwpu_points", "SPLITS"]

SPLITS = ("train", "val", "test", "all")


def read_nwpu_points(path: Path):
    """((N, 2) (x, y) array, meta) from ``jsons/NNNN.json`` (``points``) or ``mats/NNNN.mat`` (``annPoints``).

    ``path`` is the JSON path; the .mat in the sibling ``mats`` folder is the fallback.
    """
    path = Path(path)
    if not path.is_file():
        mat = path.parent.parent / "mats" / f"{path.stem}.mat"
        if mat.is_file():
            return read_annpoints_mat(mat)
        raise FileNotFoundError(f"annotation not found: {path} (nor {mat})")
    try:
        with open(path) as f:
            record = json.load(f)
        points = record["points"]
        if not isinstance(points, list):
            raise TypeError
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from None
    except (KeyError, TypeError):
        raise ValueError(f"{path}: expected an object with a 'points' list of [x, y] pairs") from None
    meta = {}
    if record.get("boxes") is not None:
        try:
            boxes = np.asarray(record["boxes"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: 'boxes' must be a list of [x1, y1, x2, y2] numbers") from None
        if boxes.size == 0 and len(points) == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape != (len(points), 4):
            raise ValueError(f"{path}: 'boxes' must hold one [x1, y1, x2, y2] per point ({len(points)}), "
                             f"got an array of shape {boxes.shape}")
        meta["boxes"] = boxes[:, 2:] - boxes[:, :2]
    if record.get("human_num") is not None:  # null: not recorded
        meta["human_num"] = record["human_num"]
        number = record["human_num"]  # json reads NaN and Infinity too
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number != len(points):
            raise ValueError(f"{path}: human_num is {record['human_num']} but 'points' holds {len(points)} heads")
    return points, meta


def _split_names(root: Path, split: str) -> list[str] | None:
    if split == "all":
        return None
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"NWPU-Crowd split list not found: {listing} (use split='all' to read every "
                                f"annotated image)")
    with open(listing) as f:
        return [line.split()[0] for line in f if line.strip()]


def nwpu_crowd(root, split: str = "train") -> AnnotatedImages:
    """NWPU-Crowd split ``split`` ("train", "val", "test" from the list files, or "all")."""
    if split not in SPLITS:
        raise ValueError(f"NWPU-Crowd split must be one of {SPLITS}, got {split!r}")
    root = require_dir(root, "NWPU-Crowd root")
    images = {p.stem: p for p in list_images(require_dir(root / "images", "NWPU-Crowd images"))}
    names = _split_names(root, split)
    if names is None:
        names = [n for n in sorted(images)
                 if (root / "jsons" / f"{n}.json").is_file() or (root / "mats" / f"{n}.mat").is_file()]
    missing = [n for n in names if n not in images]
    if missing:
        raise FileNotFoundError(f"NWPU-Crowd image {root / 'images' / (missing[0] + '.jpg')} listed in {split}.txt "
                                f"not found ({len(missing)} missing)")
    items = [(images[n], root / "jsons" / f"{n}.json") for n in names]
    labelled = any((root / "jsons" / f"{n}.json").is_file() or (root / "mats" / f"{n}.mat").is_file() for n in names)
    return AnnotatedImages(items, read_nwpu_points, dataset="nwpu_crowd", split=split, root=root, labelled=labelled)
