// Candidate peaks for mud_iknn.localize on the CPU: one pass over the maps in place of a threshold,
// a nonzero over every pixel and gathers of the candidates' neighbours. The CUDA path stays in torch
// (its elementwise ops are fast there), so this op has no CUDA twin.
#pragma once

#include <cstdint>

namespace mud_iknn {

// The pixels of maps (batch, height, width) float32 above `threshold` that are >= each of their 4
// neighbours inside the map, as flat indices b * height * width + i * width + j in ascending order.
struct PeakArgs {
  const float* maps = nullptr;
  int64_t batch = 0, height = 0, width = 0;
  float threshold = 0.0f;
  int64_t* out = nullptr;  // (capacity) int64
  int64_t capacity = 0;
};

// Finds the candidates in one pass over the maps and returns how many there are; writes them into
// out when they fit in its capacity (else nothing: call again with out of the returned size).
int64_t peak_candidates(const PeakArgs& a, int threads);

}  // namespace mud_iknn
