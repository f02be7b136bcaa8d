"""mud_iknn.data.check and ``mud-iknn check``: every bad file of a data set listed at once, in the
real formats (ShanghaiTech .mat, JHU-Crowd++ text, NWPU-Crowd JSON, JPEG and PNG images), and the
same check before ``train`` / ``eval`` start."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mud_iknn.data import check_dataset, open_dataset
from mud_iknn.data.check import BadFile, check_files
from test_data_formats import write_image, write_shanghaitech_gt
from cli_runner import run


pytestmark = pytest.mark.usefixtures("one_thread")  # the shared CI cores


def _jpeg_bytes(height=24, width=32) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def broken_shanghaitech(tmp_path):
    """ShanghaiTech part A train: IMG_1 good, IMG_2 a truncated JPEG, IMG_3 a corrupt .mat, IMG_4 no
    annotation, IMG_5 points far outside the image, IMG_6 a text file named .jpg, IMG_7 a truncated
    PNG (saved as .jpg: readers go by content), IMG_8 good with padding after the end marker.
    Test split: one good image."""
    root = tmp_path / "ShanghaiTech"
    split = root / "part_A" / "train_data"
    images, truth = split / "images", split / "ground-truth"
    images.mkdir(parents=True)
    jpeg = _jpeg_bytes()
    for n in range(1, 9):
        (images / f"IMG_{n}.jpg").write_bytes(jpeg)
        write_shanghaitech_gt(truth / f"GT_IMG_{n}.mat", [[3.0, 4.0], [20.0, 10.0]])
    (images / "IMG_2.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    (truth / "GT_IMG_3.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 3)
    (truth / "GT_IMG_4.mat").unlink()
    write_shanghaitech_gt(truth / "GT_IMG_5.mat", [[3.0, 4.0], [900.0, 10.0]])
    (images / "IMG_6.jpg").write_text("not an image\n")
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(png, "PNG")
    (images / "IMG_7.jpg").write_bytes(png.getvalue()[: len(png.getvalue()) * 2 // 3])
    (images / "IMG_8.jpg").write_bytes(jpeg + b"\x00" * 10)
    write_image(root / "part_A" / "test_data" / "images" / "IMG_1.jpg")
    write_shanghaitech_gt(root / "part_A" / "test_data" / "ground-truth" / "GT_IMG_1.mat", [[1.0, 2.0]])
    return root


EXPECTED = {  # file -> words its reason must hold
    "IMG_2.jpg": "truncated", "GT_IMG_3.mat": "cannot read MATLAB file", "GT_IMG_4.mat": "annotation not found",
    "GT_IMG_5.mat": "lies far outside", "IMG_6.jpg": "cannot read image", "IMG_7.jpg": "cannot read image"}


def _by_name(bad):
    return {item.path.rsplit("/", 1)[-1]: str(item) for item in bad}


def _assert_lists_expected(lines):
    assert len(lines) == len(EXPECTED)
    for name, words in EXPECTED.items():
        line, = [line for line in lines if f"/{name}" in line]
        assert words in line


@pytest.mark.parametrize("workers", [1, 2])
def test_every_bad_file_is_listed_once_with_its_reason(broken_shanghaitech, workers):
    dataset = open_dataset("shanghaitech_a", broken_shanghaitech, split="train")
    bad = check_dataset(dataset, workers=workers)
    found = _by_name(bad)
    assert set(found) == set(EXPECTED)  # the good files (IMG_1, IMG_8 with padding) are not listed
    for name, words in EXPECTED.items():
        assert words in found[name] and name in found[name], found[name]
    images_only = _by_name(check_dataset(dataset, annotations=False, workers=workers))
    assert set(images_only) == {name for name in EXPECTED if name.startswith("IMG_")}
    # a sample fails to load exactly when one of its files is listed
    listed = {item.path for item in bad}
    for i, (image, annotation) in enumerate(dataset.items):
        try:
            dataset[i]
            fails = False
        except (OSError, ValueError):
            fails = True
        assert fails == bool({str(image), str(annotation)} & listed), image.name


def test_reasons_name_their_file_and_bad_arguments_are_refused(tmp_path):
    assert str(BadFile("a/b.mat", "empty")) == "a/b.mat: empty"
    assert str(BadFile("a/b.mat", "cannot read a/b.mat: x")) == "cannot read a/b.mat: x"
    with pytest.raises(TypeError, match="AnnotatedImages"):
        check_dataset(open_dataset("synthetic", num_images=1, size=32))
    with pytest.raises(ValueError, match="workers"):
        check_files([], lambda p: ([], {}), workers=-1)


def test_jhu_and_nwpu_annotations_in_their_formats(tmp_path):
    jhu = tmp_path / "jhu"
    for name, rows in [("0001", "3 4 2 2 1 0\n"), ("0002", "3 4 2 2 1\n"), ("0003", "3 x 2 2 1 0\n")]:
        write_image(jhu / "val" / "images" / f"{name}.jpg")
        (jhu / "val" / "gt").mkdir(parents=True, exist_ok=True)
        (jhu / "val" / "gt" / f"{name}.txt").write_text(rows)
    found = _by_name(check_dataset(open_dataset("jhu_crowd", jhu, split="val")))
    assert set(found) == {"0002.txt", "0003.txt"}
    assert "0002.txt:1: expected 6 fields" in found["0002.txt"] and "0003.txt:1: expected numbers" in found["0003.txt"]
    nwpu = tmp_path / "nwpu"
    for name, text in [("0001", '{"points": [[1, 2]], "human_num": 1}'), ("0002", '{"points": [[1, 2]'),
                       ("0003", '{"points": [[1, 2]], "human_num": 5}')]:
        write_image(nwpu / "images" / f"{name}.jpg")
        (nwpu / "jsons").mkdir(exist_ok=True)
        (nwpu / "jsons" / f"{name}.json").write_text(text)
    (nwpu / "val.txt").write_text("0001 0 1\n0002 0 1\n0003 0 1\n")
    found = _by_name(check_dataset(open_dataset("nwpu_crowd", nwpu, split="val")))
    assert set(found) == {"0002.json", "0003.json"}
    assert "invalid JSON" in found["0002.json"] and "human_num is 5" in found["0003.json"]



def test_check_command_lists_every_bad_file_and_exits_1(capsys, broken_shanghaitech):
    status, out, err = run(capsys, "check", "--dataset", "shanghaitech_a", "--root", broken_shanghaitech)
    assert status == 1
    _assert_lists_expected(out.splitlines())
    assert "6 bad files among 9 images" in err and "train, test" in err
    status, out, err = run(capsys, "check", "--dataset", "shanghaitech_a", "--root", broken_shanghaitech,
                           "--split", "test")
    assert status == 0 and "1 images and their annotations read correctly (test;" in out
    status, _, err = run(capsys, "check", "--dataset", "synthetic")
    assert status == 2 and "has no files to check" in err


def test_check_command_reads_only_the_images_of_a_split_without_public_labels(capsys, tmp_path):
    # NWPU-Crowd's layout: jsons/ for train and val only; test.txt lists images whose labels are not public
    root = tmp_path / "nwpu"
    for name in ("0001", "0002", "3001", "3002"):
        write_image(root / "images" / f"{name}.jpg")
    (root / "jsons").mkdir()
    for name in ("0001", "0002"):
        (root / "jsons" / f"{name}.json").write_text('{"points": [[1, 2]], "human_num": 1}')
    (root / "train.txt").write_text("0001 0 1\n")
    (root / "val.txt").write_text("0002 0 1\n")
    (root / "test.txt").write_text("3001 0 1\n3002 0 1\n")
    status, out, err = run(capsys, "check", "--dataset", "nwpu_crowd", "--root", root, "--split", "test")
    assert status == 0 and "2 images" in out and "no public labels: images only" in out, (out, err)
    (root / "images" / "3002.jpg").write_bytes(_jpeg_bytes()[:300])  # a broken test image is still found
    status, out, _ = run(capsys, "check", "--dataset", "nwpu_crowd", "--root", root, "--split", "test")
    assert status == 1 and "3002.jpg" in out and "3001" not in out


def test_train_and_eval_check_before_their_first_step(capsys, broken_shanghaitech, tmp_path):
    run_dir = tmp_path / "run"
    status, out, err = run(capsys, "train", "--preset", "small", "--dataset", "shanghaitech_a", "--root",
                           broken_shanghaitech, "--out-dir", run_dir, "--steps", "1")
    assert status == 1 and not run_dir.exists()  # refused before training started
    lines = err.strip().splitlines()
    _assert_lists_expected(lines[:-1])
    assert lines[-1] == ("mud-iknn train: error: 6 bad files in --dataset shanghaitech_a (listed above): fix or "
                         "remove them, or pass --no-check to start anyway")
    status, _, err = run(capsys, "eval", "--checkpoint", tmp_path / "none.pt", "--dataset", "shanghaitech_a",
                         "--root", broken_shanghaitech, "--split", "train")
    assert status == 1 and "6 bad files" in err  # before the checkpoint is even opened
    status, _, err = run(capsys, "eval", "--checkpoint", tmp_path / "none.pt", "--dataset", "shanghaitech_a",
                         "--root", broken_shanghaitech, "--split", "train", "--no-check")
    assert status == 1 and "checkpoint not found" in err
