// Runs the torch-free CUDA kernels of csrc/cuda on the host, so that their
// logic (indexing, tiling, reductions, the math) is tested on machines
// without a GPU, and checks them for what compute-sanitizer would report on
// one. Include this before any kernel header and compile as C++; link
// emulate_rt.cpp (the scheduler and the detectors).
//
// A launch runs its blocks one after another (in grid order, reversed, or a
// seeded shuffle: blocks have no order on a GPU); the threads of a block are
// cooperative fibers that switch at __syncthreads() (in thread order, then in
// reverse order, alternately), and __shared__ memory is static. With the
// kernels' translation unit compiled with -fsanitize=thread, every memory
// access of the kernels is reported to emulate_rt.cpp's detectors instead of
// ThreadSanitizer's runtime (which is not linked): shared-memory races
// within a barrier interval, global-memory races within a block and between
// the blocks of a launch, uninitialised reads, accesses outside every
// allocation, barrier divergence, and launch limits (docs/gpu.md). Warp-level
// primitives, atomics and timing are not emulated; the kernels use none of
// them.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <tuple>

#undef __host__
#undef __device__
#undef __global__
#undef __shared__
#undef __launch_bounds__
#define __host__
#define __device__
#define __global__
#define __shared__ static
#define __launch_bounds__(...)

#define RKD_GPU_EMULATE 1

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {

#ifndef RKD_GPU_RECORD
// emulate_rt.cpp. run: body(arg) once per thread of every block of the grid;
// kernel names the launch in reports, [arg, arg + arg_size) holds its
// parameters (read-only). barrier: __syncthreads() at file:line.
void run(dim3 grid, dim3 block, const void* kernel, void (*body)(void*), void* arg, size_t arg_size);
void barrier(const char* file, int line);
// Within its scope, the running thread's global stores are replicated stores
// (common.cuh's RKD_REPLICATED_STORES).
struct Replicated {
  Replicated();
  ~Replicated();
  Replicated(const Replicated&) = delete;
  Replicated& operator=(const Replicated&) = delete;
};
#else
// The launch plan compiles the kernels but never runs them.
inline void barrier(const char*, int) {}
struct Replicated {
  Replicated() {}  // user-provided: a scope object, not an unused variable
};
#endif

}  // namespace emu

#define __syncthreads() ::emu::barrier(__FILE__, __LINE__)

#ifndef RKD_GPU_RECORD
namespace rkd {
namespace gpu {

struct Cost;

// The emulator's counterpart of common.cuh's launch() (plan.cpp, which
// defines RKD_GPU_RECORD, records launches instead of running them).
template <typename Check, typename... P, typename... A>
void launch(const Check& check, const Cost&, void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t, A... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  struct Call {
    void (*kernel)(P...);
    std::tuple<A...> args;
    static void run(void* self) {
      Call& c = *static_cast<Call*>(self);
      std::apply([&](A&... a) { c.kernel(a...); }, c.args);
    }
  } call{kernel, std::tuple<A...>(args...)};
  emu::run(grid, block, reinterpret_cast<const void*>(kernel), &Call::run, &call, sizeof(call));
  check();
}

}  // namespace gpu
}  // namespace rkd
#endif
