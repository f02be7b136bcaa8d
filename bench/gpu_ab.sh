#!/usr/bin/env bash
# GPU machine: the working tree's CUDA label engine against an earlier revision, both built here and
# timed in the same run (so the ratio holds whatever the card), then the working tree rebuilt with
# other compile-time settings (each a string of CUDA flags, e.g. "-DMUD_IKNN_CUDA_OCCUPANCY_SCALE=1").
# In order: build and install the working tree; its label tests (CUDA and CPU); compute-sanitizer
# memcheck; its CUDA label benchmark; the base revision built into a side folder and benchmarked;
# each variant built, checked against the C++ kernel, benchmarked on the k = 3 cases.
#   git archive -o bench/base.tar REV
#   OUT=out BASE=bench/base.tar bash bench/gpu_ab.sh ["FLAGS" ...]
# Writes summary.md, bench_new.md, bench_base.md, variant_N.md and logs under $OUT (3-5 minutes).
if [ ! -f "${BASE:-}" ]; then
  echo "gpu_ab.sh: BASE must name a git archive of the base revision (git archive -o bench/base.tar REV)" >&2
  exit 2
fi
BASE=$(realpath "$BASE")
source "$(dirname "$0")/gpu_common.sh"
bench() {  # bench NAME PYTHONPATH ARGS...: CUDA-only label benchmark into $OUT/NAME.md
  local name=$1 path=$2
  shift 2
  (cd /tmp && PYTHONPATH=$path timeout 120 $PY "$ROOT/bench/bench_labels.py" --device cuda --scipy-limit 0 \
    --out "$OUT/$name.md" "$@") > "$OUT/$name.log" 2>&1
  status "$name" "exit $?"
}

echo "# GPU A/B check, $(date -u +%Y-%m-%d): $(nvidia-smi --query-gpu=name --format=csv,noheader 2>&1)" > "$summary"
rm -rf build
t=$(date +%s)
install build.log || { status build "FAILED, see build.log"; tail -30 "$OUT/build.log"; exit 1; }
status build "ok ($(( $(date +%s) - t )) s)"

t=$(date +%s)
# The label tests on the GPU and the CPU (their emulated-CUDA backends add nothing here: CI runs them).
(cd "$ROOT/tests" && timeout 150 $PY -m pytest -q -p no:cacheprovider -x -k "not emulated" test_labels_cuda.py test_labels.py \
  > "$OUT/tests.log" 2>&1)
status tests "exit $? ($(( $(date +%s) - t )) s): $(tail -1 "$OUT/tests.log")"

memcheck 90
bench bench_new "" --k 1 3 8

rm -rf /tmp/ab_base /tmp/ab_base_pkg
mkdir -p /tmp/ab_base && tar -C /tmp/ab_base -xf "$BASE"
t=$(date +%s)
(cd /tmp/ab_base && install build_base.log --target /tmp/ab_base_pkg)
status build_base "exit $? ($(( $(date +%s) - t )) s)"
bench bench_base /tmp/ab_base_pkg --k 1 3 8

n=0
for flags in "$@"; do
  n=$((n + 1))
  echo "- variant_$n: $flags" >> "$summary"
  install "build_variant_$n.log" --config-settings=cmake.define.CMAKE_CUDA_FLAGS="$flags" \
    || { status "variant_$n" "build failed"; continue; }
  (cd "$ROOT/tests" && timeout 60 $PY -m pytest -q -p no:cacheprovider test_labels_cuda.py -k matches 2>&1 \
    | tail -1 > "$OUT/tests_variant_$n.log")
  status "variant_$n tests" "$(cat "$OUT/tests_variant_$n.log")"
  bench "variant_$n" "" --k 3 --cases crop512_n300_b32 img2048_n5000 img4096_n12000
done

cuda_columns() {  # case, map and the two CUDA timings of a benchmark's first table, found by their headers
  awk -F'|' '/^\|/ { table = 1 } !/^\|/ && table { exit } /^\|/ && !/---/ {
    if (!e) for (i = 1; i <= NF; i++) { if ($i ~ /CUDA end to end/) e = i; if ($i ~ /CUDA GPU time/) g = i }
    print "|" $2 "|" $3 "|" $e "|" $g "|" }' "$1"
}
for f in bench_new bench_base $(seq -f 'variant_%g' 1 $n); do
  [ -f "$OUT/$f.md" ] && { echo "## $f"; cuda_columns "$OUT/$f.md"; }
done
[ -f "$OUT/bench_new.md" ] && sed -n '/^Against/,$p' "$OUT/bench_new.md"  # the working tree's targets
cat "$summary"
grep -E "FAILED|Error" "$OUT/tests.log" | head -20
