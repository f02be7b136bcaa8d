"""Deployment: ONNX export of a trained network, an onnxruntime-backed model, and the inputs of counting.

:func:`export_onnx` writes the network for one window size as a single ONNX file (input ``image``
(B, 3, S, S) float32 in [0, 1] with a dynamic batch axis, normalisation inside; outputs ``maps``
(B, M, S', S') and ``counts`` (B,)), checks it with onnx's checker and compares onnxruntime's
outputs with torch's before it returns. :class:`OnnxModel` runs such a file through onnxruntime
and is called like the network (``maps, counts = model(images)``), so
:func:`mud_iknn.evaluate.predict_image` counts whole images with either. :func:`collect_inputs`
expands what the ``count`` command is given (image files, folders of images, one video) and
:func:`count_images` counts the images.

onnx, onnxscript (torch's exporter) and onnxruntime come from the optional extra ``deploy``
(``pip install "mud-iknn[deploy]"``), as does PyAV for :mod:`mud_iknn.video`.
"""
from __future__ import annotations

import copy
import csv
import importlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .data.common import IMAGE_SUFFIXES

__all__ = ["export_onnx", "export_checkpoint", "OnnxModel", "load_onnx", "collect_inputs",
           "count_images", "rounded_points", "write_csv", "require", "VIDEO_SUFFIXES", "INPUT_NAME", "OUTPUT_NAMES"]

INPUT_NAME = "image"
OUTPUT_NAMES = ("maps", "counts")
#: File name endings read as videos by ``count`` (anything else is read as an image).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
_META = "mud_iknn."  # prefix of the metadata keys export_onnx writes: window, stride, localization


def require(module: str, purpose: str):
    """``module`` imported, or ImportError saying that ``purpose`` needs the ``deploy`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{purpose} needs the optional package {module.split('.')[0]} ({err}); install "
                          f"the deploy extra: pip install \"mud-iknn[deploy]\"") from None


def _relative_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected| (0 for two empty arrays)."""
    if expected.size == 0:
        return 0.0
    scale = float(np.abs(expected).max())
    return float(np.abs(actual.astype(np.float64) - expected).max() / (scale if scale > 0 else 1.0))


