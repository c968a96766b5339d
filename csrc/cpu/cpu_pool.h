// The CPU kernels' own worker threads: a parallel region whose calling
// thread never waits for a worker that has not started.
//
// A region of torch's pool (OpenMP fork-join) ends at a barrier that every
// thread of the team must reach, each worker included, even one that has no
// work left. Beside a busy process the worker may not get a core for a
// scheduler slice (milliseconds), and after an idle gap it is asleep (tens of
// microseconds to wake): the region waits either way, however little work
// the worker would have done. Here a region is a count of chunks that threads
// claim one at a time from a shared word; the calling thread claims chunks
// like any worker, and once none is left it waits only for the chunks a
// worker has claimed and not yet finished. A worker that wakes late finds no
// chunk and goes back to waiting; it never touches the region's closure,
// which lives on the caller's stack, without first holding a claim, and the
// caller does not return while a claim is outstanding.
//
// The claim word packs the region's epoch (a count of regions, so that a late
// worker cannot claim from a region that has ended), the next chunk and the
// chunk count; a claim is one compare-and-swap. After its last chunk a
// worker polls for the next region for kSpinNs (the next region of the same
// call usually follows within that), then sleeps on a condition variable.
// It polls with sched_yield, not a pause loop: beside a busy process the
// poll must not take a core from the caller or the neighbour (measured with
// benchmarks.contention --compare pool, docs/performance.md), and the
// caller, which never waits for a worker to arrive, loses nothing when the
// worker is late. One caller at a time:
// another thread's region, or a region nested in a chunk, does not use the
// pool (cpu_backend.h's parallel_for then takes torch's pool, or runs the
// range inline). A fork leaves the child without the workers: the child makes
// a fresh pool on its first region. Torch-free.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if !defined(_WIN32)
#include <pthread.h>
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "../core/serial_work.h"

namespace rkd {

// Which threads run the CPU kernels' parallel regions: torch's intra-op pool
// (OpenMP), or the pool below (the default). torch.ops.rkd_ext._set_cpu_pool
// switches (benchmarks.contention --compare pool); results are the same bits
// either way.
enum class PoolKind : int { Torch = 0, Own = 1 };

inline std::atomic<int>& pool_setting() {
  static std::atomic<int> kind{static_cast<int>(PoolKind::Own)};
  return kind;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

class CpuPool {
 public:
  using Chunk = void (*)(const void* ctx, int64_t k);
  // Where a region's time went (steady and thread CPU nanoseconds): the
  // caller's until it found no chunk left, the whole region's, and the
  // workers' CPU time in their chunks (when measured).
  struct Times {
    int64_t caller_ns = 0, wall_ns = 0, worker_cpu_ns = 0;
  };
  // The most chunks a region may have (the claim word's field).
  static constexpr int64_t kMaxChunks = (int64_t{1} << 14) - 1;
  // How long a worker polls for the next region before it sleeps: 1 ms
  // (benchmarks.contention --compare pool, angle loss and rkd_loss at N = 32
  // and 128, D = 512 and 25,088: with 0.2 ms calls at N = 32, D = 512 back to
  // back took 1.12-1.14x torch's pool, their single region arriving after the
  // worker slept; with 1 ms 1.01x, and 3 ms gained nothing more beyond noise).
  static constexpr int64_t kSpinNs = 1000000;

  // The process's pool (a fresh one in a forked child).
  static CpuPool& get() {
    static const bool registered = [] {
#if !defined(_WIN32)
      // The child has none of the workers; the old pool (and any lock a
      // worker held at the fork) is left untouched.
      pthread_atfork(nullptr, nullptr, [] { instance().store(nullptr, std::memory_order_relaxed); });
#endif
      return true;
    }();
    (void)registered;
    CpuPool* p = instance().load(std::memory_order_acquire);
    if (p) return *p;
    static std::mutex create;
    std::lock_guard<std::mutex> lock(create);
    p = instance().load(std::memory_order_acquire);
    if (!p) {
      p = new CpuPool();  // never freed: workers may outlive static destruction
      instance().store(p, std::memory_order_release);
    }
    return *p;
  }

  // Whether the calling thread is inside a region of the pool: one of its
  // workers, or a caller running its chunks (a region nested in a chunk runs
  // inline, as in torch's pool).
  static bool in_region() { return region_flag(); }

  // Runs fn(ctx, k) for every k in [0, chunks) on the calling thread and up
  // to `workers` pool threads, and returns once each has run; false (nothing
  // run) when the pool is in use by another region. An exception thrown by a
  // chunk is rethrown here once every claimed chunk has finished.
  bool run(int64_t workers, int64_t chunks, Chunk fn, const void* ctx, bool measure, Times* times) {
    if (chunks < 1 || chunks > kMaxChunks) return false;
    if (in_use_.exchange(true, std::memory_order_acquire)) return false;
    struct Release {
      std::atomic<bool>& flag;
      ~Release() { flag.store(false, std::memory_order_release); }
    } release{in_use_};
    struct Inside {
      bool before = region_flag();
      Inside() { region_flag() = true; }
      ~Inside() { region_flag() = before; }
    } inside;
    resize(workers);
    const int64_t start = steady_ns();
    fn_ = fn;
    ctx_ = ctx;
    measure_ = measure;
    count_ = chunks;
    done_.store(0, std::memory_order_relaxed);
    worker_cpu_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    const uint64_t epoch = epoch_of(state_.load(std::memory_order_relaxed)) + 1;
    state_.store(pack(epoch, 0, chunks), std::memory_order_seq_cst);  // publishes the fields above
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lock(m_); }
      cv_.notify_all();
    }
    for (int64_t k = claim(epoch); k >= 0; k = claim(epoch)) execute(k, false);
    const int64_t caller_end = steady_ns();
    wait_done(chunks, start);
    if (times) {
      times->caller_ns = caller_end - start;
      times->wall_ns = steady_ns() - start;
      times->worker_cpu_ns = worker_cpu_.load(std::memory_order_relaxed);
    }
    if (error_) {
      std::exception_ptr e = error_;
      error_ = nullptr;
      std::rethrow_exception(e);
    }
    return true;
  }

