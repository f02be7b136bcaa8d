"""Sliding-window counting against analytic values, and the count metrics."""
import math

import pytest
import torch
from torch import nn

from mud_iknn.evaluate import count_metrics, evaluate, predict_image, window_starts
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
    assert window_starts(100, 224, 128) == [0]
    assert window_starts(352, 224, 128) == [0, 128]
    assert window_starts(353, 224, 128) == [0, 128, 256]
    with pytest.raises(ValueError, match="stride"):
        window_starts(300, 224, 300)


@pytest.mark.parametrize("height,width,expected", [
    (224, 224, 1.0),
    (100, 150, 1.0),              # one window, spread over the 100 x 150 image pixels
    (224, 352, 352 / 224),        # two full windows, every pixel c / 224^2
    # second window has 172 columns inside the image: x < 128 one window, 128..223 both, >= 224 the second
    (224, 300, 128 / 224 + 96 / 2 * (224 / 224 ** 2 + 224 / (172 * 224)) + 76 / 172),
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
