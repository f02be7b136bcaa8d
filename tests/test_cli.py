"""The mud-iknn command line: parsing, data-set resolution, errors, labels export, and the wiring of
train / eval / count / demo / bench (against small stand-ins for the model modules where the real
ones are not needed to check the command's own logic)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from mud_iknn import _settings, cli
from mud_iknn.data import SyntheticCrowds, open_dataset
from cli_runner import run


pytestmark = pytest.mark.usefixtures("one_thread")  # the shared CI cores



def write_shanghaitech(root: Path, heads: dict, size=(12, 16)):
    """A ShanghaiTech part A train split with flat grey images and the given points per image."""
    split = root / "part_A" / "train_data"
    (split / "images").mkdir(parents=True)
    (split / "ground-truth").mkdir(parents=True)
    for n, pts in heads.items():
        Image.new("RGB", (size[1], size[0]), (90, 90, 90)).save(split / "images" / f"IMG_{n}.jpg")
        info = np.empty((1, 1), dtype=[("location", object), ("number", object)])
        info[0, 0]["location"] = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        info[0, 0]["number"] = np.array([[float(len(pts))]])
        cell = np.empty((1, 1), dtype=object)
        cell[0, 0] = info
        scipy.io.savemat(str(split / "ground-truth" / f"GT_IMG_{n}.mat"), {"image_info": cell})
    return root


# ------------------------------------------------------------------ parsing and errors

@pytest.mark.parametrize("command, expected", [
    ("demo", "--steps"), ("train", "--resume"), ("eval", "--checkpoint"), ("count", "--overlay"),
    ("labels", "--kind"), ("bench", "--full"), ("check", "--split")])
def test_every_command_has_help(capsys, command, expected):
    status, out, _ = run(capsys, command, "--help")
    assert status == 0 and expected in out and f"mud-iknn {command}" in out


def test_unknown_data_set_is_a_usage_error(capsys, tmp_path):
    status, _, err = run(capsys, "labels", "--dataset", "mall", "--root", tmp_path, "--out", tmp_path / "o")
    assert status == 2 and "invalid choice: 'mall'" in err


@pytest.mark.parametrize("argv, message", [
    (["labels", "--dataset", "jhu_crowd", "--out", "o"], "--dataset jhu_crowd needs --root DIR"),
    (["labels", "--dataset", "synthetic", "--root", ".", "--out", "o"], "takes no --root"),
    (["labels", "--dataset", "ucf_qnrf", "--root", ".", "--fold", "1", "--out", "o"], "--fold applies to"),
    (["labels", "--dataset", "ucf_qnrf", "--root", ".", "--split", "val", "--out", "o"], "has splits train, test"),
    (["labels", "--dataset", "synthetic", "--num-images", "0", "--out", "o"], "--num-images must be at least 1"),
    (["labels", "--dataset", "synthetic", "--k", "1000", "--out", "o"], "--k must be in [1, "),
    (["labels", "--dataset", "synthetic", "--kind", "density", "--sigma", "-1", "--out", "o"], "--sigma"),
    (["labels", "--dataset", "synthetic", "--max-distance", "far", "--out", "o"],
     "argument --max-distance: must be a positive number, got far"),
    (["train", "--dataset", "synthetic", "--set", "novalue"], "--set expects KEY=VALUE"),
    (["labels", "--dataset", "synthetic", "--sigma", "4", "--out", "o"], "--sigma applies to --kind density"),
    (["labels", "--dataset", "synthetic", "--kind", "density", "--transform", "inverse_sqrt", "--out", "o"],
     "--transform applies to --kind iknn"),
    (["train", "--dataset", "synthetic", "--seed", "-1"], "--seed must be at least 0"),
    (["train", "--dataset", "synthetic", "--data-seed", "-1"], "--data-seed must be at least 0"),
])
def test_bad_arguments_exit_2_with_usage(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    status, _, err = run(capsys, *argv)
    assert not (tmp_path / "o").exists()  # rejected before any work
    assert status == 2 and message in err and "usage: mud-iknn" in err and "Traceback" not in err


def test_missing_root_folder_is_one_line(capsys, tmp_path):
    status, out, err = run(capsys, "labels", "--dataset", "shanghaitech_b", "--root", tmp_path / "nope",
                           "--out", tmp_path / "o")
    assert status == 1 and out == ""
    assert err.strip() == f"mud-iknn labels: error: ShanghaiTech root folder not found: {tmp_path / 'nope'}"


class _BadAnnotations(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise ValueError("ds/folder/b.json: head points are not numbers")


def test_errors_in_data_loader_workers_keep_the_files_name():
    # a DataLoader re-raises a worker's error with a whole traceback as its message
    with pytest.raises(ValueError) as info:
        next(iter(torch.utils.data.DataLoader(_BadAnnotations(), num_workers=1)))
    assert "DataLoader worker" in str(info.value).splitlines()[0]
    assert cli.error_line(info.value) == "ds/folder/b.json: head points are not numbers"
    assert cli.error_line(KeyError("config")) == "KeyError: 'config'"  # not an input error: its type shown


def test_model_commands_without_the_engine_are_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mud_iknn.train", None)  # as if the engine were not installed
    status, _, err = run(capsys, "demo", "--out", tmp_path / "demo")
    assert status == 1 and err.startswith("mud-iknn demo: error: mud_iknn.train is not available")
    assert not (tmp_path / "demo").exists()


def _subprocess_env() -> dict:
    """The environment for a child Python that imports the same mud_iknn as this process (the
    installed package, or the source tree when that is what the tests run against)."""
    import mud_iknn

    package_parent = str(Path(mud_iknn.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}


def test_module_entry_point_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mud_iknn", "--version"], capture_output=True, text=True,
                            cwd=tmp_path, env=_subprocess_env(), timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("mud-iknn ")


# ------------------------------------------------------------------ labels

def test_labels_iknn_maps_match_hand_computed_distances(capsys, tmp_path):
    heads = {1: [[2.0, 1.0], [13.0, 9.0]], 2: []}
    root = write_shanghaitech(tmp_path / "sh", heads)
    out = tmp_path / "labels"
    status, stdout, _ = run(capsys, "labels", "--dataset", "shanghaitech_a", "--root", root, "--out", out)
    assert status == 0 and "wrote 2 iknn label maps" in stdout
    first = np.load(out / "IMG_1.npy")
    assert first.shape == (12, 16) and first.dtype == np.float32
    assert first[1, 2] == pytest.approx(1.0) and first[9, 13] == pytest.approx(1.0)
    assert first[0, 0] == pytest.approx(1.0 / (1.0 + np.sqrt(5.0)), rel=1e-6)   # (0,0) -> (2,1)
    assert first[11, 15] == pytest.approx(1.0 / (1.0 + np.sqrt(8.0)), rel=1e-6)  # (15,11) -> (13,9)
    assert first[1, 7] == pytest.approx(1.0 / 6.0, rel=1e-6)                     # 5 px right of (2,1)
    assert (np.load(out / "IMG_2.npy") == 0).all()  # no heads: the map is 0 everywhere
    with Image.open(out / "IMG_1.png") as preview:
        assert preview.size == (32, 12)  # image | map
    index = json.loads((out / "labels.json").read_text())
    assert index["label"] == {"kind": "iknn", "k": 1, "max_distance": None, "transform": "inverse"}
    assert [(i["name"], i["count"]) for i in index["images"]] == [("IMG_1", 2.0), ("IMG_2", 0.0)]


def test_labels_k_clip_and_sqrt_options(capsys, tmp_path):
    root = write_shanghaitech(tmp_path / "sh", {1: [[0.0, 0.0], [10.0, 0.0]]})
    out = tmp_path / "labels"
    status, _, _ = run(capsys, "labels", "--dataset", "shanghaitech_a", "--root", root, "--out", out, "--k", "2",
                       "--max-distance", "4", "--transform", "inverse_sqrt", "--no-preview")
    assert status == 0 and not (out / "IMG_1.png").exists()
    label = np.load(out / "IMG_1.npy")
    # pixel (x=0, y=0): distances 0 and 10 -> clipped 0 and 4 -> mean 2 -> 1/sqrt(3)
    assert label[0, 0] == pytest.approx(1.0 / np.sqrt(3.0), rel=1e-6)
    # pixel (x=5, y=3): both distances sqrt(34) > 4 -> 1/sqrt(5)
    assert label[3, 5] == pytest.approx(1.0 / np.sqrt(5.0), rel=1e-6)


def test_labels_density_has_unit_mass_per_head(capsys, tmp_path):
    root = write_shanghaitech(tmp_path / "sh", {1: [[16.0, 14.0]]}, size=(40, 40))
    (root / "part_A" / "train_data" / "images" / "IMG_1.jpg").unlink()
    Image.new("RGB", (40, 40)).save(root / "part_A" / "train_data" / "images" / "IMG_1.jpg")
    out = tmp_path / "density"
    status, _, _ = run(capsys, "labels", "--dataset", "shanghaitech_a", "--root", root, "--out", out,
                       "--kind", "density", "--sigma", "2")
    assert status == 0
    label = np.load(out / "IMG_1.npy")
    assert label.sum() == pytest.approx(1.0, abs=1e-5)  # the kernel (radius 8) fits inside the image
    assert np.unravel_index(label.argmax(), label.shape) == (14, 16)
    # separable Gaussian, sigma 2: one pixel off along x weighs exp(-1/8) of the peak
    assert label[14, 17] / label[14, 16] == pytest.approx(np.exp(-1 / 8), rel=1e-5)
    index = json.loads((out / "labels.json").read_text())
    assert index["label"]["sigma"] == 2.0 and index["images"][0]["map_sum"] == pytest.approx(1.0, abs=1e-5)


def test_labels_synthetic_limit(capsys, tmp_path):
    status, _, _ = run(capsys, "labels", "--dataset", "synthetic", "--num-images", "5", "--image-size", "48",
                       "--split", "val", "--limit", "2", "--out", tmp_path)
    assert status == 0
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["synthetic_val_00000.npy", "synthetic_val_00001.npy"]


# ------------------------------------------------------------------ the small configuration, trained briefly

def _small(out_dir, **overrides):
    from mud_iknn.train import TrainConfig

    return TrainConfig.small(**{"steps": 2, "out_dir": str(out_dir), "checkpoint_every": 0, "eval_every": 0,
                                "progress": False, **overrides})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint of TrainConfig.small() trained for 2 steps (its patch size 64, stride 36)."""
    from mud_iknn.train import train

    out = tmp_path_factory.mktemp("small_run")
    train(_small(out), SyntheticCrowds(4, size=64, seed=5))
    return out / "checkpoint.pt"


