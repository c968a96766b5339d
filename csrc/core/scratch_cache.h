// Scratch memory that outlives an op call: the CPU backend's large per-call
// buffers (cpu_backend.h's scratch, the float64 copy of the centred features
// that the small-batch float64 Gram product reads, the angle tensor
// backward's N^3 float64 upstream copies).
// Torch-free; a process-wide cache like the product precision setting.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <utility>
#if !defined(_WIN32)
#include <pthread.h>
#endif

namespace rkd {

// A buffer of megabytes that is freed and allocated again every call comes
// back from the C library as fresh pages whenever the heap was trimmed in
// between, and touching them costs a page fault each (on a virtual machine,
// 2.7 us per 4 KB: for the angle loss at N = 128, D = 2048, the centring
// pass took 750 us instead of 110-130 us; for the angle tensor's backward at
// N = 128, three 16 MB copies). So freed buffers of at least kMinBytes are
// kept for the next call, up to kSlots of them and kMaxBytes in all, the
// largest first (a buffer given back is kept if it fits beside the larger
// ones held, displacing smaller ones as needed); a call takes the smallest
// that fits, or allocates. Smaller buffers come from the C library's heap,
// which serves them from mapped pages, and are freed at once.
class ScratchCache {
 public:
  static constexpr int kSlots = 6;
  static constexpr size_t kMinBytes = size_t{256} << 10;
  static constexpr size_t kMaxBytes = size_t{64} << 20;

  // Gives a buffer of `cap` doubles back to the cache, or frees it.
  struct Release {
    size_t cap = 0;
    void operator()(double* p) const { ScratchCache::give(p, cap); }
  };
  using Ptr = std::unique_ptr<double[], Release>;

  // At least n doubles, uninitialised, on a 64-byte boundary.
  static Ptr take(size_t n) {
    n = std::max<size_t>(n, 1);
    if (n > SIZE_MAX / sizeof(double)) throw std::bad_array_new_length();
    if (n * sizeof(double) >= kMinBytes) {
      std::lock_guard<std::mutex> lock(mutex());
      Slot* best = nullptr;
      for (Slot& slot : slots())
        if (slot.p && slot.cap >= n && (!best || slot.cap < best->cap)) best = &slot;
      if (best) {
        Ptr out(best->p, Release{best->cap});
        *best = Slot{};
        return out;
      }
    }
    return Ptr(static_cast<double*>(::operator new[](n * sizeof(double), kAlign)), Release{n});
  }

  // At least n values of T (a trivial type of at most 64-byte alignment) in a buffer of doubles.
  template <typename T>
  static Ptr take_for(size_t n) {
    n = std::max<size_t>(n, 1);
    if (n > SIZE_MAX / sizeof(T) - sizeof(double)) throw std::bad_array_new_length();
    return take((n * sizeof(T) + sizeof(double) - 1) / sizeof(double));
  }

  // The bytes of the buffers held now (torch.ops.rkd_ext._cpu_scratch_bytes).
  static size_t held_bytes() {
    std::lock_guard<std::mutex> lock(mutex());
    return held_locked();
  }

  // Holds the cache's lock for `ns` nanoseconds, as a call in the middle of a
  // slot update would (torch.ops.rkd_ext._cpu_scratch_hold: the fork test's plant).
  static void hold_lock_for(int64_t ns) {
    std::lock_guard<std::mutex> lock(mutex());
    std::this_thread::sleep_for(std::chrono::nanoseconds(ns));
  }

  // Frees every buffer held (torch.ops.rkd_ext._cpu_release_scratch).
  static void release() {
    std::unique_lock<std::mutex> lock(mutex());
    const std::array<Slot, kSlots> held = slots();
    slots().fill(Slot{});
    lock.unlock();
    for (const Slot& slot : held) drop(slot.p);
  }

 private:
  // Rows of a multiple of 8 doubles start on a cache line: a 64-byte vector
  // load of an unaligned buffer (what the C library returns for a large
  // block: 16 bytes past a page) spans two lines, and the Gram kernel,
  // bound by its loads, took 5-15% longer on one.
  static constexpr std::align_val_t kAlign{64};

  struct Slot {
    double* p = nullptr;
    size_t cap = 0;
  };
  static void drop(double* p) { ::operator delete[](p, kAlign); }
  // The lock on the slots. A fork (a data loader's worker) copies only the
  // forking thread: were another thread inside take() or give() then, the
  // child would find the lock held forever. So a fork first takes the lock
  // (no slot update is in progress), and parent and child each release it.
  static std::mutex& mutex() {
    static std::mutex m;
#if !defined(_WIN32)
    static const bool fork_safe = [] {
      pthread_atfork([] { m.lock(); }, [] { m.unlock(); }, [] { m.unlock(); });
      return true;
    }();
    (void)fork_safe;
#endif
    return m;
  }
  static std::array<Slot, kSlots>& slots() {
    static std::array<Slot, kSlots> s;
    return s;
  }
  static size_t held_locked() {
    size_t bytes = 0;
    for (const Slot& slot : slots()) bytes += slot.p ? slot.cap * sizeof(double) : 0;
    return bytes;
  }
  // Keeps p (cap doubles) if it is large enough to pay and fits beside the
  // buffers held that are at least as large (within kSlots and kMaxBytes),
  // freeing the smaller ones it displaces; otherwise frees p and leaves the
  // cache as it was.
  static void give(double* p, size_t cap) {
    if (!p) return;
    const size_t bytes = cap * sizeof(double);
    if (bytes < kMinBytes || bytes > kMaxBytes) return drop(p);
    std::array<double*, kSlots> out{};
    int dropped = 0;
    {
      std::lock_guard<std::mutex> lock(mutex());
      size_t larger_bytes = 0;
      int larger = 0;
      for (const Slot& slot : slots())
        if (slot.p && slot.cap >= cap) larger_bytes += slot.cap * sizeof(double), ++larger;
      if (larger == kSlots || larger_bytes + bytes > kMaxBytes) {
        out[dropped++] = p;  // no room beside the larger buffers
      } else {
        // Room exists once enough of the smaller buffers go, smallest first.
        for (;;) {
          Slot* empty = nullptr;
          Slot* least = nullptr;
          for (Slot& slot : slots()) {
            if (!slot.p)
              empty = empty ? empty : &slot;
            else if (slot.cap < cap && (!least || slot.cap < least->cap))
              least = &slot;
          }
          if (empty && held_locked() + bytes <= kMaxBytes) {
            *empty = Slot{p, cap};
            break;
          }
          out[dropped++] = least->p;  // a smaller one exists: the check above
          *least = Slot{};
        }
      }
    }
    for (int i = 0; i < dropped; ++i) drop(out[i]);
  }
};

}  // namespace rkd
