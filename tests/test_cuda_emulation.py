"""The CUDA emulator behind the "emulated" label-engine backend (tests/emulated_cuda.py): it computes
what the hardware computes for shuffles, barriers and votes, and refuses what the hardware leaves
undefined rather than passing it."""
import re

import numpy as np
import pytest
import torch

import emulated_cuda
import mud_iknn
from conftest import clustered_points, require_host_compiler
from mud_iknn import _C, reference
from emulated_cuda import call


@pytest.mark.parametrize("threads", [32, 96, 256])
def test_warp_shuffles_give_prefix_sums_and_reductions(emulated_cuda_library, threads):
    out = np.zeros(2 * threads, dtype=np.int32)
    call(emulated_cuda_library.emulator_warp_sums, threads, out.ctypes.data)
    values = np.arange(1, threads + 1).reshape(-1, 32)
    np.testing.assert_array_equal(out[:threads], np.cumsum(values, axis=1).ravel())
    np.testing.assert_array_equal(out[threads:][::32], values.sum(axis=1))


@pytest.mark.parametrize("values, all_even, all_small", [
    (np.arange(0, 256, 2), 1, 1),
    (np.r_[np.arange(0, 254, 2), 7], 0, 1),
    (np.r_[5000, np.arange(2, 256, 2)], 1, 0),
])
def test_shared_memory_and_votes_across_a_barrier(emulated_cuda_library, values, all_even, all_small):
    values = values.astype(np.int32)
    out = np.zeros(len(values) + 2, dtype=np.int32)
    call(emulated_cuda_library.emulator_reverse_through_shared, len(values), values.ctypes.data, out.ctypes.data)
    np.testing.assert_array_equal(out[:-2], values[::-1])
    assert (out[-2], out[-1]) == (all_even, all_small)


def test_each_block_starts_with_garbage_in_shared_memory(emulated_cuda_library):
    # On the GPU a block's shared memory holds whatever was there before: a block that reads before
    # writing gets 0xff or 0x5a bytes (alternating), never the previous block's 7 or a zero.
    out = np.zeros(4, dtype=np.int32)
    call(emulated_cuda_library.emulator_read_shared_before_writing, 4, out.ctypes.data)
    assert sorted(set(out.tolist())) == [-1, 0x5a5a5a5a]


def test_a_barrier_in_divergent_code_is_an_error(emulated_cuda_library):
    with pytest.raises(RuntimeError, match=r"block \(0, 0, 0\): __syncthreads reached by 40 of 64 threads"):
        call(emulated_cuda_library.emulator_barrier_in_divergent_code)


def test_a_shuffle_missing_lanes_is_an_error(emulated_cuda_library):
    with pytest.raises(RuntimeError, match="warp shuffle reached by 16 of the 32 lanes of warp 0"):
        call(emulated_cuda_library.emulator_shuffle_with_lanes_missing)


def test_grids_beyond_the_hardware_limits_are_refused(emulated_cuda_library):
    count = np.zeros(1, dtype=np.int32)
    call(emulated_cuda_library.emulator_count_blocks, 3, 65535, 1, count.ctypes.data)
    assert count[0] == 3 * 65535
    for grid in [(1, 65536, 1), (1, 1, 65536), (0, 1, 1), (2**31, 1, 1)]:
        with pytest.raises(RuntimeError, match=re.escape("invalid configuration argument: grid (%d, %d, %d)" % grid)):
            call(emulated_cuda_library.emulator_count_blocks, *grid, count.ctypes.data)


def test_maps_taller_than_one_launch_are_launched_in_bands(tmp_path, monkeypatch):
    # gridDim.y caps a tile kernel launch at 65535 rows of tiles (2M pixels for k <= 4): taller maps
    # take several launches. A build that lowers the cap to 2 (for the emulator too) shows it on a
    # 300-row map: 10, 19 and 38 rows of tiles for k = 1, 5 and 16 (tiles 32, 16 and 8 rows tall).
    require_host_compiler()
    flags = ("-O2", "-DMUD_IKNN_CUDA_MAX_GRID_Y=2")
    emulated_cuda.install(emulated_cuda.load(emulated_cuda.compile_library(tmp_path, flags)), monkeypatch)
    points = clustered_points(np.random.default_rng(4), 60, 300, 40)
    for k in (1, 5, 16):
        d = mud_iknn.knn_distance_maps(torch.from_numpy(points), (300, 40), k)
        np.testing.assert_allclose(d.numpy(), reference.knn_distance_maps(points, (300, 40), k), rtol=1e-5)


