"""The label engine (every backend) against the scipy reference, hand-worked cases and invariants."""
import math
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter
from scipy.spatial import KDTree

import mud_iknn
from mud_iknn import reference
from conftest import clustered_points


def as_np(t):
    return t.detach().cpu().numpy().astype(np.float64)


def assert_distance_close(d, d_ref, rtol=1e-5):
    """D within rtol of the reference; below 1e-18 px, where the kernels' float32 squares leave the
    normal range (labels.py's documented limit), within 1e-18 px."""
    d, d_ref = as_np(d), np.asarray(d_ref)
    assert d.shape == d_ref.shape
    inf = np.isinf(d_ref)
    assert (np.isinf(d) == inf).all()
    np.testing.assert_allclose(d[~inf], d_ref[~inf], rtol=rtol, atol=mud_iknn.labels._MIN_DISTANCE)


# ---- kNN distance and ikNN maps ---------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 13, 16, 24, mud_iknn.MAX_K])  # every list size of the kernels
def test_knn_matches_reference_on_clustered_heads(device, k):
    rng = np.random.default_rng(k)
    pts = clustered_points(rng, 300, 96, 130)
    d = mud_iknn.knn_distance_maps(torch.from_numpy(pts).to(device), (96, 130), k)
    assert d.device.type == device.type and d.dtype == torch.float32
    assert_distance_close(d, reference.knn_distance_maps(pts, (96, 130), k))
    m = mud_iknn.iknn_maps(torch.from_numpy(pts).to(device), (96, 130), k)
    np.testing.assert_allclose(as_np(m), reference.iknn_maps(pts, (96, 130), k), atol=1e-6, rtol=0)
    s = mud_iknn.iknn_maps(torch.from_numpy(pts).to(device), (96, 130), k, transform="inverse_sqrt")
    np.testing.assert_allclose(as_np(s), reference.iknn_maps(pts, (96, 130), k, transform="inverse_sqrt"),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_max_distance_clips_each_neighbour_before_the_mean(device, k):
    rng = np.random.default_rng(7)
    pts = clustered_points(rng, 40, 80, 60, clusters=3)
    for clip in (0.5, 4.0, 25.0):
        d = mud_iknn.knn_distance_maps(torch.from_numpy(pts).to(device), (80, 60), k, max_distance=clip)
        assert_distance_close(d, reference.knn_distance_maps(pts, (80, 60), k, max_distance=clip))
        assert float(d.max()) <= clip * (1 + 1e-6)


def test_hand_worked_single_head(device):
    pts = torch.tensor([[1.0, 2.0]], device=device)  # on the centre of pixel (row 2, col 1)
    d = mud_iknn.knn_distance_maps(pts, (3, 4))[0].cpu()
    ys, xs = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")
    torch.testing.assert_close(d, torch.sqrt((xs - 1) ** 2 + (ys - 2) ** 2))
    m = mud_iknn.iknn_maps(pts, (3, 4))[0].cpu()
    # within the engine's 1e-6 (CUDA: the special function unit's reciprocal, 2 ulp)
    assert float(m[2, 1]) == pytest.approx(1.0, abs=1e-6)
    assert float(m[0, 0]) == pytest.approx(1 / (math.sqrt(5) + 1), abs=1e-6)


def test_hand_worked_two_heads_k2_mean_and_k_above_n(device):
    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0]], device=device)
    d2 = mud_iknn.knn_distance_maps(pts, (5, 5), 2)[0].cpu()
    assert abs(float(d2[0, 0]) - 2.5) < 1e-6           # mean(0, 5)
    d5 = mud_iknn.knn_distance_maps(pts, (5, 5), 5)[0].cpu()  # k > N: mean over the N = 2 available
    torch.testing.assert_close(d5, d2)


def test_no_heads_gives_infinite_distance_and_zero_maps(device):
    empty = torch.zeros(0, 2, device=device)
    assert torch.isinf(mud_iknn.knn_distance_maps(empty, (7, 9), 3)).all()
    assert (mud_iknn.iknn_maps(empty, (7, 9), 3, max_distance=5.0) == 0).all()
    assert (mud_iknn.iknn_maps(empty, (7, 9), transform="inverse_sqrt") == 0).all()
    assert (mud_iknn.density_maps(empty, (7, 9)) == 0).all()


def test_maps_are_targets_that_never_require_grad(device):
    # Points (and sigmas) that require grad, e.g. from a differentiable augmentation, are detached:
    # a loss against the maps backpropagates into the prediction alone.
    pts = (torch.rand(6, 2, generator=torch.Generator().manual_seed(2)) * 9).to(device).requires_grad_()
    sigma = torch.full((6,), 1.5, device=device, requires_grad=True)
    maps = [mud_iknn.iknn_maps(pts, (8, 9), 2), mud_iknn.knn_distance_maps([pts[:2], pts[2:]], (8, 9)),
            mud_iknn.density_maps(pts, (8, 9), sigma), mud_iknn.head_sigmas(pts, (8, 9))]
    assert not any(m.requires_grad for m in maps)
    torch.testing.assert_close(maps[0], mud_iknn.iknn_maps(pts.detach(), (8, 9), 2), rtol=0, atol=0)
    prediction = torch.zeros(1, 8, 9, device=device, requires_grad=True)
    ((prediction - maps[0]) ** 2).sum().backward()
    torch.testing.assert_close(prediction.grad, -2 * maps[0])


