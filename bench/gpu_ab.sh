#!/usr/bin/env bash
# GPU machine: the working tree's CUDA label engine against another version of csrc/labels_cuda.cu,
# both built here and timed in the same run (so the ratio holds whatever the card). In order:
# build and install the working tree; its label tests (CUDA included); compute-sanitizer memcheck;
# build the base version into a side folder; the CUDA label benchmark of both; then the working
# tree rebuilt at other grid-cell sizes (MUD_IKNN_CUDA_OCCUPANCY_SCALE, k = 3 cases only).
#   git show REV:csrc/labels_cuda.cu > bench/base_labels_cuda.cu
#   OUT=out BASE=bench/base_labels_cuda.cu bash bench/gpu_ab.sh [SCALE ...]
# Writes summary.md, bench_new.md, bench_base.md, tune_*.md and logs under $OUT (about 4 minutes).
set -u
OUT=$(realpath -m "${OUT:-out}")
BASE=$(realpath "${BASE:?BASE must name the base labels_cuda.cu}")
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
ROOT=$(pwd)
summary="$OUT/summary.md"
status() { echo "- $1: $2" | tee -a "$summary"; }
bench() {  # bench NAME [PYTHONPATH] ARGS...: CUDA-only label benchmark into $OUT/NAME.md
  local name=$1 path=$2
  shift 2
  (cd /tmp && PYTHONPATH=$path timeout 120 $PY "$ROOT/bench/bench_labels.py" --device cuda --scipy-limit 0 \
    --out "$OUT/$name.md" "$@") > "$OUT/$name.log" 2>&1
  status "$name" "exit $?"
}

echo "# GPU A/B check, $(date -u +%Y-%m-%d): $(nvidia-smi --query-gpu=name --format=csv,noheader 2>&1)" > "$summary"
rm -rf build
t=$(date +%s)
if MUD_IKNN_CUDA=ON $PY -m pip install --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1; then
  status build "ok ($(( $(date +%s) - t )) s)"
else
  status build "FAILED, see build.log"; tail -30 "$OUT/build.log"; exit 1
fi

t=$(date +%s)
(cd "$ROOT/tests" && timeout 150 $PY -m pytest -q -p no:cacheprovider -x test_labels_cuda.py test_labels.py \
  > "$OUT/tests.log" 2>&1)
status tests "exit $? ($(( $(date +%s) - t )) s): $(tail -1 "$OUT/tests.log")"

SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
(cd /tmp && timeout 90 "$SAN" --tool memcheck --error-exitcode 9 $PY "$ROOT/bench/sanitize_case.py") \
  > "$OUT/memcheck.log" 2>&1
status memcheck "exit $?: $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tr '\n' ' ')"

rm -rf /tmp/ab_base /tmp/ab_base_pkg
mkdir -p /tmp/ab_base
tar -C "$ROOT" --exclude=./build --exclude=./.git -cf - . | tar -C /tmp/ab_base -xf -
cp "$BASE" /tmp/ab_base/csrc/labels_cuda.cu
t=$(date +%s)
(cd /tmp/ab_base && MUD_IKNN_CUDA=ON $PY -m pip install --no-build-isolation --no-deps --target /tmp/ab_base_pkg . \
  > "$OUT/build_base.log" 2>&1)
status build_base "exit $? ($(( $(date +%s) - t )) s)"

bench bench_new "" --k 1 3 8
bench bench_base /tmp/ab_base_pkg --k 1 3 8

for scale in "$@"; do
  MUD_IKNN_CUDA=ON $PY -m pip install --no-build-isolation --no-deps . \
    --config-settings=cmake.define.CMAKE_CUDA_FLAGS="-DMUD_IKNN_CUDA_OCCUPANCY_SCALE=$scale" \
    > "$OUT/build_$scale.log" 2>&1 || { status "scale $scale" "build failed"; continue; }
  (cd "$ROOT/tests" && timeout 60 $PY -m pytest -q -p no:cacheprovider test_labels_cuda.py -k matches 2>&1 \
    | tail -1 > "$OUT/tests_$scale.log")
  status "scale $scale tests" "$(cat "$OUT/tests_$scale.log")"
  bench "tune_$scale" "" --k 3 --cases crop512_n300_b32 img2048_n5000 img4096_n12000
done

for f in bench_new bench_base $(printf 'tune_%s ' "$@"); do
  [ -f "$OUT/$f.md" ] && { echo "## $f"; grep -E '^\|' "$OUT/$f.md"; }
done
cat "$summary"
grep -E "FAILED|Error" "$OUT/tests.log" | head -20
