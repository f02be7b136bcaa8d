// CUDA point losses, on the caller's stream, deterministic (no atomics: every sum is one thread's
// loop or a block's tree in a fixed order) and with no host synchronisation.
//
// Bayesian loss: a block per tile of 16 x 16 cells scans the image's heads in chunks of 256,
// staging in shared memory (in packed order) those that can matter to the tile: closer to it than
// the nearest head's farthest tile cell plus the cut. Each thread (cell) finds its nearest head
// and its softmax normaliser over them; the backward pass then sums its posteriors against the
// weights. The forward's expected counts are gathered per head: a thread per head visits the
// tiles whose largest cell term leaves it within the cut (a bound from the tile's rectangle),
// reading the cells' normalisers.
// Sinkhorn-Knopp: each head's window of cells and factor tables exp(-dx^2 / reg), exp(-dy^2 / reg),
// then every iteration K^T u per tile (the heads whose window meets the tile staged as above),
// K v per head, a per-image check for NaN/inf and, every 10 iterations, the constraint error; an
// image whose loop has ended (bregman_pytorch.py's break) sets a device flag that the later
// launches of the fixed sequence read and skip on.
#include <stdexcept>
#include <string>

#include "cuda_launch.h"  // (tests/cuda_emulation runs this file's kernels on the CPU)
#include "point_losses.h"

namespace mud_iknn {
namespace {

constexpr int kTile = 16;                  // cells per side of a block's tile
constexpr int kThreads = kTile * kTile;    // a thread per cell of the tile; also the head chunk
constexpr int kHeadThreads = 128;

// Arrays carved out of one workspace, each 256-byte aligned; with a null base it only counts bytes.
struct Carver {
  char* base;
  int64_t used = 0;
  template <class T>
  T* take(int64_t n) {
    used = (used + 255) / 256 * 256;
    T* p = base ? reinterpret_cast<T*>(base + used) : nullptr;
    used += n * int64_t(sizeof(T));
    return p;
  }
};

struct TileGrid {
  int tiles_x, tiles_y;
  int64_t tiles() const { return int64_t(tiles_x) * tiles_y; }
};

TileGrid tile_grid(const PointMap& m) {
  return TileGrid{int((m.width + kTile - 1) / kTile), int((m.height + kTile - 1) / kTile)};
}

// The tile of this block (blockIdx.x) and this thread's cell in it; cells past the map are clamped
// to its last row / column (they compute, and write nothing).
struct TileCell {
  int64_t r0, c0, r1, c1;  // the tile's cells [r0, r1] x [c0, c1], inclusive
  int64_t r, c;
  bool valid;
};

__device__ TileCell tile_cell(const PointMap& m, int tiles_x) {
  TileCell t;
  t.r0 = int64_t(blockIdx.x / tiles_x) * kTile;
  t.c0 = int64_t(blockIdx.x % tiles_x) * kTile;
  t.r1 = t.r0 + kTile - 1 < m.height - 1 ? t.r0 + kTile - 1 : m.height - 1;
  t.c1 = t.c0 + kTile - 1 < m.width - 1 ? t.c0 + kTile - 1 : m.width - 1;
  const int64_t r = t.r0 + threadIdx.x / kTile, c = t.c0 + threadIdx.x % kTile;
  t.valid = r <= t.r1 && c <= t.c1;
  t.r = r <= t.r1 ? r : t.r1;
  t.c = c <= t.c1 ? c : t.c1;
  return t;
}

// Squared distance from (x, y) to the rectangle [xa, xb] x [ya, yb].
__device__ double rect_gap2(double x, double y, double xa, double xb, double ya, double yb) {
  const double dx = x < xa ? xa - x : (x > xb ? x - xb : 0.0);
  const double dy = y < ya ? ya - y : (y > yb ? y - yb : 0.0);
  return dx * dx + dy * dy;
}

// Block-wide reductions over kThreads threads, in a fixed tree order; every thread gets the result.
enum class Reduce { kSum, kMin, kMax };

template <Reduce op>
__device__ double block_reduce(double v) {
  __shared__ double cell[kThreads];
  const int t = threadIdx.x;
  cell[t] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) {
      const double a = cell[t], b = cell[t + s];
      cell[t] = op == Reduce::kSum ? a + b : (op == Reduce::kMin ? (b < a ? b : a) : (b > a ? b : a));
    }
    __syncthreads();
  }
  const double out = cell[0];
  __syncthreads();
  return out;
}

