// The op layer on the GPU backend, with the CUDA kernels run on the host by
// emulate.h: the C functions of entry_points.h, for scripts/emulate_cuda.py,
// which compares them with the CPU ops. Pointers are host memory.
#include "emulate.h"

#include <cstdlib>

struct Platform {
  static void* alloc(size_t n) { return std::aligned_alloc(256, (n + 255) / 256 * 256); }
  static void release(void* p) { std::free(p); }
  static void check() {}
};

#include "entry_points.h"