def test_packed_batch_equals_per_image_calls(device):
    rng = np.random.default_rng(3)
    images = [clustered_points(rng, n, 40, 50) for n in (0, 1, 5, 120, 2)]
    packed = torch.from_numpy(np.concatenate(images)).to(device)
    offsets = torch.tensor(np.cumsum([0] + [len(p) for p in images]), device=device)
    batch = mud_iknn.iknn_maps(packed, (40, 50), 3, offsets=offsets)
    listed = mud_iknn.iknn_maps([torch.from_numpy(p).to(device) for p in images], (40, 50), 3)
    assert batch.shape == (5, 40, 50)
    torch.testing.assert_close(batch, listed, rtol=0, atol=0)
    for b, pts in enumerate(images):
        np.testing.assert_allclose(as_np(batch[b]), reference.iknn_maps(pts, (40, 50), 3)[0], atol=1e-6)


def test_dense_heads_far_outside_and_duplicates(device):
    rng = np.random.default_rng(11)
    inside = rng.uniform(0, 32, (200, 2))
    far = rng.uniform(-5000, 5000, (300, 2))
    dup = np.repeat(inside[:5], 3, axis=0)
    pts = np.concatenate([inside, far, dup]).astype(np.float32)
    for k in (1, 4, 9):
        d = mud_iknn.knn_distance_maps(torch.from_numpy(pts).to(device), (32, 32), k)
        assert_distance_close(d, reference.knn_distance_maps(pts, (32, 32), k))
    only_far = far[np.abs(far).min(axis=1) > 1000].astype(np.float32)
    d = mud_iknn.knn_distance_maps(torch.from_numpy(only_far).to(device), (16, 24), 3)
    assert_distance_close(d, reference.knn_distance_maps(only_far, (16, 24), 3))
    # Up to the +-1e18 px that validation allows (squared distances stay finite in float32).
    extreme = np.array([[1e18, 5.0], [3.0, -1e18], [-1e18, 1e18], [-7e17, 2.0]], dtype=np.float32)
    for k in (1, 3, 5):
        d = mud_iknn.knn_distance_maps(torch.from_numpy(extreme).to(device), (6, 7), k)
        assert_distance_close(d, reference.knn_distance_maps(extreme, (6, 7), k))
    np.testing.assert_allclose(as_np(mud_iknn.head_sigmas(torch.from_numpy(extreme).to(device), (6, 7))),
                               reference.head_sigmas(extreme, (6, 7)), rtol=1e-5)


def test_points_four_bytes_into_their_buffer(device):
    # A float32 view that starts 4 bytes into its storage is (N, 2) and contiguous, but the CUDA kernels
    # read a head as one 8-byte float2 (the extension refuses an unaligned pointer): it is copied first.
    flat = torch.tensor([0.0, 3.5, 2.0, 1.25, 4.0, 6.0, 1.0], device=device)
    view = flat[1:].view(-1, 2)
    assert view.data_ptr() % 8 == 4
    heads = view.clone()
    for fn in (lambda p: mud_iknn.knn_distance_maps(p, (7, 6), 2), lambda p: mud_iknn.head_sigmas(p, (7, 6)),
               lambda p: mud_iknn.density_maps(p, (7, 6)), lambda p: mud_iknn.count_maps(p, (7, 6), 2)):
        assert torch.equal(fn(view), fn(heads))


def test_out_receives_every_pixel_and_is_returned(device):
    # Into a NaN-filled buffer (a reused output holds the previous batch): the same bits as a fresh
    # call, the buffer itself returned, reusable for the next batch.
    rng = np.random.default_rng(5)
    images = [clustered_points(rng, n, 40, 50) for n in (0, 7, 150)]
    packed = torch.from_numpy(np.concatenate(images)).to(device)
    offsets = torch.tensor(np.cumsum([0] + [len(p) for p in images]), device=device)
    out = torch.full((3, 40, 50), math.nan, device=device)
    calls = [
        lambda **o: mud_iknn.knn_distance_maps(packed, (40, 50), 3, offsets=offsets, **o),
        lambda **o: mud_iknn.iknn_maps(packed, (40, 50), 2, offsets=offsets, max_distance=6.0,
                                       transform="inverse_sqrt", **o),
        lambda **o: mud_iknn.density_maps(packed, (40, 50), offsets=offsets, **o),
        lambda **o: mud_iknn.density_maps(packed, (40, 50), 1.5, offsets=offsets, **o),
        lambda **o: mud_iknn.density_maps(packed[:0], (40, 50), offsets=torch.zeros_like(offsets), **o),
    ]
    for call in calls:
        out.fill_(math.nan)
        assert call(out=out) is out
        assert torch.equal(out, call())