// Exclusive prefix sum of flag over the block (Hillis-Steele in shared memory); *total gets the sum.
__device__ int block_exclusive_scan(int flag, int* total) {
  __shared__ int buffer[2][kThreads];
  const int t = threadIdx.x;
  int in = 0;
  buffer[0][t] = flag;
  __syncthreads();
  for (int off = 1; off < kThreads; off <<= 1) {
    buffer[1 - in][t] = buffer[in][t] + (t >= off ? buffer[in][t - off] : 0);
    in = 1 - in;
    __syncthreads();
  }
  const int inclusive = buffer[in][t];
  *total = buffer[in][kThreads - 1];
  __syncthreads();
  return inclusive - flag;
}

// Image of packed head i (offsets valid: 0 = offsets[0] <= ... <= offsets[batch] = count).
__device__ int64_t image_of(const int64_t* offsets, int64_t batch, int64_t i) {
  int64_t lo = 0, hi = batch - 1;  // the last b with offsets[b] <= i
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= i) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// ---- Bayesian loss ----------------------------------------------------------------------------

struct BayesianCells {  // forward workspace, per cell of the batch, and per tile
  double* top;        // the cell's largest term, -best / (2 sigma^2)
  double* z;          // its normaliser: sum of exp(term - top) over the kept rows
  double* background; // density * background posterior (an image without heads: its density)
  double* tile_best;  // per tile, the largest best squared distance of its cells
};

BayesianCells carve_bayesian(Carver& w, const PointMap& m) {
  const int64_t cells = m.points.batch * m.height * m.width;
  BayesianCells c;
  c.top = w.take<double>(cells);
  c.z = w.take<double>(cells);
  c.background = w.take<double>(cells);
  c.tile_best = w.take<double>(m.points.batch * tile_grid(m).tiles());
  return c;
}

// forward: density in, cells out; backward (weights set): grad out.
__global__ void __launch_bounds__(kThreads) bayesian_cells_kernel(PointMap m, double sigma, const double* background,
                                                                 const float* density, BayesianCells out,
                                                                 const double* weights, float* grad, int tiles_x) {
  __shared__ double sx[kThreads], sy[kThreads];
  __shared__ int64_t sid[kThreads];
  const int64_t b = blockIdx.y;
  const TileCell tc = tile_cell(m, tiles_x);
  const int64_t cell = (b * m.height + tc.r) * m.width + tc.c;
  int64_t begin, end;
  image_range(m.points.offsets, b, m.points.count, &begin, &end);
  if (begin == end) {
    if (!tc.valid) return;
    if (weights) grad[cell] = float(weights[m.points.count + b]);
    else out.background[cell] = density[cell];
    return;
  }
  const double inv = 1.0 / (2.0 * sigma * sigma), reach = kBayesianCut / inv;
  const double px = cell_centre(tc.c, m.stride), py = cell_centre(tc.r, m.stride);
  const double xa = cell_centre(tc.c0, m.stride), xb = cell_centre(tc.c1, m.stride);
  const double ya = cell_centre(tc.r0, m.stride), yb = cell_centre(tc.r1, m.stride);
  // Every cell's best squared distance is at most the nearest head's to the tile's farthest cell.
  double upper = INFINITY;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const double x = m.points.xy[2 * i], y = m.points.xy[2 * i + 1];
    const double fx = fmax(fabs(x - xa), fabs(x - xb)), fy = fmax(fabs(y - ya), fabs(y - yb));
    upper = fmin(upper, fx * fx + fy * fy);
  }
  const double limit = block_reduce<Reduce::kMin>(upper) + reach;
  // sweep 0: the nearest head; 1: the normaliser; 2 (backward): the weighted posteriors.
  double nearest = INFINITY, top = 0.0, z = 0.0, g = 0.0, bg = 0.0;
  for (int sweep = 0; sweep < (weights ? 3 : 2); ++sweep) {
    for (int64_t base = begin; base < end; base += kThreads) {
      const int64_t i = base + threadIdx.x;
      bool keep = false;
      double x = 0.0, y = 0.0;
      if (i < end) {
        x = m.points.xy[2 * i];
        y = m.points.xy[2 * i + 1];
        keep = rect_gap2(x, y, xa, xb, ya, yb) < limit;
      }
      int total;
      const int at = block_exclusive_scan(keep, &total);
      if (keep) {
        sx[at] = x;
        sy[at] = y;
        sid[at] = i;
      }
      __syncthreads();
      for (int k = 0; k < total; ++k) {
        const double dx = sx[k] - px, dy = sy[k] - py, dis = dy * dy + dx * dx;
        if (sweep == 0) {
          nearest = fmin(nearest, dis);
        } else {
          const double t = -dis * inv - top;
          if (t > -kBayesianCut) {
            const double e = exp(t);
            if (sweep == 1) z += e;
            else g += weights[sid[k]] * (e / z);
          }
        }
      }
      __syncthreads();
    }
    if (sweep == 0) {
      double best = nearest, background2 = 0.0;
      if (background) {
        const double gap = background[b] - sqrt(nearest);
        background2 = gap * gap;
        best = fmin(best, background2);
      }
      top = -best * inv;
      bg = background ? exp(-background2 * inv - top) : 0.0;
      if (!weights) {
        const double worst = block_reduce<Reduce::kMax>(tc.valid ? best : -INFINITY);
        if (threadIdx.x == 0) out.tile_best[b * gridDim.x + blockIdx.x] = worst;
      }
    } else if (sweep == 1) {
      z += bg;
    }
  }
  if (!tc.valid) return;
  if (weights) {
    grad[cell] = float(weights[m.points.count + b] * (bg / z) + g);
  } else {
    out.top[cell] = top;
    out.z[cell] = z;
    out.background[cell] = double(density[cell]) * (bg / z);
  }
}

