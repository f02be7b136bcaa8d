"""What every data-set reader shares: image loading, annotation loading, point validation, and the
file-backed Dataset the readers fill with (image, annotation) pairs.

Points everywhere are (N, 2) float32 (x, y) in pixels, 0-based, x right, y down, pixel (row i,
col j) centred at (x = j, y = i) -- the convention of :mod:`mud_iknn.labels` and of the data sets'
own annotations, which are used as stored (no half-pixel shift).
"""
from __future__ import annotations

import contextlib

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..sample import CrowdSample

__all__ = ["IMAGE_SUFFIXES", "POINT_MARGIN", "load_image", "image_size", "load_mat", "read_annpoints_mat",
           "check_points",
           "require_dir", "list_images", "AnnotatedImages"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

POINT_MARGIN = 0.25
"""How far outside the image a head may lie, as a fraction of the image's width (for x) and height
(for y). Annotations slightly past the border are common and kept (they are real heads); points far
outside mean swapped or rescaled coordinates and raise."""


def require_dir(path, what: str) -> Path:
    """``path`` as a Path; FileNotFoundError naming ``what`` and the path if it is not a folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def list_images(folder: Path) -> list[Path]:
    """The image files (by suffix, case-insensitive) directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path) -> torch.Tensor:
    """(3, H, W) uint8 RGB tensor of the image file at ``path``.

    Grayscale, palette, 16-bit and alpha images become 8-bit RGB (alpha dropped). EXIF orientation
    is ignored: annotations refer to the pixels as stored. Raises FileNotFoundError / ValueError
    naming the file.
    """
    with _open_image(path) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            img = Image.fromarray((np.asarray(img, dtype=np.float64) / 256.0).clip(0, 255).astype(np.uint8))
        rgb = np.asarray(img.convert("RGB"))
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy())  # a copy: PIL's array is read-only


@contextlib.contextmanager
def _open_image(path):
    """The PIL image at ``path``, open for the with block; FileNotFoundError for a missing file,
    ValueError naming the file for one PIL cannot read (or that the block fails on) or a
    floating-point image (no convention says what range its values mean: refused, never guessed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            if img.mode == "F":
                raise ValueError("a floating-point image (PIL mode F); save it as 8 or 16 bits")
            yield img
    except Exception as err:  # PIL's errors (decoding, DecompressionBombError, ...) share no base class
        raise ValueError(f"cannot read image {path}: {err}") from None


def image_size(path) -> tuple[int, int]:
    """(H, W) of the image file at ``path`` from its header alone (no decoding); the errors of
    :func:`load_image` for a missing file, an unreadable header or an image it refuses."""
    with _open_image(path) as img:
        return img.height, img.width


def load_mat(path) -> dict:
    """The variables of a MATLAB .mat file (v4-v7.2 through scipy.io; v7.3 through h5py if present).

    Raises FileNotFoundError / ValueError naming the file; for v7.3 (HDF5) files without h5py the
    message says so.
    """
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation not found: {path}")
    with open(path, "rb") as f:
        header = f.read(128)
    if header.startswith(b"MATLAB 7.3") or header[:8] == b"\x89HDF\r\n\x1a\n":
        return _load_mat_v73(path)
    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError:  # scipy's answer to HDF5 files without the text header
        return _load_mat_v73(path)
    except Exception as err:  # MatReadError, and IndexError etc. on files that are not .mat at all
        raise ValueError(f"cannot read MATLAB file {path}: {err or type(err).__name__}") from None


def read_annpoints_mat(path: Path):
    """((N, 2) (x, y) array, {}) from a .mat file holding ``annPoints`` (UCF-QNRF, UCF-CC-50, NWPU)."""
    mat = load_mat(path)
    if "annPoints" not in mat:
        raise ValueError(f"{path}: no variable annPoints (the (x, y) head points), found variables "
                         f"{sorted(k for k in mat if not k.startswith('__'))}")
    return mat["annPoints"], {}


def _load_mat_v73(path: Path) -> dict:
    """Top-level numeric datasets of a v7.3 .mat file, transposed back to MATLAB's row-major view."""
    try:
        import h5py
    except ImportError:
        raise ValueError(f"{path} is a MATLAB v7.3 (HDF5) file: install h5py to read it, or re-save "
                         f"it in MATLAB with save(..., '-v7')") from None
    out = {}
    with h5py.File(path, "r") as f:
        for key, item in f.items():
            if isinstance(item, h5py.Dataset) and item.dtype.kind in "fiu":
                if item.attrs.get("MATLAB_empty", 0):  # an empty matrix: its data are its dimensions
                    out[key] = np.zeros(np.asarray(item, dtype=np.int64).ravel()[::-1])
                else:
                    out[key] = np.asarray(item).T
    return out


