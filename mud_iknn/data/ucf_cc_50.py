"""UCF-CC-50 (Idrees et al., CVPR 2013), read as distributed, with the standard 5-fold split.

Layout under ``root``: ``1.jpg`` ... ``50.jpg`` with ``1_ann.mat`` ... (``annPoints``: (N, 2)
(x, y)). The images are grayscale; they come out as RGB.

The standard protocol is 5-fold cross-validation over consecutive blocks of 10 images: fold f
(0-based) tests on images 10 f + 1 ... 10 f + 10 and trains on the other 40. Results are the mean
over the 5 folds.
"""
from __future__ import annotations

import re

from .common import AnnotatedImages, list_images, read_annpoints_mat, require_dir

__all__ = ["ucf_cc_50", "fold_numbers", "FOLDS", "SPLITS"]

FOLDS = 5
FOLD_SIZE = 10
SPLITS = ("train", "test", "all")


def fold_numbers(fold: int, split: str) -> list[int]:
    """The 1-based image numbers of ``split`` ("train", "test" or "all") in fold ``fold`` (0..4)."""
    if split not in SPLITS:
        raise ValueError(f"UCF-CC-50 split must be one of {SPLITS}, got {split!r}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < FOLDS:
        raise ValueError(f"UCF-CC-50 fold must be an integer in [0, {FOLDS - 1}], got {fold!r}")
    everything = list(range(1, FOLDS * FOLD_SIZE + 1))
    test = everything[fold * FOLD_SIZE:(fold + 1) * FOLD_SIZE]
    if split == "test":
        return test
    return everything if split == "all" else [n for n in everything if n not in test]


def ucf_cc_50(root, split: str = "train", fold: int = 0) -> AnnotatedImages:
    """UCF-CC-50 images of ``split`` in ``fold`` (see :func:`fold_numbers`), in image-number order.

    Images of the split missing from ``root`` raise FileNotFoundError naming them.
    """
    numbers = fold_numbers(fold, split)
    root = require_dir(root, "UCF-CC-50 root")
    by_number = {int(p.stem): p for p in list_images(root) if re.fullmatch(r"\d+", p.stem)}
    missing = [n for n in numbers if n not in by_number]
    if missing:
        raise FileNotFoundError(f"UCF-CC-50 images {missing} (e.g. {root / f'{missing[0]}.jpg'}) not found "
                                f"for split {split!r} of fold {fold}")
    items = [(by_number[n], root / f"{n}_ann.mat") for n in numbers]
    return AnnotatedImages(items, read_annpoints_mat, dataset="ucf_cc_50", split=f"{split} (fold {fold})",
                           root=root)
