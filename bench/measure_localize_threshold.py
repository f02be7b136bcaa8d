"""How localize's defaults were chosen: F1 of the located heads against the threshold and
min_distance, on the stitched ikNN maps of small models trained on synthetic crowds.

Trains ``TrainConfig.small()`` (its own settings, --steps to change them) on ``SyntheticCrowds``
for every seed, or reads --checkpoint files, predicts the validation scenes with
:func:`mud_iknn.evaluate.predict_image` and prints, per setting, the F1 at 4 / 8 px (mean over the
models), next to the counts mode (the round(count) strongest peaks).

    python bench/measure_localize_threshold.py --seeds 0 1 2 --steps 1200
    python bench/measure_localize_threshold.py --checkpoint run0/checkpoint.pt run1/checkpoint.pt
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from mud_iknn import localize
from mud_iknn.data import SyntheticCrowds
from mud_iknn.evaluate import localization_metrics, predict_image
from mud_iknn.train import TrainConfig, load_checkpoint, train

THRESHOLDS = (0.1, 0.14, 0.16, 0.18, 0.2, 0.22, 0.24, 0.26, 0.3, 0.4)
MIN_DISTANCES = (1, 2, 3)


def _models(args):
    if args.checkpoint:
        for path in args.checkpoint:
            model, config, _ = load_checkpoint(path)
            yield str(path), model, config
        return
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            config = TrainConfig.small(seed=seed, steps=args.steps, lr_step=max(1, args.steps * 3 // 4), eval_every=0,
                                       progress=False, out_dir=str(Path(work) / f"seed{seed}"))
            train_set = SyntheticCrowds(args.train_images, args.image_size, seed=seed, split="train")
            yield f"seed {seed}", train(config, train_set)["model"], config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", nargs="*", type=Path)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--train-images", type=int, default=96)
    parser.add_argument("--val-images", type=int, default=24)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args(argv)
    val = SyntheticCrowds(args.val_images, args.image_size, seed=1000, split="val")
    truth = [val[i].points for i in range(len(val))]
    scores: dict[tuple, list] = {}
    for name, model, config in _models(args):
        predictions = [predict_image(model, val[i].image, config.patch_size, config.window_stride)
                       for i in range(len(val))]
        maps = [p.iknn_map[None] for p in predictions]
        settings = [(t, d) for t in THRESHOLDS for d in MIN_DISTANCES] + [("counts", d) for d in MIN_DISTANCES]
        for threshold, distance in settings:
            if threshold == "counts":
                found = [localize(m, min_distance=distance, counts=[max(p.count, 0.0)])[0] for m, p in zip(maps, predictions)]
            else:
                found = [localize(m, threshold=threshold, min_distance=distance)[0] for m in maps]
            m = localization_metrics(found, truth, (4, 8))
            scores.setdefault((threshold, distance), []).append((m["4px"]["f1"], m["8px"]["f1"]))
        print(f"{name}: count MAE {statistics.mean(abs(p.count - len(t)) for p, t in zip(predictions, truth)):.2f}")
    print("| threshold | min_distance | F1 @ 4 px | F1 @ 8 px |\n|---|---|---|---|")
    for (threshold, distance), values in scores.items():
        f4, f8 = (statistics.mean(v[k] for v in values) for k in (0, 1))
        print(f"| {threshold} | {distance} | {f4:.3f} | {f8:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
