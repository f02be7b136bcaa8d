// pybind11 bindings of the point losses' argument structs and entry points (point_losses.h), written
// once for every module that serves them: mud_iknn._C (bindings.cpp) and the CUDA emulator's test
// module (tests/cuda_emulation/emulated_labels.cpp), as label_bindings.h does for the label engine
// (whose PackedPoints and CudaCall they use: bind::structs first).
#pragma once

#include <pybind11/pybind11.h>

#include "label_bindings.h"
#include "point_losses.h"

namespace mud_iknn {
namespace bind {

// The argument structs of point_losses.h. `local` as in structs().
inline void point_loss_structs(py::module_& m, bool local) {
  auto scope = [local] { return py::module_local(local); };
  py::class_<PointMap>(m, "PointMap", scope())
      .def(py::init<>())
      .def_readwrite("points", &PointMap::points)
      .def_readwrite("height", &PointMap::height)
      .def_readwrite("width", &PointMap::width)
      .def_readwrite("stride", &PointMap::stride);

  py::class_<BayesianArgs> bayesian(m, "BayesianArgs", scope());
  bayesian.def(py::init<>()).def_readwrite("map", &BayesianArgs::map).def_readwrite("sigma", &BayesianArgs::sigma);
  pointer_field(bayesian, "background", &BayesianArgs::background);
  pointer_field(bayesian, "density", &BayesianArgs::density);
  pointer_field(bayesian, "expected", &BayesianArgs::expected);
  pointer_field(bayesian, "weights", &BayesianArgs::weights);
  pointer_field(bayesian, "grad", &BayesianArgs::grad);

  py::class_<SinkhornArgs> sinkhorn(m, "SinkhornArgs", scope());
  sinkhorn.def(py::init<>())
      .def_readwrite("map", &SinkhornArgs::map)
      .def_readwrite("reg", &SinkhornArgs::reg)
      .def_readwrite("iterations", &SinkhornArgs::iterations)
      .def_readwrite("scale", &SinkhornArgs::scale)
      .def_readwrite("shift", &SinkhornArgs::shift);
  pointer_field(sinkhorn, "normed", &SinkhornArgs::normed);
  pointer_field(sinkhorn, "beta", &SinkhornArgs::beta);
  pointer_field(sinkhorn, "wasserstein", &SinkhornArgs::wasserstein);
}

// Every point-loss op, by name (as MUD_IKNN_OPS).
#define MUD_IKNN_POINT_LOSS_OPS(fn) fn(bayesian_expected, BayesianArgs) fn(bayesian_backward, BayesianArgs) \
  fn(sinkhorn, SinkhornArgs)

inline void point_loss_cpu_entry_points(py::module_& m) { MUD_IKNN_POINT_LOSS_OPS(MUD_IKNN_BIND_CPU) }

#ifdef MUD_IKNN_WITH_CUDA
inline void point_loss_cuda_entry_points(py::module_& m) { MUD_IKNN_POINT_LOSS_OPS(MUD_IKNN_BIND_CUDA) }
#endif

}  // namespace bind
}  // namespace mud_iknn
