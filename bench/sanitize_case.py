"""Small CUDA calls for compute-sanitizer: every kernel, edge cases, and unvalidated bad offsets.

Run: compute-sanitizer --tool memcheck --error-exitcode 9 python bench/sanitize_case.py
"""
import sys

import torch

import mud_iknn

if not torch.cuda.is_available():
    sys.exit("sanitize_case.py: needs a CUDA GPU (run it under compute-sanitizer on the GPU machine)")
dev = torch.device("cuda")
g = torch.Generator().manual_seed(0)
pts = (torch.rand(300, 2, generator=g) * torch.tensor([90.0, 70.0]) - 10).to(dev)
offsets = torch.tensor([0, 0, 1, 120, 300], device=dev)
for k in (1, 3, 8, 20, mud_iknn.MAX_K):
    mud_iknn.iknn_maps(pts, (61, 83), k, offsets=offsets)
    mud_iknn.knn_distance_maps(pts, (61, 83), k, offsets=offsets, max_distance=6.0)
mud_iknn.density_maps(pts, (61, 83), offsets=offsets)
mud_iknn.density_maps(pts, (61, 83), 2.5, offsets=offsets)
wide = pts * torch.tensor([30.0, 0.1], device=dev)  # several density tiles (1024 columns) across, a partial last one
mud_iknn.density_maps(wide, (9, 2500), offsets=offsets)
mud_iknn.iknn_maps(torch.zeros(0, 2, device=dev), (5, 7), 3)
mud_iknn.iknn_maps(pts[:4], (1, 1), 3)
far = torch.tensor([[1e6, -1e6], [5.0, 5.0]], device=dev)
mud_iknn.iknn_maps(far, (16, 16), 2)
mud_iknn.density_maps(far, (16, 16))
# Unvalidated garbage must stay inside its buffers (the maps are then undefined).
bad = torch.tensor([0, 250, 100, 500, 300], device=dev)
mud_iknn.iknn_maps(pts, (33, 40), 3, offsets=bad, validate=False)
mud_iknn.density_maps(pts, (33, 40), offsets=bad, validate=False)
mud_iknn.density_maps(wide, (9, 2500), 40.0, offsets=bad, validate=False)
nan = pts.clone()
nan[::7] = float("nan")
nan[1::7] = 1e30  # beyond the +-1e18 that validation allows
mud_iknn.iknn_maps(nan, (33, 40), 3, offsets=offsets, validate=False)
mud_iknn.density_maps(nan, (33, 40), 2.0, offsets=offsets, validate=False)
# FIDT (the kNN kernels' transform step) and count maps, including garbage
mud_iknn.fidt_maps(pts, (61, 83), offsets=offsets, zero_below=0.01)
mud_iknn.fidt_maps(nan, (33, 40), offsets=bad, validate=False)
for stride in (1, 3, 8, 100):
    mud_iknn.count_maps(pts, (61, 83), stride, offsets=offsets)
    mud_iknn.count_maps(nan, (33, 40), stride, offsets=bad, validate=False)
mud_iknn.count_maps(torch.zeros(0, 2, device=dev), (5, 7), 2)
torch.cuda.synchronize()
print("sanitize_case: all calls returned")
