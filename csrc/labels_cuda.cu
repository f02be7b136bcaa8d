// CUDA label engine. Per call, on the caller's stream, with no host synchronisation:
//   1. bucket the points of every image into its uniform grid (count, exclusive scan, scatter):
//      one launch with a block per image for small grids (crops), else count / CUB scan / scatter;
//   2. kNN maps: one block per tile of pixels, each thread holding a few pixels of one column
//      (TileShape); pass by pass (the tile's cells plus one ring, then
//      a doubling radius) the block stages the candidate heads of the new cells in shared memory,
//      sorted into distance buckets around the tile centre so that each thread stops reading them
//      once the rest cannot beat its pixels' k smallest squared distances (kept in registers); the block
//      stops once every pixel's k-th distance is within the exact bound to the unvisited cells (or
//      the whole grid is visited, or the bound passes max_distance);
//   3. adaptive sigmas: one thread per head, the same ring search over the grid;
//   4. density maps: each head's stamp and normalisation, then a block per tile of rows x columns
//      whose threads add, in registers, the Gaussians that reach their pixels in packed order
//      (deterministic, no atomics);
//   5. count maps: a thread per head adds one to its cell (sums of ones: deterministic).
#ifndef MUD_IKNN_CUDA_EMULATION  // (tests/cuda_emulation runs this file's kernels on the CPU)
#include <cub/device/device_scan.cuh>
#endif
#include <stdexcept>
#include <string>

#include "cuda_launch.h"
#include "labels.h"