def test_out_is_checked_before_anything_is_written():
    pts = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    buffer = torch.zeros(2, 1, 5, 6)
    bad = [
        (np.zeros((1, 5, 6), np.float32), TypeError, "out must be a torch.Tensor"),
        (torch.zeros(1, 5, 6, dtype=torch.float64), TypeError, "float32"),
        (torch.zeros(2, 5, 6), ValueError, "(B, H, W) = (1, 5, 6)"),
        (torch.zeros(1, 6, 5), ValueError, "(B, H, W)"),
        (torch.zeros(1, 5, 6, device="meta"), ValueError, "out is on meta"),
        (torch.zeros(1, 6, 5).transpose(1, 2), ValueError, "contiguous"),
        (torch.zeros(1, 5, 6, requires_grad=True), ValueError, "require grad"),
        (buffer[1], None, None),  # a contiguous view of a bigger buffer is fine
    ]
    for out, error, words in bad:
        for call in (mud_iknn.knn_distance_maps, mud_iknn.iknn_maps, mud_iknn.density_maps):
            if error is None:
                torch.testing.assert_close(call(pts, (5, 6), out=out), call(pts, (5, 6)), rtol=0, atol=0)
                continue
            with pytest.raises(error, match=re.escape(words)):
                call(pts, (5, 6), out=out)
            if not (isinstance(out, torch.Tensor) and out.is_meta):
                assert (torch.as_tensor(out) == 0).all()  # nothing written on refusal
    shared = torch.zeros(64)
    points_in_out = shared[:4].view(2, 2)
    points_in_out.copy_(pts)
    sigmas_in_out = torch.ones(30)
    for call in (lambda out: mud_iknn.iknn_maps(points_in_out, (2, 5), out=out),
                 lambda out: mud_iknn.density_maps(points_in_out, (2, 5), out=out)):
        with pytest.raises(ValueError, match="overlaps"):
            call(shared[:10].view(1, 2, 5))
    with pytest.raises(ValueError, match="overlaps"):
        mud_iknn.density_maps(pts, (5, 6), sigma=sigmas_in_out[:2], out=sigmas_in_out.view(1, 5, 6))
    assert torch.equal(points_in_out, pts) and (shared[4:] == 0).all() and (sigmas_in_out == 1).all()


coords = st.one_of(
    st.floats(-60, 120, allow_nan=False, width=32),              # anywhere, outside included
    st.integers(-4, 70).map(float),                               # pixel centres and cell borders
    st.sampled_from([-1e4, 1e4, 0.5, 15.5, 16.0, 31.999]),       # far away, half-pixels
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(height=st.integers(1, 40), width=st.integers(1, 70), k=st.integers(1, 10),
       pts=st.lists(st.tuples(coords, coords), min_size=0, max_size=120),
       dup=st.integers(0, 3), clip=st.one_of(st.none(), st.floats(0.25, 50)))
def test_property_any_layout_matches_reference(device, height, width, k, pts, dup, clip):
    pts = np.array(pts + pts[:dup], dtype=np.float32).reshape(-1, 2)
    d = mud_iknn.knn_distance_maps(torch.from_numpy(pts).to(device), (height, width), k, max_distance=clip)
    assert_distance_close(d, reference.knn_distance_maps(pts, (height, width), k, max_distance=clip))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1000, 3000), seed=st.integers(0, 2**16))
def test_property_thousands_of_heads(device, n, seed):
    pts = clustered_points(np.random.default_rng(seed), n, 64, 48, clusters=5)
    d = mud_iknn.knn_distance_maps(torch.from_numpy(pts).to(device), (64, 48), 4)
    assert_distance_close(d, reference.knn_distance_maps(pts, (64, 48), 4))


def test_more_candidates_in_one_cell_block_than_a_tile_stages_at_once(device):
    # 6000 heads packed into a few pixels: the cells around them hold thousands of candidates, so
    # the CUDA tile kernel sorts and scans them in several chunks.
    rng = np.random.default_rng(8)
    packed = rng.uniform(60, 66, (6000, 2))
    scattered = rng.uniform(-20, 148, (40, 2))
    pts = np.concatenate([packed, scattered]).astype(np.float32)
    for k in (1, 3, 9):
        d = mud_iknn.knn_distance_maps(torch.from_numpy(pts).to(device), (128, 128), k)
        assert_distance_close(d, reference.knn_distance_maps(pts, (128, 128), k))


def test_fine_grids_of_hundreds_of_cells_per_image(device):
    # A head every 1.5 pixels in a batch of two: the grids hold hundreds of cells per image (more
    # than one block-wide scan of the CUDA grid build; k = 1 and the sigma search have the smallest).
    rng = np.random.default_rng(9)
    images = [rng.uniform(-3, [51, 67], (2000, 2)).astype(np.float32) for _ in range(2)]
    packed = torch.from_numpy(np.concatenate(images)).to(device)
    offsets = torch.tensor([0, 2000, 4000], device=device)
    for k in (1, 2):
        d = mud_iknn.knn_distance_maps(packed, (64, 48), k, offsets=offsets)
        assert_distance_close(d, np.stack([reference.knn_distance_maps(p, (64, 48), k)[0] for p in images]))
    sig = mud_iknn.head_sigmas(packed, (64, 48), k=3, offsets=offsets)
    expected = np.concatenate([reference.head_sigmas(p, (64, 48), 3, 0.3) for p in images])
    np.testing.assert_allclose(as_np(sig), expected, rtol=1e-5)


