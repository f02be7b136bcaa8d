// Peaks for localize on the CPU (peaks.h): bands of rows in parallel, one pass over the maps.
#include "peaks.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "cpu_clones.h"
#include "parallel.h"

namespace mud_iknn {
namespace {

// Whether pixel (i, j) of `map` (value v) is a peak: >= its window inside the map and, when strict,
// above the window's smallest value.
inline bool is_peak(const PeakArgs& a, const float* map, int64_t i, int64_t j, float v) {
  const int64_t r = a.radius, w = a.width;
  const int64_t i0 = std::max<int64_t>(i - r, 0), i1 = std::min<int64_t>(i + r, a.height - 1);
  const int64_t j0 = std::max<int64_t>(j - r, 0), j1 = std::min<int64_t>(j + r, w - 1);
  bool lower = false;
  for (int64_t ii = i0; ii <= i1; ++ii)
    for (int64_t jj = j0; jj <= j1; ++jj) {
      const float u = map[ii * w + jj];
      if (u > v) return false;
      lower |= u < v;
    }
  return lower || !a.strict;
}

// Whether peak (i, j) (value v) is the last of its plateau in raster order: no raster-later pixel of
// its window is a peak (one would have v too: each lies in the other's window).
inline bool last_of_plateau(const PeakArgs& a, const float* map, int64_t i, int64_t j, float v) {
  const int64_t r = a.radius, w = a.width;
  for (int64_t ii = i; ii <= std::min<int64_t>(i + r, a.height - 1); ++ii)
    for (int64_t jj = std::max<int64_t>(j - r, 0); jj <= std::min<int64_t>(j + r, w - 1); ++jj) {
      if (ii == i && jj <= j) continue;
      if (map[ii * w + jj] == v && is_peak(a, map, ii, jj, v)) return false;
    }
  return true;
}

inline int finite(float v) { return (v >= -3.40282347e38f) & (v <= 3.40282347e38f); }  // branch-free

constexpr int64_t kBlock = 16;

// flags[k]: pixel k of row[0, kBlock) is above t and >= its 4 neighbours (row[-1] and row[kBlock]
// exist); returns 1 where one is, | 2 where a value is NaN or infinite.
MUD_CPU_CLONES int block_flags(const float* row, const float* up, const float* down, float t, int* flags) {
  int any = 0, bad = 0;
#pragma omp simd reduction(| : any, bad)
  for (int64_t k = 0; k < kBlock; ++k) {
    const float v = row[k];
    bad |= finite(v) ^ 1;
    flags[k] = (v > t) & (row[k - 1] <= v) & (row[k + 1] <= v) & (up[k] <= v) & (down[k] <= v);
    any |= flags[k];
  }
  return any | (bad << 1);
}

// Calls emit(j) for each peak column j of map row i of image b, in ascending order; returns false
// where the row holds a NaN or an infinity (each row checks its own pixels; a NaN neighbour fails
// every comparison meanwhile).
template <class Emit>
inline bool row_peaks(const PeakArgs& a, int64_t b, int64_t i, Emit emit) {
  const int64_t w = a.width;
  const float* map = a.maps + b * a.height * w;
  const float* row = map + i * w;
  const float* up = i > 0 ? row - w : row;  // a missing row compares equal
  const float* down = i + 1 < a.height ? row + w : row;
  const float t = a.threshold;
  // above the threshold and >= the 4 neighbours: most pixels fail there, the rest take the window
  const auto candidate = [&](int64_t j) {
    const float v = row[j];
    return v > t && (j == 0 || row[j - 1] <= v) && (j + 1 == w || row[j + 1] <= v) && up[j] <= v && down[j] <= v;
  };
  const auto take = [&](int64_t j) {
    if (is_peak(a, map, i, j, row[j]) && last_of_plateau(a, map, i, j, row[j])) emit(j);
  };
  const auto scalar = [&](int64_t j) {
    if (!finite(row[j])) return false;
    if (candidate(j)) take(j);
    return true;
  };
  if (!scalar(0)) return false;
  // the inner columns 16 at a time, branch-free, flags first (their neighbours are inside the row)
  int64_t j0 = 1;
  for (; j0 + kBlock < w; j0 += kBlock) {
    int flags[kBlock];
    const int found = block_flags(row + j0, up + j0, down + j0, t, flags);
    if (found & 2) return false;
    if (!found) continue;
    for (int64_t k = 0; k < kBlock; ++k)
      if (flags[k]) take(j0 + k);
  }
  for (int64_t j = std::max<int64_t>(j0, 1); j < w; ++j)
    if (!scalar(j)) return false;
  return true;
}

}  // namespace

int64_t find_peaks(const PeakArgs& a, int threads) {
  // Bands of rows found in parallel into their own lists (peaks are few), then joined in order.
  const int64_t rows = a.batch * a.height, bands = std::min<int64_t>(rows, 256);
  std::vector<std::vector<int64_t>> found(bands);
  std::atomic<bool> all_finite{true};  // cleared by the first row with a NaN or infinity: the others stop
  parallel_for(bands, threads, [&](int64_t band) {
    for (int64_t r = rows * band / bands; r < rows * (band + 1) / bands && all_finite.load(std::memory_order_relaxed);
         ++r) {
      const int64_t base = r * a.width;
      if (!row_peaks(a, r / a.height, r % a.height, [&](int64_t j) { found[band].push_back(base + j); }))
        all_finite.store(false, std::memory_order_relaxed);
    }
  });
  if (!all_finite.load()) return -1;
  int64_t total = 0;
  for (const auto& list : found) total += int64_t(list.size());
  if (total <= a.capacity) {
    int64_t* out = a.out;
    for (const auto& list : found) out = std::copy(list.begin(), list.end(), out);
  }
  return total;
}

}  // namespace mud_iknn