def _expected(checkpoint, path, window=None, stride=None):
    """predict_image's Prediction of the image with the checkpoint's model, in this process."""
    from mud_iknn.data import load_image
    from mud_iknn.evaluate import predict_image
    from mud_iknn.train import load_checkpoint

    model, config, _ = load_checkpoint(checkpoint)
    return predict_image(model, load_image(path), window or config.patch_size, stride or config.window_stride)


def _save_scene(path, index=0, size=80):
    Image.fromarray(SyntheticCrowds(index + 1, size=size, seed=3)[index].image.permute(1, 2, 0).numpy()).save(path)
    return path


# ------------------------------------------------------------------ count

def test_count_prints_counts_and_writes_overlays(capsys, tmp_path, checkpoint):
    a, b = _save_scene(tmp_path / "a.png", 0), _save_scene(tmp_path / "b.jpg", 1, size=100)
    status, out, err = run(capsys, "count", a, b, "--checkpoint", checkpoint, "--overlay", tmp_path / "ov",
                           "--device", "cpu")
    assert status == 0, err
    assert out.splitlines() == [f"{a}\t{_expected(checkpoint, a).count:.1f}", f"{b}\t{_expected(checkpoint, b).count:.1f}"]
    assert (tmp_path / "ov" / "a.png").is_file() and (tmp_path / "ov" / "b.png").is_file()
    status, out, _ = run(capsys, "count", a, "--checkpoint", checkpoint, "--json", "--overlay", tmp_path / "one.png",
                         "--window", "96", "--stride", "40")
    entry, = json.loads(out)
    assert status == 0 and (entry["image"], entry["overlay"]) == (str(a), str(tmp_path / "one.png"))
    expected = _expected(checkpoint, a, 96, 40)
    assert entry["count"] == pytest.approx(expected.count, rel=1e-6)
    np.testing.assert_allclose(np.reshape(entry["points"], (-1, 2)), expected.points.numpy(), atol=5e-3)  # heads, 0.01 px
    assert (tmp_path / "one.png").is_file()
    # --threshold / --min-distance over the checkpoint's calibrated settings
    from mud_iknn.data import load_image
    from mud_iknn.evaluate import predict_image
    from mud_iknn.train import load_checkpoint
    model, config, extra = load_checkpoint(checkpoint)
    assert extra["localization"] is not None
    status, out, _ = run(capsys, "count", a, "--checkpoint", checkpoint, "--json", "--threshold", "0.05")
    chosen = predict_image(model, load_image(a), config.patch_size, config.window_stride, threshold=0.05).points
    assert status == 0 and len(json.loads(out)[0]["points"]) == len(chosen) != len(_expected(checkpoint, a).points)
    status, out, _ = run(capsys, "count", a, "--checkpoint", checkpoint, "--json", "--threshold", "0.3",
                         "--min-distance", "0")
    chosen = predict_image(model, load_image(a), config.patch_size, config.window_stride, threshold=0.3,
                           min_distance=0).points
    assert status == 0 and np.reshape(json.loads(out)[0]["points"], (-1, 2)).shape == chosen.shape
    # images of one name from two folders get an overlay each
    (tmp_path / "d2").mkdir()
    a2 = tmp_path / "d2" / "a.png"
    Image.new("L", (30, 20), 0).save(a2)
    status, out, _ = run(capsys, "count", a, a2, "--checkpoint", checkpoint, "--json", "--overlay", tmp_path / "two")
    assert status == 0 and [r["overlay"] for r in json.loads(out)] == [str(tmp_path / "two" / "a.png"),
                                                                       str(tmp_path / "two" / "a_2.png")]


