// The op layer on the GPU backend, with the CUDA kernels run on the host by
// emulate.h: the C functions of entry_points.h, for scripts/emulate_cuda.py,
// which compares them with the CPU ops. Pointers are host memory.
#include "emulate.h"

#include <cstdlib>
#include <vector>

#include "../gpu_backend.cuh"

namespace {

struct HostScratch {
  std::vector<void*> held;
  void* bytes(size_t n) {
    if (n == 0) return nullptr;
    void* p = std::aligned_alloc(256, (n + 255) / 256 * 256);
    held.push_back(p);
    return p;
  }
  ~HostScratch() {
    for (void* p : held) std::free(p);
  }
};

struct NoCheck {
  void operator()() const {}
};

template <typename F>
void with_backend(const F& f) {
  HostScratch scratch;
  rkd::gpu::GpuBackend<HostScratch, NoCheck> be(scratch, nullptr, NoCheck{});
  f(be);
}

}  // namespace

#include "entry_points.h"