namespace mud_iknn {
namespace {

constexpr int kTileW = 32;      // tile width in pixels (one warp per row of threads)

// The hardware's limit on gridDim.y and gridDim.z; a macro so that the emulator's tests can lower it
// (the emulator enforces the same value).
#ifndef MUD_IKNN_CUDA_MAX_GRID_Y
#define MUD_IKNN_CUDA_MAX_GRID_Y 65535
#endif

// The most cells the grids of one call hold together: the kernels index them, and scan their counts,
// in int32 (batch * cells + 1 must fit). A macro so that the emulator's tests can lower it.
#ifndef MUD_IKNN_CUDA_MAX_GRID_CELLS
#define MUD_IKNN_CUDA_MAX_GRID_CELLS 2147483646
#endif

// The grid of every image in one workspace; each array 256-byte aligned.
struct GridBuffers {
  int* counts;    // B * G + 1 points per cell (the last entry stays 0)
  int* starts;    // B * G + 1 exclusive prefix sum of counts: cell c holds sorted[starts[c], starts[c + 1])
  int* cell;      // P global cell of each point an image owns
  int* rank;      // P position of each point within its cell
  float2* sorted; // P points ordered by (image, cell)
  void* scan_tmp;
  size_t scan_bytes;
  size_t total;
};

size_t align256(size_t n) { return (n + 255) & ~size_t(255); }

GridBuffers layout(char* base, int64_t cells, int64_t count) {
  GridBuffers w{};
  check(cub::DeviceScan::ExclusiveSum(nullptr, w.scan_bytes, static_cast<int*>(nullptr),
                                      static_cast<int*>(nullptr), int(cells + 1)),
        "cub scan size");
  size_t at = 0;
  auto take = [&](size_t bytes) {
    char* p = base ? base + at : nullptr;
    at += align256(bytes);
    return p;
  };
  w.counts = reinterpret_cast<int*>(take(sizeof(int) * (cells + 1)));
  w.starts = reinterpret_cast<int*>(take(sizeof(int) * (cells + 1)));
  w.cell = reinterpret_cast<int*>(take(sizeof(int) * count));
  w.rank = reinterpret_cast<int*>(take(sizeof(int) * count));
  w.sorted = reinterpret_cast<float2*>(take(sizeof(float2) * count));
  w.scan_tmp = take(w.scan_bytes);
  w.total = at;
  return w;
}

// sqrt(v) for v >= 0 (+inf included) within 3 ulp: one reciprocal square root on the special
// function unit and a multiply, instead of the correctly rounded sqrtf's refinement and slow path.
__device__ __forceinline__ float fast_sqrt(float v) { return v > 0.0f && v < INFINITY ? v * rsqrtf(v) : v; }

// The k smallest squared distances seen so far, for a runtime k <= KMAX, in registers: kept
// ascending in d[KMAX - k, KMAX) with -inf below, so the k-th smallest is always d[KMAX - 1] and
// every index is a compile-time constant (a runtime index would push the list to local memory).
template <int KMAX>
struct TopK {
  float d[KMAX];
  __device__ __forceinline__ void reset(int k) {
    MUD_UNROLL
    for (int i = 0; i < KMAX; ++i) d[i] = i < KMAX - k ? -INFINITY : INFINITY;
  }
  __device__ __forceinline__ float kth() const { return d[KMAX - 1]; }
  // Inserts v, dropping the largest: d'[i] = max(d[i-1], min(d[i], v)), top down, branch-free.
  __device__ __forceinline__ void push(float v) {
    MUD_UNROLL
    for (int i = KMAX - 1; i > 0; --i) d[i] = fmaxf(d[i - 1], fminf(d[i], v));
    d[0] = fminf(d[0], v);
  }
  // Sum of the square roots of the m values after the `skip` smallest, each clipped at `clip`, in
  // ascending order: with kFast the special function unit's roots (3 ulp), else correctly rounded.
  template <bool kFast>
  __device__ __forceinline__ float sum_distances(int k, int skip, int m, float clip) const {
    const int lo = KMAX - k + skip;
    float s = 0.0f;
    MUD_UNROLL
    for (int i = 0; i < KMAX; ++i)
      if (i >= lo && i < lo + m) s += fminf(kFast ? fast_sqrt(d[i]) : sqrtf(d[i]), clip);
    return s;
  }
};

__device__ __forceinline__ int clamp_index(int v, int count) { return v < 0 ? 0 : (v > count ? count : v); }

// Inclusive prefix sum of v over the 32 lanes of a full warp (lane = this thread's lane).
__device__ __forceinline__ int warp_inclusive_sum(int v, int lane) {
  MUD_UNROLL
  for (int off = 1; off < 32; off <<= 1) {
    const int u = __shfl_up_sync(0xffffffffu, v, off);
    if (lane >= off) v += u;
  }
  return v;
}

__global__ void bucket_count(const float2* __restrict__ points, const int64_t* __restrict__ offsets, int count,
                             GridSpec g, int* __restrict__ counts, int* __restrict__ cell, int* __restrict__ rank) {
  const int64_t b = blockIdx.y;
  int64_t s, e;
  image_range(offsets, b, count, &s, &e);
  for (int64_t i = s + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < e; i += int64_t(gridDim.x) * blockDim.x) {
    const float2 p = points[i];
    const int c = int(b * g.cells()) + cell_of(p.y, g.cell, g.gy) * g.gx + cell_of(p.x, g.cell, g.gx);
    cell[i] = c;
    rank[i] = atomicAdd(&counts[c], 1);
  }
}

// Same launch shape as bucket_count, so it visits exactly the points that bucket_count bucketed.
__global__ void bucket_scatter(const float2* __restrict__ points, const int64_t* __restrict__ offsets, int count,
                               const int* __restrict__ cell, const int* __restrict__ rank,
                               const int* __restrict__ starts, float2* __restrict__ sorted) {
  int64_t s, e;
  image_range(offsets, blockIdx.y, count, &s, &e);
  for (int64_t i = s + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < e; i += int64_t(gridDim.x) * blockDim.x) {
    const int at = starts[cell[i]] + rank[i];
    if (at >= 0 && at < count) sorted[at] = points[i];  // always true for valid offsets
  }
}

// Grids whose cells per image fit in one block's shared memory are built in one launch, a block
// per image: count the image's points into shared counters, scan them, and scatter the points with
// the scanned counters as cursors. Cell c of image b starts at (the image's first point) + (its
// prefix within the image): the global exclusive scan whenever the offsets are valid.
constexpr int kSmallGridCells = 8192;   // 32 KB of counters
constexpr int kSmallGridThreads = 512;
// Mean points per image up to which one block per image keeps up (the offsets live on the device,
// so the mean is what the host knows: a batch whose points crowd into one image takes this path
// too, correct but with that image's points on one block).
constexpr int kSmallGridPoints = 2048;

__global__ void __launch_bounds__(kSmallGridThreads)
    build_small_grids(const float2* __restrict__ points, const int64_t* __restrict__ offsets, int64_t batch,
                      int count, GridSpec g, int* __restrict__ starts, float2* __restrict__ sorted) {
  __shared__ int counter[kSmallGridCells];
  __shared__ int warp_prefix[kSmallGridThreads / 32];
  __shared__ int carry;  // points in the cells scanned so far
  const int64_t b = blockIdx.x;
  const int cells = int(g.cells()), tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int64_t s, e;
  image_range(offsets, b, count, &s, &e);
  for (int c = tid; c < cells; c += kSmallGridThreads) counter[c] = 0;
  if (tid == 0) carry = 0;
  __syncthreads();
  for (int64_t i = s + tid; i < e; i += kSmallGridThreads) {
    const float2 p = points[i];
    atomicAdd(&counter[cell_of(p.y, g.cell, g.gy) * g.gx + cell_of(p.x, g.cell, g.gx)], 1);
  }
  int* image_starts = starts + b * cells;
  for (int c0 = 0; c0 < cells; c0 += kSmallGridThreads) {  // exclusive scan, a block-wide chunk at a time
    __syncthreads();  // the counts (first chunk) or the previous chunk's carry are in place
    const int c = c0 + tid;
    const int v = c < cells ? counter[c] : 0;
    const int incl = warp_inclusive_sum(v, lane);
    if (lane == 31) warp_prefix[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      const int total = lane < kSmallGridThreads / 32 ? warp_prefix[lane] : 0;
      const int sum = warp_inclusive_sum(total, lane);
      if (lane < kSmallGridThreads / 32) warp_prefix[lane] = sum - total;
    }
    __syncthreads();
    const int excl = carry + warp_prefix[warp] + incl - v;
    if (c < cells) {
      counter[c] = excl;
      image_starts[c] = int(s) + excl;
    }
    __syncthreads();  // everyone has read carry
    if (tid == kSmallGridThreads - 1) carry = excl + v;
  }
  if (b == batch - 1 && tid == 0) starts[batch * cells] = int(e);
  __syncthreads();
  for (int64_t i = s + tid; i < e; i += kSmallGridThreads) {
    const float2 p = points[i];
    const int at = int(s) + atomicAdd(&counter[cell_of(p.y, g.cell, g.gy) * g.gx + cell_of(p.x, g.cell, g.gx)], 1);
    if (at < count) sorted[at] = p;  // always true for valid offsets
  }
}

void build_grid(const float* points, const int64_t* offsets, int64_t batch, int64_t count, const GridSpec& g,
                const GridBuffers& w, cudaStream_t stream) {
  const auto* pts = reinterpret_cast<const float2*>(points);
  if (g.cells() <= kSmallGridCells && count <= kSmallGridPoints * batch) {
    launch(build_small_grids, unsigned(batch), kSmallGridThreads, stream, "build_small_grids launch", pts, offsets,
           batch, int(count), g, w.starts, w.sorted);
    return;
  }
  const int64_t cells = batch * g.cells();
  check(cudaMemsetAsync(w.counts, 0, sizeof(int) * (cells + 1), stream), "memset counts");
  const int per_image = int(std::min<int64_t>((count / std::max<int64_t>(batch, 1) + 255) / 256 + 1, 1024));
  launch(bucket_count, dim3(per_image, unsigned(batch)), 256, stream, "bucket_count launch", pts, offsets,
         int(count), g, w.counts, w.cell, w.rank);
  size_t scan_bytes = w.scan_bytes;
  check(cub::DeviceScan::ExclusiveSum(w.scan_tmp, scan_bytes, w.counts, w.starts, int(cells + 1), stream),
        "cub scan");
  launch(bucket_scatter, dim3(per_image, unsigned(batch)), 256, stream, "bucket_scatter launch", pts, offsets,
         int(count), w.cell, w.rank, w.starts, w.sorted);
}

// Number of points of image b in the grid (its cells' total).
__device__ __forceinline__ int grid_count(const int* starts, int64_t b, int64_t cells, int count) {
  return clamp_index(starts[(b + 1) * cells], count) - clamp_index(starts[b * cells], count);
}

// Candidates each thread of a tile kernel block stages per chunk, and the distance buckets a chunk
// is sorted into (the bucket scan gives each of the 32 lanes of a warp two).
constexpr int kStagePerThread = 4;
constexpr int kBuckets = 64;
static_assert(kBuckets == 64, "the bucket scan gives each lane of one warp exactly two buckets");

// Rows of threads in a tile kernel block. The kernel is latency-bound (each pass is a chain of
// dependent loads and barriers), so fewer threads per block, each with more pixels, lets more
// blocks overlap on an SM.
#ifndef MUD_IKNN_CUDA_THREAD_ROWS
#define MUD_IKNN_CUDA_THREAD_ROWS 4
#endif
// Blocks of that shape per SM the register budget is set for: on the H200, 6 x 128 threads (80
// registers) measured faster than 5 and 4, a few spilled values outside the inner loop notwithstanding.
#ifndef MUD_IKNN_CUDA_MIN_BLOCKS
#define MUD_IKNN_CUDA_MIN_BLOCKS 6
#endif

// The tile of one block of the kNN kernel for a list size KMAX: kTileW x height pixels, 32 x
// thread_rows threads, each holding `rows` pixels of one column (rows thread_rows apart) whose
// lists all stay in registers.
template <int KMAX>
struct TileShape {
  static constexpr int height = KMAX <= 4 ? 32 : (KMAX <= 8 ? 16 : 8);
  static constexpr int thread_rows = KMAX >= 32 ? 8 : MUD_IKNN_CUDA_THREAD_ROWS;
  static constexpr int rows = height / thread_rows;
  static constexpr int threads = kTileW * thread_rows;
  static constexpr int min_blocks = KMAX > 32 ? 2 : (thread_rows == MUD_IKNN_CUDA_THREAD_ROWS ? MUD_IKNN_CUDA_MIN_BLOCKS : 3);
  static_assert(rows * thread_rows == height, "thread rows must divide the tile height");
  static_assert(threads >= kBuckets, "a block zeroes its distance buckets with one thread each");
};

template <int KMAX, class Shape = TileShape<KMAX>>
__global__ void __launch_bounds__(Shape::threads, Shape::min_blocks)
    knn_tile_kernel(const float2* __restrict__ sorted, const int* __restrict__ starts, int count, int height,
                    int width, int first_tile_row, GridSpec g, int k, float clip, MapTransform transform,
                    float* __restrict__ out) {
  constexpr int kRows = Shape::rows, kTileH = Shape::height, kBlockThreads = Shape::threads;
  constexpr int kStep = Shape::thread_rows;  // between the rows of one thread
  constexpr int kStage = kStagePerThread * kBlockThreads;
  static_assert(kStage <= 1 << 16, "a candidate's rank in its bucket is packed into 16 bits");
  __shared__ float2 staging[kStage];  // a chunk's candidates as gathered, and
  __shared__ int slot[kStage];        // each one's bucket << 16 | rank within the bucket
  __shared__ float4 cand[kStage];     // and in bucket order: x, y, a lower bound of the distance to the tile centre, unused
  __shared__ int bucket_count[kBuckets];
  __shared__ int bucket_start[kBuckets];
  __shared__ int span_begin[2][32];  // up to 32 rows of a pass's cells at a time: runs of sorted points
  __shared__ int span_len0[32];
  __shared__ int span_prefix[32];
  __shared__ int span_total;

  const int64_t b = blockIdx.z;
  const int tid = threadIdx.x;
  const int x0 = blockIdx.x * kTileW, y0 = (first_tile_row + int(blockIdx.y)) * kTileH;
  const int px = x0 + tid % kTileW;  // this thread's pixels: (px, py0 + kStep j), j < kRows
  const int py0 = y0 + tid / kTileW;
  const int64_t cells = g.cells();
  const int* row_start = starts + b * cells;
  const int n = grid_count(starts, b, cells, count);  // first used after the first pass's loads
  const int cx0 = cell_of(float(x0), g.cell, g.gx), cx1 = cell_of(float(min(x0 + kTileW, width) - 1), g.cell, g.gx);
  const int cy0 = cell_of(float(y0), g.cell, g.gy), cy1 = cell_of(float(min(y0 + kTileH, height) - 1), g.cell, g.gy);
  const float fx = float(px);
  // Candidates are sorted by distance to the tile centre (tcx, tcy); none of them is nearer to this
  // thread's pixels than that distance minus `reach` (padded against rounding), so a thread stops
  // reading a sorted chunk once the rest is provably beyond its k-th distance.
  const float tcx = float(x0) + 0.5f * float(kTileW - 1), tcy = float(y0) + 0.5f * float(kTileH - 1);
  const float rdx = fx - tcx;
  const float rdy = fmaxf(fabsf(float(py0) - tcy), fabsf(float(py0 + kStep * (kRows - 1)) - tcy));
  const float reach = sqrtf(rdx * rdx + rdy * rdy) * 1.00001f + 1e-3f;
  if (tid < kBuckets) bucket_count[tid] = 0;  // visible after the first pass's span barrier

  TopK<KMAX> best[kRows];
  MUD_UNROLL
  for (int j = 0; j < kRows; ++j) best[j].reset(k);
  float worst = INFINITY;  // the largest k-th distance among this thread's pixels
  int seen = 0;
  CellBlock before{0, -1, 0, -1};
  // Each pass costs the block a chain of dependent loads and barriers, so the first takes the
  // tile's cells and one ring around them, and the radius doubles after that: a tile far from
  // every head reaches them in a few passes.
  for (int ring = 1;; ring *= 2) {
    const CellBlock now = grow(cx0, cx1, cy0, cy1, ring, g);
    if (ring > 1 && now.same(before)) break;  // block-uniform: the whole grid is visited
    // Distance buckets of this pass: kBuckets - 1 equal steps out to the farthest corner of the
    // block's cells (the outer grid cells counted one cell wide), the last bucket for the rest.
    const float ex = fmaxf(tcx - float((now.x0 - kMargin) * g.cell), float((now.x1 + 1 - kMargin) * g.cell) - tcx);
    const float ey = fmaxf(tcy - float((now.y0 - kMargin) * g.cell), float((now.y1 + 1 - kMargin) * g.cell) - tcy);
    const float step = sqrtf(ex * ex + ey * ey) / float(kBuckets - 1);
    const float inv_step = 1.0f / step;
    const int rows = now.y1 - now.y0 + 1;
    for (int r0 = 0; r0 < rows; r0 += 32) {
      if (tid < 32) {  // the first warp describes the ring's cells in 32 rows as runs of sorted points
        int begin0 = 0, len0 = 0, begin1 = 0, len1 = 0;
        if (r0 + tid < rows) {
          const int y = now.y0 + r0 + tid;
          const RowSpans spans = ring_spans(y, now, before, ring == 1);
          const int* rs = row_start + int64_t(y) * g.gx;
          if (spans.count >= 1) {
            begin0 = clamp_index(rs[spans.lo0], count);
            len0 = max(clamp_index(rs[spans.hi0 + 1], count) - begin0, 0);
          }
          if (spans.count == 2) {
            begin1 = clamp_index(rs[spans.lo1], count);
            len1 = max(clamp_index(rs[spans.hi1 + 1], count) - begin1, 0);
          }
        }
        const int incl = warp_inclusive_sum(len0 + len1, tid);
        span_begin[0][tid] = begin0;
        span_begin[1][tid] = begin1;
        span_len0[tid] = len0;
        span_prefix[tid] = incl - len0 - len1;
        if (tid == 31) span_total = incl;
      }
      __syncthreads();
      const int total = span_total;
      for (int c0 = 0; c0 < total; c0 += kStage) {
        // Gather up to kStage candidates (every load in flight at once), counting them into
        // distance buckets ...
        int idx[kStagePerThread];
        MUD_UNROLL
        for (int t = 0; t < kStagePerThread; ++t) {
          const int e = c0 + t * kBlockThreads + tid;
          idx[t] = -1;
          if (e < total) {
            int lo = 0, hi = 31;  // the last row whose run starts at or before e
            while (lo < hi) {
              const int mid = (lo + hi + 1) >> 1;
              if (span_prefix[mid] <= e) lo = mid; else hi = mid - 1;
            }
            const int local = e - span_prefix[lo];
            idx[t] = min(local < span_len0[lo] ? span_begin[0][lo] + local : span_begin[1][lo] + local - span_len0[lo],
                         count - 1);
          }
        }
        float2 h[kStagePerThread];
        MUD_UNROLL
        for (int t = 0; t < kStagePerThread; ++t)
          if (idx[t] >= 0) h[t] = sorted[idx[t]];
        MUD_UNROLL
        for (int t = 0; t < kStagePerThread; ++t) {
          if (idx[t] < 0) break;
          staging[t * kBlockThreads + tid] = h[t];
          const float dx = h[t].x - tcx, dy = h[t].y - tcy;
          const float scaled = fast_sqrt(fmaf(dx, dx, dy * dy)) * inv_step;  // 3 ulp << the 1e-5 padding below
          const int bucket = scaled < float(kBuckets - 1) ? int(scaled) : kBuckets - 1;  // NaN: the last
          slot[t * kBlockThreads + tid] = bucket << 16 | atomicAdd(&bucket_count[bucket], 1);
        }
        __syncthreads();
        if (tid < 32) {  // ... turn the counts into bucket starts (one warp, two buckets a lane) ...
          const int a = bucket_count[2 * tid], c = bucket_count[2 * tid + 1];
          const int incl = warp_inclusive_sum(a + c, tid);
          bucket_start[2 * tid] = incl - a - c;
          bucket_start[2 * tid + 1] = incl - c;
          bucket_count[2 * tid] = 0;  // ready for the next chunk
          bucket_count[2 * tid + 1] = 0;
        }
        __syncthreads();
        MUD_UNROLL
        for (int t = 0; t < kStagePerThread; ++t) {  // ... and store them in bucket order.
          if (idx[t] < 0) break;  // exactly the entries this thread staged above
          const int e = t * kBlockThreads + tid;
          const int bucket = slot[e] >> 16;
          const float2 h = staging[e];
          cand[bucket_start[bucket] + (slot[e] & 0xffff)] = make_float4(h.x, h.y, float(bucket) * step * 0.99999f, 0.0f);
        }
        __syncthreads();
        const int staged = min(kStage, total - c0);
        for (int i = 0; i < staged; ++i) {
          const float4 c = cand[i];
          const float gap = c.z - reach;  // no pixel of this thread is nearer to this or a later head
          if (gap > 0.0f && gap * gap >= worst) break;
          const float dx = c.x - fx, dx2 = dx * dx;
          if (dx2 >= worst) continue;  // too far sideways for every pixel of this thread
          float d2[kRows];
          bool nearer = false;
          MUD_UNROLL
          for (int j = 0; j < kRows; ++j) {
            const float dy = c.y - float(py0 + kStep * j);
            d2[j] = fmaf(dy, dy, dx2);
            nearer = nearer || d2[j] < best[j].kth();
          }
          if (!nearer) continue;  // the common case once the lists fill: no list update to issue
          MUD_UNROLL
          for (int j = 0; j < kRows; ++j)
            if (d2[j] < best[j].kth()) best[j].push(d2[j]);
          worst = best[0].kth();
          MUD_UNROLL
          for (int j = 1; j < kRows; ++j) worst = fmaxf(worst, best[j].kth());
        }
        // No barrier here: the next chunk writes `cand` only after its first two barriers, which no
        // thread passes before every thread has left this loop.
      }
      seen += total;
      // The first warp rewrites the span arrays next: after a chunk every thread is past its last
      // read of them (the chunk's barriers); without one, some may still have to read span_total.
      if (total == 0) __syncthreads();  // block-uniform
    }
    before = now;
    bool done = seen >= n;
    if (!done) {
      done = true;
      MUD_UNROLL
      for (int j = 0; j < kRows; ++j) {
        const float bound = outside_bound(fx, float(py0 + kStep * j), now, g);
        const bool outside_map = px >= width || py0 + kStep * j >= height;
        done = done && (outside_map || best[j].kth() <= bound * bound || bound >= clip);
      }
    }
    if (__syncthreads_and(done)) break;
  }
  const int m = min(k, n);
  float* map = out + b * int64_t(height) * width;
  MUD_UNROLL
  for (int j = 0; j < kRows; ++j)
    if (px < width && py0 + kStep * j < height)
      map[int64_t(py0 + kStep * j) * width + px] =
          apply_transform(m == 0 ? INFINITY : __fdividef(best[j].template sum_distances<true>(k, 0, m, clip), float(m)),
                          transform);
}

template <int KMAX>
__global__ void head_sigma_kernel(const float2* __restrict__ points, const int64_t* __restrict__ offsets,
                                  const float2* __restrict__ sorted, const int* __restrict__ starts, int count,
                                  GridSpec g, int k, float beta, float lone, float* __restrict__ out) {
  const int64_t b = blockIdx.y;
  const int64_t cells = g.cells();
  const int* row_start = starts + b * cells;
  const int n = grid_count(starts, b, cells, count);
  const int m = min(k, n - 1);  // other heads in the mean
  int64_t s, e;
  image_range(offsets, b, count, &s, &e);
  for (int64_t i = s + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < e; i += int64_t(gridDim.x) * blockDim.x) {
    if (m <= 0) {
      out[i] = lone;
      continue;
    }
    const float2 q = points[i];
    const int cx = cell_of(q.x, g.cell, g.gx), cy = cell_of(q.y, g.cell, g.gy);
    TopK<KMAX> best;
    best.reset(m + 1);
    int seen = 0;
    CellBlock before{0, -1, 0, -1};
    for (int ring = 0;; ++ring) {
      const CellBlock now = grow(cx, cx, cy, cy, ring, g);
      if (ring > 0 && now.same(before)) break;
      for (int y = now.y0; y <= now.y1; ++y) {
        const RowSpans spans = ring_spans(y, now, before, ring == 0);
        const int* rs = row_start + int64_t(y) * g.gx;
        MUD_UNROLL
        for (int sp = 0; sp < 2; ++sp) {
          if (sp >= spans.count) break;
          const int lo = clamp_index(rs[sp == 0 ? spans.lo0 : spans.lo1], count);
          const int hi = clamp_index(rs[(sp == 0 ? spans.hi0 : spans.hi1) + 1], count);
          for (int j = lo; j < hi; ++j) {
            const float2 h = sorted[j];
            const float dx = h.x - q.x, dy = h.y - q.y;
            const float d2 = __fadd_rn(__fmul_rn(dx, dx), __fmul_rn(dy, dy));  // no FMA: the CPU's rounding
            if (d2 < best.kth()) best.push(d2);
          }
          seen += max(hi - lo, 0);
        }
      }
      before = now;
      const float bound = outside_bound(q.x, q.y, now, g);
      if (seen >= n || best.kth() <= bound * bound) break;
    }
    // The smallest is the head itself. Rounded as the CPU's, bit for bit: a sigma 1 ulp low moves
    // the Gaussian's radius int(truncate * sigma + 0.5) down by one where that is a whole number.
    out[i] = beta * best.template sum_distances<false>(m + 1, 1, m, INFINITY) / float(m);
  }
}

// Density maps, deterministic: each head's record (DensityHead) first, then a block per tile of
// kDensityBand rows x kDensityTileW columns of one image. Each thread owns kDensityColumns columns of
// the tile (kDensityThreads apart) and adds to its pixels, in registers, the Gaussians of the heads
// that reach the tile one after another in packed order: every pixel sums its heads in the same
// order on every run, and no thread waits for another between heads.
constexpr int kDensityBand = 8;
constexpr int kDensityThreads = 256;
#ifndef MUD_IKNN_CUDA_DENSITY_COLUMNS
#define MUD_IKNN_CUDA_DENSITY_COLUMNS 4
#endif
constexpr int kDensityColumns = MUD_IKNN_CUDA_DENSITY_COLUMNS;
constexpr int kDensityTileW = kDensityThreads * kDensityColumns;
static_assert(((1 << 24) + kDensityTileW - 1) / kDensityTileW <= 65535,
              "the tiles across the widest map (2^24 px) must fit in gridDim.y");

// One head as the density tile kernel reads it, written by density_norm_kernel: the rows and columns
// its stamp covers (all 0 when it stamps nothing), its centre pixel and its shape. The tile kernel's
// scan reads only `rows` for most heads, and no head's stamp is worked out twice.
struct DensityHead {
  int2 rows;              // [ya, yb)
  int2 cols;              // [xa, xb)
  int cx, cy;             // centre pixel
  float scale, inv_norm;  // -1 / (2 sigma^2) (0 for a delta), 1 / normalisation
};
static_assert(sizeof(DensityHead) == 32, "a head record is two 16-byte words");

// Each head's record, a warp per head (the lanes share the normalisation's terms).
__global__ void density_norm_kernel(const float2* __restrict__ points, const float* __restrict__ sigmas, int count,
                                    int height, int width, float truncate, DensityHead* __restrict__ heads) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x >> 5);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x >> 5) + (threadIdx.x >> 5); i < count; i += warps) {
    const float2 p = points[i];
    const float sigma = sigmas[i];
    const Stamp st = stamp_of(p.x, p.y, sigma, truncate, height, width);  // the same on every lane
    double total = st.empty() ? 0.0 : gaussian_norm_share(st, sigma, lane, 32);
    for (int off = 16; off > 0; off >>= 1) total += __shfl_down_sync(0xffffffffu, total, off);
    if (lane == 0)
      heads[i] = st.empty() ? DensityHead{}
                            : DensityHead{make_int2(int(st.ya), int(st.yb)), make_int2(int(st.xa), int(st.xb)),
                                          int(st.cx), int(st.cy), float(st.scale), float(1.0 / total)};
  }
}

