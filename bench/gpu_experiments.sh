#!/usr/bin/env bash
# The paper's comparisons with a real backbone on the GPU machine (run from the repository root,
# after bench/gpu_check.sh or any CUDA install of the package; about 6 minutes): DenseNet-121 at
# 224 px with AMP, randomly initialised (no weights can be fetched there), on the synthetic crowds,
# or on a data set when DATASET=NAME ROOT=DIR are given. Writes experiments.md and experiments.json
# under $OUT (default ./out) with the paired differences and their 95% intervals.
source "$(dirname "$0")/gpu_common.sh"

data=(--train-images "${TRAIN_IMAGES:-96}" --test-images "${TEST_IMAGES:-32}" --image-size 448)
if [[ -n "${DATASET:-}" ]]; then data=(--dataset "$DATASET" --root "$ROOT"); fi
t=$(date +%s)
(cd /tmp && timeout "${SECONDS_LIMIT:-360}" $PY -m mud_iknn.experiments --full-network --seeds ${SEEDS:-0 1 2 3} \
  --steps "${STEPS:-600}" --device cuda "${data[@]}" \
  --set backbone=densenet121 --set batch_size=16 --set lr=0.0005 --set frozen_batchnorm=false \
  --set num_workers=8 --set checkpoint_every=0 --set progress=false \
  --out "$OUT/experiments.md") > "$OUT/experiments.log" 2>&1
status experiments "exit $? ($(( $(date +%s) - t )) s)"
cat "$OUT/experiments.md" 2>/dev/null || tail -30 "$OUT/experiments.log"