def check_points(points, size: tuple[int, int], source, *, margin: float = POINT_MARGIN) -> torch.Tensor:
    """(N, 2) float32 tensor of head points (x, y), validated for an image of ``size`` (H, W).

    ``points``: anything numpy turns into N (x, y) pairs (an empty array is zero heads). Raises
    ValueError naming ``source`` (the annotation file) when the shape is wrong, a coordinate is not
    finite, or a head lies more than ``margin`` of the image size outside the image.
    """
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: head points are not numbers: {err}") from None
    if arr.size == 0:
        return torch.zeros((0, 2), dtype=torch.float32)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{source}: head points must be N (x, y) pairs, got an array of shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{source}: head {i} has a non-finite coordinate (x, y) = ({arr[i, 0]:g}, {arr[i, 1]:g}) "
                         f"({int(bad.sum())} such heads)")
    height, width = size
    lo = np.array([-margin * width, -margin * height])
    hi = np.array([(1 + margin) * width, (1 + margin) * height])
    out = ((arr < lo) | (arr > hi)).any(axis=1)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        hint = ""
        if (arr[:, ::-1] >= lo).all() and (arr[:, ::-1] <= hi).all():
            hint = "; the points fit the image as (y, x): are x and y swapped?"
        raise ValueError(f"{source}: head {i} at (x, y) = ({arr[i, 0]:g}, {arr[i, 1]:g}) lies far outside the "
                         f"{width}x{height} (WxH) image ({int(out.sum())} such heads){hint}")
    return torch.from_numpy(arr.astype(np.float32))


class AnnotatedImages(torch.utils.data.Dataset):
    """A Dataset of image files with one annotation file each, yielding :class:`CrowdSample`.

    ``items``: (image path, annotation path) pairs in a fixed order. ``read_points(annotation path)``
    returns ``(points, meta)``: raw (N, 2) (x, y) points (validated here against the image size)
    and a dict merged into the sample's meta. Meta always holds ``dataset``, ``split``,
    ``image_path`` and ``annotation_path``. ``labelled``: False for a split whose annotations are
    not public (only :meth:`image_only` works there).
    """

    def __init__(self, items: Sequence[tuple[Path, Path]], read_points: Callable[[Path], tuple],
                 *, dataset: str, split: Optional[str], root: Path, labelled: bool = True):
        self.items = [(Path(i), Path(a)) for i, a in items]
        self.read_points = read_points
        self.dataset = dataset
        self.split = split
        self.root = Path(root)
        self.labelled = labelled
        if not self.items:
            where = f"split {split!r} of " if split else ""
            raise FileNotFoundError(f"no annotated images found in {where}{dataset} at {self.root}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> CrowdSample:
        image_path, annotation_path = self.items[index]
        image = load_image(image_path)
        raw, meta = self.read_points(annotation_path)
        points = check_points(raw, tuple(image.shape[1:]), annotation_path)
        meta = {"dataset": self.dataset, "split": self.split, "image_path": str(image_path),
                "annotation_path": str(annotation_path), **meta}
        return CrowdSample(image=image, points=points, name=image_path.stem, meta=meta)

    def image_only(self, index: int) -> tuple[str, torch.Tensor]:
        """(name, (3, H, W) uint8 image) of item ``index`` without reading its annotation (for
        splits whose labels are not public, e.g. NWPU-Crowd's test split)."""
        image_path = self.items[index][0]
        return image_path.stem, load_image(image_path)

    def counts(self) -> np.ndarray:
        """(len,) float64 head counts of the annotations, validated as loading a sample does (against
        each image's size from its header: no image decoding), with the same errors."""
        return np.array([len(check_points(self.read_points(a)[0], image_size(i), a)) for i, a in self.items],
                        dtype=np.float64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset!r}, split={self.split!r}, {len(self)} images, root={self.root})"