def test_grids_beyond_int32_cells_are_coarsened(tmp_path, monkeypatch, emulated_cuda_library):
    # The kernels index a call's grid cells in int32 (about 2^31 cells: a billion dense heads). A build
    # that caps the cells at 64 (9 an image at the coarsest) coarsens the grids of 3 images of 1000 heads
    # (smaller workspaces) and still finds the same nearest heads.
    from mud_iknn import _ops
    require_host_compiler()
    coarse = emulated_cuda.load(emulated_cuda.compile_library(tmp_path, ("-O2", "-DMUD_IKNN_CUDA_MAX_GRID_CELLS=64")))
    rng = np.random.default_rng(8)
    parts = [clustered_points(rng, 1000, 60, 80) for _ in range(3)]
    points, offsets = torch.from_numpy(np.concatenate(parts)), torch.tensor([0, 1000, 2000, 3000])

    def workspace(module, op, k):
        args = getattr(module, {"knn_maps": "KnnArgs", "head_sigmas": "SigmaArgs"}[op])()
        _ops._fill(args, points=_ops._fill(module.PackedPoints(), batch=3, count=3000), height=60, width=80, k=k)
        return getattr(module, f"{op}_workspace_bytes")(args)

    for op in ("knn_maps", "head_sigmas"):
        assert workspace(coarse.module, op, 1) < workspace(emulated_cuda_library.module, op, 1)
    sigmas = [mud_iknn.head_sigmas(points, (60, 80), k=k, offsets=offsets) for k in (1, 4)]
    emulated_cuda.install(coarse, monkeypatch)
    for k in (1, 4):
        d = mud_iknn.knn_distance_maps(points, (60, 80), k, offsets=offsets).numpy()
        for b, part in enumerate(parts):
            np.testing.assert_allclose(d[b], reference.knn_distance_maps(part, (60, 80), k)[0], rtol=1e-5)
    for k, want in zip((1, 4), sigmas):
        assert torch.equal(mud_iknn.head_sigmas(points, (60, 80), k=k, offsets=offsets), want)


def test_the_cuda_backend_sizes_and_launches_with_the_points_device_current():
    # CUB's workspace-size query and the launch both depend on the current device: CudaBackend.run
    # makes the points' device current around both (on a second GPU the query would size for the first).
    import contextlib

    from mud_iknn import _ops
    current, seen = [None], []

    class Module:
        WITH_CUDA, CudaCall = True, _C.CudaCall

        def knn_maps_workspace_bytes(self, args):
            seen.append(("size", current[-1]))
            return 16

        def knn_maps_cuda(self, args, call):
            seen.append(("launch", current[-1]))

    class Backend(_ops.CudaBackend):
        @contextlib.contextmanager
        def device_guard(self, device):
            current.append(device)
            yield
            current.pop()

        def workspace(self, nbytes, device):
            seen.append(("workspace", current[-1]))
            return torch.empty(nbytes, dtype=torch.uint8)

        def stream(self, device):
            return 0

    device = torch.device("cuda", 1)
    Backend(Module()).run("knn_maps", None, device)
    assert seen == [("size", device), ("workspace", device), ("launch", device)] and current == [None]


@pytest.fixture
def schedule(emulated_cuda_library):
    """Sets the emulator's thread order between barriers (a name in emulated_cuda.SCHEDULES); in
    order again afterwards."""
    yield lambda name: emulated_cuda_library.emulator_set_schedule(emulated_cuda.SCHEDULES[name])
    emulated_cuda_library.emulator_set_schedule(0)


def test_other_thread_orders_expose_races(emulated_cuda_library, schedule):
    last, behind = np.zeros(1, dtype=np.int32), np.zeros(1, dtype=np.int32)
    seen = {}
    for name in emulated_cuda.SCHEDULES:
        schedule(name)
        call(emulated_cuda_library.emulator_last_writer_wins, last.ctypes.data)
        call(emulated_cuda_library.emulator_read_behind_a_warp_ahead, behind.ctypes.data)
        seen[name] = (int(last[0]), int(behind[0]))
    # (the last of 3 x 64 threads to write, what warp 1 read): threads in turn write 191 last
    # (reversed, blocks too: 0; warps ahead, last first: warp 0 of block 0, thread 31); warp 0 passes
    # its shuffle and writes 2 before warp 1 reads only when it runs ahead.
    assert seen == {"in order": (191, 1), "reversed": (0, 1), "warps ahead": (191, 2),
                    "warps ahead, last first": (31, 1)}


