#!/usr/bin/env python
"""Point losses (Bayesian loss, DM-Count's OT loss): mud_iknn's kernels against the dense torch
implementations of the released code, side by side in one run, on the CPU.

Two cases: NWPU scale (256 x 256 cells at stride 8, 8000 heads): extra peak memory of one forward +
backward, each measured in a fresh child process as its peak resident set (VmHWM, reset through
/proc/self/clear_refs) minus its resident set before the call; and a 1024 x 1024 input (128 x 128
cells) with 2000 heads: the median time of forward + backward at the same torch thread count.

The dense baselines follow Bayesian-Crowd-Counting's post_prob.py + bay_loss.py and DM-Count's
ot_loss.py + bregman_pytorch.py: float32, the expanded squared distances, N x (h * w) matrices.

    PYTHONPATH=. python bench/bench_point_losses.py [--threads 2] [--repeats 3] [--dense-nwpu-iterations 10]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time

import numpy as np
import torch

from mud_iknn import reference


def crowd(rng, count, height, width):
    """(count, 2) float32 heads: Gaussian clusters plus 10% scattered, a few past the border."""
    centres = rng.uniform([0, 0], [width, height], size=(12, 2))
    pts = centres[rng.integers(0, 12, count)] + rng.normal(0, 1, (count, 2)) * 0.06 * np.array([width, height])
    n_out = count // 10
    pts[:n_out] = rng.uniform([-0.05 * width, -0.05 * height], [1.05 * width, 1.05 * height], (n_out, 2))
    return torch.from_numpy(pts.astype(np.float32))


# ---- the dense baselines (float32, as the released code computes) -------------------------------

def _dense_distances(points, height, width, stride, scale=1.0, shift=0.0):
    grid = dict(dtype=torch.float32, device=points.device)
    xs = (torch.arange(0, width * stride, stride, **grid) + stride / 2)[None, :] * scale + shift
    ys = (torch.arange(0, height * stride, stride, **grid) + stride / 2)[None, :] * scale + shift
    pts = points * scale + shift
    x, y = pts[:, 0:1], pts[:, 1:2]
    x_dis = -2 * x @ xs + x * x + xs * xs
    y_dis = -2 * y @ ys + y * y + ys * ys
    return (y_dis[:, :, None] + x_dis[:, None, :]).reshape(len(points), -1)


def dense_bayesian(density, points, stride=8, sigma=8.0, background_ratio=1.0):
    batch, _, height, width = density.shape
    loss = 0
    for b, pts in enumerate(points):
        dis = _dense_distances(pts, height, width, stride)
        min_dis = torch.clamp(dis.min(dim=0, keepdim=True)[0], min=0.0)
        d = min(height, width) * stride * background_ratio
        dis = torch.cat([dis, (d - torch.sqrt(min_dis)) ** 2], 0)
        prob = torch.softmax(-dis / (2.0 * sigma ** 2), dim=0)
        target = torch.ones(len(prob), device=prob.device)
        target[-1] = 0
        loss = loss + (target - (density[b].reshape(1, -1) * prob).sum(dim=1)).abs().sum()
    return loss / batch


def dense_ot(normed, density, points, stride=8, reg=10.0, iterations=100):
    _, _, height, width = density.shape
    loss, objective, wd = 0, 0, 0.0
    for i, pts in enumerate(points):
        dis = _dense_distances(pts, height, width, stride)
        source = normed[i][0].reshape(-1).detach()
        target = torch.ones(len(pts), device=pts.device) / len(pts)
        K = torch.exp(dis / -reg)
        u, v = reference.sinkhorn_iterations(target, source, K, iterations)
        beta = reg * torch.log(v + 1e-16)
        objective = objective + (normed[i] * beta.reshape(1, height, width)).sum()
        d = density[i][0].reshape(-1).detach()
        count = d.sum()
        grad = count / (count * count + 1e-8) * beta - (d * beta).sum() / (count * count + 1e-8)
        loss = loss + (density[i] * grad.detach().reshape(1, height, width)).sum()
        wd += float((dis * (u[:, None] * K * v[None, :])).sum())
    return loss, wd, objective


def ours_bayesian(density, points, stride=8):
    from mud_iknn.loss import BayesianLoss
    return BayesianLoss(stride=stride)(density, points)


def ours_ot(normed, density, points, stride=8, iterations=100):
    from mud_iknn.loss import OTLoss
    return OTLoss(stride=stride, iterations=iterations)(normed, density, points)


# ---- one measured call ---------------------------------------------------------------------------

def _inputs(height, count, seed=0):
    rng = np.random.default_rng(seed)
    points = [crowd(rng, count, height * 8, height * 8)]
    density = torch.from_numpy(rng.gamma(0.5, 0.002, (1, 1, height, height)).astype(np.float32))
    return density, points


def _call(name, density, points, iterations):
    d = density.clone().requires_grad_()
    if name.endswith("bayesian"):
        out = (dense_bayesian if name.startswith("dense") else ours_bayesian)(d, points)
        out.backward()
        return float(out.detach())
    normed = (d / (d.sum() + 1e-6))
    fn = dense_ot if name.startswith("dense") else ours_ot
    loss, wd, objective = fn(normed, d, points, iterations=iterations)
    (loss + objective).backward()
    return float(wd)


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def _peak_child(name, height, count, iterations, threads, queue):
    torch.set_num_threads(threads)
    import mud_iknn.loss  # noqa: F401  (imported before the baseline is read)
    density, points = _inputs(height, count)
    _call(name, density[:, :, :2, :2].contiguous(), [points[0][:5]], 2)  # warm-up: libraries, allocator
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    value = _call(name, density, points, iterations)
    seconds = time.perf_counter() - start
    queue.put({"extra_peak_mib": (_rss_kib("VmHWM") - before) / 1024, "seconds": seconds, "value": value})


def peak(name, height, count, iterations, threads):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(name, height, count, iterations, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def timed(name, height, count, iterations, repeats):
    density, points = _inputs(height, count, seed=1)
    _call(name, density, points, iterations)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = _call(name, density, points, iterations)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "value": value}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-nwpu-iterations", type=int, default=10,
                        help="Sinkhorn iterations of the dense OT baseline at NWPU scale (its peak memory "
                             "does not depend on them; 100 takes minutes there)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "nwpu": {}, "speed": {}}
    print(f"NWPU scale: 256 x 256 cells, stride 8, 8000 heads; forward + backward, {args.threads} threads")
    print("| loss | ours extra peak | dense extra peak | ours time | dense time |")
    print("|---|---|---|---|---|")
    for loss in ("bayesian", "ot"):
        ours = peak("ours_" + loss, 256, 8000, 100, args.threads)
        dense = peak("dense_" + loss, 256, 8000, 100 if loss == "bayesian" else args.dense_nwpu_iterations,
                     args.threads)
        results["nwpu"][loss] = {"ours": ours, "dense": dense}
        note = "" if loss == "bayesian" else f" ({args.dense_nwpu_iterations} iterations)"
        print(f"| {loss} | {ours['extra_peak_mib']:.0f} MiB | {dense['extra_peak_mib']:.0f} MiB | "
              f"{ours['seconds']:.2f} s | {dense['seconds']:.2f} s{note} |")
    print(f"\n1024 x 1024 input (128 x 128 cells), 2000 heads; forward + backward, median of {args.repeats}")
    print("| loss | ours | dense | speed-up | value ours / dense |")
    print("|---|---|---|---|---|")
    for loss in ("bayesian", "ot"):
        ours = timed("ours_" + loss, 128, 2000, 100, args.repeats)
        dense = timed("dense_" + loss, 128, 2000, 100, args.repeats)
        results["speed"][loss] = {"ours": ours, "dense": dense}
        print(f"| {loss} | {ours['seconds'] * 1e3:.0f} ms | {dense['seconds'] * 1e3:.0f} ms | "
              f"{dense['seconds'] / ours['seconds']:.1f}x | {ours['value']:.6g} / {dense['value']:.6g} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
