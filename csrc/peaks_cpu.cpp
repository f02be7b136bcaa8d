// Candidate peaks for localize on the CPU (peaks.h): bands of rows in parallel, one pass over the maps.
#include "peaks.h"

#include <algorithm>
#include <vector>

#include "parallel.h"

namespace mud_iknn {
namespace {

// Calls emit(j) for each candidate column j of map row i of image b, in ascending order.
template <class Emit>
inline void row_candidates(const PeakArgs& a, int64_t b, int64_t i, Emit emit) {
  const int64_t w = a.width;
  const float* row = a.maps + (b * a.height + i) * w;
  const float* up = i > 0 ? row - w : nullptr;
  const float* down = i + 1 < a.height ? row + w : nullptr;
  constexpr int64_t kBlock = 16;  // most pixels are below the threshold: whole blocks are skipped at once
  for (int64_t j0 = 0; j0 < w; j0 += kBlock) {
    const int64_t j1 = std::min(j0 + kBlock, w);
    int above = 0;
#pragma omp simd reduction(| : above)
    for (int64_t j = j0; j < j1; ++j) above |= row[j] > a.threshold;
    if (!above) continue;
    for (int64_t j = j0; j < j1; ++j) {
      const float v = row[j];
      if (!(v > a.threshold)) continue;
      if ((j > 0 && row[j - 1] > v) || (j + 1 < w && row[j + 1] > v)) continue;
      if ((up && up[j] > v) || (down && down[j] > v)) continue;
      emit(j);
    }
  }
}

}  // namespace

int64_t peak_candidates(const PeakArgs& a, int threads) {
  // Bands of rows found in parallel into their own lists (candidates are few), then joined in order.
  const int64_t rows = a.batch * a.height, bands = std::min<int64_t>(rows, 256);
  std::vector<std::vector<int64_t>> found(bands);
  parallel_for(bands, threads, [&](int64_t band) {
    for (int64_t r = rows * band / bands; r < rows * (band + 1) / bands; ++r) {
      const int64_t base = r * a.width;
      row_candidates(a, r / a.height, r % a.height, [&](int64_t j) { found[band].push_back(base + j); });
    }
  });
  int64_t total = 0;
  for (const auto& list : found) total += int64_t(list.size());
  if (total <= a.capacity) {
    int64_t* out = a.out;
    for (const auto& list : found) out = std::copy(list.begin(), list.end(), out);
  }
  return total;
}

}  // namespace mud_iknn
