"""ShanghaiTech Part A / Part B (Zhang et al., CVPR 2016), read as distributed, and written.

Layout under ``root`` (the folder holding ``part_A`` and ``part_B``; ``part_A_final`` /
``part_B_final`` of the older archive, or ``root`` being the part folder itself, work too)::

    part_A/train_data/images/IMG_1.jpg
    part_A/train_data/ground-truth/GT_IMG_1.mat    # image_info{1}.location: (N, 2) (x, y)
    part_A/test_data/...

In Python, ``scipy.io.loadmat(...)["image_info"][0, 0][0, 0][0]`` is the (N, 2) (x, y) array.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from .common import AnnotatedImages, list_images, load_mat, require_dir

__all__ = ["shanghaitech", "read_shanghaitech_points", "write_shanghaitech", "SPLITS", "PARTS"]

SPLITS = ("train", "test")
PARTS = ("A", "B")


def read_shanghaitech_points(path: Path):
    """((N, 2) (x, y) array, {}) from a ``GT_IMG_n.mat`` file; ValueError naming the file if malformed."""
    mat = load_mat(path)
    try:
        points = mat["image_info"][0, 0][0, 0][0]
    except (KeyError, IndexError, TypeError, ValueError):
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: expected a variable image_info with image_info{{1}}.location holding "
                         f"the (x, y) head points, found variables {found}") from None
    return points, {}


def _part_dir(root: Path, part: str) -> Path:
    for name in (f"part_{part}", f"part_{part}_final"):
        if (root / name).is_dir():
            return root / name
    if root.name.lower().startswith(f"part_{part.lower()}"):
        return root
    raise FileNotFoundError(f"ShanghaiTech part {part} not found: no part_{part} (or part_{part}_final) "
                            f"folder in {root}")


def _image_number(path: Path) -> tuple:
    match = re.search(r"(\d+)$", path.stem)
    return (int(match.group(1)) if match else -1, path.name)


def shanghaitech(root, part: str = "A", split: str = "train") -> AnnotatedImages:
    """ShanghaiTech part ``part`` ("A" or "B"), split ``split`` ("train" or "test"), in image-number order."""
    part = str(part).upper()
    if part not in PARTS:
        raise ValueError(f"ShanghaiTech part must be one of {PARTS}, got {part!r}")
    if split not in SPLITS:
        raise ValueError(f"ShanghaiTech split must be one of {SPLITS}, got {split!r}")
    root = require_dir(root, "ShanghaiTech root")
    split_dir = require_dir(_part_dir(root, part) / f"{split}_data", f"ShanghaiTech part {part} {split}")
    images = require_dir(split_dir / "images", "ShanghaiTech images")
    truth = split_dir / "ground-truth"
    items = [(img, truth / f"GT_{img.stem}.mat") for img in sorted(list_images(images), key=_image_number)]
    return AnnotatedImages(items, read_shanghaitech_points, dataset=f"shanghaitech_{part.lower()}",
                           split=split, root=root)


def write_shanghaitech(dataset, root, part: str = "A", split: str = "train", *, quality: int = 95) -> Path:
    """Writes every sample of ``dataset`` (CrowdSamples) in the ShanghaiTech layout under ``root``.

    Images become ``part_{part}/{split}_data/images/IMG_{i + 1}.jpg`` (JPEG at ``quality``, no
    chroma subsampling) and points ``ground-truth/GT_IMG_{i + 1}.mat`` with
    ``image_info{1}.location`` (N, 2) (x, y) and ``image_info{1}.number``, as in the original
    archive. Returns the split folder. Raises FileExistsError naming an image already in the
    folder that this write would not replace (it would be read back with the new ones).
    """
    import scipy.io

    part = str(part).upper()
    if part not in PARTS or split not in SPLITS:
        raise ValueError(f"part must be one of {PARTS} and split one of {SPLITS}, got {part!r}, {split!r}")
    split_dir = Path(root) / f"part_{part}" / f"{split}_data"
    if (split_dir / "images").is_dir():
        written = {f"IMG_{i + 1}.jpg" for i in range(len(dataset))}
        stale = [p for p in list_images(split_dir / "images") if p.name not in written]
        if stale:
            raise FileExistsError(f"{stale[0]} ({len(stale)} such images) would be read back with the "
                                  f"{len(dataset)} written: write into an empty folder")
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    (split_dir / "ground-truth").mkdir(parents=True, exist_ok=True)
    for i in range(len(dataset)):
        sample = dataset[i]
        name = f"IMG_{i + 1}"
        Image.fromarray(sample.image.permute(1, 2, 0).numpy()).save(
            split_dir / "images" / f"{name}.jpg", quality=quality, subsampling=0)
        points = sample.points.numpy().astype(np.float64).reshape(-1, 2)
        info = np.empty((1, 1), dtype=[("location", object), ("number", object)])
        info[0, 0]["location"] = points
        info[0, 0]["number"] = np.array([[float(len(points))]])
        cell = np.empty((1, 1), dtype=object)
        cell[0, 0] = info
        scipy.io.savemat(str(split_dir / "ground-truth" / f"GT_{name}.mat"), {"image_info": cell})
    return split_dir
