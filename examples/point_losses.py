#!/usr/bin/env python
"""Train a small density network on the synthetic crowds with the Bayesian loss and with DM-Count's
loss (mud_iknn.loss.BayesianLoss / DMCountLoss), and compare their test MAE with the mean-count
baseline (every test image predicted as the training set's mean count).

The network predicts a (B, 1, S / 8, S / 8) density (stride 8, ReLU output); its count is the sum.
A few minutes on two CPU cores with the defaults:

    PYTHONPATH=. python examples/point_losses.py [--steps 600] [--size 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from mud_iknn.data.synthetic import SyntheticCrowds
from mud_iknn.loss import BayesianLoss, DMCountLoss
from mud_iknn.transforms import collate_crowd

STRIDE = 8


def density_network() -> nn.Module:
    """Three stride-2 stages (stride 8) and a 1x1 head with ReLU: (B, 3, S, S) -> (B, 1, S/8, S/8)."""
    def stage(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
    head = nn.Conv2d(32, 1, 1)
    nn.init.constant_(head.bias, 1.0)  # start at about a head per cell, away from ReLU's dead zone
    return nn.Sequential(stage(3, 8), stage(8, 16), stage(16, 32),
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True), head, nn.ReLU())


def images_in(batch) -> torch.Tensor:
    return batch.images.float() / 255.0 - 0.5


def train(loss_name: str, train_set, steps: int, batch_size: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = density_network()
    criterion = BayesianLoss(stride=STRIDE) if loss_name == "bayesian" else DMCountLoss(stride=STRIDE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        index = torch.randint(len(train_set), (batch_size,), generator=generator).tolist()
        batch = collate_crowd([train_set[i] for i in index])
        if torch.rand((), generator=generator) < 0.5:  # horizontal flip: x -> W - 1 - x
            batch.images = batch.images.flip(-1)
            batch.points = torch.stack([batch.images.shape[-1] - 1 - batch.points[:, 0], batch.points[:, 1]], 1)
        density = model(images_in(batch))
        loss = criterion(density, batch.points, offsets=batch.offsets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  {loss_name} step {step:4d}: loss {loss.item():.3f}", flush=True)
    return model


@torch.no_grad()
def test_mae(model: nn.Module, test_set) -> float:
    model.eval()
    errors = []
    for i in range(len(test_set)):
        batch = collate_crowd([test_set[i]])
        errors.append(abs(float(model(images_in(batch)).sum()) - float(batch.counts[0])))
    return sum(errors) / len(errors)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (a multiple of 8)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=96)
    parser.add_argument("--test-images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_set = SyntheticCrowds(args.train_images, args.size, seed=args.seed, split="train", max_count=100)
    test_set = SyntheticCrowds(args.test_images, args.size, seed=args.seed, split="test", max_count=100)
    mean_count = sum(float(train_set[i].count) for i in range(len(train_set))) / len(train_set)
    baseline = sum(abs(mean_count - float(test_set[i].count)) for i in range(len(test_set))) / len(test_set)
    print(f"mean-count baseline: predict {mean_count:.1f} heads, test MAE {baseline:.2f}", flush=True)
    results = {}
    for loss_name in ("bayesian", "dm-count"):
        start = time.perf_counter()
        model = train(loss_name, train_set, args.steps, args.batch_size, args.seed)
        results[loss_name] = test_mae(model, test_set)
        print(f"{loss_name}: test MAE {results[loss_name]:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)
    beaten = all(mae < baseline for mae in results.values())
    print("both beat the mean-count baseline" if beaten else "NOT both below the mean-count baseline")
    return 0 if beaten else 1


if __name__ == "__main__":
    raise SystemExit(main())
