#!/usr/bin/env bash
# GPU machine: which revisions pass the CUDA label tests, for bisecting a CUDA test that fails on
# main. Each argument is a git archive of one revision (e.g. main with one suspect commit reverted);
# each is built into its own folder and its label tests (CUDA and CPU) run against that build.
# Prepare the archives where git is, for example:
#   git worktree add /tmp/w HEAD && git -C /tmp/w revert --no-edit COMMIT
#   git -C /tmp/w archive -o "$PWD/bench/revisions/revert_COMMIT.tar" HEAD && git worktree remove --force /tmp/w
#   OUT=out bash bench/gpu_revisions.sh bench/revisions/*.tar        # carry bench/revisions
# Writes summary.md (one line per revision) and its logs under $OUT; about a minute a revision.
if [ $# -eq 0 ]; then
  echo "gpu_revisions.sh: give one or more git archives (git archive -o NAME.tar REV)" >&2
  exit 2
fi
archives=()
for archive in "$@"; do
  [ -f "$archive" ] || { echo "gpu_revisions.sh: no such archive: $archive" >&2; exit 2; }
  archives+=("$(realpath "$archive")")
done
source "$(dirname "$0")/gpu_common.sh"
echo "# CUDA label tests per revision, $(date -u +%Y-%m-%d): $(nvidia-smi --query-gpu=name --format=csv,noheader 2>&1)" \
  > "$summary"
for archive in "${archives[@]}"; do
  name=$(basename "$archive" .tar)
  tree=/tmp/revision_$name
  rm -rf "$tree" "$tree.pkg"
  mkdir -p "$tree" && tar -C "$tree" -xf "$archive"
  t=$(date +%s)
  (cd "$tree" && install "build_$name.log" --target "$tree.pkg") \
    || { status "$name" "build FAILED ($(( $(date +%s) - t )) s), see build_$name.log"; continue; }
  # the revision's own tests, importing its build (the tests folder does not shadow the package)
  (cd "$tree/tests" && PYTHONPATH="$tree.pkg" timeout 150 $PY -m pytest -q -p no:cacheprovider -x \
    -k "not emulated" test_labels_cuda.py test_labels.py > "$OUT/tests_$name.log" 2>&1)
  status "$name" "tests exit $? ($(( $(date +%s) - t )) s with the build): $(tail -1 "$OUT/tests_$name.log")"
done
cat "$summary"
