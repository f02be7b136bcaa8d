// pybind11 bindings of mud_iknn._C: raw pointers (tensor.data_ptr()), sizes and the CUDA stream
// handle in, nothing returned. No libtorch: one build serves every torch version.
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "labels.h"

namespace py = pybind11;
using namespace mud_iknn;

void bind_point_losses(py::module_& m);  // point_losses_bindings.cpp

namespace {

template <class T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

#ifndef MUD_IKNN_WITH_CUDA
[[noreturn]] void no_cuda() {
  throw std::runtime_error("mud_iknn was built without CUDA: reinstall with nvcc on the PATH (MUD_IKNN_CUDA=ON)");
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mud-iknn label engine kernels (C++ CPU and CUDA)";
  m.attr("MAX_K") = kMaxK;
#ifdef MUD_IKNN_WITH_CUDA
  m.attr("WITH_CUDA") = true;
  py::list archs;
  std::string csv = MUD_IKNN_CUDA_ARCHS;
  for (size_t at = 0; at <= csv.size();) {
    const size_t comma = std::min(csv.find(',', at), csv.size());
    if (comma > at) archs.append(csv.substr(at, comma - at));
    at = comma + 1;
  }
  m.attr("CUDA_ARCHS") = archs;
#else
  m.attr("WITH_CUDA") = false;
  m.attr("CUDA_ARCHS") = py::list();
#endif
  py::call_guard<py::gil_scoped_release> nogil;
  bind_point_losses(m);

  m.def("knn_maps_cpu",
        [](uintptr_t points, uintptr_t offsets, int64_t batch, int64_t count, int64_t height, int64_t width,
           int k, float max_distance, int transform, uintptr_t out, int threads) {
          knn_maps_cpu(ptr<const float>(points), ptr<const int64_t>(offsets), batch, count, height, width, k,
                       max_distance, transform, ptr<float>(out), threads);
        },
        nogil);
  m.def("head_sigmas_cpu",
        [](uintptr_t points, uintptr_t offsets, int64_t batch, int64_t count, int64_t height, int64_t width,
           int k, float beta, uintptr_t out, int threads) {
          head_sigmas_cpu(ptr<const float>(points), ptr<const int64_t>(offsets), batch, count, height, width, k,
                          beta, ptr<float>(out), threads);
        },
        nogil);
  m.def("density_maps_cpu",
        [](uintptr_t points, uintptr_t offsets, uintptr_t sigmas, int64_t batch, int64_t count, int64_t height,
           int64_t width, float truncate, uintptr_t out, int threads) {
          density_maps_cpu(ptr<const float>(points), ptr<const int64_t>(offsets), ptr<const float>(sigmas), batch,
                           count, height, width, truncate, ptr<float>(out), threads);
        },
        nogil);

#ifdef MUD_IKNN_WITH_CUDA
  m.def("knn_workspace_bytes", &knn_workspace_bytes);
  m.def("sigma_workspace_bytes", &sigma_workspace_bytes);
  m.def("density_workspace_bytes", &density_workspace_bytes);
  m.def("knn_maps_cuda",
        [](uintptr_t points, uintptr_t offsets, int64_t batch, int64_t count, int64_t height, int64_t width,
           int k, float max_distance, int transform, uintptr_t out, uintptr_t workspace, int64_t workspace_bytes,
           uintptr_t stream, int device) {
          knn_maps_cuda(ptr<const float>(points), ptr<const int64_t>(offsets), batch, count, height, width, k,
                        max_distance, transform, ptr<float>(out), ptr<void>(workspace), workspace_bytes,
                        ptr<void>(stream), device);
        },
        nogil);
  m.def("head_sigmas_cuda",
        [](uintptr_t points, uintptr_t offsets, int64_t batch, int64_t count, int64_t height, int64_t width,
           int k, float beta, uintptr_t out, uintptr_t workspace, int64_t workspace_bytes, uintptr_t stream,
           int device) {
          head_sigmas_cuda(ptr<const float>(points), ptr<const int64_t>(offsets), batch, count, height, width, k,
                           beta, ptr<float>(out), ptr<void>(workspace), workspace_bytes, ptr<void>(stream), device);
        },
        nogil);
  m.def("density_maps_cuda",
        [](uintptr_t points, uintptr_t offsets, uintptr_t sigmas, int64_t batch, int64_t count, int64_t height,
           int64_t width, float truncate, uintptr_t out, uintptr_t workspace, int64_t workspace_bytes,
           uintptr_t stream, int device) {
          density_maps_cuda(ptr<const float>(points), ptr<const int64_t>(offsets), ptr<const float>(sigmas), batch,
                            count, height, width, truncate, ptr<float>(out), ptr<void>(workspace), workspace_bytes,
                            ptr<void>(stream), device);
        },
        nogil);
#else
  for (const char* name : {"knn_workspace_bytes", "sigma_workspace_bytes", "density_workspace_bytes", "knn_maps_cuda", "head_sigmas_cuda", "density_maps_cuda"})
    m.def(name, [](py::args, py::kwargs) { no_cuda(); });
#endif
}
