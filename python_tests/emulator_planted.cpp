// Kernels with planted bugs, one per detector of the host emulator
// (csrc/cuda/standalone/emulate_rt.cpp), and their correct twins: what
// test_emulator.py shows each detector catching, and not crying wolf over.
// Each extern "C" function launches one kernel on host memory.
#include "../csrc/cuda/standalone/emulate.h"

#include <cstdint>

#include "../csrc/cuda/common.cuh"

// Inline functions (or templates) in a named namespace, as every kernel of
// csrc/cuda: the emulator finds kernels and __shared__ arrays by their
// dynamic symbols, which only those have.
namespace planted {

struct NoCheck {
  void operator()() const {}
};

template <typename... P, typename... A>
void go(void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
  rkd::gpu::launch(NoCheck{}, rkd::gpu::Cost{}, kernel, grid, block, nullptr, args...);
}

// The block's sum of v by a tree in shared memory; with `barrier` false the
// barrier between writing and reading red is missing (read after write).
template <bool kBarrier>
__global__ void block_total(const double* v, double* out) {
  __shared__ double red[64];
  const int t = threadIdx.x;
  red[t] = v[blockIdx.x * 64 + t];
  if (kBarrier) __syncthreads();
  if (t == 0) {
    double s = 0.0;
    for (int l = 0; l < 64; ++l) s += red[l];
    out[blockIdx.x] = s;
  }
}

// red reused for a second value while thread 0 may still read the first:
// without the barrier, write after read.
template <bool kBarrier>
__global__ void reuse(const double* v, double* out) {
  __shared__ double red[64];
  const int t = threadIdx.x;
  red[t] = v[t];
  __syncthreads();
  if (t == 0) out[0] = red[63];
  if (kBarrier) __syncthreads();
  red[t] = 2.0 * v[t];
  __syncthreads();
  if (t == 0) out[1] = red[63];
}

// Every thread writes the same shared element: write after write.
inline __global__ void same_slot(double* out) {
  __shared__ double red[4];
  red[0] = threadIdx.x;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = red[0];
}

// Thread 0 writes a global value the others read, with or without a barrier.
template <bool kBarrier>
__global__ void global_in_block(double* buf) {
  if (threadIdx.x == 0) buf[0] = 1.0;
  if (kBarrier) __syncthreads();
  buf[1 + threadIdx.x] = buf[0];
}

// Every block writes out[0]: write after write between blocks.
inline __global__ void last_block_wins(double* out) {
  if (threadIdx.x == 0) out[0] = blockIdx.x;
}

// Block b reads out[b - 1], which block b - 1 writes: read after write between blocks.
inline __global__ void chain(double* out) {
  if (threadIdx.x != 0) return;
  const unsigned b = blockIdx.x;
  out[b] = b == 0 ? 1.0 : out[b - 1] + 1.0;
}

// Replicated stores: every block stores the same total to *total and reads
// it back (equal: allowed); or its own index (different bits: reported); or
// one block reads it without having stored it (reported).
template <int kMode>
__global__ void replicated(const double* v, double* total, double* out) {
  __shared__ double red[32];
  const int t = threadIdx.x;
  red[t] = v[t];
  __syncthreads();
  const bool store = kMode != 2 || blockIdx.x != 1;
  if (t == 0 && store) {
    RKD_REPLICATED_STORES;
    double s = 0.0;
    for (int l = 0; l < 32; ++l) s += red[l];
    *total = kMode == 1 ? s + blockIdx.x : s;
  }
  __syncthreads();
  out[blockIdx.x * 32 + t] = *total;
}

// Two barriers at different call sites, taken by different threads.
inline __global__ void divergent(double* out) {
  if (threadIdx.x < 16)
    __syncthreads();
  else
    __syncthreads();
  out[threadIdx.x] = 1.0;
}

// Thread 0 returns before a barrier the others wait at.
inline __global__ void early_exit(double* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.0;
}

// Shared memory read before any thread of the block wrote it (thread 31's slot is never written).
inline __global__ void uninit_shared(double* out) {
  __shared__ double red[32];
  if (threadIdx.x < 31) red[threadIdx.x] = 1.0;
  __syncthreads();
  out[threadIdx.x] = red[threadIdx.x];
}

// Scratch read before anything wrote it; the first kernel writes all of it
// when `write` is set.
inline __global__ void fill(double* scratch, int64_t n) {
  for (int64_t l = threadIdx.x; l < n; l += blockDim.x) scratch[l] = 3.0;
}
inline __global__ void copy(const double* scratch, double* out, int64_t n) {
  for (int64_t l = threadIdx.x; l < n; l += blockDim.x) out[l] = scratch[l];
}

// Reads x[0..n], one element past its end.
inline __global__ void past_the_end(const double* x, int64_t n, double* out) {
  if (threadIdx.x == 0) {
    double s = 0.0;
    for (int64_t l = 0; l <= n; ++l) s += x[l];
    out[0] = s;
  }
}

// Reads small[at]: at = 5 is past the end of the 6-byte __shared__ array (in
// the padding before the next one).
inline __global__ void past_shared(double* out, int at) {
  __shared__ short small[3];
  if (threadIdx.x < 3) small[threadIdx.x] = 1;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = small[at];
}

// Two __shared__ arrays of kKib KiB each: 72 KiB in one launch with kKib = 36
// (18 KiB with 9, within the limit).
template <int kKib>
__global__ void big_shared(double* out) {
  __shared__ double a[kKib * 128];
  __shared__ double b[kKib * 128];
  for (int l = threadIdx.x; l < kKib * 128; l += blockDim.x) a[l] = b[l] = l;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = a[1] + b[2];
}

inline __global__ void nothing(double* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0) out[0] = 1.0;
}

