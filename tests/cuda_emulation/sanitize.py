"""The emulated CUDA kernels under AddressSanitizer and UBSan on random batches of bad input:
unvalidated garbage offsets (decreasing, negative, past the end), NaN/inf/huge heads, bad sigmas,
each batch in one of the emulator's thread orders.
The kernels promise never to read or write outside their buffers whatever the values; any report
fails the run. The GPU's compute-sanitizer covers the same on the hardware (bench/gpu_check.sh).

    python tests/cuda_emulation/sanitize.py [--cases 60] [--seed 0]    # about 10 s a case

Builds the library with the sanitizers and reruns itself with their runtimes preloaded.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import emulated_cuda  # noqa: E402

_LIBRARY_VARIABLE = "MUD_IKNN_SANITIZED_LIBRARY"


def random_batch(rng):
    batch, height, width = int(rng.integers(1, 5)), int(rng.integers(1, 70)), int(rng.integers(1, 70))
    if rng.random() < 0.2:  # wider than a density tile (1024 columns): several tiles across, a partial last one
        height, width = int(rng.integers(1, 10)), int(rng.integers(1025, 2200))
    count = int(rng.choice([0, 1, 5, 50, 300, 2500, 5000]))
    points = rng.uniform(-30, 100, (count, 2)).astype(np.float32)
    if count and rng.random() < 0.4:
        bad = rng.integers(0, count, max(1, count // 10))
        points[bad, rng.integers(0, 2, len(bad))] = rng.choice([np.nan, np.inf, -np.inf, 1e30, -1e30], len(bad))
    kind = rng.integers(0, 3)
    if kind == 0:  # valid
        offsets = np.sort(rng.integers(0, count + 1, batch + 1))
        offsets[0], offsets[-1] = 0, count
    elif kind == 1:  # anything
        offsets = rng.integers(-count - 5, 2 * count + 5, batch + 1)
    else:  # decreasing
        offsets = np.sort(rng.integers(0, count + 1, batch + 1))[::-1]
    return points, np.ascontiguousarray(offsets, dtype=np.int64), batch, count, height, width


def _struct(struct, **fields):
    for name, value in fields.items():
        setattr(struct, name, value)
    return struct


def run_cases(lib, cases: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = lib.module

    def run(op, args):  # exact workspace sizes: any overrun is reported
        size = getattr(m, f"{op}_workspace_bytes")(args)
        workspace = np.empty(max(size, 1), np.uint8)
        getattr(m, f"{op}_cuda")(args, _struct(m.CudaCall(), workspace=workspace.ctypes.data, workspace_bytes=size))

    for _ in range(cases):
        points, offsets, batch, count, height, width = random_batch(rng)
        lib.emulator_set_schedule(int(rng.integers(0, len(emulated_cuda.SCHEDULES))))  # any thread order
        packed = _struct(m.PackedPoints(), xy=points.ctypes.data, offsets=offsets.ctypes.data, batch=batch, count=count)
        k = int(rng.choice([1, 2, 3, 4, 8, 16, 33, 64]))
        out = np.empty((batch, height, width), np.float32)
        transform = _struct(m.MapTransform(), kind=int(rng.integers(0, 4)), alpha=0.02, beta=0.75, c=1.0,
                            zero_below=float(rng.choice([0.0, 0.01])))
        run("knn_maps", _struct(m.KnnArgs(), points=packed, height=height, width=width, k=k,
                                max_distance=float(rng.choice([np.inf, 3.0])), transform=transform, out=out.ctypes.data))
        stride = int(rng.choice([1, 2, 7, 100]))
        counts = np.empty((batch, -(-height // stride), -(-width // stride)), np.float32)
        run("count_maps", _struct(m.CountArgs(), points=packed, height=height, width=width, stride=stride,
                                  out=counts.ctypes.data))
        if count == 0:
            continue
        sigmas = np.empty(count, np.float32)
        run("head_sigmas", _struct(m.SigmaArgs(), points=packed, height=height, width=width, k=min(k, 63), beta=0.3,
                                   out=sigmas.ctypes.data))
        sigmas = np.where(rng.random(count) < 0.1, rng.choice([np.nan, -1.0, 1e8, 0.0, 5.0], count), sigmas)
        sigmas = sigmas.astype(np.float32)
        density = np.empty((batch, height, width), np.float32)
        run("density_maps", _struct(m.DensityArgs(), points=packed, sigmas=sigmas.ctypes.data, height=height,
                                    width=width, truncate=float(rng.choice([4.0, 0.5])), out=density.ctypes.data))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    library = os.environ.get(_LIBRARY_VARIABLE)
    if library:  # the rerun, sanitizer runtimes loaded
        run_cases(emulated_cuda.load(Path(library)), args.cases, args.seed)
        print(f"{args.cases} random batches through the emulated kernels: no sanitizer report")
        return 0
    library = emulated_cuda.compile_library(Path(tempfile.mkdtemp(prefix="mud_iknn_sanitize_")),
                                            ("-O1", "-g", "-fsanitize=address,undefined",
                                             "-fno-sanitize-recover=undefined"))
    runtimes = [subprocess.run([emulated_cuda.compiler(), f"-print-file-name={name}"], capture_output=True,
                               text=True, check=True).stdout.strip() for name in ("libasan.so", "libubsan.so")]
    env = dict(os.environ, LD_PRELOAD=" ".join(runtimes), ASAN_OPTIONS="detect_leaks=0",
               **{_LIBRARY_VARIABLE: str(library)})
    return subprocess.run([sys.executable, __file__, *sys.argv[1:]], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