def test_horizontal_flip_equivariance(device):
    rng = np.random.default_rng(5)
    h, w = 45, 61
    pts = torch.from_numpy(clustered_points(rng, 150, h, w)).to(device)
    flipped = pts.clone()
    flipped[:, 0] = (w - 1) - flipped[:, 0]
    for k in (1, 3):
        a = mud_iknn.iknn_maps(pts, (h, w), k)
        b = mud_iknn.iknn_maps(flipped, (h, w), k)
        torch.testing.assert_close(b, a.flip(-1), atol=2e-6, rtol=0)


def test_crop_of_full_map_equals_map_of_shifted_heads(device):
    rng = np.random.default_rng(9)
    h, w = 120, 150
    pts = torch.from_numpy(clustered_points(rng, 400, h, w)).to(device)
    full = mud_iknn.iknn_maps(pts, (h, w), 3)
    full_density = mud_iknn.density_maps(pts, (h, w))
    for top, left, ch, cw in [(0, 0, 32, 32), (37, 91, 50, 59), (100, 3, 20, 147)]:
        shifted = pts - torch.tensor([left, top], dtype=torch.float32, device=device)
        crop = mud_iknn.iknn_maps(shifted, (ch, cw), 3)[0]
        torch.testing.assert_close(crop, full[0, top:top + ch, left:left + cw], atol=1e-6, rtol=0)
        crop_density = mud_iknn.density_maps(shifted, (ch, cw))[0]
        torch.testing.assert_close(crop_density, full_density[0, top:top + ch, left:left + cw],
                                   atol=1e-6, rtol=1e-5)


def test_cpu_result_does_not_depend_on_thread_count():
    pts = clustered_points(np.random.default_rng(1), 500, 100, 100)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = mud_iknn.iknn_maps(pts, (100, 100), 3), mud_iknn.density_maps(pts, (100, 100))
        torch.set_num_threads(2)
        two = mud_iknn.iknn_maps(pts, (100, 100), 3), mud_iknn.density_maps(pts, (100, 100))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


# ---- density maps -----------------------------------------------------------------------------

def csrnet_density(points, height, width):
    """CSRNet's gaussian_filter_density script, written the way it is distributed (scipy filters)."""
    density = np.zeros((height, width))
    tree = KDTree(points.copy(), leafsize=2048)
    distances, _ = tree.query(points, k=4)
    for i, pt in enumerate(points):
        pt2d = np.zeros((height, width))
        pt2d[int(pt[1]), int(pt[0])] = 1.0
        sigma = (distances[i][1] + distances[i][2] + distances[i][3]) * 0.1
        density += gaussian_filter(pt2d, sigma, mode="constant")
    return density


def test_adaptive_density_equals_csrnet_script(device):
    # CSRNet's script puts a head in pixel int(x): pixel j covers [j, j + 1) there, [j - 0.5, j + 0.5)
    # here (centred at j, as the kNN maps measure): the same maps for coordinates half a pixel apart
    rng = np.random.default_rng(2)
    pts = rng.uniform([-0.5, -0.5], [89.5, 69.5], size=(60, 2)).astype(np.float32)
    ours = mud_iknn.density_maps(torch.from_numpy(pts).to(device), (70, 90))[0]
    expected = csrnet_density(pts.astype(np.float64) + 0.5, 70, 90)
    np.testing.assert_allclose(as_np(ours), expected, atol=1e-5 * expected.max(), rtol=0)


@pytest.mark.parametrize("sigma", [0.0, 0.7, 3.0, 12.5])
def test_fixed_sigma_density_matches_reference(device, sigma):
    pts = clustered_points(np.random.default_rng(4), 80, 50, 64)
    ours = mud_iknn.density_maps(torch.from_numpy(pts).to(device), (50, 64), sigma if sigma else 1e-20)
    ref = reference.density_maps(pts, (50, 64), sigma if sigma else 1e-20)
    np.testing.assert_allclose(as_np(ours), ref, atol=1e-5 * ref.max(), rtol=0)


def test_very_wide_gaussians_are_normalised_in_closed_form(device):
    # Radii past 2^16 pixels: the kernels normalise with the integral plus end corrections, not
    # 2r + 1 terms. Against the reference's term-by-term sum just past that radius, and for the
    # widest kernel allowed (r = 1e9) against the flat limit 1 / (2 pi sigma^2) per head and pixel.
    pts = np.array([[3.2, 5.7], [-40.0, 12.0], [20.5, -3.0]], dtype=np.float32)
    d = mud_iknn.density_maps(torch.from_numpy(pts).to(device), (12, 25), 17000.0)  # r = 68000
    np.testing.assert_allclose(as_np(d), reference.density_maps(pts, (12, 25), 17000.0), rtol=1e-5)
    wide = mud_iknn.density_maps(torch.from_numpy(pts).to(device), (12, 25), 1e7, truncate=100.0)
    np.testing.assert_allclose(as_np(wide), 3 / (2 * np.pi * 1e14), rtol=1e-5)


def test_density_maps_are_deterministic(device):
    # Each pixel sums its heads in packed order on every backend (no atomics): repeated calls,
    # overlapping Gaussians of many sizes, give the same bits.
    rng = np.random.default_rng(12)
    pts = torch.from_numpy(clustered_points(rng, 3000, 200, 150, clusters=3)).to(device)
    offsets = torch.tensor([0, 1000, 3000], device=device)
    first = mud_iknn.density_maps(pts, (200, 150), offsets=offsets)
    for _ in range(3):
        assert torch.equal(mud_iknn.density_maps(pts, (200, 150), offsets=offsets), first)


