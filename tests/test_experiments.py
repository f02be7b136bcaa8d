"""The comparisons' paired statistics (mud_iknn.experiments), against hand-worked values and scipy."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from mud_iknn import experiments


def test_paired_difference_hand_worked():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653 -> half width 4.302653 / sqrt(3)
    paired = experiments.paired_difference([10.0, 10.0, 10.0], [11.0, 12.0, 13.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert paired["seeds"] == 3 and paired["difference"] == pytest.approx(2.0)
    assert paired["ci95"] == pytest.approx([2.0 - half, 2.0 + half], rel=1e-9)


def test_paired_difference_of_arrays_is_that_of_lists():
    expected = experiments.paired_difference([1.0, 2.0, 4.0], [3.0, 3.0, 6.0])
    assert experiments.paired_difference(np.array([1.0, 2.0, 4.0]), torch.tensor([3.0, 3.0, 6.0])) == expected


def test_paired_difference_is_scipys_paired_t_interval():
    rng = np.random.default_rng(0)
    first = rng.normal(30, 5, 7)
    second = first + rng.normal(-2, 1, 7)  # a shared per-seed part: pairing narrows the interval
    paired = experiments.paired_difference(list(first), list(second))
    expected = stats.ttest_rel(second, first).confidence_interval(0.95)
    assert paired["ci95"] == pytest.approx([expected.low, expected.high], rel=1e-9)
    unpaired = stats.ttest_ind(second, first).confidence_interval(0.95)
    assert paired["ci95"][1] - paired["ci95"][0] < 0.5 * (unpaired.high - unpaired.low)


def test_paired_difference_edge_cases():
    assert experiments.paired_difference([3.0], [5.0]) == {"difference": 2.0, "ci95": [None, None], "seeds": 1}
    for first, second in (([], []), ([1.0], [1.0, 2.0])):
        with pytest.raises(ValueError, match="paired values"):
            experiments.paired_difference(first, second)


def test_summaries_pair_by_seed_and_skip_the_reference_row():
    def row(comparison, variant, seed, mae):
        return {"comparison": comparison, "variant": variant, "seed": seed, "mae": mae, "rmse": mae, "nae": 0.1}

    rows = [row("labels", "ikNN labels", s, m) for s, m in ((0, 5.0), (1, 7.0))]
    rows += [row("labels", "density labels", s, m) for s, m in ((1, 10.0), (0, 6.0))]  # paired by seed
    rows.append(row("reference", "mean", "-", 99.0))
    summary = experiments.summarize_comparisons(rows)
    assert list(summary) == ["labels"]
    assert summary["labels"]["variants"] == ["ikNN labels", "density labels"]
    assert summary["labels"]["difference"] == pytest.approx(2.0) and summary["labels"]["seeds"] == 2
    table = experiments.format_table(rows, {"seeds": "0 1"}, {"cores": 2})
    low, high = summary["labels"]["ci95"]
    assert f"| labels: density labels - ikNN labels | MAE | +2.00 | [{low:+.2f}, {high:+.2f}] | 2 |" in table
    assert "F1 at 8 px" not in table.split("| comparison | metric")[1]  # no F1 measured: no F1 line


def test_f1_is_paired_only_where_both_variants_located_heads():
    def row(variant, seed, mae, f1):
        comparison = "labels" if variant in ("ikNN labels", "density labels") else "map_modules"
        return {"comparison": comparison, "variant": variant, "seed": seed, "mae": mae, "rmse": mae, "nae": 0.1,
                "f1_8px": f1}

    rows = [row("ikNN labels", 0, 5.0, 0.70), row("ikNN labels", 1, 6.0, 0.80),
            row("density labels", 0, 6.0, 0.60), row("density labels", 1, 8.0, 0.60),
            row("map modules + count head", 0, 5.0, 0.70), row("count head only", 0, 4.0, None)]
    summary = experiments.summarize_comparisons(rows)
    assert summary["labels"]["f1_8px"]["difference"] == pytest.approx(-0.15)
    assert "f1_8px" not in summary["map_modules"] and summary["map_modules"]["difference"] == pytest.approx(-1.0)
    table = experiments.format_table(rows, {}, {})
    assert "| labels: density labels - ikNN labels | F1 at 8 px | -0.150 |" in table
    assert "| map_modules | count head only | 4.00 | 4.00 | 0.10 | - |" in table


def test_runs_in_worker_processes_give_the_runs_of_one_process(tmp_path):
    # jobs=2 (a process per run, one torch thread each) against jobs=1 on one thread: the same rows,
    # per-comparison seeds, the full network trained once for both comparisons
    import torch

    from mud_iknn.data import SyntheticCrowds
    from mud_iknn.train import TrainConfig

    train_set = SyntheticCrowds(4, size=48, seed=1, split="train", max_count=30)
    test_set = SyntheticCrowds(2, size=48, seed=1, split="test", max_count=30)
    base = TrainConfig.small(steps=2, lr_step=1, patch_size=32, batch_size=2, checkpoint_every=0,
                             progress=False).to_dict()
    seeds = {"labels": [0], "map_modules": [0, 1]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = experiments.run_comparisons(train_set, test_set, base, seeds, ["labels", "map_modules"],
                                            tmp_path / "one", log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    lines = []
    pooled = experiments.run_comparisons(train_set, test_set, base, seeds, ["labels", "map_modules"],
                                         tmp_path / "two", log=lines.append, jobs=2)
    assert len(lines) == 5  # ikNN seeds 0 (both comparisons) and 1, density seed 0, count head only seeds 0 and 1
    assert any(line.startswith("ikNN labels = map modules + count head / seed 0: MAE") for line in lines)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in alone]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in pooled] == strip
    assert [(r["comparison"], r["variant"], r["seed"]) for r in alone] == [
        ("labels", "ikNN labels", 0), ("labels", "density labels", 0), ("map_modules", "map modules + count head", 0),
        ("map_modules", "map modules + count head", 1), ("map_modules", "count head only", 0),
        ("map_modules", "count head only", 1)]
    assert alone[0]["mae"] == alone[2]["mae"]  # one run serves both comparisons
    with pytest.raises(ValueError, match="jobs"):
        experiments.run_comparisons(train_set, test_set, base, seeds, ["labels"], tmp_path, jobs=0)


def test_scores_of_a_negative_predicted_count_locate_no_head():
    # an empty scene's count branch may say -3.5: no head is located there, and the F1 still counts
    # the true heads it missed (here none: one empty scene and one with a head found)
    import types

    import torch

    from mud_iknn import evaluate
    from mud_iknn.sample import CrowdSample

    peak = torch.zeros(9, 9)
    peak[4, 4] = 1.0
    predictions = iter([evaluate.Prediction(-3.5, torch.zeros(9, 9), peak, None),
                        evaluate.Prediction(1.2, torch.zeros(9, 9), peak, None)])
    fake = types.SimpleNamespace(predict_image=lambda *a, **k: next(predictions),
                                 localization_metrics=evaluate.localization_metrics, count_metrics=evaluate.count_metrics)
    config = types.SimpleNamespace(patch_size=9, window_stride=9, map_modules=True)
    scenes = [CrowdSample(torch.zeros(3, 9, 9, dtype=torch.uint8), torch.zeros(0, 2)),
              CrowdSample(torch.zeros(3, 9, 9, dtype=torch.uint8), torch.tensor([[4.0, 4.0]]))]
    scores = experiments._scores(None, config, scenes, fake)
    assert scores["f1_8px"] == 1.0 and scores["mae"] == pytest.approx((3.5 + 0.2) / 2)
