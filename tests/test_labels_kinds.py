"""FIDT maps and count maps (every backend) against the float64 references, FIDTM's own recipe,
numpy, hand-worked cases and invariants."""
import math
import re

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mud_iknn
from mud_iknn import reference
from conftest import clustered_points

FIDT_ATOL = 2e-6  # float32 distances (CUDA: 3 ulp roots) and polynomial powers against float64


def as_np(t):
    return t.detach().cpu().numpy().astype(np.float64)


def adversarial_layouts(rng):
    """(name, (N, 2) float32 heads, (H, W)): the kNN tests' hard cases."""
    inside = rng.uniform(0, 32, (200, 2))
    far = rng.uniform(-5000, 5000, (300, 2))
    yield "clustered", clustered_points(rng, 300, 96, 130), (96, 130)
    yield "dense, far and duplicated", np.concatenate([inside, far, np.repeat(inside[:5], 3, axis=0)]), (32, 32)
    yield "only far", far[np.abs(far).min(axis=1) > 1000], (16, 24)
    yield "packed into a few pixels", np.concatenate([rng.uniform(60, 66, (3000, 2)), rng.uniform(-20, 148, (40, 2))]), \
        (128, 128)
    yield "one head on a pixel centre", np.array([[3.0, 2.0]]), (7, 9)
    yield "subpixel, on cell borders", np.array([[0.5, 0.5], [15.5, 16.0], [16.0, 15.999], [31.999, 0.0]]), (40, 33)
    yield "long and thin", rng.uniform([-10, -10], [910, 12], (40, 2)), (2, 900)


# ---- FIDT maps --------------------------------------------------------------------------------

@pytest.mark.parametrize("params", [{}, dict(alpha=0.0, beta=1.0, c=0.5), dict(alpha=0.1, beta=0.0, c=3.0),
                                    dict(zero_below=0.01)])
def test_fidt_matches_reference_on_adversarial_layouts(device, params):
    rng = np.random.default_rng(3)
    for name, pts, size in adversarial_layouts(rng):
        pts = pts.astype(np.float32)
        got = mud_iknn.fidt_maps(torch.from_numpy(pts).to(device), size, **params)
        assert got.dtype == torch.float32 and got.device.type == device.type and got.shape == (1, *size)
        np.testing.assert_allclose(as_np(got), reference.fidt_maps(pts, size, **params), atol=FIDT_ATOL, rtol=0,
                                   err_msg=name)


@pytest.mark.parametrize("params", [dict(zero_below=0.01), dict(alpha=0.0, beta=1.0, c=0.5, zero_below=0.2),
                                    dict(alpha=0.1, beta=0.0, c=3.0, zero_below=1e-6), dict(c=0.01, zero_below=0.9)])
def test_fidt_zero_below_is_the_map_cut_bit_for_bit(device, params):
    # The kernels clip the distances at FIDT's reach and skip what lies beyond it; the values must be
    # those of the uncut map, zeroed below zero_below, to the last bit (sparse groups leave tiles
    # without a head in reach, and tiles half in it; the map's edge cuts tiles).
    rng = np.random.default_rng(21)
    groups = [rng.normal(centre, 4.0, (30, 2)) for centre in ([20, 30], [150, 40], [90, 160])]
    pts = torch.from_numpy(np.concatenate(groups + [[[-70.0, 5.0]]]).astype(np.float32)).to(device)
    cut = params["zero_below"]
    full = mud_iknn.fidt_maps(pts, (181, 203), **{**params, "zero_below": 0.0})
    got = mud_iknn.fidt_maps(pts, (181, 203), **params)
    assert torch.equal(got, torch.where(full >= cut, full, torch.zeros((), device=device)))
    assert (got == 0).float().mean() > 0.3 or cut > 0.5


