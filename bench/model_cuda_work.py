"""Counts of the work the CUDA label kernels do on the benchmark cases, from a Python model of their
control flow (no GPU): where a GPU run is not at hand, these say which part of a kernel a change
can speed up.

    python bench/model_cuda_work.py knn crop512_n300_b32 --k 3 --images 1     # about a minute
    python bench/model_cuda_work.py density img1024x768_n500

knn: per block of knn_tile_kernel in its k <= 4 shape (32 x 32 pixels, 4 warps of 8 pixel rows a
thread, the default build), the passes, the candidates staged, the steps the warps make through the sorted
candidates (a warp steps until its last lane stops) and the steps where some lane tests its rows.
density: per block of density_tile_kernel (8 rows x 1024 columns of one image), the heads that reach
the tile and the most Gaussian columns one thread adds (each 8 pixel updates in registers).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mud_iknn import reference  # noqa: E402
from mud_iknn.benchmark import CASES  # noqa: E402

MARGIN = 1  # labels.h kMargin
TILE, THREAD_ROWS, ROWS, BUCKETS = 32, 4, 8, 64


def grid_spec(batch, count, height, width, occupancy):
    """labels.h make_grid_spec: (cell, gx, gy)."""
    area = batch * height * width / max(count, 1)
    cell = int(min(max(round(math.sqrt(area * occupancy)), 1), max(height, width)))
    return cell, (width + cell - 1) // cell + 2 * MARGIN, (height + cell - 1) // cell + 2 * MARGIN


def cell_of(v, cell, n):
    return np.clip(np.floor(np.asarray(v, np.float32) / cell) + MARGIN, 0, n - 1).astype(int)


def outside_bound(px, py, block, cell, gx, gy):
    x0, x1, y0, y1 = block
    b = np.full(np.broadcast(px, py).shape, np.inf)
    if x0 > 0:
        b = np.minimum(b, px - (x0 - MARGIN) * cell)
    if x1 < gx - 1:
        b = np.minimum(b, (x1 + 1 - MARGIN) * cell - px)
    if y0 > 0:
        b = np.minimum(b, py - (y0 - MARGIN) * cell)
    if y1 < gy - 1:
        b = np.minimum(b, (y1 + 1 - MARGIN) * cell - py)
    return np.maximum(b, 0)


def knn_tile_work(points, height, width, k, spec):
    """(passes, staged, warp steps, warp row steps) of one tile kernel launch over one image."""
    cell, gx, gy = spec
    cxs, cys = cell_of(points[:, 0], cell, gx), cell_of(points[:, 1], cell, gy)
    lanes = np.arange(TILE)
    totals = np.zeros(4)
    for y0 in range(0, height, TILE):
        for x0 in range(0, width, TILE):
            tcx, tcy = x0 + 0.5 * (TILE - 1), y0 + 0.5 * (TILE - 1)
            cx0, cx1 = cell_of(x0, cell, gx), cell_of(min(x0 + TILE, width) - 1, cell, gx)
            cy0, cy1 = cell_of(y0, cell, gy), cell_of(min(y0 + TILE, height) - 1, cell, gy)
            rows = y0 + np.arange(THREAD_ROWS)[:, None] + THREAD_ROWS * np.arange(ROWS)[None, :]  # (warp, row)
            fx = (x0 + lanes).astype(np.float32)
            reach = np.sqrt((fx - tcx)[None, :] ** 2 + np.abs(rows - tcy).max(axis=1)[:, None] ** 2) * 1.00001 + 1e-3
            best = np.full((THREAD_ROWS, TILE, ROWS, k), np.inf, np.float32)  # sorted lists per pixel
            before, seen, ring = None, 0, 1
            while True:
                now = (max(cx0 - ring, 0), min(cx1 + ring, gx - 1), max(cy0 - ring, 0), min(cy1 + ring, gy - 1))
                if now == before:
                    break
                new = (cxs >= now[0]) & (cxs <= now[1]) & (cys >= now[2]) & (cys <= now[3])
                if before is not None:
                    new &= ~((cxs >= before[0]) & (cxs <= before[1]) & (cys >= before[2]) & (cys <= before[3]))
                cand = points[new]
                totals[0] += 1
                totals[1] += len(cand)
                seen += len(cand)
                ex = max(tcx - (now[0] - MARGIN) * cell, (now[1] + 1 - MARGIN) * cell - tcx)
                ey = max(tcy - (now[2] - MARGIN) * cell, (now[3] + 1 - MARGIN) * cell - tcy)
                step = math.hypot(ex, ey) / (BUCKETS - 1)
                bucket = np.minimum((np.hypot(cand[:, 0] - tcx, cand[:, 1] - tcy) / step).astype(int), BUCKETS - 1)
                order = np.argsort(bucket, kind="stable")
                cand, lower = cand[order], bucket[order] * step * 0.99999
                for w in range(THREAD_ROWS):
                    active = np.ones(TILE, bool)
                    for i in range(len(cand)):
                        worst = best[w, :, :, -1].max(axis=1)
                        gap = lower[i] - reach[w]
                        active &= ~((gap > 0) & (gap * gap >= worst))
                        if not active.any():
                            break
                        totals[2] += 1
                        dx2 = (cand[i, 0] - fx) ** 2
                        tests = active & (dx2 < worst)
                        if tests.any():
                            totals[3] += 1
                            d2 = dx2[:, None] + (cand[i, 1] - rows[w].astype(np.float32))[None, :] ** 2
                            update = tests[:, None] & (d2 < best[w, :, :, -1])
                            merged = np.sort(np.concatenate([best[w], d2[..., None]], axis=-1), axis=-1)[..., :k]
                            best[w] = np.where(update[..., None], merged, best[w])
                before = now
                if seen >= len(points):
                    break
                bound = outside_bound(fx[None, None, :], rows[:, :, None], now, cell, gx, gy)  # (warp, row, lane)
                outside = (fx[None, None, :] >= width) | (rows[:, :, None] >= height)
                if np.all(outside | (best[..., -1].transpose(0, 2, 1) <= bound * bound)):
                    break
                ring *= 2
    return totals


def density_tile_work(points, sigmas, height, width, truncate=4.0, band=8, threads=256, columns=4):
    """Per tile of density_tile_kernel (band rows x threads * columns columns): (heads that reach it,
    the most Gaussian columns one thread adds, each `band` pixel updates)."""
    r = (truncate * sigmas + 0.5).astype(int)
    cx, cy = np.floor(points[:, 0] + 0.5).astype(int), np.floor(points[:, 1] + 0.5).astype(int)
    out = []
    for y0 in range(0, height, band):
        reach_y = (np.maximum(cy - r, 0) < min(y0 + band, height)) & (np.minimum(cy + r + 1, height) > y0)
        for x0 in range(0, width, threads * columns):
            x1 = min(x0 + threads * columns, width)
            xa, xb = np.maximum(cx - r, x0), np.minimum(cx + r + 1, x1)
            reaches = reach_y & (xa < xb)
            adds = np.zeros(threads, int)  # column x0 + t + c * threads belongs to thread t
            for a, b in zip(xa[reaches] - x0, xb[reaches] - x0):
                np.add.at(adds, np.arange(a, b) % threads, 1)
            out.append((reaches.sum(), adds.max()))
    return np.array(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kernel", choices=["knn", "density"])
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--occupancy-scale", type=float, default=2.0, help="MUD_IKNN_CUDA_OCCUPANCY_SCALE")
    parser.add_argument("--images", type=int, default=1, help="images of the case to model")
    args = parser.parse_args(argv)
    case = CASES[args.case]
    images = case.points()
    if args.kernel == "knn":
        spec = grid_spec(case.batch, sum(map(len, images)), case.height, case.width, (args.k + 1) * args.occupancy_scale)
        totals = sum(knn_tile_work(p, case.height, case.width, args.k, spec) for p in images[:args.images])
        blocks = args.images * math.ceil(case.height / TILE) * math.ceil(case.width / TILE)
        passes, staged, steps, row_steps = totals / blocks
        print(f"{case.name} k={args.k}, cell {spec[0]} px: per block {passes:.2f} passes, {staged:.0f} candidates "
              f"staged, {steps / THREAD_ROWS:.1f} steps and {row_steps / THREAD_ROWS:.1f} row steps per warp")
    else:
        work = np.concatenate([density_tile_work(p, reference.head_sigmas(p.astype(np.float64), case.size),
                                                 case.height, case.width) for p in images[:args.images]])
        print(f"{case.name}: {len(work) // args.images} tiles per image, each scanning {len(images[0])} heads; heads "
              f"reaching a tile max {work[:, 0].max()} mean {work[:, 0].mean():.1f}; Gaussian columns a thread adds "
              f"max {work[:, 1].max()} mean {work[:, 1].mean():.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
