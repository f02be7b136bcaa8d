"""Counting videos: frames decoded by PyAV, one count per sampled frame, an overlay video written.

:func:`read_frames` yields every ``every``-th frame as a :class:`Frame` ((3, H, W) uint8 RGB and its
time in seconds from the stream's start); :func:`count_video` counts each with
:func:`mud_iknn.evaluate.predict_image` (a torch network or a :class:`mud_iknn.deploy.OnnxModel`)
and returns the rows {"frame", "time_s", "count", "points"}; with ``overlay=`` it also writes a
video of the sampled frames with the predicted map, the located heads and the count drawn on them
(:func:`overlay_frame`), at the source's frame rate divided by ``every``. PyAV comes from the optional extra ``deploy``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch
from torch import nn

from ._checks import is_integer
from .deploy import require, rounded_points

__all__ = ["Frame", "VideoInfo", "video_info", "read_frames", "overlay_frame", "OverlayWriter", "count_video",
           "OVERLAY_CODECS", "CSV_FIELDS"]

#: Overlay video containers by file name ending -> the encoder used.
OVERLAY_CODECS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".avi": "mpeg4"}
#: The columns of a video's counts.
CSV_FIELDS = ("frame", "time_s", "count")


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the stream (0-based), time (s) and (3, H, W) uint8 RGB image."""

    index: int
    time_s: float
    image: torch.Tensor


@dataclass(frozen=True)
class VideoInfo:
    """A video stream's frame count (0 where the container does not say), frame rate (frames per
    second) and frame size (pixels)."""

    frames: int
    fps: float
    width: int
    height: int


def _open(path: Union[str, os.PathLike]):
    """(container, video stream) of ``path``; FileNotFoundError / ValueError naming the file."""
    av = require("av", "reading videos")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise ValueError(f"{path} is not a video PyAV can read: {err}") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} has no video stream (not a video, or a video with no frames)")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def video_info(path: Union[str, os.PathLike]) -> VideoInfo:
    """The :class:`VideoInfo` of the first video stream of ``path`` (from the container's header)."""
    container, stream = _open(path)
    with container:
        rate = stream.average_rate or stream.guessed_rate or 0
        return VideoInfo(int(stream.frames or 0), float(rate), int(stream.width), int(stream.height))


def read_frames(path: Union[str, os.PathLike], every: int = 1) -> Iterator[Frame]:
    """Frames 0, every, 2 * every, ... of the first video stream of ``path``, decoded in order.

    The time is the frame's presentation time minus the stream's start time (index / fps for a
    frame without one). Raises FileNotFoundError, or ValueError naming the file for one that is
    not a video, has no video stream, has no frame, or fails to decode part way.
    """
    if not is_integer(every) or every < 1:  # here, not at the first frame: a generator starts late
        raise ValueError(f"every must be a positive integer, got {every!r}")
    return _decode(path, every)


def _decode(path, every: int) -> Iterator[Frame]:
    av = require("av", "reading videos")
    container, stream = _open(path)
    with container:
        base = stream.time_base or Fraction(0)
        start = stream.start_time or 0
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        index = -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index % every:
                    continue
                if frame.pts is not None and base:
                    time_s = float((frame.pts - start) * base)
                else:
                    time_s = index / rate if rate else float("nan")
                rgb = frame.to_ndarray(format="rgb24")
                yield Frame(index, time_s, torch.from_numpy(rgb.transpose(2, 0, 1).copy()))
        except av.error.FFmpegError as err:
            raise ValueError(f"{path}: decoding failed after frame {index}: {err}") from None
        if index < 0:
            raise ValueError(f"{path} has no video frames")


def overlay_frame(image: torch.Tensor, values: torch.Tensor, count: float,
                  points: Optional[torch.Tensor] = None) -> np.ndarray:
    """(H, W, 3) uint8: the (3, H, W) uint8 image with the (H, W) predicted map ``values`` (ikNN or
    count map) blended over it in jet colours (opaque where the map is highest, up to 60 %), the
    located heads ``points`` ((N, 2) (x, y) pixels) as red dots and the count written top left."""
    from PIL import Image, ImageDraw

    from .visualize import _image_and_map, _points, colorize

    rgb, values = _image_and_map(image, values)
    rgb = rgb.astype(np.float32)
    top = float(values.max()) if values.size and values.max() > 0 else 1.0
    alpha = (np.clip(values / top, 0.0, 1.0) * 0.6)[..., None]
    blended = rgb * (1 - alpha) + colorize(values, "jet", vmax=top).astype(np.float32) * alpha
    picture = Image.fromarray((blended + 0.5).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    if points is not None:
        points = _points(points)
        radius = max(1.0, max(values.shape) / 200)
        for x, y in points.tolist():
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(255, 0, 0))
    text = f"{count:.1f} people" + (f", {len(points)} located" if points is not None else "")
    box = draw.textbbox((4, 2), text)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(picture)


