#!/usr/bin/env bash
# The label kinds on a GPU (issue 13): FIDT and count maps of the CUDA kernels against the
# references and the CPU kernel, then their benchmark targets on CPU and CUDA side by side.
# Run from the repository root (a few minutes); writes label_kinds.md and the logs under $OUT.
source "$(dirname "$0")/gpu_common.sh"
install install_label_kinds.log || { status install "FAILED, see install_label_kinds.log"; exit 1; }
# from tests/: the installed package (the repository's has no CUDA extension there)
(cd "$ROOT/tests" && timeout 200 $PY -m pytest -q -p no:cacheprovider test_labels_kinds.py test_labels_registry.py \
  -k "cuda or registry") > "$OUT/label_kinds_tests.log" 2>&1
status "label kinds tests" "exit $? ($(tail -1 "$OUT/label_kinds_tests.log"))"
(cd /tmp && timeout 200 $PY "$ROOT/bench/bench_label_kinds.py" --device all --threads "$(nproc)" \
  --out "$OUT/label_kinds.md") > "$OUT/label_kinds_bench.log" 2>&1
status "label kinds bench" "exit $? (table in label_kinds.md)"
