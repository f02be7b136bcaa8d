"""Localization metrics: hand-worked matchings, NWPU per-head thresholds, a dense Hungarian oracle."""
import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from mud_iknn.evaluate import head_thresholds, localization_counts, localization_metrics, match_counts


def _dense_tp(predicted, truth, radius):
    """The oracle: Hungarian assignment of the full 0/1 cost matrix (0 within the radius)."""
    if len(predicted) == 0 or len(truth) == 0:
        return 0
    distance = np.hypot(*(predicted[:, None] - truth[None]).transpose(2, 0, 1))
    cost = (distance > radius).astype(np.float64)
    rows, cols = linear_sum_assignment(cost)
    return int((cost[rows, cols] == 0).sum())


def test_one_to_one_beats_nearest_first():
    truth = np.array([[0.0, 0.0], [1.0, 2.0]])
    predicted = np.array([[1.0, 0.0], [-2.0, 0.0]])  # the first is nearest the first head, 2 px from both
    assert match_counts(predicted, truth, 2.5) == (2, 0, 0)  # greedy nearest-first would find 1
    assert match_counts(predicted, truth, 1.5) == (1, 1, 1)


def test_distance_equal_to_the_threshold_matches():
    assert match_counts([[0.0, 0.0]], [[3.0, 4.0]], 5.0) == (1, 0, 0)
    assert match_counts([[0.0, 0.0]], [[3.0, 4.0]], 4.99) == (0, 1, 1)


def test_duplicates_match_once():
    assert match_counts([[5.0, 5.0], [5.0, 5.0]], [[5.0, 5.0]], 1.0) == (1, 1, 0)
    assert match_counts([[5.0, 5.0]], [[5.0, 5.0], [5.0, 5.0]], 1.0) == (1, 0, 1)


def test_no_predictions_no_truth():
    m = localization_metrics([np.zeros((0, 2)), np.zeros((0, 2))], [np.zeros((3, 2)), np.zeros((0, 2))], [8])
    assert (m["8px"]["tp"], m["8px"]["fp"], m["8px"]["fn"]) == (0, 0, 3)
    assert math.isnan(m["8px"]["precision"]) and m["8px"]["recall"] == 0 and m["8px"]["f1"] == 0
    m = localization_metrics([np.ones((2, 2))], [np.zeros((0, 2))], [8])["8px"]
    assert (m["fp"], m["precision"], m["f1"]) == (2, 0, 0) and math.isnan(m["recall"])
    m = localization_metrics([[]], [[]], [8])["8px"]
    assert math.isnan(m["precision"]) and math.isnan(m["recall"]) and math.isnan(m["f1"])


def test_totals_over_images_then_ratios():
    predicted = [np.array([[0.0, 0.0], [10.0, 10.0]]), np.array([[50.0, 50.0]])]
    truth = [np.array([[1.0, 0.0]]), np.array([[50.0, 53.0], [0.0, 0.0]])]
    m = localization_metrics(predicted, truth, [2, 4])
    assert (m["2px"]["tp"], m["2px"]["fp"], m["2px"]["fn"]) == (1, 2, 2)
    assert (m["4px"]["tp"], m["4px"]["fp"], m["4px"]["fn"]) == (2, 1, 1)
    assert m["4px"]["precision"] == pytest.approx(2 / 3) and m["4px"]["recall"] == pytest.approx(2 / 3)
    assert m["2px"]["f1"] == pytest.approx(2 * (1 / 3) * (1 / 3) / (2 / 3))
    counts = localization_counts(predicted, truth, [2, 4])
    assert counts.shape == (2, 2, 3) and counts[1, 1].tolist() == [1, 0, 1]


