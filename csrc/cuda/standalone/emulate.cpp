// The op layer on the GPU backend, with the CUDA kernels run on the host by
// emulate.h: the C functions of entry_points.h, for scripts/emulate_cuda.py,
// which compares them with the CPU ops. Pointers are host memory. Scratch is
// allocated at its exact size (a read past it is outside every allocation)
// and starts uninitialised, as the caching allocator's does on a GPU.
#include "emulate.h"

#include <cstdint>
#include <cstdlib>
#include <string>

extern "C" void rkd_emu_track(const void* p, int64_t n, const char* name, int uninitialised);
extern "C" void rkd_emu_untrack(const void* p);

struct Platform {
  static void* alloc(size_t n) {
    void* p = nullptr;
    if (posix_memalign(&p, 256, n) != 0) return nullptr;
    static int64_t serial = 0;
    const std::string name = "scratch allocation #" + std::to_string(++serial) + " (" + std::to_string(n) + " bytes)";
    rkd_emu_track(p, static_cast<int64_t>(n), name.c_str(), 1);
    return p;
  }
  static void release(void* p) {
    rkd_emu_untrack(p);
    std::free(p);
  }
  static void check() {}
};

#include "entry_points.h"
