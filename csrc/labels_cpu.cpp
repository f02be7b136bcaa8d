// CPU label engine: the same grid search as the CUDA kernels, tile by tile, on a pool of threads.
#include <atomic>
#include <thread>
#include <vector>

#include "labels.h"
#include "parallel.h"

namespace mud_iknn {
namespace {

constexpr int kCpuTile = 16;  // pixels per side of the tile that shares candidate heads

// Loops over a row of a tile, vectorised by OpenMP SIMD directives (-fopenmp-simd: no runtime).
#define MUD_PRAGMA(x) _Pragma(#x)
#define MUD_SIMD MUD_PRAGMA(omp simd)
#define MUD_SIMD_REDUCE_MAX(v) MUD_PRAGMA(omp simd reduction(max : v))
#define MUD_SIMD_REDUCE_OR(v) MUD_PRAGMA(omp simd reduction(| : v))
#define MUD_SIMD_REDUCE_AND2(a, b) MUD_PRAGMA(omp simd reduction(& : a, b))

// Points bucketed by cell (counting sort), for every image: image b's cell c holds
// xy[start[b * G + c], start[b * G + c + 1]).
struct Grid {
  GridSpec spec;
  std::vector<int64_t> start;  // B * G + 1
  std::vector<float> xy;       // P * 2, sorted by (image, cell)

  Grid(const float* points, const int64_t* offsets, int64_t batch, int64_t count, int64_t height,
       int64_t width, int k)
      : spec(make_grid_spec(batch, count, height, width, cpu_occupancy(k))) {
    const int64_t cells = spec.cells();
    start.assign(batch * cells + 1, 0);
    std::vector<int64_t> cell_of_point(count, -1);
    for (int64_t b = 0; b < batch; ++b) {
      int64_t s, e;
      image_range(offsets, b, count, &s, &e);
      for (int64_t i = s; i < e; ++i) {
        if (cell_of_point[i] >= 0) continue;  // only reachable with overlapping (unvalidated) offsets
        const int64_t c = b * cells + int64_t(cell_of(points[2 * i + 1], spec.cell, spec.gy)) * spec.gx +
                          cell_of(points[2 * i], spec.cell, spec.gx);
        cell_of_point[i] = c;
        ++start[c + 1];
      }
    }
    for (size_t c = 1; c < start.size(); ++c) start[c] += start[c - 1];
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    xy.resize(2 * start.back());
    for (int64_t i = 0; i < count; ++i) {
      if (cell_of_point[i] < 0) continue;
      const int64_t at = fill[cell_of_point[i]]++;
      xy[2 * at] = points[2 * i];
      xy[2 * at + 1] = points[2 * i + 1];
    }
  }

