"""The label benchmark's table and its check against the label engine's targets."""
import math

import numpy as np
import pytest

import mud_iknn
from mud_iknn import benchmark, reference
from mud_iknn.benchmark import CASES, COLUMNS, TARGETS, Case, Target


def test_rows_hold_the_measurements_and_their_ratios():
    rows = benchmark.run([Case("tiny", 2, 24, 20, 30)], [1, 3], {"cpu"}, threads=1, scipy_limit=1e9, repeats=1)
    assert [(r["case"], r["map"]) for r in rows] == [("tiny", "knn k=1"), ("tiny", "knn k=3"),
                                                    ("tiny", benchmark.PIXEL_ROW), ("tiny", "density adaptive")]
    for r in rows:
        assert r["scipy"] > 0 and r["C++ CPU"] > 0 and r["C++ CPU into out="] > 0
        assert math.isclose(r["CPU vs scipy"], r["scipy"] / r["C++ CPU"])
        assert r["CUDA end to end"] is None and benchmark._cells(r)[-4:] == ["-"] * 4
    assert len(benchmark._cells(rows[0])) == 2 + len(COLUMNS)


def test_targets_are_reported_met_or_not_for_the_rows_measured():
    def row(case, kind, **values):
        return {"case": case, "map": kind, **dict.fromkeys(COLUMNS), **values}

    rows = [row("crop512_n300_b32", "knn k=3", **{"CUDA end to end": 153e-6, "CPU vs scipy": 25.0}),
            row("img2048_n5000", "knn k=3", **{"CUDA end to end": 79e-6, "CPU vs scipy": 9.5})]
    lines = benchmark.target_lines(rows)
    assert lines[0].startswith("Against the label engine's targets") and lines[2:4] == ["| target | measured | |",
                                                                                         "|---|---|---|"]
    assert lines[4:] == [
        "| img2048_n5000 knn k=3: CPU vs scipy >= 10x | 9.5x | **not met** |",
        "| crop512_n300_b32 knn k=3: CPU vs scipy >= 10x | 25.0x | met |",
        "| img2048_n5000 knn k=3: CUDA end to end <= 100 us | 79 us | met |",
        "| crop512_n300_b32 knn k=3: CUDA end to end <= 150 us | 153 us | **not met** |",
    ]
    assert benchmark.target_lines([row("tiny", "knn k=3")]) == []
    assert {(t.case, t.map) for t in TARGETS} <= {(c, m) for c in benchmark.CASES for m in ("knn k=3",
                                                                                            "density adaptive",
                                                                                            benchmark.PIXEL_ROW)}


def test_exact_transform_baselines_give_the_kernels_map_of_pixel_heads():
    pytest.importorskip("cv2")
    pytest.importorskip("edt")
    case = Case("tiny_grouped", 2, 40, 52, 60, "grouped")
    images = case.pixel_points()
    ours = mud_iknn.iknn_maps(images, case.size, 1).numpy()
    np.testing.assert_allclose(ours, reference.iknn_maps(images, case.size, 1), atol=1e-6)
    for fn in (benchmark.opencv_iknn, benchmark.edt_iknn):
        np.testing.assert_allclose(fn(images, case.size, 1), ours, atol=1e-6, rtol=0)
    rows = benchmark.run([case], [1], {"cpu"}, threads=1, scipy_limit=0, repeats=1)
    pixel = next(r for r in rows if r["map"] == benchmark.PIXEL_ROW)
    assert pixel["OpenCV precise"] > 0 and math.isclose(pixel["CPU vs edt"], pixel["edt"] / pixel["C++ CPU"])


def test_layouts_keep_their_heads_where_they_say():
    rng = np.random.default_rng(0)
    uniform, grouped = (benchmark.LAYOUTS[n](rng, 5000, 2048, 2048) for n in ("uniform", "grouped"))
    assert (uniform >= 0).all() and (uniform < 2048).all()

    def empty_blocks(pts):  # share of the 64 x 64 px blocks of the map without a head
        hist, _, _ = np.histogram2d(pts[:, 0], pts[:, 1], bins=32, range=[[0, 2048], [0, 2048]])
        return (hist == 0).mean()

    assert empty_blocks(uniform) < 0.01 and empty_blocks(grouped) > 0.6
    assert all(len(p) <= 300 for p in CASES["crop512_n300_b32_grouped"].pixel_points())


def test_a_target_relative_to_another_map_of_the_case():
    target = Target("c", "knn k=3", "C++ CPU", 1.5, per="knn k=1")
    rows = [{"case": "c", "map": "knn k=1", "C++ CPU": 0.010}, {"case": "c", "map": "knn k=3", "C++ CPU": 0.016}]
    assert target.value(rows) == pytest.approx(1.6) and not target.met(target.value(rows))
    assert str(target) == "c knn k=3: C++ CPU <= 1.5x that of knn k=1" and target.cell(1.6) == "1.60x"
    assert target.value(rows[1:]) is None
    assert Target("c", "m", "CPU vs OpenCV", 3.0).met(3.2)
