// The CPU kernels' thread pool: a loop over tasks shared by up to `threads` threads.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace mud_iknn {

// Runs fn(task) for task in [0, tasks) on up to `threads` threads (the caller's included).
template <class Fn>
void parallel_for(int64_t tasks, int threads, Fn fn) {
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, tasks));
  std::atomic<int64_t> next{0};
  auto run = [&]() {
    for (int64_t t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) fn(t);
  };
  std::vector<std::thread> pool;
  for (int64_t i = 1; i < workers; ++i) pool.emplace_back(run);
  run();
  for (auto& th : pool) th.join();
}

// The threads worth starting for `work` units when one thread should get at least `per_thread` of
// them (starting one costs tens of microseconds): between 1 and `threads`.
inline int threads_for(int64_t work, int64_t per_thread, int threads) {
  return int(std::max<int64_t>(1, std::min<int64_t>(threads, work / per_thread)));
}

}  // namespace mud_iknn
