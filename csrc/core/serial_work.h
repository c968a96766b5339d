// The CPU's serial threshold: a call whose work (element operations: bind.h's
// pair_work and triplet_work) is below it runs on the calling thread with no
// parallel region (cpu_backend.h's CpuCtx). Torch-free; a process-wide
// setting like the product precision, which torch.ops.rkd_ext._set_cpu_serial_work
// overrides (tests and benchmarks.serial_threshold).
#pragma once

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

// The contention guard. Beside a busy process (a data-loading worker, a
// second job) that keeps a core busy, the pool's threads outnumber the free
// cores: a region waits for a worker that cannot run, for a scheduler slice
// (milliseconds), and the threads that do run share the cores with it.
// Measured on 2 cores (distance loss, N = 128, D = 2048, 1,800 regions per
// case): a worker started at most 0.3 ms after its region began when idle and
// when woken after 10 ms of sleep; beside one busy process 4% of regions
// waited 1-8 ms for it, and the call took 2.7x its idle time on two threads
// against 1.0x on one. A region of a few milliseconds per thread (the angle
// loss at N = 128) absorbs such waits: there two threads stayed ahead of one.
// So a region is contended when one of its workers was delayed (started its
// chunk late, or was runnable but not running during it: its wall time less
// its CPU time) by more than the whole region would have taken on the calling
// thread alone, and by over kContendedWaitNs (above any wake-up from sleep).
// Unlike the time the region ends, the delay does not grow with an uneven
// split of the work. The rest of its call then runs on the calling thread (as
// a serial call: the same bits). A second one within kStrikeWindowNs marks
// the process contended: every call for the next contention_hold_ns() runs
// serial, and the first call after the hold tries the pool again. (A single
// late region, as a virtual machine's host preempting a thread once in a
// while produces on an idle machine, costs the rest of one call, not a hold.)
constexpr int64_t kContendedWaitNs = 1000000;
constexpr int64_t kStrikeWindowNs = 100000000;
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

// Until when (steady_ns) calls run serial; and how many regions were found contended
// (torch.ops.rkd_ext._cpu_contended_regions).
inline std::atomic<int64_t>& contended_until_ns() {
  static std::atomic<int64_t> until{0};
  return until;
}
inline std::atomic<int64_t>& contended_regions() {
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

// A contended region: counted, and a hold if the last one was recent.
inline void contended_region() {
  static std::atomic<int64_t> last{INT64_MIN / 2};
  contended_regions().fetch_add(1, std::memory_order_relaxed);
  const int64_t now = steady_ns();
  if (now - last.exchange(now, std::memory_order_relaxed) < kStrikeWindowNs) mark_contended();
}

}  // namespace rkd