def test_count_errors(capsys, tmp_path, checkpoint):
    status, _, err = run(capsys, "count", tmp_path / "missing.jpg", "--checkpoint", checkpoint)
    assert status == 1 and err.strip() == f"mud-iknn count: error: image not found: {tmp_path / 'missing.jpg'}"
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    status, _, err = run(capsys, "count", tmp_path / "x.png", "--checkpoint", tmp_path / "none.pt")
    assert status == 1 and "checkpoint not found" in err and str(tmp_path / "none.pt") in err
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    status, _, err = run(capsys, "count", tmp_path / "x.png", "--checkpoint", tmp_path / "bad.pt")
    assert status == 1 and len(err.strip().splitlines()) == 1 and "bad.pt is not a mud_iknn checkpoint" in err
    status, _, err = run(capsys, "count", tmp_path / "x.png", "--checkpoint", checkpoint,
                         "--overlay", tmp_path / "o.jpg")
    assert status == 2 and "must be a .png file" in err
    status, _, err = run(capsys, "count", tmp_path / "x.png", tmp_path / "x.png", "--checkpoint", checkpoint,
                         "--overlay", tmp_path / "o.png")
    assert status == 2 and "--overlay for 2 images must be a folder" in err
    for device, message in [("gpu", "--device must be auto, cpu, cuda or cuda:N"),
                            ("cuda:x", "--device must be"), ("cuda:99", "cuda:99")]:
        status, _, err = run(capsys, "count", tmp_path / "x.png", "--checkpoint", checkpoint, "--device", device)
        assert status == 2 and message in err
    status, _, err = run(capsys, "count", tmp_path / "x.png", "--checkpoint", checkpoint, "--window", "16")
    assert status == 2 and "--window must be at least 32" in err


# ------------------------------------------------------------------ eval

