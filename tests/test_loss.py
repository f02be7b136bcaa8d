"""The loss against hand-worked values (the label kinds it is trained against: test_labels_registry.py)."""

import pytest
import torch

from mud_iknn.loss import MUDLoss, count_loss, map_loss


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
