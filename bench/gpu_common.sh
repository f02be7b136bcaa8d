# Sourced by the GPU machine scripts (run from the repository root): the output folder $OUT
# (default ./out), the python to use ($PYTHON, default python3), `status NAME TEXT`, which
# appends a line to $OUT/summary.md and prints it, `install LOG [PIP ARGS...]`, which builds and
# installs the package in the current folder with CUDA, logging to $OUT/LOG (unless MUD_IKNN_INSTALLED=1), and `memcheck SECONDS`,
# compute-sanitizer's memcheck of bench/sanitize_case.py (every kernel, bad input) into
# $OUT/memcheck.log and a status line.
set -u
OUT=$(realpath -m "${OUT:-out}")
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
ROOT=$(pwd)
summary="$OUT/summary.md"
status() { echo "- $1: $2" | tee -a "$summary"; }
install() {  # skipped where MUD_IKNN_INSTALLED=1 (bench/gpu_features.sh installs once for all its steps)
  local log=$1
  shift
  [[ "${MUD_IKNN_INSTALLED:-}" == 1 ]] && return 0
  MUD_IKNN_CUDA=ON $PY -m pip install --no-build-isolation --no-deps "$@" . > "$OUT/$log" 2>&1
}
memcheck() {
  local san t
  san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  t=$(date +%s)
  (cd /tmp && timeout "$1" "$san" --tool memcheck --error-exitcode 9 $PY "$ROOT/bench/sanitize_case.py") \
    > "$OUT/memcheck.log" 2>&1
  status memcheck "exit $? ($(( $(date +%s) - t )) s): $(grep -E 'ERROR SUMMARY|all calls returned' "$OUT/memcheck.log" | tr '\n' ' ')"
}