def test_eval_prints_table_and_writes_json(capsys, tmp_path, checkpoint):
    from mud_iknn.evaluate import evaluate
    from mud_iknn.train import load_checkpoint

    root = write_shanghaitech(tmp_path / "sh", {1: [[1.0, 1.0]], 2: [[2.0, 2.0], [5.0, 5.0]]})
    report = tmp_path / "report.json"
    status, out, err = run(capsys, "eval", "--checkpoint", checkpoint, "--dataset", "shanghaitech_a",
                           "--root", root, "--split", "train", "--json", report, "--device", "cpu")
    assert status == 0, err
    model, _, _ = load_checkpoint(checkpoint)
    expected = evaluate(model, open_dataset("shanghaitech_a", root, split="train"), window=64, stride=36)
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["MAE", "MSE*", "NAE"]  # the field's "MSE" is the RMSE (a footnote says so)
    assert lines[1].split()[:5] == ["shanghaitech_a", "train", f"{expected['mae']:.2f}", f"{expected['rmse']:.2f}",
                                    f"{expected['nae']:.4f}"]
    data = json.loads(report.read_text())
    assert (data["window"], data["stride"], data["images"]) == (64, 36, 2)  # the checkpoint's patch size, stride
    assert data["mae"] == pytest.approx(expected["mae"]) and [r["name"] for r in data["per_image"]] == ["IMG_1", "IMG_2"]
    status, out, _ = run(capsys, "eval", "--checkpoint", checkpoint, "--dataset", "synthetic", "--num-images", "1",
                         "--image-size", "48", "--json", "-")
    assert status == 0 and json.loads(out)["split"] == "test"  # the reporting split by default
    status, out, _ = run(capsys, "eval", "--checkpoint", checkpoint, "--dataset", "synthetic", "--num-images", "1",
                         "--image-size", "48", "--window", "70", "--json", "-")
    assert status == 0 and (json.loads(out)["window"], json.loads(out)["stride"]) == (70, 40)
    # NAE without a positive true count is NaN, which JSON cannot hold: null; a folder is no --json target
    empty = write_shanghaitech(tmp_path / "empty", {1: []})
    status, out, err = run(capsys, "eval", "--checkpoint", checkpoint, "--dataset", "shanghaitech_a", "--root", empty,
                           "--split", "train", "--json", "-")
    assert status == 0 and '"nae": null' in out and json.loads(out)["nae"] is None, err
    status, out, err = run(capsys, "eval", "--checkpoint", checkpoint, "--dataset", "synthetic", "--num-images", "1",
                           "--json", tmp_path)
    assert status == 2 and "is a folder" in err and out == ""  # refused before the work


# ------------------------------------------------------------------ train

def _trained_config(run_dir):
    from mud_iknn.train import read_checkpoint

    return read_checkpoint(Path(run_dir) / "checkpoint.pt")["config"]


def test_train_preset_small_is_train_config_small(capsys, tmp_path):
    from mud_iknn.train import TrainConfig

    status, out, err = run(capsys, "train", "--preset", "small", "--dataset", "synthetic", "--num-images", "2",
                           "--image-size", "64", "--val-split", "none", "--out-dir", tmp_path / "run",
                           "--steps", "2", "--set", "progress=false")
    assert status == 0, err
    assert _trained_config(tmp_path / "run") == TrainConfig.small(steps=2, out_dir=str(tmp_path / "run"),
                                                                  progress=False).to_dict()
    assert json.loads(out)["step"] == 2
    status, _, err = run(capsys, "train", "--preset", "large", "--dataset", "synthetic")
    assert status == 2 and "--preset must be one of small, got 'large'" in err


def test_train_preset_steps_move_its_lr_decay_unless_lr_step_is_given(capsys, tmp_path):
    common = ("train", "--preset", "small", "--dataset", "synthetic", "--num-images", "2", "--image-size", "64",
              "--val-split", "none", "--set", "progress=false", "--set", "average_bn_batches=0")
    status, _, err = run(capsys, *common, "--out-dir", tmp_path / "a", "--steps", "4")
    assert status == 0, err
    cfg = _trained_config(tmp_path / "a")
    assert (cfg["steps"], cfg["lr_step"]) == (4, round(4 * 3700 / 4800))  # the preset's 3700 of 4800 steps
    # resumed with the same command, longer: the checkpoint's settings, its lr decay where it was
    status, out, err = run(capsys, *common, "--out-dir", tmp_path / "a", "--steps", "6", "--resume")
    assert status == 0 and json.loads(out)["step"] == 6, err
    assert (lambda c: (c["steps"], c["lr_step"]))(_trained_config(tmp_path / "a")) == (6, 3)
    status, out, err = run(capsys, *common, "--out-dir", tmp_path / "a", "--resume")  # nothing left to train
    assert status == 0 and json.loads(out)["step"] == 6, err
    config = tmp_path / "length.json"
    config.write_text(json.dumps({"steps": 3}))  # from a file too
    status, _, err = run(capsys, *common, "--out-dir", tmp_path / "b", "--config", config, "--set", "lr_step=1")
    assert status == 0, err
    assert (lambda c: (c["steps"], c["lr_step"]))(_trained_config(tmp_path / "b")) == (3, 1)
    status, _, err = run(capsys, *common, "--out-dir", tmp_path / "c", "--set", "steps=\"many\"")
    assert status != 0 and "steps must be an integer, got 'many'" in err


