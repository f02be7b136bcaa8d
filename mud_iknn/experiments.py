"""The paper's comparisons with equal budgets: ``python -m mud_iknn.experiments``.

(a) ``labels``: the same network trained on ikNN maps versus on geometry-adaptive Gaussian
density maps (the labels crowd counting usually uses).
(b) ``map_modules``: the full network (map modules + final count head) versus the final count
head alone (``TrainConfig.map_modules=False``: the same backbone without map modules, trained on
the count loss alone, no label maps).

Every variant of a comparison gets the same data, steps, batch, patch size, learning rate and
seeds; only the variant's own setting differs. Both variants of a seed see the same data, sample
order and augmentation, so each comparison is judged by the per-seed differences (second variant
minus first) of MAE and, where both variants have maps, of F1 at 8 px (the round(count) strongest
peaks of the stitched ikNN map, fair to density maps too): their mean and two-sided 95% Student-t
interval. Default scale: synthetic crowds and the small configuration (``TrainConfig.small()``,
its lr decay at the same fraction of ``--steps``, with the paper's map loss weight 1 where the
preset has 0.001, lr 1e-3 where it has 3e-3, and without its time budget), minutes on a CPU. ``--dataset NAME --root DIR``
runs on a real data set (train split for training, its reporting split for the results). Writes a
Markdown table (per variant the mean and standard deviation over seeds and each seed's MAE; per
comparison the paired differences and their intervals; the machine) to ``--out`` and prints it.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from ._checks import is_integer
from ._settings import apply_setting

__all__ = ["VARIANTS", "COMPARISONS", "DEFAULT_SEEDS", "run_comparisons", "paired_difference", "summarize_comparisons",
           "format_table", "machine_info", "main"]

#: Settings that define each variant, on top of the shared base configuration.
VARIANTS = {
    "ikNN labels": {"label": {"kind": "iknn"}},
    "density labels": {"label": {"kind": "density"}},
    "map modules + count head": {"label": {"kind": "iknn"}},
    "count head only": {"map_modules": False},
}

#: The comparisons: name -> the variants compared, with equal budgets.
COMPARISONS = {
    "labels": ("ikNN labels", "density labels"),
    "map_modules": ("map modules + count head", "count head only"),
}

def machine_info() -> dict:
    """Where the numbers come from: OS, CPU, core count, torch version and the device used."""
    import torch

    info = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


#: Default seeds per comparison (``--seeds`` replaces them for all), with the default 1200 steps,
#: chosen by measurement on the 2-core machine (docs/experiments.md, session 10): 13 minutes with two
#: jobs; the intervals of MAE came out at +-4.2% (map modules) and +-5.7% (labels) of the MAE.
DEFAULT_SEEDS = {"labels": list(range(10)), "map_modules": list(range(10))}


def run_comparisons(train_set, test_set, base: dict, seeds, comparisons: Sequence[str],
                    work_dir: Path, log=print, jobs: int = 1) -> list[dict]:
    """Trains and evaluates every variant of ``comparisons`` for every seed.

    base: TrainConfig settings shared by all runs (steps, batch_size, ...; out_dir is set per run).
    seeds: a sequence for every comparison, or a dict comparison -> sequence.
    jobs: runs trained at once, each in a process of its own with the machine's torch threads
    shared out (1: in this process, with its threads). A run's result does not depend on ``jobs``
    when each process has one thread (as with jobs = the cores).
    Returns one row per (comparison, variant, seed): {"comparison", "variant", "seed", "mae", "rmse",
    "nae", "f1_8px" (None for a count-only network), "seconds"}. Variants with identical settings (the
    full network appears in both comparisons) are trained once per seed and share their row values.
    """
    if not is_integer(jobs) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    plan, runs, variants = [], {}, {}  # (comparison, variant, seed, key); key -> settings; key -> variants
    for comparison in comparisons:
        for variant in COMPARISONS[comparison]:
            for seed in (seeds[comparison] if isinstance(seeds, dict) else seeds):
                settings = {**base, **VARIANTS[variant], "seed": seed}
                key = json.dumps(settings, sort_keys=True, default=str)
                runs.setdefault(key, {**settings, "out_dir": str(work_dir / f"run{len(runs):03d}")})
                variants.setdefault(key, {})[variant] = None  # an ordered set
                plan.append((comparison, variant, seed, key))
    results = {}

    def done(key, result):
        results[key] = result
        log(f"{' = '.join(variants[key])} / seed {runs[key]['seed']}: MAE {result['mae']:.2f} "
            f"RMSE {result['rmse']:.2f} ({result['seconds']:.0f} s; {len(results)} of {len(runs)} runs)")

    if jobs == 1:
        for key, settings in runs.items():
            done(key, _train_and_score(settings, train_set, test_set))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        import torch

        threads = max(1, torch.get_num_threads() // jobs)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start,
                                 initargs=(train_set, test_set, threads)) as pool:
            futures = {pool.submit(_worker_run, settings): key for key, settings in runs.items()}
            for future in as_completed(futures):
                done(futures[future], future.result())
    return [{"comparison": c, "variant": v, "seed": s, **results[k]} for c, v, s, k in plan]


def _train_and_score(settings: dict, train_set, test_set) -> dict:
    engine, evaluation = importlib.import_module("mud_iknn.train"), importlib.import_module("mud_iknn.evaluate")
    config = engine.TrainConfig.from_dict(settings)
    start = time.perf_counter()
    model = engine.train(config, train_set, None)["model"]
    return {**_scores(model, config, test_set, evaluation), "seconds": time.perf_counter() - start}


_WORKER = {}  # a worker process's data sets


def _worker_start(train_set, test_set, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(train=train_set, test=test_set)


def _worker_run(settings: dict) -> dict:
    return _train_and_score(settings, _WORKER["train"], _WORKER["test"])


def _scores(model, config, test_set, evaluation) -> dict:
    """MAE, RMSE, NAE of the test set and F1 at 8 px of the round(count) strongest peaks of each
    image's stitched ikNN map (None without map modules)."""
    from .localize import localize

    predicted, true, located, truth = [], [], [], []
    for sample in test_set:
        prediction = evaluation.predict_image(model, sample.image, window=config.patch_size,
                                              stride=config.window_stride, locate=config.map_modules)
        predicted.append(prediction.count)
        true.append(float(sample.count))
        if prediction.iknn_map is not None:
            # a negative predicted count (an empty scene's count branch) locates no head
            located.append(localize(prediction.iknn_map[None], counts=[max(prediction.count, 0.0)])[0])
            truth.append(sample.points)
    f1 = evaluation.localization_metrics(located, truth, thresholds=(8,))["8px"]["f1"] if located else None
    return {**evaluation.count_metrics(predicted, true), "f1_8px": f1}


