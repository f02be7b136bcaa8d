// pybind11 bindings of the point losses (point_losses.h): raw pointers and sizes in, nothing returned.
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "point_losses.h"

namespace py = pybind11;
using namespace mud_iknn;

namespace {

template <class T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

PointMap point_map(uintptr_t points, uintptr_t offsets, int64_t batch, int64_t count, int64_t height, int64_t width,
                   int stride) {
  return PointMap{ptr<const float>(points), ptr<const int64_t>(offsets), batch, count, height, width, stride};
}

}  // namespace

// Each entry point takes the point map (points, offsets, batch, count, height, width, stride), the
// loss's parameters, the tensors' pointers, then `threads` (CPU) or workspace, its bytes, the stream
// and the device index (CUDA).
void bind_point_losses(py::module_& m) {
  py::call_guard<py::gil_scoped_release> nogil;
  m.def("bayesian_expected_cpu",
        [](uintptr_t points, uintptr_t offsets, int64_t batch, int64_t count, int64_t height, int64_t width,
           int stride, double sigma, uintptr_t background, uintptr_t density, uintptr_t expected, int threads) {
          const BayesianArgs a{point_map(points, offsets, batch, count, height, width, stride), sigma,
                               ptr<const double>(background)};
          bayesian_expected_cpu(a, ptr<const float>(density), ptr<double>(expected), threads);
        },
        nogil);
  m.def("bayesian_backward_cpu",
        [](uintptr_t points, uintptr_t offsets, int64_t batch, int64_t count, int64_t height, int64_t width,
           int stride, double sigma, uintptr_t background, uintptr_t weights, uintptr_t grad, int threads) {
          const BayesianArgs a{point_map(points, offsets, batch, count, height, width, stride), sigma,
                               ptr<const double>(background)};
          bayesian_backward_cpu(a, ptr<const double>(weights), ptr<float>(grad), threads);
        },
        nogil);
  m.def("sinkhorn_cpu",
        [](uintptr_t points, uintptr_t offsets, int64_t batch, int64_t count, int64_t height, int64_t width,
           int stride, double reg, int iterations, double scale, double shift, uintptr_t normed, uintptr_t beta,
           uintptr_t wasserstein, int threads) {
          const SinkhornArgs a{point_map(points, offsets, batch, count, height, width, stride), reg, iterations,
                               scale, shift};
          sinkhorn_cpu(a, ptr<const float>(normed), ptr<double>(beta), ptr<double>(wasserstein), threads);
        },
        nogil);
#ifdef MUD_IKNN_WITH_CUDA
  m.def("bayesian_workspace_bytes",
        [](int64_t batch, int64_t count, int64_t height, int64_t width, int stride, bool background) {
          const BayesianArgs a{point_map(0, 0, batch, count, height, width, stride), 1.0,
                               background ? ptr<const double>(1) : nullptr};
          return bayesian_workspace_bytes(a);
        });
  m.def("bayesian_expected_cuda",
        [](uintptr_t points, uintptr_t offsets, int64_t batch, int64_t count, int64_t height, int64_t width,
           int stride, double sigma, uintptr_t background, uintptr_t density, uintptr_t expected,
           uintptr_t workspace, int64_t workspace_bytes, uintptr_t stream, int device) {
          const BayesianArgs a{point_map(points, offsets, batch, count, height, width, stride), sigma,
                               ptr<const double>(background)};
          bayesian_expected_cuda(a, ptr<const float>(density), ptr<double>(expected), ptr<void>(workspace),
                                 workspace_bytes, ptr<void>(stream), device);
        },
        nogil);
  m.def("bayesian_backward_cuda",
        [](uintptr_t points, uintptr_t offsets, int64_t batch, int64_t count, int64_t height, int64_t width,
           int stride, double sigma, uintptr_t background, uintptr_t weights, uintptr_t grad, uintptr_t workspace,
           int64_t workspace_bytes, uintptr_t stream, int device) {
          const BayesianArgs a{point_map(points, offsets, batch, count, height, width, stride), sigma,
                               ptr<const double>(background)};
          bayesian_backward_cuda(a, ptr<const double>(weights), ptr<float>(grad), ptr<void>(workspace),
                                 workspace_bytes, ptr<void>(stream), device);
        },
        nogil);
  m.def("sinkhorn_workspace_bytes",
        [](int64_t batch, int64_t count, int64_t height, int64_t width, int stride, double reg, double scale) {
          const SinkhornArgs a{point_map(0, 0, batch, count, height, width, stride), reg, 0, scale, 0.0};
          return sinkhorn_workspace_bytes(a);
        });
  m.def("sinkhorn_cuda",
        [](uintptr_t points, uintptr_t offsets, int64_t batch, int64_t count, int64_t height, int64_t width,
           int stride, double reg, int iterations, double scale, double shift, uintptr_t normed, uintptr_t beta,
           uintptr_t wasserstein, uintptr_t workspace, int64_t workspace_bytes, uintptr_t stream, int device) {
          const SinkhornArgs a{point_map(points, offsets, batch, count, height, width, stride), reg, iterations,
                               scale, shift};
          sinkhorn_cuda(a, ptr<const float>(normed), ptr<double>(beta), ptr<double>(wasserstein),
                        ptr<void>(workspace), workspace_bytes, ptr<void>(stream), device);
        },
        nogil);
#else
  for (const char* name : {"bayesian_workspace_bytes", "bayesian_expected_cuda", "bayesian_backward_cuda",
                           "sinkhorn_workspace_bytes", "sinkhorn_cuda"})
    m.def(name, [](py::args, py::kwargs) {
      throw std::runtime_error("mud_iknn was built without CUDA: reinstall with nvcc on the PATH (MUD_IKNN_CUDA=ON)");
    });
#endif
}
