"""Label-engine benchmark: scipy (the reference) vs the C++ CPU kernel vs the CUDA kernel, one run.

Prints a markdown table of median times and speed-up ratios over scipy at the same thread count,
then the label engine's targets (:data:`TARGETS`) among the measured rows, met or not.
The row "iknn k=1, pixel heads" sets k = 1 against the exact distance transforms a user would
otherwise run (heads rounded to pixels inside the map, so that every tool gives the same map, and
1 / (D + 1) taken by each): OpenCV's ``distanceTransform`` (DIST_L2, DIST_MASK_PRECISE) and the
``edt`` package on the CPU at the same thread count, CuPy's ``distance_transform_edt`` (float32) on
the GPU, one image after another (none batches). They come from the optional ``bench`` extra
(``pip install mud-iknn[bench]``; CuPy from its own CUDA wheel); a column is "-" where its tool is
missing.
"C++ CPU" allocates each call's output, as a plain call does; "into out=" writes into one reused
buffer (``out=``), without the page faults of fresh memory.
CUDA "end to end" is the wall time per call of back-to-back calls from Python (points on the device
to maps on the device, host overhead included); "GPU time" replays one call captured in a CUDA
graph (possible only because a call never synchronises with the host). Cases (:data:`CASES`, seeded):
clustered crowds of several sizes, and the layouts of real scenes: heads spread uniformly, a few
heads, dense knots of people with empty ground between them ("grouped").

    mud-iknn bench                                   # quick: small cases, a minute on a laptop
    mud-iknn bench --full --device all --out t.md    # every case, CPU and CUDA
    python -m mud_iknn.benchmark --cases img2048_n5000 --k 3
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
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
from .labels import density_maps, iknn_maps, knn_distance_maps, pack_points


@dataclass(frozen=True)
class Case:
    """One benchmark case: `batch` maps of height x width pixels with `heads` heads each."""

    name: str
    batch: int
    height: int
    width: int
    heads: int  # per image
    layout: str = "clustered"  # a key of LAYOUTS

    @property
    def size(self):
        return (self.height, self.width)

    def points(self, seed: int = 0) -> list[np.ndarray]:
        """B arrays of (heads, 2) float32 (x, y) laid out as LAYOUTS[layout] says."""
        rng = np.random.default_rng(seed)
        return [LAYOUTS[self.layout](rng, self.heads, self.height, self.width) for _ in range(self.batch)]

    def pixel_points(self, seed: int = 0) -> list[np.ndarray]:
        """points() rounded to pixel centres, those inside the map: B arrays of (n_b, 2) float32."""
        out = []
        for pts in self.points(seed):
            pix = np.rint(pts)
            inside = (pix[:, 0] >= 0) & (pix[:, 0] < self.width) & (pix[:, 1] >= 0) & (pix[:, 1] < self.height)
            out.append(pix[inside].astype(np.float32))
        return out

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


def _uniform(rng, count, height, width):
    return rng.uniform([0, 0], [width, height], size=(count, 2)).astype(np.float32)


def _grouped(rng, count, height, width):
    # Knots of about 100 heads (Gaussian, sigma chosen so that the knots' 2-sigma discs cover a tenth
    # of the map; a head every 6-7 px inside) with empty ground between them.
    groups = max(2, count // 100)
    sigma = np.sqrt(0.1 * height * width / (groups * 4 * np.pi))
    centres = rng.uniform([0.05 * width, 0.05 * height], [0.95 * width, 0.95 * height], size=(groups, 2))
    return (centres[rng.integers(0, groups, count)] + rng.normal(0, sigma, (count, 2))).astype(np.float32)


# (rng, heads, height, width) -> (heads, 2) float32: "clustered" Gaussian clusters with 10% scattered
# past the border; "uniform" spread over the map; "grouped" dense knots with empty ground between.
LAYOUTS = {"clustered": _clustered, "uniform": _uniform, "grouped": _grouped}

CASES = {c.name: c for c in [
    Case("crop512_n300_b32", 32, 512, 512, 300),
    Case("img1024x768_n500", 1, 768, 1024, 500),
    Case("img2048_n5000", 1, 2048, 2048, 5000),
    Case("img4096_n12000", 1, 4096, 4096, 12000),
    Case("img2048_n5000_uniform", 1, 2048, 2048, 5000, "uniform"),
    Case("img2048_n40_sparse", 1, 2048, 2048, 40, "uniform"),
    Case("img2048_n5000_grouped", 1, 2048, 2048, 5000, "grouped"),
    Case("img4096_n12000_grouped", 1, 4096, 4096, 12000, "grouped"),
    Case("crop512_n300_b32_grouped", 32, 512, 512, 300, "grouped"),
]}
GROUPED = [name for name, c in CASES.items() if c.layout == "grouped"]
QUICK = [Case("crop512_n300_b4", 4, 512, 512, 300), CASES["img1024x768_n500"]]


PIXEL_ROW = "iknn k=1, pixel heads"  # the row of the exact distance transforms (module docstring)


def _optional(module: str):
    """The module, or None where it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _head_mask(pts: np.ndarray, height: int, width: int, fill, head) -> np.ndarray:
    """(H, W) image of `fill` with `head` at the heads' pixels (pts: (n, 2) pixel centres in the map)."""
    img = np.full((height, width), fill)
    img[pts[:, 1].astype(np.int64), pts[:, 0].astype(np.int64)] = head
    return img