@pytest.mark.parametrize("size", [(9, 2600), (2600, 9)])
def test_density_of_wide_and_tall_maps_matches_reference(device, size):
    # The CUDA kernel adds the Gaussians in tiles of 8 rows x 1024 columns, a chunk of 256 heads at a
    # time: heads on and across the tiles' borders, more than a chunk per image, Gaussians wider
    # than a tile (sigma 600: radius 2400) and an image with a lone head.
    h, w = size
    rng = np.random.default_rng(h)
    borders = np.array([[1023.5, 4.0], [1024.0, 0.5], [1022.9, 8.9], [2047.5, 3.0], [2048.2, 7.0], [0, 0],
                        [2599.5, 8.5], [1024.0, 1024.0], [5.0, 2047.5], [7.0, 2048.0]], dtype=np.float32)
    crowd = np.c_[rng.uniform(-20, 2620, 600), rng.uniform(-20, 29, 600)].astype(np.float32)
    first = np.concatenate([borders, crowd])
    if h > w:
        first = first[:, ::-1].copy()
    lone = np.array([[w / 2, h / 2]], dtype=np.float32)
    packed = torch.from_numpy(np.concatenate([first, lone])).to(device)
    offsets = [0, len(first), len(first) + 1]
    for sigma in ("adaptive", 1.5, 600.0):
        d = mud_iknn.density_maps(packed, size, sigma, offsets=torch.tensor(offsets, device=device))
        for b, pts in enumerate((first, lone)):
            ref = reference.density_maps(pts, size, sigma)[0]
            np.testing.assert_allclose(as_np(d[b]), ref, atol=1e-5 * ref.max(), rtol=0, err_msg=f"{sigma} {b}")


@pytest.mark.parametrize("pts, size, sigma, kwargs", [
    # adaptive sigmas exactly on a radius boundary: int(truncate * sigma + 0.5) is a whole number,
    # so a sigma 1 ulp low (the GPU's fast square root) would drop the radius by one
    ([[5, 0], [10, 0]], (1, 20), "adaptive", dict(k=1, beta=1.0, truncate=0.5)),
    ([[5, 5], [10, 5]], (11, 20), "adaptive", dict(k=1, beta=0.3, truncate=1.0)),
    ([[10, 10], [12.25, 13]], (24, 24), "adaptive", {}),                      # sigma 1.125, the defaults
    # truncate * sigma just below a half-integer: in float it rounds up to it (radius 3, scipy's 2)
    ([[5, 5]], (11, 11), float(np.float32(2.5 / 3)), dict(truncate=3.0)),
    # huge sigma: + 0.5 in float rounds half to even (the map's one pixel is just outside the radius)
    ([[-(4 * (2.0**21 + 0.25)) - 0.5, 0]], (1, 3), 2.0**21 + 0.25, {}),
])
def test_density_radius_boundaries_as_scipy(device, pts, size, sigma, kwargs):
    pts = np.array(pts, dtype=np.float32)
    d = mud_iknn.density_maps(torch.from_numpy(pts).to(device), size, sigma, **kwargs)
    ref = reference.density_maps(pts, size, sigma, **kwargs)
    np.testing.assert_allclose(as_np(d), ref, atol=1e-5 * max(ref.max(), 1e-30), rtol=0)


def test_knn_distances_of_a_ten_millionth_of_a_pixel(device):
    # the CPU tile search's early exit compared k-th distances of 1e-7 px with an unpadded bound
    pts = np.array([[-1e-7, 1], [0, -1e-7], [1, -1e-7], [1, 1], [0, 1.0000001]], dtype=np.float32)
    d = mud_iknn.knn_distance_maps(torch.from_numpy(pts).to(device), (2, 2), 1)
    np.testing.assert_allclose(as_np(d), reference.knn_distance_maps(pts, (2, 2), 1), rtol=1e-5, atol=0)


def test_density_conserves_mass_away_from_borders(device):
    pts = torch.tensor([[20.3, 30.9], [40.0, 25.5], [30.0, 30.0]], device=device)
    d = mud_iknn.density_maps(pts, (60, 60), 2.0)
    assert abs(float(d.sum()) - 3.0) < 1e-5
    lone = mud_iknn.density_maps(pts[:1], (60, 60))  # a lone head: sigma (H + W) / 8 = 15
    ref = reference.density_maps(pts[:1].cpu().numpy(), (60, 60))
    np.testing.assert_allclose(as_np(lone), ref, atol=1e-5 * ref.max())
    assert float(lone.sum()) < 1.0  # the wide kernel loses mass past the border


