// The CUDA execution model on the CPU, for testing csrc/labels_cuda.cu on machines without a GPU.
//
// labels_cuda.cu includes this header instead of the CUDA headers when compiled by a host C++
// compiler with -DMUD_IKNN_CUDA_EMULATION (tests/emulated_cuda.py builds it that way). Each
// CUDA thread of a block runs as a fiber (ucontext) on one OS thread; blocks run one after another.
// __shared__ variables are function statics, so the threads of a block share them; each block
// starts with them full of garbage, as on the GPU. The emulator
// checks what the hardware leaves undefined: a block barrier must be reached by every thread of the
// block and a warp shuffle or vote by all 32 lanes of the warp; anything else (a barrier inside divergent
// code, a lane that left early) raises std::runtime_error instead of hanging or passing silently.
// Threads run in a fixed order between barriers (Schedule: in order, reversed, or a warp at a time
// through its shuffles, as far ahead of the others as the hardware may let it run): running them
// all and comparing the bits exposes races and order-dependent sums. rsqrtf, __fdividef and expf
// are as far off as the hardware's may be (MathError). What it does not model: timing, the memory
// model beyond that.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// __shared__ variables are statics in one section of the library, which every block starts by
// filling with garbage (poison_shared_memory): on the GPU a block's shared memory holds whatever was
// there, so a read before the block's own write shows.
#define __shared__ static __attribute__((section("cuda_emulation_shared")))
extern "C" char __start_cuda_emulation_shared[], __stop_cuda_emulation_shared[];  // the linker's

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {  // aligned as CUDA's
  float x, y;
};
struct alignas(16) float4 {  // aligned as CUDA's
  float x, y, z, w;
};
struct alignas(8) int2 {  // aligned as CUDA's
  int x, y;
};
inline int2 make_int2(int x, int y) { return int2{x, y}; }
// CUDA's device min / max, for any mix of arithmetic types.
template <class A, class B>
std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <class A, class B>
std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}
namespace cuda_emulation {

// The GPU's rsqrtf and __fdividef (its special function unit) and expf are within 2 ulp of the
// true value (CUDA Programming Guide, mathematical functions), not correctly rounded. The emulator
// returns the correctly rounded value moved by a number of ulps that MathError picks, so that the
// tests see results as far off as the hardware's may be. Zeros and infinities stay exact.
enum class MathError {
  kExact,      // correctly rounded
  kScattered,  // -2 to +2 ulp, a pseudo-random choice fixed by the arguments' bits (the default)
  kHigh,       // +2 ulp everywhere (towards +infinity)
  kLow         // -2 ulp everywhere
};
constexpr int kFastMathUlps = 2;

inline MathError& math_error() {
  static MathError mode = MathError::kScattered;
  return mode;
}

inline uint32_t bits_of(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

// `exact` moved by the ulps math_error() picks for the arguments whose bits are `key`.
inline float within_fast_math_error(float exact, uint64_t key) {
  if (exact == 0.0f || !std::isfinite(exact)) return exact;
  int ulps = 0;
  switch (math_error()) {
    case MathError::kExact: return exact;
    case MathError::kHigh: ulps = kFastMathUlps; break;
    case MathError::kLow: ulps = -kFastMathUlps; break;
    case MathError::kScattered:
      key = (key ^ (key >> 31)) * 0x9e3779b97f4a7c15ull;  // splitmix64's finaliser
      key = (key ^ (key >> 29)) * 0xbf58476d1ce4e5b9ull;
      ulps = int((key ^ (key >> 32)) % (2 * kFastMathUlps + 1)) - kFastMathUlps;
      break;
  }
  for (; ulps > 0; --ulps) exact = std::nextafter(exact, INFINITY);
  for (; ulps < 0; ++ulps) exact = std::nextafter(exact, -INFINITY);
  return exact;
}

inline float device_expf(float v) { return within_fast_math_error(float(std::exp(double(v))), bits_of(v)); }

}  // namespace cuda_emulation

inline float rsqrtf(float v) {
  return cuda_emulation::within_fast_math_error(float(1.0 / std::sqrt(double(v))), cuda_emulation::bits_of(v));
}
// The GPU's __fdividef(a, b) is 0 for 2^126 < |b| < 2^128 (NaN when a is infinite).
inline float __fdividef(float a, float b) {
  if (std::isfinite(b) && std::fabs(b) > 0x1p126f) return std::isinf(a) ? NAN : 0.0f;
  return cuda_emulation::within_fast_math_error(a / b, uint64_t(cuda_emulation::bits_of(a)) << 32 | cuda_emulation::bits_of(b));
}
// Every expf of the emulated kernels (the standard headers are all included above).
#define expf(v) ::cuda_emulation::device_expf(v)
inline float __fmul_rn(float a, float b) { return a * b; }  // (never contracted into an FMA)
inline float __fadd_rn(float a, float b) { return a + b; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

using cudaStream_t = struct EmulatedStream*;
enum cudaError_t { cudaSuccess = 0 };
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t = nullptr) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

namespace cub {
struct DeviceScan {
  // The size query (temp == nullptr) reports a few bytes, so the caller's workspace layout keeps
  // its shape; the scan itself runs in place on the host.
  static cudaError_t ExclusiveSum(void* temp, size_t& temp_bytes, const int* in, int* out, int n,
                                  cudaStream_t = nullptr) {
    if (temp == nullptr) {
      temp_bytes = 16;
      return cudaSuccess;
    }
    int sum = 0;
    for (int i = 0; i < n; ++i) {
      const int v = in[i];
      out[i] = sum;
      sum += v;
    }
    return cudaSuccess;
  }
};
}  // namespace cub

namespace cuda_emulation {

enum class State { kReady, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Thread {
  ucontext_t context;
  dim3 index;
  int linear = 0;
  State state = State::kReady;
  int vote = 0;  // this thread's argument to __syncthreads_and
};

constexpr size_t kStackBytes = 256 * 1024;

// The stack of fiber i, kept from block to block (allocating them per block cost a system call each).
inline char* stack(int i) {
  static std::vector<std::unique_ptr<char[]>> stacks;
  while (int(stacks.size()) <= i) stacks.emplace_back(new char[kStackBytes]);
  return stacks[i].get();
}

struct Block {
  std::vector<Thread> threads;
  dim3 block_idx, block_dim, grid_dim;
  std::function<void()> body;
  ucontext_t scheduler;
  Thread* current = nullptr;
  int vote_result = 0;
  // [warp][parity][lane]: the value each lane offers to a shuffle or vote. A warp's exchanges
  // alternate between two buffers, so one barrier per exchange suffices: a lane that writes the
  // buffer of exchange i + 2 has passed the barrier of exchange i + 1, which every lane reaches
  // only after reading exchange i's values.
  unsigned char lanes[32][2][32][8];
  int shuffles[32] = {};  // per warp, exchanges completed
};

// The order in which the threads of a block run between barriers. Code whose result depends on it
// (a data race, or a sum whose order depends on thread timing) gives different results under
// different orders; correct code gives the same bits under all of them.
enum class Schedule {
  kInOrder,           // threads 0, 1, ... each up to its next barrier or shuffle
  kReversed,          // the same, last thread first (and the launch's last block first)
  kWarpsAhead,        // warp 0 runs through its shuffles up to a block barrier, then warp 1, ...
  kWarpsAheadReversed // the same, last warp first (and the launch's last block first)
};

inline Schedule& schedule() {
  static Schedule order = Schedule::kInOrder;
  return order;
}

inline Block*& active() {
  static Block* block = nullptr;
  return block;
}

inline Thread& self() { return *active()->current; }

// Switches from the running fiber back to the scheduler, leaving it in `state`.
inline void park(State state) {
  Block& b = *active();
  Thread& t = *b.current;
  t.state = state;
  swapcontext(&t.context, &b.scheduler);
}

inline void fiber_entry() {
  Block& b = *active();
  b.body();
  b.current->state = State::kDone;
  swapcontext(&b.current->context, &b.scheduler);
}

[[noreturn]] inline void fail(const Block& b, const std::string& what) {
  throw std::runtime_error("cuda_emulation: block (" + std::to_string(b.block_idx.x) + ", " +
                           std::to_string(b.block_idx.y) + ", " + std::to_string(b.block_idx.z) + "): " + what);
}

// Releases warp w's shuffle once all its 32 lanes wait there. False when none of them waits.
inline bool release_warp(Block& b, int w) {
  const int n = int(b.threads.size());
  int waiting = 0;
  for (int l = w * 32; l < std::min(n, w * 32 + 32); ++l) waiting += b.threads[l].state == State::kAtWarpBarrier;
  if (waiting == 0) return false;
  if (waiting != 32) {
    // Lanes of this warp are elsewhere: at a block barrier or finished (both final for this sweep).
    fail(b, "a warp shuffle reached by " + std::to_string(waiting) + " of the 32 lanes of warp " + std::to_string(w));
  }
  for (int l = w * 32; l < w * 32 + 32; ++l) b.threads[l].state = State::kReady;
  ++b.shuffles[w];
  return true;
}

// Releases the barriers every participant has reached: each warp whose 32 lanes all wait at a
// shuffle, else the block once every thread waits at __syncthreads. False when nothing could be released.
inline bool release(Block& b) {
  const int n = int(b.threads.size());
  bool released = false;
  for (int w = 0; w * 32 < n; ++w) released = release_warp(b, w) || released;
  if (released) return true;
  int at_barrier = 0, done = 0, vote = 1;
  for (const Thread& t : b.threads) {
    at_barrier += t.state == State::kAtBlockBarrier;
    done += t.state == State::kDone;
    if (t.state == State::kAtBlockBarrier) vote = vote && t.vote;
  }
  if (at_barrier == 0) return false;
  if (at_barrier != n)
    fail(b, "__syncthreads reached by " + std::to_string(at_barrier) + " of " + std::to_string(n) + " threads (" +
                std::to_string(done) + " had finished)");
  b.vote_result = vote;
  for (Thread& t : b.threads) t.state = State::kReady;
  return true;
}

// Runs the ready threads among [first, first + count), in order or reversed.
inline void run_ready(Block& b, int first, int count, bool reversed) {
  for (int i = 0; i < count; ++i) {
    Thread& t = b.threads[first + (reversed ? count - 1 - i : i)];
    if (t.state != State::kReady) continue;
    b.current = &t;
    swapcontext(&b.scheduler, &t.context);
  }
}

// One sweep of the block's threads under schedule(), up to where each waits at a barrier it cannot
// pass alone (a warp ahead passes its own shuffles).
inline void sweep(Block& b) {
  const int n = int(b.threads.size());
  const Schedule order = schedule();
  if (order == Schedule::kInOrder || order == Schedule::kReversed) {
    run_ready(b, 0, n, order == Schedule::kReversed);
    return;
  }
  const int warps = (n + 31) / 32;
  for (int i = 0; i < warps; ++i) {
    const int w = order == Schedule::kWarpsAheadReversed ? warps - 1 - i : i;
    do run_ready(b, w * 32, std::min(32, n - w * 32), false);
    while (release_warp(b, w));
  }
}

// Fills every __shared__ variable with a garbage byte: 0xff (-1 ints, NaN floats) or 0x5a (large
// positive ints and floats), alternating from block to block.
inline void poison_shared_memory() {
  static unsigned blocks = 0;
  std::memset(__start_cuda_emulation_shared, blocks++ % 2 ? 0x5a : 0xff,
              size_t(__stop_cuda_emulation_shared - __start_cuda_emulation_shared));
}

// Runs body() as every thread of one block, fibers switching at barriers and shuffles.
inline void run_block(dim3 block_idx, dim3 block_dim, dim3 grid_dim, const std::function<void()>& body) {
  poison_shared_memory();
  Block b;
  b.block_idx = block_idx;
  b.block_dim = block_dim;
  b.grid_dim = grid_dim;
  b.body = body;
  const int n = int(block_dim.x * block_dim.y * block_dim.z);
  if (n < 1 || n > 1024) throw std::runtime_error("cuda_emulation: bad block size " + std::to_string(n));
  b.threads.resize(n);
  active() = &b;
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t.linear = i;
    t.index = dim3(i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y));
    getcontext(&t.context);
    t.context.uc_stack.ss_sp = stack(i);
    t.context.uc_stack.ss_size = kStackBytes;
    t.context.uc_link = nullptr;
    makecontext(&t.context, fiber_entry, 0);
  }
  try {
    for (;;) {
      sweep(b);
      bool all_done = true;
      for (const Thread& t : b.threads) all_done = all_done && t.state == State::kDone;
      if (all_done) break;
      if (!release(b)) fail(b, "deadlock: threads wait but no barrier can complete");
    }
  } catch (...) {
    active() = nullptr;
    throw;
  }
  active() = nullptr;
}

// A kernel launch: the blocks of `grid` one after another, each as block_dim fibers: in order (x
// fastest), or last first under the reversed schedules (blocks of one launch must not depend on
// each other's order either). A grid the hardware refuses (x beyond 2^31 - 1, y or z beyond
// MUD_IKNN_CUDA_MAX_GRID_Y, default 65535) raises.
inline void launch(dim3 grid, dim3 block_dim, const std::function<void()>& body) {
#ifndef MUD_IKNN_CUDA_MAX_GRID_Y
  constexpr unsigned kMaxGridY = 65535;
#else
  constexpr unsigned kMaxGridY = MUD_IKNN_CUDA_MAX_GRID_Y;
#endif
  if (grid.x < 1 || grid.x > 0x7fffffffu || grid.y < 1 || grid.y > kMaxGridY || grid.z < 1 || grid.z > kMaxGridY)
    throw std::runtime_error("cuda_emulation: invalid configuration argument: grid (" + std::to_string(grid.x) +
                             ", " + std::to_string(grid.y) + ", " + std::to_string(grid.z) + ")");
  const bool reversed = schedule() == Schedule::kReversed || schedule() == Schedule::kWarpsAheadReversed;
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  for (uint64_t i = 0; i < blocks; ++i) {
    const uint64_t b = reversed ? blocks - 1 - i : i;
    run_block(dim3(unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / grid.x / grid.y)), block_dim,
              grid, body);
  }
}