@pytest.mark.parametrize("order", [name for name in emulated_cuda.SCHEDULES if name != "in order"])
def test_label_kernels_give_the_same_bits_in_every_thread_order(emulated_cuda_library, schedule, monkeypatch,
                                                                order):
    # Races, or sums whose order follows thread timing, would change bits between orders (the grid
    # build's atomics reorder heads within a cell; the results must not care). `corner` has its
    # heads in one corner: on its fine grid (36 x 36 cells for k = 1) the tiles far from them search
    # more than 32 cell rows in one pass, in groups of 32 rows, an empty one before a full one.
    emulated_cuda.install(emulated_cuda_library, monkeypatch)
    rng = np.random.default_rng(21)
    points = torch.from_numpy(np.concatenate([clustered_points(rng, n, 70, 90) for n in (700, 40, 2500)]))
    offsets = torch.tensor([0, 700, 740, 3240])
    corner = torch.from_numpy(np.c_[rng.uniform(0, 30, 4000), rng.uniform(192, 200, 4000)].astype(np.float32))

    def maps():
        return [mud_iknn.knn_distance_maps(points, (70, 90), k, offsets=offsets) for k in (1, 3, 9)] + \
            [mud_iknn.head_sigmas(points, (70, 90), offsets=offsets),
             mud_iknn.density_maps(points, (70, 90), offsets=offsets),
             mud_iknn.knn_distance_maps(corner, (200, 200), 1),
             mud_iknn.fidt_maps(points, (70, 90), offsets=offsets),
             mud_iknn.count_maps(points, (70, 90), 3, offsets=offsets)]

    in_order = maps()
    schedule(order)
    for a, b in zip(in_order, maps()):
        assert torch.equal(a, b)


def test_the_emulated_module_serves_every_op_of_the_extension(emulated_cuda_library):
    # The emulated backend runs mud_iknn's real CUDA branch against the emulated module, bound by the
    # extension's own binding code: every op of mud_iknn._C has its CUDA entry point and workspace size
    # there, every limit the same value.
    module = emulated_cuda_library.module
    ops = sorted(name[:-len("_cpu")] for name in dir(_C) if name.endswith("_cpu"))
    assert ops == sorted(emulated_cuda.BINDINGS)
    for op in ops:
        assert callable(getattr(module, f"{op}_cuda")) and callable(getattr(module, f"{op}_workspace_bytes"))
    for limit in ("MAX_K", "MAX_IMAGES", "MAX_POINTS", "MAX_MAP_PIXELS", "MAX_MAP_SIDE", "MAX_SIGMA", "MAX_TRUNCATE",
                  "MAX_COORDINATE", "MIN_DISTANCE", "TRANSFORMS"):
        assert getattr(module, limit) == getattr(_C, limit), limit


@pytest.fixture
def math_error(emulated_cuda_library):
    """Sets how far off the emulated rsqrtf, __fdividef and expf are (a name in
    emulated_cuda.MATH_ERRORS); "scattered", the default, again afterwards."""
    yield lambda name: emulated_cuda_library.emulator_set_math_error(emulated_cuda.MATH_ERRORS[name])
    emulated_cuda_library.emulator_set_math_error(emulated_cuda.MATH_ERRORS["scattered"])


def test_fast_math_is_as_far_off_as_the_hardware_may_be(emulated_cuda_library, math_error):
    # rsqrtf, __fdividef(1, v) and expf of v: within 2 ulp of the correctly rounded value on the GPU,
    # and so in the emulator: exactly 0, +2 or -2 ulp off in the fixed modes, spread over all of
    # -2..2 in "scattered". Zeros and infinities are exact; __fdividef by |b| > 2^126 gives 0.
    v = np.random.default_rng(8).uniform(1e-3, 100.0, 2000).astype(np.float32)
    with np.errstate(over="ignore"):
        exact = np.stack([1 / np.sqrt(v.astype(np.float64)), 1 / v.astype(np.float64),
                          np.exp(v.astype(np.float64))]).astype(np.float32)

    def fast_math(values):
        out = np.empty(3 * len(values), dtype=np.float32)
        emulated_cuda_library.emulator_fast_math(len(values), values.ctypes.data, out.ctypes.data)
        return out.reshape(3, -1)

    def ulps_off(got):
        finite = np.isfinite(exact)
        assert (got[~finite] == exact[~finite]).all()
        return (got[finite].view(np.int32).astype(np.int64) - exact[finite].view(np.int32)), finite

    for name, want in [("exact", {0}), ("high", {2}), ("low", {-2}), ("scattered", {-2, -1, 0, 1, 2})]:
        math_error(name)
        off, finite = ulps_off(fast_math(v))
        assert set(np.unique(off)) == want, name
        assert not finite.all()  # expf overflows to an exact +inf past 88.7
    math_error("high")
    rsqrt, reciprocal, exp = fast_math(np.array([0.0, np.inf, 2.0**127], dtype=np.float32))
    assert list(rsqrt[:2]) == [np.inf, 0.0] and list(reciprocal) == [np.inf, 0.0, 0.0] and exp[1] == np.inf