  // The pool's worker threads now, and the chunks they have run (tests).
  int64_t workers() const { return workers_.load(std::memory_order_relaxed); }
  int64_t worker_chunks() const { return worker_chunks_.load(std::memory_order_relaxed); }

 private:
  static constexpr int kCountBits = 14, kNextShift = kCountBits, kEpochShift = 2 * kCountBits;
  static constexpr uint64_t kField = (uint64_t{1} << kCountBits) - 1;
  static uint64_t pack(uint64_t epoch, int64_t next, int64_t count) {
    return (epoch << kEpochShift) | (static_cast<uint64_t>(next) << kNextShift) | static_cast<uint64_t>(count);
  }
  static uint64_t epoch_of(uint64_t s) { return s >> kEpochShift; }

  static std::atomic<CpuPool*>& instance() {
    static std::atomic<CpuPool*> p{nullptr};
    return p;
  }
  static bool& region_flag() {
    static thread_local bool inside = false;
    return inside;
  }

  // Claims the next chunk of region `epoch`: its index, or -1 when none is
  // left or the region has ended. Acquire: a successful claim sees the
  // region's fields as the caller published them.
  int64_t claim(uint64_t epoch) {
    uint64_t s = state_.load(std::memory_order_acquire);
    for (;;) {
      if (epoch_of(s) != epoch) return -1;
      const int64_t next = static_cast<int64_t>((s >> kNextShift) & kField);
      if (next >= static_cast<int64_t>(s & kField)) return -1;
      if (state_.compare_exchange_weak(s, s + (uint64_t{1} << kNextShift), std::memory_order_acq_rel,
                                       std::memory_order_acquire))
        return next;
    }
  }

