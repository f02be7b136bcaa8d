#!/usr/bin/env bash
# GPU machine: rebuild with several CUDA grid-cell sizes (MUD_IKNN_CUDA_OCCUPANCY_SCALE: heads per
# cell = scale * (k + 1)), check each against the C++ kernel and benchmark it. Usage:
#   OUT=out bash bench/tune_cuda_cells.sh 0.25 0.5 1.0
set -u
OUT=$(realpath -m "${OUT:-out}")
mkdir -p "$OUT"
PY=${PYTHON:-python3}
ROOT=$(pwd)
for scale in "$@"; do
  flags="-DMUD_IKNN_CUDA_OCCUPANCY_SCALE=$scale"
  MUD_IKNN_CUDA=ON $PY -m pip install --no-build-isolation --no-deps . \
    --config-settings=cmake.define.CMAKE_CUDA_FLAGS="$flags" > "$OUT/tune_build_$scale.log" 2>&1 \
    || { echo "scale $scale: build failed"; tail -20 "$OUT/tune_build_$scale.log"; continue; }
  (cd "$ROOT/tests" && timeout 120 $PY -m pytest -q -p no:cacheprovider test_labels_cuda.py -k matches 2>&1 | tail -1 \
    | sed "s/^/scale $scale: tests: /")
  (cd /tmp && timeout 120 $PY "$ROOT/bench/bench_labels.py" --device cuda --scipy-limit 0 \
    --cases crop512_n300_b32 img2048_n5000 img4096_n12000 --out "$OUT/tune_$scale.md" > /dev/null 2>&1)
  echo "scale $scale:"; grep knn "$OUT/tune_$scale.md"
done
