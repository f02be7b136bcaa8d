// C entry points to csrc/labels_cuda.cu built on the CUDA emulator (cuda_emulation.h), for ctypes
// (tests/emulated_cuda.py builds the library with -fvisibility=hidden: only these are exported).
// Pointers are host pointers standing in for device ones; each returns 0, or 1 with the error
// message in `error` (cuda_emulation::guarded).
#include "cuda_emulation.h"
#include "labels.h"

using cuda_emulation::guarded;

EXPORT int64_t emulated_knn_workspace_bytes(int64_t batch, int64_t count, int64_t height, int64_t width, int k) {
  return mud_iknn::knn_workspace_bytes(batch, count, height, width, k);
}

EXPORT int64_t emulated_sigma_workspace_bytes(int64_t batch, int64_t count, int64_t height, int64_t width, int k) {
  return mud_iknn::sigma_workspace_bytes(batch, count, height, width, k);
}

EXPORT int emulated_knn_maps(const float* points, const int64_t* offsets, int64_t batch, int64_t count, int64_t height,
                      int64_t width, int k, float max_distance, int transform, float* out, void* workspace,
                      int64_t workspace_bytes, char* error, int error_bytes) {
  return guarded(error, error_bytes, [&] {
    mud_iknn::knn_maps_cuda(points, offsets, batch, count, height, width, k, max_distance, transform, out, workspace,
                            workspace_bytes, nullptr, 0);
  });
}

EXPORT int emulated_head_sigmas(const float* points, const int64_t* offsets, int64_t batch, int64_t count, int64_t height,
                         int64_t width, int k, float beta, float* out, void* workspace, int64_t workspace_bytes,
                         char* error, int error_bytes) {
  return guarded(error, error_bytes, [&] {
    mud_iknn::head_sigmas_cuda(points, offsets, batch, count, height, width, k, beta, out, workspace, workspace_bytes,
                               nullptr, 0);
  });
}

EXPORT int64_t emulated_density_workspace_bytes(int64_t count) { return mud_iknn::density_workspace_bytes(count); }

EXPORT int emulated_density_maps(const float* points, const int64_t* offsets, const float* sigmas, int64_t batch,
                                 int64_t count, int64_t height, int64_t width, float truncate, float* out,
                                 void* workspace, int64_t workspace_bytes, char* error, int error_bytes) {
  return guarded(error, error_bytes, [&] {
    mud_iknn::density_maps_cuda(points, offsets, sigmas, batch, count, height, width, truncate, out, workspace,
                                workspace_bytes, nullptr, 0);
  });
}
