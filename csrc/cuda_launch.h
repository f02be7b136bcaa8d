// The CUDA kernels' host helpers: error checks, launches and the current device, on the GPU or on
// the CUDA emulator (tests/cuda_emulation, where MUD_IKNN_CUDA_EMULATION runs the kernels on the CPU).
#pragma once

#ifdef MUD_IKNN_CUDA_EMULATION
#include "cuda_emulation.h"
#else
#include <cuda_runtime.h>
#endif
#include <cstdint>
#include <stdexcept>
#include <string>

namespace mud_iknn {

// Throws std::runtime_error naming `what` unless err is cudaSuccess.
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("mud_iknn: CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

// kernel<<<grid, block, 0, stream>>>(args...), then a check for launch errors naming `what`.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, const char* what,
            Args... args) {
#ifdef MUD_IKNN_CUDA_EMULATION
  cuda_emulation::launch(grid, block, [&] { kernel(args...); });
#else
  kernel<<<grid, block, 0, stream>>>(args...);
#endif
  check(cudaGetLastError(), what);
}

// The kernels read a head as one float2 (8 bytes): std::invalid_argument unless `xy` is aligned to it
// (mud_iknn._ops copies points that start 4 bytes into their storage before calling).
inline void require_float2_aligned(const float* xy) {
  if (reinterpret_cast<uintptr_t>(xy) % alignof(float2) != 0)
    throw std::invalid_argument("mud_iknn: points must start on an 8-byte boundary (a float2 per head)");
}

// Makes `device` current for the scope of a call, restoring the caller's device after.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceScope() { cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

}  // namespace mud_iknn