def paired_difference(first: Sequence[float], second: Sequence[float], confidence: float = 0.95) -> dict:
    """The mean of the paired differences second[i] - first[i] and its two-sided Student-t interval.

    Returns {"difference": mean, "ci95": [low, high], "seeds": n}; with one pair the interval is
    [None, None] (no spread to judge it by). ValueError for lists of different or zero length.
    """
    from scipy import stats

    first, second = [float(v) for v in first], [float(v) for v in second]  # numpy arrays and tensors too
    if len(first) != len(second) or not first:
        raise ValueError(f"paired values must be two lists of one length >= 1, got {len(first)} and {len(second)}")
    differences = [b - a for a, b in zip(first, second)]
    mean, n = statistics.fmean(differences), len(differences)
    if n == 1:
        return {"difference": mean, "ci95": [None, None], "seeds": 1}
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(differences) / n ** 0.5
    return {"difference": mean, "ci95": [mean - half, mean + half], "seeds": n}


def summarize_comparisons(rows: list[dict]) -> dict:
    """Per comparison in ``rows`` (from :func:`run_comparisons`): its two variants and the paired
    difference of MAE over the seeds both variants ran (:func:`paired_difference`), and under "f1_8px"
    that of F1 at 8 px where both variants located heads."""
    summary = {}
    for comparison in dict.fromkeys(r["comparison"] for r in rows if r["comparison"] in COMPARISONS):
        first, second = COMPARISONS[comparison]
        summary[comparison] = {"variants": [first, second], **_paired(rows, comparison, "mae")}
        if all(r.get("f1_8px") is not None for r in rows if r["comparison"] == comparison):
            summary[comparison]["f1_8px"] = _paired(rows, comparison, "f1_8px")
    return summary


