"""The loss against hand-worked values, and the label variants it is trained against."""

import numpy as np
import pytest
import torch

from mud_iknn import reference
from mud_iknn.loss import LabelSpec, MUDLoss, count_loss, map_loss


def test_count_loss_hand_worked():
    # errors -1 and 2: (1 + 4) / 2
    assert count_loss(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0])).item() == pytest.approx(2.5)


def test_map_loss_hand_worked():
    label = torch.full((2, 2, 2), 0.5)
    maps = torch.zeros(2, 2, 2, 2)
    maps[0, 0] = 1.0          # image 0: channel errors 0.5 and 0.5 per pixel -> mean 0.5, sum over 4 px = 2, squared 4
    maps[1] = 0.5             # image 1: exact -> 0
    assert map_loss(maps, label).item() == pytest.approx((4.0 + 0.0) / 2)
    # a (B, 1, H, W) label is the same thing
    assert map_loss(maps, label[:, None]).item() == pytest.approx(2.0)


def test_map_loss_averages_channels_before_summing_pixels():
    # channel errors +1 and -1 at one pixel: |.| first, then the channel mean -> 1, not 0
    maps = torch.zeros(1, 2, 1, 2)
    maps[0, 0, 0, 0], maps[0, 1, 0, 0] = 1.0, -1.0
    assert map_loss(maps, torch.zeros(1, 1, 2)).item() == pytest.approx(1.0)


def test_mud_loss_combines_with_lambda():
    label = torch.full((2, 2, 2), 0.5)
    maps = torch.zeros(2, 2, 2, 2)
    maps[0, 0] = 1.0
    maps[1] = 0.5
    counts, true = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0])
    total, parts = MUDLoss()(maps, counts, label, true)
    assert total.item() == pytest.approx(2.5 + 2.0)
    total, parts = MUDLoss(map_weight=0.5)(maps, counts, label, true)
    assert total.item() == pytest.approx(2.5 + 1.0)
    assert parts["count_loss"].item() == pytest.approx(2.5) and parts["map_loss"].item() == pytest.approx(2.0)


def test_loss_shape_errors():
    with pytest.raises(ValueError, match="counts"):
        count_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="label"):
        map_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="map_weight"):
        MUDLoss(map_weight=-1)


def _packed(rng, sizes, extent):
    pts = [rng.uniform(-4, extent + 4, size=(n, 2)).astype(np.float32) for n in sizes]
    points = torch.from_numpy(np.concatenate(pts))
    offsets = torch.tensor(np.cumsum([0] + list(sizes)), dtype=torch.int64)
    return pts, points, offsets


def test_iknn_label_matches_reference():
    rng = np.random.default_rng(0)
    pts, points, offsets = _packed(rng, [5, 0, 9], 24)
    spec = LabelSpec("iknn", k=2, max_distance=10.0)
    got = spec.make(points, offsets, (24, 24)).numpy()
    want = reference.iknn_maps(pts, (24, 24), 2, max_distance=10.0)
    assert got.shape == (3, 24, 24)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.all(got[1] == 0)  # no heads: M = 1 / (inf + 1) = 0


def test_density_label_matches_reference():
    rng = np.random.default_rng(1)
    pts, points, offsets = _packed(rng, [6, 3], 32)
    spec = LabelSpec("density")
    assert spec.neighbours == 3 and LabelSpec().neighbours == 1
    got = spec.make(points, offsets, (32, 32)).numpy()
    want = reference.density_maps(pts, (32, 32), "adaptive", k=3, beta=0.3)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_label_stride_maps_points_to_label_pixels():
    # stride 2: label pixel (i, j) covers input pixels [2i, 2i + 2) x [2j, 2j + 2), centre (2j + 0.5, 2i + 0.5)
    points = torch.tensor([[4.5, 6.5]])
    offsets = torch.tensor([0, 1])
    label = LabelSpec().make(points, offsets, (8, 8), stride=2)
    assert label[0, 3, 2].item() == pytest.approx(1.0)
    assert label[0, 3, 3].item() == pytest.approx(0.5)  # one label pixel away: 1 / (1 + 1)


def test_label_spec_validation_and_round_trip():
    for bad in [dict(kind="gauss"), dict(k=0), dict(transform="log"), dict(max_distance=-1.0),
                dict(sigma="fixed")]:
        with pytest.raises(ValueError, match="label"):
            LabelSpec(**bad)
    spec = LabelSpec("iknn", k=3, transform="inverse_sqrt", max_distance=112.0)
    assert LabelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown"):
        LabelSpec.from_dict({"kind": "iknn", "radius": 3})


def test_count_only_loss_is_the_count_loss_and_needs_no_label():
    counts = torch.tensor([1.0, 3.0], requires_grad=True)
    true = torch.tensor([2.0, 1.0])
    no_maps = torch.zeros(2, 0, 4, 4)
    for weight in (1.0, 0.5):
        total, parts = MUDLoss(map_weight=weight)(no_maps, counts, None, true)
        assert total.item() == 2.5 and parts["count_loss"].item() == 2.5  # (1 + 4) / 2, as above
        assert parts["map_loss"].item() == 0.0 and torch.isfinite(total)
    total.backward()
    torch.testing.assert_close(counts.grad, torch.tensor([-1.0, 2.0]))  # d/dc mean((c - t)^2) = (c - t)
    # maps with channels still need their label
    with pytest.raises(ValueError, match="label"):
        MUDLoss()(torch.zeros(2, 3, 4, 4), counts, None, true)
    # map_loss refuses to average over no channels (it would be NaN)
    with pytest.raises(ValueError, match="no channels"):
        map_loss(no_maps, torch.zeros(2, 4, 4))