  // Calls fn(x, y) for every point of image b in the cells of `now` that are not in `before`;
  // returns how many.
  template <class Fn>
  int64_t visit_ring(int64_t b, const CellBlock& now, const CellBlock& before, bool first, Fn fn) const {
    const int64_t* row_start = start.data() + b * spec.cells();
    int64_t visited = 0;
    for (int y = now.y0; y <= now.y1; ++y) {
      const RowSpans spans = ring_spans(y, now, before, first);
      for (int s = 0; s < spans.count; ++s) {
        const int64_t lo = row_start[int64_t(y) * spec.gx + (s == 0 ? spans.lo0 : spans.lo1)];
        const int64_t hi = row_start[int64_t(y) * spec.gx + (s == 0 ? spans.hi0 : spans.hi1) + 1];
        for (int64_t i = lo; i < hi; ++i) fn(xy[2 * i], xy[2 * i + 1]);
        visited += hi - lo;
      }
    }
    return visited;
  }
};

// Inserts v into the ascending list[0, k) (`stride` floats apart), dropping the largest, without
// branches: list'[i] = max(list[i-1], min(list[i], v)), top down. Returns the new k-th smallest.
inline float push_sorted(float* list, int k, int stride, float v) {
  for (int i = k - 1; i > 0; --i)
    list[i * stride] = max_f(list[(i - 1) * stride], min_f(list[i * stride], v));
  list[0] = min_f(list[0], v);
  return list[(k - 1) * stride];
}

// The largest of values[0, n) (n <= kCpuTile), vectorised (the order of a max does not matter).
inline float largest(const float* values, int n) {
  float m = -INFINITY;
  MUD_SIMD_REDUCE_MAX(m)
  for (int i = 0; i < n; ++i) m = max_f(m, values[i]);
  return m;
}

// The transform step: row[0, n) <- transform(dist[0, n)), FIDT's in a SIMD loop (its powers are
// polynomials: labels.h).
inline void write_transformed(float* row, const float* dist, int n, const MapTransform& transform) {
  if (transform.kind == kFidt) {
    const MapTransform t = transform;  // a copy: the row's stores cannot alias it (no reloads per pixel)
    MUD_SIMD
    for (int i = 0; i < n; ++i) row[i] = fidt_value(dist[i], t);
    return;
  }
  for (int i = 0; i < n; ++i) row[i] = apply_transform(dist[i], transform);
}

struct RingHead {
  float centre_d2;  // squared distance to the tile centre
  float x, y;
};

// One kCpuTile x kCpuTile tile of one image's kNN map.
void knn_tile(const Grid& grid, int64_t b, int64_t n, int64_t height, int64_t width, int64_t x0, int64_t y0,
              int k, float clip, const MapTransform& transform, float* out) {
  const GridSpec& g = grid.spec;
  const int64_t x1 = std::min<int64_t>(x0 + kCpuTile, width), y1 = std::min<int64_t>(y0 + kCpuTile, height);
  const int tw = int(x1 - x0), th = int(y1 - y0);
  float* map = out + b * height * width;
  if (n == 0) {
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t x = x0; x < x1; ++x) map[y * width + x] = apply_transform(INFINITY, transform);
    return;
  }
  // Lists and k-th distances are laid out kCpuTile wide; the columns past the tile's edge hold -inf
  // k-th distances and see +inf candidates, so every row loop runs kCpuTile wide and vectorises.
  // Slot i of the pixels of row ty is best[(ty * k + i) * kCpuTile + tx]: contiguous per slot.
  float best[kCpuTile * kCpuTile * kMaxK];
  float kth[kCpuTile * kCpuTile];
  std::fill(best, best + kCpuTile * kCpuTile * k, INFINITY);
  for (int ty = 0; ty < kCpuTile; ++ty)
    for (int tx = 0; tx < kCpuTile; ++tx) kth[ty * kCpuTile + tx] = tx < tw ? INFINITY : -INFINITY;
  float fx[kCpuTile], pad[kCpuTile];  // pad: +inf past the tile's edge, where no candidate may enter a list
  for (int tx = 0; tx < kCpuTile; ++tx) {
    fx[tx] = float(x0 + tx);
    pad[tx] = tx < tw ? 0.0f : INFINITY;
  }
  const int cx0 = cell_of(float(x0), g.cell, g.gx), cx1 = cell_of(float(x1 - 1), g.cell, g.gx);
  const int cy0 = cell_of(float(y0), g.cell, g.gy), cy1 = cell_of(float(y1 - 1), g.cell, g.gy);
  const float cx = 0.5f * float(x0 + x1 - 1), cy = 0.5f * float(y0 + y1 - 1);  // tile centre
  const float half_diagonal = 0.5f * std::sqrt(float((tw - 1) * (tw - 1) + (th - 1) * (th - 1)));
  thread_local std::vector<RingHead> ring_heads;
  int64_t seen = 0;
  CellBlock before{0, -1, 0, -1};
  for (int ring = 0;; ++ring) {
    const CellBlock now = grow(cx0, cx1, cy0, cy1, ring, g);
    if (ring > 0 && now.same(before)) break;  // the whole grid has been visited
    // The ring's heads, nearest to the tile centre first: the lists then settle after a few
    // candidates, later ones fail the row test below, and once a head is farther from the tile
    // than every pixel's k-th distance, so is the rest of the ring.
    ring_heads.clear();
    seen += grid.visit_ring(b, now, before, ring == 0, [&](float hx, float hy) {
      const float dx = hx - cx, dy = hy - cy;
      ring_heads.push_back({dx * dx + dy * dy, hx, hy});
    });
    std::sort(ring_heads.begin(), ring_heads.end(),
              [](const RingHead& a, const RingHead& c) { return a.centre_d2 < c.centre_d2; });
    // Rows whose worst k-th distance a candidate cannot beat skip it.
    float row_worst[kCpuTile];
    for (int ty = 0; ty < th; ++ty) row_worst[ty] = largest(kth + ty * kCpuTile, kCpuTile);
    float tile_worst = largest(row_worst, th);
    for (const RingHead& head : ring_heads) {
      // A lower bound of the head's distance to any pixel of the tile, padded against rounding (a
      // few ulp of the distance, and of the half diagonal) as the CUDA kernel's: k-th distances of
      // 1e-7 px are compared with it.
      const float near = std::sqrt(head.centre_d2) * (1.0f - 1e-5f) - half_diagonal - 1e-3f;
      if (near > 0.0f && near * near >= tile_worst) break;
      const float hx = head.x, hy = head.y;
      const float ox = max_f(max_f(float(x0) - hx, hx - float(x1 - 1)), 0.0f);
      const float ox2 = ox * ox;
      bool changed = false;
      for (int ty = 0; ty < th; ++ty) {
        const float dy = hy - float(y0 + ty);
        const float dy2 = dy * dy;
        if (dy2 + ox2 >= row_worst[ty]) continue;
        float* kth_row = kth + ty * kCpuTile;
        float d2[kCpuTile];
        int closer = 0;
        MUD_SIMD_REDUCE_OR(closer)
        for (int tx = 0; tx < kCpuTile; ++tx) {
          const float dx = hx - fx[tx];
          d2[tx] = dx * dx + dy2 + pad[tx];
          closer |= d2[tx] < kth_row[tx];
        }
        if (!closer) continue;
        // Every column's list takes the candidate: where it is not nearer the list stays as it was, so
        // the insertion runs branch-free across the row, a slot at a time.
        float* slots = best + ty * k * kCpuTile;
        for (int i = k - 1; i > 0; --i) {
          MUD_SIMD
          for (int tx = 0; tx < kCpuTile; ++tx)
            slots[i * kCpuTile + tx] = max_f(slots[(i - 1) * kCpuTile + tx], min_f(slots[i * kCpuTile + tx], d2[tx]));
        }
        MUD_SIMD
        for (int tx = 0; tx < kCpuTile; ++tx) {
          slots[tx] = min_f(slots[tx], d2[tx]);
          kth_row[tx] = min_f(kth_row[tx], slots[(k - 1) * kCpuTile + tx]);
        }
        row_worst[ty] = largest(kth_row, kCpuTile);
        changed = true;
      }
      if (changed) tile_worst = largest(row_worst, th);
    }
    before = now;
    if (seen >= n) break;
    // outside_bound of every pixel, from the column and row parts, a row of the tile at a time.
    float column_bound[kCpuTile];
    for (int tx = 0; tx < kCpuTile; ++tx) column_bound[tx] = side_bound_x(fx[tx], now, g);
    int done = 1, clip_done = 1;
    for (int ty = 0; ty < th && (done || clip_done); ++ty) {
      const float row_bound = side_bound_y(float(y0 + ty), now, g);
      const float* kth_row = kth + ty * kCpuTile;
      MUD_SIMD_REDUCE_AND2(done, clip_done)
      for (int tx = 0; tx < kCpuTile; ++tx) {  // past the tile's edge: k-th -inf, bound unused for clip
        const float bound = max_f(min_f(column_bound[tx], row_bound), 0.0f);
        done &= kth_row[tx] <= bound * bound;
        clip_done &= bound >= clip || tx >= tw;
      }
    }
    // clip_done: every unvisited head lies beyond `clip`, where its INFINITY slot clips to the same value
    if (done || clip_done) break;
  }
  const int m = int(std::min<int64_t>(k, n));
  const float inv_m = 1.0f / float(m);
  for (int ty = 0; ty < th; ++ty) {
    float sum[kCpuTile] = {};
    for (int i = 0; i < m; ++i) {
      const float* slot = best + (ty * k + i) * kCpuTile;
      for (int tx = 0; tx < kCpuTile; ++tx) sum[tx] += min_f(std::sqrt(slot[tx]), clip);
    }
    for (int tx = 0; tx < kCpuTile; ++tx) sum[tx] *= inv_m;
    write_transformed(map + (y0 + ty) * width + x0, sum, tw, transform);
  }
}

}  // namespace