def _paired(rows: list[dict], comparison: str, metric: str) -> dict:
    first, second = COMPARISONS[comparison]
    by_seed = {v: {r["seed"]: r[metric] for r in rows if r["comparison"] == comparison and r["variant"] == v}
               for v in (first, second)}
    seeds = [s for s in by_seed[first] if s in by_seed[second]]
    return paired_difference([by_seed[first][s] for s in seeds], [by_seed[second][s] for s in seeds])


def _interval(ci: list, digits: int = 2) -> str:
    return "-" if ci[0] is None else f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def _mean_sd(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def format_table(rows: list[dict], setup: dict, machine: dict) -> str:
    """Markdown: one line per variant (mean ± sd over seeds, and each seed's MAE), one line per
    comparison (the paired difference of MAE and its 95% interval), then the setup and the machine."""
    lines = ["| comparison | variant | MAE | RMSE | NAE | F1 at 8 px | MAE per seed |", "|---|---|---|---|---|---|---|"]
    for comparison in dict.fromkeys(r["comparison"] for r in rows):
        for variant in dict.fromkeys(r["variant"] for r in rows if r["comparison"] == comparison):
            runs = [r for r in rows if r["comparison"] == comparison and r["variant"] == variant]
            per_seed = ", ".join(f"{r['seed']}: {r['mae']:.2f}" for r in runs) if runs[0]["seed"] != "-" else ""
            stats = " | ".join(_mean_sd([r[k] for r in runs]) for k in ("mae", "rmse", "nae"))
            f1 = [r.get("f1_8px") for r in runs]
            stats += " | " + ("-" if None in f1 else _mean_sd(f1, 3))
            lines.append(f"| {comparison} | {variant} | {stats} | {per_seed} |")
    lines += ["", "| comparison | metric | difference (second - first) | 95% interval (Student t, paired) | seeds |",
              "|---|---|---|---|---|"]
    for comparison, paired in summarize_comparisons(rows).items():
        first, second = paired["variants"]
        for metric, values, digits in (("MAE", paired, 2), ("F1 at 8 px", paired.get("f1_8px"), 3)):
            if values is not None:
                lines.append(f"| {comparison}: {second} - {first} | {metric} | {values['difference']:+.{digits}f} | "
                             f"{_interval(values['ci95'], digits)} | {values['seeds']} |")
    lines += ["", "Setup: " + ", ".join(f"{k} = {v}" for k, v in setup.items()),
              "", "Machine: " + ", ".join(f"{k} = {v}" for k, v in machine.items())]
    return "\n".join(lines)


def _datasets(args):
    from .data import DATASETS, SyntheticCrowds, open_dataset

    if args.dataset == "synthetic":
        if args.root is not None:
            raise ValueError("--dataset synthetic takes no --root")
        return (SyntheticCrowds(args.train_images, size=args.image_size, seed=args.data_seed, split="train"),
                SyntheticCrowds(args.test_images, size=args.image_size, seed=args.data_seed, split="test"))
    if args.root is None:
        raise ValueError(f"--dataset {args.dataset} needs --root DIR")
    test_split = DATASETS[args.dataset].test_split
    options = {"fold": args.fold} if args.dataset == "ucf_cc_50" else {}
    return (open_dataset(args.dataset, args.root, split="train", **options),
            open_dataset(args.dataset, args.root, split=test_split, **options))


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS

    parser = argparse.ArgumentParser(prog="python -m mud_iknn.experiments", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--comparisons", nargs="+", choices=list(COMPARISONS), default=list(COMPARISONS))
    parser.add_argument("--dataset", choices=list(DATASETS), default="synthetic", metavar="NAME")
    parser.add_argument("--root", type=Path, metavar="DIR", help="the data set's folder (real data sets)")
    parser.add_argument("--fold", type=int, default=0, help="ucf_cc_50: the cross-validation fold, 0..4 (default 0)")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="the seeds of every comparison (default: DEFAULT_SEEDS, "
                             + ", ".join(f"{c} 0-{max(s)}" for c, s in DEFAULT_SEEDS.items()) + ")")
    parser.add_argument("--jobs", type=int,
                        help="runs trained at once, in processes of their own sharing the torch threads (default: "
                             "the CPU cores where the runs train on the CPU, else 1)")
    parser.add_argument("--steps", type=int, default=1200,
                        help="training steps per run (default 1200; the small configuration's lr decay comes at the "
                             "same fraction of them)")
    parser.add_argument("--full-network", action="store_true",
                        help="the paper's DenseNet-201 on 224 patches, batch 25, lr 1e-4 instead of the small CPU "
                             "configuration")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other shared TrainConfig setting (VALUE as JSON)")
    parser.add_argument("--train-images", type=int, default=96, help="synthetic: training scenes (default 96)")
    parser.add_argument("--test-images", type=int, default=48, help="synthetic: test scenes (default 48)")
    parser.add_argument("--image-size", type=int, default=128, help="synthetic: scene side (default 128)")
    parser.add_argument("--data-seed", type=int, default=0, help="synthetic: scene seed (default 0)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work-dir", type=Path, help="checkpoints of every run (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (and a .json of the rows)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    engine = importlib.import_module("mud_iknn.train")
    if args.full_network:
        base = {"steps": args.steps}
    else:
        # the paper's map loss weight (lambda = 1), not the preset's 0.001: the claims are the paper's;
        # lr 1e-3, not the preset's 3e-3: with lambda = 1 the faster rate flattened the ikNN maps (F1 at
        # 8 px 0.48 against 0.66, density labels' 0.60: docs/experiments.md, session 11);
        # no time budget: paired runs must train the same steps whatever the machine's load
        base = engine.TrainConfig.small(checkpoint_every=0, progress=False, map_weight=1.0, lr=1e-3,
                                        max_seconds=None, steps=args.steps).to_dict()
    base["device"] = args.device
    seeds = args.seeds if args.seeds is not None else DEFAULT_SEEDS
    if args.jobs is None:
        import torch

        on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
        args.jobs = (os.cpu_count() or 1) if on_cpu else 1
    try:
        if args.jobs < 1:
            raise ValueError(f"--jobs must be a positive integer, got {args.jobs}")
        for assignment in args.set:
            apply_setting(base, assignment)
        train_set, test_set = _datasets(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"experiments: error: {err}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="mud_iknn_experiments_") as scratch:
        work_dir = args.work_dir or Path(scratch)
        rows = run_comparisons(train_set, test_set, base, seeds, args.comparisons, work_dir,
                               log=lambda line: print(line, file=sys.stderr, flush=True), jobs=args.jobs)
    evaluation = importlib.import_module("mud_iknn.evaluate")
    baseline = evaluation.mean_count_baseline(train_set.counts(), test_set.counts())
    rows.append({"comparison": "reference", "variant": f"mean training count ({baseline['prediction']:.1f})",
                 "seed": "-", **{k: baseline[k] for k in ("mae", "rmse", "nae")}})
    setup = {"data": f"{args.dataset} ({len(train_set)} train / {len(test_set)} test images)",
             "seeds": " ".join(map(str, seeds)) if args.seeds is not None else
             "; ".join(f"{c}: {len(DEFAULT_SEEDS[c])} (0-{max(DEFAULT_SEEDS[c])})" for c in args.comparisons),
             "jobs": args.jobs,
             **{k: v for k, v in base.items() if k in ("steps", "batch_size", "patch_size", "lr", "lr_step",
                                                      "map_weight", "backbone", "frozen_batchnorm")}}
    table = format_table(rows, setup, machine_info())
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(
            {"comparisons": summarize_comparisons(rows), "runs": [r for r in rows if r["comparison"] in COMPARISONS],
             "reference": [r for r in rows if r["comparison"] not in COMPARISONS], "setup": setup}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