def test_fidt_hand_worked_values(device):
    pts = torch.tensor([[1.0, 2.0]], device=device)  # on the centre of pixel (row 2, col 1)
    m = mud_iknn.fidt_maps(pts, (3, 5))[0].cpu()
    assert float(m[2, 1]) == pytest.approx(1.0, abs=1e-6)  # D = 0: 1 / (0 + 1)
    # pixel (row 2, col 4) is 3 px away, (row 0, col 4) sqrt(13)
    assert float(m[2, 4]) == pytest.approx(1 / (3.0 ** (0.02 * 3 + 0.75) + 1), abs=1e-6)
    assert float(m[0, 4]) == pytest.approx(1 / (math.sqrt(13) ** (0.02 * math.sqrt(13) + 0.75) + 1), abs=1e-6)
    # D^0 = 1, also on the head: alpha = beta = 0 gives 1 / (1 + c) everywhere there are heads
    flat = mud_iknn.fidt_maps(pts, (3, 5), alpha=0.0, beta=0.0, c=3.0)
    torch.testing.assert_close(flat.cpu(), torch.full((1, 3, 5), 0.25), atol=1e-6, rtol=0)
    # no heads: 0, whatever the parameters
    for params in ({}, dict(alpha=0.0, beta=0.0)):
        assert (mud_iknn.fidt_maps(torch.zeros(0, 2, device=device), (4, 6), **params) == 0).all()


def fidtm_fidt_map(points, height, width):
    """FIDTM's fidt_generate (Liang et al., its repository's preprocessing), as distributed: heads
    floored into a uint8 image (row and column 0 moved to 1, those past the image dropped), OpenCV's
    exact distance transform, then the power in float and values below 0.01 set to 0."""
    d_map = (np.zeros([height, width]) + 255).astype(np.uint8)
    for o in range(len(points)):
        x = np.max([1, math.floor(points[o][1])])
        y = np.max([1, math.floor(points[o][0])])
        if x >= height or y >= width:
            continue
        with np.errstate(over="ignore"):  # a second head on a pixel wraps around
            d_map[x][y] = d_map[x][y] - np.uint8(255)
    distance_map = cv2.distanceTransform(d_map, cv2.DIST_L2, 0)
    distance_map = torch.from_numpy(distance_map)
    distance_map = 1 / (1 + torch.pow(distance_map, 0.02 * distance_map + 0.75))
    distance_map = distance_map.numpy()
    distance_map[distance_map < 1e-2] = 0
    return distance_map


