// Shared declarations of the label engine: grid geometry, the exact search bound, the Gaussian
// radius and stamp test, and the CPU / CUDA entry points. Everything here trusts its inputs: the
// Python layer (mud_iknn/labels.py) validates shapes, dtypes, devices and values before calling.
//
// Conventions: points are packed float (x, y) pairs, offsets are B + 1 int64 (image b owns
// points[offsets[b], offsets[b+1])), maps are row-major (B, H, W) float32, pixel (i, j) centred
// at (x = j, y = i).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define MUD_HD __host__ __device__ __forceinline__
#define MUD_HD_INLINED MUD_HD
#define MUD_UNROLL _Pragma("unroll")
#else
#define MUD_HD inline
// Inlined on the CPU too, as on the GPU: a call inside a vectorised loop would run one pixel at a time.
#define MUD_HD_INLINED inline __attribute__((always_inline))
#define MUD_UNROLL
#endif

namespace mud_iknn {

// min / max that compile to one instruction on the CPU too (std::fmin is a libm call there).
// A NaN argument yields the second operand.
MUD_HD float min_f(float a, float b) { return a < b ? a : b; }
MUD_HD float max_f(float a, float b) { return a > b ? a : b; }
// isfinite on the host and the device, for float and double.
template <class T>
MUD_HD bool is_finite(T v) {
#ifdef __CUDA_ARCH__
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

constexpr int kMaxK = 64;       // largest k of a kNN map (k + 1 <= kMaxK for adaptive sigmas)
constexpr int kMargin = 1;      // grid cells beyond the map on every side; farther heads are clamped in

// Limits of the engine, exported from mud_iknn._C (bindings.cpp); the Python layer enforces them.
constexpr int64_t kMaxImages = 65535;              // images per call (CUDA gridDim.z)
constexpr int64_t kMaxPoints = 2147483647;         // heads per call (int32 indices in the kernels)
constexpr int64_t kMaxMapPixels = 2147483647;      // pixels of one map
constexpr int64_t kMaxMapSide = int64_t(1) << 24;  // pixels per side: every pixel centre is exact in float32
constexpr double kMaxCoordinate = 1e18;            // |x|, |y|: squared distances stay finite in float32
constexpr double kMinDistance = 1e-18;             // smallest max_distance (squares stay normal floats)
constexpr double kMaxTruncate = 100.0;             // widest Gaussian truncation, in sigmas

// Transforms of the mean kNN distance D applied when writing a map.
enum Transform : int { kDistance = 0, kInverse = 1, kInverseSqrt = 2, kFidt = 3 };

// A transform and its parameters (alpha, beta, c, zero_below are FIDT's; unused by the others).
struct MapTransform {
  int kind = kDistance;
  float alpha = 0.0f;       // FIDT: I = 1 / (D^(alpha D + beta) + c), alpha, beta >= 0, c > 0
  float beta = 0.0f;
  float c = 1.0f;
  float zero_below = 0.0f;  // FIDT: values below it are written as 0 (FIDTM's 0.01; 0 keeps all)
};

// A uniform grid of square cells over the map plus kMargin cells around it, one per image.
// Cell (cx, cy) covers x in [(cx - kMargin) * cell, (cx - kMargin + 1) * cell), likewise y; the
// outermost cells extend to infinity, so every point falls in exactly one cell.
struct GridSpec {
  int cell;  // side in pixels; an integer, so cell borders and pixel centres are exact floats
  int gx;    // cells per row
  int gy;    // cells per column
  MUD_HD int64_t cells() const { return int64_t(gx) * gy; }
};

// The grid of cells `cell` pixels wide over an (height, width) map.
inline GridSpec grid_of_cell(int64_t height, int64_t width, int64_t cell) {
  GridSpec g;
  g.cell = int(cell);
  g.gx = int((width + cell - 1) / cell) + 2 * kMargin;
  g.gy = int((height + cell - 1) / cell) + 2 * kMargin;
  return g;
}

// Cell side chosen from the mean area per head so that a cell holds about `occupancy` heads: O(P)
// cells. Each backend picks its occupancy (see cpu_occupancy / cuda_occupancy).
inline GridSpec make_grid_spec(int64_t batch, int64_t count, int64_t height, int64_t width, double occupancy) {
  const double area = double(batch) * double(height) * double(width) / double(std::max<int64_t>(count, 1));
  const int64_t longest = std::max(height, width);
  return grid_of_cell(height, width, std::clamp<int64_t>(std::llround(std::sqrt(area * occupancy)), 1, longest));
}

// The CPU prunes candidates row by row, so small cells (few candidates, more rings) pay off.
inline double cpu_occupancy(int k) { return std::max(1.0, k / 2.0); }
// A GPU tile pays a chain of memory round trips per ring and sorts its candidates by distance (so
// surplus ones cost little): cells are large enough that the tile's cells plus one ring around them
// (its first pass) usually hold every pixel's k nearest heads.
#ifndef MUD_IKNN_CUDA_OCCUPANCY_SCALE
#define MUD_IKNN_CUDA_OCCUPANCY_SCALE 2.0
#endif
inline double cuda_occupancy(int k) { return (k + 1.0) * MUD_IKNN_CUDA_OCCUPANCY_SCALE; }
// The per-head search of the adaptive sigmas (one thread per head, every candidate tested) wants
// smaller cells.
inline double cuda_sigma_occupancy(int k) { return (k + 1.0) * 0.5; }

// Cell index along one axis of coordinate v; NaN lands in cell 0 (and never matches a distance).
MUD_HD int cell_of(float v, int cell, int n) {
  float f = floorf(v / float(cell)) + float(kMargin);
  f = min_f(max_f(f, 0.0f), float(n - 1));
  return int(f);
}

// Clamped [begin, end) of image b's points; invalid offsets can never index outside [0, count).
MUD_HD void image_range(const int64_t* offsets, int64_t b, int64_t count, int64_t* begin, int64_t* end) {
  int64_t s = offsets[b], e = offsets[b + 1];
  s = s < 0 ? 0 : (s > count ? count : s);
  e = e < s ? s : (e > count ? count : e);
  *begin = s;
  *end = e;
}

// A rectangle of cells [x0, x1] x [y0, y1], inclusive.
struct CellBlock {
  int x0, x1, y0, y1;
  MUD_HD bool same(const CellBlock& o) const { return x0 == o.x0 && x1 == o.x1 && y0 == o.y0 && y1 == o.y1; }
};

// The block `ring` cells around [cx0, cx1] x [cy0, cy1], clamped to the grid.
MUD_HD CellBlock grow(int cx0, int cx1, int cy0, int cy1, int ring, const GridSpec& g) {
  CellBlock c;
  c.x0 = cx0 - ring < 0 ? 0 : cx0 - ring;
  c.x1 = cx1 + ring > g.gx - 1 ? g.gx - 1 : cx1 + ring;
  c.y0 = cy0 - ring < 0 ? 0 : cy0 - ring;
  c.y1 = cy1 + ring > g.gy - 1 ? g.gy - 1 : cy1 + ring;
  return c;
}

// Distance from x = px to the nearer of the block's left and right edges that have unvisited cells
// beyond them (+inf if neither has); side_bound_y likewise for rows.
MUD_HD float side_bound_x(float px, const CellBlock& c, const GridSpec& g) {
  float b = INFINITY;
  if (c.x0 > 0) b = min_f(b, px - float((c.x0 - kMargin) * g.cell));
  if (c.x1 < g.gx - 1) b = min_f(b, float((c.x1 + 1 - kMargin) * g.cell) - px);
  return b;
}
MUD_HD float side_bound_y(float py, const CellBlock& c, const GridSpec& g) {
  float b = INFINITY;
  if (c.y0 > 0) b = min_f(b, py - float((c.y0 - kMargin) * g.cell));
  if (c.y1 < g.gy - 1) b = min_f(b, float((c.y1 + 1 - kMargin) * g.cell) - py);
  return b;
}

// Lower bound on the distance from (px, py), a point inside the (extended) block, to any point in a
// cell outside the block. +inf once the block is the whole grid.
MUD_HD float outside_bound(float px, float py, const CellBlock& c, const GridSpec& g) {
  return max_f(min_f(side_bound_x(px, c, g), side_bound_y(py, c, g)), 0.0f);
}

// Squared distances from (px, py) to the nearest and to the farthest point of the rectangle
// [x0, x1] x [y0, y1] (x0 <= x1, y0 <= y1); 0 nearest from inside it.
MUD_HD float rect_near2(float px, float py, float x0, float x1, float y0, float y1) {
  const float dx = max_f(max_f(x0 - px, px - x1), 0.0f), dy = max_f(max_f(y0 - py, py - y1), 0.0f);
  return dx * dx + dy * dy;
}
MUD_HD float rect_far2(float px, float py, float x0, float x1, float y0, float y1) {
  const float dx = max_f(px - x0, x1 - px), dy = max_f(py - y0, y1 - py);
  return dx * dx + dy * dy;
}

// The cells of row y that are in `now` but not in `before` (the ring between two blocks), as up to
// two inclusive column spans [lo0, hi0] and [lo1, hi1]. `first` means there is no block before.
struct RowSpans {
  int count;
  int lo0, hi0, lo1, hi1;
};

MUD_HD RowSpans ring_spans(int y, const CellBlock& now, const CellBlock& before, bool first) {
  if (first || y < before.y0 || y > before.y1) return RowSpans{1, now.x0, now.x1, 0, -1};
  const bool left = now.x0 < before.x0, right = now.x1 > before.x1;
  if (left && right) return RowSpans{2, now.x0, before.x0 - 1, before.x1 + 1, now.x1};
  if (left) return RowSpans{1, now.x0, before.x0 - 1, 0, -1};
  if (right) return RowSpans{1, before.x1 + 1, now.x1, 0, -1};
  return RowSpans{0, 0, -1, 0, -1};
}

// Bits of a float and back, and selects written as bit masks: compilers keep them branch-free (a
// ternary may become a branch that stops a SIMD loop from vectorising).
MUD_HD int bits_of(float v) {
#ifdef __CUDA_ARCH__
  return __float_as_int(v);
#else
  int b;
  __builtin_memcpy(&b, &v, sizeof(float));
  return b;
#endif
}
MUD_HD float float_of(int b) {
#ifdef __CUDA_ARCH__
  return __int_as_float(b);
#else
  float v;
  __builtin_memcpy(&v, &b, sizeof(float));
  return v;
#endif
}
MUD_HD int select_i(bool c, int a, int b) {
  const int m = -int(c);
  return (a & m) | (b & ~m);
}
MUD_HD float select_f(bool c, float a, float b) { return float_of(select_i(c, bits_of(a), bits_of(b))); }

// 2^y for float y, branch-free: 2^round(y) from the exponent bits times a degree-5 polynomial of
// the rest f in [-0.5, 0.5] (least squares on Chebyshev nodes: relative error below 3e-7); 0 below
// 2^-126, +inf from 2^128. Needs round-to-nearest float arithmetic, without reassociation.
MUD_HD_INLINED float exp2_poly(float y) {
  const float v = select_f(y > 129.0f, 129.0f, select_f(y < -127.0f, -127.0f, y));  // NaN: -127
  const float shifted = v + 12582912.0f;  // 1.5 * 2^23 + round(v): round(v) in the low mantissa bits
  const float n = shifted - 12582912.0f;
  const float f = v - n;
  float p = 1.3266971e-3f;
  p = p * f + 9.6754599e-3f;
  p = p * f + 5.5507425e-2f;
  p = p * f + 2.4022122e-1f;
  p = p * f + 6.9314694e-1f;
  p = p * f + 1.0000001f;
  const int e = bits_of(shifted) - 0x4b400000 + 127;  // round(v) + 127 in [0, 256]: 0 -> 0.0, 255, 256 -> +inf
  return p * float_of(select_i(e < 1, 0, select_i(e > 255, 255, e)) << 23);
}

// log2(x) for normal x > 0, branch-free, without a division: the exponent bits plus x' P(x') for
// the mantissa m = 1 + x' in [sqrt(1/2), sqrt(2)), P of degree 8 (least squares on Chebyshev nodes:
// absolute error below 1e-7).
MUD_HD_INLINED float log2_poly(float x) {
  const int bits = bits_of(x);
  const int above = (bits & 0x7fffff) > 0x3504f3;  // mantissa above sqrt(2): take m / 2
  const int e = ((bits >> 23) & 0xff) - 127 + above;
  const float t = float_of((bits & 0x7fffff) | ((127 - above) << 23)) - 1.0f;
  float p = 1.2614846e-1f;
  p = p * t - 2.0742103e-1f;
  p = p * t + 2.1566986e-1f;
  p = p * t - 2.3892035e-1f;
  p = p * t + 2.8791833e-1f;
  p = p * t - 3.6070484e-1f;
  p = p * t + 4.8091060e-1f;
  p = p * t - 7.2134733e-1f;
  p = p * t + 1.4426950f;
  return float(e) + t * p;
}

// FIDT (Liang et al.): 1 / (D^(alpha D + beta) + c) at the distance D >= 0 (px) to the nearest
// head; 0 for D = +inf (no heads) and where it falls below zero_below. D^0 = 1, also at D = 0.
MUD_HD_INLINED float fidt_value(float dist, const MapTransform& t) {
  const float e = t.alpha * dist + t.beta;
  // D below the normal floats: D^e is 0 for e > 0 anyway
  const float lg = log2_poly(select_f(dist < 1.17549435e-38f, 1.17549435e-38f, dist));
  const float y = select_f(e == 0.0f, 0.0f, select_f(dist == 0.0f, -INFINITY, e * lg));
  const float p = exp2_poly(y);
#if defined(__CUDA_ARCH__) || defined(MUD_IKNN_CUDA_EMULATION)
  const float v = __fdividef(1.0f, p + t.c);
#else
  const float v = 1.0f / (p + t.c);
#endif
  return select_f((dist < INFINITY) & (v >= t.zero_below), v, 0.0f);
}

// On the GPU (and its emulator) with the special function unit's reciprocal and reciprocal square
// root (within 2 ulp).
MUD_HD_INLINED float apply_transform(float dist, const MapTransform& t) {
  const int transform = t.kind;
#if defined(__CUDA_ARCH__) || defined(MUD_IKNN_CUDA_EMULATION)
  if (transform == kInverse) return __fdividef(1.0f, dist + 1.0f);
  if (transform == kInverseSqrt) return rsqrtf(dist + 1.0f);
#else
  if (transform == kInverse) return 1.0f / (dist + 1.0f);
  if (transform == kInverseSqrt) return 1.0f / sqrtf(dist + 1.0f);
#endif
  if (transform == kFidt) return fidt_value(dist, t);
  return dist;
}

// The pixel that holds coordinate v: pixel j is centred at j and covers [j - 0.5, j + 0.5), so
// floor(v + 0.5), taken exactly (v + 0.5 itself can round up: 0.5 - 2^-25 + 0.5 is 1.0f). The
// density and count maps place a head by it (the kNN maps measure from the same centres).
MUD_HD float nearest_pixel(float v) {
  const float f = floorf(v);
  return v - f >= 0.5f ? f + 1.0f : f;  // v - f is exact
}

// Discrete Gaussian radius of scipy.ndimage.gaussian_filter, int(truncate * sigma + 0.5) in double
// as there (in float the product can round up to a half-integer: 3 * 0.8333333f gives 2.5, r = 3
// where scipy's r is 2); 0 for sigma <= 1e-15 (a delta).
MUD_HD int gaussian_radius(float sigma, float truncate) {
  return sigma <= 1e-15f ? 0 : int(double(truncate) * double(sigma) + 0.5);
}

// Radius beyond which a Gaussian's normalisation, the sum of exp(-t^2 / (2 sigma^2)) over integer t
// in [-r, r], is taken in closed form rather than term by term (2r + 1 exps per head: seconds for
// the widest allowed kernels). sigma > r / truncate >= 655 there.
constexpr int kLongGaussianRadius = 1 << 16;

// That sum for r > kLongGaussianRadius: the integral plus the Euler-Maclaurin end corrections f(r)
// and -(r / (6 sigma^2)) f(r). The next correction is below 1e-9 of the sum there and the
// remainder, of order exp(-2 pi^2 sigma^2), vanishes: within 1e-15 of the term-by-term sum.
MUD_HD double long_gaussian_norm(double sigma, int r) {
  const double a = double(r) / sigma, end = exp(-0.5 * a * a);
  return sigma * 2.5066282746310002 * erf(a * 0.70710678118654752) + end - a / (6.0 * sigma) * end;
}

constexpr float kMaxSigma = 1e7f;  // widest Gaussian a density kernel stamps (keeps radii in int range)

// Radius of the Gaussian of head (x, y) on a height x width map, or -1 when it stamps nothing there:
// non-finite coordinates, sigma outside [0, kMaxSigma] or NaN, or a kernel that misses the map
// (which also keeps the integer casts of the coordinates in range).
MUD_HD int stamp_radius(float x, float y, float sigma, float truncate, int height, int width) {
  if (!(is_finite(x) && is_finite(y) && sigma >= 0.0f && sigma <= kMaxSigma)) return -1;
  const int r = gaussian_radius(sigma, truncate);
  const double px = nearest_pixel(x), py = nearest_pixel(y);  // integers: exact in double, as is px + r
  if (px + r < 0.0 || px - r >= double(width) || py + r < 0.0 || py - r >= double(height)) return -1;
  return r;
}

// One head's discrete Gaussian on a height x width map: its centre pixel (cx, cy), the columns
// [xa, xb) and rows [ya, yb) of the map it covers (empty when it stamps nothing), its radius r and
// scale = -1 / (2 sigma^2) (0 for a delta): weight(t) = exp(scale t^2) / normalisation.
struct Stamp {
  int64_t cx = 0, cy = 0, xa = 0, xb = 0, ya = 0, yb = 0;
  int r = -1;
  double scale = 0.0;
  MUD_HD bool empty() const { return xa >= xb || ya >= yb; }
};

MUD_HD Stamp stamp_of(float x, float y, float sigma, float truncate, int height, int width) {
  Stamp s;
  s.r = stamp_radius(x, y, sigma, truncate, height, width);
  if (s.r < 0) return s;
  // stamp_radius keeps the centre pixel within r of the map: these int64 sums cannot overflow.
  s.cx = int64_t(nearest_pixel(x));
  s.cy = int64_t(nearest_pixel(y));
  s.xa = s.cx - s.r > 0 ? s.cx - s.r : 0;
  s.xb = s.cx + s.r + 1 < width ? s.cx + s.r + 1 : width;
  s.ya = s.cy - s.r > 0 ? s.cy - s.r : 0;
  s.yb = s.cy + s.r + 1 < height ? s.cy + s.r + 1 : height;
  s.scale = s.r == 0 ? 0.0 : -0.5 / (double(sigma) * double(sigma));
  return s;
}

// A share of the normalisation of a non-empty stamp of width `sigma` (the sum of exp(scale t^2) over
// integer t in [-r, r]) for one of `parts` workers that add their shares: part p sums t = -r + p,
// -r + p + parts, ...; past kLongGaussianRadius part 0 takes the closed form and the others 0.
MUD_HD double gaussian_norm_share(const Stamp& st, float sigma, int part, int parts) {
  if (st.r > kLongGaussianRadius) return part == 0 ? long_gaussian_norm(sigma, st.r) : 0.0;
  double sum = 0.0;
  for (int t = -st.r + part; t <= st.r; t += parts) sum += exp(st.scale * double(t) * double(t));
  return sum;
}

// ---- entry points ------------------------------------------------------------------------------
// Each kernel takes one argument struct, declared here once and bound once (label_bindings.h);
// pointers are host pointers for *_cpu, device pointers for *_cuda.

// Packed head points: image b owns xy[2 * offsets[b], 2 * offsets[b + 1]).
struct PackedPoints {
  const float* xy = nullptr;          // (count, 2) float32 (x, y)
  const int64_t* offsets = nullptr;   // (batch + 1) int64
  int64_t batch = 0;
  int64_t count = 0;
};

// kNN distance / ikNN / FIDT maps: out (batch, height, width) <- transform(mean of the min(k, N)
// nearest distances, each clipped at max_distance).
struct KnnArgs {
  PackedPoints points;
  int64_t height = 0, width = 0;
  int k = 1;
  float max_distance = INFINITY;
  MapTransform transform;
  float* out = nullptr;
};

// Adaptive sigmas: out (count) <- beta * mean distance to the k nearest other heads.
struct SigmaArgs {
  PackedPoints points;
  int64_t height = 0, width = 0;
  int k = 3;
  float beta = 0.3f;
  float* out = nullptr;
};

// Density maps: out (batch, height, width) <- the heads' discrete Gaussians of widths sigmas (count).
// Writes every pixel of `out` (which may arrive uninitialised); deterministic.
struct DensityArgs {
  PackedPoints points;
  const float* sigmas = nullptr;
  int64_t height = 0, width = 0;
  float truncate = 4.0f;
  float* out = nullptr;
};

// Count maps: out (batch, ceil(height / stride), ceil(width / stride)) <- per cell, the heads whose
// pixel (nearest_pixel(x), nearest_pixel(y)) lies in the map and in the cell (pixel / stride). Writes
// every cell; deterministic (sums of ones, exact below 2^24 heads a cell).
struct CountArgs {
  PackedPoints points;
  int64_t height = 0, width = 0;
  int stride = 1;
  float* out = nullptr;
};

// Where a CUDA kernel runs: its device workspace (sized by the *_workspace_bytes function of the
// op), the stream (a cudaStream_t) and the device index.
struct CudaCall {
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
  void* stream = nullptr;
  int device = 0;
};

void knn_maps_cpu(const KnnArgs& a, int threads);
void head_sigmas_cpu(const SigmaArgs& a, int threads);
void density_maps_cpu(const DensityArgs& a, int threads);
void count_maps_cpu(const CountArgs& a, int threads);

#ifdef MUD_IKNN_WITH_CUDA
// Bytes of device workspace each CUDA kernel needs for these arguments.
int64_t knn_maps_workspace_bytes(const KnnArgs& a);
int64_t head_sigmas_workspace_bytes(const SigmaArgs& a);
int64_t density_maps_workspace_bytes(const DensityArgs& a);
int64_t count_maps_workspace_bytes(const CountArgs& a);
void knn_maps_cuda(const KnnArgs& a, const CudaCall& call);
void head_sigmas_cuda(const SigmaArgs& a, const CudaCall& call);
void density_maps_cuda(const DensityArgs& a, const CudaCall& call);
void count_maps_cuda(const CountArgs& a, const CudaCall& call);
#endif

}  // namespace mud_iknn
