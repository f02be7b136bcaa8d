"""Each real data-set format: small hand-written fixtures in the distributed layout, read back."""
from __future__ import annotations

import json
import sys
import warnings
import zlib

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from mud_iknn.data import DATASETS, open_dataset
from mud_iknn.data.common import check_points, load_image, load_mat, read_annpoints_mat
from mud_iknn.sample import CrowdSample


def write_image(path, height=24, width=32, mode="RGB", value=None):
    """A flat-colour image file (lossless PNG content is not needed: colours are flat)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if value is not None else ((200, 100, 50) if mode == "RGB" else 120)
    Image.new(mode, (width, height), colour).save(path)
    return path


def write_shanghaitech_gt(path, points):
    """A GT_IMG_n.mat exactly as the archive stores it: cell image_info{1} with struct fields."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    info = np.empty((1, 1), dtype=[("location", object), ("number", object)])
    info[0, 0]["location"] = points
    info[0, 0]["number"] = np.array([[float(len(points))]])
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = info
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"image_info": cell})


def write_annpoints(path, points):
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"annPoints": np.asarray(points, dtype=np.float64).reshape(-1, 2)})


# ---------------------------------------------------------------- ShanghaiTech

@pytest.fixture
def shanghaitech_root(tmp_path):
    root = tmp_path / "ShanghaiTech"
    heads = {1: [[3.5, 4.0], [30.0, 20.25]], 2: [], 10: [[0.0, 0.0], [31.0, 23.0], [15.5, 12.5]]}
    for n, pts in heads.items():
        write_image(root / "part_A" / "train_data" / "images" / f"IMG_{n}.jpg")
        write_shanghaitech_gt(root / "part_A" / "train_data" / "ground-truth" / f"GT_IMG_{n}.mat", pts)
    write_image(root / "part_A" / "test_data" / "images" / "IMG_1.jpg", mode="L")
    write_shanghaitech_gt(root / "part_A" / "test_data" / "ground-truth" / "GT_IMG_1.mat", [[1, 2]])
    write_image(root / "part_B_final" / "test_data" / "images" / "IMG_7.jpg", height=16, width=16)
    write_shanghaitech_gt(root / "part_B_final" / "test_data" / "ground-truth" / "GT_IMG_7.mat", [[8, 9]])
    return root, heads


def test_shanghaitech_reads_points_in_image_number_order(shanghaitech_root):
    root, heads = shanghaitech_root
    data = open_dataset("shanghaitech_a", root, split="train")
    assert len(data) == 3
    assert [data[i].name for i in range(3)] == ["IMG_1", "IMG_2", "IMG_10"]  # numeric, not lexical
    for i, n in enumerate([1, 2, 10]):
        sample = data[i]
        assert isinstance(sample, CrowdSample)
        assert sample.image.shape == (3, 24, 32) and sample.image.dtype == torch.uint8
        assert sample.points.dtype == torch.float32
        np.testing.assert_array_equal(sample.points.numpy(), np.array(heads[n], dtype=np.float32).reshape(-1, 2))
        assert sample.count == len(heads[n])
        assert sample.meta["dataset"] == "shanghaitech_a" and sample.meta["split"] == "train"
        assert sample.meta["annotation_path"].endswith(f"GT_IMG_{n}.mat")
    np.testing.assert_array_equal(data.counts(), [2, 0, 3])


def test_shanghaitech_grayscale_becomes_rgb_and_part_b_final_layout(shanghaitech_root):
    root, _ = shanghaitech_root
    test = open_dataset("shanghaitech_a", root, split="test")[0]
    assert test.image.shape == (3, 24, 32)
    assert (test.image[0] == test.image[1]).all() and (test.image[1] == test.image[2]).all()
    assert abs(int(test.image[0, 5, 5]) - 120) <= 2
    b = open_dataset("shanghaitech_b", root, split="test")
    assert len(b) == 1 and b[0].points.tolist() == [[8.0, 9.0]]
    # the part folder itself as root
    assert len(open_dataset("shanghaitech_a", root / "part_A", split="train")) == 3