def test_train_merges_file_options_and_set(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"steps": 100, "lr": 0.01, "batch_size": 4, "label": {"kind": "iknn", "k": 2}}))
    status, out, err = run(capsys, "train", "--preset", "small", "--dataset", "synthetic", "--num-images", "4",
                           "--image-size", "48", "--config", config, "--steps", "2", "--out-dir", tmp_path / "run",
                           "--label", "density", "--set", "label.k=3", "--set", "progress=false", "--resume")
    assert status == 0, err
    cfg = _trained_config(tmp_path / "run")
    # preset < file < options < --set; nested settings merged key by key
    assert (cfg["steps"], cfg["lr"], cfg["batch_size"], cfg["out_dir"]) == (2, 0.01, 4, str(tmp_path / "run"))
    assert (cfg["label"]["kind"], cfg["label"]["k"], cfg["backbone"], cfg["patch_size"]) == \
        ("density", 3, "densenet_tiny", 64)
    assert "no checkpoint in" in err  # --resume with nothing to resume starts a new run
    summary = json.loads(out)
    assert summary["step"] == 2 and summary["checkpoint"] == str(tmp_path / "run" / "checkpoint.pt")
    assert summary["val"]["split"] == "val" and "model" not in summary  # the synthetic val split by default


def test_train_help_names_the_configs_defaults():
    from mud_iknn.train import TrainConfig

    train_parser = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices.items()
                        if a[0] == "train")[1]
    helps = {a.dest: a.help for a in train_parser._actions}
    default = TrainConfig()
    for field in ("steps", "batch_size", "patch_size", "lr", "num_workers", "seed", "device", "out_dir",
                  "checkpoint_every", "eval_every"):
        assert f"default {getattr(default, field)})" in helps[field], field
    assert f"default {default.label.kind})" in helps["label"] and "(the paper's, default)" in helps["backbone"]
    assert default.backbone == "densenet201" and default.weights is None


def test_set_values_are_json_or_python_literals_else_strings():
    settings = {}
    for assignment in ["amp=False", "progress=true", "weights=None", "label.k=3", "lr=1e-3", "device=cuda:1",
                       "scale_range=[0.5, 2]", "backbone=densenet121"]:
        _settings.apply_setting(settings, assignment)
    assert settings == {"amp": False, "progress": True, "weights": None, "label": {"k": 3}, "lr": 1e-3,
                        "device": "cuda:1", "scale_range": [0.5, 2], "backbone": "densenet121"}
    with pytest.raises(ValueError, match="amp.x: amp is not a group"):
        _settings.apply_setting(settings, "amp.x=1")
    assert _settings.merged({"a": 1, "label": {"k": 1, "kind": "iknn"}}, {"label": {"k": 3}}) == \
        {"a": 1, "label": {"k": 3, "kind": "iknn"}}


