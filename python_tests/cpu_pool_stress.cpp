// A stress driver for the CPU kernels' worker pool (csrc/cpu/cpu_pool.h),
// built with -fsanitize=thread by test_cpu_pool_tsan.py: thousands of regions
// of varied chunk counts on pools of one to three workers, each chunk's
// output a plain (non-atomic) write that the caller reads after the region,
// so that a region ending before its chunks, or a worker reading the
// region's fields before they are published, is a data race the sanitizer
// reports. Also checked here: every chunk runs exactly once, an exception
// thrown by a chunk reaches the caller after the region, and a second
// caller meanwhile is refused. Exit status 0 when all of that holds.
#include <atomic>
#include <cstdio>
#include <stdexcept>
#include <thread>
#include <vector>

#include "cpu_pool.h"

namespace {

struct Region {
  std::vector<int64_t>* out;
  int64_t throw_at;
};

void chunk(const void* ctx, int64_t k) {
  const Region& r = *static_cast<const Region*>(ctx);
  volatile int64_t v = k;  // chunks of varied length
  for (int i = 0; i < 200 * static_cast<int>(k % 7); ++i) v = v * 3 + 1;
  (*r.out)[k] += 1;
  if (k == r.throw_at) throw std::runtime_error("planted chunk failure");
}

int fail(const char* what, int64_t region) {
  std::fprintf(stderr, "cpu_pool_stress: %s (region %lld)\n", what, static_cast<long long>(region));
  return 1;
}

}  // namespace

int main() {
  rkd::CpuPool& pool = rkd::CpuPool::get();
  const int64_t regions = 3000;
  for (int64_t r = 0; r < regions; ++r) {
    const int64_t workers = 1 + (r / 500) % 3;
    const int64_t chunks = 1 + (r * 7919) % 61;
    std::vector<int64_t> out(static_cast<size_t>(chunks), 0);
    Region region{&out, r % 97 == 5 ? chunks / 2 : -1};
    rkd::CpuPool::Times t;
    bool threw = false;
    try {
      if (!pool.run(workers, chunks, chunk, &region, r % 2 == 0, &t)) return fail("the pool refused a lone caller", r);
    } catch (const std::runtime_error&) {
      threw = true;
    }
    if (threw != (region.throw_at >= 0)) return fail("a chunk's exception was lost or invented", r);
    for (int64_t k = 0; k < chunks; ++k)
      if (out[static_cast<size_t>(k)] != 1) return fail("a chunk ran other than once", r);
    if (pool.workers() != workers) return fail("the pool did not take the asked workers", r);
    // Let the workers fall asleep now and then, so that waking them is exercised too.
    if (r % 250 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  // Two callers at once: each region runs entirely, on the pool or (refused) not at all.
  std::atomic<int64_t> refused{0}, bad{0};
  const auto caller = [&](int64_t seed) {
    for (int64_t r = 0; r < 500; ++r) {
      const int64_t chunks = 1 + (seed + r * 31) % 40;
      std::vector<int64_t> out(static_cast<size_t>(chunks), 0);
      Region region{&out, -1};
      if (!pool.run(2, chunks, chunk, &region, false, nullptr)) {
        refused.fetch_add(1);
        for (int64_t k = 0; k < chunks; ++k) chunk(&region, k);
      }
      for (int64_t k = 0; k < chunks; ++k)
        if (out[static_cast<size_t>(k)] != 1) bad.fetch_add(1);
    }
  };
  std::thread other(caller, 7);
  caller(3);
  other.join();
  if (bad.load() != 0) return fail("a concurrent region's chunk ran other than once", -1);
  std::printf("cpu_pool_stress: %lld regions, %lld worker chunks, %lld concurrent regions refused\n",
              static_cast<long long>(regions + 1000), static_cast<long long>(pool.worker_chunks()),
              static_cast<long long>(refused.load()));
  return 0;
}