// A head that reaches a density tile: its columns [xa, xb) and centre column, and its normalised
// weights along the tile's rows (0 on rows its stamp misses).
struct TileStamp {
  int xa, xb, cx;
  float scale, inv_norm;
  float wy[kDensityBand];
};

__global__ void __launch_bounds__(kDensityThreads)
    density_tile_kernel(const DensityHead* __restrict__ heads, const int64_t* __restrict__ offsets, int count,
                        int height, int width, float* __restrict__ out) {
  __shared__ TileStamp stamps[kDensityThreads];  // a chunk's heads that reach the tile, in packed order
  __shared__ int reaching[kDensityThreads / 32];
  const int64_t b = blockIdx.z;
  const int y0 = blockIdx.x * kDensityBand, y1 = min(y0 + kDensityBand, height);
  const int x0 = blockIdx.y * kDensityTileW, x1 = min(x0 + kDensityTileW, width);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  float acc[kDensityColumns][kDensityBand] = {};  // column x0 + tid + c * kDensityThreads, row y0 + r
  int64_t s, e;
  image_range(offsets, b, count, &s, &e);
  for (int64_t c0 = s; c0 < e; c0 += kDensityThreads) {  // block-uniform
    const int64_t i = c0 + tid;
    int2 rows = make_int2(0, 0), cols = make_int2(0, 0);
    if (i < e) rows = heads[i].rows;
    const bool meets_rows = rows.x < y1 && rows.y > y0;  // (an empty stamp's rows are [0, 0))
    if (meets_rows) cols = heads[i].cols;
    const bool reaches = meets_rows && cols.x < x1 && cols.y > x0;
    // One barrier for a chunk none of whose heads reaches the tile (most of them on large maps);
    // also: every thread is done with the last chunk's stamps.
    if (__syncthreads_and(!reaches)) continue;
    const unsigned votes = __ballot_sync(0xffffffffu, reaches);
    if (lane == 0) reaching[warp] = __popc(votes);
    __syncthreads();
    int at = __popc(votes & ((1u << lane) - 1)), total = 0;
    for (int w = 0; w < kDensityThreads / 32; ++w) {
      at += w < warp ? reaching[w] : 0;
      total += reaching[w];
    }
    if (reaches) {
      const DensityHead& h = heads[i];
      TileStamp& st = stamps[at];
      st = TileStamp{cols.x, cols.y, h.cx, h.scale, h.inv_norm, {}};
      MUD_UNROLL
      for (int r = 0; r < kDensityBand; ++r) {
        const int y = y0 + r;
        const float ty = float(y - h.cy);
        st.wy[r] = y >= rows.x && y < rows.y ? expf(st.scale * ty * ty) * st.inv_norm : 0.0f;
      }
    }
    __syncthreads();
    for (int j = 0; j < total; ++j) {
      const int xa = stamps[j].xa, xb = stamps[j].xb;
      MUD_UNROLL
      for (int c = 0; c < kDensityColumns; ++c) {
        const int x = x0 + tid + c * kDensityThreads;
        if (x >= xa && x < xb) {
          const TileStamp& st = stamps[j];
          const float tx = float(x - st.cx);
          const float wx = expf(st.scale * tx * tx) * st.inv_norm;
          MUD_UNROLL
          for (int r = 0; r < kDensityBand; ++r) acc[c][r] += wx * st.wy[r];
        }
      }
    }
  }
  float* map = out + b * int64_t(height) * width;
  MUD_UNROLL
  for (int c = 0; c < kDensityColumns; ++c) {
    const int x = x0 + tid + c * kDensityThreads;
    MUD_UNROLL
    for (int r = 0; r < kDensityBand; ++r)
      if (x < x1 && y0 + r < y1) map[int64_t(y0 + r) * width + x] = acc[c][r];
  }
}