// expected[i] for every head: a thread per head over the tiles that can keep it.
__global__ void __launch_bounds__(kHeadThreads) bayesian_heads_kernel(PointMap m, double sigma, const float* density,
                                                                     BayesianCells cells, double* expected,
                                                                     int tiles_x, int tiles_y) {
  const int64_t i = int64_t(blockIdx.x) * kHeadThreads + threadIdx.x;
  if (i >= m.points.count) return;
  const int64_t b = image_of(m.points.offsets, m.points.batch, i);
  const double inv = 1.0 / (2.0 * sigma * sigma);
  const double x = m.points.xy[2 * i], y = m.points.xy[2 * i + 1];
  double e = 0.0;
  for (int ty = 0; ty < tiles_y; ++ty)
    for (int tx = 0; tx < tiles_x; ++tx) {
      const int64_t r0 = int64_t(ty) * kTile, c0 = int64_t(tx) * kTile;
      const int64_t r1 = r0 + kTile - 1 < m.height - 1 ? r0 + kTile - 1 : m.height - 1;
      const int64_t c1 = c0 + kTile - 1 < m.width - 1 ? c0 + kTile - 1 : m.width - 1;
      const double gap = rect_gap2(x, y, cell_centre(c0, m.stride), cell_centre(c1, m.stride),
                                   cell_centre(r0, m.stride), cell_centre(r1, m.stride));
      const double worst = cells.tile_best[b * int64_t(tiles_x) * tiles_y + int64_t(ty) * tiles_x + tx];
      if ((gap - worst) * inv > kBayesianCut * (1.0 + 1e-9) + 1e-9) continue;  // no cell of the tile keeps it
      for (int64_t r = r0; r <= r1; ++r)
        for (int64_t c = c0; c <= c1; ++c) {
          const int64_t cell = (b * m.height + r) * m.width + c;
          const double dx = x - cell_centre(c, m.stride), dy = y - cell_centre(r, m.stride);
          const double t = -(dy * dy + dx * dx) * inv - cells.top[cell];
          if (t > -kBayesianCut) e += double(density[cell]) * (exp(t) / cells.z[cell]);
        }
    }
  expected[i] = e;
}

// expected[count + b] = sum of the image's background column (a block per image).
__global__ void __launch_bounds__(kThreads) image_sum_kernel(const double* values, int64_t cells, double* out) {
  const int64_t b = blockIdx.x;
  double s = 0.0;
  for (int64_t c = threadIdx.x; c < cells; c += kThreads) s += values[b * cells + c];
  s = block_reduce<Reduce::kSum>(s);
  if (threadIdx.x == 0) out[b] = s;
}

