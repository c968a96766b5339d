// Compiles every op of the op layer on the GPU backend (entry_points.h) with
// plain nvcc, without torch's headers, so that scripts/check_cuda.sh builds all
// the device code the extension builds: every kernel for every dtype it is
// used with. Never run: the bindings (csrc/cuda/*_cuda.cu) are what executes
// these.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

struct Platform {
  static void* alloc(size_t n) {
    void* p = nullptr;
    return cudaMalloc(&p, n) == cudaSuccess ? p : nullptr;
  }
  static void release(void* p) { cudaFree(p); }
  static void check() {
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
      std::fprintf(stderr, "kernel launch failed: %s\n", cudaGetErrorString(e));
      std::abort();
    }
  }
};

#include "entry_points.h"