def test_shanghaitech_errors_name_the_missing_thing(shanghaitech_root, tmp_path):
    root, _ = shanghaitech_root
    (root / "part_A" / "train_data" / "ground-truth" / "GT_IMG_2.mat").unlink()
    data = open_dataset("shanghaitech_a", root, split="train")
    with pytest.raises(FileNotFoundError, match="GT_IMG_2.mat"):
        data[1]
    with pytest.raises(FileNotFoundError, match="part_B"):
        open_dataset("shanghaitech_b", root, split="train")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_dataset("shanghaitech_a", tmp_path / "nowhere")
    bad = root / "part_A" / "train_data" / "ground-truth" / "GT_IMG_1.mat"
    scipy.io.savemat(str(bad), {"location": np.zeros((1, 2))})
    with pytest.raises(ValueError, match="GT_IMG_1.mat.*image_info"):
        data[0]


def test_write_shanghaitech_refuses_to_leave_stale_images(tmp_path):
    from mud_iknn.data import write_shanghaitech
    image = torch.zeros((3, 8, 8), dtype=torch.uint8)
    three = [CrowdSample(image=image, points=torch.tensor([[1.0, 2.0]] * k)) for k in (1, 2, 3)]
    write_shanghaitech(three, tmp_path)
    write_shanghaitech(three[::-1], tmp_path)  # the same names again: replaced
    assert open_dataset("shanghaitech_a", tmp_path).counts().tolist() == [3, 2, 1]
    # two samples over three: IMG_3 of the first write would be read back as a third image
    with pytest.raises(FileExistsError, match=r"IMG_3.jpg"):
        write_shanghaitech(three[:2], tmp_path)
    assert open_dataset("shanghaitech_a", tmp_path).counts().tolist() == [3, 2, 1]  # nothing written


# ---------------------------------------------------------------- UCF-QNRF

def test_ucf_qnrf_train_and_test(tmp_path):
    root = tmp_path / "UCF-QNRF_ECCV18"
    write_image(root / "Train" / "img_0001.jpg")
    write_annpoints(root / "Train" / "img_0001_ann.mat", [[1.25, 2.5], [10, 20]])
    write_image(root / "Train" / "img_0002.jpg")
    write_annpoints(root / "Train" / "img_0002_ann.mat", [[5, 5]])
    write_image(root / "Test" / "img_0001.jpg", mode="L")
    write_annpoints(root / "Test" / "img_0001_ann.mat", [[31, 23], [0, 0], [16, 12]])
    train = open_dataset("ucf_qnrf", root, split="train")
    assert [s.name for s in train] == ["img_0001", "img_0002"]
    assert train[0].points.tolist() == [[1.25, 2.5], [10.0, 20.0]]
    test = open_dataset("ucf_qnrf", root, split="test")
    assert test[0].count == 3 and test[0].image.shape == (3, 24, 32)
    with pytest.raises(ValueError, match="splits train, test"):
        open_dataset("ucf_qnrf", root, split="val")


