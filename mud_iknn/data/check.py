"""Every bad file of a data set found at once, before a run starts instead of hours into it.

For each (image, annotation) pair of an :class:`~mud_iknn.data.common.AnnotatedImages` reader:
the image's header (size, mode) and its completeness (a JPEG ends with its end-of-image marker, a
PNG with its IEND chunk; other formats, and files that fail that test, are decoded), then the
annotation through the reader's own ``read_points`` and :func:`check_points` against the image's
size: exactly what loading the sample would do, without decoding the good JPEG and PNG files.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from .common import AnnotatedImages, check_points, image_size, load_image

__all__ = ["BadFile", "check_files", "check_dataset"]

_TAILS = {".jpg": (b"\xff\xd9",), ".jpeg": (b"\xff\xd9",), ".png": (b"IEND\xaeB`\x82",)}
_TAIL_BYTES = 64
#: Below this many pairs the check runs in the calling process (workers cost more to start).
_SERIAL_BELOW = 64


@dataclass(frozen=True)
class BadFile:
    """A file that loading would fail on: its path and why (one line that names the file)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return self.reason if self.path in self.reason else f"{self.path}: {self.reason}"


def _ends_complete(path: Path) -> bool:
    tails = _TAILS.get(path.suffix.lower())
    if tails is None:
        return False
    with open(path, "rb") as f:
        f.seek(max(path.stat().st_size - _TAIL_BYTES, 0))
        end = f.read().rstrip(b"\x00\r\n\t ")  # padding after the marker is harmless
    return end.endswith(tails)


def _check_pair(pair: tuple[Path, Path], read_points: Optional[Callable]) -> list[BadFile]:
    image, annotation = pair
    bad, size = [], None
    try:
        size = image_size(image)
        if not _ends_complete(image):
            load_image(image)  # decodes: a truncated or corrupt file raises, naming it
    except (OSError, ValueError) as err:
        bad.append(BadFile(str(image), str(err)))
    if read_points is None:
        return bad
    try:
        raw, _ = read_points(annotation)
        if size is not None:
            check_points(raw, size, annotation)
    except (OSError, ValueError) as err:
        bad.append(BadFile(str(annotation), str(err)))
    return bad


def _check_chunk(pairs: Sequence[tuple[Path, Path]], read_points: Optional[Callable]) -> list[BadFile]:
    return [b for pair in pairs for b in _check_pair(pair, read_points)]


def check_files(pairs: Sequence[tuple[Path, Path]], read_points: Optional[Callable], *,
                workers: Optional[int] = None) -> list[BadFile]:
    """The bad files among (image path, annotation path) ``pairs``, in their order.

    read_points: the reader's annotation parser (annotation path -> (raw (N, 2) points, meta)),
    a picklable function; None checks the images only. workers: processes (None: up to 8, one per core, in-process for few
    pairs; 0 or 1: in-process).
    """
    pairs = [(Path(i), Path(a)) for i, a in pairs]
    if workers is None:
        workers = 1 if len(pairs) < _SERIAL_BELOW else min(8, os.cpu_count() or 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(f"workers must be a non-negative integer or None, got {workers!r}")
    if workers <= 1:
        return _check_chunk(pairs, read_points)
    size = -(-len(pairs) // (4 * workers))
    chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
    with ProcessPoolExecutor(workers) as pool:
        results = pool.map(_check_chunk, chunks, [read_points] * len(chunks))
        return [b for chunk in results for b in chunk]


def check_dataset(dataset: AnnotatedImages, *, annotations: bool = True,
                  workers: Optional[int] = None) -> list[BadFile]:
    """The bad files of a file-backed data set (every reader of :data:`mud_iknn.data.DATASETS`
    but the synthetic one); ``annotations=False`` checks its images only (a split without public
    labels, such as NWPU-Crowd's test split). See :func:`check_files`."""
    if not isinstance(dataset, AnnotatedImages):
        raise TypeError(f"dataset must be a file-backed AnnotatedImages reader, got {type(dataset).__name__}")
    return check_files(dataset.items, dataset.read_points if annotations else None, workers=workers)
