// The O(N^2 D) CUDA kernels every RKD op is built from (torch-free), the
// counterparts of csrc/cpu/pair_matrix_cpu.cpp:
//
// pair_matrix: the N x N float64 matrix of squared distances s_ij (or of
//   max(s_ij, eps), or of sqrt(max(s_ij, eps))), diagonal exactly 0, exactly
//   symmetric. s is the Gram form n_i + n_j - 2 <xc_i, xc_j> on the
//   batch-centred features xc in float64 (relations are translation
//   invariant; centring removes the cancellation a common offset causes);
//   pairs too close for that form (rkd_math.h's gram_near) are recomputed
//   from direct differences, so near-duplicates are accurate and exact
//   duplicates give exactly 0.
// grad_from_weights: dL/dx_i = 2 (w_i xc_i - sum_j W_ij xc_j), with
//   W = dL/ds + (dL/ds)^T and w its row sums (common.cuh builds both), in
//   float64, returned in x's dtype.
// Both run in float64 whatever the op layer's Precision: the fast float32
// product is a CPU option.
//
// Both products run through one shared-memory tiled float64 GEMM: each
// output element is one thread's sum over k in a fixed order.
#pragma once

#include "common.cuh"

namespace rkd {
namespace gpu {

// GEMM tiling: a 16 x 16 thread block computes a kTile x kTile block of the
// output, kMicro x kMicro elements per thread (rows ty + 16 r, columns
// tx + 16 c), stepping through K by kTk.
constexpr int kTile = 64;
constexpr int kTk = 16;
constexpr int kMicro = 4;
constexpr int kGemmThreads = 256;

// acc[r][c] += sum_k A[row0 + ty + 16 r][k] B[k][col0 + tx + 16 c] over k < K.
// A is row-major with leading dimension lda and M rows. B has Nc columns and
// is read as B[k][n] = b[n * ldb + k] when kBT (the transpose of a row-major
// matrix: the Gram product), b[k * ldb + n] otherwise. Entries outside the
// matrices read as 0. Called by all threads of a (16, 16) block.
template <bool kBT>
RKD_DEV void gemm_f64(const double* __restrict__ a, int64_t lda, int64_t M, const double* __restrict__ b,
                      int64_t ldb, int64_t Nc, int64_t K, int64_t row0, int64_t col0,
                      double (&acc)[kMicro][kMicro]) {
  __shared__ double As[kTk][kTile + 1];
  __shared__ double Bs[kTk][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y, t = ty * 16 + tx;
  for (int64_t k0 = 0; k0 < K; k0 += kTk) {
    // kTile x kTk elements per operand, kTile * kTk / kGemmThreads per thread;
    // runs of 16 consecutive threads read 16 consecutive k of one row.
    for (int l = 0; l < kTile * kTk / kGemmThreads; ++l) {
      const int e = t + l * kGemmThreads;
      const int m = e / kTk, kk = e % kTk;
      const int64_t k = k0 + kk;
      const int64_t row = row0 + m;
      As[kk][m] = (row < M && k < K) ? a[row * lda + k] : 0.0;
      if (kBT) {
        const int64_t col = col0 + m;
        Bs[kk][m] = (col < Nc && k < K) ? b[col * ldb + k] : 0.0;
      } else {
        const int n = e % kTile, kb = e / kTile;
        const int64_t col = col0 + n, kr = k0 + kb;
        Bs[kb][n] = (col < Nc && kr < K) ? b[kr * ldb + col] : 0.0;
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTk; ++kk) {
      double av[kMicro], bv[kMicro];
#pragma unroll
      for (int r = 0; r < kMicro; ++r) av[r] = As[kk][ty + 16 * r];
#pragma unroll
      for (int c = 0; c < kMicro; ++c) bv[c] = Bs[kk][tx + 16 * c];
#pragma unroll
      for (int r = 0; r < kMicro; ++r)
#pragma unroll
        for (int c = 0; c < kMicro; ++c) acc[r][c] += av[r] * bv[c];
    }
    __syncthreads();
  }
}

// Column means of x (N x D) in float64: a (32, 8) block per 32 columns, the
// 8 row slices summed in a fixed order.
template <typename T>
__global__ void __launch_bounds__(256) column_mean_kernel(const T* __restrict__ x, int64_t N, int64_t D,
                                                          double* __restrict__ mean) {
  __shared__ double part[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * 32 + tx;
  double acc = 0.0;
  if (k < D)
    for (int64_t i = ty; i < N; i += 8) acc += widen(x[i * D + k]);
  part[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && k < D) {
    double total = 0.0;
    for (int r = 0; r < 8; ++r) total += part[r][tx];
    mean[k] = total / static_cast<double>(N);
  }
}

// xc = x - mean in float64 and, when norms is not null, norms[i] = ||xc_i||^2;
// one block per row.
template <typename T>
__global__ void __launch_bounds__(kBlock) centre_kernel(const T* __restrict__ x, const double* __restrict__ mean,
                                                        int64_t D, double* __restrict__ xc,
                                                        double* __restrict__ norms) {
  __shared__ double red[kBlock];
  const int64_t i = blockIdx.x;
  double acc = 0.0;
  for (int64_t k = threadIdx.x; k < D; k += kBlock) {
    const double v = widen(x[i * D + k]) - mean[k];
    xc[i * D + k] = v;
    acc += v * v;
  }
  if (norms == nullptr) return;  // uniform over the block: the reduction below is all or none
  const double n = block_sum<kBlock>(acc, red, threadIdx.x);
  if (threadIdx.x == 0) norms[i] = n;
}

RKD_DEV double sqdist_direct(const double* __restrict__ a, const double* __restrict__ b, int64_t D) {
  double acc = 0.0;
  for (int64_t k = 0; k < D; ++k) {
    const double t = a[k] - b[k];
    acc += t * t;
  }
  return acc;
}

// epi(i, j, acc[r][c]) for the output elements (i, j) = (row0 + ty + 16 r,
// col0 + tx + 16 c) of a thread's micro-tile.
template <typename Epi>
RKD_DEV void for_micro_tile(int64_t row0, int64_t col0, const double (&acc)[kMicro][kMicro], const Epi& epi) {
#pragma unroll
  for (int r = 0; r < kMicro; ++r)
#pragma unroll
    for (int c = 0; c < kMicro; ++c) epi(row0 + threadIdx.y + 16 * r, col0 + threadIdx.x + 16 * c, acc[r][c]);
}

// The pair value of kind kWhat for i != j from the Gram entry g.
template <PairKind kWhat>
RKD_DEV double pair_value(const double* __restrict__ xc, const double* __restrict__ norms, int64_t D, int64_t i,
                          int64_t j, double g, double eps) {
  double v = gram_sq(norms[i], norms[j], g);
  if (gram_near(v, norms[i], norms[j])) v = sqdist_direct(xc + i * D, xc + j * D, D);
  if (kWhat == PairKind::Dist) return dist_from_sq(v, eps);
  if (kWhat == PairKind::SqClamped) return clamp_sq(v, eps);
  return v;
}

// One kTile x kTile block of the pair matrix on or above the diagonal (blocks
// below it return at once); each pair is computed once and stored at (i, j)
// and (j, i), so the matrix is exactly symmetric.
template <PairKind kWhat>
__global__ void __launch_bounds__(kGemmThreads) gram_pairs_kernel(const double* __restrict__ xc,
                                                                  const double* __restrict__ norms, int64_t N,
                                                                  int64_t D, double eps, double* __restrict__ out) {
  if (blockIdx.y > blockIdx.x) return;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile, col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  double acc[kMicro][kMicro] = {};
  gemm_f64<true>(xc, D, N, xc, D, N, D, row0, col0, acc);
  for_micro_tile(row0, col0, acc, [&](int64_t i, int64_t j, double g) {
    if (i >= N || j >= N || j < i) return;
    const double v = j == i ? 0.0 : pair_value<kWhat>(xc, norms, D, i, j, g, eps);
    out[i * N + j] = v;
    out[j * N + i] = v;
  });
}

// One kTile x kTile block of the rows [begin, end) of the pair matrix
// against all columns, row i at (i - begin) N.
template <PairKind kWhat>
__global__ void __launch_bounds__(kGemmThreads) gram_rows_kernel(const double* __restrict__ xc,
                                                                 const double* __restrict__ norms, int64_t N,
                                                                 int64_t D, Rows rows, double eps,
                                                                 double* __restrict__ out) {
  const int64_t row0 = rows.begin + static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  double acc[kMicro][kMicro] = {};
  gemm_f64<true>(xc, D, rows.end, xc, D, N, D, row0, col0, acc);
  for_micro_tile(row0, col0, acc, [&](int64_t i, int64_t j, double g) {
    if (i >= rows.end || j >= N) return;
    out[(i - rows.begin) * N + j] = i == j ? 0.0 : pair_value<kWhat>(xc, norms, D, i, j, g, eps);
  });
}

// dx = 2 (w_i xc_i - (W xc)_i) in T for the rows [begin, begin + n) (W's
// rows, and dx's, at i - begin): one kTile (rows) x kTile (features) block.
template <typename T>
__global__ void __launch_bounds__(kGemmThreads) grad_gemm_kernel(const double* __restrict__ W,
                                                                 const double* __restrict__ w,
                                                                 const double* __restrict__ xc, int64_t N,
                                                                 int64_t D, Rows rows, T* __restrict__ dx) {
  const int64_t n = rows.end - rows.begin;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile, col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  double acc[kMicro][kMicro] = {};
  gemm_f64<false>(W, N, n, xc, D, D, N, row0, col0, acc);
  for_micro_tile(row0, col0, acc, [&](int64_t l, int64_t k, double wx) {
    if (l < n && k < D) dx[l * D + k] = narrow<T>(grad_epilogue(w[l], xc[(rows.begin + l) * D + k], wx));
  });
}

// A gemm_f64 over `tiles` kTile x kTile output tiles and K steps (padding
// included: the threads compute it), plus `epilogue` float64 operations, and
// the distinct bytes the launch moves.
inline Cost gemm_cost(int64_t tiles, int64_t K, double epilogue, double bytes) {
  Cost c;
  c.bytes = bytes;
  c.flops64 = 2.0 * kTile * kTile * static_cast<double>(tiles) * static_cast<double>(K) + epilogue;
  c.blocks = static_cast<double>(tiles);
  return c;
}

// The bytes of a pair-matrix product: xc and its norms read, `out` float64
// pair values written. The recomputed close pairs depend on the data and are
// not counted.
inline double pair_bytes(int64_t N, int64_t D, int64_t out) {
  return 8.0 * (static_cast<double>(N) * static_cast<double>(D) + static_cast<double>(N) + static_cast<double>(out));
}

// xc (N x D) and, when norms is not null, the squared norms of its rows.
template <typename T, typename Alloc, typename Check>
void centre(const T* x, int64_t N, int64_t D, double* xc, double* norms, Alloc& alloc, cudaStream_t stream,
            const Check& check) {
  double* mean = take<double>(alloc, D);
  const double nd = static_cast<double>(N) * static_cast<double>(D);
  Cost mc;
  mc.bytes = nd * sizeof(T) + 8.0 * static_cast<double>(D);
  mc.flops64 = nd;
  launch(check, mc, column_mean_kernel<T>, dim3(grid_dim(ceil_div(D, 32))), dim3(32, 8), stream, x, N, D, mean);
  Cost cc;
  cc.bytes = nd * (sizeof(T) + 8.0) + 8.0 * static_cast<double>(D + (norms ? N : 0));
  cc.flops64 = nd * (norms ? 3.0 : 1.0);
  launch(check, cc, centre_kernel<T>, dim3(grid_dim(N)), dim3(kBlock), stream, x, static_cast<const double*>(mean),
         D, xc, norms);
}

// x: contiguous (N, D) on the device. out: (N, N) float64.
template <typename T, typename Alloc, typename Check>
void pair_matrix(const T* x, int64_t N, int64_t D, PairKind what, double eps, double* out, Alloc& alloc,
                 cudaStream_t stream, const Check& check) {
  double* xc = take<double>(alloc, N * D);
  double* norms = take<double>(alloc, N);
  centre(x, N, D, xc, norms, alloc, stream, check);
  const unsigned nt = grid_dim(ceil_div(N, kTile));
  auto kernel = what == PairKind::Dist        ? gram_pairs_kernel<PairKind::Dist>
                : what == PairKind::SqClamped ? gram_pairs_kernel<PairKind::SqClamped>
                                              : gram_pairs_kernel<PairKind::Sq>;
  const int64_t upper = static_cast<int64_t>(nt) * (nt + 1) / 2;  // the tiles on or above the diagonal
  launch(check, gemm_cost(upper, D, 6.0 * N * N, pair_bytes(N, D, N * N)), kernel, dim3(nt, nt), dim3(16, 16), stream,
         static_cast<const double*>(xc), static_cast<const double*>(norms), N, D, eps, out);
}

// Rows [rows.begin, rows.end) of the pair matrix: out (rows.size(), N) float64.
template <typename T, typename Alloc, typename Check>
void pair_rows(const T* x, int64_t N, int64_t D, Rows rows, PairKind what, double eps, double* out, Alloc& alloc,
               cudaStream_t stream, const Check& check) {
  double* xc = take<double>(alloc, N * D);
  double* norms = take<double>(alloc, N);
  centre(x, N, D, xc, norms, alloc, stream, check);
  auto kernel = what == PairKind::Dist        ? gram_rows_kernel<PairKind::Dist>
                : what == PairKind::SqClamped ? gram_rows_kernel<PairKind::SqClamped>
                                              : gram_rows_kernel<PairKind::Sq>;
  const int64_t tiles = ceil_div(N, kTile) * ceil_div(rows.size(), kTile);
  launch(check, gemm_cost(tiles, D, 6.0 * rows.size() * N, pair_bytes(N, D, rows.size() * N)), kernel,
         dim3(grid_dim(ceil_div(N, kTile)), grid_dim(ceil_div(rows.size(), kTile))), dim3(16, 16), stream,
         static_cast<const double*>(xc), static_cast<const double*>(norms), N, D, rows, eps, out);
}

// W, w: the rows of the weights and their sums (build_weights), (rows.size(), N)
// and (rows.size()). dx: contiguous (rows.size(), D).
template <typename T, typename Alloc, typename Check>
void grad_from_weights(const T* x, int64_t N, int64_t D, Rows rows, const double* W, const double* w, T* dx,
                       Alloc& alloc, cudaStream_t stream, const Check& check) {
  double* xc = take<double>(alloc, N * D);
  centre(x, N, D, xc, static_cast<double*>(nullptr), alloc, stream, check);
  const int64_t n = rows.size();
  const double nd = static_cast<double>(n) * static_cast<double>(D);
  // W, w and xc read, dx written.
  const double bytes = 8.0 * (static_cast<double>(n) * N + n + static_cast<double>(N) * D) + nd * sizeof(T);
  launch(check, gemm_cost(ceil_div(D, kTile) * ceil_div(n, kTile), N, 3.0 * nd, bytes), grad_gemm_kernel<T>,
         dim3(grid_dim(ceil_div(D, kTile)), grid_dim(ceil_div(n, kTile))), dim3(16, 16), stream, W, w,
         static_cast<const double*>(xc), N, D, rows, dx);
}

}  // namespace gpu
}  // namespace rkd