@pytest.mark.parametrize("error", ["high", "low"])
def test_label_kernels_meet_the_tolerances_at_the_fast_math_bounds(emulated_cuda_library, math_error, monkeypatch,
                                                                   error):
    # The CUDA kernels' square roots, reciprocals and Gaussians use the GPU's fast math (2 ulp):
    # all of it 2 ulp high, or all 2 ulp low, keeps every map within the tolerances of the
    # scipy reference (D: 1e-5 relative; M: 1e-6; FIDT: 2e-6; density: 1e-5 of the maximum).
    emulated_cuda.install(emulated_cuda_library, monkeypatch)
    math_error(error)
    rng = np.random.default_rng(31)
    points = clustered_points(rng, 400, 90, 110)
    for k in (1, 3, 16):
        for clip in (None, 6.0):
            d = mud_iknn.knn_distance_maps(torch.from_numpy(points), (90, 110), k, max_distance=clip).numpy()
            np.testing.assert_allclose(d, reference.knn_distance_maps(points, (90, 110), k, max_distance=clip),
                                       rtol=1e-5, atol=1e-6)
        for transform in ("inverse", "inverse_sqrt"):
            m = mud_iknn.iknn_maps(torch.from_numpy(points), (90, 110), k, transform=transform).numpy()
            np.testing.assert_allclose(m, reference.iknn_maps(points, (90, 110), k, transform=transform),
                                       atol=1e-6, rtol=0)
    for params in ({}, dict(alpha=0.0, beta=1.0, c=0.5)):
        fidt = mud_iknn.fidt_maps(torch.from_numpy(points), (90, 110), **params).numpy()
        np.testing.assert_allclose(fidt, reference.fidt_maps(points, (90, 110), **params), atol=2e-6, rtol=0)
    density = mud_iknn.density_maps(torch.from_numpy(points), (90, 110)).numpy()
    want = reference.density_maps(points, (90, 110))
    np.testing.assert_allclose(density, want, atol=1e-5 * want.max(), rtol=0)


def test_adaptive_sigmas_are_the_cpu_kernels_bits(emulated_cuda_library, math_error, monkeypatch):
    # A sigma decides a Gaussian's radius, int(truncate * sigma + 0.5): the CUDA kernel rounds it as
    # the CPU kernel does (no FMA, correctly rounded roots and division), whatever the fast math does.
    rng = np.random.default_rng(17)
    points = torch.from_numpy(np.concatenate([clustered_points(rng, n, 60, 80) for n in (500, 3, 900)]))
    offsets = torch.tensor([0, 500, 503, 1403])
    on_cpu = [mud_iknn.head_sigmas(points, (60, 80), k=k, offsets=offsets) for k in (1, 3, 7)]
    emulated_cuda.install(emulated_cuda_library, monkeypatch)
    for error in ("high", "low", "scattered"):
        math_error(error)
        for k, want in zip((1, 3, 7), on_cpu):
            assert torch.equal(mud_iknn.head_sigmas(points, (60, 80), k=k, offsets=offsets), want), (error, k)


@pytest.mark.parametrize("height, width", [(0, 5), (4, 0)])
def test_point_losses_of_maps_without_cells_are_zero_as_on_the_cpu(emulated_cuda_library, height, width):
    # The losses refuse a density without cells; the kernels called directly (the argument structs of
    # csrc/point_losses.h) still write every output: heads expect 0 and no mass moves, as on the CPU.
    from mud_iknn import _ops
    points = torch.tensor([[1.0, 2.0], [3.0, 0.5], [2.0, 2.0]])
    offsets = torch.tensor([0, 2, 2, 3])
    density = torch.empty(3, height, width)

    def run(backend):
        module = backend.module
        expected = torch.full((3 + 3,), 7.0, dtype=torch.float64)
        beta = torch.empty(3, height, width, dtype=torch.float64)
        wasserstein = torch.full((3,), 7.0, dtype=torch.float64)
        point_map = _ops._fill(module.PointMap(), points=_ops._points(module, points, offsets), height=height,
                               width=width, stride=8)
        backend.run("bayesian_expected", _ops._fill(
            module.BayesianArgs(), map=point_map, sigma=8.0, background=0, density=density.data_ptr(),
            expected=expected.data_ptr()), torch.device("cpu"))
        backend.run("sinkhorn", _ops._fill(
            module.SinkhornArgs(), map=point_map, reg=10.0, iterations=5, scale=1.0, shift=0.0,
            normed=density.data_ptr(), beta=beta.data_ptr(), wasserstein=wasserstein.data_ptr()), torch.device("cpu"))
        return expected, wasserstein

    on_cpu = run(_ops.Backend(_C))
    assert all(torch.equal(t, torch.zeros_like(t)) for t in on_cpu)
    for got, want in zip(run(emulated_cuda.backend(emulated_cuda_library.module)), on_cpu):
        assert torch.equal(got, want)