// Count maps: a thread per head adds 1 to its cell. Sums of ones are exact (below 2^24 a cell), so
// the atomics' order cannot change a bit: deterministic.
__global__ void count_kernel(const float2* __restrict__ points, const int64_t* __restrict__ offsets, int count,
                             int height, int width, int stride, float* __restrict__ out) {
  const int64_t b = blockIdx.y;
  const int64_t rows = (height + stride - 1) / stride, cols = (width + stride - 1) / stride;
  int64_t s, e;
  image_range(offsets, b, count, &s, &e);
  for (int64_t i = s + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < e; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = nearest_pixel(points[i].x), y = nearest_pixel(points[i].y);
    if (!(x >= 0.0f && x < float(width) && y >= 0.0f && y < float(height))) continue;  // outside, NaN
    atomicAdd(&out[(b * rows + int64_t(y) / stride) * cols + int64_t(x) / stride], 1.0f);
  }
}

template <template <int> class Launch, class... Args>
void dispatch_k(int k, Args&&... args) {
  if (k <= 1) Launch<1>::run(args...);
  else if (k <= 3) Launch<3>::run(args...);  // the default k of kNN maps and adaptive sigmas
  else if (k <= 4) Launch<4>::run(args...);
  else if (k <= 8) Launch<8>::run(args...);
  else if (k <= 16) Launch<16>::run(args...);
  else if (k <= 32) Launch<32>::run(args...);
  else Launch<kMaxK>::run(args...);
}