def test_ucf_qnrf_wrong_key_names_file(tmp_path):
    write_image(tmp_path / "Train" / "img_0001.jpg")
    scipy.io.savemat(str(tmp_path / "Train" / "img_0001_ann.mat"), {"points": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"img_0001_ann.mat: no variable annPoints.*points"):
        open_dataset("ucf_qnrf", tmp_path)[0]


# ---------------------------------------------------------------- UCF-CC-50

@pytest.fixture
def ucf_cc_50_root(tmp_path):
    for n in range(1, 51):
        write_image(tmp_path / f"{n}.jpg", height=8, width=8, mode="L", value=n)
        write_annpoints(tmp_path / f"{n}_ann.mat", [[float(n % 8), 1.0]] * (n % 4))
    return tmp_path


def test_ucf_cc_50_five_fold_split(ucf_cc_50_root):
    test = open_dataset("ucf_cc_50", ucf_cc_50_root, split="test", fold=2)
    assert [s.name for s in test] == [str(n) for n in range(21, 31)]
    train = open_dataset("ucf_cc_50", ucf_cc_50_root, split="train", fold=2)
    assert [s.name for s in train] == [str(n) for n in list(range(1, 21)) + list(range(31, 51))]
    sample = test[3]  # image 24: grey level 24, 24 % 4 = 0 heads
    assert sample.image.shape == (3, 8, 8) and sample.count == 0
    assert abs(int(sample.image[2, 4, 4]) - 24) <= 2
    assert test[2].points.tolist() == [[7.0, 1.0]] * 3  # image 23
    folds = [set(s.name for s in open_dataset("ucf_cc_50", ucf_cc_50_root, split="test", fold=f))
             for f in range(5)]
    assert set.union(*folds) == {str(n) for n in range(1, 51)} and sum(map(len, folds)) == 50


def test_ucf_cc_50_bad_fold_and_missing_images(ucf_cc_50_root):
    with pytest.raises(ValueError, match="fold"):
        open_dataset("ucf_cc_50", ucf_cc_50_root, split="test", fold=5)
    (ucf_cc_50_root / "42.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"\[42\].*42.jpg"):
        open_dataset("ucf_cc_50", ucf_cc_50_root, split="test", fold=4)
    assert len(open_dataset("ucf_cc_50", ucf_cc_50_root, split="test", fold=0)) == 10


# ---------------------------------------------------------------- JHU-Crowd++

def test_jhu_crowd_rows_boxes_and_labels(tmp_path):
    split = tmp_path / "jhu_crowd_v2.0" / "val"
    write_image(split / "images" / "0003.jpg")
    write_image(split / "images" / "0001.jpg")
    (split / "gt").mkdir()
    (split / "gt" / "0001.txt").write_text("10 12 4 5 1 0\n20.5 3 6 7 3 1\n")
    (split / "gt" / "0003.txt").write_text("")
    # the real format: name, count, scene type, weather (0 none, 1 fog/haze, 2 rain, 3 snow), distractor
    (split / "image_labels.txt").write_text("0001,2,stadium,1,0\n0003,0,street,0,1\n")
    data = open_dataset("jhu_crowd", tmp_path / "jhu_crowd_v2.0", split="val")
    first, second = data[0], data[1]
    assert first.name == "0001" and first.points.tolist() == [[10.0, 12.0], [20.5, 3.0]]
    np.testing.assert_array_equal(first.meta["boxes"], [[4, 5], [6, 7]])
    assert first.meta["occlusion"].tolist() == [1, 3] and first.meta["blur"].tolist() == [0, 1]
    assert first.meta["scene"] == "stadium" and first.meta["weather"] == "1"
    assert first.meta["categories"] == ["low", "weather"] and second.meta["categories"] == ["low"]
    assert second.count == 0 and second.points.shape == (0, 2)


def test_jhu_crowd_categories_from_image_labels(tmp_path):
    split = tmp_path / "test"
    for name in ("0001", "0002", "0003", "0004", "0005"):
        write_image(split / "images" / f"{name}.jpg")
        (split / "gt").mkdir(exist_ok=True)
        (split / "gt" / f"{name}.txt").write_text("1 1 2 2 1 0\n")
    # the categories follow the listed counts (the paper's 0-50 / 51-500 / >500) and weather codes
    (split / "image_labels.txt").write_text("0001,50,street,0,0\n0002,51,stadium,2,0\n0003,500,mall,0,0\n"
                                            "0004,501,stadium,3,0\n")
    data = open_dataset("jhu_crowd", tmp_path, split="test")
    assert [data[i].meta.get("categories") for i in range(5)] == [
        ["low"], ["medium", "weather"], ["medium"], ["high", "weather"], None]  # 0005 is not listed
    (split / "image_labels.txt").write_text("0001,50,street,fog,0\n")
    with pytest.raises(ValueError, match=r"image_labels.txt:1: the weather code 'fog'"):
        open_dataset("jhu_crowd", tmp_path, split="test")
    (split / "image_labels.txt").write_text("0001,many,street,0,0\n")
    with pytest.raises(ValueError, match=r"image_labels.txt:1: the count 'many'"):
        open_dataset("jhu_crowd", tmp_path, split="test")


def test_jhu_crowd_bad_row_names_file_and_line(tmp_path):
    write_image(tmp_path / "train" / "images" / "0001.jpg")
    (tmp_path / "train" / "gt").mkdir()
    (tmp_path / "train" / "gt" / "0001.txt").write_text("1 2 3 4 1 0\n1 2 3\n")
    with pytest.raises(ValueError, match=r"0001.txt:2: expected 6 fields"):
        open_dataset("jhu_crowd", tmp_path, split="train")[0]


# ---------------------------------------------------------------- NWPU-Crowd

def test_nwpu_crowd_json_mat_fallback_and_split_lists(tmp_path):
    write_image(tmp_path / "images" / "0001.jpg")
    write_image(tmp_path / "images" / "0002.jpg")
    write_image(tmp_path / "images" / "0003.jpg")
    (tmp_path / "jsons").mkdir()
    (tmp_path / "jsons" / "0001.json").write_text(json.dumps(
        {"img_id": "0001.jpg", "human_num": 2, "points": [[1.5, 2.5], [30, 22]], "boxes": [[0, 0, 3, 3]] * 2}))
    write_annpoints(tmp_path / "mats" / "0002.mat", [[4, 4]])
    (tmp_path / "train.txt").write_text("0001 0 2\n0002 1 1\n")
    (tmp_path / "val.txt").write_text("0003 0 0\n")
    train = open_dataset("nwpu_crowd", tmp_path, split="train")
    assert [s.name for s in train] == ["0001", "0002"]
    assert train[0].points.tolist() == [[1.5, 2.5], [30.0, 22.0]] and train[0].meta["human_num"] == 2
    assert train[1].points.tolist() == [[4.0, 4.0]]
    with pytest.raises(FileNotFoundError, match=r"0003.json"):
        open_dataset("nwpu_crowd", tmp_path, split="val")[0]
    assert [s.name for s in open_dataset("nwpu_crowd", tmp_path, split="all")] == ["0001", "0002"]
    with pytest.raises(FileNotFoundError, match="test.txt"):
        open_dataset("nwpu_crowd", tmp_path, split="test")


def test_nwpu_crowd_head_boxes_and_unlabelled_test_split(tmp_path):
    for name in ("0001", "0002", "3110"):
        write_image(tmp_path / "images" / f"{name}.jpg")
    (tmp_path / "jsons").mkdir()
    (tmp_path / "jsons" / "0001.json").write_text(json.dumps(
        {"human_num": 2, "points": [[5, 5], [20, 10]], "boxes": [[2, 1, 8, 9], [15, 5, 25, 15]]}))
    (tmp_path / "jsons" / "0002.json").write_text(json.dumps({"points": [[5, 5]], "boxes": [[2, 1, 8, 9]] * 2}))
    (tmp_path / "train.txt").write_text("0001 0 1\n0002 0 1\n")
    (tmp_path / "test.txt").write_text("3110 0 1\n")
    train = open_dataset("nwpu_crowd", tmp_path, split="train")
    np.testing.assert_array_equal(train[0].meta["boxes"], [[6, 8], [10, 10]])  # (w, h) of (x1, y1, x2, y2)
    with pytest.raises(ValueError, match=r"0002.json: 'boxes' must hold one \[x1, y1, x2, y2\] per point \(1\)"):
        train[1]
    test = open_dataset("nwpu_crowd", tmp_path, split="test")
    assert train.labelled and not test.labelled
    name, image = test.image_only(0)
    assert name == "3110" and image.shape[0] == 3
    with pytest.raises(FileNotFoundError, match="3110.json"):
        test[0]


def test_nwpu_crowd_count_mismatch_names_file(tmp_path):
    write_image(tmp_path / "images" / "0001.jpg")
    (tmp_path / "jsons").mkdir()
    (tmp_path / "jsons" / "0001.json").write_text(json.dumps({"human_num": 3, "points": [[1, 1]]}))
    with pytest.raises(ValueError, match="0001.json: human_num is 3"):
        open_dataset("nwpu_crowd", tmp_path, split="all")[0]
    (tmp_path / "jsons" / "0001.json").write_text(json.dumps({"human_num": None, "points": [[1, 1]]}))
    assert open_dataset("nwpu_crowd", tmp_path, split="all")[0].points.tolist() == [[1.0, 1.0]]  # null: unrecorded
    # NaN and Infinity (which json reads), a fraction and a bool are no count of one head either
    for number, shown in (("NaN", "nan"), ("Infinity", "inf"), ("1.5", "1.5"), ("true", "True")):
        (tmp_path / "jsons" / "0001.json").write_text('{"human_num": %s, "points": [[1, 1]]}' % number)
        with pytest.raises(ValueError, match=f"0001.json: human_num is {shown} but"):
            open_dataset("nwpu_crowd", tmp_path, split="all")[0]


@pytest.mark.parametrize("points", [None, 5, "1 2"])
def test_nwpu_crowd_points_not_a_list_name_the_file(tmp_path, points):
    from mud_iknn.data import check_dataset
    write_image(tmp_path / "images" / "0001.jpg")
    (tmp_path / "jsons").mkdir()
    (tmp_path / "jsons" / "0001.json").write_text(json.dumps({"human_num": 1, "points": points}))
    data = open_dataset("nwpu_crowd", tmp_path, split="all")
    with pytest.raises(ValueError, match=r"0001.json: expected an object with a 'points' list"):
        data[0]
    assert [b.path for b in check_dataset(data)] == [str(tmp_path / "jsons" / "0001.json")]


# ---------------------------------------------------------------- your own folder

def test_point_folder_json_and_csv(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "a.json").write_text(json.dumps({"points": [[1, 2], [3, 4]]}))
    write_image(tmp_path / "b.jpg")
    (tmp_path / "b.json").write_text("[[5, 6]]")
    write_image(tmp_path / "c.jpeg")
    (tmp_path / "c.csv").write_text("x,y\n7.5,8\n9,10.25\n")
    write_image(tmp_path / "d.bmp")
    (tmp_path / "d.csv").write_text("")
    (tmp_path / "notes.txt").write_text("not an image")
    data = open_dataset("folder", tmp_path)
    assert [s.name for s in data] == ["a", "b", "c", "d"]
    assert [s.points.tolist() for s in data] == [[[1, 2], [3, 4]], [[5, 6]], [[7.5, 8], [9, 10.25]], []]


def test_point_folder_errors(tmp_path):
    write_image(tmp_path / "train" / "x.png")
    data = open_dataset("folder", tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match=r"x.json \(nor x.csv\)"):
        data[0]
    (tmp_path / "train" / "x.csv").write_text("1,2\n3,four\n")
    with pytest.raises(ValueError, match=r"x.csv: line 2"):
        open_dataset("folder", tmp_path, split="train")[0]
    (tmp_path / "train" / "x.csv").write_text("\nx,y\n1,2\n3,four\n")  # the file's own line numbers
    with pytest.raises(ValueError, match=r"x.csv: line 4 must be two numbers"):
        open_dataset("folder", tmp_path, split="train")[0]
    with pytest.raises(FileNotFoundError, match="no annotated images"):
        open_dataset("folder", tmp_path)
    with pytest.raises(FileNotFoundError, match="split 'val'"):
        open_dataset("folder", tmp_path, split="val")


def test_point_folder_reads_what_spreadsheets_write_and_refuses_shared_point_files(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "a.CSV").write_bytes("\ufeffx,y\r\n1,2\r\n".encode("utf-8"))  # Excel's "CSV UTF-8"
    write_image(tmp_path / "b.png")
    (tmp_path / "b.json").write_bytes("\ufeff[[3, 4]]".encode("utf-8"))
    assert [s.points.tolist() for s in open_dataset("folder", tmp_path)] == [[[1, 2]], [[3, 4]]]
    (tmp_path / "b.json").write_bytes(b"[[3, \xff]]")
    with pytest.raises(ValueError, match=r"b.json: not UTF-8"):
        open_dataset("folder", tmp_path)[1]
    write_image(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match=r"a.jpg and .*a.png would share one point file"):
        open_dataset("folder", tmp_path)


def test_counts_agree_with_loading(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "a.json").write_text("[[1, 2], [3, 4]]")
    write_image(tmp_path / "b.png")
    (tmp_path / "b.json").write_text("[]")
    data = open_dataset("folder", tmp_path)
    assert data.counts().tolist() == [len(s.points) for s in data] == [2, 0]
    # four (x, y, label) rows: loading refuses them; counts() made 6 heads of their 12 numbers
    (tmp_path / "b.json").write_text("[[1, 2, 0], [3, 4, 0], [5, 6, 1], [7, 8, 1]]")
    for read in (lambda: data[1], data.counts):
        with pytest.raises(ValueError, match=r"b.json: head points must be N \(x, y\) pairs"):
            read()
    (tmp_path / "b.json").write_text("[[1, 2], [3]]")  # ragged: numpy's error did not name the file
    for read in (lambda: data[1], data.counts):
        with pytest.raises(ValueError, match=r"b.json: head points are not numbers"):
            read()
    (tmp_path / "b.json").write_text("[[500, 2]]")  # far outside the 32 x 24 image
    with pytest.raises(ValueError, match=r"b.json: head 0 .*far outside"):
        data.counts()


# ---------------------------------------------------------------- shared helpers

def test_check_points_names_source_and_spots_swapped_axes():
    ok = check_points([[-2.0, 0.0], [33.0, 25.0]], (24, 32), "ann.mat")  # just past the border: kept
    assert ok.shape == (2, 2)
    assert check_points(np.zeros((0, 0)), (24, 32), "ann.mat").shape == (0, 2)
    with pytest.raises(ValueError, match=r"ann.mat: head 1 has a non-finite"):
        check_points([[1, 1], [np.nan, 2]], (24, 32), "ann.mat")
    with pytest.raises(ValueError, match=r"gt.txt: head 0 .*far outside.*swapped"):
        check_points([[150, 20]], (200, 40), "gt.txt")
    with pytest.raises(ValueError, match=r"gt.txt: head 0 .*far outside"):
        check_points([[-100, 5]], (24, 32), "gt.txt")
    with pytest.raises(ValueError, match=r"gt.txt: head points must be N \(x, y\) pairs"):
        check_points([[1, 2, 3]], (24, 32), "gt.txt")


def test_load_image_modes(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(rgba)
    assert load_image(rgba)[:, 0, 0].tolist() == [10, 20, 30]
    pal = tmp_path / "pal.png"
    Image.new("RGB", (5, 4), (40, 50, 60)).convert("P").save(pal)
    assert load_image(pal).shape == (3, 4, 5)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 5), 256 * 77, dtype=np.uint16)).save(deep)
    assert load_image(deep)[:, 2, 2].tolist() == [77, 77, 77]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_image(broken)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    floats = tmp_path / "floats.tif"  # values in [0, 1] would convert to black: refused, not guessed
    Image.fromarray(np.full((4, 5), 0.5, dtype=np.float32)).save(floats)
    with pytest.raises(ValueError, match="floats.tif: a floating-point image"):
        load_image(floats)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warned about a read-only array for 1 x 1 images
        assert load_image(tiny)[:, 0, 0].tolist() == [1, 2, 3]
    bomb = tmp_path / "bomb.png"  # a header claiming 20000 x 20000 px: PIL's DecompressionBombError
    Image.new("L", (1, 1)).save(bomb)
    data = bytearray(bomb.read_bytes())
    data[16:24] = (20000).to_bytes(4, "big") * 2  # IHDR width and height, then the chunk's CRC
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    bomb.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="cannot read image .*bomb.png: Image size .* exceeds limit"):
        load_image(bomb)