def test_train_reads_toml_config(capsys, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('steps = 2\nlr = 0.005\nprogress = false\n[label]\nkind = "density"\n')
    status, _, err = run(capsys, "train", "--preset", "small", "--dataset", "synthetic", "--num-images", "2",
                         "--image-size", "48", "--config", config, "--val-split", "none", "--out-dir", tmp_path / "r")
    assert status == 0, err
    cfg = _trained_config(tmp_path / "r")
    assert (cfg["steps"], cfg["lr"], cfg["label"]["kind"]) == (2, 0.005, "density")


def test_train_errors(capsys, tmp_path):
    status, _, err = run(capsys, "train", "--dataset", "synthetic", "--config", tmp_path / "none.json")
    assert status == 1 and "config file not found" in err
    (tmp_path / "c.json").write_text("{broken")
    status, _, err = run(capsys, "train", "--dataset", "synthetic", "--config", tmp_path / "c.json")
    assert status == 1 and "cannot read config file" in err and "c.json" in err
    # a setting the run refuses, from the options, a file or --set, is a usage error
    status, _, err = run(capsys, "train", "--dataset", "synthetic", "--set", "colour=3")
    assert status == 2 and "unknown fields ['colour']" in err
    status, _, err = run(capsys, "train", "--dataset", "synthetic", "--patch-size", "50")
    assert status == 2 and "patch_size" in err
    status, _, err = run(capsys, "eval", "--checkpoint", tmp_path / "none.pt", "--dataset", "synthetic",
                         "--min-distance", "-2")
    assert status == 2 and "--min-distance must be at least 0, got -2" in err
    status, _, err = run(capsys, "train", "--dataset", "synthetic", "--steps", "3", "--set", "steps.x=3")
    assert status == 2 and "--set steps.x: steps is not a group of settings" in err


# ------------------------------------------------------------------ demo

def test_demo_fails_when_the_model_does_not_beat_the_mean_baseline(capsys, tmp_path, monkeypatch):
    import mud_iknn.evaluate

    def no_better(model, dataset, **kwargs):  # the real metrics, with the error of the mean baseline + 1
        metrics = evaluate(model, dataset, **kwargs)
        return {**metrics, "mae": float("inf")}

    evaluate = mud_iknn.evaluate.evaluate
    monkeypatch.setattr(mud_iknn.evaluate, "evaluate", no_better)
    status, _, err = run(capsys, "demo", "--out", tmp_path, "--train-images", "2", "--val-images", "1",
                         "--image-size", "64", "--steps", "2", "--device", "cpu")
    assert status == 1 and "did not beat the mean-count baseline" in err


def test_demo_training_stops_when_its_time_budget_is_spent(capsys, tmp_path, monkeypatch):
    import mud_iknn.train as engine

    now = [0.0]

    def clock():  # every reading 30 s later: read at the start, then at every tenth step
        now[0] += 30.0
        return now[0]

    monkeypatch.setattr(engine, "_clock", clock)
    status, out, err = run(capsys, "demo", "--out", tmp_path, "--train-images", "2", "--val-images", "1",
                           "--image-size", "64", "--steps", "300", "--max-seconds", "50", "--device", "cpu")
    # start 30 s; steps 10 and 20 read 60 and 90 s: 90 > 30 + 50 stops after step 20
    assert "training stopped after 20 of 300 steps: its 50 s budget (max_seconds) is spent" in err
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["steps"] == 20 and engine.read_checkpoint(summary["checkpoint"])["step"] == 20


def test_train_says_when_the_budget_ended_the_run(capsys, tmp_path, monkeypatch):
    import mud_iknn.train as engine

    now = [0.0]

    def clock():
        now[0] += 30.0
        return now[0]

    monkeypatch.setattr(engine, "_clock", clock)
    status, out, err = run(capsys, "train", "--dataset", "synthetic", "--num-images", "2", "--image-size", "64",
                           "--preset", "small", "--steps", "40", "--set", "max_seconds=50", "--set", "batch_size=2",
                           "--out-dir", tmp_path / "run", "--val-split", "none", "--no-check")
    assert status == 0, err
    assert "training stopped after 20 of 40 steps: its 50 s budget (max_seconds) is spent" in err
    assert json.loads(out)["step"] == 20


# ------------------------------------------------------------------ bench

def test_bench_is_quick_unless_full_and_lists_the_benchmark_options(monkeypatch, capsys):
    import mud_iknn.benchmark

    calls = []
    monkeypatch.setattr(mud_iknn.benchmark, "report", lambda args, quick: calls.append((quick, args.cases, args.k)) or 3)
    assert cli.main(["bench"]) == 3
    assert cli.main(["bench", "--full", "--cases", "img2048_n5000", "--k", "3"]) == 3
    assert calls == [(True, None, None), (False, ["img2048_n5000"], [3])]
    status, out, _ = run(capsys, "bench", "--help")
    assert status == 0 and all(option in out for option in ("--cases", "--k", "--threads", "--repeats", "--out"))
    status, _, err = run(capsys, "bench", "--threads", "0")
    assert status == 2 and "--threads: must be a positive integer, got 0" in err
    status, _, err = run(capsys, "bench", "--device", "gpu")
    assert status == 2 and "--device: choose cpu, cuda or all, got 'gpu'" in err
    if not torch.cuda.is_available():
        status, _, err = run(capsys, "bench", "--device", "all")
        assert status == 2 and "--device: all needs a visible CUDA GPU" in err


def test_bench_prints_a_real_table(capsys):
    status = cli.main(["bench", "--cases", "img1024x768_n500", "--k", "1", "--device", "cpu", "--repeats", "1",
                       "--scipy-limit", "0"])
    out = capsys.readouterr().out
    assert status == 0
    rows = [line for line in out.splitlines() if line.startswith("| img1024x768_n500 |")]  # not the targets
    assert [r.split("|")[2].strip() for r in rows] == ["knn k=1", "iknn k=1, pixel heads", "density adaptive"]
    assert out.count("| case | map |") == 1  # the table once
    assert all(re.fullmatch(r"[0-9.]+ (s|ms|us)", r.split("|")[4].strip()) for r in rows)  # C++ measured


# ------------------------------------------------------------------ the comparisons script

def test_experiments_equal_budgets_shared_runs_and_table(capsys, tmp_path, monkeypatch):
    import mud_iknn.train
    from mud_iknn import experiments
    from mud_iknn.train import TrainConfig

    configs = []

    def train(config, train_set, val_set=None, resume=False):  # a run whose error encodes its settings
        configs.append(config)
        return {"model": config.seed + (10 if config.label.kind == "density" else 0) +
                (100 if not config.map_modules else 0), "step": config.steps}

    def scores(model, config, test_set, evaluation):
        return {"mae": float(model), "rmse": model + 0.5, "nae": 0.0, "f1_8px": 0.5 if config.map_modules else None}

    monkeypatch.setattr(mud_iknn.train, "train", train)
    monkeypatch.setattr(experiments, "_scores", scores)
    out = tmp_path / "docs" / "experiments.md"
    status = experiments.main(["--seeds", "1", "2", "--steps", "5", "--train-images", "2", "--test-images", "2",
                               "--image-size", "48", "--out", str(out), "--set", "lr=0.01", "--jobs", "1"])
    assert status == 0
    # ikNN (shared by both comparisons), density, count-head-only: 3 distinct runs x 2 seeds
    assert len(configs) == 6
    small = TrainConfig.small()  # the shared base: the small configuration, steps and --set on top
    assert {(c.steps, c.lr, c.batch_size, c.patch_size, c.frozen_batchnorm, c.lr_step) for c in configs} == \
        {(5, 0.01, small.batch_size, small.patch_size, small.frozen_batchnorm,
          round(5 * small.lr_step / small.steps))}  # equal budgets, the lr decay at the small configuration's fraction
    assert {c.map_weight for c in configs} == {1.0} != {small.map_weight}  # the paper's lambda, not the preset's
    assert len({c.out_dir for c in configs}) == 6
    rows = json.loads(out.with_suffix(".json").read_text())["runs"]
    mae = {(r["comparison"], r["variant"], r["seed"]): r["mae"] for r in rows}
    assert mae[("labels", "ikNN labels", 2)] == 2 and mae[("labels", "density labels", 2)] == 12
    assert mae[("map_modules", "map modules + count head", 1)] == 1
    assert mae[("map_modules", "count head only", 1)] == 101
    table = out.read_text()
    assert "| labels | density labels | 11.50 ± 0.71 | 12.00 ± 0.71 | 0.00 ± 0.00 | 0.500 ± 0.000 | 1: 11.00, 2: 12.00 |" \
        in table
    assert "| map_modules | count head only | 101.50 ± 0.71 | 102.00 ± 0.71 | 0.00 ± 0.00 | - |" in table
    assert "| labels: density labels - ikNN labels | MAE | +10.00 | [+10.00, +10.00] | 2 |" in table
    assert "seeds = 1 2" in table and "Machine: platform = " in table and table in capsys.readouterr().out
    train_counts = SyntheticCrowds(2, size=48, seed=0, split="train").counts()
    test_counts = SyntheticCrowds(2, size=48, seed=0, split="test").counts()
    baseline = np.abs(test_counts - train_counts.mean()).mean()
    assert f"| reference | mean training count ({train_counts.mean():.1f}) | {baseline:.2f} |" in table


def test_experiments_real_data_set_needs_a_root(capsys):
    from mud_iknn import experiments

    assert experiments.main(["--dataset", "ucf_qnrf"]) == 1
    assert "--dataset ucf_qnrf needs --root DIR" in capsys.readouterr().err


# ------------------------------------------------------------------ with the real model (after the merge)

def test_demo_end_to_end_with_the_real_model(capsys, tmp_path):
    # a reduced demo (about 10 s on two idle cores) that must still beat the mean-count baseline
    status, out, err = run(capsys, "demo", "--out", tmp_path, "--train-images", "32", "--val-images", "8",
                           "--image-size", "96", "--steps", "160", "--max-seconds", "10000", "--device", "cpu")
    assert status == 0, out + err  # (no time cap: the outcome must not depend on the machine's load)
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["model"]["mae"] < summary["mean_baseline"]["mae"] and summary["steps"] == 160
    with Image.open(tmp_path / "demo.png") as figure:
        assert figure.size[0] > 2 * figure.size[1]  # three panels side by side
    assert Path(summary["checkpoint"]).is_file()


def test_train_eval_count_with_the_real_engine(capsys, tmp_path):
    run_dir = tmp_path / "run"
    status, out, err = run(capsys, "train", "--dataset", "synthetic", "--num-images", "4", "--image-size", "64",
                           "--steps", "2", "--batch-size", "2", "--patch-size", "64", "--backbone", "densenet_tiny",
                           "--num-workers", "0", "--device", "cpu", "--out-dir", run_dir, "--val-split", "none",
                           "--set", "amp=false", "--set", "progress=false", "--label", "density")
    assert status == 0, err
    summary = json.loads(out)
    assert summary["step"] == 2 and Path(summary["checkpoint"]) == run_dir / "checkpoint.pt"
    # resumed with only what changes: the rest comes from the checkpoint; a change of the run is refused
    data = ["--dataset", "synthetic", "--num-images", "4", "--image-size", "64", "--out-dir", run_dir,
            "--val-split", "none", "--resume"]
    status, out, err = run(capsys, "train", *data, "--steps", "3")
    assert status == 0 and json.loads(out)["step"] == 3, err
    assert f"resuming {run_dir / 'checkpoint.pt'} at step 2" in err
    status, _, err = run(capsys, "train", *data[:-1], "--steps", "5")  # without --resume: never overwritten
    assert status == 1 and f"{run_dir} already holds a run" in err and "--resume" in err
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 3
    status, _, err = run(capsys, "train", *data, "--steps", "4", "--lr", "0.5")
    assert status == 1 and "checkpoint.pt was written by a run with other settings (lr 0.0001 -> 0.5)" in err
    # a checkpoint whose config no longer loads (e.g. from a newer version) is named
    newer = tmp_path / "newer"
    newer.mkdir()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    torch.save({**state, "config": {**state["config"], "new_field": 1}}, newer / "checkpoint.pt")
    status, _, err = run(capsys, "train", "--dataset", "synthetic", "--num-images", "4", "--out-dir", newer,
                         "--resume")
    assert status == 1 and f"{newer / 'checkpoint.pt'}: train config has unknown fields ['new_field']" in err
    status, out, err = run(capsys, "eval", "--checkpoint", run_dir / "checkpoint.pt", "--dataset", "synthetic",
                           "--num-images", "2", "--image-size", "64", "--json", "-", "--device", "cpu")
    assert status == 0, err
    report = json.loads(out)
    assert (report["window"], report["stride"], report["images"]) == (64, 36, 2)  # from the checkpoint
    assert len(report["per_image"]) == 2 and report["mae"] >= 0
    image = tmp_path / "crowd.png"
    Image.fromarray(SyntheticCrowds(1, size=80)[0].image.permute(1, 2, 0).numpy()).save(image)
    status, out, err = run(capsys, "count", image, "--checkpoint", run_dir / "checkpoint.pt", "--device", "cpu",
                           "--overlay", tmp_path / "overlay.png")
    assert status == 0, err
    path, count = out.strip().split("\t")
    assert path == str(image) and float(count) >= 0 and (tmp_path / "overlay.png").is_file()


@pytest.mark.usefixtures("one_thread")
def test_experiments_run_the_map_modules_comparison_with_the_real_engine(tmp_path):
    from mud_iknn import experiments
    from mud_iknn.train import load_checkpoint

    out, runs = tmp_path / "b.md", tmp_path / "runs"
    status = experiments.main(["--comparisons", "map_modules", "--seeds", "3", "--steps", "2", "--train-images", "2",
                               "--test-images", "1", "--image-size", "64", "--device", "cpu", "--work-dir", str(runs),
                               "--out", str(out), "--jobs", "1"])
    assert status == 0
    rows = json.loads(out.with_suffix(".json").read_text())["runs"]
    measured = {r["variant"]: r for r in rows if r["comparison"] == "map_modules"}
    assert set(measured) == {"map modules + count head", "count head only"}
    assert all(np.isfinite(r["mae"]) and r["seed"] == 3 for r in measured.values())
    assert "| map_modules | count head only | " in out.read_text() and "not run" not in out.read_text()
    # the two runs: the full and the count-only network, with the same budget and seed
    (full, full_config, _), (only, only_config, _) = (load_checkpoint(runs / name / "checkpoint.pt")
                                                      for name in ("run000", "run001"))
    assert (full.map_channels, only.map_channels) == (3, 0)
    differing = {k for k, v in full_config.to_dict().items() if only_config.to_dict()[k] != v}
    assert differing == {"map_modules", "out_dir"} and full_config.steps == 2 and full_config.seed == 3


@pytest.mark.slow
def test_train_under_torchrun_prints_once(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mud_iknn", "train",
               "--dataset", "synthetic", "--num-images", "4", "--image-size", "64", "--steps", "2",
               "--batch-size", "2", "--patch-size", "64", "--backbone", "densenet_tiny", "--num-workers", "0",
               "--device", "cpu", "--out-dir", str(tmp_path / "run"), "--val-split", "none",
               "--set", "progress=false"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env=_subprocess_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count('"checkpoint"') == 1  # rank 0 only
    assert json.loads(result.stdout)["step"] == 2 and (tmp_path / "run" / "checkpoint.pt").is_file()


# ------------------------------------------------------------------ eval: localization and NWPU-Crowd's files

@pytest.fixture
def small_checkpoint(tmp_path):
    """A real (random) small MUD-ikNN checkpoint: eval runs the library end to end."""
    from mud_iknn.train import TrainConfig, build_model, save_checkpoint

    config = TrainConfig.small()
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "small.pt", build_model(config), config)


def _nwpu_root(root):
    (root / "images").mkdir(parents=True)
    for name in ("3098", "3110", "3200"):
        Image.new("RGB", (70, 50), 90).save(root / "images" / f"{name}.jpg")
    (root / "jsons").mkdir()
    for name, points in (("3098", [[10, 10], [40, 20]]), ("3110", [[5, 30]])):
        (root / "jsons" / f"{name}.json").write_text(json.dumps(
            {"human_num": len(points), "points": points, "boxes": [[x - 4, y - 4, x + 4, y + 4] for x, y in points]}))
    (root / "val.txt").write_text("3110 0 1\n3098 0 1\n")
    (root / "test.txt").write_text("3200 0 1\n")
    return root


def test_eval_table_keeps_game_when_category_rows_have_none():
    from mud_iknn.cli import _metrics_table

    whole = {"mae": 1.5, "rmse": 2.0, "nae": 0.1, "game": {"0": 1.5, "1": 2.25, "2": 3.0, "3": 4.5}}
    lines = _metrics_table([("all images", whole), ("low", {"mae": 0.5, "rmse": 0.5, "nae": 0.2})]).splitlines()
    assert lines[0].split() == ["MAE", "MSE*", "NAE", "GAME(0)", "GAME(1)", "GAME(2)", "GAME(3)"]
    assert lines[1].split()[-4:] == ["1.50", "2.25", "3.00", "4.50"] and lines[2].split()[-4:] == ["-"] * 4


def test_eval_localization_and_nwpu_exports(capsys, tmp_path, small_checkpoint):
    root = _nwpu_root(tmp_path / "nwpu")
    report, counts, points = tmp_path / "r.json", tmp_path / "counts.txt", tmp_path / "points.txt"
    status, out, err = run(capsys, "eval", "--checkpoint", small_checkpoint, "--dataset", "nwpu_crowd", "--root", root,
                           "--localization", "--json", report, "--export", counts, "--export-points", points)
    assert status == 0, err
    data = json.loads(report.read_text())
    assert set(data["localization"]) == {"4px", "8px", "16px", "sigma_s", "sigma_l"}  # the val split has boxes
    assert set(data["game"]) == {"0", "1", "2", "3"} and data["game"]["0"] == pytest.approx(data["mae"])
    assert "sigma_l" in out and "GAME(3)" in out
    by_id = {r["name"]: r for r in data["per_image"]}
    lines = [line.split() for line in counts.read_text().splitlines()]
    assert [line[0] for line in lines] == ["3098", "3110"]
    assert [float(line[1]) for line in lines] == pytest.approx([by_id[i]["predicted"] for i in ("3098", "3110")], abs=1e-4)
    for line in points.read_text().splitlines():
        values = line.split()
        assert int(values[1]) == len(by_id[values[0]]["points"]) and len(values) == 2 + 2 * int(values[1])
    # the test split has no public labels: predictions only, files still written
    status, out, err = run(capsys, "eval", "--checkpoint", small_checkpoint, "--dataset", "nwpu_crowd", "--root", root,
                           "--split", "test", "--export", counts, "--export-points", points)
    assert status == 0, err
    assert "no public labels" in out
    assert counts.read_text().split()[0] == "3200" and points.read_text().split()[0] == "3200"


def test_eval_export_needs_image_ids(capsys, tmp_path, small_checkpoint):
    status, _, err = run(capsys, "eval", "--checkpoint", small_checkpoint, "--dataset", "synthetic", "--num-images", "1",
                         "--image-size", "64", "--export", tmp_path / "c.txt")
    assert status == 2 and "--export" in err and "numeric image ids" in err and not (tmp_path / "c.txt").exists()
