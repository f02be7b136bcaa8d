#!/usr/bin/env bash
# GPU machine, after bench/gpu_check.sh installed the package: Nsight Compute on one launch of the
# kNN tile kernel for a benchmark case, the sections that tell latency from arithmetic.
#   OUT=out bash bench/profile_knn.sh [CASE] [K]      (default crop512_n300_b32 3)
# Written for the next GPU session; not yet run.
source "$(dirname "$0")/gpu_common.sh"
CASE=${1:-crop512_n300_b32}
K=${2:-3}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
(cd /tmp && timeout 300 "$NCU" --kernel-name regex:knn_tile_kernel --launch-skip 2 --launch-count 1 \
  --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
  $PY -c "
import torch, mud_iknn
from mud_iknn.benchmark import CASES
p, o = CASES['$CASE'].packed('cuda')
for _ in range(3):
    mud_iknn.knn_distance_maps(p, CASES['$CASE'].size, $K, offsets=o, validate=False)
torch.cuda.synchronize()
") > "$OUT/ncu_${CASE}_k${K}.txt" 2>&1
echo "ncu exit $?: $OUT/ncu_${CASE}_k${K}.txt"
grep -E "Duration|Achieved Occupancy|Registers Per|Stall|Issue Slot|Compute \(SM\) Throughput|Memory Throughput" \
  "$OUT/ncu_${CASE}_k${K}.txt" | head -30
