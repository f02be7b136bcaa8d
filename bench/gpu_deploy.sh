#!/usr/bin/env bash
# GPU check of the deployment path (issue 16), run from the repository root on the GPU machine:
# install with CUDA, the deployment tests (they skip without onnx / onnxruntime / onnxscript / av), and
# bench_deploy.py on the CPU and with --device cuda (video counting, DenseNet-201 with AMP; needs PyAV).
# usage: OUT=out bash bench/gpu_deploy.sh   (about 5 minutes; summary in $OUT/summary.md)
. "$(dirname "$0")/gpu_common.sh"
install install.log
status install "exit $? ($(tail -n 1 "$OUT/install.log"))"
status packages "$($PY -c 'import importlib.util as u; print(*[f"{m}={bool(u.find_spec(m))}" for m in ("onnx", "onnxscript", "onnxruntime", "av")])')"
(cd /tmp && timeout 600 $PY -m pytest -q -p no:cacheprovider "$ROOT/tests/test_deploy.py") > "$OUT/tests.log" 2>&1
status tests "exit $? ($(tail -n 1 "$OUT/tests.log"))"
(cd /tmp && timeout 900 $PY "$ROOT/bench/bench_deploy.py" --threads 16 --device cuda --json "$OUT/bench_deploy.json") \
  > "$OUT/bench_deploy.md" 2>&1
status bench_deploy "exit $? (table in bench_deploy.md)"
