// C entry points to csrc/point_losses_cuda.cu built on the CUDA emulator (cuda_emulation.h), for
// ctypes (tests/emulated_point_losses.py). Host pointers stand in for device ones; each returns 0,
// or 1 with the error message in `error`.
#include "cuda_emulation.h"
#include "point_losses.h"

using cuda_emulation::guarded;
using namespace mud_iknn;

namespace {
PointMap point_map(const float* points, const int64_t* offsets, int64_t batch, int64_t count, int64_t height,
                   int64_t width, int stride) {
  return PointMap{points, offsets, batch, count, height, width, stride};
}
}  // namespace

EXPORT int64_t emulated_bayesian_workspace_bytes(int64_t batch, int64_t count, int64_t height, int64_t width,
                                                 int stride, int background) {
  static const double any = 1.0;
  return bayesian_workspace_bytes(
      BayesianArgs{point_map(nullptr, nullptr, batch, count, height, width, stride), 1.0, background ? &any : nullptr});
}

EXPORT int emulated_bayesian_expected(const float* points, const int64_t* offsets, int64_t batch, int64_t count,
                                      int64_t height, int64_t width, int stride, double sigma,
                                      const double* background, const float* density, double* expected,
                                      void* workspace, int64_t workspace_bytes, char* error, int error_bytes) {
  return guarded(error, error_bytes, [&] {
    const BayesianArgs a{point_map(points, offsets, batch, count, height, width, stride), sigma, background};
    bayesian_expected_cuda(a, density, expected, workspace, workspace_bytes, nullptr, 0);
  });
}

EXPORT int emulated_bayesian_backward(const float* points, const int64_t* offsets, int64_t batch, int64_t count,
                                      int64_t height, int64_t width, int stride, double sigma,
                                      const double* background, const double* weights, float* grad,
                                      void* workspace, int64_t workspace_bytes, char* error, int error_bytes) {
  return guarded(error, error_bytes, [&] {
    const BayesianArgs a{point_map(points, offsets, batch, count, height, width, stride), sigma, background};
    bayesian_backward_cuda(a, weights, grad, workspace, workspace_bytes, nullptr, 0);
  });
}

EXPORT int64_t emulated_sinkhorn_workspace_bytes(int64_t batch, int64_t count, int64_t height, int64_t width,
                                                 int stride, double reg, double scale) {
  return sinkhorn_workspace_bytes(
      SinkhornArgs{point_map(nullptr, nullptr, batch, count, height, width, stride), reg, 0, scale, 0.0});
}

EXPORT int emulated_sinkhorn(const float* points, const int64_t* offsets, int64_t batch, int64_t count,
                             int64_t height, int64_t width, int stride, double reg, int iterations, double scale,
                             double shift, const float* normed, double* beta, double* wasserstein, void* workspace,
                             int64_t workspace_bytes, char* error, int error_bytes) {
  return guarded(error, error_bytes, [&] {
    const SinkhornArgs a{point_map(points, offsets, batch, count, height, width, stride), reg, iterations, scale,
                         shift};
    sinkhorn_cuda(a, normed, beta, wasserstein, workspace, workspace_bytes, nullptr, 0);
  });
}
