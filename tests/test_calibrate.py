"""Calibrating localize per trained model: the grid search on hand-made maps, training storing the
choice in its checkpoint, predict_image using it, old checkpoints keeping the defaults."""
import pytest
import torch
from torch import nn

from mud_iknn import iknn_maps
from mud_iknn.evaluate import calibrate_localization, choose_localization, localization_metrics, predict_image
from mud_iknn.localize import DEFAULT_MIN_DISTANCE, DEFAULT_THRESHOLD, localize
from mud_iknn.sample import CrowdSample
from mud_iknn.train import TrainConfig, load_checkpoint, train

from synthetic import Blobs

pytestmark = pytest.mark.usefixtures("one_thread")

HEADS = torch.tensor([[8.0, 8.0], [24.0, 8.0], [40.0, 8.0], [8.0, 26.0], [24.0, 26.0]])  # 16-18 px apart


def _hand_made_map():
    """An exact ikNN map of HEADS at a quarter of its height (heads peak at 0.25), plus a spurious
    peak of 0.23 far from every head (only thresholds >= 0.23 drop it) and one of 0.245 two pixels
    from the head (8, 8) (a 3 x 3 window keeps it, a 5 x 5 one holds the head and drops it)."""
    m = iknn_maps([HEADS], (34, 48))[0] * 0.25
    m[30, 44] = 0.23   # 20 px from the nearest head, where the map is about 0.012
    m[8, 10] = 0.245   # (x 10, y 8)
    return m


def test_the_grid_search_finds_the_one_right_setting():
    m = _hand_made_map()
    choice = choose_localization([m], [HEADS])
    # thresholds 0.06 .. 0.22 keep the 0.23 peak, 0.26 .. 0.40 lose every head: 0.24 alone is right;
    # min_distance 1 keeps the 0.245 peak, 2 and 3 drop it: of the tie, the smaller
    assert choice == {"threshold": 0.24, "min_distance": 2, "f1_8px": 1.0}
    # the worked values behind it, independently: 0.2 / 1 finds both spurious peaks too
    found = localize(m[None], threshold=0.2, min_distance=1)[0]
    assert len(found) == len(HEADS) + 2  # 0.2 < 0.23 < 0.245: five heads and both spurious peaks
    assert localization_metrics([found], [HEADS], (8,))["8px"]["f1"] == pytest.approx(2 * 5 / (2 * 5 + 2))


def test_ties_go_to_the_larger_threshold():
    m = iknn_maps([HEADS], (34, 48))[0]  # exact: every threshold below 1 finds exactly the heads
    assert choose_localization([m], [HEADS]) == {"threshold": 0.40, "min_distance": 1, "f1_8px": 1.0}
    assert choose_localization([m], [HEADS], thresholds=(0.1, 0.3, 0.2), min_distances=(3, 2))["threshold"] == 0.3


def test_no_match_anywhere_gives_f1_zero_and_bad_input_is_named():
    far = torch.tensor([[200.0, 200.0]])  # the truth lies outside the map
    choice = choose_localization([iknn_maps([HEADS], (34, 48))[0]], [far], thresholds=(0.1, 0.2))
    assert choice == {"threshold": 0.2, "min_distance": 1, "f1_8px": 0.0}
    with pytest.raises(ValueError, match="same length"):
        choose_localization([torch.zeros(4, 4)], [])
    with pytest.raises(ValueError, match="thresholds"):
        choose_localization([torch.zeros(4, 4)], [far], thresholds=())


class _MapModel(nn.Module):
    """Returns one fixed (1, 34, 48) map for every window (window 48 / stride 48 on a 34 x 48
    image: one window, bottom padded) and a count of 5."""

    def __init__(self, m):
        super().__init__()
        self.register_buffer("map", torch.nn.functional.pad(m, (0, 0, 0, 14))[None, None])

    def forward(self, x):
        return self.map.expand(len(x), 1, 48, 48), torch.full((len(x),), 5.0)


def test_calibrate_a_model_and_predict_image_uses_its_settings():
    model = _MapModel(_hand_made_map())
    image = torch.zeros(3, 34, 48, dtype=torch.uint8)
    data = [CrowdSample(image=image, points=HEADS)] * 3
    choice = calibrate_localization(model, data, window=48, stride=48, limit=2)
    assert choice == {"threshold": 0.24, "min_distance": 2, "f1_8px": 1.0}
    # no settings: the defaults, 0.16 / 2: the heads and the 0.23 peak (the 5 x 5 window drops the 0.245 one)
    assert (DEFAULT_THRESHOLD, DEFAULT_MIN_DISTANCE) == (0.16, 2)
    assert len(predict_image(model, image, 48, 48).points) == 6
    model.localization = choice
    assert len(predict_image(model, image, 48, 48).points) == 5
    assert len(predict_image(model, image, 48, 48, threshold=0.2).points) == 6  # explicit wins (min_distance 2)
    with pytest.raises(ValueError, match="limit"):
        calibrate_localization(model, data, window=48, stride=48, limit=0)


def _config(tmp_path, **kwargs):
    return TrainConfig(**{**dict(steps=2, batch_size=4, patch_size=32, backbone="densenet_tiny", num_workers=0,
                                 device="cpu", out_dir=str(tmp_path), checkpoint_every=0, log_every=1,
                                 progress=False), **kwargs})


def test_training_stores_the_calibration_and_old_checkpoints_keep_the_defaults(tmp_path):
    data = Blobs(n=3, size=40)
    result = train(_config(tmp_path / "run", calibrate_images=2), data)
    stored = result["model"].localization
    assert set(stored) == {"threshold", "min_distance", "f1_8px"} and 0.0 <= stored["f1_8px"] <= 1.0
    # the choice is the grid search's on the stitched maps of two of the training images (0 and 1 of 3)
    maps = [predict_image(result["model"], data[i].image, 32, 18).iknn_map for i in (0, 1)]
    assert stored == choose_localization(maps, [data[0].points, data[1].points])
    model, config, extra = load_checkpoint(result["checkpoint"])
    assert extra["localization"] == stored and model.localization == stored and config.calibrate_images == 2

    state = torch.load(result["checkpoint"], weights_only=True)  # as written before calibration existed
    del state["localization"], state["config"]["calibrate_images"]
    torch.save(state, tmp_path / "old.pt")
    model, config, extra = load_checkpoint(tmp_path / "old.pt")
    assert extra["localization"] is None and model.localization is None and config.calibrate_images == 16
    image = data[0].image
    expected = localize(predict_image(model, image, 32, 18).iknn_map[None], threshold=DEFAULT_THRESHOLD,
                        min_distance=DEFAULT_MIN_DISTANCE)[0]
    torch.testing.assert_close(predict_image(model, image, 32, 18).points, expected)

    torch.save({**state, "localization": {"threshold": "low"}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt.*localization"):
        load_checkpoint(tmp_path / "bad.pt")


def test_calibration_switched_off_or_without_map_modules(tmp_path):
    data = Blobs(n=2, size=32)
    for name, kwargs in [("off", dict(calibrate_images=0)), ("count_only", dict(map_modules=False))]:
        result = train(_config(tmp_path / name, **kwargs), data)
        assert load_checkpoint(result["checkpoint"])[2]["localization"] is None
    with pytest.raises(ValueError, match="calibrate_images"):
        TrainConfig(calibrate_images=-1)
