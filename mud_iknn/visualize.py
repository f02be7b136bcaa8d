"""PNG pictures of images and maps: label previews, count overlays, the demo's summary figure.

Everything renders off-screen (matplotlib's Agg canvas, no pyplot state, no display needed).
Images are (3, H, W) uint8 RGB tensors or arrays; maps are (H, W) float arrays of any scale.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["colorize", "save_label_preview", "save_overlay", "save_demo_figure"]


def _hwc(image) -> np.ndarray:
    """(H, W, 3) uint8 numpy view of a (3, H, W) uint8 image tensor or array."""
    array = np.asarray(image.cpu() if hasattr(image, "cpu") else image)
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {array.shape}")
    if array.dtype != np.uint8:  # a cast would turn [0, 1] floats black and wrap values above 255
        raise ValueError(f"image must be uint8 RGB (0-255), got {array.dtype}")
    return np.ascontiguousarray(array.transpose(1, 2, 0))


def _map(values) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"map must have shape (H, W), got {array.shape}")
    return array


def _image_and_map(image, values) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 of the (3, H, W) ``image`` and (H, W) float64 of ``values``; ValueError unless
    they are the same size."""
    rgb, array = _hwc(image), _map(values)
    if array.shape != rgb.shape[:2]:
        raise ValueError(f"map {array.shape} and image {rgb.shape[:2]} differ in size")
    return rgb, array


def colorize(values, cmap: str = "viridis", vmax=None) -> np.ndarray:
    """(H, W, 3) uint8 colour picture of an (H, W) map, scaled from 0 to ``vmax`` (default: its max)."""
    from matplotlib import colormaps

    array = _map(values)
    top = float(np.nanmax(array)) if vmax is None and array.size else float(vmax or 0.0)
    scaled = np.clip(array / top, 0.0, 1.0) if top > 0 else np.zeros_like(array)
    return (colormaps[cmap](scaled)[..., :3] * 255.0 + 0.5).astype(np.uint8)


def _save(figure, path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=figure.dpi)
    return path


def save_label_preview(image, values, path) -> Path:
    """Writes ``path``: the image and its label map (colour, scaled to its max) side by side, at
    the image's own resolution (a plain pixel PNG, no axes)."""
    from PIL import Image

    rgb, array = _image_and_map(image, values)
    picture = np.concatenate([rgb, colorize(array)], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)
    return path


def save_overlay(image, values, count: float, path, *, points=None, title: str = "") -> Path:
    """Writes ``path``: the image with the located heads (``points``, (N, 2) (x, y) pixels, red
    dots) next to the predicted map ``values`` (an (H, W) ikNN or count map, colour scaled to its
    max), titled with the count and the number of heads located."""
    from matplotlib.figure import Figure

    rgb, array = _image_and_map(image, values)
    height, width = array.shape
    scale = 6.0 / max(height, width)
    panel_w, panel_h = max(width * scale, 2.5), max(height * scale, 2.5)
    figure = Figure(figsize=(2 * panel_w, panel_h + 0.5), dpi=100)
    left = figure.add_axes((0, 0, 0.5, panel_h / (panel_h + 0.5)))
    left.imshow(rgb)
    if points is not None:
        xy = _points(points)
        dot = 2.0 * 72.0 * panel_w / width  # about 2 image pixels across, in points
        left.scatter(xy[:, 0], xy[:, 1], s=min(max(dot * dot, 6.0), 60.0), c="red", marker="o",
                     edgecolors="white", linewidths=0.4)
        left.set_xlim(-0.5, width - 0.5)
        left.set_ylim(height - 0.5, -0.5)
    left.set_axis_off()
    right = figure.add_axes((0.5, 0, 0.5, panel_h / (panel_h + 0.5)))
    right.imshow(colorize(array))
    right.set_axis_off()
    located = f", {len(xy)} located" if points is not None else ""
    figure.suptitle(f"{title + ': ' if title else ''}{count:.1f} people{located}", y=0.995, va="top")
    return _save(figure, path)


def _points(values, name: str = "points") -> np.ndarray:
    """(N, 2) float64 array of ``values`` (any empty array: no point); ValueError naming ``name``."""
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
    if not array.size:
        return np.zeros((0, 2))
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {array.shape}")
    return array


def save_demo_figure(image, true_map, predicted_map, true_points, located, predicted_count: float, path) -> Path:
    """Writes ``path``: the image with the true heads (white rings) and the located ones (red
    crosses) | the true ikNN map | the predicted ikNN map, both on the same colour scale.

    true_points, located: (N, 2) (x, y) pixels. predicted_count: the model's count of the image.
    """
    from matplotlib.figure import Figure

    truth, found = _points(true_points, "true_points"), _points(located, "located")
    true_map, predicted_map = _map(true_map), _map(predicted_map)
    top = max(float(true_map.max(initial=0.0)), float(predicted_map.max(initial=0.0))) or 1.0
    figure = Figure(figsize=(12, 4.4), dpi=100)
    axes = figure.add_subplot(1, 3, 1)
    axes.imshow(_hwc(image))
    axes.scatter(truth[:, 0], truth[:, 1], s=30, facecolors="none", edgecolors="white", linewidths=0.8)
    axes.scatter(found[:, 0], found[:, 1], s=14, c="red", marker="x", linewidths=0.8)
    axes.set_title(f"heads: {len(found)} located (red), {len(truth)} true (white); count {predicted_count:.1f}",
                   fontsize=9)
    for i, (title, values) in enumerate([("true ikNN map", true_map), ("predicted ikNN map", predicted_map)]):
        axes = figure.add_subplot(1, 3, i + 2)
        axes.imshow(values, cmap="viridis", vmin=0.0, vmax=top)
        axes.set_title(title, fontsize=10)
    for axes in figure.axes:
        axes.set_axis_off()
    figure.tight_layout()
    return _save(figure, path)