// ---- Sinkhorn-Knopp ---------------------------------------------------------------------------

struct SinkhornState {
  int64_t wmax, hmax;
  int64_t *c0, *nc, *r0, *nr;  // per head: its window of columns and rows
  double *dx2, *ex, *dy2, *ey; // per head: wmax / hmax table entries
  double *u, *upre, *v, *vpre; // u per head, v per cell
  double* tile_err;            // per image and tile
  int* done;                   // per image: its loop has ended
};

SinkhornState carve_sinkhorn(Carver& w, const SinkhornArgs& a) {
  const PointMap& m = a.map;
  const double cut = a.reg * kFloat32ExpCut;
  SinkhornState s;
  s.wmax = max_window(m.width, m.stride, a.scale, cut);
  s.hmax = max_window(m.height, m.stride, a.scale, cut);
  s.c0 = w.take<int64_t>(m.points.count);
  s.nc = w.take<int64_t>(m.points.count);
  s.r0 = w.take<int64_t>(m.points.count);
  s.nr = w.take<int64_t>(m.points.count);
  s.dx2 = w.take<double>(m.points.count * s.wmax);
  s.ex = w.take<double>(m.points.count * s.wmax);
  s.dy2 = w.take<double>(m.points.count * s.hmax);
  s.ey = w.take<double>(m.points.count * s.hmax);
  s.u = w.take<double>(m.points.count);
  s.upre = w.take<double>(m.points.count);
  s.v = w.take<double>(m.points.batch * m.height * m.width);
  s.vpre = w.take<double>(m.points.batch * m.height * m.width);
  s.tile_err = w.take<double>(m.points.batch * tile_grid(m).tiles());
  s.done = w.take<int>(m.points.batch);
  return s;
}

__device__ int64_t head_count(const PointMap& m, int64_t b) {
  int64_t begin, end;
  image_range(m.points.offsets, b, m.points.count, &begin, &end);
  return end - begin;
}

__global__ void __launch_bounds__(kHeadThreads) sinkhorn_heads_setup(SinkhornArgs a, SinkhornState s) {
  const PointMap& m = a.map;
  const int64_t i = int64_t(blockIdx.x) * kHeadThreads + threadIdx.x;
  if (i >= m.points.count) return;
  const double cut = a.reg * kFloat32ExpCut;
  const double x = m.points.xy[2 * i], y = m.points.xy[2 * i + 1];
  int64_t c0, nc, r0, nr;
  axis_window(x, m.width, m.stride, a.scale, a.shift, cut, &c0, &nc);
  axis_window(y, m.height, m.stride, a.scale, a.shift, cut, &r0, &nr);
  if (nc == 0 || nr == 0) nc = nr = 0;
  s.c0[i] = c0;
  s.nc[i] = nc;
  s.r0[i] = r0;
  s.nr[i] = nr;
  const double xt = x * a.scale + a.shift, yt = y * a.scale + a.shift;
  for (int64_t k = 0; k < nc; ++k) {
    const double d = (cell_centre(c0 + k, m.stride) * a.scale + a.shift) - xt;
    s.dx2[i * s.wmax + k] = d * d;
    s.ex[i * s.wmax + k] = exp(-d * d / a.reg);
  }
  for (int64_t k = 0; k < nr; ++k) {
    const double d = (cell_centre(r0 + k, m.stride) * a.scale + a.shift) - yt;
    s.dy2[i * s.hmax + k] = d * d;
    s.ey[i * s.hmax + k] = exp(-d * d / a.reg);
  }
  s.u[i] = 1.0 / double(head_count(m, image_of(m.points.offsets, m.points.batch, i)));
}

__global__ void __launch_bounds__(kThreads) sinkhorn_cells_setup(SinkhornArgs a, SinkhornState s) {
  const PointMap& m = a.map;
  const int64_t cells = m.height * m.width, at = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (at < m.points.batch * cells) s.v[at] = 1.0 / double(cells);
  if (at < m.points.batch) s.done[at] = head_count(m, at) == 0;
}