def test_per_head_sigmas_and_adaptive_parameters(device):
    rng = np.random.default_rng(6)
    images = [clustered_points(rng, n, 40, 40) for n in (1, 2, 30)]
    packed = torch.from_numpy(np.concatenate(images)).to(device)
    offsets = torch.tensor([0, 1, 3, 33], device=device)
    sig = mud_iknn.head_sigmas(packed, (40, 40), k=5, beta=0.2, offsets=offsets)
    expected = np.concatenate([reference.head_sigmas(p, (40, 40), 5, 0.2) for p in images])
    np.testing.assert_allclose(as_np(sig), expected, rtol=1e-5)
    assert abs(float(sig[0]) - 10.0) < 1e-6  # lone head: (40 + 40) / 8
    a = mud_iknn.density_maps(packed, (40, 40), sig, offsets=offsets)
    b = mud_iknn.density_maps(packed, (40, 40), "adaptive", k=5, beta=0.2, offsets=offsets)
    torch.testing.assert_close(a, b)
    ref = reference.density_maps(np.concatenate(images), (40, 40), "adaptive", k=5, beta=0.2,
                                 offsets=[0, 1, 3, 33])
    np.testing.assert_allclose(as_np(b), ref, atol=1e-5 * ref.max())
    crowd = clustered_points(rng, 300, 40, 40)
    for k in (20, mud_iknn.MAX_K - 1):  # the sigma kernel's larger list sizes
        np.testing.assert_allclose(as_np(mud_iknn.head_sigmas(torch.from_numpy(crowd).to(device), (40, 40), k=k)),
                                   reference.head_sigmas(crowd, (40, 40), k), rtol=1e-5)


# ---- input forms and bad input ----------------------------------------------------------------

def test_input_forms_and_dtypes_are_converted():
    pts64 = np.array([[1.5, 2.0], [3.0, 0.0]])
    want = mud_iknn.iknn_maps(pts64.astype(np.float32), (4, 5))
    assert want.shape == (1, 4, 5) and want.device.type == "cpu"
    for form in (pts64, pts64.astype(np.int32).astype(np.float32), torch.tensor(pts64),
                 torch.tensor(pts64, dtype=torch.float16), [pts64], pts64.astype(np.longdouble)):
        got = mud_iknn.iknn_maps(form, (4, 5))
        assert got.dtype == torch.float32 and got.shape == (1, 4, 5)
    torch.testing.assert_close(mud_iknn.iknn_maps(torch.tensor([[1, 2]]), (3, 3)),
                               mud_iknn.iknn_maps(np.array([[1.0, 2.0]]), (3, 3)))
    assert mud_iknn.iknn_maps([], (3, 3)).shape == (0, 3, 3)