def export_onnx(model: nn.Module, path: Union[str, os.PathLike], *, window: Optional[int] = None,
                stride: Optional[int] = None, tolerance: float = 1e-4) -> dict:
    """Writes ``model`` (a :class:`mud_iknn.model.MapNetwork`) as one ONNX file at ``path``.

    The graph takes ``image`` (B, 3, window, window) float32 in [0, 1] (B dynamic) and returns
    ``maps`` (B, M, window / s, window / s) and ``counts`` (B,), s the model's label stride. It is
    exported by torch.export (``torch.onnx.export(dynamo=True)``) from a float32 CPU copy in eval
    mode; the window (default: the model's ``input_size``) and the counting stride (default
    4/7 of the window) are stored in the file's metadata. The file is checked with
    ``onnx.checker`` and run by onnxruntime on a batch of two random windows; RuntimeError if its
    outputs differ from torch's by more than ``tolerance`` relative (max abs difference over
    max abs value).

    Returns {"path", "window", "stride", "maps_difference", "counts_difference"}.
    """
    onnx = require("onnx", "ONNX export")
    require("onnxscript", "ONNX export (torch's exporter)")
    ort = require("onnxruntime", "checking the ONNX export")
    if not hasattr(model, "input_size") or not hasattr(model, "label_shape"):
        raise TypeError(f"model must be a mud_iknn MapNetwork, got {type(model).__name__}")
    window = int(window or model.input_size)
    stride = int(stride or max(1, window * 4 // 7))
    if window < 32 or not 1 <= stride <= window:
        raise ValueError(f"window must be at least 32 and stride in [1, window], got {window} and {stride}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    network = copy.deepcopy(model).cpu().float().eval()
    example = torch.rand(2, 3, window, window, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(network, (example,), str(path), dynamo=True, input_names=[INPUT_NAME],
                      output_names=list(OUTPUT_NAMES), dynamic_shapes={"images": {0: batch}},
                      external_data=False, verbose=False)
    proto = onnx.load(str(path))
    for key, value in (("window", window), ("stride", stride)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = _META + key, str(value)
    if getattr(model, "localization", None):  # the checkpoint's calibrated localize settings travel along
        entry = proto.metadata_props.add()
        entry.key, entry.value = _META + "localization", json.dumps(model.localization)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: example.numpy()})
    with torch.no_grad():
        expected = [t.numpy() for t in network(example)]
    report = {"path": str(path), "window": window, "stride": stride}
    for name, actual, reference in zip(OUTPUT_NAMES, got, expected):
        if actual.shape != reference.shape:
            raise RuntimeError(f"{path}: onnxruntime's {name} have shape {actual.shape}, torch's {reference.shape}")
        difference = _relative_difference(actual, reference)
        if not difference <= tolerance:
            raise RuntimeError(f"{path}: onnxruntime's {name} differ from torch's by {difference:.3g} relative "
                               f"(tolerance {tolerance:g})")
        report[f"{name}_difference"] = difference
    return report


def export_checkpoint(checkpoint: Union[str, os.PathLike], path: Union[str, os.PathLike], *,
                      window: Optional[int] = None, stride: Optional[int] = None, tolerance: float = 1e-4) -> dict:
    """:func:`export_onnx` of the network of a checkpoint written by :func:`mud_iknn.train.train`;
    ``window`` and ``stride`` default to its training patch size and validation stride."""
    from .train import load_checkpoint

    model, config, _ = load_checkpoint(checkpoint, map_location="cpu")
    window = window or config.patch_size
    stride = stride or (config.window_stride if window == config.patch_size else None)
    return export_onnx(model, path, window=window, stride=stride, tolerance=tolerance)


class OnnxModel(nn.Module):
    """An ONNX file written by :func:`export_onnx`, run by onnxruntime, called like the network.

    path: the .onnx file. device: "cpu" (onnxruntime's CPU provider), "cuda" (its CUDA provider,
    where the installed onnxruntime has one) or "auto" (CUDA where it has it, else the CPU). threads: CPU threads of one call
    (default ``torch.get_num_threads()``).

    forward(images (B, 3, S, S) uint8, or float in [0, 1]) -> (maps (B, M, S', S'), counts (B,))
    float32 CPU tensors; S is :attr:`window`, the file's fixed window side. :attr:`stride` is the
    counting stride stored at export (None for a file without it). The model has no parameters
    and no training mode; ``eval()`` / ``train()`` change nothing.
    Raises FileNotFoundError for a missing file and ValueError naming the file for one that is not
    ONNX or whose input and outputs are not those of an export (``image`` (batch, 3, S, S) float,
    ``maps`` and ``counts``).
    """

    def __init__(self, path: Union[str, os.PathLike], *, device: str = "cpu", threads: Optional[int] = None):
        super().__init__()
        ort = require("onnxruntime", "counting with an ONNX model")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
        if device not in (*providers, "auto"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        if device == "cuda" and not has_cuda:
            raise ValueError("device 'cuda': this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        if device == "auto":
            device = "cuda" if has_cuda else "cpu"
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers[device])
        except Exception as err:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) share no public base class
            raise ValueError(f"{path} is not an ONNX model onnxruntime can load: {str(err).strip()[:300]}") from None
        self.path = path
        self.window = self._check_signature()
        meta = self.session.get_modelmeta().custom_metadata_map
        self.stride = int(meta[_META + "stride"]) if (_META + "stride") in meta else None
        # the calibrated localize settings of the exported checkpoint, used by predict_image (None: the defaults)
        self.localization = json.loads(meta[_META + "localization"]) if (_META + "localization") in meta else None

    def _check_signature(self) -> int:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape) if len(inputs) == 1 else []
        names = {o.name for o in outputs}
        if not (len(inputs) == 1 and inputs[0].name == INPUT_NAME and inputs[0].type == "tensor(float)"
                and len(shape) == 4 and shape[1] == 3 and isinstance(shape[2], int) and shape[2] == shape[3]
                and shape[2] > 0 and not isinstance(shape[0], int) and names >= set(OUTPUT_NAMES)):
            found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
            raise ValueError(f"{self.path} is not a mud-iknn export: it needs one input {INPUT_NAME!r} "
                             f"(batch, 3, S, S) float and outputs {' and '.join(OUTPUT_NAMES)}; it has inputs "
                             f"[{found}] and outputs {sorted(names)}")
        return int(shape[2])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (3, self.window,
                                                                                                   self.window):
            raise ValueError(f"images must be a (B, 3, {self.window}, {self.window}) tensor (the ONNX model's "
                             f"window), got {getattr(images, 'shape', type(images))}")
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        elif not images.is_floating_point():
            raise TypeError(f"images must be uint8 or float in [0, 1], got {images.dtype}")
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        maps, counts = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: array})
        return torch.from_numpy(maps), torch.from_numpy(counts)