template <int KMAX>
struct LaunchKnn {
  static void run(const GridBuffers& w, int64_t batch, int64_t count, int64_t height, int64_t width,
                  const GridSpec& g, int k, float clip, const MapTransform& transform, float* out,
                  cudaStream_t stream) {
    using Shape = TileShape<KMAX>;
    const int64_t tile_rows = (height + Shape::height - 1) / Shape::height;
    for (int64_t r0 = 0; r0 < tile_rows; r0 += MUD_IKNN_CUDA_MAX_GRID_Y) {  // one launch but for very tall maps
      const dim3 blocks(unsigned((width + kTileW - 1) / kTileW),
                        unsigned(std::min<int64_t>(tile_rows - r0, MUD_IKNN_CUDA_MAX_GRID_Y)), unsigned(batch));
      launch(knn_tile_kernel<KMAX>, blocks, Shape::threads, stream, "knn_tile_kernel launch", w.sorted, w.starts,
             int(count), int(height), int(width), int(r0), g, k, clip, transform, out);
    }
  }
};

template <int KMAX>
struct LaunchSigma {
  static void run(const float* points, const int64_t* offsets, const GridBuffers& w, int64_t batch, int64_t count,
                  const GridSpec& g, int k, float beta, float lone, float* out, cudaStream_t stream) {
    const int per_image = int(std::min<int64_t>((count / std::max<int64_t>(batch, 1) + 127) / 128 + 1, 1024));
    launch(head_sigma_kernel<KMAX>, dim3(per_image, unsigned(batch)), 128, stream, "head_sigma_kernel launch",
           reinterpret_cast<const float2*>(points), offsets, w.sorted, w.starts, int(count), g, k, beta, lone, out);
  }
};

