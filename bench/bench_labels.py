#!/usr/bin/env python
"""Label-engine benchmark: scipy (the reference) vs the C++ CPU kernel vs the CUDA kernel, one run.

Prints a markdown table of median times and speed-up ratios over scipy at the same thread count.
CUDA "end to end" is the wall time per call of back-to-back calls from Python (points on the device
to maps on the device, host overhead included); "GPU time" replays one call captured in a CUDA
graph (possible only because a call never synchronises with the host).
    python bench/bench_labels.py --quick                    # small cases, a minute on a laptop
    python bench/bench_labels.py --device all --out t.md    # every case, CPU and CUDA
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import CASES, QUICK  # noqa: E402

import mud_iknn  # noqa: E402
from mud_iknn import reference  # noqa: E402


def wall(fn, repeats: int) -> float:
    """Median seconds of fn() on the host."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cuda_time(fn, repeats: int) -> float:
    """Seconds per call, end to end: back-to-back calls on the current stream between two events."""
    for _ in range(3):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    runs = []
    for _ in range(5):
        start.record()
        for _ in range(repeats):
            fn()
        stop.record()
        stop.synchronize()
        runs.append(start.elapsed_time(stop) / 1000 / repeats)
    return statistics.median(runs)


def cuda_graph_time(fn, repeats: int):
    """Seconds of GPU time per call: the call captured once in a CUDA graph, replays timed.

    None when the call cannot be captured (it would have to synchronise with the host)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm-up outside the capture, as torch's graph docs ask
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError:
        return None
    return cuda_time(graph.replay, repeats)


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def ratio(base, other) -> str:
    return "-" if base is None or other is None else f"{base / other:.1f}x"


def run(cases, ks, devices, threads, scipy_limit, repeats):
    torch.set_num_threads(threads)
    rows = []
    for case in cases:
        pts = case.points()
        cpu_pts, cpu_off = case.packed("cpu")
        for kind in [f"knn k={k}" for k in ks] + ["density adaptive"]:
            k = int(kind.split("=")[1]) if kind.startswith("knn") else 3
            pixels = case.batch * case.height * case.width
            if kind.startswith("knn"):
                ref = lambda: reference.knn_distance_maps(pts, case.size, k, workers=threads)  # noqa: E731
                ours = lambda p, o: mud_iknn.knn_distance_maps(p, case.size, k, offsets=o, validate=False)  # noqa: E731
            else:
                ref = lambda: reference.density_maps(pts, case.size)  # noqa: E731
                ours = lambda p, o: mud_iknn.density_maps(p, case.size, offsets=o, validate=False)  # noqa: E731
            t_ref = None
            if pixels <= scipy_limit:
                t = time.perf_counter()
                ref()
                t_ref = time.perf_counter() - t  # scipy runs once: seconds per case
            t_cpu = wall(lambda: ours(cpu_pts, cpu_off), repeats) if "cpu" in devices else None
            t_cuda = t_graph = None
            if "cuda" in devices:
                gpu_pts, gpu_off = case.packed("cuda")
                t_cuda = cuda_time(lambda: ours(gpu_pts, gpu_off), max(repeats, 20))
                t_graph = cuda_graph_time(lambda: ours(gpu_pts, gpu_off), max(repeats, 20))
            ws = mud_iknn._ops._C.knn_workspace_bytes(case.batch, len(cpu_pts), case.height, case.width, k) \
                if "cuda" in devices and kind.startswith("knn") else None
            rows.append([case.name, kind, fmt(t_ref), fmt(t_cpu), ratio(t_ref, t_cpu), fmt(t_cuda),
                         fmt(t_graph), ratio(t_ref, t_cuda), "-" if ws is None else f"{ws / 2**20:.2f} MiB"])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}){gpu}, torch {torch.__version__}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two small cases, k=3 only")
    parser.add_argument("--cases", nargs="*", choices=sorted(CASES), help="cases to run (default: all)")
    parser.add_argument("--k", type=int, nargs="*", default=[1, 3, 8])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all" if torch.cuda.is_available()
                        else "cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads for scipy (workers) and the C++ kernel alike")
    parser.add_argument("--scipy-limit", type=float, default=5e6,
                        help="skip scipy on cases with more pixels than this (it takes seconds each)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error("--device cuda/all needs a visible CUDA GPU")
    devices = {"cpu", "cuda"} if args.device == "all" else {args.device}
    cases = QUICK if args.quick else [CASES[n] for n in (args.cases or CASES)]
    ks = [3] if args.quick else args.k
    rows = run(cases, ks, devices, args.threads, args.scipy_limit, args.repeats)
    head = ["case", "map", f"scipy ({args.threads} thr)", f"C++ CPU ({args.threads} thr)", "CPU vs scipy",
            "CUDA end to end", "CUDA GPU time", "CUDA vs scipy", "CUDA workspace"]
    lines = [f"Label engine, {date.today()}: {machine()}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
