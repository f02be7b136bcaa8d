#!/usr/bin/env bash
# One prepared run on the GPU machine for the model/training side: builds the extension with CUDA
# in place, runs the model/training tests (CUDA ones included), then the training-throughput bench.
# Writes logs and a markdown summary under $OUT (default: ./out/gpu_training).
set -u
OUT=${OUT:-out/gpu_training}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD
{
  date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} > "$OUT/env.txt" 2>&1
cmake -S . -B build/gpu -DMUD_IKNN_CUDA=ON -DPython_EXECUTABLE="$(command -v $PY)" \
      -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" > "$OUT/build.log" 2>&1 \
  && cmake --build build/gpu -j 16 >> "$OUT/build.log" 2>&1 || { echo "build failed"; tail -30 "$OUT/build.log"; exit 1; }
$PY -m pytest -q tests/test_model.py tests/test_loss.py tests/test_transforms.py tests/test_train.py \
    tests/test_evaluate.py tests/test_distributed.py > "$OUT/tests.log" 2>&1
echo "tests rc=$?"; tail -3 "$OUT/tests.log"
for args in "--batch 16 --heads 150" "--batch 16 --heads 150 --amp" "--batch 16 --heads 1000"; do
  name=$(echo "$args" | tr -d ' -')
  $PY bench/bench_training.py --device cuda --model densenet201 --size 224 --steps 20 --workers 8 $args \
      --json "$OUT/bench_$name.json" > "$OUT/bench_$name.md" 2>&1
  cat "$OUT/bench_$name.md"
done
