"""The small configuration on a ShanghaiTech-sized synthetic set, as a new user runs it.

1. Writes (once) a ShanghaiTech-layout folder of 120 training and 30 test images of 512 x 384
   pixels with 5-400 heads each, rendered by a *variation* of the project's generator, so that the
   set is not the training distribution of the demo exactly: each scene is rendered at 1.25x the
   size and downscaled (smoother, finer noise), heads count when half of their disc is visible
   (0.35 in the generator), and each image gets its own gamma and colour cast, then JPEG quality 85.
2. Runs ``mud-iknn train --preset small`` on it and nothing else (timed, wall and CPU time: the
   preset's budget is 4 minutes on 2 cores), then ``mud-iknn count --json`` on the test images.
3. Reports MAE / RMSE of the counts and precision / recall / F1 of the located heads at 8 px
   (:func:`mud_iknn.evaluate.localization_metrics`), next to the predict-the-mean baseline.

usage: python bench/bench_small_preset.py [--root DIR] [--work DIR] [--seed S] [--json FILE]
       [--threads N] [--train-args ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mud_iknn.data import open_dataset, render_crowd, write_shanghaitech
from mud_iknn.sample import CrowdSample

SIZE = (384, 512)  # (H, W)
SPLITS = {"train": 120, "test": 30}
MIN_HEADS, MAX_HEADS = 5, 400
SCALE = 1.25  # rendered this much larger, then downscaled


def variant_scene(seed: int, split: int, index: int) -> CrowdSample:
    """Scene ``index`` of ``split`` (0 train, 1 test): see the module docstring. The first draw
    of the scene's stream with at least MIN_HEADS heads."""
    for attempt in range(100):
        rng = np.random.default_rng([seed, 1000 + split, index, attempt])
        big = (round(SIZE[0] * SCALE), round(SIZE[1] * SCALE))
        image, points, _ = render_crowd(rng, big, max_count=MAX_HEADS, min_visible=0.5)
        if len(points) >= MIN_HEADS:
            break
    small = Image.fromarray(image).resize((SIZE[1], SIZE[0]), Image.LANCZOS)
    pixels = np.asarray(small, dtype=np.float64) / 255.0
    gamma = rng.uniform(0.8, 1.25)
    cast = rng.uniform(0.9, 1.1, size=3)
    pixels = np.clip(pixels ** gamma * cast, 0.0, 1.0)
    # pixel centres: x' + 0.5 = (x + 0.5) * W' / W
    scale = np.array([SIZE[1] / big[1], SIZE[0] / big[0]])
    points = (points + 0.5) * scale - 0.5
    rgb = torch.from_numpy((pixels * 255.0 + 0.5).astype(np.uint8).transpose(2, 0, 1).copy())
    return CrowdSample(image=rgb, points=torch.from_numpy(points.astype(np.float32)))


class _Scenes(torch.utils.data.Dataset):
    def __init__(self, seed: int, split: int, n: int):
        self.seed, self.split, self.n = seed, split, n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return variant_scene(self.seed, self.split, index)


def write_variant_set(root: Path, seed: int = 0) -> Path:
    """The ShanghaiTech-layout set under ``root`` (part_A/{train,test}_data), written unless there."""
    marker = root / "part_A" / "variant.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"seed": seed, **SPLITS}:
        return root
    for i, (split, n) in enumerate(SPLITS.items()):
        write_shanghaitech(_Scenes(seed, i, n), root, part="A", split=split, quality=85)
    marker.write_text(json.dumps({"seed": seed, **SPLITS}))
    return root


def _cli(*args, threads: int) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, wall seconds, CPU seconds) of ``mud-iknn args`` in a child process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    before, tic = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "mud_iknn", *map(str, args)], capture_output=True, text=True,
                            env=env, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return result, time.perf_counter() - tic, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("bench_data/small_preset"))
    parser.add_argument("--work", type=Path, default=Path("bench_runs/small_preset"))
    parser.add_argument("--seed", type=int, default=0, help="scene seed of the set")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the commands (default 2)")
    parser.add_argument("--json", type=Path, help="write the report here too")
    parser.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                        help="extra 'mud-iknn train' options (the benchmark's figures use none)")
    args = parser.parse_args(argv)

    from mud_iknn.evaluate import count_metrics, localization_metrics, mean_count_baseline

    start = time.perf_counter()
    write_variant_set(args.root, args.seed)
    print(f"data: {args.root} ({time.perf_counter() - start:.0f} s)", flush=True)
    run_dir = args.work / "run"
    if (run_dir / "checkpoint.pt").exists():
        (run_dir / "checkpoint.pt").unlink()
    trained, train_seconds, train_cpu = _cli("train", "--preset", "small", "--dataset", "shanghaitech_a", "--root",
                                             args.root, "--out-dir", run_dir, *args.train_args, threads=args.threads)
    if trained.returncode:
        print(trained.stderr[-3000:], file=sys.stderr)
        return 1
    steps = json.loads(trained.stdout)["step"]  # fewer than the preset's where its time budget ended the run
    test = open_dataset("shanghaitech_a", args.root, split="test")
    images = [item[0] for item in test.items]
    counted, count_seconds, _ = _cli("count", *images, "--checkpoint", run_dir / "checkpoint.pt", "--json",
                                     threads=args.threads)
    if counted.returncode:
        print(counted.stderr[-3000:], file=sys.stderr)
        return 1
    entries = json.loads(counted.stdout)
    truth = [test[i].points for i in range(len(test))]
    predicted = [torch.tensor(e["points"], dtype=torch.float32).reshape(-1, 2) for e in entries]
    counts = count_metrics([e["count"] for e in entries], [len(t) for t in truth])
    located = localization_metrics(predicted, truth, thresholds=(4, 8, 16))
    baseline = mean_count_baseline(open_dataset("shanghaitech_a", args.root, split="train").counts(),
                                   [len(t) for t in truth])
    at8 = located["8px"]
    report = {"mae": counts["mae"], "rmse": counts["rmse"], "f1_8px": at8["f1"], "precision_8px": at8["precision"],
              "recall_8px": at8["recall"], "localization": located, "mean_baseline": baseline,
              "steps": steps, "train_seconds": train_seconds, "train_cpu_seconds": train_cpu, "count_seconds": count_seconds,
              "count_from_points_mae": count_metrics([len(p) for p in predicted], [len(t) for t in truth])["mae"],
              "train_args": args.train_args, "threads": args.threads, "seed": args.seed,
              "machine": {"platform": platform.platform(), "cores": os.cpu_count(), "torch": torch.__version__}}
    print(f"train --preset small: {steps} steps, {train_seconds:.0f} s ({train_cpu:.0f} s of CPU time); "
          f"count (30 images): {count_seconds:.0f} s")
    print(f"{'':<22}{'MAE':>8}{'RMSE':>8}{'F1@8px':>8}{'P@8px':>8}{'R@8px':>8}")
    print(f"{'mean count':<22}{baseline['mae']:>8.2f}{baseline['rmse']:>8.2f}")
    print(f"{'small preset':<22}{counts['mae']:>8.2f}{counts['rmse']:>8.2f}{at8['f1']:>8.3f}"
          f"{at8['precision']:>8.3f}{at8['recall']:>8.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