  void execute(int64_t k, bool worker) {
    const int64_t c0 = worker && measure_ ? thread_cpu_ns() : 0;
    try {
      fn_(ctx_, k);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_m_);
      if (!error_) error_ = std::current_exception();
    }
    if (worker) {
      worker_chunks_.fetch_add(1, std::memory_order_relaxed);
      if (measure_) worker_cpu_.fetch_add(thread_cpu_ns() - c0, std::memory_order_relaxed);
    }
    const int64_t count = count_;  // read before the increment lets the caller return
    if (done_.fetch_add(1, std::memory_order_seq_cst) + 1 == count && waiting_.load(std::memory_order_seq_cst)) {
      { std::lock_guard<std::mutex> lock(done_m_); }
      done_cv_.notify_all();
    }
  }

  // Until every chunk of the region has finished: a spin while a worker
  // finishes its last chunk (as long as the region has taken so far, within
  // [20 us, 200 us]: a worker's chunk takes about as long as the caller's),
  // then a sleep that the last chunk's worker ends, which leaves the core to
  // a worker that the scheduler had to preempt.
  void wait_done(int64_t chunks, int64_t start) {
    const int64_t now = steady_ns();
    const int64_t until = now + std::min<int64_t>(200000, std::max<int64_t>(20000, now - start));
    while (done_.load(std::memory_order_acquire) < chunks)
      if (steady_ns() > until) break;
      else cpu_relax();
    if (done_.load(std::memory_order_acquire) >= chunks) return;
    waiting_.store(true, std::memory_order_seq_cst);
    {
      std::unique_lock<std::mutex> lock(done_m_);
      done_cv_.wait(lock, [&] { return done_.load(std::memory_order_seq_cst) >= chunks; });
    }
    waiting_.store(false, std::memory_order_relaxed);
  }

  void worker_main(uint64_t seen) {
    region_flag() = true;
#if defined(__linux__)
    pthread_setname_np(pthread_self(), "rkd_ext_cpu");
#endif
    for (;;) {
      const uint64_t s = next_region(seen);
      if (stop_.load(std::memory_order_acquire)) return;
      seen = epoch_of(s);
      for (int64_t k = claim(seen); k >= 0; k = claim(seen)) execute(k, true);
    }
  }

  // The claim word once it names a region after `seen` (or the pool stops).
  uint64_t next_region(uint64_t seen) {
    const int64_t until = steady_ns() + kSpinNs;
    uint64_t s;
    for (;;) {
      s = state_.load(std::memory_order_acquire);
      if (epoch_of(s) != seen || stop_.load(std::memory_order_relaxed) || steady_ns() > until) break;
      std::this_thread::yield();
    }
    if (epoch_of(s) != seen || stop_.load(std::memory_order_relaxed)) return s;
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    {
      std::unique_lock<std::mutex> lock(m_);
      cv_.wait(lock, [&] {
        s = state_.load(std::memory_order_seq_cst);
        return epoch_of(s) != seen || stop_.load(std::memory_order_relaxed);
      });
    }
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
    return s;
  }

  // `n` workers (torch's thread count less the caller), made or stopped
  // between regions. A thread that cannot be made leaves the pool smaller.
  void resize(int64_t n) {
    if (static_cast<int64_t>(threads_.size()) == n) return;
    stop_.store(true, std::memory_order_release);
    {
      std::lock_guard<std::mutex> lock(m_);
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
    threads_.clear();
    stop_.store(false, std::memory_order_release);
    const uint64_t seen = epoch_of(state_.load(std::memory_order_relaxed));
    for (int64_t i = 0; i < n; ++i) {
      try {
        threads_.emplace_back([this, seen] { worker_main(seen); });
      } catch (const std::system_error&) {
        break;
      }
    }
    workers_.store(static_cast<int64_t>(threads_.size()), std::memory_order_relaxed);
  }

  std::atomic<uint64_t> state_{0};
  std::atomic<int64_t> done_{0}, worker_cpu_{0}, workers_{0}, worker_chunks_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> in_use_{false}, stop_{false}, waiting_{false};
  // The region's fields, written before its claim word is published.
  Chunk fn_ = nullptr;
  const void* ctx_ = nullptr;
  bool measure_ = false;
  int64_t count_ = 0;
  std::exception_ptr error_;
  std::mutex m_, done_m_, error_m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> threads_;
};

}  // namespace rkd
