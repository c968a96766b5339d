// Torch-free building blocks of the CUDA kernels: the launch helper, dtype
// conversions, a fixed-order block reduction and the small generic kernels
// (row sums, a one-block finish, the GEMM weight matrix, maps, conversions)
// that the GPU backend (gpu_backend.cuh) runs the op layer's terms through.
//
// Nothing here depends on torch: the headers compile with plain nvcc (see
// scripts/check_cuda.sh) and take raw pointers, sizes and a stream. Scratch
// memory comes from the caller through an allocator object with one method,
// `void* bytes(size_t)`; it must be stream-ordered (PyTorch's caching
// allocator is), because scratch is released when the host function returns,
// before its kernels have run.
//
// Determinism: no kernel uses atomics; every sum has one owner thread or a
// fixed reduction tree, so repeated calls are bitwise identical.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../core/params.h"
#include "../rkd_math.h"

#define RKD_DEV __device__ __forceinline__

namespace rkd {
namespace gpu {

// Threads of the one-dimensional kernels.
constexpr int kBlock = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline unsigned grid_dim(int64_t n) { return static_cast<unsigned>(n); }

template <typename T, typename Alloc>
T* take(Alloc& alloc, int64_t n) {
  return static_cast<T*>(alloc.bytes(static_cast<size_t>(n) * sizeof(T)));
}

// What one launch moves and computes, written beside the launch from the
// sizes alone: the launch plan (scripts/launch_plan.py) reads it, a real
// launch ignores it. bytes: the distinct bytes read and written (an operand
// that several blocks read counts once: it is assumed to stay in L2);
// flops32, flops64: arithmetic in float32 and in float64 (a fused
// multiply-add is two); blocks: the blocks that do work, when some of the
// grid returns at once (0: all of it); units: the units of work of a kernel
// whose inner loop scripts/kernel_loops.py counts (a triplet kernel's
// triplets, a product's multiply-adds), from which the plan prices it.
struct Cost {
  double bytes = 0, flops32 = 0, flops64 = 0, blocks = 0, units = 0;
};

// The flops of `n` operations in the arithmetic type T.
template <typename T>
Cost flops_in(double n) {
  Cost c;
  (sizeof(T) == 8 ? c.flops64 : c.flops32) = n;
  return c;
}

// The generic N x N kernels below evaluate op-layer functors whose reads and
// arithmetic vary; the plan counts each element as about two float64 reads
// and ten float64 operations.
constexpr double kElementBytes = 16, kElementFlops = 10;

inline Cost elementwise_cost(int64_t elements, double write_bytes) {
  const double n = static_cast<double>(elements);
  Cost c;
  c.bytes = n * (kElementBytes + write_bytes);
  c.flops64 = n * kElementFlops;
  return c;
}

#ifndef RKD_GPU_EMULATE
// The one place a kernel launch is written (the host emulator and the launch
// plan behind scripts/check_cuda.sh and scripts/launch_plan.py substitute
// their own). `check` runs right after every launch; the bindings pass
// C10_CUDA_KERNEL_LAUNCH_CHECK. A grid with no blocks is no work, not an
// invalid launch.
template <typename Check, typename... P, typename... A>
void launch(const Check& check, const Cost&, void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t stream,
            A... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  kernel<<<grid, block, 0, stream>>>(args...);
  check();
}
#endif

// ---- dtype conversions -----------------------------------------------------------
//
// Explicit intrinsics throughout: PyTorch builds CUDA code with the implicit
// half/bfloat16 conversions disabled. Narrowing goes through float, as
// static_cast<c10::Half>(double) does on the CPU, so both backends round the
// same way.

RKD_DEV double widen(double v) { return v; }
RKD_DEV double widen(float v) { return v; }
RKD_DEV double widen(__half v) { return __half2float(v); }
RKD_DEV double widen(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
struct Narrow;
template <>
struct Narrow<double> {
  RKD_DEV static double from(double v) { return v; }
};
template <>
struct Narrow<float> {
  RKD_DEV static float from(double v) { return static_cast<float>(v); }
};
template <>
struct Narrow<__half> {
  RKD_DEV static __half from(double v) { return __float2half_rn(static_cast<float>(v)); }
};
template <>
struct Narrow<__nv_bfloat16> {
  RKD_DEV static __nv_bfloat16 from(double v) { return __float2bfloat16_rn(static_cast<float>(v)); }
};

template <typename T>
RKD_DEV T narrow(double v) {
  return Narrow<T>::from(v);
}

// ---- fixed-order reduction ---------------------------------------------------------

// Sum of v over the B threads of a block (t: the thread's flat index), by a
// fixed halving tree; every thread gets the total. All B threads must call it.
template <int B>
RKD_DEV double block_sum(double v, double* smem, int t) {
  static_assert((B & (B - 1)) == 0, "block_sum needs a power-of-two block");
  smem[t] = v;
  __syncthreads();
  for (int h = B / 2; h > 0; h >>= 1) {
    if (t < h) smem[t] += smem[t + h];
    __syncthreads();
  }
  const double total = smem[0];
  __syncthreads();  // smem is free for the caller again
  return total;
}

// ---- generic N x N kernels -----------------------------------------------------------
//
// F is a device functor double(int64_t i, int64_t j); one block per row i,
// launched with kBlock threads.

// fin(sum of v[0..n)): one block; fin runs on one thread and stores what it
// derives from the total (a mean, a loss) to device memory.
template <typename Fin>
__global__ void __launch_bounds__(kBlock) finish_kernel(const double* v, int64_t n, Fin fin) {
  __shared__ double red[kBlock];
  double acc = 0.0;
  for (int64_t l = threadIdx.x; l < n; l += kBlock) acc += v[l];
  const double total = block_sum<kBlock>(acc, red, threadIdx.x);
  if (threadIdx.x == 0) fin(total);
}

// Largest of a and b that keeps a NaN.
RKD_HD double nan_max(double a, double b) { return a != a || a >= b ? a : b; }

// e with m = f 2^e, 0.5 <= f < 1: values scaled by 2^-e lie in [-1, 1].
// 0, NaN and Inf give 0 (no scaling: a NaN or Inf reaches the result as in
// float64, and makes the Gram form's pairs recomputed); |e| <= kMaxScale so
// that 2^e and 2^-e are normal float32 numbers.
constexpr int kMaxScale = 120;
RKD_HD int scale_exponent(double m) {
  if (!(m > 0.0) || !(m <= 1.7976931348623157e308)) return 0;
  int e = 0;
  frexp(m, &e);
  return e < -kMaxScale ? -kMaxScale : (e > kMaxScale ? kMaxScale : e);
}

// nan_max over the block (B a power of two), in a fixed tree order.
template <int B>
RKD_DEV double block_max(double v, double* smem, int t) {
  smem[t] = v;
  __syncthreads();
  for (int h = B / 2; h > 0; h >>= 1) {
    if (t < h) smem[t] = nan_max(smem[t], smem[t + h]);
    __syncthreads();
  }
  const double m = smem[0];
  __syncthreads();
  return m;
}

// The column statistics of the features x (N, D) that the W x X product
// centres (and, for a float32 product, scales) its operand by, computed once
// by extra blocks of the weights launch (kStatCols columns a block) instead
// of by every block of the product that reads the column: mean (D) the
// float64 column means, or for a float32 product (cexp not null) the float32
// ones, widened; cexp (D) the exponent of each column's largest magnitude
// about its float32 mean (scale_exponent). x's dtype is a runtime value so
// that the weights kernel is not instantiated once per dtype.
struct ColumnStats {
  const void* x;
  Dtype dtype;
  int64_t N, D;
  double* mean;
  int* cexp;  // for a float32 product, else null
};

constexpr int kStatCols = 64, kStatSlices = kBlock / kStatCols;

inline int64_t stat_blocks(const ColumnStats& cs) { return cs.N > 0 ? ceil_div(cs.D, kStatCols) : 0; }

// The statistics of columns [col0, col0 + kStatCols) of x in S: each column
// summed by kStatSlices row slices, in row order, then the slices in order
// (part, mu: the block's scratch); columns past D are not stored.
template <typename S, typename T>
RKD_DEV void column_stats_tile(const T* x, const ColumnStats& cs, int64_t col0, S (&part)[kStatSlices][kStatCols],
                               S (&mu)[kStatCols]) {
  const int t = threadIdx.x, c = t % kStatCols, r = t / kStatCols;
  const bool in = col0 + c < cs.D;
  S sum = S(0);
  if (in)
    for (int64_t i = r; i < cs.N; i += kStatSlices) sum += static_cast<S>(widen(x[i * cs.D + col0 + c]));
  part[r][c] = sum;
  __syncthreads();
  if (t < kStatCols) {
    S total = S(0);
    for (int l = 0; l < kStatSlices; ++l) total += part[l][t];
    mu[t] = total / static_cast<S>(cs.N);
    if (col0 + t < cs.D) cs.mean[col0 + t] = mu[t];
  }
  if (cs.cexp == nullptr) return;  // uniform over the grid
  __syncthreads();  // mu written; part read before it is rewritten
  S m = S(0);
  if (in)
    for (int64_t i = r; i < cs.N; i += kStatSlices)
      m = static_cast<S>(nan_max(m, fabs(static_cast<S>(widen(x[i * cs.D + col0 + c])) - mu[c])));
  part[r][c] = m;
  __syncthreads();
  if (t < kStatCols && col0 + t < cs.D) {
    double mm = part[0][t];
    for (int l = 1; l < kStatSlices; ++l) mm = nan_max(mm, part[l][t]);
    cs.cexp[col0 + t] = scale_exponent(mm);
  }
}

// Column tile b of cs in the precision of its product (float32 where cexp is
// set; only features that are not float64 get float32 products).
RKD_DEV void column_stats(const ColumnStats& cs, int64_t b, double (&part)[kStatSlices][kStatCols],
                          double (&mu)[kStatCols], float (&partf)[kStatSlices][kStatCols], float (&muf)[kStatCols]) {
  const int64_t col0 = b * kStatCols;
  auto run = [&](auto* x) {
    if (cs.cexp != nullptr)
      column_stats_tile<float>(x, cs, col0, partf, muf);
    else
      column_stats_tile<double>(x, cs, col0, part, mu);
  };
  switch (cs.dtype) {
    case Dtype::Float32: return run(static_cast<const float*>(cs.x));
    case Dtype::Float16: return run(static_cast<const __half*>(cs.x));
    case Dtype::BFloat16: return run(static_cast<const __nv_bfloat16*>(cs.x));
    case Dtype::Float64: return column_stats_tile<double>(static_cast<const double*>(cs.x), cs, col0, part, mu);
  }
}

// Rows [begin, begin + n) of the weight matrix of the gradient GEMM:
// W_ij = f(i, j) off the diagonal (W = dL/ds + (dL/ds)^T), W_ii = 0, and
// w_i = sum_j W_ij; row i at (i - begin) N. One block per row, then
// stat_blocks(cs) blocks of the features' column statistics. With Wf (for
// a float32 product; else null) also the row in float32, scaled by
// 2^-rexp[l], the exponent of its largest magnitude (scale_exponent).
template <typename F>
__global__ void __launch_bounds__(kBlock) weights_kernel(F f, int64_t N, int64_t begin, int64_t n, double* W,
                                                         double* w, float* Wf, int* rexp, ColumnStats cs) {
  __shared__ double red[kBlock];
  __shared__ double mu[kStatCols];
  __shared__ float partf[kStatSlices][kStatCols];
  __shared__ float muf[kStatCols];
  const int64_t l = blockIdx.x, i = begin + l;
  if (l >= n) {
    static_assert(kStatSlices * kStatCols == kBlock, "a stats block is the weights block");
    return column_stats(cs, l - n, *reinterpret_cast<double(*)[kStatSlices][kStatCols]>(red), mu, partf, muf);
  }
  double acc = 0.0, m = 0.0;
  // Not unrolled: the float64 divisions of some f call a slow path, and the
  // values an unrolled loop holds across those calls spilled (12 bytes).
#pragma unroll 1
  for (int64_t j = threadIdx.x; j < N; j += kBlock) {
    const double v = j == i ? 0.0 : f(i, j);
    W[l * N + j] = v;
    acc += v;
    m = nan_max(m, fabs(v));
  }
  const double total = block_sum<kBlock>(acc, red, threadIdx.x);
  if (threadIdx.x == 0) w[l] = total;
  if (Wf == nullptr) return;  // uniform over the grid
  const int e = scale_exponent(block_max<kBlock>(m, red, threadIdx.x));
  for (int64_t j = threadIdx.x; j < N; j += kBlock) Wf[l * N + j] = static_cast<float>(ldexp(W[l * N + j], -e));
  if (threadIdx.x == 0) rexp[l] = e;
}

// out[i][j] = f(i, j), narrowed to Out.
template <typename Out, typename F>
__global__ void __launch_bounds__(kBlock) map_kernel(F f, int64_t N, Out* out) {
  const int64_t i = blockIdx.x;
  for (int64_t j = threadIdx.x; j < N; j += kBlock) out[i * N + j] = narrow<Out>(f(i, j));
}

template <typename Fin, typename Check>
void finish(const double* v, int64_t n, Fin fin, cudaStream_t stream, const Check& check) {
  Cost cost;
  cost.bytes = 8.0 * static_cast<double>(n);
  cost.flops64 = static_cast<double>(n);
  launch(check, cost, finish_kernel<Fin>, dim3(1), dim3(kBlock), stream, v, n, fin);
}

template <typename F, typename Check>
void build_weights(F f, int64_t N, Rows rows, double* W, double* w, float* Wf, int* rexp, const ColumnStats& cs,
                   cudaStream_t stream, const Check& check) {
  Cost cost = elementwise_cost(rows.size() * N, 8.0);
  if (Wf != nullptr) {  // W read back, Wf written, the scaling
    cost.bytes += 12.0 * static_cast<double>(rows.size() * N);
    cost.flops64 += 2.0 * static_cast<double>(rows.size() * N);
  }
  // The statistics: x read (twice for a float32 product's magnitudes), D
  // means (and exponents) written.
  const int64_t blocks = stat_blocks(cs);
  const double xe = static_cast<double>(cs.N) * static_cast<double>(cs.D), passes = cs.cexp != nullptr ? 2.0 : 1.0;
  const double item = cs.dtype == Dtype::Float64 ? 8.0 : cs.dtype == Dtype::Float32 ? 4.0 : 2.0;
  cost.bytes += passes * xe * item + 12.0 * static_cast<double>(cs.D);
  (cs.cexp != nullptr ? cost.flops32 : cost.flops64) += 2.0 * passes * xe;
  launch(check, cost, weights_kernel<F>, dim3(grid_dim(rows.size() + blocks)), dim3(kBlock), stream, f, N, rows.begin,
         rows.size(), W, w, Wf, rexp, cs);
}

// out[i][j] = f(i, j) for `rows` rows of N.
template <typename Out, typename F, typename Check>
void map_rows(F f, int64_t rows, int64_t N, Out* out, cudaStream_t stream, const Check& check) {
  launch(check, elementwise_cost(rows * N, sizeof(Out)), map_kernel<Out, F>, dim3(grid_dim(rows)), dim3(kBlock),
         stream, f, N, out);
}

template <typename Out, typename F, typename Check>
void map(F f, int64_t N, Out* out, cudaStream_t stream, const Check& check) {
  map_rows(f, N, N, out, stream, check);
}

// The steps of the op layer's reduce_seq in one block, for small N: each
// group's members in order, each member's sum over the N x N elements
// (thread t takes the elements t, t + kBlock, ... in row-major order, then
// block_sum: a fixed order), its fin on thread 0, then a barrier, which makes
// what fin stored visible to the functors of the steps after it.
template <typename G>
RKD_DEV void run_group(const G& g, int64_t N, double* red) {
  for (int k = 0; k < G::kSize; ++k) {
    double acc = 0.0;
    for (int64_t l = threadIdx.x; l < N * N; l += kBlock) acc += g.f(k, l / N, l % N);
    const double total = block_sum<kBlock>(acc, red, threadIdx.x);
    if (threadIdx.x == 0) g.fin(k, total);
    __syncthreads();
  }
}

template <typename... Groups>
__global__ void __launch_bounds__(kBlock) reduce_seq_kernel(int64_t N, Groups... groups) {
  __shared__ double red[kBlock];
  (run_group(groups, N, red), ...);
}

// N up to which reduce_seq runs in one block (N^2 / kBlock = 16 elements
// per thread at most). Beyond, one block would keep the rest of the GPU idle
// longer than the launches it saves (the launch plan flags it at N = 128).
// On a GPU with slow float64 (fp64 at 1/8 of fp32 or less) one SM's float64
// arithmetic is slower still: the launch plan's slow-fp64 profile flags the
// one block from N = 32 there.
constexpr int64_t kSeqMaxN = 64;
constexpr int64_t kSeqMaxNSlowFp64 = 16;

// Beyond that N, a launch per group: block b sums row b % N of member
// b / N into rows[b] (each row in a fixed order), after finishing the group
// before from its row sums (prev, prev_rows; none for the first group):
// every block sums those in finish_group_kernel's order, so all get the same
// bits, and runs prev's fins (each block storing the same values) before
// evaluating its own member, which may read them.
//
// Those stores are the one deliberate overlap of blocks: every block stores
// the same bits to the same addresses and reads only what it stored itself
// (after the barrier), so any interleaving gives the same result. The host
// emulator checks exactly that invariant for stores made under
// RKD_REPLICATED_STORES (equal bits; no block reads a replicated value it did
// not store) and reports any other overlap between blocks as a race.
#ifdef RKD_GPU_EMULATE
#define RKD_REPLICATED_STORES ::emu::Replicated rkd_replicated_stores_
#else
#define RKD_REPLICATED_STORES
#endif

template <typename G>
RKD_DEV void finish_members(const G& g, const double* rows, int64_t N, double* red) {
  for (int k = 0; k < G::kSize; ++k) {
    double acc = 0.0;
    for (int64_t l = threadIdx.x; l < N; l += kBlock) acc += rows[k * N + l];
    const double total = block_sum<kBlock>(acc, red, threadIdx.x);
    if (threadIdx.x == 0) {
      RKD_REPLICATED_STORES;
      g.fin(k, total);
    }
  }
  __syncthreads();
}

template <typename Prev, typename G>
__global__ void __launch_bounds__(kBlock) group_row_sums_kernel(Prev prev, const double* prev_rows, G g, int64_t N,
                                                                double* rows) {
  __shared__ double red[kBlock];
  if (Prev::kSize > 0) finish_members(prev, prev_rows, N, red);
  const int k = static_cast<int>(blockIdx.x / N);
  const int64_t i = blockIdx.x % N;
  double acc = 0.0;
#pragma unroll 1  // as weights_kernel's loop: no spill around the division's slow path
  for (int64_t j = threadIdx.x; j < N; j += kBlock) acc += g.f(k, i, j);
  const double row = block_sum<kBlock>(acc, red, threadIdx.x);
  if (threadIdx.x == 0) rows[blockIdx.x] = row;
}

// The last group's fins from its row sums: one block.
template <typename G>
__global__ void __launch_bounds__(kBlock) finish_group_kernel(G g, const double* rows, int64_t N) {
  __shared__ double red[kBlock];
  finish_members(g, rows, N, red);
}

template <typename Prev, typename G, typename Check>
void group_row_sums(const Prev& prev, const double* prev_rows, const G& g, int64_t N, double* rows,
                    cudaStream_t stream, const Check& check) {
  Cost cost = elementwise_cost(N * N * G::kSize, 0.0);
  // every block reads the previous group's row sums
  cost.bytes += 8.0 * static_cast<double>(Prev::kSize) * static_cast<double>(N) * static_cast<double>(N * G::kSize);
  launch(check, cost, group_row_sums_kernel<Prev, G>, dim3(grid_dim(N * G::kSize)), dim3(kBlock), stream, prev,
         prev_rows, g, N, rows);
}

template <typename G, typename Check>
void finish_group(const G& g, const double* rows, int64_t N, cudaStream_t stream, const Check& check) {
  Cost cost;
  cost.bytes = 8.0 * static_cast<double>(N * G::kSize);
  cost.flops64 = static_cast<double>(N * G::kSize);
  launch(check, cost, finish_group_kernel<G>, dim3(1), dim3(kBlock), stream, g, rows, N);
}

template <typename Check, typename... Groups>
void reduce_seq_one_block(int64_t N, cudaStream_t stream, const Check& check, const Groups&... groups) {
  Cost cost = elementwise_cost(N * N * (0 + ... + Groups::kSize), 0.0);
  cost.blocks = 1;
  launch(check, cost, reduce_seq_kernel<Groups...>, dim3(1), dim3(kBlock), stream, N, groups...);
}

// out[l] = in[l] converted, for n elements.
template <typename In, typename Out>
__global__ void __launch_bounds__(kBlock) convert_kernel(const In* __restrict__ in, int64_t n, Out* __restrict__ out) {
  const int64_t l = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (l < n) out[l] = narrow<Out>(widen(in[l]));
}

template <typename Out>
__global__ void __launch_bounds__(kBlock) zero_kernel(int64_t n, Out* __restrict__ out) {
  const int64_t l = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (l < n) out[l] = narrow<Out>(0.0);
}

template <typename In, typename Out, typename Check>
void convert(const In* in, int64_t n, Out* out, cudaStream_t stream, const Check& check) {
  Cost cost;
  cost.bytes = static_cast<double>(n) * static_cast<double>(sizeof(In) + sizeof(Out));
  launch(check, cost, convert_kernel<In, Out>, dim3(grid_dim(ceil_div(n, kBlock))), dim3(kBlock), stream, in, n,
         out);
}

template <typename Out, typename Check>
void zero(int64_t n, Out* out, cudaStream_t stream, const Check& check) {
  Cost cost;
  cost.bytes = static_cast<double>(n) * static_cast<double>(sizeof(Out));
  launch(check, cost, zero_kernel<Out>, dim3(grid_dim(ceil_div(n, kBlock))), dim3(kBlock), stream, n, out);
}

}  // namespace gpu
}  // namespace rkd