class OverlayWriter:
    """Writes (H, W, 3) uint8 RGB frames to a video file at ``fps`` frames per second; the encoder
    comes from the file name's ending (:data:`OVERLAY_CODECS`). Odd frame sides are padded by one
    black row / column (the encoders' 4:2:0 chroma needs even sides). Use as a context manager."""

    def __init__(self, path: Union[str, os.PathLike], fps: float):
        self.av = require("av", "writing overlay videos")
        self.path = Path(path)
        codec = OVERLAY_CODECS.get(self.path.suffix.lower())
        if codec is None:
            raise ValueError(f"overlay video {self.path} must end in one of {', '.join(OVERLAY_CODECS)}")
        if not fps > 0:
            raise ValueError(f"overlay video {self.path}: the frame rate must be positive, got {fps}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = self.av.open(str(self.path), "w")
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001 * 1000))
        self.stream.pix_fmt = "yuv420p"
        self.size = None

    def write(self, picture: np.ndarray) -> None:
        picture = np.asarray(picture)
        if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
            raise ValueError(f"overlay video {self.path}: a frame must be (H, W, 3) uint8 RGB, got "
                             f"{picture.shape} {picture.dtype}")
        height, width = picture.shape[:2]
        if self.size is None:
            self.size = (height + height % 2, width + width % 2)
            self.stream.height, self.stream.width = self.size
        if (height + height % 2, width + width % 2) != self.size:
            raise ValueError(f"overlay video {self.path}: frame of {height}x{width} after frames of "
                             f"{self.size[0]}x{self.size[1]}")
        padded = np.zeros((*self.size, 3), np.uint8)
        padded[:height, :width] = picture
        frame = self.av.VideoFrame.from_ndarray(padded, format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            if self.size is not None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
            self.container.close()
            self.container = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def count_video(model: nn.Module, path: Union[str, os.PathLike], *, window: int, stride: int, every: int = 1,
                overlay: Optional[Union[str, os.PathLike]] = None, progress: bool = False) -> list[dict]:
    """Counts every ``every``-th frame of the video at ``path`` with
    :func:`mud_iknn.evaluate.predict_image` (``model``: a torch network or an OnnxModel).

    Returns one row per sampled frame: {"frame": index, "time_s": seconds, "count": heads,
    "points": [[x, y], ...]} (the located heads, pixels; for a network with map modules).
    ``overlay``: a video file (:data:`OVERLAY_CODECS`) to write the sampled frames to, each with
    :func:`overlay_frame`, at the source's frame rate / ``every``. ``progress``: a progress bar
    (tqdm, on stderr, shown on a terminal).
    """
    from tqdm.auto import tqdm

    from .evaluate import predict_image

    frames = read_frames(path, every)  # checks every, which the overlay's frame rate divides by
    info = video_info(path)
    writer = OverlayWriter(overlay, (info.fps or 25.0) / every) if overlay is not None else None
    total = -(-info.frames // every) if info.frames else None
    rows = []
    try:
        for frame in tqdm(frames, total=total, desc=Path(path).name, unit="frame", disable=not progress or None):
            prediction = predict_image(model, frame.image, window=window, stride=stride)
            row = {"frame": frame.index, "time_s": round(frame.time_s, 6), "count": float(prediction.count)}
            if prediction.points is not None:
                row["points"] = rounded_points(prediction.points)
            rows.append(row)
            if writer is not None:
                shown = prediction.iknn_map if prediction.iknn_map is not None else prediction.density
                writer.write(overlay_frame(frame.image, shown, row["count"], prediction.points))
    finally:
        frames.close()
        if writer is not None:
            writer.close()
    return rows
