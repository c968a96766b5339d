// The CPU's serial threshold: a call whose work (element operations: bind.h's
// pair_work and triplet_work) is below it runs on the calling thread with no
// parallel region (cpu_backend.h's CpuCtx). Torch-free; a process-wide
// setting like the product precision, which torch.ops.rkd_ext._set_cpu_serial_work
// overrides (tests and benchmarks.serial_threshold).
#pragma once

#include <atomic>
#include <cstdint>

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

}  // namespace rkd
