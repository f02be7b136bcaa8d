"""Locating heads and scoring them: ``localize`` against the kNN label call of the same batch, and
the sparse localization metrics against the dense Hungarian assignment, side by side in one run.

1. ``mud_iknn.localize`` on the exact ikNN maps of the label benchmark's crop512_n300_b32 batch
   (32 maps of 512 x 512, 300 clustered heads each) vs ``mud_iknn.iknn_maps`` making that batch
   (k = 1), on the CPU at each --threads count and on CUDA when a GPU is visible; calls
   interleaved, medians of --repeats. Target: localize <= the label call on each backend.
2. ``mud_iknn.evaluate.match_counts`` (k-d tree pairs within the threshold + Hopcroft-Karp) on
   20000 predicted vs 20000 true heads (the largest NWPU-Crowd image holds 20033) at 4, 8 and 16 px,
   on one core, with the number of pairs within the threshold (its memory is O(heads + pairs));
   next to it, where a dense P x G cost matrix
   fits, scipy's ``linear_sum_assignment`` on 0/1 costs against the sparse matching at the same
   size (and the two must find the same number of matches). Target: < 1 s at 20000 x 20000.

    python bench/bench_localize.py [--threads 1 2] [--repeats 7] [--dense-size 5000] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from mud_iknn import iknn_maps, localize
from mud_iknn.benchmark import CASES, _clustered, sync
from mud_iknn.evaluate import match_counts


def _median_times(fns: dict, repeats: int, device: torch.device) -> dict:
    for fn in fns.values():  # warm up
        fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_localize(threads, repeats: int) -> list[dict]:
    case = CASES["crop512_n300_b32"]
    points = case.points()
    rows = []
    backends = [("cpu", t) for t in threads] + ([("cuda", None)] if torch.cuda.is_available() else [])
    for device, count in backends:
        if count is not None:
            torch.set_num_threads(count)
        pts = [torch.from_numpy(p).to(device) for p in points]
        maps = iknn_maps(pts, case.size)
        t = _median_times({"labels": lambda: iknn_maps(pts, case.size), "localize": lambda: localize(maps)},
                          repeats, torch.device(device))
        found = sum(len(p) for p in localize(maps))
        rows.append({"backend": device if count is None else f"cpu ({count} thr)", "labels_s": t["labels"],
                     "localize_s": t["localize"], "ratio": t["localize"] / t["labels"], "heads": found})
    return rows


def _pairs(n: int, seed: int = 0):
    """n true heads clustered in a 4096 x 3072 image; predictions: 90% of them jittered (sd 2 px)
    plus 10% scattered false ones, n in all."""
    rng = np.random.default_rng(seed)
    truth = _clustered(rng, n, 3072, 4096).astype(np.float64)
    kept = truth[rng.random(n) < 0.9]
    kept = kept + rng.normal(0, 2.0, kept.shape)
    false = rng.uniform([0, 0], [4096, 3072], (n - len(kept), 2))
    return np.concatenate([kept, false]), truth


def _dense_tp(predicted, truth, radius) -> int:
    from scipy.optimize import linear_sum_assignment

    cost = (np.hypot(*(predicted[:, None] - truth[None]).transpose(2, 0, 1)) > radius).astype(np.float64)
    rows, cols = linear_sum_assignment(cost)
    return int((cost[rows, cols] == 0).sum())


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def bench_metrics(dense_size: int) -> list[dict]:
    from scipy.spatial import cKDTree

    rows = []
    match_counts(*_pairs(100), 8.0)  # warm up (imports)
    predicted, truth = _pairs(20000)
    for radius in (4.0, 8.0, 16.0):
        (tp, _, _), seconds = _timed(lambda: match_counts(predicted, truth, radius))
        pairs = int(cKDTree(predicted).count_neighbors(cKDTree(truth), radius))
        rows.append({"heads": 20000, "threshold_px": radius, "sparse_s": seconds, "pairs": pairs,
                     "tp": tp, "dense_s": None, "dense_tp": None,
                     "dense_matrix_mib": 20000 * 20000 * 8 / 2**20})
    predicted, truth = _pairs(dense_size, seed=1)
    for radius in (4.0, 8.0, 16.0):
        (tp, _, _), sparse_s = _timed(lambda: match_counts(predicted, truth, radius))
        dense_tp, dense_s = _timed(lambda: _dense_tp(predicted, truth, radius))
        rows.append({"heads": dense_size, "threshold_px": radius, "sparse_s": sparse_s,
                     "pairs": int(cKDTree(predicted).count_neighbors(cKDTree(truth), radius)),
                     "tp": tp, "dense_s": dense_s, "dense_tp": dense_tp,
                     "dense_matrix_mib": dense_size * dense_size * 8 / 2**20})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dense-size", type=int, default=5000)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    loc = bench_localize(args.threads, args.repeats)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}\n")
    print("| backend | kNN labels (k=1) | localize | localize / labels | heads found |\n|---|---|---|---|---|")
    for r in loc:
        print(f"| {r['backend']} | {r['labels_s'] * 1e3:.1f} ms | {r['localize_s'] * 1e3:.1f} ms | {r['ratio']:.2f} "
              f"| {r['heads']} |")
    torch.set_num_threads(1)
    metrics = bench_metrics(args.dense_size)
    print("\n| heads (pred = true) | threshold | sparse | pairs within (the sparse graph) | dense Hungarian "
          "| dense / sparse | matches (sparse / dense) |\n|---|---|---|---|---|---|---|")
    for r in metrics:
        dense = f"{r['dense_s']:.2f} s" if r["dense_s"] is not None else \
            f"not run ({r['dense_matrix_mib'] / 1024:.1f} GiB matrix)"
        ratio = f"{r['dense_s'] / r['sparse_s']:.0f}x" if r["dense_s"] is not None else "-"
        matches = f"{r['tp']} / {r['dense_tp']}" if r["dense_tp"] is not None else f"{r['tp']}"
        print(f"| {r['heads']} | {r['threshold_px']:g} px | {r['sparse_s'] * 1e3:.0f} ms | {r['pairs']} | {dense} | {ratio} "
              f"| {matches} |")
        if r["dense_tp"] is not None and r["dense_tp"] != r["tp"]:
            raise SystemExit(f"sparse and dense matchings differ at {r['threshold_px']} px: {r['tp']} vs {r['dense_tp']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"localize": loc, "metrics": metrics}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