// For the order of blocks: block b stores b + 1 into out[b], then the
// result depends on no order (a pure map).
inline __global__ void map_blocks(double* out) {
  if (threadIdx.x == 0) out[blockIdx.x] = blockIdx.x + 1.0;
}

// a * b + c: one rounding with contraction (an FMA), two without.
inline __global__ void mul_add(const double* a, const double* b, const double* c, double* out) {
  out[threadIdx.x] = a[threadIdx.x] * b[threadIdx.x] + c[threadIdx.x];
}

// Signed overflow (for UndefinedBehaviorSanitizer).
inline __global__ void overflow(const int* x, int* out) { out[threadIdx.x] = x[threadIdx.x] * 2147483647; }

}  // namespace planted

using namespace planted;

extern "C" {

void planted_block_total(int barrier, const double* v, double* out, int blocks) {
  if (barrier)
    go(block_total<true>, dim3(blocks), dim3(64), v, out);
  else
    go(block_total<false>, dim3(blocks), dim3(64), v, out);
}
void planted_reuse(int barrier, const double* v, double* out) {
  if (barrier)
    go(reuse<true>, dim3(1), dim3(64), v, out);
  else
    go(reuse<false>, dim3(1), dim3(64), v, out);
}
void planted_same_slot(double* out) { go(same_slot, dim3(1), dim3(32), out); }
void planted_global_in_block(int barrier, double* buf) {
  if (barrier)
    go(global_in_block<true>, dim3(1), dim3(32), buf);
  else
    go(global_in_block<false>, dim3(1), dim3(32), buf);
}
void planted_last_block_wins(double* out) { go(last_block_wins, dim3(4), dim3(32), out); }
void planted_chain(double* out) { go(chain, dim3(4), dim3(32), out); }
void planted_replicated(int mode, const double* v, double* total, double* out) {
  if (mode == 0) go(replicated<0>, dim3(4), dim3(32), v, total, out);
  if (mode == 1) go(replicated<1>, dim3(4), dim3(32), v, total, out);
  if (mode == 2) go(replicated<2>, dim3(4), dim3(32), v, total, out);
}
void planted_divergent(double* out) { go(divergent, dim3(1), dim3(32), out); }
void planted_early_exit(double* out) { go(early_exit, dim3(1), dim3(32), out); }
void planted_uninit_shared(double* out) { go(uninit_shared, dim3(1), dim3(32), out); }
void planted_scratch(int write, double* scratch, double* out, int64_t n) {
  if (write) go(fill, dim3(1), dim3(32), scratch, n);
  go(copy, dim3(1), dim3(32), static_cast<const double*>(scratch), out, n);
}
void planted_past_the_end(const double* x, int64_t n, double* out) { go(past_the_end, dim3(1), dim3(32), x, n, out); }
void planted_past_shared(double* out, int at) { go(past_shared, dim3(1), dim3(32), out, at); }
void planted_big_shared(int big, double* out) {
  if (big)
    go(big_shared<36>, dim3(1), dim3(256), out);
  else
    go(big_shared<9>, dim3(1), dim3(256), out);
}
void planted_launch(unsigned gx, unsigned gy, unsigned bx, unsigned by, double* out) {
  go(nothing, dim3(gx, gy), dim3(bx, by), out);
}
void planted_map_blocks(double* out, int blocks) { go(map_blocks, dim3(blocks), dim3(32), out); }
void planted_host_reads(const double* device, double* out) { out[0] = device[0]; }
void planted_mul_add(const double* a, const double* b, const double* c, double* out, int n) {
  go(mul_add, dim3(1), dim3(n), a, b, c, out);
}
void planted_overflow(const int* x, int* out) { go(overflow, dim3(1), dim3(4), x, out); }

}  // extern "C"