def load_onnx(path: Union[str, os.PathLike], device: str = "auto", window: Optional[int] = None,
              stride: Optional[int] = None) -> tuple[OnnxModel, int, int]:
    """(model, window, stride) for counting with an exported file: the window is the file's (ValueError
    if ``window`` asks for another), the stride ``stride`` or the file's, else 4/7 of the window."""
    model = OnnxModel(path, device=device)
    if window is not None and window != model.window:
        raise ValueError(f"{path} counts windows of {model.window} px; it cannot use window {window} "
                         f"(export the checkpoint again with that window)")
    return model, model.window, int(stride or model.stride or max(1, model.window * 4 // 7))


def collect_inputs(paths: Iterable[Union[str, os.PathLike]]) -> tuple[list[Path], list[Path]]:
    """(images, videos) to count from ``paths``: a folder gives every image under it (recursively,
    by :data:`IMAGE_SUFFIXES`, sorted), a file whose name ends in one of :data:`VIDEO_SUFFIXES` is a
    video, any other file an image. FileNotFoundError for a missing path, ValueError for a folder
    with no image."""
    images, videos = [], []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under the folder {path}")
            images += found
        elif path.is_file():
            (videos if path.suffix.lower() in VIDEO_SUFFIXES else images).append(path)
        else:
            kind = "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"
            raise FileNotFoundError(f"{kind} not found: {path}")
    return images, videos


def count_images(model: nn.Module, images: Sequence[Path], *, window: int, stride: int,
                 overlays: Optional[dict] = None) -> Iterator[dict]:
    """Counts and locates the heads of each image file with :func:`mud_iknn.evaluate.predict_image`
    and yields {"image": path, "count": heads, "points": [[x, y], ...], "overlay": file}: "points"
    (image pixels, 2 decimals) for a network with map modules, "overlay" where ``overlays`` (a
    dict image -> PNG file) names one; it is written there (:func:`mud_iknn.visualize.save_overlay`).
    """
    from .data import load_image
    from .evaluate import predict_image
    from .visualize import save_overlay

    for path in images:
        image = load_image(path)
        prediction = predict_image(model, image, window=window, stride=stride)
        result = {"image": str(path), "count": float(prediction.count)}
        if prediction.points is not None:
            result["points"] = rounded_points(prediction.points)
        if overlays and path in overlays:
            shown = prediction.iknn_map if prediction.iknn_map is not None else prediction.density
            save_overlay(image, shown, result["count"], overlays[path], points=prediction.points,
                         title=Path(path).name)
            result["overlay"] = str(overlays[path])
        yield result


def rounded_points(points: torch.Tensor) -> list:
    """(N, 2) located heads as a JSON-able list of [x, y] rounded to 2 decimals (pixels)."""
    return [[round(x, 2), round(y, 2)] for x, y in points.tolist()]


def write_csv(path: Union[str, os.PathLike], rows: Iterable[dict], fields: Sequence[str]) -> Path:
    """Writes ``rows`` (dicts) as CSV with the header ``fields`` (other keys are left out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path
