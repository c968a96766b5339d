// The launch plan of the GPU backend: the C functions of entry_points.h,
// with a launch() that records each kernel's name, grid, block and cost
// (common.cuh's Cost) and runs nothing. scripts/launch_plan.py calls them and
// turns the records into estimated times.
//
// The op layer never reads device memory on the host, so nothing is: the
// kernels are compiled as host C++ (emulate.h's keywords) but never called,
// and allocations are addresses from a counter, never backed by memory.
#define RKD_GPU_RECORD 1
#include "emulate.h"

#include <cxxabi.h>
#include <dlfcn.h>

#include <cstring>
#include <string>

namespace rkd {
namespace gpu {

struct Cost;
void record(const void* kernel, dim3 grid, dim3 block, const Cost& cost);

template <typename Check, typename... P, typename... A>
void launch(const Check& check, const Cost& cost, void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t, A...) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;  // as common.cuh's launch: no work, no launch
  record(reinterpret_cast<const void*>(kernel), grid, block, cost);
  check();
}

}  // namespace gpu
}  // namespace rkd

struct Platform {
  // Distinct, aligned, never dereferenced; 0 bytes is the null pointer, as a
  // real allocator's empty allocation.
  static void* alloc(size_t n) {
    static uintptr_t next = uintptr_t(1) << 40;
    const uintptr_t p = next;
    next += (n + 255) / 256 * 256;
    return reinterpret_cast<void*>(p);
  }
  static void release(void*) {}
  static void check() {}
};

#include "entry_points.h"

namespace {

struct Launch {
  std::string kernel;
  dim3 grid, block;
  rkd::gpu::Cost cost;
};

std::vector<Launch>& plan() {
  static std::vector<Launch> launches;
  return launches;
}

// The demangled name of the kernel's symbol.
std::string name_of(const void* kernel) {
  Dl_info info;
  if (dladdr(kernel, &info) == 0 || info.dli_sname == nullptr) return "?";
  int status = 0;
  char* demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled ? demangled : info.dli_sname;
  std::free(demangled);
  return name;
}

}  // namespace

void rkd::gpu::record(const void* kernel, dim3 grid, dim3 block, const Cost& cost) {
  plan().push_back({name_of(kernel), grid, block, cost});
}

extern "C" {

void rkd_plan_clear() { plan().clear(); }

int64_t rkd_plan_size() { return static_cast<int64_t>(plan().size()); }

// Launch i: its kernel's name (truncated to cap - 1 characters), grid and
// block (x, y, z each), and cost (bytes, flops32, flops64, working blocks,
// units).
void rkd_plan_get(int64_t i, char* name, int64_t cap, unsigned* dims, double* cost) {
  const Launch& l = plan().at(static_cast<size_t>(i));
  std::strncpy(name, l.kernel.c_str(), static_cast<size_t>(cap - 1));
  name[cap - 1] = '\0';
  const unsigned d[6] = {l.grid.x, l.grid.y, l.grid.z, l.block.x, l.block.y, l.block.z};
  std::memcpy(dims, d, sizeof(d));
  const double c[5] = {l.cost.bytes, l.cost.flops32, l.cost.flops64, l.cost.blocks, l.cost.units};
  std::memcpy(cost, c, sizeof(c));
}

}  // extern "C"