@pytest.mark.parametrize("content", [b"", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n",
                                     b"MATLAB 5.0 MAT-file" + b"\0" * 200])
def test_a_mat_file_that_is_not_one_names_the_file(tmp_path, content):
    path = tmp_path / "GT_IMG_1.mat"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="cannot read MATLAB file .*GT_IMG_1.mat"):
        load_mat(path)


def _write_mat_v73(path, **variables):
    """A MATLAB v7.3 file as MATLAB writes one: the text header in a 512-byte HDF5 userblock, each
    matrix transposed (column-major), an empty one stored as its dimensions with MATLAB_empty."""
    import h5py
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            value = np.asarray(value, dtype=np.float64)
            data = f.create_dataset(name, data=np.array(value.shape[::-1], dtype=np.uint64) if value.size == 0
                                    else value.T)
            data.attrs["MATLAB_class"] = np.bytes_("double")
            if value.size == 0:
                data.attrs["MATLAB_empty"] = np.uint8(1)
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")


def test_matlab_v73_annotations_read_as_stored(tmp_path):
    pytest.importorskip("h5py")
    heads = [[10.5, 3.0], [7.25, 20.0], [1.0, 2.0]]
    _write_mat_v73(tmp_path / "GT_IMG_1.mat", annPoints=heads)
    _write_mat_v73(tmp_path / "GT_IMG_2.mat", annPoints=np.zeros((0, 2)))  # [0, 2] read as a head before
    assert read_annpoints_mat(tmp_path / "GT_IMG_1.mat")[0].tolist() == heads
    points = read_annpoints_mat(tmp_path / "GT_IMG_2.mat")[0]
    assert points.size == 0 and len(check_points(points, (30, 30), "GT_IMG_2.mat")) == 0


