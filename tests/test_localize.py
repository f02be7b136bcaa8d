"""localize: heads found on exact ikNN maps, plateaus, borders, batches, channels, counts, bad input."""
import numpy as np
import pytest
import torch

from mud_iknn import iknn_maps, localize


def _spaced_heads(rng, n, height, width, spacing):
    """Up to n heads uniform over the image's pixel area (borders included), >= spacing px apart."""
    heads = []
    for _ in range(50 * n):
        p = rng.uniform([-0.5, -0.5], [width - 0.5, height - 0.5])
        if all(np.hypot(*(p - q)) >= spacing for q in heads):
            heads.append(p)
        if len(heads) == n:
            break
    return np.array(heads, dtype=np.float32).reshape(-1, 2)


def _nearest(a, b):
    """For every row of a, the distance to the nearest row of b."""
    return np.hypot(*(np.asarray(a)[:, None] - np.asarray(b)[None]).transpose(2, 0, 1)).min(1)


@pytest.mark.parametrize("seed", range(4))
def test_every_head_of_an_exact_map_within_one_pixel(seed):
    rng = np.random.default_rng(seed)
    heads = [_spaced_heads(rng, 80, 48, 64, 6.0) for _ in range(3)]  # a batch, heads on the borders too
    found = localize(iknn_maps(heads, (48, 64)))
    assert len(found) == 3
    for truth, points in zip(heads, found):
        assert points.dtype == torch.float32 and points.shape == truth.shape
        assert _nearest(truth, points.numpy()).max() <= 1.0   # every head found ...
        assert _nearest(points.numpy(), truth).max() <= 1.0   # ... once, and nothing else


def test_plateaus_give_one_peak_at_their_centre():
    # a head between two pixels: a 2-pixel plateau; between four: a 2 x 2 plateau
    maps = iknn_maps([np.array([[10.5, 7.0]]), np.array([[10.5, 7.5]])], (16, 24))
    found = localize(maps)
    assert found[0].tolist() == [[10.5, 7.0]]
    assert found[1].tolist() == [[10.5, 7.5]]
    flat = torch.zeros(1, 9, 9)
    flat[0, 2:5, 3:6] = 0.8  # a 3 x 3 plateau: one peak (no slope to refine on)
    assert len(localize(flat)[0]) == 1


def test_borders_corners_and_no_heads():
    heads = np.array([[0.0, 0.0], [31.0, 0.0], [0.0, 19.0], [31.0, 19.0], [15.0, 10.0]], dtype=np.float32)
    found = localize(iknn_maps(heads, (20, 32)))[0]
    assert sorted(map(tuple, found.tolist())) == sorted(map(tuple, heads.tolist()))
    assert localize(torch.zeros(2, 8, 8))[0].shape == (0, 2)  # nothing above the threshold
    assert [p.shape for p in localize(torch.zeros(2, 0, 5))] == [(0, 2), (0, 2)]


def test_channels_are_averaged_and_values_ordered():
    maps = torch.zeros(1, 2, 12, 12)
    maps[0, 0, 3, 4], maps[0, 1, 3, 4] = 0.9, 0.7   # mean 0.8
    maps[0, 0, 8, 9], maps[0, 1, 8, 9] = 0.2, 0.6   # mean 0.4
    maps[0, 1, 1, 10] = 0.3                          # mean 0.15: below the default threshold (0.16)
    assert localize(maps)[0].tolist() == [[4.0, 3.0], [9.0, 8.0]]
    assert localize(maps.mean(1))[0].tolist() == [[4.0, 3.0], [9.0, 8.0]]


def test_min_distance_suppresses_the_weaker_of_close_peaks():
    maps = torch.zeros(1, 10, 20)
    maps[0, 5, 5], maps[0, 5, 8], maps[0, 5, 12] = 0.9, 0.8, 0.7
    assert localize(maps, min_distance=3)[0][:, 0].tolist() == [5.0, 12.0]  # 8 is 3 from 5, 4 from 12
    assert localize(maps, min_distance=2)[0][:, 0].tolist() == [5.0, 8.0, 12.0]
    assert localize(maps, min_distance=0, threshold=0.0)[0].shape == (3, 2)


def test_a_min_distance_past_the_map_is_the_whole_map_on_every_path():
    # windows are clipped to the map: a min_distance beyond its sides is the whole map, at the cost of
    # one covering it (the torch path of the GPUs built (2 r + 1)^2 window offsets: 19 s for r = 1500 on
    # a 70 x 90 map, out of memory beyond; the C++ path refused r >= 2^31 with pybind11's TypeError)
    import importlib

    located = importlib.import_module("mud_iknn.localize")
    maps = iknn_maps(torch.tensor([[3.0, 3.0], [40.0, 50.0], [80.0, 20.5]]), (70, 90))
    whole = localize(maps, min_distance=90)
    assert whole[0].tolist() == [[40.0, 50.0]]  # equal peaks: the raster-last
    for min_distance in (10**6, 2**40):
        assert torch.equal(localize(maps, min_distance=min_distance)[0], whole[0])
    b, i, j = located._torch_peaks(maps, 0.16, min(10**6, 90), True)
    assert (b.tolist(), i.tolist(), j.tolist()) == ([0], [50], [40])