inline void warp_barrier() { park(State::kAtWarpBarrier); }

// One warp-wide exchange: every lane offers `value`; returns the 32 values offered, by lane.
template <class T>
const unsigned char (&exchange(unsigned mask, T value))[32][8] {
  static_assert(sizeof(T) <= 8, "shuffled values are at most 8 bytes");
  if (mask != 0xffffffffu) fail(*active(), "only full-warp shuffles and votes are emulated");
  Block& b = *active();
  const int lane = self().linear % 32, warp = self().linear / 32;
  unsigned char(&buffer)[32][8] = b.lanes[warp][b.shuffles[warp] & 1];
  std::memcpy(buffer[lane], &value, sizeof(T));
  warp_barrier();  // every lane has written (the release counts the exchange)
  return buffer;
}

template <class T>
T shuffle(unsigned mask, T value, int source_lane_offset, bool up) {
  const auto& offered = exchange(mask, value);
  const int lane = self().linear % 32;
  const int source = up ? lane - source_lane_offset : lane + source_lane_offset;
  T out = value;
  if (source >= 0 && source < 32) std::memcpy(&out, offered[source], sizeof(T));
  return out;
}

// For the C entry points the tests load with ctypes: 0 after call(), or 1 with the message of the
// exception it threw (a kernel that broke the execution model, a host-side check) in `error`.
template <class Call>
int guarded(char* error, int error_bytes, Call call) {
  try {
    call();
    return 0;
  } catch (const std::exception& e) {
    std::strncpy(error, e.what(), size_t(error_bytes) - 1);
    error[error_bytes - 1] = '\0';
    return 1;
  }
}

}  // namespace cuda_emulation