void knn_maps_cpu(const KnnArgs& a, int threads) {
  const int64_t batch = a.points.batch, height = a.height, width = a.width;
  const Grid grid(a.points.xy, a.points.offsets, batch, a.points.count, height, width, a.k);
  const int64_t tiles_x = (width + kCpuTile - 1) / kCpuTile, tiles_y = (height + kCpuTile - 1) / kCpuTile;
  parallel_for(batch * tiles_y * tiles_x, threads, [&](int64_t task) {
    const int64_t b = task / (tiles_x * tiles_y), rest = task % (tiles_x * tiles_y);
    const int64_t cells = grid.spec.cells();
    const int64_t n = grid.start[(b + 1) * cells] - grid.start[b * cells];
    knn_tile(grid, b, n, height, width, (rest % tiles_x) * kCpuTile, (rest / tiles_x) * kCpuTile, a.k, a.max_distance,
             a.transform, a.out);
  });
}

void head_sigmas_cpu(const SigmaArgs& a, int threads) {
  const float* points = a.points.xy;
  const int64_t* offsets = a.points.offsets;
  const int64_t batch = a.points.batch, count = a.points.count, height = a.height, width = a.width;
  const int k = a.k;
  const float beta = a.beta;
  float* out = a.out;
  const Grid grid(points, offsets, batch, count, height, width, k + 1);
  const GridSpec& g = grid.spec;
  const float lone = float(height + width) / 8.0f;
  // Tasks of up to kHeads heads of one image, so that one large image keeps every thread busy.
  constexpr int64_t kHeads = 256;
  std::vector<int64_t> first_task(batch + 1, 0);
  for (int64_t b = 0; b < batch; ++b) {
    int64_t s, e;
    image_range(offsets, b, count, &s, &e);
    first_task[b + 1] = first_task[b] + (e - s + kHeads - 1) / kHeads;
  }
  parallel_for(first_task[batch], threads, [&](int64_t task) {
    const int64_t b = std::upper_bound(first_task.begin(), first_task.end(), task) - first_task.begin() - 1;
    int64_t s, e;
    image_range(offsets, b, count, &s, &e);
    const int64_t begin = s + (task - first_task[b]) * kHeads, end = std::min(begin + kHeads, e);
    const int64_t n = grid.start[(b + 1) * g.cells()] - grid.start[b * g.cells()];
    const int m = int(std::min<int64_t>(k, n - 1));  // other heads that enter the mean
    float list[kMaxK];
    for (int64_t i = begin; i < end; ++i) {
      const float qx = points[2 * i], qy = points[2 * i + 1];
      if (m <= 0) {
        out[i] = lone;
        continue;
      }
      std::fill(list, list + m + 1, INFINITY);
      float kth = INFINITY;
      const int cx = cell_of(qx, g.cell, g.gx), cy = cell_of(qy, g.cell, g.gy);
      int64_t seen = 0;
      CellBlock before{0, -1, 0, -1};
      for (int ring = 0;; ++ring) {
        const CellBlock now = grow(cx, cx, cy, cy, ring, g);
        if (ring > 0 && now.same(before)) break;
        seen += grid.visit_ring(b, now, before, ring == 0, [&](float hx, float hy) {
          const float dx = hx - qx, dy = hy - qy, d2 = dx * dx + dy * dy;
          if (d2 < kth) kth = push_sorted(list, m + 1, 1, d2);
        });
        before = now;
        const float bound = outside_bound(qx, qy, now, g);
        if (seen >= n || kth <= bound * bound) break;
      }
      float sum = 0.0f;
      for (int j = 1; j <= m; ++j) sum += std::sqrt(list[j]);  // list[0] is the head itself
      out[i] = beta * sum / float(m);
    }
  });
}

