"""Synthetic crowds: determinism, speed, perspective, occlusion, and the ShanghaiTech round trip."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from mud_iknn.data import SyntheticCrowds, open_dataset, render_crowd, write_shanghaitech


def test_same_seed_same_scene_and_splits_differ():
    a = SyntheticCrowds(3, size=96, seed=5, cache=False)
    b = SyntheticCrowds(3, size=96, seed=5)
    assert torch.equal(a[1].image, b[1].image) and torch.equal(a[1].points, b[1].points)
    assert not torch.equal(a[0].image, a[1].image)
    val = SyntheticCrowds(3, size=96, seed=5, split="val")
    assert not torch.equal(a[0].image, val[0].image)
    assert not torch.equal(a[0].image, SyntheticCrowds(3, size=96, seed=6)[0].image)
    assert torch.equal(a[-1].image, a[2].image)
    with pytest.raises(IndexError):
        a[3]


def test_samples_have_the_crowd_sample_contract():
    data = open_dataset("synthetic", split="test", num_images=4, size=(80, 112), seed=1)
    for i in range(len(data)):
        s = data[i]
        assert s.image.shape == (3, 80, 112) and s.image.dtype == torch.uint8
        assert s.points.dtype == torch.float32 and s.points.shape[1] == 2
        assert s.count == s.points.shape[0]
        x, y = s.points[:, 0], s.points[:, 1]
        assert bool(((x > -1) & (x < 112) & (y > -1) & (y < 80)).all())
        assert s.name == f"synthetic_test_{i:05d}"
    assert data.counts().tolist() == [data[i].count for i in range(4)]


def test_perspective_far_heads_are_smaller_and_denser():
    rows_top, rows_bottom, counts = 0, 0, []
    for i in range(12):
        image, points, meta = render_crowd(np.random.default_rng([3, i]), (160, 160))
        counts.append(len(points))
        if len(points) < 10:
            continue
        order = np.argsort(points[:, 1])
        radius = meta["head_radius"][order]
        assert np.all(np.diff(radius) >= -1e-9)  # radius grows with the row
        rows_top += int((points[:, 1] < 80).sum())
        rows_bottom += int((points[:, 1] >= 80).sum())
    assert rows_top > 1.3 * rows_bottom  # more (smaller) heads in the far half
    assert max(counts) > 100 and min(counts) < max(counts) / 2  # dense scenes, and varied ones


def test_occluded_heads_are_not_annotated():
    drawn = annotated = 0
    for i in range(20):
        _, points, meta = render_crowd(np.random.default_rng([11, i]), (128, 128))
        drawn += meta["drawn"]
        annotated += len(points)
        assert np.all(meta["visible_fraction"] >= 0.35)
    assert annotated < drawn  # some heads got hidden behind people or clutter


def test_annotated_heads_are_skin_or_hair_coloured():
    """At the centre of large, fully visible heads the picture shows a face or hair: warm or dark
    tones with R >= G >= B (up to noise), whatever the random clothing and ground colours."""
    warm = total = 0
    for i in range(4):
        image, points, meta = render_crowd(np.random.default_rng([2, i]), (192, 192))
        big = (meta["head_radius"] > 3.5) & (meta["visible_fraction"] == 1.0)
        for x, y in points[big]:
            r, g, b = image[int(round(y)), int(round(x))].astype(int)
            warm += int(r >= g - 12 and g >= b - 12)
            total += 1
    assert total >= 20
    assert warm >= 0.85 * total, (warm, total)


def test_write_shanghaitech_round_trip(tmp_path):
    synth = SyntheticCrowds(3, size=64, seed=2)
    split_dir = write_shanghaitech(synth, tmp_path, part="B", split="test")
    assert split_dir == tmp_path / "part_B" / "test_data"
    back = open_dataset("shanghaitech_b", tmp_path, split="test")
    assert len(back) == 3
    for i in range(3):
        np.testing.assert_allclose(back[i].points.numpy(), synth[i].points.numpy(), rtol=0, atol=0)
        assert back[i].name == f"IMG_{i + 1}"
        diff = (back[i].image.float() - synth[i].image.float()).abs().mean()
        assert diff < 8  # JPEG at quality 95


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        SyntheticCrowds(2, split="dev")
    with pytest.raises(ValueError, match="num_images"):
        SyntheticCrowds(0)
    with pytest.raises(ValueError, match="size"):
        SyntheticCrowds(2, size=8)
    # each used to pass here: -1 then failed in numpy at the first scene ("expected non-negative
    # integer"), max_count -1 there too ("negative dimensions"), 1.5 and 64.5 were truncated
    for kwargs, name in [({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"),
                         ({"max_count": -1}, "max_count"), ({"max_count": 2.5}, "max_count"),
                         ({"size": (64.5, 64)}, "size"), ({"size": "64"}, "size")]:
        with pytest.raises(ValueError, match=f"{name} must be"):
            SyntheticCrowds(2, **kwargs)
    assert len(SyntheticCrowds(1, size=(np.int64(40), 48), seed=np.int64(3), max_count=0)[0].points) == 0
