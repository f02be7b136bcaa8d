"""UCF-QNRF (Idrees et al., ECCV 2018), read as distributed.

Layout under ``root`` (``UCF-QNRF_ECCV18``)::

    Train/img_0001.jpg
    Train/img_0001_ann.mat     # annPoints: (N, 2) (x, y)
    Test/img_0001.jpg ...
"""
from __future__ import annotations

from .common import AnnotatedImages, list_images, read_annpoints_mat, require_dir

__all__ = ["ucf_qnrf", "SPLITS"]

SPLITS = ("train", "test")


def ucf_qnrf(root, split: str = "train") -> AnnotatedImages:
    """UCF-QNRF split ``split`` ("train" or "test"), in file-name order."""
    if split not in SPLITS:
        raise ValueError(f"UCF-QNRF split must be one of {SPLITS}, got {split!r}")
    root = require_dir(root, "UCF-QNRF root")
    folder = require_dir(root / split.capitalize(), f"UCF-QNRF {split}")
    items = [(img, img.with_name(f"{img.stem}_ann.mat")) for img in list_images(folder)]
    return AnnotatedImages(items, read_annpoints_mat, dataset="ucf_qnrf", split=split, root=root)
