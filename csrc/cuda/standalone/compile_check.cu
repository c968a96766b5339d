// Compiles every op of the op layer on the GPU backend (entry_points.h) with
// plain nvcc, without torch's headers, so that scripts/check_cuda.sh builds all
// the device code the extension builds: every kernel for every dtype it is
// used with. Never run: the bindings (csrc/cuda/*_cuda.cu) are what executes
// these.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../gpu_backend.cuh"

namespace {

struct DeviceScratch {
  std::vector<void*> held;
  void* bytes(size_t n) {
    void* p = nullptr;
    if (n != 0 && cudaMalloc(&p, n) == cudaSuccess) held.push_back(p);
    return p;
  }
  ~DeviceScratch() {
    for (void* p : held) cudaFree(p);
  }
};

struct LaunchCheck {
  void operator()() const {
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
      std::fprintf(stderr, "kernel launch failed: %s\n", cudaGetErrorString(e));
      std::abort();
    }
  }
};

template <typename F>
void with_backend(const F& f) {
  DeviceScratch scratch;
  rkd::gpu::GpuBackend<DeviceScratch, LaunchCheck> be(scratch, nullptr, LaunchCheck{});
  f(be);
}

}  // namespace

#include "entry_points.h"
