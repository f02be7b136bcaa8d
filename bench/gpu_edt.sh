#!/usr/bin/env bash
# k = 1 against the exact distance transforms on the GPU machine (issue 15), from the repository
# root (a few minutes): builds and installs the package for the local GPU, then the label benchmark's
# k = 1 and k = 3 rows on the issue's layouts, CPU and CUDA, with the OpenCV / edt (CPU) and CuPy
# (GPU, float32) baselines that are installed there; writes $OUT/bench_edt.md and a summary line.
source "$(dirname "$0")/gpu_common.sh"

for module in cupy cv2 edt; do
  $PY -c "import $module" 2> /dev/null || status "$module" "not importable: its baseline column stays '-'"
done
rm -rf build
install build_edt.log || { status build "FAILED, see build_edt.log"; tail -40 "$OUT/build_edt.log"; exit 1; }
t=$(date +%s)
(cd /tmp && timeout 500 $PY "$ROOT/bench/bench_labels.py" --device all --threads "$(nproc)" --scipy-limit 0 \
  --k 1 3 --repeats 10 --cases img2048_n5000 img2048_n5000_uniform img2048_n40_sparse img2048_n5000_grouped \
  img4096_n12000_grouped crop512_n300_b32 crop512_n300_b32_grouped --out "$OUT/bench_edt.md") \
  > "$OUT/bench_edt.log" 2>&1
status bench_edt "exit $? ($(( $(date +%s) - t )) s)"
cat "$OUT/bench_edt.md" 2> /dev/null || tail -30 "$OUT/bench_edt.log"