def test_nwpu_per_head_thresholds():
    sigmas = head_thresholds([[6.0, 8.0], [10.0, 2.0]])
    assert sigmas["sigma_s"].tolist() == [3.0, 1.0] and sigmas["sigma_l"] == pytest.approx([5.0, math.hypot(10, 2) / 2])
    truth = [np.array([[0.0, 0.0], [100.0, 0.0]])]
    predicted = [np.array([[4.0, 0.0], [100.0, 0.5]])]
    m = localization_metrics(predicted, truth, ["sigma_s", "sigma_l", 8], boxes=[np.array([[6.0, 8.0], [10.0, 2.0]])])
    assert (m["sigma_s"]["tp"], m["sigma_l"]["tp"], m["8px"]["tp"]) == (1, 2, 2)  # the radius is the true head's
    # a degenerate box (w or h 0) gives sigma_s 0: only a prediction exactly on the head matches
    assert match_counts([[0.0, 0.0], [5.0, 0.0]], [[0.0, 0.0], [5.5, 0.0]], np.zeros(2)) == (1, 1, 1)


@pytest.mark.parametrize("seed", range(6))
def test_sparse_matching_equals_the_dense_hungarian(seed):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0, 60, (int(rng.integers(0, 120)), 2))
    predicted = np.concatenate([truth[rng.random(len(truth)) < 0.7] + rng.normal(0, 3, (1, 2)),
                                rng.uniform(0, 60, (int(rng.integers(0, 40)), 2))])
    for radius in (2.0, 5.0, 12.0):
        tp, fp, fn = match_counts(predicted, truth, radius)
        assert tp == _dense_tp(predicted, truth, radius)
        assert (fp, fn) == (len(predicted) - tp, len(truth) - tp)
    radii = rng.uniform(1, 8, len(truth))
    distance = np.hypot(*(predicted[:, None] - truth[None]).transpose(2, 0, 1)) if len(truth) else None
    expected = 0
    if len(truth) and len(predicted):
        cost = (distance > radii[None]).astype(np.float64)
        r, c = linear_sum_assignment(cost)
        expected = int((cost[r, c] == 0).sum())
    assert match_counts(predicted, truth, radii)[0] == expected


def test_one_threshold_alone_and_numpy_ones():
    predicted, truth = [np.array([[0.0, 0.0], [10.0, 0.0]])], [np.array([[3.0, 0.0], [10.0, 5.0]])]
    assert localization_metrics(predicted, truth, 4) == localization_metrics(predicted, truth, [4])
    assert localization_metrics(predicted, truth, 4)["4px"]["tp"] == 1  # 3 px apart, not the 5 px pair
    assert localization_metrics(predicted, truth, np.array([4, 8])) == localization_metrics(predicted, truth, [4, 8])


@pytest.mark.parametrize("call,match", [
    (lambda: localization_metrics([np.zeros((1, 2))], [np.zeros((1, 2))] * 2, [8]), "same number of images"),
    (lambda: localization_metrics([np.zeros((1, 2))], [np.zeros((1, 2))], [0]), "positive"),
    (lambda: localization_metrics([np.zeros((1, 2))], [np.zeros((1, 2))], [-4]), "positive"),
    (lambda: localization_metrics([np.zeros((1, 2))], [np.zeros((1, 2))], [float("nan")]), "positive"),
    (lambda: localization_metrics([np.zeros((1, 2))], [np.zeros((1, 2))], ["sigma"]), "sigma_s"),
    (lambda: localization_metrics([np.zeros((1, 2))], [np.zeros((1, 2))], []), "empty"),
    (lambda: localization_metrics([np.zeros((1, 2))], [np.zeros((1, 2))], ["sigma_l"]), "boxes"),
    (lambda: localization_metrics([np.zeros((1, 2))], [np.zeros((1, 2))], ["sigma_l"], boxes=[np.ones((2, 2))]),
     "2 boxes for 1"),
    (lambda: localization_metrics([np.zeros((1, 3))], [np.zeros((1, 2))], [8]), "predicted"),
    (lambda: match_counts(np.zeros((1, 2)), np.zeros((2, 2)), np.ones(3)), "radius"),
    (lambda: match_counts(np.zeros((1, 2)), np.zeros((2, 2)), np.array([1.0, -1.0])), ">= 0"),
    (lambda: match_counts(np.zeros((1, 2)), np.zeros((2, 2)), np.array([1.0, np.nan])), ">= 0"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
