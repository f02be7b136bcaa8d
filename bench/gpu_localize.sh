#!/usr/bin/env bash
# GPU check of issue 12's localization (run from the repository root on the GPU machine, a few
# minutes): installs the package with CUDA, runs the localize and evaluate tests on the GPU's torch,
# a CUDA-tensor localize against the CPU one, and bench/bench_localize.py (localize vs the kNN
# label call on CUDA and the CPU; the metrics rows are CPU-only). Output: $OUT/summary.md,
# $OUT/localize_bench.md, $OUT/localize_bench.json, $OUT/*.log.
source bench/gpu_common.sh
install install_localize.log && status install ok || { status install "failed (see install_localize.log)"; exit 1; }
cd /tmp  # the installed package, not the repository's (which has no CUDA extension)
$PY -m pytest -q "$ROOT/tests/test_localize.py" "$ROOT/tests/test_localization_metrics.py" "$ROOT/tests/test_evaluate.py" \
  > "$OUT/localize_tests.log" 2>&1
status "localize tests" "exit $? ($(tail -1 "$OUT/localize_tests.log"))"
$PY - > "$OUT/localize_cuda_vs_cpu.log" 2>&1 <<'PY'
import torch
from mud_iknn import iknn_maps, localize
from mud_iknn.benchmark import CASES
case = CASES["crop512_n300_b32"]
points = [torch.from_numpy(p).cuda() for p in case.points()]
maps = iknn_maps(points, case.size)
gpu, cpu = localize(maps), localize(maps.cpu())
same = all(g.device.type == "cuda" and g.shape == c.shape and torch.allclose(g.cpu(), c, atol=1e-5)
           for g, c in zip(gpu, cpu))
print("cuda == cpu:", same, sum(len(g) for g in gpu), "heads")
raise SystemExit(0 if same else 1)
PY
status "localize cuda == cpu" "exit $? ($(tail -1 "$OUT/localize_cuda_vs_cpu.log"))"
timeout 300 $PY "$ROOT/bench/bench_localize.py" --threads 1 16 --json "$OUT/localize_bench.json" \
  > "$OUT/localize_bench.md" 2>&1
status "bench_localize" "exit $? (table in localize_bench.md)"
