// Kernels that check the CUDA emulator itself (tests/test_cuda_emulation.py): that its shuffles,
// barriers and votes compute what the hardware does, and that it refuses what the hardware leaves
// undefined instead of passing it.
#include "cuda_emulation.h"

namespace {

// out[i] = inclusive prefix sum over the lanes of i's warp of (i + 1), through __shfl_up_sync;
// out[n + i] = the sum of all lanes of i's warp, through __shfl_down_sync (valid on lane 0).
__global__ void warp_sums(int* out) {
  const int i = threadIdx.x, lane = i & 31, n = blockDim.x;
  int v = i + 1;
  for (int off = 1; off < 32; off <<= 1) {
    const int u = __shfl_up_sync(0xffffffffu, v, off);
    if (lane >= off) v += u;
  }
  out[i] = v;
  double s = i + 1;
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  out[n + i] = int(s);
}

// Shared memory written before a barrier is read by other threads after it, in reverse order;
// out[n] = __syncthreads_and(every thread's value is even), out[n + 1] the same for "below 1000".
__global__ void reverse_through_shared(const int* in, int* out) {
  __shared__ int tile[1024];
  const int i = threadIdx.x, n = blockDim.x;
  tile[i] = in[i];
  __syncthreads();
  out[i] = tile[n - 1 - i];
  const int all_even = __syncthreads_and(in[i] % 2 == 0);
  const int all_small = __syncthreads_and(in[i] < 1000);
  if (i == 0) {
    out[n] = all_even;
    out[n + 1] = all_small;
  }
}

// Every thread of every block writes its global index to the same word: the last writer wins, a race.
__global__ void last_writer_wins(int* out) { *out = blockIdx.x * blockDim.x + threadIdx.x; }

// Warp 0 shuffles and then overwrites a shared word that another warp reads with no barrier in
// between, a race: the reader sees 1 or 2 depending on how far warp 0 has run ahead.
__global__ void read_behind_a_warp_ahead(int* out) {
  __shared__ int value;
  if (threadIdx.x == 0) value = 1;
  __syncthreads();
  if (threadIdx.x < 32) {
    const int two = __shfl_down_sync(0xffffffffu, 2, 1);
    if (threadIdx.x == 0) value = two;
  } else if (threadIdx.x == 32) {
    *out = value;
  }
  __syncthreads();
}

// Each block's thread 0 reads a shared word before any thread writes it (garbage on the GPU), then
// writes it: out[blockIdx.x] = what it read.
__global__ void read_shared_before_writing(int* out) {
  __shared__ int fresh;
  if (threadIdx.x == 0) {
    out[blockIdx.x] = fresh;
    fresh = 7;
  }
}

// Counts the blocks of the launch (one thread each).
__global__ void count_blocks(int* out) { ++*out; }

__global__ void barrier_in_divergent_code() {
  if (threadIdx.x < 40) __syncthreads();
}

__global__ void shuffle_with_lanes_missing() {
  if (threadIdx.x % 32 < 16) (void)__shfl_up_sync(0xffffffffu, 1, 1);
}

}  // namespace

using cuda_emulation::guarded;

EXPORT void emulator_set_schedule(int order) { cuda_emulation::schedule() = cuda_emulation::Schedule(order); }

EXPORT void emulator_set_math_error(int mode) { cuda_emulation::math_error() = cuda_emulation::MathError(mode); }

// rsqrtf, __fdividef and expf of each of the n values in `in` (into out, out + n and out + 2n).
EXPORT void emulator_fast_math(int n, const float* in, float* out) {
  for (int i = 0; i < n; ++i) {
    out[i] = rsqrtf(in[i]);
    out[n + i] = __fdividef(1.0f, in[i]);
    out[2 * n + i] = expf(in[i]);
  }
}

EXPORT int emulator_warp_sums(int threads, int* out, char* error, int error_bytes) {
  return guarded(error, error_bytes, [&] { cuda_emulation::launch(1, threads, [&] { warp_sums(out); }); });
}

EXPORT int emulator_reverse_through_shared(int threads, const int* in, int* out, char* error, int error_bytes) {
  return guarded(error, error_bytes,
                 [&] { cuda_emulation::launch(1, threads, [&] { reverse_through_shared(in, out); }); });
}

EXPORT int emulator_last_writer_wins(int* out, char* error, int error_bytes) {
  return guarded(error, error_bytes, [&] { cuda_emulation::launch(3, 64, [&] { last_writer_wins(out); }); });
}

EXPORT int emulator_count_blocks(unsigned x, unsigned y, unsigned z, int* out, char* error, int error_bytes) {
  return guarded(error, error_bytes, [&] { cuda_emulation::launch(dim3(x, y, z), 1, [&] { count_blocks(out); }); });
}

EXPORT int emulator_read_behind_a_warp_ahead(int* out, char* error, int error_bytes) {
  return guarded(error, error_bytes, [&] { cuda_emulation::launch(1, 64, [&] { read_behind_a_warp_ahead(out); }); });
}

EXPORT int emulator_read_shared_before_writing(int blocks, int* out, char* error, int error_bytes) {
  return guarded(error, error_bytes,
                 [&] { cuda_emulation::launch(blocks, 32, [&] { read_shared_before_writing(out); }); });
}

EXPORT int emulator_barrier_in_divergent_code(char* error, int error_bytes) {
  return guarded(error, error_bytes, [&] { cuda_emulation::launch(2, 64, [] { barrier_in_divergent_code(); }); });
}

EXPORT int emulator_shuffle_with_lanes_missing(char* error, int error_bytes) {
  return guarded(error, error_bytes, [&] { cuda_emulation::launch(1, 64, [] { shuffle_with_lanes_missing(); }); });
}
