"""A folder of your own: images plus one JSON or CSV file of head points per image.

Format (``root``, or ``root/<split>`` when a split is given)::

    street.jpg
    street.json     # {"points": [[x, y], ...]}   or just   [[x, y], ...]
    market.png
    market.csv      # one head per row: x,y   (an optional first line "x,y" is a header)

The annotation file has the image's name with ``.json`` or ``.csv`` in place of the image suffix
(JSON wins if both exist; suffixes in any case; UTF-8 text, a byte-order mark is fine). Two images
with one name (a.jpg, a.png) would share a point file and are refused. Coordinates are pixels,
0-based, x right, y down, the centre of the top-left pixel at (0, 0). An image with no heads has
``{"points": []}`` or an empty CSV.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

from .common import AnnotatedImages, list_images, require_dir

__all__ = ["point_folder", "read_point_file"]


def read_point_file(path: Path):
    """((N, 2) (x, y) list, {}) from a ``.json`` or ``.csv`` point file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation not found: {path} (nor {path.with_suffix('.csv').name})")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a byte-order mark (Excel) is fine
            text = f.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text: {err}") from None
    if path.suffix.lower() == ".json":
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON: {err}") from None
        points = record.get("points") if isinstance(record, dict) else record
        if not isinstance(points, list):
            raise ValueError(f"{path}: expected {{\"points\": [[x, y], ...]}} or [[x, y], ...]")
        return points, {}
    # (line number in the file, row) of the rows that hold something; a header "x,y" first is skipped
    rows = [(n, row) for n, row in enumerate(csv.reader(text.splitlines()), 1) if any(cell.strip() for cell in row)]
    if rows and [c.strip().lower() for c in rows[0][1][:2]] == ["x", "y"]:
        rows = rows[1:]
    points = []
    for line_no, row in rows:
        try:
            x, y = (float(c) for c in row)
        except ValueError:
            raise ValueError(f"{path}: line {line_no} must be two numbers 'x,y', got {','.join(row)!r}") from None
        points.append((x, y))
    return points, {}


def _annotation_for(image: Path) -> Path:
    """The image's point file: <stem>.json, else <stem>.csv (suffixes in any case, as for images)."""
    for suffix in (".json", ".csv"):
        for candidate in (image.with_suffix(suffix), image.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    return image.with_suffix(".json")


def point_folder(root, split: Optional[str] = None) -> AnnotatedImages:
    """Every image in ``root`` (or ``root/split``) with its point file, in file-name order."""
    root = require_dir(root, "image")
    folder = require_dir(root / split, f"split {split!r}") if split else root
    images = list_images(folder)
    stems: dict[str, Path] = {}
    for image in images:
        other = stems.setdefault(image.stem, image)
        if other is not image:
            raise ValueError(f"{other} and {image} would share one point file ({image.stem}.json/.csv): "
                             f"rename one of them")
    items = [(img, _annotation_for(img)) for img in images]
    return AnnotatedImages(items, read_point_file, dataset="folder", split=split, root=root)