def opencv_iknn(images: list[np.ndarray], size, threads: int) -> np.ndarray:
    """(B, H, W) float32 1 / (D + 1) by OpenCV's exact transform (DIST_L2, DIST_MASK_PRECISE) on
    `threads` threads, image by image; images: B arrays of (n_b, 2) heads on pixel centres in the map."""
    cv2 = importlib.import_module("cv2")
    cv2.setNumThreads(threads)
    out = np.empty((len(images), *size), dtype=np.float32)
    for b, pts in enumerate(images):
        d = cv2.distanceTransform(_head_mask(pts, *size, np.uint8(255), 0), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        d += 1.0
        np.divide(1.0, d, out=out[b])
    return out


def edt_iknn(images: list[np.ndarray], size, threads: int) -> np.ndarray:
    """opencv_iknn's maps by the ``edt`` package (its float32 exact transform, `threads` threads)."""
    edt = importlib.import_module("edt")
    out = np.empty((len(images), *size), dtype=np.float32)
    for b, pts in enumerate(images):
        d = edt.edt(_head_mask(pts, *size, True, False), parallel=threads)
        d += 1.0
        np.divide(1.0, d, out=out[b])
    return out


def cupy_iknn(images, size):
    """opencv_iknn's maps on the GPU by CuPy's exact transform (float32 distances), image by image;
    images: B (xs, ys) pairs of int64 CuPy arrays, the heads' columns and rows. A (B, H, W) CuPy array."""
    cp = importlib.import_module("cupy")
    ndimage = importlib.import_module("cupyx.scipy.ndimage")
    out = cp.empty((len(images), *size), dtype=cp.float32)
    for b, (xs, ys) in enumerate(images):
        img = cp.ones(size, dtype=bool)
        img[ys, xs] = False
        d = ndimage.distance_transform_edt(img, float64_distances=False)
        d += 1.0
        cp.divide(1.0, d, out=out[b])
    return out


def sync(device: torch.device) -> None:
    """Waits for the work queued on ``device`` (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


COLUMNS = ["scipy", "C++ CPU", "CPU vs scipy", "C++ CPU into out=", "OpenCV precise", "edt", "CPU vs OpenCV",
           "CPU vs edt", "CUDA end to end", "CUDA GPU time", "CUDA vs scipy", "CuPy EDT", "CUDA vs CuPy",
           "CUDA workspace"]


def run(cases, ks, devices, threads, scipy_limit, repeats) -> list[dict]:
    """One row per case and map: {"case", "map", then COLUMNS: seconds, ratios, workspace bytes or
    None where not measured}. Maps: "knn k=K" for K in ks, PIXEL_ROW, "density adaptive"."""
    torch.set_num_threads(threads)
    rows = []
    for case in cases:
        pixels = case.batch * case.height * case.width
        for kind in [f"knn k={k}" for k in ks] + [PIXEL_ROW, "density adaptive"]:
            print(f"measuring {case.name} {kind}", file=sys.stderr, flush=True)
            k = 1 if kind == PIXEL_ROW else int(kind.split("=")[1]) if kind.startswith("knn") else 3
            pts = case.pixel_points() if kind == PIXEL_ROW else case.points()
            cpu_pts, cpu_off = pack_points(pts)
            if kind == PIXEL_ROW:
                ref = lambda: reference.iknn_maps(pts, case.size, 1, workers=threads)  # noqa: E731
                ours = lambda p, o, out=None: iknn_maps(p, case.size, 1, offsets=o, validate=False,  # noqa: E731
                                                        out=out)
            elif kind.startswith("knn"):
                ref = lambda: reference.knn_distance_maps(pts, case.size, k, workers=threads)  # noqa: E731
                ours = lambda p, o, out=None: knn_distance_maps(p, case.size, k, offsets=o, validate=False,  # noqa: E731
                                                                out=out)
            else:
                ref = lambda: reference.density_maps(pts, case.size)  # noqa: E731
                ours = lambda p, o, out=None: density_maps(p, case.size, offsets=o, validate=False,  # noqa: E731
                                                           out=out)
            row = dict.fromkeys(COLUMNS)
            if pixels <= scipy_limit:
                t = time.perf_counter()
                ref()
                row["scipy"] = time.perf_counter() - t  # scipy runs once: seconds per case
            if "cpu" in devices:
                row["C++ CPU"] = wall(lambda: ours(cpu_pts, cpu_off), repeats)
                reused = torch.empty(case.batch, case.height, case.width)
                row["C++ CPU into out="] = wall(lambda: ours(cpu_pts, cpu_off, reused), repeats)
                del reused
            if kind == PIXEL_ROW:
                row.update(_cpu_baselines(pts, case.size, threads, repeats, ours(cpu_pts, cpu_off).numpy()))
            if "cuda" in devices:
                gpu_pts, gpu_off = cpu_pts.cuda(), cpu_off.cuda()
                row["CUDA end to end"] = cuda_time(lambda: ours(gpu_pts, gpu_off), max(repeats, 20))
                row["CUDA GPU time"] = cuda_graph_time(lambda: ours(gpu_pts, gpu_off), max(repeats, 20))
                if kind == PIXEL_ROW:
                    row["CuPy EDT"] = _cupy_baseline(pts, case.size, repeats, ours(gpu_pts, gpu_off))
                if kind.startswith("knn") or kind == PIXEL_ROW:
                    row["CUDA workspace"] = _ops.knn_workspace_bytes(case.batch, len(cpu_pts), case.height,
                                                                      case.width, k)
            for ratio, base, ours_column in [("CPU vs scipy", "scipy", "C++ CPU"),
                                             ("CPU vs OpenCV", "OpenCV precise", "C++ CPU"),
                                             ("CPU vs edt", "edt", "C++ CPU"),
                                             ("CUDA vs scipy", "scipy", "CUDA end to end"),
                                             ("CUDA vs CuPy", "CuPy EDT", "CUDA end to end")]:
                row[ratio] = _ratio(row[base], row[ours_column])
            rows.append({"case": case.name, "map": kind, **row})
    return rows


def _same_map(tool: str, theirs, ours) -> None:
    """Raises where a baseline's map is not the kernel's (the comparison would not be like for like)."""
    diff = float(np.abs(np.asarray(theirs, dtype=np.float64) - np.asarray(ours, dtype=np.float64)).max())
    if diff > 1e-6:
        raise RuntimeError(f"{tool}'s map differs from mud-iknn's by {diff:.3g}: the baseline is not the same map")


def _cpu_baselines(images, size, threads: int, repeats: int, ours: np.ndarray) -> dict:
    """{"OpenCV precise", "edt"}: seconds per call of each installed CPU transform, checked against ours."""
    times = {}
    for column, module, fn in [("OpenCV precise", "cv2", opencv_iknn), ("edt", "edt", edt_iknn)]:
        if _optional(module) is not None:
            _same_map(column, fn(images, size, threads), ours)
            times[column] = wall(lambda: fn(images, size, threads), repeats)
    return times


def _cupy_baseline(images, size, repeats: int, ours: torch.Tensor):
    """Seconds per call of CuPy's transform on the current device (None where CuPy is missing)."""
    cp = _optional("cupy")
    if cp is None:
        return None
    on_device = [(cp.asarray(p[:, 0].astype(np.int64)), cp.asarray(p[:, 1].astype(np.int64))) for p in images]
    _same_map("CuPy", cp.asnumpy(cupy_iknn(on_device, size)), ours.cpu().numpy())
    return cuda_time(lambda: cupy_iknn(on_device, size), max(repeats, 20))


def _ratio(base, other):
    return None if base is None or other is None else base / other


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if " vs " in column:
        return f"{value:.1f}x"
    if column == "CUDA workspace":
        return f"{value / 2**20:.2f} MiB"
    return fmt(value)


def _cells(row: dict) -> list[str]:
    return [row["case"], row["map"]] + [_cell(c, row[c]) for c in COLUMNS]


@dataclass(frozen=True)
class Target:
    """One of the label engine's targets: in the row (case, map), `column` at most `limit` seconds,
    or at least `limit` for a ratio ("X vs Y"); with `per`, another map of the case, the column's
    value over its value in that row, at most `limit`."""

    case: str
    map: str
    column: str
    limit: float
    per: str | None = None

    def value(self, rows: list[dict]):
        """The measured value in `rows` (a ratio of two rows with `per`), None where not measured."""
        def find(kind):
            return next((r[self.column] for r in rows if (r["case"], r["map"]) == (self.case, kind)), None)

        value = find(self.map)
        if self.per is None or value is None:
            return value
        base = find(self.per)
        return None if base is None else value / base

    def met(self, value) -> bool:
        return value >= self.limit if self.per is None and " vs " in self.column else value <= self.limit

    def cell(self, value) -> str:
        return f"{value:.2f}x" if self.per is not None else _cell(self.column, value)

    def __str__(self) -> str:
        if self.per is not None:
            return f"{self.case} {self.map}: {self.column} <= {self.limit:g}x that of {self.per}"
        bound = f">= {self.limit:g}x" if " vs " in self.column else f"<= {fmt(self.limit)}"
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
# k = 1 against the exact distance transforms on every layout, k = 3 against k = 1 where heads
# gather in knots, and the GPU against CuPy's transform on the same card.
TARGETS += [Target(name, PIXEL_ROW, "CPU vs OpenCV", 3.0) for name in CASES]
TARGETS += [Target(name, "knn k=3", "C++ CPU", 1.5, per="knn k=1") for name in GROUPED]
TARGETS += [Target(name, PIXEL_ROW, "CUDA vs CuPy", 3.0) for name in CASES if CASES[name].size == (2048, 2048)]
TARGETS += [Target(name, PIXEL_ROW, "CUDA vs CuPy", 20.0) for name in CASES if CASES[name].batch == 32]


def target_lines(rows: list[dict]) -> list[str]:
    """A markdown table of the TARGETS whose row was measured: the value, and whether it is met."""
    lines = []
    for target in TARGETS:
        value = target.value(rows)
        if value is not None:
            lines.append(f"| {target} | {target.cell(value)} | {'met' if target.met(value) else '**not met**'} |")
    if not lines:
        return []
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return [f"Against the label engine's targets (CUDA ones set for an NVIDIA H100; this machine: {card}):", "",
            "| target | measured | |", "|---|---|---|", *lines]


def baselines() -> str:
    """The exact-transform baselines' versions, or how to install the missing ones."""
    found = []
    for label, module in [("OpenCV", "cv2"), ("edt", "edt"), ("CuPy", "cupy")]:
        mod = _optional(module)
        if mod is None:
            found.append(f"{label} not installed")
            continue
        try:
            version = getattr(mod, "__version__", None) or importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        found.append(f"{label} {version}")
    return ", ".join(found) + " (pip install mud-iknn[bench]; CuPy from its CUDA wheel, on a GPU)"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}){gpu}, torch {torch.__version__}"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _device(text: str) -> str:
    if text not in ("cpu", "cuda", "all"):
        raise argparse.ArgumentTypeError(f"choose cpu, cuda or all, got {text!r}")
    if text != "cpu" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text} needs a visible CUDA GPU (torch sees none)")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (all but how the default cases are chosen), for its own command line
    and for ``mud-iknn bench``."""
    parser.add_argument("--cases", nargs="*", choices=sorted(CASES),
                        help="cases to run (default: all, or two small ones for a quick run)")
    parser.add_argument("--k", type=_positive_int, nargs="*",
                        help="neighbour counts (default: 1 3 8, or 3 for a quick run)")
    parser.add_argument("--device", type=_device, metavar="{cpu,cuda,all}", default="all" if torch.cuda.is_available()
                        else "cpu", help="where the kernels run (default: all with a visible GPU, else cpu)")
    parser.add_argument("--threads", type=_positive_int, default=os.cpu_count(),
                        help="threads for scipy (workers) and the C++ kernel alike (default: every core)")
    parser.add_argument("--scipy-limit", type=float, default=5e6,
                        help="skip scipy on cases with more pixels than this (it takes seconds each)")
    parser.add_argument("--repeats", type=_positive_int, default=5, help="timed calls per measurement (default 5)")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mud_iknn.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="two small cases, k=3 only (unless --cases / --k name others)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return report(args, args.quick)


def report(args: argparse.Namespace, quick: bool) -> int:
    """Runs the benchmark on the options of :func:`add_arguments` (``quick``: two small cases, k = 3,
    unless --cases / --k name others) and prints its table."""
    devices = {"cpu", "cuda"} if args.device == "all" else {args.device}
    cases = [CASES[n] for n in args.cases] if args.cases else (QUICK if quick else list(CASES.values()))
    ks = args.k or ([3] if quick else [1, 3, 8])
    rows = run(cases, ks, devices, args.threads, args.scipy_limit, args.repeats)
    head = ["case", "map"] + [f"{c} ({args.threads} thr)" if c in ("scipy", "C++ CPU") else c for c in COLUMNS]
    lines = [f"Label engine, {date.today()}: {machine()}", "", f"Exact-transform baselines: {baselines()}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    if any(r["map"] == "density adaptive" and r["scipy"] is not None for r in rows):
        lines += ["", "(scipy's density rows run on one thread: reference.density_maps stamps head by head in "
                      "Python; only its kNN queries take the workers)"]
    targets = target_lines(rows)
    lines += [""] + targets if targets else []
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