def test_fidt_reproduces_fidtms_recipe_on_integer_heads_without_duplicates(device):
    # Where FIDTM's preprocessing is exact (integer heads off row and column 0, no two on a pixel),
    # the engine gives its maps; elsewhere FIDTM moves or loses heads and the engine does not.
    rng = np.random.default_rng(14)
    height, width = 70, 90
    cells = rng.choice((height - 1) * (width - 1), 150, replace=False)
    pts = np.stack([1 + cells % (width - 1), 1 + cells // (width - 1)], axis=1).astype(np.float32)
    want = fidtm_fidt_map(pts, height, width)
    got = mud_iknn.fidt_maps(torch.from_numpy(pts).to(device), (height, width), zero_below=0.01)[0]
    np.testing.assert_allclose(as_np(got), want, atol=FIDT_ATOL, rtol=0)
    # Two heads on one pixel: FIDTM's uint8 image wraps (0 - 255 - 255 = 2), so both vanish there;
    # here they stay heads.
    twice = np.concatenate([pts, pts[:1]])
    lost = fidtm_fidt_map(twice, height, width)
    x, y = int(pts[0, 0]), int(pts[0, 1])
    assert lost[y, x] < 0.5 and float(mud_iknn.fidt_maps(torch.from_numpy(twice).to(device), (height, width))
                                      [0, y, x]) == pytest.approx(1.0, abs=1e-6)


def test_fidt_smallest_c_gives_finite_maps(device):
    # c = 2^-126, the least allowed: a head's value 1 / c = 2^126 is still a float32
    pts = np.array([[2.0, 0.0]], np.float32)
    c = float(np.finfo(np.float32).tiny)
    got = as_np(mud_iknn.fidt_maps(torch.from_numpy(pts).to(device), (1, 5), c=c))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, reference.fidt_maps(pts, (1, 5), c=c), rtol=1e-6, atol=FIDT_ATOL)


def test_fidt_flip_and_crop_equivariance(device):
    # Heads on a 1/64 px lattice: flipped and shifted coordinates are exact, so are the distances
    # (near a head FIDT's slope is unbounded for beta < 1: a rounded coordinate would show).
    rng = np.random.default_rng(5)
    h, w = 120, 150
    pts = torch.from_numpy(np.round(clustered_points(rng, 400, h, w) * 64) / 64).to(device)
    full = mud_iknn.fidt_maps(pts, (h, w))
    flipped = pts.clone()
    flipped[:, 0] = (w - 1) - flipped[:, 0]
    torch.testing.assert_close(mud_iknn.fidt_maps(flipped, (h, w)), full.flip(-1), atol=1e-6, rtol=0)
    for top, left, ch, cw in [(0, 0, 32, 32), (37, 91, 50, 59), (100, 3, 20, 147)]:
        shifted = pts - torch.tensor([left, top], dtype=torch.float32, device=device)
        crop = mud_iknn.fidt_maps(shifted, (ch, cw))[0]
        torch.testing.assert_close(crop, full[0, top:top + ch, left:left + cw], atol=1e-6, rtol=0)


def test_fidt_packed_batch_and_out(device):
    rng = np.random.default_rng(6)
    images = [clustered_points(rng, n, 40, 50) for n in (0, 1, 60, 3)]
    packed = torch.from_numpy(np.concatenate(images)).to(device)
    offsets = torch.tensor(np.cumsum([0] + [len(p) for p in images]), device=device)
    maps = mud_iknn.fidt_maps(packed, (40, 50), offsets=offsets, beta=0.5)
    for b, pts in enumerate(images):
        np.testing.assert_allclose(as_np(maps[b]), reference.fidt_maps(pts, (40, 50), beta=0.5)[0], atol=FIDT_ATOL)
    out = torch.full((4, 40, 50), math.nan, device=device)
    assert mud_iknn.fidt_maps(packed, (40, 50), offsets=offsets, beta=0.5, out=out) is out
    assert torch.equal(out, maps)


coords = st.one_of(st.floats(-60, 120, allow_nan=False, width=32), st.integers(-4, 70).map(float),
                   st.sampled_from([-1e4, 1e4, 0.5, 15.5, 16.0, 31.999]))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(height=st.integers(1, 40), width=st.integers(1, 70), pts=st.lists(st.tuples(coords, coords), max_size=80),
       alpha=st.sampled_from([0.0, 0.02, 0.5]), beta=st.sampled_from([0.0, 0.75, 2.0]),
       c=st.sampled_from([1e-3, 1.0, 10.0]))
def test_property_fidt_any_layout_matches_reference(device, height, width, pts, alpha, beta, c):
    pts = np.array(pts, dtype=np.float32).reshape(-1, 2)
    got = mud_iknn.fidt_maps(torch.from_numpy(pts).to(device), (height, width), alpha=alpha, beta=beta, c=c)
    want = reference.fidt_maps(pts, (height, width), alpha=alpha, beta=beta, c=c)
    # relative to the largest value 1 / c
    np.testing.assert_allclose(as_np(got), want, atol=FIDT_ATOL * max(1.0, 1.0 / c), rtol=2e-6)


# ---- count maps -------------------------------------------------------------------------------

def border_heads(height, width, stride):
    """Heads on and next to cell borders (pixel j covers [j - 0.5, j + 0.5): a cell's border lies at
    k * stride - 0.5), on the map's edges, and just outside it."""
    eps = np.float32(1e-4)
    xs = [0.0, eps, stride - eps, stride, stride + eps, width - 1, width - eps, width, width + eps, -eps, -1.0,
          2.5 * stride, 0.5 - 2.0 ** -25]  # the last: x + 0.5 rounds to 1 in float32, its pixel is 0
    ys = [0.0, stride - eps, stride, height - eps, height, -eps, 0.5, 1.5 * stride]
    grid = np.array([(x - 0.5, y - 0.5) for x in xs for y in ys] + [(x, y) for x in xs for y in ys], dtype=np.float32)
    return grid


def inside_map(pts, height, width):
    """Which heads lie in the map: their pixel (floor(x + 0.5), floor(y + 0.5)) is one of its own."""
    pixel = np.floor(pts.astype(np.float64) + 0.5)  # exact for float32 coordinates
    return (pixel[:, 0] >= 0) & (pixel[:, 0] < width) & (pixel[:, 1] >= 0) & (pixel[:, 1] < height)


@pytest.mark.parametrize("stride", [1, 2, 3, 8, 64])
def test_count_maps_match_numpy_on_borders_and_outside(device, stride):
    rng = np.random.default_rng(stride)
    h, w = 45, 61
    images = [border_heads(h, w, stride), clustered_points(rng, 500, h, w), np.zeros((0, 2), np.float32),
              rng.uniform(-100, 200, (300, 2)).astype(np.float32)]
    packed = torch.from_numpy(np.concatenate(images)).to(device)
    offsets = torch.tensor(np.cumsum([0] + [len(p) for p in images]), device=device)
    got = mud_iknn.count_maps(packed, (h, w), stride, offsets=offsets)
    assert got.dtype == torch.float32 and got.shape == (4, -(-h // stride), -(-w // stride))
    for b, pts in enumerate(images):
        want = reference.count_maps(pts, (h, w), stride)[0]
        np.testing.assert_array_equal(as_np(got[b]), want)
        assert float(got[b].sum()) == inside_map(pts, h, w).sum()  # each map sums to the heads inside


def test_count_maps_limit_their_cells_not_the_input_pixels():
    pts = torch.tensor([[49999.2, 100.0], [10.0, 10.0], [-0.4, 0.2]])
    got = mud_iknn.count_maps(pts, (50000, 50000), stride=64)  # 2.5e9 input pixels, 782 x 782 cells
    assert got.shape == (1, 782, 782) and got[0, 0, 0] == 2 and got[0, 1, 781] == 1
    with pytest.raises(ValueError, match="50000x50000 cells exceed"):
        mud_iknn.count_maps(pts, (50000, 50000), stride=1)


def test_count_maps_hand_worked(device):
    # a head's pixel is the one whose centre is nearest: pixel j covers [j - 0.5, j + 0.5)
    pts = torch.tensor([[0.0, 0.0], [1.999, 1.5], [2.0, 0.0], [4.9, 2.2], [-0.5, 1.0], [-0.51, 0.0], [4.49, 2.49],
                        [1.49, 0.0], [3.0, 2.5]], device=device)
    got = mud_iknn.count_maps(pts, (3, 5), 2)[0].cpu()
    # cells of 2 x 2 pixels over a 3 x 5 map: 2 rows x 3 columns. Pixels (0, 0), (2, 2), (2, 0), (5, 2)
    # outside, (0, 1), (-1, 0) outside, (4, 2), (1, 0), (3, 3) outside
    torch.testing.assert_close(got, torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 1.0]]), rtol=0, atol=0)
    torch.testing.assert_close(mud_iknn.count_maps(pts, (3, 5))[0].sum().cpu(), torch.tensor(6.0))
    assert mud_iknn.count_maps(pts, (3, 5), 10**12).shape == (1, 1, 1)  # one cell for the whole map