// The grids of the kNN tile kernel and of the per-head sigma search: workspace sizes and launches
// both take them from here, so they always agree.
// Either grid coarsened (cell side doubled) until the batch's cells fit MUD_IKNN_CUDA_MAX_GRID_CELLS:
// the same nearest heads, found among more candidates per cell. At most 9 cells per image remain.
GridSpec int_indexed(GridSpec g, int64_t batch, int64_t height, int64_t width) {
  const int64_t longest = std::max(height, width);
  while (batch * g.cells() > MUD_IKNN_CUDA_MAX_GRID_CELLS && g.cell < longest)
    g = grid_of_cell(height, width, std::min<int64_t>(2 * int64_t(g.cell), longest));
  return g;
}

GridSpec knn_grid(int64_t batch, int64_t count, int64_t height, int64_t width, int k) {
  return int_indexed(make_grid_spec(batch, count, height, width, cuda_occupancy(k)), batch, height, width);
}

GridSpec sigma_grid(int64_t batch, int64_t count, int64_t height, int64_t width, int k) {
  return int_indexed(make_grid_spec(batch, count, height, width, cuda_sigma_occupancy(k + 1)), batch, height, width);
}

GridBuffers checked_layout(void* workspace, int64_t workspace_bytes, int64_t cells, int64_t count) {
  GridBuffers w = layout(static_cast<char*>(workspace), cells, count);
  if (int64_t(w.total) > workspace_bytes)
    throw std::runtime_error("mud_iknn: workspace too small (" + std::to_string(workspace_bytes) + " < " +
                             std::to_string(w.total) + " bytes)");
  return w;
}

}  // namespace