#define EXPORT extern "C" __attribute__((visibility("default")))  // a C entry point of the test library

#define threadIdx (::cuda_emulation::self().index)
#define blockIdx (::cuda_emulation::active()->block_idx)
#define blockDim (::cuda_emulation::active()->block_dim)
#define gridDim (::cuda_emulation::active()->grid_dim)

inline void __syncthreads() { cuda_emulation::park(cuda_emulation::State::kAtBlockBarrier); }
inline int __syncthreads_and(int predicate) {
  cuda_emulation::self().vote = predicate != 0;
  cuda_emulation::park(cuda_emulation::State::kAtBlockBarrier);
  return cuda_emulation::active()->vote_result;
}
template <class T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta) {
  return cuda_emulation::shuffle(mask, value, int(delta), true);
}
template <class T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta) {
  return cuda_emulation::shuffle(mask, value, int(delta), false);
}
// Bit l of the result: whether lane l's predicate is non-zero.
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const auto& offered = cuda_emulation::exchange(mask, int(predicate != 0));
  unsigned votes = 0;
  for (int l = 0; l < 32; ++l) {
    int vote;
    std::memcpy(&vote, offered[l], sizeof(int));
    votes |= unsigned(vote) << l;
  }
  return votes;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
// Fibers never interleave within a statement, so plain read-modify-writes are atomic here.
template <class T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
