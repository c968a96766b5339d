// Runs the torch-free CUDA kernels of csrc/cuda on the host, so that their
// logic (indexing, tiling, reductions, the math) is tested on machines
// without a GPU. Include this before any kernel header and compile as C++.
//
// A launch runs its blocks one after another; the threads of a block are
// cooperative fibers that switch at __syncthreads() (in thread order, then in
// reverse order, alternately), so __shared__ memory (defined as static)
// belongs to the running block. A barrier that some
// threads of a block reach while others have returned aborts with a message:
// on a GPU that is undefined behaviour. Warp-level primitives, atomics and
// timing are not emulated; the kernels use none of them.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <tuple>
#include <vector>

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

// Fiber switching: on x86-64 a register swap without the signal-mask system
// call that swapcontext makes (a few nanoseconds instead of a few hundred:
// the emulated kernels switch millions of times); ucontext elsewhere.
#if defined(__x86_64__)
extern "C" void rkd_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .weak rkd_emu_switch
    .type rkd_emu_switch, @function
rkd_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size rkd_emu_switch, .-rkd_emu_switch
)");

struct Context {
  void* sp = nullptr;
};

inline void switch_to(Context& from, Context& to) { rkd_emu_switch(&from.sp, to.sp); }

// A context that starts entry() on the stack [base, base + size); entry must
// never return.
inline void prepare(Context& c, char* base, size_t size, void (*entry)()) {
  auto* top = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(base + size) & ~uintptr_t(15));
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  top[-1] = 0;                                     // entry's return address: none
  top[-2] = reinterpret_cast<uint64_t>(entry);     // where the first switch returns to
  for (int r = 3; r <= 8; ++r) top[-r] = 0;        // rbp rbx r12 r13 r14 r15
  top[-9] = mxcsr | (static_cast<uint64_t>(fpcw) << 32);
  c.sp = top - 9;
}
#else
struct Context {
  ucontext_t ctx;
};

inline void switch_to(Context& from, Context& to) { swapcontext(&from.ctx, &to.ctx); }

inline void prepare(Context& c, char* base, size_t size, void (*entry)()) {
  getcontext(&c.ctx);
  c.ctx.uc_stack.ss_sp = base;
  c.ctx.uc_stack.ss_size = size;
  c.ctx.uc_link = nullptr;
  makecontext(&c.ctx, entry, 0);
}
#endif

struct Fiber {
  Context ctx;
  uint3 idx;
  enum State { Ready, AtBarrier, Done } state;
};

struct Block {
  Context scheduler;
  std::vector<Fiber> fibers;
  size_t current = 0;
  void (*body)(void*) = nullptr;
  void* arg = nullptr;
};

inline Block* running = nullptr;
constexpr size_t kStack = 64 * 1024;

// Fiber stacks, kept across launches: allocating and faulting in fresh ones
// would cost more than the kernels.
inline char* stack(size_t t) {
  static std::vector<std::unique_ptr<char[]>> pool;
  while (pool.size() <= t) pool.emplace_back(new char[kStack]);
  return pool[t].get();
}

inline void fiber_main() {
  Block& b = *running;
  b.body(b.arg);
  Fiber& f = b.fibers[b.current];
  f.state = Fiber::Done;
  switch_to(f.ctx, b.scheduler);  // never resumed
  std::abort();
}

// Runs body(arg) once per thread of every block of the grid.
inline void run(dim3 grid, dim3 block, void (*body)(void*), void* arg) {
  Block b;
  b.body = body;
  b.arg = arg;
  const size_t n = static_cast<size_t>(block.x) * block.y * block.z;
  b.fibers.resize(n);
  gridDim = grid;
  blockDim = block;
  running = &b;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = make_uint3(bx, by, bz);
        for (size_t t = 0; t < n; ++t) {
          Fiber& f = b.fibers[t];
          f.idx = make_uint3(static_cast<unsigned>(t % block.x), static_cast<unsigned>(t / block.x % block.y),
                             static_cast<unsigned>(t / (block.x * block.y)));
          f.state = Fiber::Ready;
          prepare(f.ctx, stack(t), kStack, fiber_main);
        }
        for (bool reverse = false;; reverse = !reverse) {
          // Alternating the order between barriers exposes shared-memory
          // hazards that one fixed order would hide.
          for (size_t l = 0; l < n; ++l) {
            const size_t t = reverse ? n - 1 - l : l;
            if (b.fibers[t].state != Fiber::Ready) continue;
            b.current = t;
            threadIdx = b.fibers[t].idx;
            switch_to(b.scheduler, b.fibers[t].ctx);
          }
          size_t waiting = 0;
          for (const Fiber& f : b.fibers) waiting += f.state == Fiber::AtBarrier;
          if (waiting == 0) break;
          if (waiting != n) {
            std::fprintf(stderr, "emulate: block (%u, %u, %u): %zu of %zu threads wait at __syncthreads() while the "
                         "others have returned\n", bx, by, bz, waiting, n);
            std::abort();
          }
          for (Fiber& f : b.fibers) f.state = Fiber::Ready;
        }
      }
  running = nullptr;
}

}  // namespace emu

inline void __syncthreads() {
  emu::Block& b = *emu::running;
  emu::Fiber& f = b.fibers[b.current];
  f.state = emu::Fiber::AtBarrier;
  emu::switch_to(f.ctx, b.scheduler);
}

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
  emu::run(grid, block, &Call::run, &call);
  check();
}

}  // namespace gpu
}  // namespace rkd
#endif
