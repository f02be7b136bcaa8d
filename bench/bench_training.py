"""Training-step throughput with on-the-fly labels vs precomputed labels vs scipy labels in workers.

Three ways to feed the same MUD-ikNN training step (forward, loss, backward, fused Adam):

* ``onthefly``: the batch holds packed head points; ikNN labels are made inside the step on the
  model's device by :meth:`mud_iknn.label_kinds.LabelKind.make` (CUDA kernels on a GPU, the C++ kernel on
  the CPU). What :func:`mud_iknn.train.train` does.
* ``precomputed``: labels made beforehand and read from memory (already on the device): the cost
  floor, but no augmentation after the labels are made (what precomputed label files give).
* ``scipy``: labels made per sample by the scipy reference (:mod:`mud_iknn.reference`, cKDTree)
  in DataLoader workers, collated and copied to the device: the usual codebase, made online.

Also timed alone: the label call of ``onthefly`` (device synchronised), as a share of the step,
and the same batch's labels by the scipy reference in the main process.

usage: python bench/bench_training.py [--quick] [--device cpu|cuda] [--model densenet201|densenet_tiny]
       [--batch 16] [--size 224] [--heads 150] [--steps 20] [--workers 4] [--json out.json]
``--quick`` is a short CPU run (DenseNet-201, batch 4, 2 x 3 timed steps per feed).
Each feed runs twice (order A B C C B A); medians of the per-step times are reported.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mud_iknn import reference
from mud_iknn.benchmark import sync
from mud_iknn.label_kinds import IknnLabel
from mud_iknn.loss import MUDLoss
from mud_iknn.model import MUDIKNN


MODES = ("precomputed", "onthefly", "scipy")


class _Patches(Dataset):
    """Random (3, S, S) uint8 patches with ``heads`` clustered heads each (10% outside the patch);
    with ``scipy_labels`` each item also carries its ikNN label made by the scipy reference."""

    def __init__(self, count: int, size: int, heads: int, scipy_labels: bool, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.size, self.scipy_labels = size, scipy_labels
        self.images = [torch.from_numpy(rng.integers(0, 256, (3, size, size), dtype=np.uint8)) for _ in range(count)]
        self.points = []
        for _ in range(count):
            centres = rng.uniform(0, size, (6, 2))
            pts = centres[rng.integers(0, 6, heads)] + rng.normal(0, 0.08 * size, (heads, 2))
            n_out = heads // 10
            pts[:n_out] = rng.uniform(-0.3 * size, 1.3 * size, (n_out, 2))
            self.points.append(pts.astype(np.float32))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        pts = self.points[i]
        inside = float(((pts >= 0) & (pts < self.size)).all(axis=1).sum())
        label = None
        if self.scipy_labels:
            label = torch.from_numpy(reference.iknn_maps(pts, (self.size, self.size), 1)[0].astype(np.float32))
        return self.images[i], torch.from_numpy(pts), inside, label


def _collate(items):
    images = torch.stack([it[0] for it in items])
    points = torch.cat([it[1] for it in items])
    offsets = torch.tensor(np.cumsum([0] + [len(it[1]) for it in items]), dtype=torch.int64)
    counts = torch.tensor([it[2] for it in items], dtype=torch.float32)
    labels = torch.stack([it[3] for it in items]) if items[0][3] is not None else None
    return images, points, offsets, counts, labels


def run(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MUDIKNN(weights=None, backbone=args.model, input_size=args.size).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as the training loop
    loss_fn, spec = MUDLoss(), IknnLabel(k=1)
    use_amp = args.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    n_batches = args.warmup + args.steps

    def step(images, label, counts):
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            maps, predicted = model(images)
        loss, _ = loss_fn(maps, predicted, label, counts)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def timed(batches, make_label):
        """Seconds from the end of one step to the end of the next: waiting for the batch included."""
        times = []
        sync(device)
        last = time.perf_counter()
        for i, (images, points, offsets, counts, label) in enumerate(batches):
            images = images.to(device, non_blocking=True)
            counts = counts.to(device, non_blocking=True)
            label = make_label(points, offsets, label)
            step(images, label, counts)
            sync(device)
            now = time.perf_counter()
            if i >= args.warmup:
                times.append(now - last)
            last = now
            if i + 1 == n_batches:
                break
        return times

    size = (args.size, args.size)
    plain = _Patches(n_batches * args.batch, args.size, args.heads, scipy_labels=False)
    plain_batches = [_collate([plain[b * args.batch + j] for j in range(args.batch)]) for b in range(n_batches)]
    to_dev = lambda t: t.to(device, non_blocking=True)  # noqa: E731

    # precomputed: labels made before timing (with the fast engine; how they were made does not matter)
    stored = [spec.make(to_dev(b[1]), size, to_dev(b[2]), validate=False) for b in plain_batches]
    scipy_set = _Patches(n_batches * args.batch, args.size, args.heads, scipy_labels=True)

    def feed(name):
        if name == "precomputed":
            it = iter(stored)
            return plain_batches, lambda p, o, _: next(it)
        if name == "onthefly":
            return plain_batches, lambda p, o, _: spec.make(to_dev(p), size, to_dev(o), validate=False)
        loader = DataLoader(scipy_set, batch_size=args.batch, num_workers=args.workers, collate_fn=_collate,
                            pin_memory=device.type == "cuda")
        return loader, lambda p, o, label: to_dev(label)

    # each feed runs twice, in the order A B C C B A, so that drifting load on a shared machine
    # does not favour one of them
    results = {name: [] for name in MODES}
    for name in MODES + MODES[::-1]:
        results[name] += timed(*feed(name))

    label_times = []
    for _, points, offsets, _, _ in plain_batches[args.warmup:]:
        points, offsets = to_dev(points), to_dev(offsets)
        sync(device)
        t0 = time.perf_counter()
        spec.make(points, size, offsets, validate=False)
        sync(device)
        label_times.append(time.perf_counter() - t0)

    scipy_times = []
    for _, points, offsets, _, _ in plain_batches[args.warmup:]:
        t0 = time.perf_counter()
        reference.iknn_maps(points.numpy(), size, 1, offsets=offsets.numpy())
        scipy_times.append(time.perf_counter() - t0)

    med = {k: statistics.median(v) for k, v in results.items()}
    label_ms = 1e3 * statistics.median(label_times)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "model": args.model, "batch": args.batch, "size": args.size,
        "heads_per_patch": args.heads, "amp": use_amp, "timed_steps": 2 * args.steps, "workers": args.workers,
        "step_ms": {k: 1e3 * v for k, v in med.items()},
        "step_ms_min": {k: 1e3 * min(v) for k, v in results.items()},
        "label_ms": label_ms,
        "scipy_label_ms": 1e3 * statistics.median(scipy_times),
        "label_share_of_precomputed_step": label_ms / (1e3 * med["precomputed"]),
        "onthefly_over_precomputed": med["onthefly"] / med["precomputed"],
        "scipy_over_precomputed": med["scipy"] / med["precomputed"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="densenet201", choices=["densenet201", "densenet121", "densenet_tiny"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--heads", type=int, default=150, help="heads per patch (10%% outside it)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--amp", action="store_true", help="float16 autocast (CUDA only)")
    parser.add_argument("--quick", action="store_true", help="short CPU run: batch 4, 3 timed steps")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup, args.workers = 4, 3, 1, 1
    result = run(args)
    print(f"{result['device']} | {args.model} batch {args.batch} at {args.size}, {args.heads} heads/patch, "
          f"amp={result['amp']}")
    print("| feed | ms/step (median) | vs precomputed | ms/step (min) |")
    print("|---|---|---|---|")
    for name in MODES:
        ms = result["step_ms"][name]
        print(f"| {name} | {ms:.1f} | {ms / result['step_ms']['precomputed']:.3f}x | "
              f"{result['step_ms_min'][name]:.1f} |")
    print(f"on-the-fly label call alone: {result['label_ms']:.3f} ms = "
          f"{100 * result['label_share_of_precomputed_step']:.2f}% of a step; the same batch's labels "
          f"by scipy in this process: {result['scipy_label_ms']:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
