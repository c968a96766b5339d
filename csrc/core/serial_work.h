// The CPU's serial threshold: a call whose work (element operations: bind.h's
// pair_work and triplet_work) is below it runs on the calling thread with no
// parallel region (cpu_backend.h's CpuCtx). Torch-free; a process-wide
// setting like the product precision, which torch.ops.rkd_ext._set_cpu_serial_work
// overrides (tests and benchmarks.serial_threshold).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#if !defined(_WIN32)
#include <time.h>
#endif

namespace rkd {

// Measured on 2 cores with `python -m benchmarks.serial_threshold` (every op,
// forward + backward, float32, N = 16-128, D = 512-25,088; medians of
// interleaved rounds, calls back to back): up to a call work of 2.7e5 (N = 16,
// D = 512, every op) the calling thread alone was as fast as two threads
// (0.98-1.06x, benchmarks/results/cpu-2core-2026-12-06-serial-threshold.json);
// at 5.2e5 (pairwise_distance at N = 16, D = 2048) it was 10%
// slower, and beyond that two threads gained up to 2x. So only calls below
// 3e5 run serial, where it costs nothing back to back; in a loop with other
// work between calls (torch's worker threads asleep) they skip the wake-up.
constexpr double kSerialWork = 3e5;

inline std::atomic<double>& serial_work_setting() {
  static std::atomic<double> work{kSerialWork};
  return work;
}

// The parallel regions the CPU kernels have opened in this process: the
// ranges of more than one grain, which torch's pool splits
// (torch.ops.rkd_ext._cpu_parallel_regions: the tests' window on the threshold).
inline std::atomic<int64_t>& parallel_regions() {
  static std::atomic<int64_t> count{0};
  return count;
}

// How many chunks per thread a parallel region hands out (cpu_backend.h's
// parallel_for): threads take them from a shared counter as they become
// free, so a thread that the scheduler preempts delays the region by at most
// the chunk it holds. 1 is one equal share per thread (at::parallel_for's
// own split). torch.ops.rkd_ext._set_cpu_region_chunks overrides it.
constexpr int64_t kRegionChunks = 4;

inline std::atomic<int64_t>& region_chunks_setting() {
  static std::atomic<int64_t> chunks{kRegionChunks};
  return chunks;
}

// The contention guard. Beside a busy process (a data-loading worker, a
// second job) that keeps a core busy, the pool's threads outnumber the free
// cores: a region waits for a worker that cannot run (for a scheduler slice,
// milliseconds), and a worker preempted in the middle of its chunk holds the
// region up. Short regions then lose more to the waits than they gain from
// the second thread; long ones can still gain. So every region is priced:
// its gain is the work of its threads (the calling thread's time until it
// found no chunk left, and each worker's CPU time, which a preemption does
// not inflate) less the time the region took, negative when it was slower
// than the calling thread alone would have been. The gains add up in a ledger whose
// credit is capped at kContentionCredit (a few scheduler slices); when the
// balance falls below -kContentionDebt the process is contended: the rest of
// that call and every call for the next contention_hold_ns() run on the
// calling thread (as serial calls: the same bits), the ledger restarts at 0,
// and the first call after the hold tries the pool again. Idle, and after sleeps that put the pool's
// threads to sleep (wake-ups cost tens of microseconds), regions gain and the
// guard never holds; a single preemption of a few milliseconds (a virtual
// machine's host, once in a while) is paid from the credit. Evidence:
// python -m benchmarks.contention (docs/performance.md).
constexpr int64_t kContentionCredit = 20000000;
constexpr int64_t kContentionDebt = 2000000;
constexpr int64_t kContentionHoldNs = 250000000;

inline std::atomic<int64_t>& contention_hold_ns() {
  static std::atomic<int64_t> hold{kContentionHoldNs};
  return hold;
}

inline int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The calling thread's CPU time in nanoseconds, or -1 where unknown.
inline int64_t thread_cpu_ns() {
#if defined(_WIN32)
  return -1;
#else
  timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return -1;
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
#endif
}

// Until when (steady_ns) calls run serial; and how many holds the ledger has
// started (torch.ops.rkd_ext._cpu_contention_holds).
inline std::atomic<int64_t>& contended_until_ns() {
  static std::atomic<int64_t> until{0};
  return until;
}
inline std::atomic<int64_t>& contention_holds() {
  static std::atomic<int64_t> count{0};
  return count;
}

inline bool contended_now() {
  return steady_ns() < contended_until_ns().load(std::memory_order_relaxed);
}

// Starts a hold now.
inline void mark_contended() {
  contended_until_ns().store(steady_ns() + contention_hold_ns().load(std::memory_order_relaxed),
                             std::memory_order_relaxed);
}

// Adds a region's gain (nanoseconds; negative: slower than serial) to the
// ledger; true when that started a hold (counted in contention_holds).
inline bool contention_ledger(int64_t gain) {
  static std::atomic<int64_t> balance{0};
  int64_t seen = balance.load(std::memory_order_relaxed), next;
  do {
    next = std::min(seen + gain, kContentionCredit);
  } while (!balance.compare_exchange_weak(seen, next, std::memory_order_relaxed));
  if (next >= -kContentionDebt) return false;
  balance.store(0, std::memory_order_relaxed);
  contention_holds().fetch_add(1, std::memory_order_relaxed);
  mark_contended();
  return true;
}

}  // namespace rkd
