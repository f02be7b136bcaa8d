"""Bayesian loss and DM-Count's OT loss (mud_iknn.point_losses) against hand-worked cases and the
dense float64 references of mud_iknn.reference, on every backend (CPU, emulated CUDA, CUDA)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mud_iknn import reference
from mud_iknn.loss import BayesianLoss, DMCountLoss, OTLoss

import emulated_cuda

# the tests read the differentiable losses as Python floats
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

STRIDE = 8


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda), "emulated"])
def device(request, monkeypatch):
    """The point losses' backends: C++ CPU, CUDA where a GPU is visible, and the CUDA kernels run
    on the CPU emulator (emulated_cuda.install; tensors stay on the CPU)."""
    if request.param == "emulated":
        emulated_cuda.install(request.getfixturevalue("emulated_cuda_library"), monkeypatch)
        return torch.device("cpu")
    return torch.device(request.param)


def _layout(rng, kind, n, height, width):
    """(n, 2) float32 heads of one image of height x width cells (input pixels)."""
    H, W = height * STRIDE, width * STRIDE
    if kind == "uniform":
        pts = rng.uniform(0, [W, H], (n, 2))
    elif kind == "outside":  # a third well beyond the crop (some out of the kernel's reach)
        pts = rng.uniform([-0.8 * W, -0.8 * H], [1.8 * W, 1.8 * H], (n, 2))
    elif kind == "duplicates":
        pts = np.repeat(rng.uniform(0, [W, H], (max(1, n // 3), 2)), 3, axis=0)[:n]
    else:  # "cluster": a dense clump
        pts = rng.uniform(0, [W, H], (1, 2)) + rng.normal(0, 2.0, (n, 2))
    return torch.tensor(pts, dtype=torch.float32)


def _density(rng, batch, height, width, zeros=0.3):
    d = rng.gamma(0.5, 0.2, (batch, 1, height, width)) * (rng.uniform(size=(batch, 1, height, width)) > zeros)
    return torch.tensor(d, dtype=torch.float32)


def _close_grad(got, want):
    scale = float(want.abs().max())
    # (an absolute floor of 1e-12: a gradient that is 0 in exact arithmetic is rounding noise in float64)
    assert float((got.double().cpu() - want).abs().max()) <= 1e-4 * max(scale, 1e-8)


def _bayesian_case(device, density, points, **kw):
    d = density.clone().to(device).requires_grad_()
    loss = BayesianLoss(stride=STRIDE, **kw)(d, [p.to(device) for p in points])
    loss.backward()
    ref_d = density.detach().double().requires_grad_()
    ref = reference.bayesian_loss(ref_d, points, stride=STRIDE, **kw)
    ref.backward()
    return loss, d.grad, ref, ref_d.grad


def _ot_case(device, density, points, **kw):
    d = density.clone().to(device).requires_grad_()
    normed = (density / (density.sum(dim=(1, 2, 3), keepdim=True) + 1e-6)).to(device).requires_grad_()
    loss, wasserstein, objective = OTLoss(stride=STRIDE, **kw)(normed, d, [p.to(device) for p in points])
    (loss + objective).backward()
    ref_d, ref_n = density.detach().double().requires_grad_(), normed.detach().cpu().double().requires_grad_()
    ref_loss, ref_w, ref_obj = reference.ot_loss(ref_n, ref_d, points, stride=STRIDE, **kw)
    (ref_loss + ref_obj).backward()
    return (loss, wasserstein, objective, d.grad, normed.grad), (ref_loss, ref_w, ref_obj, ref_d.grad, ref_n.grad)


# ---- the references on hand-worked cases -----------------------------------------------------

def test_reference_bayesian_one_head_with_background_is_a_two_way_softmax():
    h, w, sigma = 3, 4, 8.0
    head = torch.tensor([[5.0, 13.0]])
    density = torch.rand(1, 1, h, w, dtype=torch.float64)
    d = 32.0  # short side 4 * 8 at ratio 1
    expected_head = 0.0
    expected_bg = 0.0
    for r in range(h):
        for c in range(w):
            dis = (c * 8 + 4 - 5.0) ** 2 + (r * 8 + 4 - 13.0) ** 2
            bg = (d - math.sqrt(dis)) ** 2
            p = 1.0 / (1.0 + math.exp((dis - bg) / (2 * sigma * sigma)))
            expected_head += float(density[0, 0, r, c]) * p
            expected_bg += float(density[0, 0, r, c]) * (1 - p)
    want = abs(1 - expected_head) + abs(expected_bg)
    got = reference.bayesian_loss(density, [head], stride=8, sigma=sigma, background=True)
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_reference_bayesian_without_background_or_heads():
    density = torch.rand(2, 1, 3, 5, dtype=torch.float64)
    one = torch.tensor([[7.0, 2.0]])
    got = reference.bayesian_loss(density, [one, torch.zeros(0, 2)], stride=8, background=False)
    # one head takes every cell's whole mass; an empty image contributes |sum|
    want = (abs(1 - float(density[0].sum())) + float(density[1].sum())) / 2
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_reference_ot_one_head_moves_all_mass_to_it():
    h, w = 4, 4  # reg 100: K >= exp(-6) here, far above the 1e-16 that would hold mass back
    density = torch.rand(1, 1, h, w, dtype=torch.float64) + 0.1
    normed = density / density.sum()
    head = torch.tensor([[14.0, 17.0]])
    _, wasserstein, _ = reference.ot_loss(normed, density, [head], stride=8, reg=100.0)
    C = reference.cell_squared_distances(head, h, w, 8)[0]
    assert wasserstein == pytest.approx(float((C * normed.reshape(-1)).sum()), rel=1e-9)


def test_reference_ot_kernel_is_zero_where_float32_exp_underflows():
    C = torch.tensor([[0.0, 10.0 * 103.0, 10.0 * 104.0]], dtype=torch.float64)
    _, _, K = reference.sinkhorn_knopp(torch.ones(1), torch.full((3,), 1 / 3, dtype=torch.float64), C, 10.0, 1)
    assert float(torch.exp(torch.tensor(-104.0, dtype=torch.float32))) == 0.0
    assert K[0, 1] > 0 and K[0, 2] == 0


# ---- kernels against the references ------------------------------------------------------------

@pytest.mark.parametrize("background", [True, False])
def test_bayesian_one_head_and_empty_image(device, background):
    density = _density(np.random.default_rng(1), 2, 5, 6)
    points = [torch.tensor([[20.0, 9.0]]), torch.zeros(0, 2)]
    loss, grad, ref, ref_grad = _bayesian_case(device, density, points, background=background)
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    _close_grad(grad, ref_grad)


@pytest.mark.parametrize("normalize", [False, True])
def test_ot_one_head(device, normalize):
    density = _density(np.random.default_rng(2), 1, 6, 5, zeros=0.0)
    got, want = _ot_case(device, density, [torch.tensor([[17.0, 30.0]])], normalize_coordinates=normalize)
    assert float(got[1]) == pytest.approx(want[1], rel=1e-5)
    assert float(got[2]) == pytest.approx(float(want[2]), abs=1e-4)


LAYOUTS = st.lists(st.tuples(st.sampled_from(["uniform", "outside", "duplicates", "cluster"]),
                             st.integers(0, 40)), min_size=1, max_size=3)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layouts=LAYOUTS, seed=st.integers(0, 2**31), height=st.integers(1, 9), width=st.integers(1, 9),
       sigma=st.sampled_from([2.0, 8.0, 15.0]), background=st.booleans())
def test_bayesian_matches_dense(device, layouts, seed, height, width, sigma, background):
    rng = np.random.default_rng(seed)
    points = [_layout(rng, kind, n, height, width) for kind, n in layouts]
    density = _density(rng, len(points), height, width)
    sides = torch.tensor(rng.uniform(8, 200, len(points)))
    d = density.clone().to(device).requires_grad_()
    criterion = BayesianLoss(sigma=sigma, stride=STRIDE, background=background, background_ratio=0.7)
    loss = criterion(d, [p.to(device) for p in points], sides)
    loss.backward()
    ref_d = density.detach().double().requires_grad_()
    ref = reference.bayesian_loss(ref_d, points, STRIDE, sigma, background, 0.7, sides.tolist())
    ref.backward()
    assert float(loss) == pytest.approx(float(ref), rel=1e-5, abs=1e-7)
    _close_grad(d.grad, ref_d.grad)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layouts=LAYOUTS, seed=st.integers(0, 2**31), height=st.integers(1, 9), width=st.integers(1, 9),
       reg=st.sampled_from([1.0, 10.0, 40.0]), normalize=st.booleans(), iterations=st.sampled_from([1, 10, 25, 100]))
def test_ot_matches_dense(device, layouts, seed, height, width, reg, normalize, iterations):
    rng = np.random.default_rng(seed)
    points = [_layout(rng, kind, n, height, width) for kind, n in layouts]
    density = _density(rng, len(points), height, width)
    got, want = _ot_case(device, density, points, reg=reg, iterations=iterations, normalize_coordinates=normalize)
    loss, wasserstein, objective, grad, normed_grad = got
    ref_loss, ref_w, ref_obj, ref_grad, ref_normed_grad = want
    scale = float((ref_normed_grad.abs().max() * density.sum())) + 1e-12  # |beta| * mass: the loss's rounding
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * scale
    assert float(wasserstein) == pytest.approx(ref_w, rel=1e-5, abs=1e-9)
    assert float(objective) == pytest.approx(float(ref_obj), abs=1e-4, rel=1e-6)
    _close_grad(grad, ref_grad)
    _close_grad(normed_grad, ref_normed_grad)


def test_emulated_cuda_on_several_tiles_and_head_chunks(emulated_cuda_library, monkeypatch):
    """Maps of several 16 x 16 tiles and more heads than a block stages at once: equal to the
    references, and bit for bit the same whether the emulated threads run in order or warps run
    ahead with the blocks last first (no race, no order-dependent sum)."""
    library = emulated_cuda_library
    emulated_cuda.install(library, monkeypatch)
    rng = np.random.default_rng(6)
    height, width = 20, 37
    points = [torch.cat([_layout(rng, "cluster", 200, height, width), _layout(rng, "outside", 150, height, width)]),
              _layout(rng, "uniform", 40, height, width)]
    density = _density(rng, 2, height, width)
    runs = []
    try:
        for schedule in ("in order", "warps ahead, last first"):
            library.emulator_set_schedule(emulated_cuda.SCHEDULES[schedule])
            runs.append((_bayesian_case("cpu", density, points), _ot_case("cpu", density, points, iterations=20)))
    finally:
        library.emulator_set_schedule(emulated_cuda.SCHEDULES["in order"])
    (loss, grad, ref, ref_grad), (got, want) = runs[0]
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    _close_grad(grad, ref_grad)
    assert float(got[1]) == pytest.approx(want[1], rel=1e-5)
    assert float(got[2]) == pytest.approx(float(want[2]), abs=1e-4)
    _close_grad(got[3], want[3])
    (loss2, grad2, _, _), (got2, _) = runs[1]
    assert loss2.item() == loss.item() and torch.equal(grad2, grad)
    assert [t.item() for t in got2[:3]] == [t.item() for t in got[:3]] and torch.equal(got2[3], got[3])


def _dm_count_discrete_maps(points, height, width):
    """(B, height, width) float64 stride count maps as DM-Count's gen_discrete_map + its stride sum:
    min(round(x), W - 1), min(round(y), H - 1) for the crop's heads (0 <= x <= W, 0 <= y <= H);
    heads beyond count nowhere (DM-Count's crop drops them)."""
    maps = torch.zeros(len(points), height, width, dtype=torch.float64)
    W, H = width * STRIDE, height * STRIDE
    for b, p in enumerate(points):
        for x, y in p.tolist():
            if x > W or y > H:
                continue
            col, row = min(math.floor(x + 0.5), W - 1), min(math.floor(y + 0.5), H - 1)  # the nearest pixel
            if 0 <= col and 0 <= row:
                maps[b, row // STRIDE, col // STRIDE] += 1
    return maps


def test_dm_count_tv_counts_heads_past_the_last_pixel_centre_as_dm_count_does(device):
    """A head of the crop in its last half pixel (W - 0.5 <= x <= W) is in DM-Count's discrete map
    (min(round(x), W - 1)): the TV target still sums to N / (N + 1e-6)."""
    height, width = 4, 5  # a 40 x 32 px crop
    points = [torch.tensor([[39.7, 10.0], [12.0, 31.8], [40.0, 32.0], [5.0, 5.0], [41.0, 3.0]])]
    density = _density(np.random.default_rng(8), 1, height, width, zeros=0.0)
    d = density.clone().to(device).requires_grad_()
    tv = DMCountLoss(stride=STRIDE).terms(d, [p.to(device) for p in points])["tv"]
    tv.backward()
    ref_d = density.detach().double().requires_grad_()
    normed = ref_d / (ref_d.sum() + 1e-6)
    maps = _dm_count_discrete_maps(points, height, width)
    assert float(maps.sum()) == 4  # the one at x = 41 is outside DM-Count's crop
    ref = 0.01 * ((normed[:, 0] - maps / (5 + 1e-6)).abs().sum() * 5)
    ref.backward()
    assert float(tv) == pytest.approx(float(ref), rel=1e-5)
    _close_grad(d.grad, ref_d.grad)


def test_bayesian_loss_is_float64_exact_for_a_float64_density(device):
    """A float64 density is not rounded to float32 first: the loss equals the dense float64 one to
    float64 rounding, and gradcheck holds."""
    rng = np.random.default_rng(9)
    points = [_layout(rng, "uniform", 4, 3, 4), torch.zeros(0, 2), _layout(rng, "outside", 3, 3, 4)]
    density = torch.tensor(rng.uniform(0.3, 1.3, (3, 1, 3, 4)), dtype=torch.float64)
    criterion = BayesianLoss(stride=STRIDE)
    got = criterion(density.to(device), [p.to(device) for p in points])
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(float(reference.bayesian_loss(density, points, stride=STRIDE)), rel=1e-12)
    d = density.to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: criterion.expected_counts(x, [p.to(device) for p in points])[0], (d,),
                                    eps=1e-6, atol=1e-6)


def test_half_densities_are_taken_in_float32():
    """float16 can't hold 3001 heads nor a sum's units past 2048: the count term, the TV term and the
    Bayesian loss are those of the same values in float32, and the Bayesian loss does not overflow
    float16 past 65504."""
    torch.manual_seed(0)
    points = [torch.rand(3001, 2) * 512]
    density = (torch.rand(1, 1, 64, 64) * 2 * 3004.3 / 4096).half()
    half, single = DMCountLoss(stride=STRIDE).terms(density, points), DMCountLoss(stride=STRIDE).terms(density.float(),
                                                                                                    points)
    assert float(half["count"]) == pytest.approx(abs(float(density.double().sum()) - 3001), rel=1e-5)
    for name in ("count", "tv", "ot"):
        assert float(half[name]) == float(single[name])
    big = torch.full((1, 1, 64, 64), 30.0, dtype=torch.float16)  # 122880 on an image without heads
    loss = BayesianLoss(stride=STRIDE)(big, [torch.zeros(0, 2)])
    assert loss.dtype == torch.float32 and float(loss) == 122880.0


def test_dm_count_loss_matches_its_dense_composition(device):
    rng = np.random.default_rng(3)
    points = [_layout(rng, "uniform", 12, 6, 7), _layout(rng, "cluster", 5, 6, 7), torch.zeros(0, 2)]
    density = _density(rng, 3, 6, 7)
    d = density.clone().to(device).requires_grad_()
    loss = DMCountLoss(stride=STRIDE)(d, [p.to(device) for p in points])
    loss.backward()
    # DM-Count's train_helper.py, term by term, on the dense reference.
    ref_d = density.detach().double().requires_grad_()
    normed = ref_d / (ref_d.sum(dim=(1, 2, 3), keepdim=True) + 1e-6)
    ot, _, _ = reference.ot_loss(normed, ref_d, points, stride=STRIDE)
    counts = torch.tensor([len(p) for p in points], dtype=torch.float64)
    count_loss = (ref_d.sum(dim=(1, 2, 3)) - counts).abs().mean()
    maps = _dm_count_discrete_maps(points, 6, 7)
    tv = ((normed[:, 0] - maps / (counts[:, None, None] + 1e-6)).abs().sum(dim=(1, 2)) * counts).mean()
    ref = 0.1 * ot + count_loss + 0.01 * tv
    ref.backward()
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    _close_grad(d.grad, ref_d.grad)


def test_results_are_deterministic_and_independent_of_threads(device):
    rng = np.random.default_rng(4)
    points = [_layout(rng, "cluster", 60, 9, 9), _layout(rng, "outside", 30, 9, 9)]
    density = _density(rng, 2, 9, 9)
    runs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            d = density.clone().to(device).requires_grad_()
            bl = BayesianLoss(stride=STRIDE)(d, [p.to(device) for p in points])
            bl.backward()
            ot = DMCountLoss(stride=STRIDE).terms(density.to(device), [p.to(device) for p in points])
            runs.append((bl.item(), d.grad.cpu(), ot["wasserstein"].item(), ot["objective"].item()))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        assert run[0] == runs[0][0] and torch.equal(run[1], runs[0][1])
        assert run[2:] == runs[0][2:]


def test_points_four_bytes_into_their_buffer(device):
    # An (N, 2) float32 view starting 4 bytes into its storage (the label kernels, which read a head
    # as one 8-byte float2, get a copy; the loss kernels read x and y apart): the same losses.
    flat = torch.tensor([0.0, 3.5, 2.0, 12.25, 4.0, 6.0, 1.0, 20.0, 9.5], device=device)
    view = flat[1:].view(-1, 2)
    assert view.data_ptr() % 8 == 4
    density = _density(np.random.default_rng(5), 1, 4, 4).to(device)
    for loss in (BayesianLoss(stride=STRIDE), lambda d, p: DMCountLoss(stride=STRIDE).terms(d, p)["wasserstein"]):
        assert torch.equal(loss(density, [view]), loss(density, [view.clone()]))


def test_validate_false_skips_only_the_value_checks(device):
    # validate=False (no flag read back from the device) gives the same bits on good inputs, lets bad
    # values through instead of raising, and still refuses wrong shapes.
    rng = np.random.default_rng(6)
    points = [_layout(rng, "cluster", 20, 5, 6).to(device), _layout(rng, "outside", 7, 5, 6).to(device)]
    density = _density(rng, 2, 5, 6).to(device)
    for make in (lambda v: BayesianLoss(stride=STRIDE, validate=v), lambda v: DMCountLoss(stride=STRIDE, validate=v)):
        assert torch.equal(make(False)(density, points), make(True)(density, points))
    normed = density / density.sum(dim=(1, 2, 3), keepdim=True)
    checked = OTLoss(stride=STRIDE)(normed, density, points)
    unchecked = OTLoss(stride=STRIDE, validate=False)(normed, density, points)
    assert all(torch.equal(a, b) for a, b in zip(checked, unchecked))
    bad_density, bad_points = density.clone(), [points[0].clone(), points[1]]
    bad_density[0, 0, 1, 1] = math.nan
    bad_points[0][3, 0] = math.nan
    with pytest.raises(ValueError, match="density must be finite"):
        DMCountLoss(stride=STRIDE)(bad_density, points)
    with pytest.raises(ValueError, match="finite"):
        BayesianLoss(stride=STRIDE)(density, bad_points)
    DMCountLoss(stride=STRIDE, validate=False)(bad_density, points)
    BayesianLoss(stride=STRIDE, validate=False)(density, bad_points)
    with pytest.raises(ValueError, match="density must have shape"):
        BayesianLoss(stride=STRIDE, validate=False)(density[:, 0], points)


def test_packed_points_with_offsets_equal_the_list():
    rng = np.random.default_rng(5)
    points = [_layout(rng, "uniform", 9, 4, 4), _layout(rng, "uniform", 3, 4, 4)]
    density = _density(rng, 2, 4, 4)
    packed, offsets = torch.cat(points), torch.tensor([0, 9, 12])
    criterion = BayesianLoss(stride=STRIDE)
    assert criterion(density, points).item() == criterion(density, packed, offsets=offsets).item()
    ot = OTLoss(stride=STRIDE)
    normed = density / density.sum(dim=(1, 2, 3), keepdim=True)
    assert [t.item() for t in ot(normed, density, points)] == [t.item() for t in ot(normed, density, packed,
                                                                                      offsets=offsets)]


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("make, error, word", [
    (lambda: BayesianLoss(sigma=0.0), ValueError, "sigma"),
    (lambda: BayesianLoss(sigma=-1.0), ValueError, "sigma"),
    (lambda: BayesianLoss(stride=0), ValueError, "stride"),
    (lambda: BayesianLoss(stride=2.5), TypeError, "stride"),
    (lambda: BayesianLoss(background_ratio=0.0), ValueError, "background_ratio"),
    (lambda: OTLoss(reg=0.0), ValueError, "reg"),
    (lambda: OTLoss(reg=float("nan")), ValueError, "reg"),
    (lambda: OTLoss(stride=-8), ValueError, "stride"),
    (lambda: OTLoss(iterations=0), ValueError, "iterations"),
    (lambda: DMCountLoss(reg=-1.0), ValueError, "reg"),
])
def test_bad_parameters_name_the_argument(make, error, word):
    with pytest.raises(error, match=word):
        make()


def test_numpy_integers_are_parameters_like_python_ones():
    assert BayesianLoss(stride=np.int64(4)).stride == 4 and type(OTLoss(iterations=np.int64(10)).iterations) is int


def test_bad_inputs_name_the_argument():
    bl, ot = BayesianLoss(), OTLoss()
    density = torch.rand(2, 1, 4, 4)
    points = [torch.rand(3, 2) * 32, torch.rand(2, 2) * 32]
    with pytest.raises(ValueError, match="density"):
        bl(torch.rand(2, 4, 4), points)
    with pytest.raises(ValueError, match="density"):
        bl(torch.rand(2, 3, 4, 4), points)
    with pytest.raises(TypeError, match="density"):
        bl(torch.ones(2, 1, 4, 4, dtype=torch.int64), points)
    with pytest.raises(ValueError, match="points"):
        bl(density, points[:1])
    with pytest.raises(ValueError, match="short_sides"):
        bl(density, points, [32.0])
    with pytest.raises(ValueError, match="points"):
        bl(density, [torch.tensor([[float("nan"), 1.0]]), points[1]])
    with pytest.raises(ValueError, match="normed_density"):
        ot(torch.rand(2, 1, 4, 5), density, points)
    with pytest.raises(ValueError, match="normed_density"):
        ot(-density, density, points)
    with pytest.raises(ValueError, match="points"):
        ot(density, density, points + points)
    with pytest.raises(ValueError, match="density"):
        DMCountLoss()(-density, points)  # not "normed_density", which the caller didn't pass
    with pytest.raises(ValueError, match="iterations"):
        OTLoss(iterations=2**40)  # past the kernels' int
    for criterion in (bl, DMCountLoss()):
        with pytest.raises(ValueError, match="density must have at least one cell"):
            criterion(torch.rand(2, 1, 0, 4), points)
    with pytest.raises(ValueError, match="density must have at least one cell"):
        OTLoss(normalize_coordinates=True)(torch.rand(2, 1, 0, 4), torch.rand(2, 1, 0, 4), points)
