"""The command line's label kinds: ``mud-iknn labels --kind`` and ``mud-iknn train --label`` with each
kind's options, read from the registry."""
import json

import numpy as np
import pytest
import torch

import mud_iknn
import mud_iknn.reference
from mud_iknn import cli
from mud_iknn.label_kinds import KINDS, CountLabel, FidtLabel
from cli_runner import run



SYNTHETIC = ["--dataset", "synthetic", "--num-images", "2", "--image-size", "48", "--split", "val"]


def test_help_shows_every_kind_and_its_options(capsys):
    for command, prefix in (("labels", "--"), ("train", "--label-")):
        status, out, _ = run(capsys, command, "--help")
        assert status == 0
        for name, cls in KINDS.items():
            assert name in out
            for f in cls.parameters():
                assert f"{prefix}{f.name.replace('_', '-')}" in out, (command, f.name)
    status, out, _ = run(capsys, "labels", "--help")
    assert "fidt: exponent slope (default 0.02)" in " ".join(out.split())


def test_labels_exports_fidt_maps_with_their_options(capsys, tmp_path):
    status, out, err = run(capsys, "labels", *SYNTHETIC, "--out", tmp_path, "--kind", "fidt", "--beta", "0.5",
                           "--zero-below", "0.01", "--no-preview")
    assert status == 0, err
    index = json.loads((tmp_path / "labels.json").read_text())
    assert index["label"] == {"kind": "fidt", "alpha": 0.02, "beta": 0.5, "c": 1.0, "zero_below": 0.01}
    from mud_iknn.data import open_dataset

    sample = open_dataset("synthetic", None, split="val", num_images=2, size=48)[0]
    want = mud_iknn.fidt_maps(sample.points, (48, 48), beta=0.5, zero_below=0.01)[0].numpy()
    np.testing.assert_array_equal(np.load(tmp_path / f"{sample.name}.npy"), want)


def test_labels_exports_count_maps_at_a_stride(capsys, tmp_path):
    status, _, err = run(capsys, "labels", *SYNTHETIC, "--out", tmp_path, "--kind", "count", "--stride", "8")
    assert status == 0, err
    index = json.loads((tmp_path / "labels.json").read_text())
    assert index["label"] == {"kind": "count", "stride": 8}
    from mud_iknn.data import open_dataset

    scenes = open_dataset("synthetic", None, split="val", num_images=2, size=48)
    for sample, image in zip(scenes, index["images"]):
        label = np.load(tmp_path / image["file"])
        assert label.shape == (6, 6) == (image["height"], image["width"])
        np.testing.assert_array_equal(label, mud_iknn.reference.count_maps(sample.points.numpy(), (48, 48), 8)[0])
        assert label.sum() == image["map_sum"]
        assert (tmp_path / f"{image['name']}.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--kind", "iknn", "--alpha", "0.1"], "--alpha applies to --kind fidt, not iknn"),
    (["--kind", "count", "--k", "2"], "--k applies to --kind iknn, density, not count"),
    (["--kind", "fidt", "--c", "0"], "argument --c: must be a positive number, got 0"),
    (["--kind", "fidt", "--beta", "-1"], "argument --beta: must be a non-negative number, got -1"),
    (["--kind", "density", "--beta", "0"], "--beta must be positive and finite, got 0.0 (--kind density)"),
    (["--kind", "density", "--k", "64"], "--k must be in [1, 63], got 64 (--kind density)"),
    (["--kind", "count", "--stride", "0"], "--stride must be at least 1"),
    (["--kind", "fidt", "--stride", "1.5"], "argument --stride: invalid int value"),
    (["--kind", "gauss"], "invalid choice: 'gauss'"),
])
def test_bad_label_options_exit_2_naming_the_option(capsys, tmp_path, argv, message):
    status, _, err = run(capsys, "labels", *SYNTHETIC, "--out", tmp_path / "o", *argv)
    assert status == 2 and message in err and not (tmp_path / "o").exists()


def test_train_label_options_reach_the_config_and_the_checkpoint(capsys, tmp_path):
    parser = cli.build_parser()
    args = parser.parse_args(["train", *SYNTHETIC, "--label", "fidt", "--label-alpha", "0.05", "--label-c", "2"])
    from mud_iknn.train import TrainConfig, load_checkpoint

    config = TrainConfig.from_dict(cli._train_settings(args)[1])
    assert config.label == FidtLabel(alpha=0.05, c=2.0)
    args = parser.parse_args(["train", *SYNTHETIC, "--label", "iknn", "--label-alpha", "0.05"])
    with pytest.raises(ValueError, match="label kind iknn has no setting alpha"):
        TrainConfig.from_dict(cli._train_settings(args)[1])
    # a real (one-step) run on count maps at the small model's label stride
    status, out, err = run(capsys, "train", "--dataset", "synthetic", "--num-images", "4", "--image-size", "48",
                           "--val-split", "none", "--label", "count", "--steps", "1", "--batch-size", "2",
                           "--patch-size", "32", "--backbone", "densenet_tiny", "--device", "cpu", "--num-workers", "0",
                           "--out-dir", tmp_path / "run", "--set", "label_size=8", "--set", "progress=false")
    assert status == 0, err
    _, saved, _ = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved.label == CountLabel() and saved.label_size == 8
    assert torch.isfinite(torch.tensor(json.loads(out)["train"]["loss"]))


def test_count_maps_at_a_stride_that_does_not_divide_the_image_count_only_its_heads(capsys, tmp_path):
    # a 37 x 21 image at stride 8: its last cells reach past the image (to 40 x 24), and a head there,
    # beyond the image's last pixel, is outside it (the count maps' rule), not in the last cell
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.zeros((21, 37, 3), np.uint8)).save(folder / "a.png")
    heads = [[36.4, 20.4], [36.6, 3.0], [38.0, 5.0], [4.0, 20.6], [4.0, 23.0], [1.0, 1.0]]
    (folder / "a.json").write_text(json.dumps({"points": heads}))
    out = tmp_path / "out"
    status, _, err = run(capsys, "labels", "--dataset", "folder", "--root", folder, "--out", out, "--kind", "count",
                         "--stride", "8", "--no-preview")
    assert status == 0, err
    label = np.load(out / "a.npy")
    assert label.shape == (3, 5)
    np.testing.assert_array_equal(label, mud_iknn.reference.count_maps(np.array(heads), (21, 37), 8)[0])
    assert label.sum() == 2 == json.loads((out / "labels.json").read_text())["images"][0]["map_sum"]
    assert label[2, 4] == 1 and label[0, 0] == 1


def test_an_out_that_is_a_file_or_under_one_is_one_line_before_any_work(capsys, tmp_path):
    (tmp_path / "taken").write_text("")
    for out, words in ((tmp_path / "taken", "is a file, not a folder"),
                       (tmp_path / "taken" / "sub", "cannot create the folder")):
        status, _, err = run(capsys, "labels", *SYNTHETIC, "--out", out)
        assert status == 1 and err.strip() == f"mud-iknn labels: error: --out {out}" + (
            f" {words}" if "file" in words else f": {words}: Not a directory"), err
