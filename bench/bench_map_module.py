"""The map modules' upsampling as a 1x1 convolution + pixel shuffle against torch's ConvTranspose2d.

A map module's ConvTranspose2d(c_in -> 1, kernel = stride = f) writes disjoint f x f blocks, so
:class:`mud_iknn.model._BlockConvTranspose2d` runs it as a 1x1 convolution to the f * f block
values and a pixel shuffle (the same sums). This times whole training steps (forward, MUDLoss,
backward, Adam) of the same network with its upsampling layers both ways, the same weights, in
alternating rounds (A B B A ...), and the upsampling layers alone; reports medians and ratios.

usage: python bench/bench_map_module.py [--model densenet_tiny|densenet201] [--batch 16] [--size 64 (a multiple of 32)]
       [--threads 1] [--steps 10] [--rounds 4] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import platform
import statistics
import time

import torch
from torch import nn

from mud_iknn.loss import MUDLoss
from mud_iknn.model import MapModule
from mud_iknn.train import TrainConfig, build_model


def with_transposed_convs(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose map modules upsample with torch's own ConvTranspose2d (same weights)."""
    # (re-applying the mode: a deep copy of the network's torch.fx feature extractor comes back with
    # every module in training mode, frozen BatchNorm included)
    model = copy.deepcopy(model).train(model.training)
    for module in model.modules():
        if isinstance(module, MapModule):
            block = module.upsample
            plain = nn.ConvTranspose2d(block.in_channels, block.out_channels, kernel_size=block.kernel_size,
                                       stride=block.stride).to(block.weight.device)
            plain.load_state_dict(block.state_dict())
            module.upsample = plain
    return model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, images, label, counts, steps, device) -> float:
    """Median seconds of one training step over ``steps`` steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = MUDLoss()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        maps, predicted = model(images)
        loss, _ = criterion(maps, predicted, label, counts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_upsampling(model, images, steps, device) -> float:
    """Median seconds of all map modules' upsampling layers, forward + backward, on the features
    that the backbone gives ``images``."""
    inputs = []
    hooks = [m.upsample.register_forward_hook(lambda mod, inp, out: inputs.append((mod, inp[0].detach())))
             for m in model.modules() if isinstance(m, MapModule)]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        for layer, x in inputs:
            x = x.requires_grad_()
            y = layer(x)
            y.backward(torch.ones_like(y))
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="densenet_tiny", choices=["densenet_tiny", "densenet201"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    # the small configuration's network, or the paper's (random init), as training builds them
    config = TrainConfig.small() if args.model == "densenet_tiny" else TrainConfig()
    config = dataclasses.replace(config, patch_size=args.size, device=args.device)
    block = build_model(config, load_weights=False).to(device).train()
    plain = with_transposed_convs(block)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    label = torch.rand(args.batch, args.size, args.size, device=device)
    counts = torch.rand(args.batch, device=device) * 50
    with torch.no_grad():
        same = (block(images)[0] - plain(images)[0]).abs().max().item()
    steps = {"ConvTranspose2d": [], "1x1 conv + shuffle": []}
    layers = {"ConvTranspose2d": [], "1x1 conv + shuffle": []}
    for r in range(args.rounds):
        order = [("ConvTranspose2d", plain), ("1x1 conv + shuffle", block)]
        for name, model in (order if r % 2 == 0 else order[::-1]):
            steps[name].append(time_steps(model, images, label, counts, args.steps, device))
            layers[name].append(time_upsampling(model, images, args.steps, device))
    base, new = (statistics.median(steps[k]) for k in steps)
    base_l, new_l = (statistics.median(layers[k]) for k in layers)
    print(f"{args.model}, batch {args.batch} of {args.size} px, {args.threads} thread(s), {device}, "
          f"{platform.processor() or platform.machine()}; largest map difference {same:.2g}")
    print("| upsampling | training step | speed-up | upsampling layers (fwd + bwd) | speed-up |")
    print("|---|---|---|---|---|")
    print(f"| ConvTranspose2d | {base * 1e3:.1f} ms | 1.00x | {base_l * 1e3:.2f} ms | 1.00x |")
    print(f"| 1x1 conv + pixel shuffle | {new * 1e3:.1f} ms | {base / new:.2f}x | {new_l * 1e3:.2f} ms | "
          f"{base_l / new_l:.2f}x |")


if __name__ == "__main__":
    main()
