"""A training step of the MUD-ikNN network as it is against its former implementation.

Two choices of :mod:`mud_iknn.model` that leave the sums unchanged: a map module's
ConvTranspose2d(c_in -> 1, kernel = stride = f) runs as a 1x1 convolution to the f * f block values
and a pixel shuffle (:class:`mud_iknn.model._BlockConvTranspose2d`), and the network keeps its
weights and the backbone's input channels last (``MapNetwork.memory_format``). This times whole
training steps (forward, MUDLoss, backward, fused Adam) of one network, the same weights, three ways:
torch's ConvTranspose2d in NCHW (the former implementation), the block upsampling in NCHW, and the
block upsampling channels last (the current one), in alternating rounds; medians and speed-ups.

usage: python bench/bench_model_step.py [--model densenet_tiny|densenet201] [--batch 16]
       [--size 64 (a multiple of 32)] [--threads 1] [--steps 10] [--rounds 4] [--device cpu|cuda]
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

from mud_iknn.benchmark import sync
from mud_iknn.loss import MUDLoss
from mud_iknn.model import MapModule
from mud_iknn.train import TrainConfig, build_model


def variant(model: nn.Module, block_upsampling: bool, memory_format) -> nn.Module:
    """A copy of ``model`` (same weights) with torch's ConvTranspose2d in its map modules unless
    ``block_upsampling``, its weights and input in ``memory_format``."""
    # (the mode re-applied: a deep copy of the torch.fx feature extractor comes back with every
    # module in training mode, frozen BatchNorm included)
    model = copy.deepcopy(model).train(model.training)
    if not block_upsampling:
        for module in model.modules():
            if isinstance(module, MapModule):
                block = module.upsample
                plain = nn.ConvTranspose2d(block.in_channels, block.out_channels, kernel_size=block.kernel_size,
                                           stride=block.stride).to(block.weight.device)
                plain.load_state_dict(block.state_dict())
                module.upsample = plain
    model.memory_format = memory_format
    return model.to(memory_format=memory_format)


def time_steps(model, images, label, counts, steps, device) -> float:
    """Median seconds of one training step over ``steps`` steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    criterion = MUDLoss()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        maps, predicted = model(images)
        loss, _ = criterion(maps, predicted, label, counts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
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
    network = build_model(config, load_weights=False).to(device).train()
    variants = {
        "ConvTranspose2d, NCHW (before)": variant(network, False, torch.contiguous_format),
        "1x1 conv + pixel shuffle, NCHW": variant(network, True, torch.contiguous_format),
        "1x1 conv + pixel shuffle, channels last (now)": variant(network, True, torch.channels_last),
    }
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    label = torch.rand(args.batch, args.size, args.size, device=device)
    counts = torch.rand(args.batch, device=device) * 50
    with torch.no_grad():
        outputs = [model(images)[0] for model in variants.values()]
    differs = max((out - outputs[0]).abs().max().item() for out in outputs)
    times = {name: [] for name in variants}
    for r in range(args.rounds):
        order = list(variants.items())
        for name, model in (order if r % 2 == 0 else order[::-1]):
            times[name].append(time_steps(model, images, label, counts, args.steps, device))
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = next(iter(medians.values()))
    print(f"{args.model}, batch {args.batch} of {args.size} px, {args.threads} thread(s), {device}, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}; largest difference "
          f"of the maps {differs:.2g}")
    print("| network | training step | speed-up |")
    print("|---|---|---|")
    for name, t in medians.items():
        print(f"| {name} | {t * 1e3:.1f} ms | {base / t:.2f}x |")


if __name__ == "__main__":
    main()