// K^T u over a tile: with update, v = b / (K^T u + eps) (keeping the old v in vpre); else the
// tile's share of the constraint error |b - (K^T u) * v|^2.
__global__ void __launch_bounds__(kThreads) sinkhorn_ktu_kernel(SinkhornArgs a, SinkhornState s, const float* normed,
                                                               int tiles_x, int update) {
  __shared__ int64_t sid[kThreads];
  const PointMap& m = a.map;
  const int64_t b = blockIdx.y;
  if (s.done[b]) return;
  const TileCell tc = tile_cell(m, tiles_x);
  const double cut = a.reg * kFloat32ExpCut;
  int64_t begin, end;
  image_range(m.points.offsets, b, m.points.count, &begin, &end);
  double acc = 0.0;
  for (int64_t base = begin; base < end; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const bool meets = i < end && s.nc[i] > 0 && s.c0[i] <= tc.c1 && s.c0[i] + s.nc[i] > tc.c0 && s.r0[i] <= tc.r1 &&
                       s.r0[i] + s.nr[i] > tc.r0;
    int total;
    const int at = block_exclusive_scan(meets, &total);
    if (meets) sid[at] = i;
    __syncthreads();
    for (int k = 0; k < total; ++k) {
      const int64_t j = sid[k], kc = tc.c - s.c0[j], kr = tc.r - s.r0[j];
      if (kc < 0 || kc >= s.nc[j] || kr < 0 || kr >= s.nr[j]) continue;
      if (s.dy2[j * s.hmax + kr] + s.dx2[j * s.wmax + kc] <= cut)
        acc += s.u[j] * s.ey[j * s.hmax + kr] * s.ex[j * s.wmax + kc];
    }
    __syncthreads();
  }
  const int64_t cell = (b * m.height + tc.r) * m.width + tc.c;
  if (update) {
    if (tc.valid) {
      s.vpre[cell] = s.v[cell];
      s.v[cell] = double(normed[cell]) / (acc + kSinkhornEps);
    }
    return;
  }
  const double e = tc.valid ? double(normed[cell]) - acc * s.v[cell] : 0.0;
  const double sum = block_reduce<Reduce::kSum>(e * e);
  if (threadIdx.x == 0) s.tile_err[b * gridDim.x + blockIdx.x] = sum;
}

// sum over head i's window of K v (times C with cost).
__device__ double head_sum(const SinkhornArgs& a, const SinkhornState& s, int64_t i, int64_t b, bool cost) {
  const PointMap& m = a.map;
  const double cut = a.reg * kFloat32ExpCut;
  double total = 0.0;
  for (int64_t kr = 0; kr < s.nr[i]; ++kr) {
    const double y2 = s.dy2[i * s.hmax + kr];
    const double* vr = s.v + (b * m.height + s.r0[i] + kr) * m.width + s.c0[i];
    double t = 0.0;
    for (int64_t k = 0; k < s.nc[i]; ++k) {
      const double c = y2 + s.dx2[i * s.wmax + k];
      t += c <= cut ? (cost ? c : 1.0) * s.ex[i * s.wmax + k] * vr[k] : 0.0;
    }
    total += s.ey[i * s.hmax + kr] * t;
  }
  return total;
}

// u = a / (K v + eps) (keeping the old u in upre); with cost, upre = u * (C K v) for the distance.
__global__ void __launch_bounds__(kHeadThreads) sinkhorn_kv_kernel(SinkhornArgs a, SinkhornState s, int cost) {
  const PointMap& m = a.map;
  const int64_t i = int64_t(blockIdx.x) * kHeadThreads + threadIdx.x;
  if (i >= m.points.count) return;
  const int64_t b = image_of(m.points.offsets, m.points.batch, i);
  if (cost) {
    s.upre[i] = s.u[i] * head_sum(a, s, i, b, true);
    return;
  }
  if (s.done[b]) return;
  s.upre[i] = s.u[i];
  s.u[i] = (1.0 / double(head_count(m, b))) / (head_sum(a, s, i, b, false) + kSinkhornEps);
}

