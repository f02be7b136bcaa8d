#!/usr/bin/env bash
# The label kinds on a GPU (issue 13): FIDT and count maps of the CUDA kernels against the
# references and the CPU kernel, then their benchmark targets on CPU and CUDA side by side.
# Run from the repository root after the CUDA build is installed (bench/gpu_check.sh's install):
#   bash bench/gpu_label_kinds.sh [OUT_DIR]      # a few minutes; writes OUT_DIR/label_kinds.md
set -euo pipefail
OUT="${1:-${OUT:-bench_out}}"
mkdir -p "$OUT"
PY="${PY:-python}"
"$PY" -m pytest -q tests/test_labels_kinds.py tests/test_labels_registry.py -k "cuda or registry" 2>&1 \
  | tee "$OUT/label_kinds_tests.log"
"$PY" bench/bench_label_kinds.py --device all --threads "$(nproc)" --out "$OUT/label_kinds.md" 2>&1 \
  | tee "$OUT/label_kinds_bench.log"
