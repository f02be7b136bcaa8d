// pybind11 bindings of the label engine's argument structs and entry points, written once for every
// module that serves them: mud_iknn._C (bindings.cpp) and the CUDA emulator's test module
// (tests/cuda_emulation/emulated_labels.cpp). Python fills a struct field by field (pointers as
// integers: tensor.data_ptr()) and hands it to a kernel; nothing is returned but sizes.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

#include "labels.h"

namespace mud_iknn {
namespace bind {

namespace py = pybind11;

// A pointer member read and written as an integer address.
template <class Class, class Struct, class T>
void pointer_field(Class& cls, const char* name, T* Struct::*member) {
  cls.def_property(
      name, [member](const Struct& s) { return reinterpret_cast<uintptr_t>(s.*member); },
      [member](Struct& s, uintptr_t address) { s.*member = reinterpret_cast<T*>(address); });
}

// The argument structs of labels.h and the engine's limits. `local`: types private to this module
// (the emulator's test module binds the same C++ types as mud_iknn._C).
inline void structs(py::module_& m, bool local) {
  auto scope = [local] { return py::module_local(local); };
  m.attr("MAX_K") = kMaxK;
  m.attr("MAX_IMAGES") = kMaxImages;
  m.attr("MAX_POINTS") = kMaxPoints;
  m.attr("MAX_MAP_PIXELS") = kMaxMapPixels;
  m.attr("MAX_MAP_SIDE") = kMaxMapSide;
  m.attr("MAX_SIGMA") = double(kMaxSigma);
  m.attr("MAX_TRUNCATE") = kMaxTruncate;
  m.attr("MAX_COORDINATE") = kMaxCoordinate;
  m.attr("MIN_DISTANCE") = kMinDistance;
  py::dict transforms;
  transforms["distance"] = int(kDistance);
  transforms["inverse"] = int(kInverse);
  transforms["inverse_sqrt"] = int(kInverseSqrt);
  transforms["fidt"] = int(kFidt);
  m.attr("TRANSFORMS") = transforms;

  py::class_<PackedPoints> points(m, "PackedPoints", scope());
  points.def(py::init<>()).def_readwrite("batch", &PackedPoints::batch).def_readwrite("count", &PackedPoints::count);
  pointer_field(points, "xy", &PackedPoints::xy);
  pointer_field(points, "offsets", &PackedPoints::offsets);

  py::class_<MapTransform>(m, "MapTransform", scope())
      .def(py::init<>())
      .def_readwrite("kind", &MapTransform::kind)
      .def_readwrite("alpha", &MapTransform::alpha)
      .def_readwrite("beta", &MapTransform::beta)
      .def_readwrite("c", &MapTransform::c)
      .def_readwrite("zero_below", &MapTransform::zero_below);

  py::class_<KnnArgs> knn(m, "KnnArgs", scope());
  knn.def(py::init<>())
      .def_readwrite("points", &KnnArgs::points)
      .def_readwrite("height", &KnnArgs::height)
      .def_readwrite("width", &KnnArgs::width)
      .def_readwrite("k", &KnnArgs::k)
      .def_readwrite("max_distance", &KnnArgs::max_distance)
      .def_readwrite("transform", &KnnArgs::transform);
  pointer_field(knn, "out", &KnnArgs::out);

  py::class_<SigmaArgs> sigma(m, "SigmaArgs", scope());
  sigma.def(py::init<>())
      .def_readwrite("points", &SigmaArgs::points)
      .def_readwrite("height", &SigmaArgs::height)
      .def_readwrite("width", &SigmaArgs::width)
      .def_readwrite("k", &SigmaArgs::k)
      .def_readwrite("beta", &SigmaArgs::beta);
  pointer_field(sigma, "out", &SigmaArgs::out);

  py::class_<DensityArgs> density(m, "DensityArgs", scope());
  density.def(py::init<>())
      .def_readwrite("points", &DensityArgs::points)
      .def_readwrite("height", &DensityArgs::height)
      .def_readwrite("width", &DensityArgs::width)
      .def_readwrite("truncate", &DensityArgs::truncate);
  pointer_field(density, "sigmas", &DensityArgs::sigmas);
  pointer_field(density, "out", &DensityArgs::out);

  py::class_<CountArgs> counts(m, "CountArgs", scope());
  counts.def(py::init<>())
      .def_readwrite("points", &CountArgs::points)
      .def_readwrite("height", &CountArgs::height)
      .def_readwrite("width", &CountArgs::width)
      .def_readwrite("stride", &CountArgs::stride);
  pointer_field(counts, "out", &CountArgs::out);

  py::class_<CudaCall> call(m, "CudaCall", scope());
  call.def(py::init<>())
      .def_readwrite("workspace_bytes", &CudaCall::workspace_bytes)
      .def_readwrite("device", &CudaCall::device);
  pointer_field(call, "workspace", &CudaCall::workspace);
  pointer_field(call, "stream", &CudaCall::stream);
}

// Every op of the engine, by name: `fn(name, kernel)` for each (the CPU and CUDA bindings below
// both walk this one list).
#define MUD_IKNN_OPS(fn) fn(knn_maps, KnnArgs) fn(head_sigmas, SigmaArgs) fn(density_maps, DensityArgs) \
  fn(count_maps, CountArgs)

// An op's entry points in module `m`: <op>_cpu(Args, threads), and <op>_cuda(Args, CudaCall) with
// <op>_workspace_bytes(Args); point_loss_bindings.h binds its ops with them too.
#define MUD_IKNN_BIND_CPU(op, Args) \
  m.def(#op "_cpu", [](const Args& a, int threads) { op##_cpu(a, threads); }, py::call_guard<py::gil_scoped_release>());
#define MUD_IKNN_BIND_CUDA(op, Args)                                                                             \
  m.def(#op "_cuda", [](const Args& a, const CudaCall& call) { op##_cuda(a, call); },                            \
        py::call_guard<py::gil_scoped_release>());                                                             \
  m.def(#op "_workspace_bytes", [](const Args& a) { return op##_workspace_bytes(a); });

inline void cpu_entry_points(py::module_& m) { MUD_IKNN_OPS(MUD_IKNN_BIND_CPU) }

#ifdef MUD_IKNN_WITH_CUDA
inline void cuda_entry_points(py::module_& m) { MUD_IKNN_OPS(MUD_IKNN_BIND_CUDA) }
#endif

}  // namespace bind
}  // namespace mud_iknn
