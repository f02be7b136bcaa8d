#!/usr/bin/env bash
# The GPU checks of the label kinds, point losses, k = 1 against CuPy's EDT, localization,
# deployment and the experiments, after one install, each step under its own time limit, in the
# order given (default: the first five, about 9 minutes; `experiments` takes 6 more on its own,
# `model_step`, the network's channels-last layout and block upsampling against NCHW, 1-2):
#   OUT=out bash bench/gpu_features.sh [label_kinds point_losses edt localize deploy experiments model_step]
# Run bench/gpu_check.sh (the label engine's tests, memcheck and benchmarks) in its own call.
source "$(dirname "$0")/gpu_common.sh"
steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=(label_kinds point_losses edt localize deploy)
t=$(date +%s)
install install.log || { status install "FAILED, see install.log"; tail -40 "$OUT/install.log"; exit 1; }
status install "ok ($(( $(date +%s) - t )) s)"
export MUD_IKNN_INSTALLED=1 OUT
step() {  # NAME SECONDS COMMAND...
  local name=$1 limit=$2 start
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/step_$name.log" 2>&1
  status "step $name" "exit $? ($(( $(date +%s) - start )) s, log step_$name.log)"
}
for name in "${steps[@]}"; do
  case $name in
    label_kinds) step label_kinds 150 bash bench/gpu_label_kinds.sh ;;
    point_losses) step point_losses 120 bash -c "cd /tmp && $PY '$ROOT/bench/gpu_point_losses.py' --json '$OUT/point_losses.json' \
                    && cd '$ROOT/tests' && $PY -m pytest -q -p no:cacheprovider test_point_losses.py -k cuda" ;;
    edt) step edt 120 bash bench/gpu_edt.sh ;;
    localize) step localize 90 bash bench/gpu_localize.sh ;;
    deploy) step deploy 120 bash bench/gpu_deploy.sh ;;
    experiments) step experiments 380 bash bench/gpu_experiments.sh ;;
    model_step) step model_step 120 bash -c "cd /tmp && $PY '$ROOT/bench/bench_model_step.py' --model densenet201 \
                  --batch 16 --size 224 --device cuda --rounds 4 --steps 5 > '$OUT/model_step.md'" ;;
    *) status "step $name" "unknown (label_kinds, point_losses, edt, localize, deploy, experiments, model_step)" ;;
  esac
done
cat "$summary"
