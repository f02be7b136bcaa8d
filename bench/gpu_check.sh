#!/usr/bin/env bash
# The prepared GPU check: run once on the GPU machine from the repository root (about 5 minutes).
# Builds and installs the package for the local GPU, runs the whole test suite (CUDA tests
# included), a compute-sanitizer memcheck of every kernel on small cases, the label benchmarks and
# the training-step benchmark (on-the-fly vs precomputed vs scipy labels, DenseNet-201 batch 16);
# writes summary.md, bench.md, bench_training.md and the logs under $OUT (default ./out).
source "$(dirname "$0")/gpu_common.sh"

{
  echo "# GPU check, $(date -u +%Y-%m-%d)"
  echo
  echo "- card: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
  echo "- nvcc: $(nvcc --version 2>&1 | tail -1)"
  echo "- torch: $($PY -c 'import torch; print(torch.__version__)' 2>&1)"
} > "$summary"

rm -rf build  # no CMake cache from an earlier (e.g. tuning) build
t=$(date +%s)
if install build.log -v; then
  status build "ok ($(( $(date +%s) - t )) s): $(cd /tmp && $PY -c 'import mud_iknn; print(mud_iknn.backend_info())')"
else
  status build "FAILED, see build.log"; tail -40 "$OUT/build.log"; exit 1
fi

t=$(date +%s)
# every test but the emulated-CUDA backends' (CI runs those; here they would only cost time)
(cd "$ROOT/tests" && timeout 200 $PY -m pytest -q -p no:cacheprovider -rs -k "not emulated" . > "$OUT/tests.log" 2>&1)
status tests "exit $? ($(( $(date +%s) - t )) s): $(tail -1 "$OUT/tests.log")"

memcheck 120

t=$(date +%s)
(cd /tmp && timeout 150 $PY "$ROOT/bench/bench_labels.py" --device all --threads "$(nproc)" --scipy-limit 1e7 \
  --out "$OUT/bench.md") > "$OUT/bench.log" 2>&1
status bench "exit $? ($(( $(date +%s) - t )) s)"

t=$(date +%s)
: > "$OUT/bench_training.md"
for args in "--heads 150" "--heads 150 --amp" "--heads 1000"; do
  (cd /tmp && timeout 100 $PY "$ROOT/bench/bench_training.py" --device cuda --model densenet201 --batch 16 \
    --size 224 --steps 20 --workers 8 $args) >> "$OUT/bench_training.md" 2>&1
  echo >> "$OUT/bench_training.md"
done
status bench_training "exit $? ($(( $(date +%s) - t )) s)"
cat "$OUT/bench.md" 2>/dev/null
cat "$OUT/bench_training.md"
echo
cat "$summary"
grep -E "FAILED|Error" "$OUT/tests.log" | head -20