def test_matlab_v73_file_gets_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # as without h5py installed: import fails
    path = tmp_path / "GT_IMG_1.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    path.write_bytes(header.ljust(116) + b"\0" * 8 + b"\x00\x02IM" + b"\0" * 384 + b"\x89HDF\r\n\x1a\n")
    with pytest.raises(ValueError, match=r"GT_IMG_1.mat is a MATLAB v7.3 \(HDF5\) file.*h5py"):
        load_mat(path)


def test_registry_errors(tmp_path):
    assert set(DATASETS) == {"shanghaitech_a", "shanghaitech_b", "ucf_qnrf", "ucf_cc_50", "jhu_crowd",
                             "nwpu_crowd", "folder", "synthetic"}
    with pytest.raises(ValueError, match="unknown data set 'mall'.*shanghaitech_a"):
        open_dataset("mall", tmp_path)
    with pytest.raises(ValueError, match="needs a root"):
        open_dataset("jhu_crowd")
    with pytest.raises(ValueError, match="takes no root"):
        open_dataset("synthetic", tmp_path)
    with pytest.raises(ValueError, match="splits train, val, test; got 'dev'"):
        open_dataset("jhu_crowd", tmp_path, split="dev")
    with pytest.raises(FileNotFoundError, match="JHU-Crowd\\+\\+ train folder not found"):
        open_dataset("jhu_crowd", tmp_path, split="train")