int64_t knn_maps_workspace_bytes(const KnnArgs& a) {
  const PackedPoints& p = a.points;
  return int64_t(layout(nullptr, p.batch * knn_grid(p.batch, p.count, a.height, a.width, a.k).cells(), p.count).total);
}

int64_t head_sigmas_workspace_bytes(const SigmaArgs& a) {
  const PackedPoints& p = a.points;
  return int64_t(layout(nullptr, p.batch * sigma_grid(p.batch, p.count, a.height, a.width, a.k).cells(), p.count).total);
}

void knn_maps_cuda(const KnnArgs& a, const CudaCall& call) {
  const PackedPoints& p = a.points;
  require_float2_aligned(p.xy);
  DeviceScope scope(call.device);
  auto stream = static_cast<cudaStream_t>(call.stream);
  const GridSpec g = knn_grid(p.batch, p.count, a.height, a.width, a.k);
  const GridBuffers w = checked_layout(call.workspace, call.workspace_bytes, p.batch * g.cells(), p.count);
  if (p.count > 0) build_grid(p.xy, p.offsets, p.batch, p.count, g, w, stream);
  else check(cudaMemsetAsync(w.starts, 0, sizeof(int) * (p.batch * g.cells() + 1), stream), "memset starts");
  dispatch_k<LaunchKnn>(a.k, w, p.batch, p.count, a.height, a.width, g, a.k, a.max_distance, a.transform, a.out,
                        stream);
}