def test_count_maps_density_pixel_rule_and_determinism(device):
    # A head counts in the pixel its delta density map would put its mass on.
    rng = np.random.default_rng(2)
    pts = torch.from_numpy(rng.uniform(-3, 33, (400, 2)).astype(np.float32)).to(device)
    delta = mud_iknn.density_maps(pts, (30, 30), 1e-20)
    counts = mud_iknn.count_maps(pts, (30, 30))
    torch.testing.assert_close(counts, delta, rtol=0, atol=1e-5)
    many = torch.from_numpy(clustered_points(rng, 20000, 64, 64, clusters=2, spread=0.01)).to(device)
    first = mud_iknn.count_maps(many, (64, 64), 4)
    for _ in range(2):
        assert torch.equal(mud_iknn.count_maps(many, (64, 64), 4), first)
    out = torch.full((1, 16, 16), math.nan, device=device)
    assert mud_iknn.count_maps(many, (64, 64), 4, out=out) is out and torch.equal(out, first)


def test_count_maps_do_not_depend_on_thread_count():
    pts = clustered_points(np.random.default_rng(1), 5000, 100, 100)
    offsets = [0, 100, 2000, 5000]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = mud_iknn.count_maps(pts, (100, 100), 3, offsets=offsets)
        torch.set_num_threads(2)
        two = mud_iknn.count_maps(pts, (100, 100), 3, offsets=offsets)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, words", [
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), alpha=-0.1), ValueError, "alpha"),
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), beta=-1), ValueError, "beta"),
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), c=0), ValueError, "c must be positive"),
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), c=-1.0), ValueError, "c must be positive"),
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), alpha=math.nan), ValueError, "alpha"),
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), beta=math.inf), ValueError, "beta"),
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), alpha="0.02"), TypeError, "alpha"),
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), c=None), TypeError, "c must be a number"),
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), zero_below=-0.01), ValueError, "zero_below"),
    # beyond float32 (the kernels' parameters): alpha = inf there made I(D = 1) 0 instead of 1 / (1 + c),
    # and a head's value 1 / c infinite below c = 2^-126
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), alpha=1e39), ValueError, "alpha must be at most"),
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), beta=1e39), ValueError, "beta must be at most"),
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), c=1e39), ValueError, "c must be at most"),
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), c=1e-40), ValueError, "c must be at least"),
    (lambda: mud_iknn.label_kinds.FidtLabel(alpha=1e39), ValueError, "label kind fidt: alpha must be at most"),
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (0, 4)), ValueError, "size"),
    (lambda: mud_iknn.fidt_maps(np.array([[np.nan, 1.0]]), (4, 4)), ValueError, "points"),
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), out=torch.zeros(1, 4, 5)), ValueError, "out must"),
    (lambda: mud_iknn.count_maps(np.zeros((3, 2)), (4, 4), 0), ValueError, "stride must be a positive integer"),
    (lambda: mud_iknn.count_maps(np.zeros((3, 2)), (4, 4), -2), ValueError, "stride must be a positive integer"),
    (lambda: mud_iknn.count_maps(np.zeros((3, 2)), (4, 4), 2.0), TypeError, "stride must be a positive integer"),
    (lambda: mud_iknn.count_maps(np.zeros((3, 2)), (4, 4), True), TypeError, "stride"),
    (lambda: mud_iknn.count_maps(np.zeros((3, 2)), (4, 4), "2"), TypeError, "stride"),
    (lambda: mud_iknn.count_maps(np.zeros((3, 2)), (4, 4), 2, offsets=[0, 2]), ValueError, "offsets"),
    (lambda: mud_iknn.count_maps(np.zeros((3, 2)), (4, 4), 2, out=torch.zeros(1, 4, 4)), ValueError,
     "(B, H, W) = (1, 2, 2)"),
    (lambda: mud_iknn.count_maps(np.zeros((3, 2)), (4.5, 4)), TypeError, "size"),
])
def test_bad_input_raises_a_clear_error(call, error, words):
    with pytest.raises(error, match=re.escape(words)):
        call()
