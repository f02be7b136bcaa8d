#!/usr/bin/env python
"""The point losses on a CUDA GPU (run where one is lent, after building with MUD_IKNN_CUDA=ON):

1. CUDA against the C++ CPU kernels on mixed layouts (loss, gradients, Wasserstein distance),
   and two runs bit for bit equal (deterministic);
2. NWPU scale (256 x 256 cells at stride 8, 8000 heads), forward + backward: memory allocated
   beyond the inputs (torch.cuda.max_memory_allocated after a reset, minus what was allocated
   before), ours and the dense float32 torch versions of the released code;
3. 1024 x 1024 input (128 x 128 cells), 2000 heads: median time of forward + backward, ours and
   dense, on the same card (torch.cuda.synchronize around each call).

    PYTHONPATH=. python bench/gpu_point_losses.py [--json out.json]
Also run the tests' CUDA cases: PYTHONPATH=.:tests pytest -q tests/test_point_losses.py -k cuda
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_point_losses import crowd, dense_bayesian, dense_ot  # noqa: E402

from mud_iknn.loss import BayesianLoss, OTLoss  # noqa: E402


def ours_bayesian(d, points):
    return BayesianLoss()(d, points)


def ours_ot(normed, d, points):
    return OTLoss()(normed, d, points)


def step(kind, which, density, points):
    """forward + backward; returns (value, gradient)."""
    d = density.clone().requires_grad_()
    if kind == "bayesian":
        out = (ours_bayesian if which == "ours" else dense_bayesian)(d, points)
        out.backward()
        return float(out.detach()), d.grad
    normed = d / (d.sum(dim=(1, 2, 3), keepdim=True) + 1e-6)
    loss, wd, objective = (ours_ot if which == "ours" else dense_ot)(normed, d, points)
    (loss + objective).backward()
    return float(wd), d.grad


def inputs(height, count, batch=1, seed=0, device="cuda"):
    rng = np.random.default_rng(seed)
    points = [crowd(rng, count, height * 8, height * 8).to(device) for _ in range(batch)]
    density = torch.from_numpy(rng.gamma(0.5, 0.002, (batch, 1, height, height)).astype(np.float32)).to(device)
    return density, points


def agreement():
    rows = []
    for height, count, batch in ((20, 300, 2), (64, 1500, 3), (128, 2000, 1)):
        density, points = inputs(height, count, batch, seed=height)
        for kind in ("bayesian", "ot"):
            v_gpu, g_gpu = step(kind, "ours", density, points)
            v_again, g_again = step(kind, "ours", density, points)
            v_cpu, g_cpu = step(kind, "ours", density.cpu(), [p.cpu() for p in points])
            rows.append({"case": f"{kind} {height}x{height} n{count} b{batch}",
                         "value_rel": abs(v_gpu - v_cpu) / max(abs(v_cpu), 1e-30),
                         "grad_rel": float((g_gpu.cpu() - g_cpu).abs().max() / g_cpu.abs().max()),
                         "deterministic": v_gpu == v_again and torch.equal(g_gpu, g_again)})
    return rows


def memory(kind, which):
    density, points = inputs(256, 8000)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    try:
        step(kind, which, density, points)
    except torch.OutOfMemoryError:
        return float("inf")
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def speed(kind, which, repeats=5):
    density, points = inputs(128, 2000, seed=1)
    step(kind, which, density, points)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step(kind, which, density, points)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    results = {"device": torch.cuda.get_device_name(), "agreement": agreement(), "memory_mib": {}, "speed_s": {}}
    for row in results["agreement"]:
        print(row)
    for kind in ("bayesian", "ot"):
        results["memory_mib"][kind] = {w: memory(kind, w) for w in ("ours", "dense")}
        results["speed_s"][kind] = {w: speed(kind, w) for w in ("ours", "dense")}
        m, t = results["memory_mib"][kind], results["speed_s"][kind]
        print(f"{kind}: NWPU extra memory ours {m['ours']:.1f} MiB, dense {m['dense']:.0f} MiB; 1024^2 n2000 "
              f"ours {t['ours'] * 1e3:.2f} ms, dense {t['dense'] * 1e3:.2f} ms, {t['dense'] / t['ours']:.1f}x")
    ok = all(r["value_rel"] < 1e-5 and r["grad_rel"] < 1e-4 and r["deterministic"] for r in results["agreement"])
    ok = ok and all(results["memory_mib"][k]["ours"] <= 64 for k in ("bayesian", "ot"))
    print("targets met" if ok else "TARGETS MISSED")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