void head_sigmas_cuda(const SigmaArgs& a, const CudaCall& call) {
  const PackedPoints& p = a.points;
  require_float2_aligned(p.xy);
  if (p.count == 0) return;
  DeviceScope scope(call.device);
  auto stream = static_cast<cudaStream_t>(call.stream);
  const GridSpec g = sigma_grid(p.batch, p.count, a.height, a.width, a.k);
  const GridBuffers w = checked_layout(call.workspace, call.workspace_bytes, p.batch * g.cells(), p.count);
  build_grid(p.xy, p.offsets, p.batch, p.count, g, w, stream);
  dispatch_k<LaunchSigma>(a.k + 1, p.xy, p.offsets, w, p.batch, p.count, g, a.k, a.beta,
                          float(a.height + a.width) / 8.0f, a.out, stream);
}

int64_t density_maps_workspace_bytes(const DensityArgs& a) {
  return int64_t(sizeof(DensityHead)) * std::max<int64_t>(a.points.count, 1);
}

void density_maps_cuda(const DensityArgs& a, const CudaCall& call) {
  const PackedPoints& p = a.points;
  require_float2_aligned(p.xy);
  if (p.batch == 0) return;
  const int64_t need = density_maps_workspace_bytes(a);
  if (call.workspace_bytes < need)
    throw std::runtime_error("mud_iknn: density workspace too small (" + std::to_string(call.workspace_bytes) +
                             " < " + std::to_string(need) + " bytes)");
  if (reinterpret_cast<uintptr_t>(call.workspace) % alignof(DensityHead) != 0)
    throw std::runtime_error("mud_iknn: density workspace not aligned to " + std::to_string(alignof(DensityHead)) +
                             " bytes");
  DeviceScope scope(call.device);
  auto stream = static_cast<cudaStream_t>(call.stream);
  auto* heads = static_cast<DensityHead*>(call.workspace);
  if (p.count > 0) {
    constexpr int kNormThreads = 128;  // a warp per head
    const unsigned blocks =
        unsigned(std::min<int64_t>((p.count + kNormThreads / 32 - 1) / (kNormThreads / 32), 1 << 20));
    launch(density_norm_kernel, blocks, kNormThreads, stream, "density_norm_kernel launch",
           reinterpret_cast<const float2*>(p.xy), a.sigmas, int(p.count), int(a.height), int(a.width), a.truncate,
           heads);
  }
  launch(density_tile_kernel,
         dim3(unsigned((a.height + kDensityBand - 1) / kDensityBand),
              unsigned((a.width + kDensityTileW - 1) / kDensityTileW), unsigned(p.batch)),
         kDensityThreads, stream, "density_tile_kernel launch", heads, p.offsets, int(p.count), int(a.height),
         int(a.width), a.out);
}

int64_t count_maps_workspace_bytes(const CountArgs&) { return 0; }

void count_maps_cuda(const CountArgs& a, const CudaCall& call) {
  const PackedPoints& p = a.points;
  require_float2_aligned(p.xy);
  if (p.batch == 0) return;
  DeviceScope scope(call.device);
  auto stream = static_cast<cudaStream_t>(call.stream);
  const int64_t cells = ((a.height + a.stride - 1) / a.stride) * ((a.width + a.stride - 1) / a.stride);
  check(cudaMemsetAsync(a.out, 0, sizeof(float) * p.batch * cells, stream), "memset count maps");
  if (p.count == 0) return;
  const int per_image = int(std::min<int64_t>((p.count / p.batch + 255) / 256 + 1, 1024));
  launch(count_kernel, dim3(per_image, unsigned(p.batch)), 256, stream, "count_kernel launch",
         reinterpret_cast<const float2*>(p.xy), p.offsets, int(p.count), int(a.height), int(a.width), a.stride, a.out);
}

}  // namespace mud_iknn
