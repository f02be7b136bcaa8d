"""GPU time of each kernel in one CUDA label call, on the benchmark cases: where a call's time goes
(torch.profiler's CUDA activity: each kernel's own time, without the gaps between launches).

    python bench/kernel_times.py [--cases crop512_n300_b32 img4096_n12000] [--k 3] [--calls 20]

Prints a markdown table: case, map, kernel, microseconds per call (kernels of the same name added).
Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import collections
import re
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from mud_iknn import density_maps, knn_distance_maps
from mud_iknn.benchmark import CASES


def kernel_name(full: str) -> str:
    """`void mud_iknn::(anonymous namespace)::knn_tile_kernel<3, ...>(...)` -> `knn_tile_kernel<3>`."""
    name = full.removeprefix("void ").replace("(anonymous namespace)::", "")
    base = re.split(r"[<(]", name, maxsplit=1)[0].split("::")[-1].strip()
    first = re.match(r"[^<(]*<(\d+)\b", name)  # a leading numeric template argument (the list size)
    return f"{base}<{first.group(1)}>" if first else base


def kernel_times(fn, calls: int) -> dict[str, float]:
    """Seconds per call of each kernel name that fn() launches."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    times: dict[str, float] = collections.defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            times[kernel_name(event.name)] += event.device_time / 1e6 / calls  # device_time is in us
    return dict(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--k", type=int, default=3, help="k of the kNN maps")
    parser.add_argument("--calls", type=int, default=20, help="profiled calls per case and map")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a visible CUDA GPU")
    print(f"Kernel times, {torch.cuda.get_device_name()}, per call\n")
    print("| case | map | kernel | GPU time |\n|---|---|---|---|")
    for name in args.cases:
        case = CASES[name]
        pts, off = case.packed("cuda")
        calls = {f"knn k={args.k}": lambda: knn_distance_maps(pts, case.size, args.k, offsets=off, validate=False),
                 "density adaptive": lambda: density_maps(pts, case.size, offsets=off, validate=False)}
        for kind, fn in calls.items():
            times = kernel_times(fn, args.calls)
            for kernel, seconds in sorted(times.items(), key=lambda kv: -kv[1]):
                print(f"| {name} | {kind} | {kernel} | {seconds * 1e6:.1f} us |")
            print(f"| {name} | {kind} | all kernels | {sum(times.values()) * 1e6:.1f} us |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
