"""Run by tests/test_distributed.py under torchrun: trains a few steps, saves this rank's weights.

usage: torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT_DIR [SCENARIO]

SCENARIO: "plain" (default: BatchNorm frozen, no validation); "batchnorm": BatchNorm trained, a
weight average with its statistics re-estimated, validation and calibration at the end (each rank
also writes its result's "val" and localization to rank{RANK}.json); "broken_val": as plain, with
a validation whose images rank 0 cannot read.
"""
import json
import os
import sys

import torch

from mud_iknn.train import TrainConfig, train
from synthetic import Blobs


class BrokenOnRank0(Blobs):
    def __getitem__(self, index):
        if os.environ["RANK"] == "0":
            raise OSError("val/1.jpg: image file is truncated")
        return super().__getitem__(index)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out_dir = sys.argv[1]
    scenario = sys.argv[2] if len(sys.argv) > 2 else "plain"
    settings = dict(steps=3, batch_size=2, patch_size=32, lr=1e-3, backbone="densenet_tiny", num_workers=0,
                    device="cpu", out_dir=out_dir, checkpoint_every=2, log_every=1, progress=False)
    val_set = None
    if scenario == "batchnorm":
        settings.update(frozen_batchnorm=False, average_decay=0.9, average_bn_batches=2, calibrate_images=2,
                        eval_stride=16)
        val_set = Blobs(n=3, size=40, seed=1)
    elif scenario == "broken_val":
        val_set = BrokenOnRank0(n=3, size=40, seed=1)
    config = TrainConfig(**settings)
    result = train(config, Blobs(n=6, size=40), val_set)
    rank = os.environ["RANK"]
    torch.save(result["model"].state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"val": result["val"], "localization": getattr(result["model"], "localization", None)}, f)
