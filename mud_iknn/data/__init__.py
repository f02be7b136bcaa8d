"""Crowd-counting data sets, read from their folders as distributed, and the synthetic crowds.

Every reader is a torch Dataset yielding :class:`mud_iknn.sample.CrowdSample`: image (3, H, W)
uint8 RGB, head points (N, 2) float32 (x, y) in pixels, name, count and meta. Open one by name::

    from mud_iknn.data import open_dataset
    train = open_dataset("shanghaitech_a", "/data/ShanghaiTech", split="train")
    demo = open_dataset("synthetic", split="train", num_images=64, size=128)

Names (:data:`DATASETS`): shanghaitech_a, shanghaitech_b, ucf_qnrf, ucf_cc_50 (``fold=0..4``),
jhu_crowd, nwpu_crowd, folder (your own images + JSON/CSV points, see
:mod:`mud_iknn.data.point_folder`), synthetic (no root; see :class:`SyntheticCrowds`).
:func:`check_dataset` lists every bad file of a reader at once (:mod:`mud_iknn.data.check`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

from .check import BadFile, check_dataset
from .common import AnnotatedImages, check_points, image_size, load_image, load_mat
from .jhu_crowd import jhu_crowd
from .nwpu_crowd import nwpu_crowd
from .point_folder import point_folder
from .shanghaitech import shanghaitech, write_shanghaitech
from .synthetic import SyntheticCrowds, render_crowd
from .ucf_cc_50 import ucf_cc_50
from .ucf_qnrf import ucf_qnrf

__all__ = ["DATASETS", "DatasetInfo", "open_dataset", "AnnotatedImages", "SyntheticCrowds", "render_crowd",
           "write_shanghaitech", "load_image", "image_size", "load_mat", "check_points", "check_dataset", "BadFile",
           "shanghaitech", "ucf_qnrf",
           "ucf_cc_50", "jhu_crowd", "nwpu_crowd", "point_folder"]


@dataclass(frozen=True)
class DatasetInfo:
    """A registered data set: how to open it, its splits (None: any sub-folder or none), the split
    evaluated while training (``eval_split``) and the one results are reported on (``test_split``),
    whether it reads a root folder, and one line about it."""

    open: Callable
    splits: Optional[tuple]
    eval_split: Optional[str]
    test_split: Optional[str]
    needs_root: bool
    description: str


DATASETS = {
    "shanghaitech_a": DatasetInfo(partial(shanghaitech, part="A"), ("train", "test"), "test", "test", True,
                                  "ShanghaiTech Part A (dense, web images)"),
    "shanghaitech_b": DatasetInfo(partial(shanghaitech, part="B"), ("train", "test"), "test", "test", True,
                                  "ShanghaiTech Part B (sparser, Shanghai streets)"),
    "ucf_qnrf": DatasetInfo(ucf_qnrf, ("train", "test"), "test", "test", True, "UCF-QNRF (Train/, Test/)"),
    "ucf_cc_50": DatasetInfo(ucf_cc_50, ("train", "test", "all"), "test", "test", True,
                             "UCF-CC-50, 5-fold protocol (option fold=0..4)"),
    "jhu_crowd": DatasetInfo(jhu_crowd, ("train", "val", "test"), "val", "test", True, "JHU-Crowd++ v2.0"),
    "nwpu_crowd": DatasetInfo(nwpu_crowd, ("train", "val", "test", "all"), "val", "val", True,
                              "NWPU-Crowd (splits from train.txt / val.txt; test labels are not public)"),
    "folder": DatasetInfo(point_folder, None, None, None, True,
                          "your own images with a NAME.json or NAME.csv of (x, y) points each"),
    "synthetic": DatasetInfo(SyntheticCrowds, ("train", "val", "test"), "val", "test", False,
                             "procedurally rendered crowds, nothing to download (options num_images, size, seed)"),
}


def open_dataset(name: str, root=None, split: Optional[str] = None, **options):
    """The data set ``name`` (see :data:`DATASETS`) under ``root``, split ``split`` (None: the
    reader's default, "train" for all but "folder"). ``options`` go to the reader (e.g. ``fold``
    for ucf_cc_50, ``num_images``/``size``/``seed`` for synthetic).

    Raises ValueError for an unknown name or split, or a root given to / missing for a data set
    that does (not) read one; FileNotFoundError naming the missing folder.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    info = DATASETS[name]
    if info.needs_root and root is None:
        raise ValueError(f"data set {name!r} needs a root folder")
    if not info.needs_root and root is not None:
        raise ValueError(f"data set {name!r} is generated and takes no root folder (got {root}); a written copy "
                         f"reads back as shanghaitech_a/_b")
    if split is not None and info.splits is not None and split not in info.splits:
        raise ValueError(f"data set {name!r} has splits {', '.join(info.splits)}; got {split!r}")
    args = (root,) if info.needs_root else ()
    if split is not None:
        options["split"] = split
    return info.open(*args, **options)
