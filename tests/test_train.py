"""Training engine: loss goes down, label variants, checkpoints, exact resume after a kill."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mud_iknn
import mud_iknn.labels
from mud_iknn.label_kinds import DensityLabel, IknnLabel
from mud_iknn.train import TrainConfig, load_checkpoint, save_checkpoint, train

from synthetic import Blobs


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path, **kwargs):
    base = dict(steps=4, batch_size=4, patch_size=32, lr=1e-3, backbone="densenet_tiny", num_workers=0,
                device="cpu", out_dir=str(tmp_path), checkpoint_every=0, log_every=1, progress=False)
    base.update(kwargs)
    return TrainConfig(**base)


def _records(path, split="train"):
    return [json.loads(line) for line in open(path) if json.loads(line)["split"] == split]


def test_config_defaults_and_json_round_trip():
    c = TrainConfig()
    assert (c.patch_size, c.batch_size, c.lr, c.lr_step, c.lr_gamma, c.flip_p, c.frozen_batchnorm) == \
        (224, 25, 1e-4, 100_000, 0.1, 0.5, True)
    assert c.backbone == "densenet201" and c.label == IknnLabel() and c.window_stride == 128
    c = TrainConfig(label=DensityLabel(beta=0.2), scale_range=(0.5, 2), grad_clip=1.0)
    again = TrainConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="tpu")
    # Values of the wrong type, as text settings give them, name the field instead of passing as truthy.
    for bad, message in [(dict(amp="False"), "amp must be true or false"), (dict(lr="abc"), "lr must be a number"),
                         (dict(label="density"), "label.kind=density"), (dict(seed=-1), r"seed must be in \[0"),
                         (dict(patch_size=16), "multiple of 32"), (dict(eval_stride=500), "eval_stride"),
                         (dict(eval_limit=0), "eval_limit"), (dict(scale_range=5), "scale_range"),
                         (dict(label={"k": "3"}), "label kind iknn: k must be an integer")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)


def test_config_map_modules_switch_round_trip():
    assert TrainConfig().map_modules is True
    count_only = TrainConfig(map_modules=False, backbone="densenet_tiny")
    data = json.loads(json.dumps(count_only.to_dict()))
    assert data["map_modules"] is False and TrainConfig.from_dict(data) == count_only
    # a configuration saved before the field existed is the full network
    del data["map_modules"]
    assert TrainConfig.from_dict(data).map_modules is True
    assert TrainConfig.from_dict(data) == TrainConfig(backbone="densenet_tiny")
    with pytest.raises(ValueError, match="map_modules"):
        TrainConfig(map_modules="false")


def test_small_config_for_cpu_demos():
    from mud_iknn.train import PRESETS

    c = TrainConfig.small(steps=10)
    assert (c.backbone, c.patch_size, c.device, c.steps, c.num_workers) == ("densenet_tiny", 64, "cpu", 10, 0)
    assert c.lr_step < TrainConfig.small().steps  # the learning rate decays within the preset's run
    assert c.average_decay == 0.996 and TrainConfig().average_decay is None  # predicts with the weight average
    assert c.cache_samples and not TrainConfig().cache_samples  # a small set is decoded once
    assert PRESETS["small"]().to_dict() == TrainConfig.small().to_dict()
    shorter = TrainConfig.small().with_steps(1200)  # 3700 of 4800 -> 925 of 1200
    assert (shorter.steps, shorter.lr_step, shorter.lr) == (1200, 925, TrainConfig.small().lr)
    assert TrainConfig.small().with_steps(1).lr_step == 1
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        TrainConfig.small().with_steps(0)


def test_a_time_budget_ends_the_run_and_decays_the_lr_at_its_fraction_of_the_budget(tmp_path, monkeypatch):
    import mud_iknn.train as engine

    now = [0.0]

    def clock():  # every reading 1 s later: read at the start, then at every tenth step
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(engine, "_clock", clock)
    data = Blobs(n=6, size=40)
    common = dict(calibrate_images=2, average_decay=0.9, average_bn_batches=3)
    # steps 10, 20, 30 read 1, 2, 3 s after the start: progress max(step, 100 x min(elapsed / 2.5, 1))
    # = 40, 80, 100: the lr (decay at 60 of 100) drops after step 20, as a 30-step run's with
    # lr_step 20; 3 > 2.5 s stops after step 30
    stopped = train(_config(tmp_path / "budget", steps=100, lr_step=60, max_seconds=2.5, **common), data)
    plain = train(_config(tmp_path / "plain", steps=30, lr_step=20, **common), data)
    assert stopped["step"] == 30 and engine.read_checkpoint(tmp_path / "budget" / "checkpoint.pt")["step"] == 30
    lrs = {r["step"]: r["lr"] for r in _records(stopped["metrics_file"])}
    # (a record's lr is the one its step leaves for the next)
    assert lrs[19] == 1e-3 and lrs[20] == lrs[30] == pytest.approx(1e-4, rel=1e-12)
    assert lrs == {r["step"]: r["lr"] for r in _records(plain["metrics_file"])}
    for (name, a), b in zip(stopped["model"].state_dict().items(), plain["model"].state_dict().values()):
        assert torch.equal(a, b), name  # weights, averaged and re-estimated statistics: bit for bit
    assert stopped["model"].localization == plain["model"].localization is not None
    # resuming without the budget goes on towards steps, the decayed lr kept (progress 100, lr_step 60)
    resumed = train(_config(tmp_path / "budget", steps=40, lr_step=60, **common), data, resume=True)
    assert resumed["step"] == 40 and resumed["train"]["lr"] == pytest.approx(1e-4, rel=1e-12)
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="max_seconds"):
            TrainConfig(max_seconds=bad)
    assert TrainConfig(max_seconds=200).max_seconds == 200  # an int is a number of seconds too


def test_the_lr_schedule_is_steplr_s_and_reads_its_checkpoints():
    import mud_iknn.train as engine

    config = TrainConfig(lr=1e-3, lr_step=7, lr_gamma=0.5)
    net = torch.nn.Linear(2, 1)
    ours = engine._StepDecay(torch.optim.Adam(net.parameters(), lr=config.lr), config)
    reference_optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    reference = torch.optim.lr_scheduler.StepLR(reference_optimizer, step_size=7, gamma=0.5)
    for step in range(1, 20):
        reference_optimizer.step()
        reference.step()
        ours.advance(step)
        assert ours.current == pytest.approx(reference.get_last_lr()[0], rel=1e-15), step
    restored = engine._StepDecay(torch.optim.Adam(net.parameters(), lr=config.lr), config)
    restored.load_state_dict(reference.state_dict())  # a checkpoint written before the time budget
    assert restored.progress == 19 and restored.current == pytest.approx(1e-3 * 0.25, rel=1e-15)


def test_short_training_lowers_the_loss(tmp_path):
    data = Blobs(n=8, size=48)
    result = train(_config(tmp_path, steps=30, patch_size=32), data)
    losses = [r["loss"] for r in _records(result["metrics_file"])]
    assert len(losses) == 30
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert result["step"] == 30 and (tmp_path / "curves.png").stat().st_size > 1000


def test_label_variant_switch(tmp_path, monkeypatch):
    calls = {"iknn": 0, "density": 0}

    def spy(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            assert kwargs["validate"] is False  # no host sync in the training step
            assert args[0].device.type == "cpu"  # device="cpu": the C++ kernel
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(mud_iknn.labels, "iknn_maps", spy("iknn", mud_iknn.labels.iknn_maps))
    monkeypatch.setattr(mud_iknn.labels, "density_maps", spy("density", mud_iknn.labels.density_maps))
    data = Blobs(n=4, size=32)
    train(_config(tmp_path / "density", steps=2, label=DensityLabel(), scale_range=(0.8, 1.25),
                  grad_clip=100.0), data)
    assert calls == {"iknn": 0, "density": 2}
    train(_config(tmp_path / "iknn", steps=3, label=IknnLabel(k=2)), data)
    assert calls == {"iknn": 3, "density": 2}
    _, config, _ = load_checkpoint(tmp_path / "density" / "checkpoint.pt")
    assert config.label.kind == "density"


def test_count_only_training_makes_no_labels_and_learns_the_count(tmp_path, monkeypatch):
    calls = []

    def refuse(name):
        def wrapper(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called while training a count-only network")
        return wrapper

    monkeypatch.setattr(mud_iknn.labels, "iknn_maps", refuse("iknn_maps"))
    monkeypatch.setattr(mud_iknn.labels, "density_maps", refuse("density_maps"))
    monkeypatch.setattr(DensityLabel, "make", refuse("DensityLabel.make"))
    # denser crowds than Blobs' default, so that learning the count shows above the batch-to-batch noise
    result = train(_config(tmp_path, steps=30, map_modules=False, label=DensityLabel()),
                   Blobs(n=8, size=48, max_heads=40))
    assert calls == []
    model = result["model"]
    assert model.map_channels == 0 and not any(name.startswith("map_modules.") for name in model.state_dict())
    records = _records(result["metrics_file"])
    assert len(records) == 30
    assert all(r["loss"] == r["count_loss"] and r["map_loss"] == 0.0 for r in records)  # the count loss alone
    losses = [r["loss"] for r in records]
    assert all(map(math.isfinite, losses)) and sum(losses[-5:]) < 0.5 * sum(losses[:5])
    # the checkpoint rebuilds the count-only network, with the trained weights
    loaded, config, _ = load_checkpoint(result["checkpoint"])
    assert config.map_modules is False and loaded.map_channels == 0
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        maps, counts = loaded(x)
        torch.testing.assert_close(counts, model(x)[1])
    assert maps.shape == (2, 0, 32, 32)


def test_checkpoint_without_the_map_modules_field_loads_the_full_network(tmp_path):
    # a checkpoint written before TrainConfig had map_modules: the full network
    result = train(_config(tmp_path, steps=1), Blobs(n=2, size=32))
    state = torch.load(result["checkpoint"], weights_only=True)
    del state["config"]["map_modules"]
    torch.save(state, tmp_path / "old.pt")
    model, config, _ = load_checkpoint(tmp_path / "old.pt")
    assert config.map_modules is True and model.map_channels == 3
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32))[0].shape == (1, 3, 32, 32)


def test_runs_are_reproducible_whatever_the_workers(tmp_path):
    data = Blobs(n=6, size=40)
    a = train(_config(tmp_path / "a", steps=3), data)
    b = train(_config(tmp_path / "b", steps=3, num_workers=1), data)
    for key, value in a["model"].state_dict().items():
        assert torch.equal(value, b["model"].state_dict()[key]), key


class _CountingReads(torch.utils.data.Dataset):
    """``data`` counting how often each sample is read."""

    def __init__(self, data):
        self.data, self.reads = data, [0] * len(data)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        self.reads[index] += 1
        return self.data[index]


def test_cached_samples_are_read_once_and_give_the_same_run(tmp_path):
    plain, cached = _CountingReads(Blobs(n=4, size=40)), _CountingReads(Blobs(n=4, size=40))
    a = train(_config(tmp_path / "a", steps=5, calibrate_images=0), plain)
    b = train(_config(tmp_path / "b", steps=5, calibrate_images=0, cache_samples=True), cached)
    assert plain.reads == [5, 5, 5, 5] and cached.reads == [1, 1, 1, 1]  # 5 steps of 4 patches
    for key, value in a["model"].state_dict().items():
        assert torch.equal(value, b["model"].state_dict()[key]), key
    data = TrainConfig(cache_samples=True).to_dict()
    del data["cache_samples"]  # a configuration saved before the field existed
    assert TrainConfig.from_dict(data).cache_samples is False


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    data = Blobs(n=6, size=40)
    full = train(_config(tmp_path / "full", steps=6, checkpoint_every=2, lr_step=3, lr_gamma=0.5), data)

    config = _config(tmp_path / "killed", steps=6, checkpoint_every=2, lr_step=3, lr_gamma=0.5)
    # the same run in another process, SIGKILLed after step 5 (after the step-4 checkpoint)
    script = textwrap.dedent(f"""
        import json, os, signal, torch
        from mud_iknn.train import TrainConfig, train
        from synthetic import Blobs
        torch.set_num_threads(1)
        def kill(step, record):
            if step == 5:
                os.kill(os.getpid(), signal.SIGKILL)
        train(TrainConfig.from_dict(json.loads({json.dumps(json.dumps(config.to_dict()))})), Blobs(n=6, size=40),
              on_step=kill)
    """)
    package_root = Path(mud_iknn.__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(package_root), str(Path(__file__).parent)]))
    # cwd: `python -c` puts the working directory first on sys.path, where a source checkout
    # (no compiled _C) would shadow the installed package.
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [r["step"] for r in _records(tmp_path / "killed" / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")[2]["step"] == 4
    steps_run = []
    resumed = train(config, data, resume=True, on_step=lambda step, record: steps_run.append(step))
    assert steps_run == [5, 6] and resumed["step"] == 6
    for key, value in full["model"].state_dict().items():
        assert torch.equal(value, resumed["model"].state_dict()[key]), key
    # the log of the killed run's step 5 was replaced, not duplicated
    strip = lambda records: [{k: v for k, v in r.items() if k != "sec_per_step"} for r in records]
    assert strip(_records(resumed["metrics_file"])) == strip(_records(full["metrics_file"]))
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert a["scheduler"] == b["scheduler"] and a["step"] == b["step"] == 6
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    # the RNG states too (the loader draws its workers' seeds from a generator of its own)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) and torch.equal(a["rng"]["numpy"][1], b["rng"]["numpy"][1])


def test_validation_during_training(tmp_path):
    result = train(_config(tmp_path, steps=4, eval_every=2, eval_stride=16), Blobs(n=4, size=32),
                   val_set=Blobs(n=3, size=40, seed=1))
    val = _records(result["metrics_file"], "val")
    assert [r["step"] for r in val] == [2, 4]
    assert result["val"] == val[-1] and result["val"]["mae"] >= 0 and result["val"]["rmse"] >= result["val"]["mae"]


def test_resume_refuses_settings_that_would_make_it_another_run(tmp_path):
    data = Blobs(n=4, size=32)
    train(_config(tmp_path, steps=2, checkpoint_every=1, batch_size=2), data)
    for changed, message in [(dict(batch_size=3), "batch_size 2 -> 3"), (dict(lr=1e-5), "lr 0.001 -> 1e-05"),
                             (dict(label=DensityLabel()), "label "), (dict(patch_size=64), "patch_size")]:
        with pytest.raises(ValueError, match=f"checkpoint.pt was written by a run with other settings.*{message}"):
            train(_config(tmp_path, steps=3, **{"batch_size": 2, **changed}), data, resume=True)
    # how long it runs, how it logs and validates may change
    result = train(_config(tmp_path, steps=3, batch_size=2, log_every=2, eval_every=5), data, resume=True)
    assert result["step"] == 3


def test_resuming_a_finished_run_trains_and_writes_nothing_and_refuses_fewer_steps(tmp_path):
    data, val = Blobs(n=4, size=32), Blobs(n=2, size=32, seed=1)
    first = train(_config(tmp_path, steps=2, batch_size=2, eval_stride=16), data, val_set=val)
    log = Path(first["metrics_file"]).read_text()
    again = train(_config(tmp_path, steps=2, batch_size=2, eval_stride=16), data, val_set=val, resume=True)
    assert again["step"] == 2 and again["val"] == first["val"] and Path(first["metrics_file"]).read_text() == log
    assert all(torch.equal(a, b) for a, b in zip(again["model"].state_dict().values(),
                                                  first["model"].state_dict().values()))
    with pytest.raises(ValueError, match="is at step 2, past steps = 1"):
        train(_config(tmp_path, steps=1, batch_size=2, eval_stride=16), data, resume=True)


def test_a_run_checks_its_out_dir_first_and_names_only_files_it_wrote(tmp_path, monkeypatch):
    data = Blobs(n=4, size=32)
    (tmp_path / "run").mkdir()
    stale = tmp_path / "run" / ".checkpoint.pt.12345.tmp"  # a checkpoint write killed part way
    stale.write_bytes(b"half")
    result = train(_config(tmp_path / "run", steps=1, batch_size=2, log_every=0), data)
    assert not stale.exists() and result["metrics_file"] is None and result["plot"] is None  # no log written
    real_write = Path.write_bytes

    def read_only(path, data):
        if path.name.startswith(".write-test"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_write(path, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    steps = []
    with pytest.raises(OSError, match="out_dir .*ro is not writable"):
        train(_config(tmp_path / "ro", steps=1, batch_size=2), data, on_step=lambda step, _: steps.append(step))
    assert steps == []  # before the first step


def test_resume_refuses_another_world_size_and_names_a_changed_label_kind(tmp_path):
    from mud_iknn.train import run_settings

    data = Blobs(n=4, size=32)
    config = _config(tmp_path, steps=2, batch_size=2)
    model = mud_iknn.train.build_model(config)
    save_checkpoint(tmp_path / "checkpoint.pt", model, config, step=1, world_size=2)
    with pytest.raises(ValueError, match="trained by 2 process"):
        train(config, data, resume=True)
    settings, _ = run_settings({"out_dir": str(tmp_path), "label": {"kind": "density"}}, resume=True)
    assert settings["label"] == {"kind": "density"}  # not density with the ikNN kind's settings
    with pytest.raises(ValueError, match="label "):
        train(TrainConfig.from_dict(settings), data, resume=True)


def test_a_failing_validation_first_checkpoints_the_steps_trained(tmp_path):
    class Broken(Blobs):
        def __getitem__(self, index):
            raise ValueError("val/7.json: head points are not numbers")

    for eval_every in (0, 3):  # the final validation, and a periodic one
        out = tmp_path / f"every{eval_every}"
        with pytest.raises(ValueError, match="val/7.json"):
            train(_config(out, steps=4, eval_every=eval_every), Blobs(n=4, size=32), val_set=Broken(n=1))
        assert load_checkpoint(out / "checkpoint.pt")[2]["step"] == (eval_every or 4)


def test_resume_drops_a_log_line_cut_by_the_kill(tmp_path):
    data = Blobs(n=4, size=32)
    config = _config(tmp_path, steps=2, checkpoint_every=1)
    train(config, data)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "step": 3, "lo')
    config.steps = 3
    result = train(config, data, resume=True)
    assert [r["step"] for r in _records(result["metrics_file"])] == [1, 2, 3]


def test_checkpoint_round_trip_and_refusals(tmp_path):
    config = _config(tmp_path, steps=1)
    result = train(config, Blobs(n=2, size=32))
    model, loaded, extra = load_checkpoint(result["checkpoint"])
    assert loaded == config and extra["step"] == 1 and not model.training
    x = torch.rand(1, 3, 32, 32)
    result["model"].eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[1], result["model"](x)[1])
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt"):
        load_checkpoint(tmp_path / "notes.txt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="plain.pt.*not a mud_iknn checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled_module.pt")  # needs pickle: refused by weights_only
    with pytest.raises(ValueError, match="pickled_module.pt"):
        load_checkpoint(tmp_path / "pickled_module.pt")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_checkpoint(tmp_path / "nowhere.pt")
    state = torch.load(result["checkpoint"], weights_only=True)
    for damage, message in [(lambda s: s.pop("config"), "damaged .*no config"),
                            (lambda s: s["config"].update(patch_size=64), "checkpoint.pt: .*size mismatch"),
                            (lambda s: s["config"].update(colour=1), r"checkpoint.pt: .*unknown fields \['colour'\]")]:
        damaged = {**state, "config": dict(state["config"])}
        damage(damaged)
        torch.save(damaged, tmp_path / "checkpoint.pt")
        with pytest.raises(ValueError, match=message):
            load_checkpoint(tmp_path / "checkpoint.pt")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    config = _config(tmp_path, steps=1)
    model = train(config, Blobs(n=2, size=32))["model"]
    path = tmp_path / "checkpoint.pt"
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, config, step=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "curves.png", "metrics.jsonl"]


@pytest.mark.cuda
def test_cuda_training_makes_labels_on_the_gpu_with_amp(tmp_path, monkeypatch):
    devices = []
    original = mud_iknn.labels.iknn_maps

    def spy(points, *args, **kwargs):
        devices.append(points.device.type)
        return original(points, *args, **kwargs)

    monkeypatch.setattr(mud_iknn.labels, "iknn_maps", spy)
    data = Blobs(n=6, size=48)
    result = train(_config(tmp_path, steps=20, device="cuda", amp=True, grad_clip=10.0, eval_every=10,
                           eval_stride=16), data, val_set=Blobs(n=2, size=48, seed=1))
    assert devices == ["cuda"] * 20
    losses = [r["loss"] for r in _records(result["metrics_file"])]
    assert all(map(math.isfinite, losses)) and sum(losses[-5:]) < sum(losses[:5])
    assert next(result["model"].parameters()).is_cuda
    assert [r["step"] for r in _records(result["metrics_file"], "val")] == [10, 20]
    model, _, _ = load_checkpoint(result["checkpoint"], map_location="cuda")
    assert next(model.parameters()).is_cuda


def test_plot_reader_names_a_broken_file(tmp_path):
    from mud_iknn.plots import plot_metrics, read_metrics
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"split": "train", "step": 1, "loss": 2.0}\n\n{"split": "val", "step": 1, "mae": 1.5}\n')
    assert [r["step"] for r in read_metrics(path)] == [1, 1]
    assert plot_metrics(path, tmp_path / "c.png").stat().st_size > 1000
    path.write_text('{"split": "train"\n')
    with pytest.raises(ValueError, match="metrics.jsonl:1"):
        read_metrics(path)
