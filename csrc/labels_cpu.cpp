// CPU label engine on a pool of threads: kNN maps tile by tile from candidate heads pruned down a
// quadtree of each map; head sigmas by the CUDA kernels' grid search.
#include <sys/mman.h>

#include <atomic>
#include <thread>
#include <vector>

#include "cpu_clones.h"
#include "labels.h"
#include "parallel.h"

namespace mud_iknn {
namespace {

constexpr int kCpuTile = 16;  // pixels per side of the tile that shares candidate heads

// Loops over a row of a tile, vectorised by OpenMP SIMD directives (-fopenmp-simd: no runtime).
#define MUD_PRAGMA(x) _Pragma(#x)
#define MUD_SIMD MUD_PRAGMA(omp simd)
#define MUD_SIMD_REDUCE_OR(v) MUD_PRAGMA(omp simd reduction(| : v))
#define MUD_SIMD_REDUCE_AND(v) MUD_PRAGMA(omp simd reduction(& : v))

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

// A node of an image's quadtree: the pixels [x0, x0 + side) x [y0, y0 + side) of the map, clipped to
// it. side is kCpuTile times a power of two; the leaves are kCpuTile tiles.
struct Node {
  int64_t x0, y0, side;
};

// Candidate heads of a node: (x[i], y[i]) for i < n (the arrays are reused buffers, n <= their size).
struct Candidates {
  std::vector<float> x, y;
  int64_t n = 0;
  void reserve(int64_t m) {
    if (int64_t(x.size()) < m) {
      x.resize(m);
      y.resize(m);
    }
  }
};

constexpr float kPrunePad = 2e-5f;  // relative padding of the pruning tests: a few ulp of each squared distance

// The heads (hx, hy)[0, m) that can be one of the k nearest of a pixel of `node` and nearer than
// `clip` to it, into `kept`. The k heads whose farthest pixel of the node is nearest ("rivals") lie
// within that distance of every pixel: a head that each rival beats at every pixel is no pixel's
// neighbour. A rival beats a head everywhere when it beats it at the node's four corner pixels (the difference
// of the two squared distances is affine in the pixel), with a margin for rounding (padded by both
// heads' farthest squared distances, which bound every pixel's): the kept heads are a superset of
// the exact ones. So are the heads farther than clip from every pixel, where distances clip alike.
MUD_CPU_CLONES void prune(const float* hx, const float* hy, int64_t m, const Node& node, int64_t height,
                         int64_t width, int k, float clip, Candidates& kept) {
  const float x0 = float(node.x0), x1 = float(std::min(node.x0 + node.side, width) - 1);
  const float y0 = float(node.y0), y1 = float(std::min(node.y0 + node.side, height) - 1);
  // Heads a block of kBlock at a time, copied so that every loop runs the whole block (the lanes past
  // the end hold zeros, which the last step ignores) and vectorises without a remainder.
  constexpr int kBlock = 16;
  const auto load = [&](int64_t i0, float* bx, float* by) {
    const int len = int(std::min<int64_t>(kBlock, m - i0));
    for (int i = 0; i < kBlock; ++i) {
      bx[i] = i < len ? hx[i0 + i] : 0.0f;
      by[i] = i < len ? hy[i0 + i] : 0.0f;
    }
    return len;
  };
  // The rivals, ascending by their farthest squared distance (fewer than k: no head is beaten).
  float far2[kMaxK], rx[kMaxK], ry[kMaxK];
  int rivals = 0;
  for (int64_t i0 = 0; i0 < m; i0 += kBlock) {
    float bx[kBlock], by[kBlock], f[kBlock];
    const int len = load(i0, bx, by);
    // A block none of whose heads is nearer than the k-th rival so far is skipped in one test (once
    // the rivals settle, most blocks of a large node).
    const float worst = rivals == k ? far2[k - 1] : INFINITY;
    int nearer = 0;
    MUD_SIMD_REDUCE_OR(nearer)
    for (int i = 0; i < kBlock; ++i) {
      f[i] = select_f(i < len, rect_far2(bx[i], by[i], x0, x1, y0, y1), INFINITY);
      nearer |= f[i] < worst;
    }
    if (!nearer) continue;
    for (int i = 0; i < len; ++i) {
      if (rivals == k && !(f[i] < far2[k - 1])) continue;
      int at = rivals < k ? rivals++ : k - 1;
      for (; at > 0 && f[i] < far2[at - 1]; --at) {
        far2[at] = far2[at - 1];
        rx[at] = rx[at - 1];
        ry[at] = ry[at - 1];
      }
      far2[at] = f[i];
      rx[at] = bx[i];
      ry[at] = by[i];
    }
  }
  const float clip2 = clip * clip * (1.0f + kPrunePad) + 1e-30f;
  kept.reserve(m);
  float* kx = kept.x.data();
  float* ky = kept.y.data();
  int64_t n = 0;
  for (int64_t i0 = 0; i0 < m; i0 += kBlock) {
    float bx[kBlock], by[kBlock];
    const int len = load(i0, bx, by);
    int keep[kBlock], beaten[kBlock];  // beaten: by every rival, at every pixel
    float head_far2[kBlock];
    MUD_SIMD
    for (int i = 0; i < kBlock; ++i) {
      keep[i] = rect_near2(bx[i], by[i], x0, x1, y0, y1) <= clip2;
      beaten[i] = rivals == k;
      head_far2[i] = rect_far2(bx[i], by[i], x0, x1, y0, y1);
    }
    for (int j = 0; j < rivals && rivals == k; ++j) {
      const float e = rx[j] - x0, f = rx[j] - x1, g = ry[j] - y0, h = ry[j] - y1, rival_far2 = far2[j];
      MUD_SIMD
      for (int i = 0; i < kBlock; ++i) {
        const float a = bx[i] - x0, b = bx[i] - x1, c = by[i] - y0, d = by[i] - y1;
        // the head's squared distance minus the rival's at the corners, from x and y parts
        const float u0 = a * a - e * e, u1 = b * b - f * f, v0 = c * c - g * g, v1 = d * d - h * h;
        const float closest = min_f(min_f(u0 + v0, u0 + v1), min_f(u1 + v0, u1 + v1));
        beaten[i] &= closest > (head_far2[i] + rival_far2) * kPrunePad + 1e-30f;
      }
    }
    for (int i = 0; i < len; ++i) {
      kx[n] = bx[i];
      ky[n] = by[i];
      n += keep[i] & !beaten[i];
    }
  }
  kept.n = n;
}

// values = transform(sum * scale), a row of a tile, with the transform's kind known to the compiler
// (so that apply_transform's branches fold and the loop vectorises; FIDT's powers are polynomials:
// labels.h). Inlined into its caller's clone: a call per row through the clones' dispatch cost
// as much as a k = 1 row's search.
template <int kind>
__attribute__((always_inline)) inline void transform_row(const float* sum, float scale, const MapTransform& transform,
                                                         float* values) {
  MapTransform t = transform;  // a local copy: its kind is a constant, and the row's stores cannot alias it
  t.kind = kind;
  MUD_SIMD
  for (int tx = 0; tx < kCpuTile; ++tx) values[tx] = apply_transform(sum[tx] * scale, t);
}

constexpr int kRegisterK = 4;  // k up to this have tile rows of their own, their lists in registers

struct TileHead {
  float centre_d2;  // squared distance to the tile centre
  float x, y;
};

// The rows [y0, y0 + th) of a tile whose first column is x0 (tw columns), from its candidates
// heads[0, m): each pixel's k nearest, the mean of the `used` nearest clipped at `clip`, transformed,
// into `map`. K > 0 is k = used known to the compiler (the lists then live in registers); K = 0
// takes k and used.
template <int K>
__attribute__((always_inline)) inline void tile_rows(const TileHead* heads, int64_t m, int k_runtime,
                                                     int used_runtime, int64_t x0, int64_t y0, int tw, int th,
                                                     float clip, const MapTransform& transform, int64_t width,
                                                     float* map) {
  const int k = K > 0 ? K : k_runtime, used = K > 0 ? K : used_runtime;
  // kCpuTile wide so that every loop vectorises: columns past the tile's edge see +inf candidates,
  // which never enter a list. Slot i of column tx is slots[i * kCpuTile + tx].
  float fx[kCpuTile];
  for (int tx = 0; tx < kCpuTile; ++tx) fx[tx] = tx < tw ? float(x0 + tx) : INFINITY;
  const float inv_used = 1.0f / float(used);
  float slots[(K > 0 ? K : kMaxK) * kCpuTile];
  float* kth = slots + (k - 1) * kCpuTile;
  // A row whose every distance is clipped (FIDT's zeroed reach, say) takes its value from the
  // transform once (the sum of `used` clips, as the rows add them) rather than per pixel; without
  // candidates (every head beyond clip of the tile) the rows are alike: the first, copied.
  float clipped_sum = 0.0f;
  for (int i = 0; i < used; ++i) clipped_sum += clip;
  const float clipped_value = apply_transform(clipped_sum * inv_used, transform);
  const int rows = m == 0 ? 1 : th;
  for (int ty = 0; ty < rows; ++ty) {
    std::fill(slots, slots + k * kCpuTile, INFINITY);
    const float py = float(y0 + ty);
    for (int64_t c = 0; c < m; ++c) {
      const float hx = heads[c].x, dy = heads[c].y - py, dy2 = dy * dy;
      float d2[kCpuTile];
      int closer = 0;
      MUD_SIMD_REDUCE_OR(closer)
      for (int tx = 0; tx < kCpuTile; ++tx) {
        const float dx = hx - fx[tx];
        d2[tx] = dx * dx + dy2;
        closer |= d2[tx] < kth[tx];
      }
      // A row no list of which the candidate enters skips it where k is large; the lists of a small k
      // sit in registers, where inserting costs less than the test's mispredicted branch.
      if (K == 0 && !closer) continue;
      // Every column's list takes the candidate: where it is not nearer the list stays as it was, so
      // the insertion runs branch-free across the row, a slot at a time.
      for (int i = k - 1; i > 0; --i) {
        MUD_SIMD
        for (int tx = 0; tx < kCpuTile; ++tx)
          slots[i * kCpuTile + tx] = max_f(slots[(i - 1) * kCpuTile + tx], min_f(slots[i * kCpuTile + tx], d2[tx]));
      }
      MUD_SIMD
      for (int tx = 0; tx < kCpuTile; ++tx) slots[tx] = min_f(slots[tx], d2[tx]);
    }
    float sum[kCpuTile] = {};
    for (int i = 0; i < used; ++i) {
      MUD_SIMD
      for (int tx = 0; tx < kCpuTile; ++tx) sum[tx] += min_f(std::sqrt(slots[i * kCpuTile + tx]), clip);
    }
    // (Unclipped, a row is never all clipped: a tile with candidates has a finite distance in each.)
    int all_clipped = clip < INFINITY;
    if (all_clipped) {
      MUD_SIMD_REDUCE_AND(all_clipped)
      for (int tx = 0; tx < kCpuTile; ++tx) all_clipped &= sum[tx] == clipped_sum;
    }
    float values[kCpuTile];
    if (all_clipped) {
      std::fill(values, values + kCpuTile, clipped_value);
    } else {
      switch (transform.kind) {
        case kInverse: transform_row<kInverse>(sum, inv_used, transform, values); break;
        case kInverseSqrt: transform_row<kInverseSqrt>(sum, inv_used, transform, values); break;
        case kFidt: transform_row<kFidt>(sum, inv_used, transform, values); break;
        default: transform_row<kDistance>(sum, inv_used, transform, values);
      }
    }
    float* row = map + (y0 + ty) * width + x0;
    if (tw == kCpuTile) {
      std::copy(values, values + kCpuTile, row);
    } else {
      std::copy(values, values + tw, row);
    }
  }
  for (int ty = rows; ty < th; ++ty) std::copy(map + y0 * width + x0, map + y0 * width + x0 + tw, map + (y0 + ty) * width + x0);
}

// One kCpuTile x kCpuTile tile of one image's kNN map from its candidate heads (hx, hy)[0, m);
// n: the image's head count.
MUD_CPU_CLONES void knn_tile(const float* hx, const float* hy, int64_t m, int64_t n, int64_t height, int64_t width,
                            int64_t x0, int64_t y0, int k, float clip, const MapTransform& transform, float* map) {
  const int64_t x1 = std::min<int64_t>(x0 + kCpuTile, width), y1 = std::min<int64_t>(y0 + kCpuTile, height);
  const int tw = int(x1 - x0), th = int(y1 - y0);
  if (n == 0) {
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t x = x0; x < x1; ++x) map[y * width + x] = apply_transform(INFINITY, transform);
    return;
  }
  thread_local std::vector<TileHead> heads;
  heads.resize(m);
  const float cx = 0.5f * float(x0 + x1 - 1), cy = 0.5f * float(y0 + y1 - 1);
  for (int64_t i = 0; i < m; ++i) {
    const float dx = hx[i] - cx, dy = hy[i] - cy;
    heads[i] = {dx * dx + dy * dy, hx[i], hy[i]};
  }
  // For a large k, the candidates nearest to the tile centre first: the lists then settle after a
  // few, and the later ones mostly skip the insertion (a small k inserts every one).
  if (k > kRegisterK)
    std::sort(heads.begin(), heads.end(),
              [](const TileHead& a, const TileHead& c) { return a.centre_d2 < c.centre_d2; });
  const int used = int(std::min<int64_t>(k, n));
  // The small k of the method's maps with their lists in registers (up to kRegisterK), any other k
  // (or fewer heads than k) as it comes.
  switch (used == k ? k : 0) {
    case 1: return tile_rows<1>(heads.data(), m, k, used, x0, y0, tw, th, clip, transform, width, map);
    case 2: return tile_rows<2>(heads.data(), m, k, used, x0, y0, tw, th, clip, transform, width, map);
    case 3: return tile_rows<3>(heads.data(), m, k, used, x0, y0, tw, th, clip, transform, width, map);
    case 4: return tile_rows<4>(heads.data(), m, k, used, x0, y0, tw, th, clip, transform, width, map);
    default: return tile_rows<0>(heads.data(), m, k, used, x0, y0, tw, th, clip, transform, width, map);
  }
}

// Everything one image's map needs from the call.
struct KnnImage {
  int64_t n;  // the image's head count
  int64_t height, width;
  int k;
  float clip;
  MapTransform transform;
  float* map;
};

// The quadtree's nodes of at most `side` pixels a side under `node`, each with its candidates
// pruned from (hx, hy)[0, m) level by level, appended to `tasks`.
void split_nodes(const float* hx, const float* hy, int64_t m, const Node& node, int64_t side, const KnnImage& im,
                 std::vector<std::pair<Node, Candidates>>& tasks) {
  const int64_t half = node.side / 2;
  for (int q = 0; q < 4; ++q) {
    const Node child{node.x0 + (q & 1) * half, node.y0 + (q >> 1) * half, half};
    if (child.x0 >= im.width || child.y0 >= im.height) continue;
    Candidates kept;
    prune(hx, hy, m, child, im.height, im.width, im.k, im.clip, kept);
    kept.x.resize(kept.n);
    kept.y.resize(kept.n);
    if (half <= side) {
      tasks.emplace_back(child, std::move(kept));
    } else {
      split_nodes(kept.x.data(), kept.y.data(), kept.n, child, side, im, tasks);
    }
  }
}

// The map under `node` from its candidates (hx, hy)[0, m): depth-first down to the tiles, each
// level's candidates in levels[depth].
void knn_node(const float* hx, const float* hy, int64_t m, const Node& node, int depth, const KnnImage& im,
              std::vector<Candidates>& levels) {
  if (node.side <= kCpuTile) {
    knn_tile(hx, hy, m, im.n, im.height, im.width, node.x0, node.y0, im.k, im.clip, im.transform, im.map);
    return;
  }
  if (int(levels.size()) <= depth) levels.resize(depth + 1);
  const int64_t half = node.side / 2;
  for (int q = 0; q < 4; ++q) {
    const Node child{node.x0 + (q & 1) * half, node.y0 + (q >> 1) * half, half};
    if (child.x0 >= im.width || child.y0 >= im.height) continue;
    prune(hx, hy, m, child, im.height, im.width, im.k, im.clip, levels[depth]);
    // levels[depth] keeps its buffers while the deeper levels grow `levels`.
    const Candidates& kept = levels[depth];
    knn_node(kept.x.data(), kept.y.data(), kept.n, child, depth + 1, im, levels);
  }
}

// Asks the kernel for transparent huge pages under out[0, floats) where it is fresh memory: a map
// then costs one page fault per 2 MiB rather than per 4 KiB when it is first written (a third of
// a large map's time otherwise). Only whole huge pages inside the buffer are advised.
void advise_huge_pages(float* out, int64_t floats) {
#ifdef MADV_HUGEPAGE
  const uintptr_t huge = uintptr_t(1) << 21;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(out) + huge - 1) & ~(huge - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(out + floats) & ~(huge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // advice: failure is harmless
#else
  (void)out;
  (void)floats;
#endif
}

// knn_maps_cpu: each image's quadtree from a root covering the map, its candidates all the image's
// heads; its nodes of `task` pixels a side (pruned on the way down) are the threads' tasks, as
// large as keeps every thread busy.
void knn_maps_quadtree(const KnnArgs& a, int threads) {
  const float* points = a.points.xy;
  const int64_t* offsets = a.points.offsets;
  const int64_t batch = a.points.batch, count = a.points.count, height = a.height, width = a.width;
  const int k = a.k;
  float* out = a.out;
  advise_huge_pages(out, batch * height * width);
  int64_t root = kCpuTile;
  while (root < std::max(height, width)) root *= 2;
  int64_t task = 16 * kCpuTile;
  const auto tasks_of = [&](int64_t side) {
    return batch * ((height + side - 1) / side) * ((width + side - 1) / side);
  };
  while (task > kCpuTile && tasks_of(task) < 4 * int64_t(threads)) task /= 2;
  std::vector<KnnImage> images(batch);
  std::vector<std::vector<std::pair<Node, Candidates>>> tasks(batch);
  parallel_for(batch, threads, [&](int64_t b) {
    int64_t s, e;
    image_range(offsets, b, count, &s, &e);
    images[b] = KnnImage{e - s, height, width, k, a.max_distance, a.transform, out + b * height * width};
    Candidates all;
    all.reserve(e - s);
    all.n = e - s;
    for (int64_t i = s; i < e; ++i) {
      all.x[i - s] = points[2 * i];
      all.y[i - s] = points[2 * i + 1];
    }
    const Node top{0, 0, root};
    if (root <= task) {
      tasks[b].emplace_back(top, std::move(all));
    } else {
      split_nodes(all.x.data(), all.y.data(), all.n, top, task, images[b], tasks[b]);
    }
  });
  std::vector<std::pair<int64_t, int64_t>> order;  // (image, task)
  for (int64_t b = 0; b < batch; ++b)
    for (size_t t = 0; t < tasks[b].size(); ++t) order.emplace_back(b, int64_t(t));
  parallel_for(int64_t(order.size()), threads, [&](int64_t i) {
    const auto& [b, t] = order[i];
    const auto& [node, cands] = tasks[b][t];
    thread_local std::vector<Candidates> levels;
    knn_node(cands.x.data(), cands.y.data(), cands.n, node, 0, images[b], levels);
  });
}

}  // namespace

void knn_maps_cpu(const KnnArgs& a, int threads) { knn_maps_quadtree(a, threads); }

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
  // A thread per million cells and heads at most: a batch of small maps is quicker on one.
  const int64_t s = a.stride, rows = (a.height + s - 1) / s, cols = (a.width + s - 1) / s;
  const float fh = float(a.height), fw = float(a.width);  // pixels below 2^24: exact
  const int workers = threads_for(a.points.batch * rows * cols + a.points.count, int64_t(1) << 20, threads);
  parallel_for(a.points.batch, workers, [&](int64_t b) {
    float* map = a.out + b * rows * cols;
    std::fill(map, map + rows * cols, 0.0f);
    int64_t begin, end;
    image_range(a.points.offsets, b, a.points.count, &begin, &end);
    for (int64_t i = begin; i < end; ++i) {
      const float x = nearest_pixel(a.points.xy[2 * i]), y = nearest_pixel(a.points.xy[2 * i + 1]);
      if (!(x >= 0.0f && x < fw && y >= 0.0f && y < fh)) continue;  // outside the map (or NaN)
      map[(int64_t(y) / s) * cols + int64_t(x) / s] += 1.0f;
    }
  });
}

}  // namespace mud_iknn
