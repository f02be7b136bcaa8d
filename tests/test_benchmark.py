"""The label benchmark's table and its check against the label engine's targets."""
import math

from mud_iknn import benchmark
from mud_iknn.benchmark import COLUMNS, TARGETS, Case


def test_rows_hold_the_measurements_and_their_ratios():
    rows = benchmark.run([Case("tiny", 2, 24, 20, 30)], [1, 3], {"cpu"}, threads=1, scipy_limit=1e9, repeats=1)
    assert [(r["case"], r["map"]) for r in rows] == [("tiny", "knn k=1"), ("tiny", "knn k=3"),
                                                    ("tiny", "density adaptive")]
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
                                                                                            "density adaptive")}
