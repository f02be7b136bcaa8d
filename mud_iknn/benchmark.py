"""Label-engine benchmark: scipy (the reference) vs the C++ CPU kernel vs the CUDA kernel, one run.

Prints a markdown table of median times and speed-up ratios over scipy at the same thread count,
then the label engine's targets (:data:`TARGETS`) among the measured rows, met or not.
"C++ CPU" allocates each call's output, as a plain call does; "into out=" writes into one reused
buffer (``out=``), without the page faults of fresh memory.
CUDA "end to end" is the wall time per call of back-to-back calls from Python (points on the device
to maps on the device, host overhead included); "GPU time" replays one call captured in a CUDA
graph (possible only because a call never synchronises with the host). Cases: clustered crowds of
several sizes, seeded (:data:`CASES`).

    mud-iknn bench                                   # quick: small cases, a minute on a laptop
    mud-iknn bench --full --device all --out t.md    # every case, CPU and CUDA
    python -m mud_iknn.benchmark --cases img2048_n5000 --k 3
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch

from . import _ops, reference
from .labels import density_maps, knn_distance_maps, pack_points


@dataclass(frozen=True)
class Case:
    """One benchmark case: `batch` maps of height x width pixels with `heads` heads each."""

    name: str
    batch: int
    height: int
    width: int
    heads: int  # per image

    @property
    def size(self):
        return (self.height, self.width)

    def points(self, seed: int = 0) -> list[np.ndarray]:
        """B arrays of (heads, 2) float32 (x, y): Gaussian clusters, 10% scattered past the border."""
        rng = np.random.default_rng(seed)
        return [_clustered(rng, self.heads, self.height, self.width) for _ in range(self.batch)]

    def packed(self, device="cpu", seed: int = 0):
        """points() packed: (P, 2) float32 points and (B + 1,) int64 offsets on `device`."""
        points, offsets = pack_points(self.points(seed))
        return points.to(device), offsets.to(device)


def _clustered(rng, count, height, width):
    clusters = max(4, count // 250)
    centres = rng.uniform([0, 0], [width, height], size=(clusters, 2))
    pts = centres[rng.integers(0, clusters, count)] + rng.normal(0, 1, (count, 2)) * 0.06 * np.array([width, height])
    n_out = count // 10
    pts[:n_out] = rng.uniform([-0.2 * width, -0.2 * height], [1.2 * width, 1.2 * height], size=(n_out, 2))
    return pts.astype(np.float32)


CASES = {c.name: c for c in [
    Case("crop512_n300_b32", 32, 512, 512, 300),
    Case("img1024x768_n500", 1, 768, 1024, 500),
    Case("img2048_n5000", 1, 2048, 2048, 5000),
    Case("img4096_n12000", 1, 4096, 4096, 12000),
]}
QUICK = [Case("crop512_n300_b4", 4, 512, 512, 300), CASES["img1024x768_n500"]]


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


COLUMNS = ["scipy", "C++ CPU", "CPU vs scipy", "C++ CPU into out=", "CUDA end to end", "CUDA GPU time",
           "CUDA vs scipy", "CUDA workspace"]


def run(cases, ks, devices, threads, scipy_limit, repeats) -> list[dict]:
    """One row per case and map: {"case", "map", then COLUMNS: seconds, ratios, workspace bytes or
    None where not measured}."""
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
                ours = lambda p, o, out=None: knn_distance_maps(p, case.size, k, offsets=o, validate=False,  # noqa: E731
                                                                out=out)
            else:
                ref = lambda: reference.density_maps(pts, case.size)  # noqa: E731
                ours = lambda p, o, out=None: density_maps(p, case.size, offsets=o, validate=False,  # noqa: E731
                                                           out=out)
            t_ref = None
            if pixels <= scipy_limit:
                t = time.perf_counter()
                ref()
                t_ref = time.perf_counter() - t  # scipy runs once: seconds per case
            t_cpu = t_cpu_out = None
            if "cpu" in devices:
                t_cpu = wall(lambda: ours(cpu_pts, cpu_off), repeats)
                reused = torch.empty(case.batch, case.height, case.width)
                t_cpu_out = wall(lambda: ours(cpu_pts, cpu_off, reused), repeats)
                del reused
            t_cuda = t_graph = None
            if "cuda" in devices:
                gpu_pts, gpu_off = case.packed("cuda")
                t_cuda = cuda_time(lambda: ours(gpu_pts, gpu_off), max(repeats, 20))
                t_graph = cuda_graph_time(lambda: ours(gpu_pts, gpu_off), max(repeats, 20))
            ws = _ops._C.knn_workspace_bytes(case.batch, len(cpu_pts), case.height, case.width, k) \
                if "cuda" in devices and kind.startswith("knn") else None
            rows.append(dict(zip(["case", "map", *COLUMNS], [
                case.name, kind, t_ref, t_cpu, _ratio(t_ref, t_cpu), t_cpu_out, t_cuda, t_graph,
                _ratio(t_ref, t_cuda), ws])))
            print(" | ".join(_cells(rows[-1])), file=sys.stderr, flush=True)
    return rows


def _ratio(base, other):
    return None if base is None or other is None else base / other


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column.endswith("vs scipy"):
        return f"{value:.1f}x"
    if column == "CUDA workspace":
        return f"{value / 2**20:.2f} MiB"
    return fmt(value)


def _cells(row: dict) -> list[str]:
    return [row["case"], row["map"]] + [_cell(c, row[c]) for c in COLUMNS]


@dataclass(frozen=True)
class Target:
    """One of the label engine's targets: in the row (case, map), `column` at most `limit` seconds,
    or at least `limit` for a ratio ("... vs scipy")."""

    case: str
    map: str
    column: str
    limit: float

    def met(self, value) -> bool:
        return value >= self.limit if self.column.endswith("vs scipy") else value <= self.limit

    def __str__(self) -> str:
        bound = f">= {self.limit:g}x" if self.column.endswith("vs scipy") else f"<= {fmt(self.limit)}"
        return f"{self.case} {self.map}: {self.column} {bound}"


# The label-engine issue's targets; the CUDA ones are set for an NVIDIA H100.
TARGETS = [
    Target("img2048_n5000", "knn k=3", "CPU vs scipy", 10.0),
    Target("crop512_n300_b32", "knn k=3", "CPU vs scipy", 10.0),
    Target("img2048_n5000", "knn k=3", "CUDA end to end", 100e-6),
    Target("crop512_n300_b32", "knn k=3", "CUDA end to end", 150e-6),
    Target("img4096_n12000", "knn k=3", "CUDA end to end", 500e-6),
    Target("img1024x768_n500", "density adaptive", "CUDA end to end", 200e-6),
]


def target_lines(rows: list[dict]) -> list[str]:
    """A markdown table of the TARGETS whose row was measured: the value, and whether it is met."""
    lines = []
    for target in TARGETS:
        value = next((r[target.column] for r in rows if (r["case"], r["map"]) == (target.case, target.map)), None)
        if value is not None:
            lines.append(f"| {target} | {_cell(target.column, value)} | {'met' if target.met(value) else '**not met**'} |")
    if not lines:
        return []
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return [f"Against the label engine's targets (CUDA ones set for an NVIDIA H100; this machine: {card}):", "",
            "| target | measured | |", "|---|---|---|", *lines]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}){gpu}, torch {torch.__version__}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mud-iknn bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="two small cases, k=3 only (unless --cases / --k name others)")
    parser.add_argument("--cases", nargs="*", choices=sorted(CASES), help="cases to run (default: all)")
    parser.add_argument("--k", type=int, nargs="*", help="neighbour counts (default: 1 3 8)")
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
    cases = [CASES[n] for n in args.cases] if args.cases else (QUICK if args.quick else list(CASES.values()))
    ks = args.k or ([3] if args.quick else [1, 3, 8])
    rows = run(cases, ks, devices, args.threads, args.scipy_limit, args.repeats)
    head = ["case", "map"] + [f"{c} ({args.threads} thr)" if c in ("scipy", "C++ CPU") else c for c in COLUMNS]
    lines = [f"Label engine, {date.today()}: {machine()}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    targets = target_lines(rows)
    lines += [""] + targets if targets else []
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
