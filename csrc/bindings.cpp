// pybind11 bindings of mud_iknn._C: each kernel takes its argument struct (label_bindings.h,
// point_loss_bindings.h; raw pointers as integers: tensor.data_ptr()), nothing is returned but
// sizes. No libtorch: one build serves every torch version.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "label_bindings.h"
#include "labels.h"
#include "peaks.h"
#include "point_loss_bindings.h"

namespace py = pybind11;
using namespace mud_iknn;

namespace {

#ifndef MUD_IKNN_WITH_CUDA
[[noreturn]] void no_cuda() {
  throw std::runtime_error("mud_iknn was built without CUDA: reinstall with nvcc on the PATH (MUD_IKNN_CUDA=ON)");
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mud-iknn label engine kernels (C++ CPU and CUDA)";
  bind::structs(m, false);
  bind::cpu_entry_points(m);
  bind::point_loss_structs(m, false);
  bind::point_loss_cpu_entry_points(m);
  {  // localize's CPU peaks (peaks.h; CPU only, hence no "_cpu" name: the emulator serves the _cpu ops)
    py::class_<PeakArgs> peaks(m, "PeakArgs");
    peaks.def(py::init<>())
        .def_readwrite("batch", &PeakArgs::batch)
        .def_readwrite("height", &PeakArgs::height)
        .def_readwrite("width", &PeakArgs::width)
        .def_readwrite("threshold", &PeakArgs::threshold)
        .def_readwrite("radius", &PeakArgs::radius)
        .def_readwrite("strict", &PeakArgs::strict)
        .def_readwrite("capacity", &PeakArgs::capacity);
    bind::pointer_field(peaks, "maps", &PeakArgs::maps);
    bind::pointer_field(peaks, "out", &PeakArgs::out);
    m.def("find_peaks", &find_peaks, py::call_guard<py::gil_scoped_release>());
  }
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
  bind::cuda_entry_points(m);
  bind::point_loss_cuda_entry_points(m);
#else
  m.attr("WITH_CUDA") = false;
  m.attr("CUDA_ARCHS") = py::list();
#define MUD_IKNN_NO_CUDA(op, Args)                                   \
  m.def(#op "_cuda", [](py::args, py::kwargs) { no_cuda(); });        \
  m.def(#op "_workspace_bytes", [](py::args, py::kwargs) { no_cuda(); });
  MUD_IKNN_OPS(MUD_IKNN_NO_CUDA)
  MUD_IKNN_POINT_LOSS_OPS(MUD_IKNN_NO_CUDA)
#undef MUD_IKNN_NO_CUDA
#endif
}
