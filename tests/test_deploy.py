"""Deployment: ONNX export, counting through onnxruntime, folders and videos (mud_iknn.deploy,
mud_iknn.video and the export / count commands). Every ONNX file and video is made here; the tests
skip where the optional extra ``deploy`` (onnx, onnxscript, onnxruntime, av) is not installed."""
from __future__ import annotations

import csv
import json
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from mud_iknn import cli
from mud_iknn.data import load_image
from mud_iknn.evaluate import localization_counts, predict_image
from mud_iknn.train import TrainConfig, build_model, load_checkpoint, save_checkpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from mud_iknn import deploy, video  # noqa: E402  (after the skips)
from cli_runner import run



def small_network():
    """The small configuration's network with BatchNorm statistics and count biases that are not
    the identity / zero (so the export has to carry them), at 64 px windows, and its config."""
    config = TrainConfig.small(eval_stride=40)
    torch.manual_seed(0)
    model = build_model(config, load_weights=False)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        model.final_count.bias.fill_(2.0)
    return model.eval(), config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint, onnx file) of the small network, the file written by ``mud-iknn export``."""
    folder = tmp_path_factory.mktemp("deploy")
    model, config = small_network()
    checkpoint = save_checkpoint(folder / "checkpoint.pt", model, config)
    status = cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(folder / "model.onnx")])
    assert status == 0
    return checkpoint, folder / "model.onnx"


def relative(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def same_heads(got, want, radius) -> bool:
    """Two (N, 2) point sets alike: every point matched one to one within ``radius`` pixels
    (:func:`mud_iknn.evaluate.localization_counts`), as sets: two peaks of one value may come in
    either order."""
    points = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in (got, want)]
    (_, fp, fn), = localization_counts(points[:1], points[1:], (radius,))[0]
    return fp == 0 and fn == 0


def random_image(height, width, seed):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8))


# ------------------------------------------------------------------ export

def test_export_has_the_contract_and_matches_the_checkpoint(exported):
    checkpoint, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert not list(path.parent.glob("*.data"))  # one self-contained file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert image.name == "image" and image.type == "tensor(float)"
    assert isinstance(image.shape[0], str) and image.shape[1:] == [3, 64, 64]
    assert [o.name for o in session.get_outputs()] == ["maps", "counts"]
    model, _, _ = load_checkpoint(checkpoint)
    for batch in (1, 5):  # the batch axis is dynamic
        windows = torch.stack([random_image(64, 64, seed) for seed in range(batch)]).float() / 255
        maps, counts = session.run(["maps", "counts"], {"image": windows.numpy()})
        with torch.no_grad():
            expected_maps, expected_counts = model(windows)
        assert maps.shape == (batch, 3, 64, 64) and counts.shape == (batch,)
        assert relative(maps, expected_maps) <= 1e-4 and relative(counts, expected_counts) <= 1e-4
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["mud_iknn.window"] == "64" and metadata["mud_iknn.stride"] == "40"


def test_export_carries_the_calibrated_localization(tmp_path):
    model, config = small_network()
    calibrated = {"threshold": 0.14, "min_distance": 2, "f1_8px": 0.8}
    checkpoint = save_checkpoint(tmp_path / "checkpoint.pt", model, config, localization=calibrated)
    deploy.export_checkpoint(checkpoint, tmp_path / "model.onnx")
    onnx_model, window, stride = deploy.load_onnx(tmp_path / "model.onnx", "cpu")
    loaded, _, _ = load_checkpoint(checkpoint)
    assert onnx_model.localization == loaded.localization == calibrated
    image = random_image(90, 120, 3)
    expected, got = predict_image(loaded, image, window, stride), predict_image(onnx_model, image, window, stride)
    default = predict_image(onnx_model, image, window, stride, threshold=0.2, min_distance=1)
    assert torch.allclose(got.points, expected.points, atol=1e-3)
    assert got.points.shape != default.points.shape or not torch.equal(got.points, default.points)


def test_export_refuses_what_is_not_a_network(capsys, tmp_path):
    with pytest.raises(TypeError, match="MapNetwork"):
        deploy.export_onnx(torch.nn.Conv2d(3, 1, 1), tmp_path / "x.onnx")
    status, _, err = run(capsys, "export", "--checkpoint", tmp_path / "none.pt", "--out", tmp_path / "x.onnx")
    assert status == 1 and f"checkpoint {tmp_path / 'none.pt'} does not exist" in err
    status, out, _ = run(capsys, "export", "--help")
    assert status == 0 and "--checkpoint" in out and "'maps' and 'counts'" in out


# ------------------------------------------------------------------ counting images

def test_onnx_model_counts_like_the_checkpoint(exported):
    checkpoint, path = exported
    model, _, _ = load_checkpoint(checkpoint)
    onnx_model, window, stride = deploy.load_onnx(path, "cpu")
    assert (window, stride, onnx_model.window) == (64, 40, 64)
    for seed, (height, width) in enumerate([(64, 64), (150, 97), (40, 200)]):  # smaller than a window too
        image = random_image(height, width, seed)
        expected, got = predict_image(model, image, 64, 40), predict_image(onnx_model, image, 64, 40)
        assert abs(got.count - expected.count) <= 1e-3 * abs(expected.count)
        assert relative(got.density, expected.density) <= 1e-3
        assert relative(got.iknn_map, expected.iknn_map) <= 1e-4
        # the same heads: the maps agree to float rounding, far finer than the peaks' differences
        assert len(expected.points) > 0 and same_heads(got.points, expected.points, radius=1e-3)


def test_a_count_only_network_exports_and_counts(tmp_path):
    torch.manual_seed(1)
    model = build_model(TrainConfig.small(map_modules=False), load_weights=False).eval()
    report = deploy.export_onnx(model, tmp_path / "count_only.onnx", stride=32)
    assert report["maps_difference"] == 0.0 and report["counts_difference"] <= 1e-4
    onnx_model = deploy.OnnxModel(tmp_path / "count_only.onnx")
    image = random_image(100, 90, 7)
    expected, got = predict_image(model, image, 64, 32), predict_image(onnx_model, image, 64, 32)
    assert got.iknn_map is None and got.points is None  # no maps (B, 0, 64, 64): nothing to locate
    assert abs(got.count - expected.count) <= 1e-3 * abs(expected.count)


def test_count_command_with_onnx_and_a_folder(capsys, tmp_path, exported):
    checkpoint, path = exported
    (tmp_path / "in" / "sub").mkdir(parents=True)
    files = [tmp_path / "in" / "b.png", tmp_path / "in" / "sub" / "a.jpg", tmp_path / "in" / "sub" / "c.PNG"]
    for seed, file in enumerate(files):
        Image.fromarray(random_image(70 + 10 * seed, 90, seed).permute(1, 2, 0).numpy()).save(file, quality=95)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    status, out, err = run(capsys, "count", tmp_path / "in", "--model", path, "--csv", tmp_path / "counts.csv")
    assert status == 0, err
    lines = [line.split("\t") for line in out.splitlines()]
    assert [name for name, _ in lines] == [str(f) for f in sorted(files)]  # recursive, sorted, images only
    with open(tmp_path / "counts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [str(f) for f in sorted(files)]
    status, out, err = run(capsys, "count", *sorted(files), "--checkpoint", checkpoint, "--json")
    assert status == 0, err
    for row, result in zip(rows, json.loads(out)):
        assert abs(float(row["count"]) - result["count"]) <= 1e-3 * abs(result["count"])
    status, out, err = run(capsys, "count", files[0], "--model", path, "--json", "--overlay", tmp_path / "o.png")
    assert status == 0, err
    (result,) = json.loads(out)
    model, _, _ = load_checkpoint(checkpoint)
    expected = predict_image(model, load_image(files[0]), 64, 40)
    assert len(result["points"]) == len(expected.points) > 0  # the located heads, through onnxruntime
    # within the JSON's 2 decimals: 0.005 px per axis
    assert same_heads(result["points"], expected.points, radius=0.0075)
    assert result["overlay"] == str(tmp_path / "o.png") and (tmp_path / "o.png").is_file()


def test_count_errors_of_onnx_models(capsys, tmp_path, exported):
    _, path = exported
    Image.new("RGB", (80, 80)).save(tmp_path / "x.png")
    status, _, err = run(capsys, "count", tmp_path / "x.png", "--model", tmp_path / "none.onnx")
    assert status == 1 and f"ONNX model not found: {tmp_path / 'none.onnx'}" in err
    (tmp_path / "junk.onnx").write_bytes(b"\x08garbage")
    status, _, err = run(capsys, "count", tmp_path / "x.png", "--model", tmp_path / "junk.onnx")
    assert status == 1 and "junk.onnx is not an ONNX model" in err
    # a valid ONNX file from elsewhere: one input "x" (1, 4), output "y"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "other",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), tmp_path / "o.onnx")
    status, _, err = run(capsys, "count", tmp_path / "x.png", "--model", tmp_path / "o.onnx")
    assert status == 1 and "o.onnx is not a mud-iknn export" in err and "x tensor(float) [1, 4]" in err
    status, _, err = run(capsys, "count", tmp_path / "x.png", "--model", path, "--window", "96")
    assert status == 1 and "counts windows of 64 px" in err
    status, _, err = run(capsys, "count", tmp_path / "x.png", "--model", path, "--checkpoint", path)
    assert status == 2 and "not allowed with argument" in err
    status, _, err = run(capsys, "count", tmp_path / "x.png", "--model", path, "--every", "2")
    assert status == 2 and "--every applies to a video" in err
    (tmp_path / "empty").mkdir()
    status, _, err = run(capsys, "count", tmp_path / "empty", "--model", path)
    assert status == 1 and "no images (.jpg" in err and str(tmp_path / "empty") in err


def test_a_missing_optional_dependency_names_the_extra(capsys, tmp_path, exported, monkeypatch):
    checkpoint, path = exported
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    status, _, err = run(capsys, "count", tmp_path / "x.png", "--model", path)
    assert status == 1 and "needs the optional package onnxruntime" in err and 'pip install "mud-iknn[deploy]"' in err
    (tmp_path / "v.mp4").write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)
    status, _, err = run(capsys, "count", tmp_path / "v.mp4", "--checkpoint", checkpoint)
    assert status == 1 and "reading videos needs the optional package av" in err and "mud-iknn[deploy]" in err


# ------------------------------------------------------------------ videos

@pytest.fixture(scope="module")
def av():
    """PyAV (the video tests skip without it; the ONNX tests above do not need it)."""
    return pytest.importorskip("av")


def write_lossless_video(av, path, frames, fps):
    """``frames`` ((H, W, 3) uint8) as an FFV1 video in RGB: decoding gives them back bit for bit."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=Fraction(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "bgr0"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_count_video_rows_overlay_and_frames(capsys, tmp_path, exported, av):
    checkpoint, path = exported
    frames = [random_image(72, 90, seed).permute(1, 2, 0).numpy() for seed in range(7)]
    write_lossless_video(av, tmp_path / "in.mkv", frames, 12)
    decoded = list(video.read_frames(tmp_path / "in.mkv", every=3))
    assert [f.index for f in decoded] == [0, 3, 6] and [f.time_s for f in decoded] == [0.0, 0.25, 0.5]
    assert all(torch.equal(f.image, torch.from_numpy(frames[f.index]).permute(2, 0, 1)) for f in decoded)

    status, out, err = run(capsys, "count", tmp_path / "in.mkv", "--model", path, "--every", "3",
                           "--csv", tmp_path / "v.csv", "--overlay", tmp_path / "overlay.mp4")
    assert status == 0, err
    assert out.startswith(f"{tmp_path / 'in.mkv'}: 3 frames counted")
    with open(tmp_path / "v.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["frame"], r["time_s"]) for r in rows] == [("0", "0.0"), ("3", "0.25"), ("6", "0.5")]
    model, _, _ = load_checkpoint(checkpoint)  # the checkpoint on the frames written, not read back
    for row in rows:
        expected = predict_image(model, torch.from_numpy(frames[int(row["frame"])]).permute(2, 0, 1), 64, 40).count
        assert abs(float(row["count"]) - expected) <= 1e-3 * abs(expected)
    info = video.video_info(tmp_path / "overlay.mp4")
    assert (info.width, info.height, info.fps) == (90, 72, 4.0)
    assert len(list(video.read_frames(tmp_path / "overlay.mp4"))) == 3
    # without --csv the rows go to stdout as CSV, with the checkpoint too
    status, out, err = run(capsys, "count", tmp_path / "in.mkv", "--checkpoint", checkpoint, "--every", "5")
    assert status == 0, err
    assert out.splitlines()[0] == "frame,time_s,count" and [line.split(",")[0] for line in out.splitlines()[1:]] \
        == ["0", "5"]


def test_overlay_frame_draws_the_map_where_it_is_high():
    image = torch.full((3, 40, 50), 128, dtype=torch.uint8)
    density = torch.zeros(40, 50)
    density[30:, 40:] = 1.0
    picture = video.overlay_frame(image, density, 12.5, torch.tensor([[10.0, 30.0]]))
    assert picture.shape == (40, 50, 3) and picture.dtype == np.uint8
    assert (picture[35, 45] != 128).any() and (picture[35, 5] == 128).all()  # blended only where the map is
    assert tuple(picture[30, 10]) == (255, 0, 0) and (picture[30, 20] == 128).all()  # a head's red dot
    text = picture[2:12, 4:40]  # the count, white on a black box, top left
    assert (text.min(-1) > 200).any() and (text.max(-1) < 30).any()


def test_overlay_frame_refuses_images_and_points_it_would_draw_wrong():
    """A float image in [0, 1] would come out black, (N, 3) points fail in a tuple unpacking."""
    density = torch.zeros(8, 10)
    with pytest.raises(ValueError, match="image must be uint8 RGB.*got float32"):
        video.overlay_frame(torch.rand(3, 8, 10), density, 1.0)
    with pytest.raises(ValueError, match=r"points must have shape \(N, 2\), got \(2, 3\)"):
        video.overlay_frame(torch.zeros(3, 8, 10, dtype=torch.uint8), density, 1.0, torch.zeros(2, 3))
    picture = video.overlay_frame(torch.zeros(3, 8, 10, dtype=torch.uint8), density, 1.0, torch.zeros(0, 2))
    assert picture.shape == (8, 10, 3)


def test_overlay_writer_refuses_frames_that_are_not_rgb_uint8(tmp_path, av):
    """Grayscale and RGBA frames failed in numpy's broadcasting, a float frame in [0, 1] was written
    black; each is refused naming the file, and the frames after it are written as usual."""
    with video.OverlayWriter(tmp_path / "o.mp4", 5.0) as writer:
        for picture in [np.zeros((8, 10), np.uint8), np.zeros((8, 10, 4), np.uint8), np.ones((8, 10, 3), np.float32)]:
            with pytest.raises(ValueError, match=r"o.mp4: a frame must be \(H, W, 3\) uint8 RGB"):
                writer.write(picture)
        writer.write(np.full((6, 12, 3), 200, np.uint8))
    info = video.video_info(tmp_path / "o.mp4")
    assert (info.width, info.height) == (12, 6)  # the refused frames did not set the size
    frames = list(video.read_frames(tmp_path / "o.mp4"))
    assert len(frames) == 1 and abs(frames[0].image.float().mean().item() - 200) < 4


def test_video_errors(capsys, tmp_path, exported, av):
    _, path = exported
    (tmp_path / "fake.mp4").write_text("not a video")
    status, _, err = run(capsys, "count", tmp_path / "fake.mp4", "--model", path)
    assert status == 1 and f"{tmp_path / 'fake.mp4'} is not a video PyAV can read" in err
    with av.open(str(tmp_path / "empty.mp4"), "w") as container:  # a header, no frame: no video stream
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        container.start_encoding()
    status, _, err = run(capsys, "count", tmp_path / "empty.mp4", "--model", path)
    assert status == 1 and "empty.mp4 has no video stream" in err
    status, _, err = run(capsys, "count", tmp_path / "gone.mp4", "--model", path)
    assert status == 1 and f"video not found: {tmp_path / 'gone.mp4'}" in err
    write_lossless_video(av, tmp_path / "v.mkv", [np.zeros((8, 8, 3), np.uint8)], 5)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    status, _, err = run(capsys, "count", tmp_path / "v.mkv", tmp_path / "x.png", "--model", path)
    assert status == 2 and "a video is counted on its own" in err
    status, _, err = run(capsys, "count", tmp_path / "v.mkv", "--model", path, "--overlay", tmp_path / "o.png")
    assert status == 2 and "--overlay for a video must be a video file" in err
    with pytest.raises(ValueError, match="every must be a positive integer"):
        next(video.read_frames(tmp_path / "v.mkv", every=0))
    # count_video divided the frame rate by every first: 0 raised ZeroDivisionError, -1 blamed the frame rate
    for every in (0, -1):
        with pytest.raises(ValueError, match=f"every must be a positive integer, got {every}"):
            video.count_video(deploy.load_onnx(path)[0], tmp_path / "v.mkv", window=64, stride=40, every=every,
                              overlay=tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()
