"""pytest-benchmark view of the label engine: scipy vs C++ vs CUDA, grouped per case and map; and
k = 1 on heads rounded to pixels against the exact distance transforms (OpenCV precise, edt, CuPy).

    pytest bench/test_bench_labels.py --benchmark-group-by=group            # CPU (and CUDA if visible)
    pytest bench/test_bench_labels.py -k "img2048 and k3" --benchmark-columns=median,rounds
    pytest bench/test_bench_labels.py -k "pixel_heads and grouped" --benchmark-group-by=group

Not part of the default test run (testpaths = tests); bench/bench_labels.py prints the same
comparison as one markdown table with ratios.
"""
import os

import pytest
import torch

import mud_iknn
from mud_iknn import benchmark as bench
from mud_iknn import reference
from mud_iknn.benchmark import CASES

THREADS = os.cpu_count()
BACKENDS = ["scipy", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 3, 8], ids=lambda k: f"k{k}")
@pytest.mark.parametrize("name", sorted(CASES))
def test_knn_maps(benchmark, name, k, backend):
    case = CASES[name]
    if backend == "scipy" and case.batch * case.height * case.width > 1e7:
        pytest.skip("scipy takes tens of seconds on this case")
    benchmark.group = f"{name} knn k={k}"
    pts = case.points()
    torch.set_num_threads(THREADS)
    if backend == "scipy":
        benchmark.pedantic(reference.knn_distance_maps, args=(pts, case.size, k), kwargs={"workers": THREADS},
                           rounds=1, iterations=1)
        return
    p, o = case.packed(backend)

    def call():
        out = mud_iknn.knn_distance_maps(p, case.size, k, offsets=o, validate=False)
        if backend == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.pedantic(call, rounds=5, iterations=1, warmup_rounds=1)


PIXEL_BACKENDS = ["opencv", "edt", "cpu"] + (["cuda", "cupy"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("backend", PIXEL_BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_iknn_k1_pixel_heads(benchmark, name, backend):
    """1 / (D + 1) of heads on pixels: mud-iknn against the exact transforms, same thread count."""
    case = CASES[name]
    benchmark.group = f"{name} {bench.PIXEL_ROW}"
    images = case.pixel_points()
    torch.set_num_threads(THREADS)
    if backend in ("opencv", "edt"):
        pytest.importorskip({"opencv": "cv2", "edt": "edt"}[backend])
        fn = bench.opencv_iknn if backend == "opencv" else bench.edt_iknn
        benchmark.pedantic(fn, args=(images, case.size, THREADS), rounds=5, iterations=1, warmup_rounds=1)
        return
    if backend == "cupy":
        cp = pytest.importorskip("cupy")
        on_device = [(cp.asarray(p[:, 0].astype("int64")), cp.asarray(p[:, 1].astype("int64"))) for p in images]

        def call():
            out = bench.cupy_iknn(on_device, case.size)
            torch.cuda.synchronize()
            return out
    else:
        p, o = mud_iknn.pack_points(images)
        p, o = p.to(backend), o.to(backend)

        def call():
            out = mud_iknn.iknn_maps(p, case.size, 1, offsets=o, validate=False)
            if backend == "cuda":
                torch.cuda.synchronize()
            return out

    benchmark.pedantic(call, rounds=5, iterations=1, warmup_rounds=1)
