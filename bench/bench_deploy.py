"""Deployment throughput: onnxruntime vs torch eager on a window batch, and video counting speed.

1. ``windows``: one batch of windows through the network, torch eager (eval, no_grad) vs the
   exported ONNX file in onnxruntime's CPU provider, on the same number of threads
   (``torch.set_num_threads`` = onnxruntime's intra-op threads); runs alternate torch / onnx and
   the medians are reported with their ratio (target: onnxruntime <= 1.5 x torch).
2. ``video``: frames per second of :func:`mud_iknn.video.count_video` on a synthetic video
   (decoding, sliding windows, stitching), with the torch network and with the ONNX file.
3. With ``--device cuda`` (where a GPU is visible): video counting with the torch network on the
   GPU, float16 autocast (AMP) for DenseNet-201.

The networks are randomly initialised (speed does not depend on the weights); the small
configuration is ``TrainConfig.small()``'s (densenet_tiny, 64 px windows), DenseNet-201 uses 224 px.

usage: python bench/bench_deploy.py [--threads N] [--models densenet_tiny,densenet201] [--batch 16]
       [--repeats 10] [--video-frames 48] [--video-size 320x240] [--device cpu|cuda] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mud_iknn import deploy, video
from mud_iknn.model import MUDIKNN

WINDOWS = {"densenet_tiny": 64, "densenet201": 224}


class _Autocast(torch.nn.Module):
    """The network under float16 autocast on CUDA, called like it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        with torch.autocast("cuda", dtype=torch.float16):
            maps, counts = self.model(images)
        return maps.float(), counts.float()


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_windows(model, path: Path, window: int, batch: int, repeats: int, threads: int) -> dict:
    onnx_model = deploy.OnnxModel(path, threads=threads)
    images = torch.rand(batch, 3, window, window, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        def run_torch():
            model(images)

        def run_onnx():
            onnx_model(images)

        for fn in (run_torch, run_onnx):  # warm up
            fn()
            fn()
        torch_times, onnx_times = [], []
        for _ in range(repeats):  # alternate, so load on the machine hits both alike
            torch_times += _time(run_torch, 1)
            onnx_times += _time(run_onnx, 1)
    t, o = statistics.median(torch_times), statistics.median(onnx_times)
    return {"torch_ms": t * 1e3, "onnx_ms": o * 1e3, "ratio": o / t}


def make_video(path: Path, frames: int, width: int, height: int, fps: float = 25.0) -> Path:
    rng = np.random.default_rng(0)
    with video.OverlayWriter(path, fps) as writer:
        background = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for i in range(frames):
            writer.write(np.roll(background, 4 * i, axis=1))
    return path


def bench_video(model, source: Path, window: int, repeats: int = 2) -> float:
    """Frames per second of count_video (the best of ``repeats`` runs)."""
    frames = None
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        rows = video.count_video(model, source, window=window, stride=window * 4 // 7)
        best = min(best, time.perf_counter() - start)
        frames = len(rows)
    return frames / best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--models", default="densenet_tiny,densenet201")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--video-frames", type=int, default=48)
    parser.add_argument("--video-size", default="320x240")
    parser.add_argument("--video-models", default="densenet_tiny", help="models timed on the video on the CPU")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU video row (DenseNet-201, AMP)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    for option, names in (("--models", args.models), ("--video-models", args.video_models)):
        unknown = [n for n in filter(None, names.split(",")) if n not in WINDOWS]
        if unknown:
            parser.error(f"{option}: unknown model(s) {', '.join(unknown)} (one of {', '.join(WINDOWS)})")
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.video_size.split("x"))
    print(f"# bench_deploy: {platform.processor() or platform.machine()}, {args.threads} threads, torch "
          f"{torch.__version__}, onnxruntime {deploy.require('onnxruntime', 'the benchmark').__version__}")
    results = {"threads": args.threads, "windows": {}, "video": {}}
    try:
        deploy.require("av", "the video rows")
    except ImportError as err:
        print(f"(no video rows: {err})")
        args.video_models, args.device = "", "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = make_video(tmp / "crowd.mp4", args.video_frames, width, height) if args.video_models else None
        print("\n| model | window batch | torch eager | onnxruntime | onnx / torch |\n|---|---|---|---|---|")
        models = {}

        def exported(name):  # (model, its ONNX file, window), made once for the window and video rows
            if name not in models:
                torch.manual_seed(0)
                model = MUDIKNN(backbone=name, input_size=WINDOWS[name]).eval()
                deploy.export_onnx(model, tmp / f"{name}.onnx")
                models[name] = (model, tmp / f"{name}.onnx", WINDOWS[name])
            return models[name]

        for name in args.models.split(","):
            model, path, window = exported(name)
            r = bench_windows(model, path, window, args.batch, args.repeats, args.threads)
            results["windows"][name] = r
            print(f"| {name} | {args.batch} x {window}^2 | {r['torch_ms']:.1f} ms | {r['onnx_ms']:.1f} ms | "
                  f"{r['ratio']:.2f} |", flush=True)
        if source is not None:
            print(f"\n| model | device | video {width}x{height}, {args.video_frames} frames | frames / s |\n"
                  f"|---|---|---|---|")
        for name in filter(None, args.video_models.split(",")):
            model, path, window = exported(name)
            for label, counter in (("torch eager", model), ("onnxruntime", deploy.OnnxModel(path, threads=args.threads))):
                fps = bench_video(counter, source, window)
                results["video"][f"{name} {label} cpu"] = fps
                print(f"| {name} | cpu, {label} | all frames | {fps:.1f} |", flush=True)
        if args.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise SystemExit("--device cuda: torch sees no GPU")
            for name in ("densenet_tiny", "densenet201"):
                window = WINDOWS[name]
                torch.manual_seed(0)
                model = MUDIKNN(backbone=name, input_size=window).eval().to(args.device)
                counter = _Autocast(model) if name == "densenet201" else model
                fps = bench_video(counter, source, window)
                results["video"][f"{name} torch {args.device}{' amp' if name == 'densenet201' else ''}"] = fps
                print(f"| {name} | {args.device}{', AMP' if name == 'densenet201' else ''} | all frames | {fps:.1f} |",
                      flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
