"""Run by tests/test_distributed.py under torchrun: trains a few steps, saves this rank's weights.

usage: torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT_DIR
"""
import os
import sys

import torch

from mud_iknn.train import TrainConfig, train
from synthetic import Blobs

if __name__ == "__main__":
    torch.set_num_threads(1)
    out_dir = sys.argv[1]
    config = TrainConfig(steps=3, batch_size=2, patch_size=32, lr=1e-3, backbone="densenet_tiny",
                         num_workers=0, device="cpu", out_dir=out_dir, checkpoint_every=2, log_every=1,
                         progress=False)
    result = train(config, Blobs(n=6, size=40))
    torch.save(result["model"].state_dict(), os.path.join(out_dir, f"rank{os.environ['RANK']}.pt"))
