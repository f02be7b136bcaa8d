"""Sliding-window counting and locating against analytic values, the count metrics, GAME, NWPU files."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from mud_iknn.evaluate import (count_metrics, evaluate, game_errors, predict_image, upsample_maps, window_starts,
                               write_nwpu_counts, write_nwpu_points)
from mud_iknn.label_kinds import IknnLabel
from mud_iknn.sample import CrowdSample


class ConstantCount(nn.Module):
    """Predicts the same count c for every window (and empty maps)."""

    def __init__(self, c):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(float(c)))
        self.windows = []

    def forward(self, images):
        self.windows.append(tuple(images.shape))
        return images.new_zeros(images.shape[0], 3, *images.shape[-2:]).float(), self.c.expand(images.shape[0])


def _image(h, w):
    return torch.full((3, h, w), 7, dtype=torch.uint8)


def test_window_starts():
    assert window_starts(224, 224, 128) == [0]
    assert window_starts(100, 224, 128) == [0]  # the one window overhangs: the image is padded
    assert window_starts(352, 224, 128) == [0, 128]
    assert window_starts(353, 224, 128) == [0, 128, 129]  # the last window flush with the border
    assert window_starts(512, 64, 36) == [0, 36, 72, 108, 144, 180, 216, 252, 288, 324, 360, 396, 432, 448]
    for length, window, stride in [(512, 64, 36), (384, 64, 36), (1000, 224, 128), (65, 64, 1), (300, 64, 64)]:
        starts = window_starts(length, window, stride)  # inside, covering, no gap beyond the stride
        assert starts[0] == 0 and starts[-1] + window == length
        assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))
    with pytest.raises(ValueError, match="stride"):
        window_starts(300, 224, 300)


@pytest.mark.parametrize("height,width,expected", [
    (224, 224, 1.0),
    (100, 150, 1.0),              # one window, spread over the 100 x 150 image pixels
    (224, 352, 352 / 224),        # two full windows, every pixel c / 224^2
    # windows at x = 0 and 76 (flush with the border), both inside: every pixel c / 224^2
    (224, 300, 300 / 224),
    (100, 300, 300 / 224),        # windows at x = 0 and 76, each spread over its 100 x 224 image pixels
])
def test_constant_count_model_gives_the_analytic_total(height, width, expected):
    c = 10.0
    count, density, iknn_map, points = predict_image(ConstantCount(c), _image(height, width))
    assert iknn_map.shape == (height, width) and float(iknn_map.abs().max()) == 0 and points.shape == (0, 2)
    assert density.shape == (height, width)
    assert count == pytest.approx(c * expected, rel=1e-6)
    assert float(density.double().sum()) == pytest.approx(count, rel=1e-5)


def test_windows_are_batched_and_model_mode_restored():
    model = ConstantCount(1.0).train()
    predict_image(model, _image(480, 480), batch_size=4)  # 3 x 3 windows of 224
    assert [w[0] for w in model.windows] == [4, 4, 1]
    assert all(w[1:] == (3, 224, 224) for w in model.windows)
    assert model.training


def test_count_metrics_hand_worked():
    m = count_metrics([10.0, 20.0], [12.0, 16.0])
    assert m["mae"] == pytest.approx(3.0)
    assert m["rmse"] == pytest.approx(math.sqrt(10.0))
    assert m["nae"] == pytest.approx((2 / 12 + 4 / 16) / 2)
    assert math.isnan(count_metrics([1.0], [0.0])["nae"])
    with pytest.raises(ValueError):
        count_metrics([1.0], [1.0, 2.0])


def test_evaluate_dataset():
    data = [CrowdSample(_image(224, 224), torch.zeros(4, 2), name="a"),
            CrowdSample(_image(224, 352), torch.zeros(10, 2), name="b")]
    result = evaluate(ConstantCount(8.0), data)
    predicted = [8.0, 8.0 * 352 / 224]
    assert [r["name"] for r in result["per_image"]] == ["a", "b"]
    assert [r["predicted"] for r in result["per_image"]] == pytest.approx(predicted)
    assert result["mae"] == pytest.approx((4 + abs(predicted[1] - 10)) / 2)


def test_predict_image_rejects_bad_images():
    with pytest.raises(TypeError, match="uint8"):
        predict_image(ConstantCount(1), torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="image"):
        predict_image(ConstantCount(1), torch.zeros(8, 8, dtype=torch.uint8))


# ------------------------------------------------------------------ stitched maps, located heads

class BrightnessMaps(nn.Module):
    """Maps = channel 0 / 255 (+0, +0.1, +0.2 on the three channels: mean +0.1), at 1/``stride`` of
    the window (every ``stride``-th pixel); counts: 0."""

    def __init__(self, stride=1):
        super().__init__()
        self.stride, self.p = stride, nn.Parameter(torch.zeros(()))

    def forward(self, images):
        m = images[:, :1, ::self.stride, ::self.stride].float() / 255
        return torch.cat([m, m + 0.1, m + 0.2], 1), images.new_zeros(images.shape[0]).float()


class WindowNumber(nn.Module):
    """Every window's map is constant: the window's number 1, 2, ... in the order seen."""

    def __init__(self):
        super().__init__()
        self.p, self.seen = nn.Parameter(torch.zeros(())), 0

    def forward(self, images):
        numbers = torch.arange(self.seen + 1, self.seen + 1 + images.shape[0], dtype=torch.float32)
        self.seen += images.shape[0]
        return numbers[:, None, None, None].expand(-1, 3, 56, 56), torch.zeros(images.shape[0])


def test_stitched_map_is_the_mean_of_the_windows_maps():
    # 224 x 300: windows at x = 0 and 76; x < 76 in the first only, 76..223 in both, >= 224 the second
    iknn_map = predict_image(WindowNumber(), _image(224, 300)).iknn_map  # maps at 1/4 of the window
    assert iknn_map.shape == (224, 300)
    assert iknn_map[:, :76].unique().tolist() == [1.0]
    assert iknn_map[:, 76:224].unique().tolist() == [1.5]
    assert iknn_map[:, 224:].unique().tolist() == [2.0]
    skipped = predict_image(WindowNumber(), _image(224, 300), locate=False)
    assert skipped.iknn_map is None and skipped.points is None and skipped.density.shape == (224, 300)


@pytest.mark.parametrize("stride", [1, 2])
def test_heads_located_on_the_stitched_map_in_image_pixels(stride):
    image = torch.zeros(3, 300, 400, dtype=torch.uint8)
    heads = [(10, 12), (150, 100), (300, 290), (398, 200)]  # (x, y), one in the windows' overlap
    for x, y in heads:
        image[:, y, x] = 255
    result = predict_image(BrightnessMaps(), image)
    assert torch.allclose(result.iknn_map, image[0].float() / 255 + 0.1, atol=1e-6)  # aligned with the image
    assert sorted(map(tuple, result.points.tolist())) == sorted((float(x), float(y)) for x, y in heads)
    assert result.count == 0
    # maps coarser than the window are upsampled to it: heads within the label pixel they fall in
    image = torch.zeros(3, 240, 260, dtype=torch.uint8)
    image[:, 100, 50] = image[:, 40, 200] = 255
    found = predict_image(BrightnessMaps(stride), image).points
    assert found.shape == (2, 2) and (found - torch.tensor([[50.0, 100.0], [200.0, 40.0]]).flip(0)).abs().max() <= stride


class ExactLabels(nn.Module):
    """Maps: the exact ikNN labels, at 1/``stride`` of the window as a label_size model learns them,
    of the heads drawn as 255 pixels; counts: their number."""

    def __init__(self, stride):
        super().__init__()
        self.stride, self.p = stride, nn.Parameter(torch.zeros(()))

    def forward(self, images):
        points = [(image[0] == 255).nonzero().flip(1).float() for image in images]
        side = images.shape[-1] // self.stride
        maps = IknnLabel().make(torch.cat(points), (side, side), torch.tensor([0, *map(len, points)]).cumsum(0),
                                stride=self.stride)
        return maps[:, None], torch.tensor([float(len(p)) for p in points])


def test_upsampled_label_pixels_sit_at_their_blocks_centres_for_any_window():
    # a 250 px window at label stride 4: ceil(250 / 4) = 63 label pixels, pixel r covering [4r, 4r + 4)
    maps = torch.zeros(1, 1, 63, 63)
    maps[0, 0, 10, 62] = 1.0
    up = upsample_maps(maps, 250)
    assert up.shape == (1, 1, 250, 250)
    peak = (up[0, 0] == up.max()).nonzero().tolist()
    assert peak == [[41, 249], [42, 249]]  # rows 41.5 = 4 * 10 + 1.5; column 249.5 lies past the window
    assert up[0, 0, 41, 240] < up[0, 0, 41, 249]  # no flat band at the border: extrapolated, not clamped
    with pytest.raises(ValueError, match="label stride of a power of two"):
        upsample_maps(torch.zeros(1, 1, 60, 60), 250)


@pytest.mark.parametrize("stride", [2, 4])
def test_coarse_maps_locate_each_head_once(stride):
    # 12 heads 24 px or more apart: the upsampled label-pixel blocks must not turn into plateaus on
    # every slope, nor the windows' borders into flat bands (each a row of spurious peaks with
    # min_distance below the stride). (At stride 8, 3 label pixels between heads, the windows' seams
    # in the stitched map still add a few.)
    heads = torch.tensor([[x, y] for x in (20, 60, 100, 140) for y in (30, 90, 150)], dtype=torch.float32)
    heads += torch.tensor([[3.0, 1.0]]) * (torch.arange(12)[:, None] % 3)
    image = torch.zeros(3, 192, 176, dtype=torch.uint8)
    image[:, heads[:, 1].long(), heads[:, 0].long()] = 255
    found = predict_image(ExactLabels(stride), image, window=128, stride=64, threshold=0.1, min_distance=1).points
    assert len(found) == len(heads)
    nearest = torch.cdist(heads, found).min(1).values
    assert nearest.max() <= stride / 2 + 1, nearest  # within the label pixel that holds the head


def test_count_only_model_has_no_map():
    class CountOnly(ConstantCount):
        def forward(self, images):
            return images.new_zeros(images.shape[0], 0, *images.shape[-2:]).float(), self.c.expand(images.shape[0])

    result = predict_image(CountOnly(3.0), _image(224, 224))
    assert result.count == pytest.approx(3.0) and result.iknn_map is None and result.points is None


# ------------------------------------------------------------------ GAME

def test_game_hand_worked():
    density = torch.zeros(4, 4)
    density[0, 0], density[3, 3] = 2.0, 1.0
    points = [[0.0, 0.0], [3.0, 0.0], [3.2, 2.6], [-0.4, 5.2]]  # the last clamps to the corner pixel (3, 0)
    # L=0: |3 - 4|; L=1 (2x2 px cells): TL 2 vs 1, TR 0 vs 1, BL 0 vs 1, BR 1 vs 1; L=2, 3: per pixel
    assert game_errors(density, points) == [1.0, 3.0, 3.0, 3.0]
    # 5 rows in 2 cells: rows 0-1 and 2-4 (floor(c * 5 / 2) bounds)
    density = torch.zeros(5, 1)
    density[2, 0] = 1.0
    assert game_errors(density, [[0.0, 2.0]], levels=[1]) == [0.0]
    assert game_errors(density, [[0.0, 1.0]], levels=[1]) == [2.0]
    with pytest.raises(ValueError, match="levels"):
        game_errors(density, [[0.0, 1.0]], levels=[-1])


# ------------------------------------------------------------------ evaluate: localization, categories

def _dotted(height, width, heads):
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    for x, y in heads:
        image[:, int(y), int(x)] = 255
    return image


def test_evaluate_localization_categories_and_head_boxes():
    heads_a, heads_b = [[10.0, 10.0], [50.0, 40.0]], [[20.0, 30.0]]
    data = [CrowdSample(_dotted(64, 80, heads_a), torch.tensor(heads_a), name="a",
                        meta={"boxes": np.array([[4.0, 4.0], [10.0, 6.0]]), "categories": ["low"]}),
            CrowdSample(_dotted(64, 80, heads_b[:0]), torch.tensor(heads_b), name="b",  # its head is missed
                        meta={"boxes": np.array([[8.0, 8.0]]), "categories": ["low", "weather"]})]
    result = evaluate(BrightnessMaps(), data, window=64, stride=32, localization=True, thresholds=(4,))
    assert set(result["localization"]) == {"4px", "sigma_s", "sigma_l"}
    alone = evaluate(BrightnessMaps(), data, window=64, stride=32, localization=True, thresholds=4)  # one threshold
    assert alone["localization"] == result["localization"]
    assert {k: result["localization"]["4px"][k] for k in ("tp", "fp", "fn")} == {"tp": 2, "fp": 0, "fn": 1}
    assert sorted(result["per_image"][0]["points"]) == [[10.0, 10.0], [50.0, 40.0]]
    assert result["categories"]["low"]["images"] == 2 and result["categories"]["weather"]["images"] == 1
    assert result["categories"]["weather"]["localization"]["4px"]["fn"] == 1
    assert result["categories"]["weather"]["mae"] == pytest.approx(1.0)  # counts 0 (the model) vs 1
    assert result["game"]["0"] == pytest.approx((2 + 1) / 2)
    predictions = evaluate(BrightnessMaps(), data, window=64, stride=32, labels=False, localization=True)
    assert set(predictions) == {"per_image"} and set(predictions["per_image"][0]) == {"name", "predicted", "points"}


# ------------------------------------------------------------------ NWPU-Crowd's submission files

def test_nwpu_files_written_and_read_back(tmp_path):
    per_image = [{"name": "3611", "predicted": 2.24567, "points": [[1.4, 2.6], [10.5, 3.49]]},
                 {"name": "3610", "predicted": 0.0, "points": []}]
    write_nwpu_counts(tmp_path / "counts.txt", per_image)
    write_nwpu_points(tmp_path / "points.txt", per_image)
    counts = [line.split() for line in (tmp_path / "counts.txt").read_text().splitlines()]
    assert counts == [["3610", "0.0000"], ["3611", "2.2457"]]  # in id order
    lines = [list(map(int, line.split())) for line in (tmp_path / "points.txt").read_text().splitlines()]
    assert lines == [[3610, 0], [3611, 2, 1, 3, 10, 3]]  # integers, as the server reads them (10.5 -> 10: even)
    for line in lines:
        assert len(line) == 2 + 2 * line[1]
    with pytest.raises(ValueError, match="numeric image ids.*'synthetic_val_00000'"):
        write_nwpu_counts(tmp_path / "x.txt", [{"name": "synthetic_val_00000", "predicted": 1.0}])
