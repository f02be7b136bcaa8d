// csrc/labels_cuda.cu and csrc/point_losses_cuda.cu built on the CUDA emulator (cuda_emulation.h) as
// the Python module `emulated_labels[_<flags' hash>]`: the argument structs and CUDA entry points of mud_iknn._C,
// bound by the same code (csrc/label_bindings.h, csrc/point_loss_bindings.h; its types private to
// this module). Pointers are host pointers standing in for device ones; a kernel that breaks the
// execution model raises RuntimeError.
// The emulator's own controls and self-tests are C entry points (emulator_selftest.cpp, ctypes).
#include <pybind11/pybind11.h>  // before the emulator's CUDA keywords and intrinsics

#include "cuda_emulation.h"
#include "label_bindings.h"
#include "labels.h"
#include "point_loss_bindings.h"

// One name per build's flags (tests/emulated_cuda.py): Python keeps the first module of a name, so
// a variant built under the same name would silently be the first build.
#ifndef MUD_IKNN_EMULATED_MODULE
#define MUD_IKNN_EMULATED_MODULE emulated_labels
#endif

PYBIND11_MODULE(MUD_IKNN_EMULATED_MODULE, m) {
  m.doc() = "mud_iknn's CUDA kernels (label engine, point losses) on the CPU emulator (tests)";
  mud_iknn::bind::structs(m, true);
  mud_iknn::bind::cuda_entry_points(m);
  mud_iknn::bind::point_loss_structs(m, true);
  mud_iknn::bind::point_loss_cuda_entry_points(m);
  m.attr("WITH_CUDA") = true;
}
