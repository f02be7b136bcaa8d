// CPU point losses: the Bayesian loss's posteriors found cell by cell with the labels.h grid search,
// and DM-Count's Sinkhorn-Knopp on the nonzero part of its kernel, on a pool of threads.
#include <algorithm>
#include <limits>
#include <vector>

#include "parallel.h"
#include "point_losses.h"

namespace mud_iknn {
namespace {

// ---- Bayesian loss ----------------------------------------------------------------------------

// One image's heads bucketed by the cells of a labels.h grid over its crop (h * s x w * s pixels);
// heads outside it fall into the margin cells, which extend to infinity.
struct HeadGrid {
  GridSpec spec{1, 1, 1};
  std::vector<int64_t> start;  // spec.cells() + 1
  std::vector<double> xy;      // heads sorted by cell
  std::vector<int64_t> index;  // their indices in the packed points
};

HeadGrid build_grid(const PointMap& m, int64_t begin, int64_t end) {
  HeadGrid g;
  const int64_t n = end - begin;
  g.spec = make_grid_spec(1, n, m.height * m.stride, m.width * m.stride, 4.0);
  std::vector<int64_t> cell_of_head(n);
  g.start.assign(g.spec.cells() + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const float x = m.points.xy[2 * (begin + i)], y = m.points.xy[2 * (begin + i) + 1];
    cell_of_head[i] = int64_t(cell_of(y, g.spec.cell, g.spec.gy)) * g.spec.gx + cell_of(x, g.spec.cell, g.spec.gx);
    ++g.start[cell_of_head[i] + 1];
  }
  for (int64_t c = 0; c < g.spec.cells(); ++c) g.start[c + 1] += g.start[c];
  std::vector<int64_t> fill(g.start.begin(), g.start.end() - 1);
  g.xy.resize(2 * n);
  g.index.resize(n);
  for (int64_t i = 0; i < n; ++i) {  // in head order within a cell: the sums below are fixed
    const int64_t at = fill[cell_of_head[i]]++;
    g.xy[2 * at] = m.points.xy[2 * (begin + i)];
    g.xy[2 * at + 1] = m.points.xy[2 * (begin + i) + 1];
    g.index[at] = begin + i;
  }
  return g;
}

// Squared distance from (px, py) to grid cell (cx, cy), a lower bound for its heads.
double cell_gap2(const GridSpec& g, int cx, int cy, double px, double py) {
  double dx = 0.0, dy = 0.0;
  if (cx > 0 && px < double(cx - kMargin) * g.cell) dx = double(cx - kMargin) * g.cell - px;
  if (cx < g.gx - 1 && px > double(cx - kMargin + 1) * g.cell) dx = px - double(cx - kMargin + 1) * g.cell;
  if (cy > 0 && py < double(cy - kMargin) * g.cell) dy = double(cy - kMargin) * g.cell - py;
  if (cy < g.gy - 1 && py > double(cy - kMargin + 1) * g.cell) dy = py - double(cy - kMargin + 1) * g.cell;
  return dx * dx + dy * dy;
}

double squared_distance(const HeadGrid& g, int64_t at, double px, double py) {
  const double dx = g.xy[2 * at] - px, dy = g.xy[2 * at + 1] - py;
  return dy * dy + dx * dx;
}

// Exact squared distance from (px, py) (a cell centre, exact in float) to its nearest head: rings of
// grid cells until the nearest found is no farther than everything outside them.
double nearest2(const HeadGrid& hg, double px, double py) {
  const GridSpec& g = hg.spec;
  const int cx = cell_of(float(px), g.cell, g.gx), cy = cell_of(float(py), g.cell, g.gy);
  double best = std::numeric_limits<double>::infinity();
  CellBlock before{0, -1, 0, -1};
  for (int ring = 0;; ++ring) {
    const CellBlock now = grow(cx, cx, cy, cy, ring, g);
    for (int y = now.y0; y <= now.y1; ++y) {
      const RowSpans s = ring_spans(y, now, before, ring == 0);
      for (int span = 0; span < s.count; ++span) {
        const int lo = span == 0 ? s.lo0 : s.lo1, hi = span == 0 ? s.hi0 : s.hi1;
        for (int x = lo; x <= hi; ++x) {
          if (cell_gap2(g, x, y, px, py) >= best) continue;
          const int64_t c = int64_t(y) * g.gx + x;
          for (int64_t at = hg.start[c]; at < hg.start[c + 1]; ++at) best = std::min(best, squared_distance(hg, at, px, py));
        }
      }
    }
    const double bound = outside_bound(float(px), float(py), now, g);  // exact: differences of small integers and halves
    if (best <= bound * bound || (now.x0 == 0 && now.y0 == 0 && now.x1 == g.gx - 1 && now.y1 == g.gy - 1)) return best;
    before = now;
  }
}

// A cell's posterior over the heads that matter to it (and the background row).
struct Posterior {
  std::vector<int64_t> heads;  // packed indices
  std::vector<double> prob;    // their posteriors
  double background = 0.0;     // the background row's posterior (0 without one)
};

void posterior_of(const HeadGrid& hg, const BayesianArgs& a, int64_t b, double px, double py, Posterior& out) {
  const double inv = 1.0 / (2.0 * a.sigma * a.sigma);
  const double near2 = nearest2(hg, px, py);
  double best = near2, background2 = 0.0;
  if (a.background) {
    const double gap = a.background[b] - std::sqrt(near2);
    background2 = gap * gap;
    best = std::min(best, background2);
  }
  // Kept: (dis - best) / (2 sigma^2) < kBayesianCut.
  const double reach2 = best + kBayesianCut / inv, reach = std::sqrt(reach2) * (1.0 + 1e-12) + 1e-9;
  const GridSpec& g = hg.spec;
  const int x0 = cell_of(float(px - reach), g.cell, g.gx), x1 = cell_of(float(px + reach), g.cell, g.gx);
  const int y0 = cell_of(float(py - reach), g.cell, g.gy), y1 = cell_of(float(py + reach), g.cell, g.gy);
  out.heads.clear();
  out.prob.clear();
  const double top = -best * inv;
  double z = 0.0;
  for (int y = y0; y <= y1; ++y)
    for (int x = x0; x <= x1; ++x) {
      if (cell_gap2(g, x, y, px, py) > reach2) continue;
      const int64_t c = int64_t(y) * g.gx + x;
      for (int64_t at = hg.start[c]; at < hg.start[c + 1]; ++at) {
        const double t = -squared_distance(hg, at, px, py) * inv - top;
        if (t > -kBayesianCut) {
          out.heads.push_back(hg.index[at]);
          out.prob.push_back(std::exp(t));
        }
      }
    }
  for (double p : out.prob) z += p;  // in grid order: a function of the inputs, so the bits are fixed
  const double bg = a.background ? std::exp(-background2 * inv - top) : 0.0;
  z += bg;
  for (double& p : out.prob) p /= z;
  out.background = bg / z;
}

}  // namespace

void bayesian_expected_cpu(const BayesianArgs& a, int threads) {
  const float* density = a.density;
  double* expected = a.expected;
  const PointMap& m = a.map;
  const int64_t rows = m.points.count + m.points.batch, cells = m.height * m.width;
  std::vector<HeadGrid> grids(m.points.batch);
  parallel_for(m.points.batch, threads, [&](int64_t b) {
    int64_t begin, end;
    image_range(m.points.offsets, b, m.points.count, &begin, &end);
    grids[b] = build_grid(m, begin, end);
  });
  const int64_t chunks = std::min<int64_t>(kBayesianChunks, m.height);
  std::vector<double> partial(chunks * rows, 0.0);  // chunk k of every image adds into partial[k]
  parallel_for(m.points.batch * chunks, threads, [&](int64_t task) {
    const int64_t b = task / chunks, k = task % chunks;
    int64_t begin, end;
    image_range(m.points.offsets, b, m.points.count, &begin, &end);
    double* sums = partial.data() + k * rows;
    const float* d = density + b * cells;
    Posterior post;
    for (int64_t r = k * m.height / chunks; r < (k + 1) * m.height / chunks; ++r)
      for (int64_t c = 0; c < m.width; ++c) {
        const double value = d[r * m.width + c];
        if (begin == end) {
          sums[m.points.count + b] += value;
          continue;
        }
        if (value == 0.0) continue;  // adds exactly 0
        posterior_of(grids[b], a, b, cell_centre(c, m.stride), cell_centre(r, m.stride), post);
        for (size_t i = 0; i < post.heads.size(); ++i) sums[post.heads[i]] += value * post.prob[i];
        sums[m.points.count + b] += value * post.background;
      }
  });
  parallel_for(rows, threads, [&](int64_t row) {
    double s = 0.0;
    for (int64_t k = 0; k < chunks; ++k) s += partial[k * rows + row];
    expected[row] = s;
  });
}

void bayesian_backward_cpu(const BayesianArgs& a, int threads) {
  const double* weights = a.weights;
  float* grad = a.grad;
  const PointMap& m = a.map;
  std::vector<HeadGrid> grids(m.points.batch);
  parallel_for(m.points.batch, threads, [&](int64_t b) {
    int64_t begin, end;
    image_range(m.points.offsets, b, m.points.count, &begin, &end);
    grids[b] = build_grid(m, begin, end);
  });
  parallel_for(m.points.batch * m.height, threads, [&](int64_t task) {
    const int64_t b = task / m.height, r = task % m.height;
    int64_t begin, end;
    image_range(m.points.offsets, b, m.points.count, &begin, &end);
    float* out = grad + task * m.width;
    Posterior post;
    for (int64_t c = 0; c < m.width; ++c) {
      if (begin == end) {
        out[c] = float(weights[m.points.count + b]);
        continue;
      }
      posterior_of(grids[b], a, b, cell_centre(c, m.stride), cell_centre(r, m.stride), post);
      double g = weights[m.points.count + b] * post.background;
      for (size_t i = 0; i < post.heads.size(); ++i) g += weights[post.heads[i]] * post.prob[i];
      out[c] = float(g);
    }
  });
}

// ---- Sinkhorn-Knopp ---------------------------------------------------------------------------

namespace {

// K = exp(-C / reg) of one image where it is nonzero in float32 (C <= reg * kFloat32ExpCut). With
// C = dx^2 + dy^2 it factors as exp(-dx^2 / reg) exp(-dy^2 / reg): each head keeps its window of
// columns and rows (all of them with normalised coordinates) and a factor table for each.
struct SparseKernel {
  int64_t n = 0, height = 0, width = 0, wmax = 0, hmax = 0;
  double cut = 0.0;                     // reg * kFloat32ExpCut
  std::vector<int64_t> c0, nc, r0, nr;  // head i's columns [c0, c0 + nc), rows [r0, r0 + nr)
  std::vector<double> dx2, ex;          // n x wmax: squared x distance and its factor, per window column
  std::vector<double> dy2, ey;          // n x hmax
  std::vector<int64_t> row_start, row_heads;  // per cell row, the heads whose row window holds it

