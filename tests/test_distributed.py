"""DistributedDataParallel under torchrun: 2 CPU processes (gloo) keep identical replicas."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mud_iknn
from mud_iknn.evaluate import evaluate
from mud_iknn.train import _PatchStream, build_model, load_checkpoint

from synthetic import Blobs

TESTS = Path(__file__).resolve().parent


def _torchrun(out_dir, scenario="plain"):
    # the workers import the same mud_iknn as this process (a source tree or an installed package)
    package_root = Path(mud_iknn.__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(package_root), str(TESTS)]), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TESTS / "ddp_worker.py"), str(out_dir), scenario]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def test_ranks_get_disjoint_shards_of_each_epoch():
    data = Blobs(n=6, size=16)
    streams = [iter(_PatchStream(data, batch_size=3, seed=0, rank=r, world_size=2)) for r in range(2)]
    first = [next(s) for s in streams]
    indices = [[i for i, _ in batch] for batch in first]
    assert sorted(indices[0] + indices[1]) == list(range(6))
    seeds = [seed for batch in first for _, seed in batch]
    assert len(set(seeds)) == 6  # every sample gets its own augmentation


def test_two_process_gloo_training_keeps_replicas_identical(tmp_path):
    done = _torchrun(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    model, config, extra = load_checkpoint(tmp_path / "checkpoint.pt")
    assert extra["step"] == 3
    torch.manual_seed(config.seed)
    initial = build_model(config).state_dict()  # the replicas' common starting point
    changed = 0
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
        assert torch.equal(value, model.state_dict()[key]), key
        changed += not torch.equal(value, initial[key]) if value.is_floating_point() else 0
    assert changed > 0
    # rank 0 alone logs: one record per step
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3]


def test_ranks_return_the_checkpoint_s_model_with_batchnorm_trained_and_validate_a_share_each(tmp_path):
    # the last forward updates each replica's BatchNorm statistics on its own batch, and each
    # re-estimates the average's on its own batches: the ranks still end with one model, the
    # checkpoint's, its localization settings, and the validation of one process
    done = _torchrun(tmp_path, "batchnorm")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    model, config, extra = load_checkpoint(tmp_path / "checkpoint.pt")
    saved = model.state_dict()
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in range(2):
        weights = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key, value in weights.items():
            assert torch.equal(value, saved[key]), (rank, key)
        assert results[rank] == {"val": extra["metrics"]["val"], "localization": extra["localization"]}
    assert extra["localization"] is not None
    single = evaluate(model, Blobs(n=3, size=40, seed=1), window=config.patch_size, stride=config.window_stride)
    for key in ("mae", "rmse", "nae"):  # this process's threads sum the convolutions in another order
        assert extra["metrics"]["val"][key] == pytest.approx(single[key], rel=1e-6), key
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records if r["split"] == "val"] == [3]  # logged once


def test_a_validation_failing_on_one_rank_checkpoints_and_ends_every_rank(tmp_path):
    done = _torchrun(tmp_path, "broken_val")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "val/1.jpg: image file is truncated" in output
    assert "validation failed on rank 0: OSError: val/1.jpg" in output  # rank 1 ends itself, naming rank 0
    assert load_checkpoint(tmp_path / "checkpoint.pt")[2]["step"] == 3  # the steps trained, not the last periodic checkpoint's 2