def test_counts_with_no_window_take_the_highest_pixels():
    maps = torch.zeros(1, 5, 5)
    maps[0, 1, 1], maps[0, 3, 2] = 0.5, 0.7
    assert localize(maps, counts=[2], min_distance=0)[0].tolist() == [[2.0, 3.0], [1.0, 1.0]]
    assert len(localize(maps, counts=[4], min_distance=0)[0]) == 4  # the flat rest too: as documented
    assert len(localize(torch.zeros(1, 5, 5), counts=[3], min_distance=1)[0]) == 0


def test_counts_take_the_strongest_peaks():
    maps = torch.zeros(2, 10, 30)
    for x, v in [(3, 0.1), (10, 0.9), (17, 0.5), (24, 0.05)]:
        maps[:, 5, x] = v
    found = localize(maps, counts=torch.tensor([2.4, 2.6]))
    assert found[0][:, 0].tolist() == [10.0, 17.0]        # round(2.4) = 2, whatever the threshold
    assert found[1][:, 0].tolist() == [10.0, 17.0, 3.0]   # round(2.6) = 3: below-threshold peaks too
    assert len(localize(maps, counts=[100, 0])[0]) == 4 and len(localize(maps, counts=[100, 0])[1]) == 0


def test_integer_maps_and_device():
    maps = torch.zeros(1, 6, 6, dtype=torch.uint8)
    maps[0, 2, 3] = 5
    found = localize(maps)
    assert found[0].tolist() == [[3.0, 2.0]] and found[0].device == maps.device


@pytest.mark.parametrize("maps,kwargs,error,match", [
    (torch.zeros(8, 8), {}, ValueError, "shape"),
    (torch.zeros(1, 1, 1, 8, 8), {}, ValueError, "shape"),
    (torch.full((1, 8, 8), float("nan")), {}, ValueError, "NaN"),
    (torch.full((1, 8, 8), float("nan")), {"min_distance": 0}, ValueError, "NaN"),  # the torch path
    (torch.zeros(1, 3, 8, 8).index_fill_(1, torch.tensor([1]), float("inf")), {}, ValueError, "NaN"),
    (np.zeros((1, 8, 8)), {}, TypeError, "torch.Tensor"),
    (torch.zeros(1, 8, 8, dtype=torch.bool), {}, TypeError, "real"),
    (torch.zeros(1, 8, 8), {"min_distance": -1}, ValueError, "min_distance"),
    (torch.zeros(1, 8, 8), {"threshold": float("nan")}, ValueError, "threshold"),
    (torch.zeros(2, 8, 8), {"counts": [1.0]}, ValueError, "counts"),
    (torch.zeros(1, 8, 8), {"counts": [-1.0]}, ValueError, "counts"),
    (torch.zeros(1, 8, 8), {"counts": ["two"]}, TypeError, "counts"),
])
def test_bad_input(maps, kwargs, error, match):
    with pytest.raises(error, match=match):
        localize(maps, **kwargs)


def test_numpy_scalars_are_settings_like_python_numbers():
    maps = torch.zeros(1, 9, 9)
    maps[0, 2, 3], maps[0, 6, 6] = 1.0, 0.5
    expected = localize(maps, threshold=0.3, min_distance=1)
    assert len(expected[0]) == 2
    assert torch.equal(localize(maps, threshold=np.float32(0.3), min_distance=np.int64(1))[0], expected[0])


def _numpy_peaks(maps, threshold, radius, strict):
    """Flat indices of the peaks, pixel by pixel: above the threshold, >= every pixel of the window
    inside the map (and, if strict, above the least of them); of equal peaks within a window the
    last in raster order."""
    batch, height, width = maps.shape

    def window(b, i, j):
        return maps[b, max(i - radius, 0):i + radius + 1, max(j - radius, 0):j + radius + 1]

    def peak(b, i, j):
        v, w = maps[b, i, j], window(b, i, j)
        return v > threshold and (w <= v).all() and (not strict or (w < v).any())

    found = []
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                if not peak(b, i, j):
                    continue
                later = [(ii, jj) for ii in range(i, min(i + radius, height - 1) + 1)
                         for jj in range(max(j - radius, 0), min(j + radius, width - 1) + 1) if (ii, jj) > (i, j)]
                if not any(peak(b, ii, jj) for ii, jj in later):
                    found.append((b * height + i) * width + j)
    return found


@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("strict", [False, True])
def test_the_cpu_peaks_are_a_plain_window_test(radius, strict):
    # the C++ pass (peaks.h) and the torch ops of the other devices (run here on the CPU) against a
    # pixel-by-pixel numpy reference, on maps with plateaus (values on a coarse grid), a constant map,
    # borders, and a map that needs the second call (more peaks than the first guess of 2^16)
    import importlib

    located = importlib.import_module("mud_iknn.localize")
    rng = np.random.default_rng(5 + radius)
    cases = [np.round(rng.random((3, 23, 29)) * 4) / 4, rng.random((2, 1, 9)), np.full((1, 6, 7), 0.5)]
    for maps in cases:
        maps = maps.astype(np.float32)
        want = _numpy_peaks(maps, 0.25, radius, strict)
        got = located._cpu_peaks(torch.from_numpy(maps), 0.25, radius, strict)
        assert got.tolist() == want
        b, i, j = located._torch_peaks(torch.from_numpy(maps), 0.25, radius, not strict)
        assert sorted(((b * maps.shape[1] + i) * maps.shape[2] + j).tolist()) == want
    grid = np.zeros((1, 600, 600), np.float32)
    grid[0, ::2, ::2] = 1.0  # 90000 isolated peaks
    assert located._cpu_peaks(torch.from_numpy(grid), 0.25, 1, strict).tolist() == np.flatnonzero(grid).tolist()