  // Kv[i] = sum over cells of K[i, cell] v[cell] (or of C K v with `cost`).
  double head_sum(int64_t i, const double* v, bool cost) const {
    double s = 0.0;
    const double* x2 = &dx2[i * wmax];
    const double* e = &ex[i * wmax];
    for (int64_t rr = 0; rr < nr[i]; ++rr) {
      const double y2 = dy2[i * hmax + rr];
      const double* vr = v + (r0[i] + rr) * width + c0[i];
      double t = 0.0;
      for (int64_t k = 0; k < nc[i]; ++k) {
        const double c = y2 + x2[k];
        t += c <= cut ? (cost ? c : 1.0) * e[k] * vr[k] : 0.0;
      }
      s += ey[i * hmax + rr] * t;
    }
    return s;
  }

  // out[c] = sum over heads of u[i] K[i, (r, c)] for the cells of row r.
  void row_sum(int64_t r, const double* u, double* out) const {
    std::fill(out, out + width, 0.0);
    for (int64_t at = row_start[r]; at < row_start[r + 1]; ++at) {
      const int64_t i = row_heads[at], rr = r - r0[i];
      const double y2 = dy2[i * hmax + rr], w = u[i] * ey[i * hmax + rr];
      const double* x2 = &dx2[i * wmax];
      const double* e = &ex[i * wmax];
      double* o = out + c0[i];
      for (int64_t k = 0; k < nc[i]; ++k) o[k] += y2 + x2[k] <= cut ? w * e[k] : 0.0;
    }
  }
};

SparseKernel build_kernel(const SinkhornArgs& a, int64_t begin, int64_t end) {
  SparseKernel K;
  K.n = end - begin;
  K.height = a.map.height;
  K.width = a.map.width;
  K.cut = a.reg * kFloat32ExpCut;
  K.c0.resize(K.n);
  K.nc.resize(K.n);
  K.r0.resize(K.n);
  K.nr.resize(K.n);
  for (int64_t i = 0; i < K.n; ++i) {
    axis_window(a.map.points.xy[2 * (begin + i)], K.width, a.map.stride, a.scale, a.shift, K.cut, &K.c0[i], &K.nc[i]);
    axis_window(a.map.points.xy[2 * (begin + i) + 1], K.height, a.map.stride, a.scale, a.shift, K.cut, &K.r0[i],
                &K.nr[i]);
    if (K.nc[i] == 0 || K.nr[i] == 0) K.nc[i] = K.nr[i] = 0;
    K.wmax = std::max(K.wmax, K.nc[i]);
    K.hmax = std::max(K.hmax, K.nr[i]);
  }
  K.dx2.assign(K.n * K.wmax, 0.0);
  K.ex.assign(K.n * K.wmax, 0.0);
  K.dy2.assign(K.n * K.hmax, 0.0);
  K.ey.assign(K.n * K.hmax, 0.0);
  K.row_start.assign(K.height + 1, 0);
  for (int64_t i = 0; i < K.n; ++i) {
    const double x = double(a.map.points.xy[2 * (begin + i)]) * a.scale + a.shift;
    const double y = double(a.map.points.xy[2 * (begin + i) + 1]) * a.scale + a.shift;
    for (int64_t k = 0; k < K.nc[i]; ++k) {
      const double d = (cell_centre(K.c0[i] + k, a.map.stride) * a.scale + a.shift) - x;
      K.dx2[i * K.wmax + k] = d * d;
      K.ex[i * K.wmax + k] = std::exp(-d * d / a.reg);
    }
    for (int64_t k = 0; k < K.nr[i]; ++k) {
      const double d = (cell_centre(K.r0[i] + k, a.map.stride) * a.scale + a.shift) - y;
      K.dy2[i * K.hmax + k] = d * d;
      K.ey[i * K.hmax + k] = std::exp(-d * d / a.reg);
      ++K.row_start[K.r0[i] + k + 1];
    }
  }
  for (int64_t r = 0; r < K.height; ++r) K.row_start[r + 1] += K.row_start[r];
  K.row_heads.resize(K.row_start[K.height]);
  std::vector<int64_t> fill(K.row_start.begin(), K.row_start.end() - 1);
  for (int64_t i = 0; i < K.n; ++i)
    for (int64_t k = 0; k < K.nr[i]; ++k) K.row_heads[fill[K.r0[i] + k]++] = i;
  return K;
}

bool all_finite(const std::vector<double>& v) {
  for (double x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// One image's Sinkhorn-Knopp; `par(tasks, fn)` runs fn over tasks (in parallel or not).
template <class Par>
void sinkhorn_image(const SinkhornArgs& a, int64_t b, const float* normed, double* beta, double* wasserstein,
                    Par par) {
  const PointMap& m = a.map;
  const int64_t cells = m.height * m.width;
  int64_t begin, end;
  image_range(m.points.offsets, b, m.points.count, &begin, &end);
  double* beta_b = beta + b * cells;
  if (begin == end) {
    std::fill(beta_b, beta_b + cells, 0.0);
    wasserstein[b] = 0.0;
    return;
  }
  const SparseKernel K = build_kernel(a, begin, end);
  const int64_t n = K.n;
  const float* target = normed + b * cells;  // DM-Count's b; a = 1 / n per head
  std::vector<double> u(n, 1.0 / double(n)), v(cells, 1.0 / double(cells)), upre, vpre, ktu(cells);
  std::vector<double> row_err(m.height);
  constexpr int64_t kHeadBlock = 64;
  const int64_t head_blocks = (n + kHeadBlock - 1) / kHeadBlock;
  auto update_v = [&] {  // v = b / (K^T u + eps), keeping K^T u
    par(m.height, [&](int64_t r) {
      K.row_sum(r, u.data(), &ktu[r * m.width]);
      for (int64_t c = r * m.width; c < (r + 1) * m.width; ++c) v[c] = double(target[c]) / (ktu[c] + kSinkhornEps);
    });
  };
  auto update_u = [&] {  // u = a / (K v + eps)
    par(head_blocks, [&](int64_t block) {
      for (int64_t i = block * kHeadBlock; i < std::min(n, (block + 1) * kHeadBlock); ++i)
        u[i] = (1.0 / double(n)) / (K.head_sum(i, v.data(), false) + kSinkhornEps);
    });
  };
  double err = 1.0;
  for (int it = 1; err > kSinkhornStop && it <= a.iterations; ++it) {
    upre = u;
    vpre = v;
    update_v();
    update_u();
    if (!all_finite(u) || !all_finite(v)) {  // bregman_pytorch.py: back to the previous iterate
      u.swap(upre);
      v.swap(vpre);
      break;
    }
    if (it % kSinkhornEvalEvery == 0) {  // err = |b - (u^T K) * v|^2 with the new u
      par(m.height, [&](int64_t r) {
        std::vector<double> row(m.width);
        K.row_sum(r, u.data(), row.data());
        double s = 0.0;
        for (int64_t c = 0; c < m.width; ++c) {
          const double e = double(target[r * m.width + c]) - row[c] * v[r * m.width + c];
          s += e * e;
        }
        row_err[r] = s;
      });
      err = 0.0;
      for (double e : row_err) err += e;
    }
  }
  par(m.height, [&](int64_t r) {
    for (int64_t c = r * m.width; c < (r + 1) * m.width; ++c) beta_b[c] = a.reg * std::log(v[c] + kSinkhornEps);
  });
  std::vector<double> head_cost(n);
  par(head_blocks, [&](int64_t block) {
    for (int64_t i = block * kHeadBlock; i < std::min(n, (block + 1) * kHeadBlock); ++i)
      head_cost[i] = u[i] * K.head_sum(i, v.data(), true);
  });
  double w = 0.0;
  for (double c : head_cost) w += c;
  wasserstein[b] = w;
}

}  // namespace

void sinkhorn_cpu(const SinkhornArgs& a, int threads) {
  const float* normed = a.normed;
  double* beta = a.beta;
  double* wasserstein = a.wasserstein;
  if (a.map.points.batch >= threads) {  // an image per thread
    parallel_for(a.map.points.batch, threads, [&](int64_t b) {
      sinkhorn_image(a, b, normed, beta, wasserstein, [](int64_t tasks, auto fn) {
        for (int64_t t = 0; t < tasks; ++t) fn(t);
      });
    });
    return;
  }
  for (int64_t b = 0; b < a.map.points.batch; ++b)
    sinkhorn_image(a, b, normed, beta, wasserstein,
                   [threads](int64_t tasks, auto fn) { parallel_for(tasks, threads, fn); });
}

}  // namespace mud_iknn
