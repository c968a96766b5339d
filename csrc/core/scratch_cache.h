// Float64 scratch that outlives an op call (the CPU backend's centred
// copies of the features, cpu_backend.h's Centred::xd). Torch-free; a
// process-wide cache like the product precision setting.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <memory>
#include <mutex>
#include <new>
#include <utility>

namespace rkd {

// A buffer of megabytes that is freed and allocated again every call comes
// back from the C library as fresh pages, and touching them costs a page
// fault each (on a virtual machine, 2.7 us per
// 4 KB: for the angle loss at N = 128, D = 2048, 1.4 ms of CPU time per
// forward, more than centring the features itself). So up to kSlots freed
// buffers of at most kMaxBytes each are kept for the next call, the largest
// ones; a call takes the smallest that fits, or allocates. What stays
// allocated is at most the float64 copies of the last call's two inputs.
class ScratchCache {
 public:
  static constexpr int kSlots = 2;
  static constexpr size_t kMaxBytes = size_t{64} << 20;

  // Gives a buffer of `cap` doubles back to the cache, or frees it.
  struct Release {
    size_t cap = 0;
    void operator()(double* p) const { ScratchCache::give(p, cap); }
  };
  using Ptr = std::unique_ptr<double[], Release>;

  // At least n doubles, uninitialised.
  static Ptr take(size_t n) {
    n = std::max<size_t>(n, 1);
    {
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

  // The buffers held now and their bytes (torch.ops.rkd_ext._cpu_scratch_bytes).
  static size_t held_bytes() {
    std::lock_guard<std::mutex> lock(mutex());
    size_t bytes = 0;
    for (const Slot& slot : slots()) bytes += slot.p ? slot.cap * sizeof(double) : 0;
    return bytes;
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
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::array<Slot, kSlots>& slots() {
    static std::array<Slot, kSlots> s;
    return s;
  }
  static void give(double* p, size_t cap) {
    if (!p) return;
    if (cap * sizeof(double) <= kMaxBytes) {
      std::lock_guard<std::mutex> lock(mutex());
      Slot* least = nullptr;  // an empty slot, else the one holding the smallest buffer
      for (Slot& slot : slots())
        if (!least || (least->p && (!slot.p || slot.cap < least->cap))) least = &slot;
      if (!least->p || least->cap < cap) std::swap(least->p, p), std::swap(least->cap, cap);
    }
    drop(p);  // what did not stay: this buffer, or the smaller one it replaced
  }
};

}  // namespace rkd