void density_maps_cpu(const DensityArgs& a, int threads) {
  const float* points = a.points.xy;
  const float* sigmas = a.sigmas;
  const int64_t* offsets = a.points.offsets;
  const int64_t batch = a.points.batch, count = a.points.count, height = a.height, width = a.width;
  const float truncate = a.truncate;
  float* out = a.out;
  // Per head, once: the part of the map its discrete Gaussian covers (Stamp) and its normalised
  // weights there, at weights[at[i], ...): xb - xa along x, then yb - ya along y (at most W + H a
  // head), rather than recomputed for every row band the head touches.
  std::vector<Stamp> stamps(count);
  parallel_for(count, threads, [&](int64_t i) {  // H, W < 2^31
    stamps[i] = stamp_of(points[2 * i], points[2 * i + 1], sigmas[i], truncate, int(height), int(width));
  });
  std::vector<int64_t> at(count + 1, 0);
  for (int64_t i = 0; i < count; ++i)
    at[i + 1] = at[i] + (stamps[i].empty() ? 0 : (stamps[i].xb - stamps[i].xa) + (stamps[i].yb - stamps[i].ya));
  std::vector<float> weights(at[count]);
  parallel_for(count, threads, [&](int64_t i) {
    const Stamp& st = stamps[i];
    if (st.empty()) return;
    const double inv_norm = 1.0 / gaussian_norm_share(st, sigmas[i], 0, 1);
    const auto weight = [&](int64_t t) { return float(std::exp(st.scale * double(t) * double(t)) * inv_norm); };
    float* w = weights.data() + at[i];
    for (int64_t xx = st.xa; xx < st.xb; ++xx) *w++ = weight(xx - st.cx);
    for (int64_t yy = st.ya; yy < st.yb; ++yy) *w++ = weight(yy - st.cy);
  });
  // Row bands own disjoint parts of the output, so every thread writes without contention and the
  // sums come out in a fixed order (deterministic). Each band zeroes its rows first: `out` arrives
  // uninitialised, and its first touch (page faults included) is spread over the threads.
  constexpr int64_t kBand = 16;
  const int64_t bands = (height + kBand - 1) / kBand;
  parallel_for(batch * bands, threads, [&](int64_t task) {
    const int64_t b = task / bands, y0 = (task % bands) * kBand, y1 = std::min(y0 + kBand, height);
    float* map = out + b * height * width;
    std::fill(map + y0 * width, map + y1 * width, 0.0f);
    int64_t s, e;
    image_range(offsets, b, count, &s, &e);
    for (int64_t i = s; i < e; ++i) {
      const Stamp& st = stamps[i];
      const int64_t ya = std::max(st.ya, y0), yb = std::min(st.yb, y1);
      if (st.empty() || ya >= yb) continue;
      const float* wx = weights.data() + at[i];
      const float* wy = wx + (st.xb - st.xa);
      for (int64_t yy = ya; yy < yb; ++yy) {
        const float w = wy[yy - st.ya];
        float* row = map + yy * width + st.xa;
        for (int64_t xx = 0; xx < st.xb - st.xa; ++xx) row[xx] += w * wx[xx];
      }
    }
  });
}

void count_maps_cpu(const CountArgs& a, int threads) {
  // An image per task: each writes only its own map, adding ones in packed order (deterministic).
  const int64_t s = a.stride, rows = (a.height + s - 1) / s, cols = (a.width + s - 1) / s;
  const float fh = float(a.height), fw = float(a.width);
  parallel_for(a.points.batch, threads, [&](int64_t b) {
    float* map = a.out + b * rows * cols;
    std::fill(map, map + rows * cols, 0.0f);
    int64_t begin, end;
    image_range(a.points.offsets, b, a.points.count, &begin, &end);
    for (int64_t i = begin; i < end; ++i) {
      const float x = a.points.xy[2 * i], y = a.points.xy[2 * i + 1];
      if (!(x >= 0.0f && x < fw && y >= 0.0f && y < fh)) continue;  // outside the map (or NaN)
      map[(int64_t(y) / s) * cols + int64_t(x) / s] += 1.0f;  // int64_t(v) is floor(v) for v >= 0
    }
  });
}

}  // namespace mud_iknn
