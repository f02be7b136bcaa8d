// Peaks of maps for mud_iknn.localize on the CPU: the whole non-maximum suppression in one pass over
// the maps, in place of a threshold, a nonzero over every pixel and gathers of the candidates'
// windows. The CUDA path stays in torch (its elementwise ops are fast there), so this op has no
// CUDA twin.
#pragma once

#include <cstdint>

namespace mud_iknn {

// The peaks of maps (batch, height, width) float32, as flat indices b * height * width + i * width + j
// in ascending order: the pixels above `threshold` that are >= every pixel of their
// (2 radius + 1)^2 window inside the map and, when `strict`, above the smallest of them, one pixel
// per plateau (of equal peaks within a window, the last in raster order).
struct PeakArgs {
  const float* maps = nullptr;
  int64_t batch = 0, height = 0, width = 0;
  float threshold = 0.0f;
  int radius = 1;  // >= 1
  bool strict = false;
  int64_t* out = nullptr;  // (capacity) int64
  int64_t capacity = 0;
};

// Finds the peaks in one pass over the maps and returns how many there are, or -1 where a map value is
// NaN or infinite; writes them into out when they fit in its capacity (else nothing: call again with
// out of the returned size).
int64_t find_peaks(const PeakArgs& a, int threads);

}  // namespace mud_iknn