@pytest.mark.parametrize("call, error, words", [
    (lambda: mud_iknn.iknn_maps(np.array([[np.nan, 1.0]]), (4, 4)), ValueError, "points"),
    (lambda: mud_iknn.iknn_maps(np.array([[np.inf, 1.0]]), (4, 4)), ValueError, "infinite"),
    (lambda: mud_iknn.iknn_maps(np.array([[1.0, -2e18]]), (4, 4)), ValueError, "beyond +-1e+18 pixels"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 3)), (4, 4)), ValueError, "shape (N, 2)"),
    (lambda: mud_iknn.iknn_maps([np.zeros((2, 2)), np.zeros(3)], (4, 4)), ValueError, "points[1]"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), offsets=[1, 3]), ValueError, "offsets"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), offsets=[0, 2, 1, 3]), ValueError, "offsets"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), offsets=[0, 2]), ValueError, "P = 3"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), offsets=[0.0, 3.0]), TypeError, "offsets"),
    (lambda: mud_iknn.iknn_maps([np.zeros((1, 2))], (4, 4), offsets=[0, 1]), ValueError, "offsets"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), k=0), ValueError, "k must be"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), k=mud_iknn.MAX_K + 1), ValueError, "k must be"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), k=2.5), TypeError, "k must be an integer"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (0, 4)), ValueError, "size"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (-2, 4)), ValueError, "size"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (1, 2**24 + 1)), ValueError, "each side must be at most 16777216"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4.5, 4)), TypeError, "size"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), 4), TypeError, "size"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2), dtype=bool), (4, 4)), TypeError, "points"),
    (lambda: mud_iknn.iknn_maps(torch.zeros(3, 2, dtype=torch.complex64), (4, 4)), TypeError, "points"),
    (lambda: mud_iknn.iknn_maps(np.array([["a", "b"]]), (4, 4)), TypeError, "points"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), transform="log"), ValueError, "transform"),
    # from fuzzing: each of these escaped as another error type, or passed with a wrong meaning
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (float("inf"), 4)), TypeError, "size"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (True, 4)), TypeError, "size"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), max_distance=10**400), ValueError, "max_distance"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), max_distance=1e-50), ValueError,
     "max_distance must be at least 1e-18"),
    (lambda: mud_iknn.density_maps(np.zeros((3, 2)), (4, 4), truncate=10**400), ValueError, "truncate"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), offsets="03"), TypeError, "offsets must be integers"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), offsets=["0", "3"]), TypeError, "offsets must be integers"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), offsets=[0, 2**64, 3]), TypeError, "offsets"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), offsets=np.array([0, 3], dtype=object)), TypeError,
     "offsets must be integers"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), offsets=[]), ValueError, "offsets must have shape"),
    (lambda: mud_iknn.density_maps(np.zeros((3, 2)), (4, 4), sigma=np.array([1, 2, 3], dtype=object)),
     ValueError, "sigma as an array must be float"),
    (lambda: mud_iknn.iknn_maps(torch.zeros(3, 2).to_sparse(), (4, 4)), TypeError, "dense (strided)"),
    (lambda: mud_iknn.iknn_maps(np.ma.masked_array(np.zeros((3, 2)), mask=[[1, 1], [0, 0], [0, 0]]), (4, 4)),
     TypeError, "masked array"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), max_distance=0), ValueError, "max_distance"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), max_distance=float("nan")), ValueError,
     "max_distance"),
    (lambda: mud_iknn.iknn_maps(torch.zeros(3, 2), (4, 4), offsets=torch.tensor([0, 3], device="meta")),
     ValueError, "offsets is on meta"),
    (lambda: mud_iknn.iknn_maps([torch.zeros(1, 2), torch.zeros(1, 2, device="meta")], (4, 4)), ValueError,
     "one device"),
    (lambda: mud_iknn.iknn_maps(torch.zeros(3, 2, device="meta"), (4, 4), validate=False), ValueError,
     "CPU or a CUDA device"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (100000, 100000)), ValueError, "100000x100000"),
    (lambda: mud_iknn.iknn_maps([np.zeros((1, 2))] * 1024, (46000, 46000)), MemoryError, "cannot be allocated"),
    (lambda: mud_iknn.density_maps(np.zeros((3, 2)), (4, 4), sigma=-1.0), ValueError, "sigma"),
    (lambda: mud_iknn.density_maps(np.zeros((3, 2)), (4, 4), sigma="wide"), ValueError, "sigma"),
    (lambda: mud_iknn.density_maps(np.zeros((3, 2)), (4, 4), sigma=torch.ones(2)), ValueError, "(P,)"),
    (lambda: mud_iknn.density_maps(np.zeros((3, 2)), (4, 4), sigma=torch.tensor([1.0, -1, 1])), ValueError,
     "sigma"),
    (lambda: mud_iknn.density_maps(np.zeros((3, 2)), (4, 4), truncate=0), ValueError, "truncate"),
    (lambda: mud_iknn.density_maps(np.zeros((3, 2)), (4, 4), truncate=1000), ValueError, "truncate"),
    (lambda: mud_iknn.density_maps(np.zeros((3, 2)), (4, 4), sigma=2e7), ValueError, "sigma"),
    (lambda: mud_iknn.density_maps(np.zeros((3, 2)), (4, 4), sigma=torch.tensor([1.0, 2e7, 1])), ValueError,
     "sigma"),
    (lambda: mud_iknn.iknn_maps(np.zeros((3, 2)), (4, 4), offsets=np.r_[np.zeros(70000, np.int64), 3]),
     ValueError,
     "65535 images"),
    (lambda: mud_iknn.density_maps(np.zeros((3, 2)), (4, 4), beta=-0.3), ValueError, "beta"),
    # finite float64 coordinates that float32 cannot hold: their real error, not "NaN or infinite"
    (lambda: mud_iknn.iknn_maps(np.array([[1e300, 1.0]]), (3, 3)), ValueError, "beyond +-1e+18 pixels (largest 1e+300)"),
    (lambda: mud_iknn.fidt_maps(np.zeros((3, 2)), (4, 4), alpha=10**400), ValueError, "alpha must be non-negative"),
])
def test_bad_input_raises_a_clear_error(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


def test_numpy_scalars_and_read_only_arrays_are_arguments_like_any_other():
    pts = np.array([[1.0, 2.0], [3.5, 0.5]], np.float32)
    pts.flags.writeable = False  # np.load(mmap_mode="r"), say: read, never written
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = mud_iknn.iknn_maps(pts, (4, 5), np.int64(2), max_distance=np.float32(3.0))
    assert torch.equal(maps, mud_iknn.iknn_maps(pts.copy(), (4, 5), 2, max_distance=3.0))


def test_custom_ops_pass_torch_opcheck_and_compile():
    pts = torch.from_numpy(clustered_points(np.random.default_rng(0), 30, 20, 24))
    offsets = torch.tensor([0, 10, 30])
    sigmas = torch.full((30,), 2.0)
    params = (0.0, 0.0, 1.0, 0.0)
    torch.library.opcheck(torch.ops.mud_iknn.knn_maps.default, (pts, offsets, 20, 24, 3, math.inf, 1, params))
    torch.library.opcheck(torch.ops.mud_iknn.knn_maps.default, (pts, offsets, 20, 24, 1, math.inf, 3,
                                                                (0.02, 0.75, 1.0, 0.01)))
    torch.library.opcheck(torch.ops.mud_iknn.count_maps.default, (pts, offsets, 20, 24, 3))
    torch.library.opcheck(torch.ops.mud_iknn.count_maps_out.default, (pts, offsets, 20, 24, 3, torch.empty(2, 7, 8)))
    torch.library.opcheck(torch.ops.mud_iknn.head_sigmas.default, (pts, offsets, 20, 24, 3, 0.3))
    torch.library.opcheck(torch.ops.mud_iknn.density_maps.default, (pts, offsets, sigmas, 20, 24, 4.0))
    torch.library.opcheck(torch.ops.mud_iknn.knn_maps_out.default, (pts, offsets, 3, math.inf, 1, params,
                                                                    torch.empty(2, 20, 24)))
    torch.library.opcheck(torch.ops.mud_iknn.density_maps_out.default, (pts, offsets, sigmas, 4.0,
                                                                         torch.empty(2, 20, 24)))

    def labels(p, o):
        return mud_iknn.iknn_maps(p, (20, 24), 3, offsets=o, validate=False) * 2.0

    compiled = torch.compile(labels, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(pts, offsets), labels(pts, offsets))

    def labels_into(p, o, out):
        mud_iknn.density_maps(p, (20, 24), 2.0, offsets=o, validate=False, out=out)
        return out.sum(dim=(1, 2))

    compiled_into = torch.compile(labels_into, backend="aot_eager", fullgraph=True)
    out = torch.full((2, 20, 24), math.nan)
    torch.testing.assert_close(compiled_into(pts, offsets, out), labels_into(pts, offsets, torch.empty(2, 20, 24)))
    assert not out.isnan().any()  # the compiled call wrote the caller's buffer


def test_backend_info_describes_the_build():
    info = mud_iknn.backend_info()
    assert set(info) >= {"cuda_compiled", "cuda_architectures", "cuda_devices", "max_k"}
    assert info["max_k"] == mud_iknn.MAX_K
    assert info["cuda_compiled"] == bool(info["cuda_architectures"])


@pytest.mark.parametrize("size", [(1, 1500), (1500, 1), (2, 900), (700, 3)])
def test_long_thin_maps(device, size):
    rng = np.random.default_rng(sum(size))
    h, w = size
    pts = rng.uniform([-10, -10], [w + 10, h + 10], size=(40, 2)).astype(np.float32)
    for k in (1, 4):
        d = mud_iknn.knn_distance_maps(torch.from_numpy(pts).to(device), size, k)
        assert_distance_close(d, reference.knn_distance_maps(pts, size, k))
    dens = mud_iknn.density_maps(torch.from_numpy(pts).to(device), size)
    ref = reference.density_maps(pts, size)
    np.testing.assert_allclose(as_np(dens), ref, atol=1e-5 * ref.max())


# ---- the CPU search's pruning (a quadtree of each map; candidates beaten by k rivals dropped) ---

def grouped_points(rng, count, height, width, groups=4, spread=6.0):
    """(count, 2) float32 heads in tight knots (`spread` px) with empty ground between them."""
    centres = rng.uniform([0, 0], [width, height], size=(groups, 2))
    return (centres[rng.integers(0, groups, count)] + rng.normal(0, spread, (count, 2))).astype(np.float32)


@pytest.mark.parametrize("threads", [1, 2, 7])
def test_grouped_heads_with_empty_ground_match_reference_on_any_thread_count(threads):
    # Nodes far from every knot keep only the knots' near sides; the thread count changes the task
    # size the quadtree is cut into. k = 1..4 have their own instantiations of the tile rows.
    rng = np.random.default_rng(threads)
    pts = grouped_points(rng, 400, 300, 530)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for k, clip in [(1, None), (2, None), (3, None), (4, 40.0), (5, None), (9, 25.0)]:
            d = mud_iknn.knn_distance_maps(pts, (300, 530), k, max_distance=clip)
            assert_distance_close(d, reference.knn_distance_maps(pts, (300, 530), k, max_distance=clip))
    finally:
        torch.set_num_threads(old)


def test_a_head_that_only_a_corner_pixel_has_as_nearest_is_kept():
    # B is nearer than A to every pixel of the map but (0, 0): A survives only through the corner
    # test of the pruning. Hand-worked: D(0, 0) = 0.6 sqrt(2), D(1, 1) = 0.
    pts = np.array([[-0.6, -0.6], [1.0, 1.0]], dtype=np.float32)
    maps = mud_iknn.knn_distance_maps(pts, (40, 40), 1)
    d = as_np(maps)[0]
    assert d[0, 0] == pytest.approx(0.6 * math.sqrt(2), rel=1e-6)
    assert d[1, 1] == 0.0 and d[0, 1] == pytest.approx(1.0, rel=1e-6)
    assert_distance_close(maps, reference.knn_distance_maps(pts, (40, 40), 1))


def test_equidistant_heads_and_lattices_of_ties_match_reference():
    # Heads on half-pixel lattices: many pixels are equally far from several heads, and rivals tie
    # with the heads they would beat.
    lattice = np.stack(np.meshgrid(np.arange(-8, 72, 16) + 7.5, np.arange(-8, 56, 16) + 7.5), -1).reshape(-1, 2)
    fine = np.stack(np.meshgrid(np.arange(0, 64, 2.0), np.arange(0, 48, 2.0)), -1).reshape(-1, 2)
    mirrored = np.array([[20.0, 3.0], [43.0, 3.0], [31.5, -10.0], [31.5, 60.0]])
    for pts in (lattice, fine, np.concatenate([mirrored, mirrored])):
        pts = pts.astype(np.float32)
        for k in (1, 2, 3, 4, 6):
            d = mud_iknn.knn_distance_maps(pts, (48, 64), k)
            assert_distance_close(d, reference.knn_distance_maps(pts, (48, 64), k))


def test_reused_output_of_several_huge_pages_equals_a_fresh_one():
    pts = grouped_points(np.random.default_rng(4), 300, 1100, 1000)
    fresh = mud_iknn.iknn_maps(pts, (1100, 1000), 1)
    out = torch.full((1, 1100, 1000), math.nan)
    assert mud_iknn.iknn_maps(pts, (1100, 1000), 1, out=out) is out
    assert torch.equal(out, fresh)
