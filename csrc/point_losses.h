// Point-supervised losses without an N x (h * w) matrix: the Bayesian loss's expected counts (Ma et
// al., ICCV 2019) and DM-Count's Sinkhorn-Knopp potentials (Wang et al., NeurIPS 2020), CPU and CUDA.
// Everything here trusts its inputs: mud_iknn/point_losses.py validates them before calling.
//
// Conventions: points are packed float (x, y) pairs in input pixels with B + 1 int64 offsets (as in
// labels.h); maps are row-major (B, h, w) float32 of cells at an integer stride s, cell (r, c)
// centred at (c s + s / 2, r s + s / 2). Sums are taken in double, each in a fixed order, so every
// result is deterministic and independent of the thread count.
#pragma once

#include <cmath>
#include <cstdint>

#include "labels.h"

namespace mud_iknn {

// Bayesian loss: of a cell's posterior terms -dis / (2 sigma^2), only those within kBayesianCut of
// the cell's largest are summed; each dropped one is below exp(-kBayesianCut) = 1e-16 of the
// largest, so an expected count is off by at most 1e-16 * N * (total density).
constexpr double kBayesianCut = 36.841361487904734;  // ln(1e16)
// exp(-t) rounds to 0 in float32 beyond t = 150 ln 2: DM-Count's float32 kernel K = exp(-C / reg)
// is 0 there, and so is this one (the dense reference's FLOAT32_EXP_CUT).
constexpr double kFloat32ExpCut = 103.97207708399179;
constexpr double kSinkhornEps = 1e-16;       // bregman_pytorch.py's M_EPS
constexpr double kSinkhornStop = 1e-9;       // its stopThr
constexpr int kSinkhornEvalEvery = 10;       // its eval_freq
constexpr int kBayesianChunks = 64;          // cell-row chunks of an image whose expected counts are summed apart

// The heads of a batch (labels.h's PackedPoints) and the cell map they are compared with.
struct PointMap {
  PackedPoints points;
  int64_t height = 0, width = 0;  // cells
  int stride = 1;                 // input pixels per cell
};

MUD_HD double cell_centre(int64_t index, int stride) { return double(index) * stride + 0.5 * stride; }

// The cells [*lo, *lo + *count) of an axis of n cells whose mapped centre lies within sqrt(cut) of
// the mapped coordinate q * scale + shift: a head's window of nonzero Sinkhorn kernel along it.
MUD_HD void axis_window(double q, int64_t n, int stride, double scale, double shift, double cut, int64_t* lo,
                        int64_t* count) {
  const double reach = sqrt(cut) / scale, s = stride;
  const double first = floor((q - reach - 0.5 * s) / s) - 1.0, last = ceil((q + reach - 0.5 * s) / s) + 2.0;
  int64_t l = int64_t(first < 0.0 ? 0.0 : (first > double(n) ? double(n) : first));
  int64_t h = int64_t(last < 0.0 ? 0.0 : (last > double(n) ? double(n) : last));
  const double qt = q * scale + shift;
  while (l < h) {
    const double d = (cell_centre(l, stride) * scale + shift) - qt;
    if (d * d <= cut) break;
    ++l;
  }
  while (h > l) {
    const double d = (cell_centre(h - 1, stride) * scale + shift) - qt;
    if (d * d <= cut) break;
    --h;
  }
  *lo = l;
  *count = h - l;
}

// Most cells a window of axis_window holds on an axis of n cells.
inline int64_t max_window(int64_t n, int stride, double scale, double cut) {
  const double cells = 2.0 * std::sqrt(cut) / scale / stride + 3.0;
  return cells >= double(n) ? n : int64_t(cells);
}

// ---- entry points ------------------------------------------------------------------------------
// Each kernel takes one argument struct, declared here once and bound once (point_loss_bindings.h),
// and for CUDA labels.h's CudaCall; pointers are host pointers for *_cpu, device pointers for *_cuda.

// The Bayesian loss of Gaussian width sigma (input pixels); rows are indexed as `expected`.
// bayesian_expected: expected[i] (i < count) <- head i's expected count, sum over cells of density *
// posterior; expected[count + b] <- image b's background row (0 without one), or for an image
// without heads the sum of its density.
// bayesian_backward, the transpose: grad[b, cell] <- sum over the image's rows of weights[row] *
// posterior[row, cell]; an image without heads gets weights[count + b] everywhere.
struct BayesianArgs {
  PointMap map;
  double sigma = 8.0;
  const double* background = nullptr;  // (batch) distances d (the background row's), or null: no background row
  const float* density = nullptr;      // bayesian_expected: (batch, h, w) in
  double* expected = nullptr;          // bayesian_expected: (count + batch) out
  const double* weights = nullptr;     // bayesian_backward: (count + batch) in
  float* grad = nullptr;               // bayesian_backward: (batch, h, w) out
};

// Sinkhorn-Knopp between uniform mass on each image's heads and `normed`, as bregman_pytorch.py:
// beta <- reg * log(v + 1e-16) and wasserstein[b] <- sum C * P. Images without heads get beta 0 and
// wasserstein 0.
struct SinkhornArgs {
  PointMap map;
  double reg = 10.0;
  int iterations = 100;
  double scale = 1.0, shift = 0.0;  // coordinates (points and centres) mapped by v -> v * scale + shift first
  const float* normed = nullptr;    // (batch, h, w) in
  double* beta = nullptr;           // (batch, h, w) out
  double* wasserstein = nullptr;    // (batch) out
};

void bayesian_expected_cpu(const BayesianArgs& a, int threads);
void bayesian_backward_cpu(const BayesianArgs& a, int threads);
void sinkhorn_cpu(const SinkhornArgs& a, int threads);

#ifdef MUD_IKNN_WITH_CUDA
// Bytes of device workspace each CUDA kernel needs for these arguments.
int64_t bayesian_expected_workspace_bytes(const BayesianArgs& a);
int64_t bayesian_backward_workspace_bytes(const BayesianArgs& a);
int64_t sinkhorn_workspace_bytes(const SinkhornArgs& a);
void bayesian_expected_cuda(const BayesianArgs& a, const CudaCall& call);
void bayesian_backward_cuda(const BayesianArgs& a, const CudaCall& call);
void sinkhorn_cuda(const SinkhornArgs& a, const CudaCall& call);
#endif

}  // namespace mud_iknn
