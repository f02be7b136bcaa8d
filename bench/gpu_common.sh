# Sourced by the GPU machine scripts (run from the repository root): the output folder $OUT
# (default ./out), the python to use ($PYTHON, default python3), and `status NAME TEXT`, which
# appends a line to $OUT/summary.md and prints it.
set -u
OUT=$(realpath -m "${OUT:-out}")
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
ROOT=$(pwd)
summary="$OUT/summary.md"
status() { echo "- $1: $2" | tee -a "$summary"; }