// A block per image: NaN/inf in u or v sends both back to the previous iterate and ends the loop;
// with check_error, so does a constraint error at or below the threshold.
__global__ void __launch_bounds__(kThreads) sinkhorn_check_kernel(SinkhornArgs a, SinkhornState s, int64_t tiles,
                                                                 int check_error, int finite_only) {
  const PointMap& m = a.map;
  const int64_t b = blockIdx.x, cells = m.height * m.width;
  if (s.done[b]) return;
  int64_t begin, end;
  image_range(m.points.offsets, b, m.points.count, &begin, &end);
  if (finite_only) {
    double bad = 0.0;
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) bad += is_finite(s.u[i]) ? 0.0 : 1.0;
    for (int64_t c = threadIdx.x; c < cells; c += kThreads) bad += is_finite(s.v[b * cells + c]) ? 0.0 : 1.0;
    if (block_reduce<Reduce::kSum>(bad) == 0.0) return;
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) s.u[i] = s.upre[i];
    for (int64_t c = threadIdx.x; c < cells; c += kThreads) s.v[b * cells + c] = s.vpre[b * cells + c];
    if (threadIdx.x == 0) s.done[b] = 1;
    return;
  }
  if (!check_error) return;
  double err = 0.0;
  for (int64_t t = threadIdx.x; t < tiles; t += kThreads) err += s.tile_err[b * tiles + t];
  err = block_reduce<Reduce::kSum>(err);
  if (threadIdx.x == 0 && !(err > kSinkhornStop)) s.done[b] = 1;
}

__global__ void __launch_bounds__(kThreads) sinkhorn_beta_kernel(SinkhornArgs a, SinkhornState s, double* beta) {
  const PointMap& m = a.map;
  const int64_t cells = m.height * m.width, at = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (at >= m.points.batch * cells) return;
  beta[at] = head_count(m, at / cells) == 0 ? 0.0 : a.reg * log(s.v[at] + kSinkhornEps);
}

__global__ void __launch_bounds__(kThreads) sinkhorn_distance_kernel(SinkhornArgs a, SinkhornState s,
                                                                    double* wasserstein) {
  const int64_t b = blockIdx.x;
  int64_t begin, end;
  image_range(a.map.points.offsets, b, a.map.points.count, &begin, &end);
  double sum = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) sum += s.upre[i];
  sum = block_reduce<Reduce::kSum>(sum);
  if (threadIdx.x == 0) wasserstein[b] = sum;
}

unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

void require_workspace(int64_t needed, int64_t given, const char* what) {
  if (given < needed)
    throw std::runtime_error(std::string("mud_iknn: ") + what + " workspace of " + std::to_string(given) +
                             " bytes, needs " + std::to_string(needed));
}

}  // namespace

int64_t bayesian_expected_workspace_bytes(const BayesianArgs& a) {
  Carver w{nullptr};
  carve_bayesian(w, a.map);
  return w.used;
}

void bayesian_expected_cuda(const BayesianArgs& a, const CudaCall& call) {
  const PointMap& m = a.map;
  const float* density = a.density;
  double* expected = a.expected;
  if (m.points.batch == 0) return;
  DeviceScope scope(call.device);
  cudaStream_t st = static_cast<cudaStream_t>(call.stream);
  if (m.height * m.width == 0) {  // no cell to expect a head in: every row 0, as on the CPU
    check(cudaMemsetAsync(expected, 0, sizeof(double) * (m.points.count + m.points.batch), st), "memset expected");
    return;
  }
  require_workspace(bayesian_expected_workspace_bytes(a), call.workspace_bytes, "Bayesian loss");
  Carver w{static_cast<char*>(call.workspace)};
  const BayesianCells cells = carve_bayesian(w, m);
  const TileGrid tg = tile_grid(m);
  launch(bayesian_cells_kernel, dim3(unsigned(tg.tiles()), unsigned(m.points.batch)), dim3(kThreads), st,
         "bayesian_cells_kernel", m, a.sigma, a.background, density, cells, static_cast<const double*>(nullptr),
         static_cast<float*>(nullptr), tg.tiles_x);
  if (m.points.count > 0)
    launch(bayesian_heads_kernel, dim3(blocks_for(m.points.count, kHeadThreads)), dim3(kHeadThreads), st,
           "bayesian_heads_kernel", m, a.sigma, density, cells, expected, tg.tiles_x, tg.tiles_y);
  launch(image_sum_kernel, dim3(unsigned(m.points.batch)), dim3(kThreads), st, "image_sum_kernel",
         static_cast<const double*>(cells.background), m.height * m.width, expected + m.points.count);
}

int64_t bayesian_backward_workspace_bytes(const BayesianArgs&) { return 0; }  // recomputes the posteriors

void bayesian_backward_cuda(const BayesianArgs& a, const CudaCall& call) {
  const PointMap& m = a.map;
  if (m.points.batch == 0 || m.height * m.width == 0) return;
  DeviceScope scope(call.device);
  const TileGrid tg = tile_grid(m);
  launch(bayesian_cells_kernel, dim3(unsigned(tg.tiles()), unsigned(m.points.batch)), dim3(kThreads),
         static_cast<cudaStream_t>(call.stream), "bayesian_cells_kernel", m, a.sigma, a.background,
         static_cast<const float*>(nullptr), BayesianCells{}, a.weights, a.grad, tg.tiles_x);
}

int64_t sinkhorn_workspace_bytes(const SinkhornArgs& a) {
  Carver w{nullptr};
  carve_sinkhorn(w, a);
  return w.used;
}

void sinkhorn_cuda(const SinkhornArgs& a, const CudaCall& call) {
  const PointMap& m = a.map;
  const float* normed = a.normed;
  if (m.points.batch == 0) return;
  DeviceScope scope(call.device);
  cudaStream_t st = static_cast<cudaStream_t>(call.stream);
  if (m.height * m.width == 0) {  // no mass to move: distances 0, as on the CPU
    check(cudaMemsetAsync(a.wasserstein, 0, sizeof(double) * m.points.batch, st), "memset wasserstein");
    return;
  }
  require_workspace(sinkhorn_workspace_bytes(a), call.workspace_bytes, "Sinkhorn");
  Carver w{static_cast<char*>(call.workspace)};
  const SinkhornState s = carve_sinkhorn(w, a);
  const TileGrid tg = tile_grid(m);
  const dim3 tiles(unsigned(tg.tiles()), unsigned(m.points.batch));
  const unsigned head_blocks = blocks_for(m.points.count, kHeadThreads);
  const unsigned cell_blocks = blocks_for(std::max(m.points.batch * m.height * m.width, m.points.batch), kThreads);
  if (m.points.count > 0) launch(sinkhorn_heads_setup, dim3(head_blocks), dim3(kHeadThreads), st, "sinkhorn_heads_setup", a, s);
  launch(sinkhorn_cells_setup, dim3(cell_blocks), dim3(kThreads), st, "sinkhorn_cells_setup", a, s);
  for (int it = 1; it <= a.iterations && m.points.count > 0; ++it) {
    launch(sinkhorn_ktu_kernel, tiles, dim3(kThreads), st, "sinkhorn_ktu_kernel", a, s, normed, tg.tiles_x, 1);
    launch(sinkhorn_kv_kernel, dim3(head_blocks), dim3(kHeadThreads), st, "sinkhorn_kv_kernel", a, s, 0);
    launch(sinkhorn_check_kernel, dim3(unsigned(m.points.batch)), dim3(kThreads), st, "sinkhorn_check_kernel", a, s,
           tg.tiles(), 0, 1);
    if (it % kSinkhornEvalEvery == 0) {
      launch(sinkhorn_ktu_kernel, tiles, dim3(kThreads), st, "sinkhorn_ktu_kernel", a, s, normed, tg.tiles_x, 0);
      launch(sinkhorn_check_kernel, dim3(unsigned(m.points.batch)), dim3(kThreads), st, "sinkhorn_check_kernel", a, s,
             tg.tiles(), 1, 0);
    }
  }
  launch(sinkhorn_beta_kernel, dim3(cell_blocks), dim3(kThreads), st, "sinkhorn_beta_kernel", a, s, a.beta);
  if (m.points.count > 0) launch(sinkhorn_kv_kernel, dim3(head_blocks), dim3(kHeadThreads), st, "sinkhorn_kv_kernel", a, s, 1);
  launch(sinkhorn_distance_kernel, dim3(unsigned(m.points.batch)), dim3(kThreads), st, "sinkhorn_distance_kernel", a, s,
         a.wasserstein);
}

}  // namespace mud_iknn
