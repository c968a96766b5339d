// CUDA kernels of the angle-wise RKD ops (torch-free), the counterparts of
// csrc/cpu/angle_cpu.cpp: the angle tensor and the fused angle loss, forward
// and backward, built from the float64 squared-distance matrices s of
// pair_matrix_kernel.cuh by the law of cosines (rkd_math.h). Besides s they need
// O(N^2) memory: nothing of size N^3 or N^2 D is allocated (except the
// (N, N, N) outputs and upstream gradients of the elementwise variants).
//
// Precision: s and every cosine numerator s_ij + s_ik - s_jk are float64 (the
// numerator cancels for near-duplicate points). The rest of each triplet runs
// in Acc: float64 when the loss is float64, float32 otherwise; sums of Acc
// terms go into float64 every kChunk steps.
//
// The triplet kernels are tiled like a GEMM: a block owns a tile of two of
// the three indices, each thread a micro-tile of it (2 x 4 in the loss, 2 x 2
// in the backward passes), and the third index is the sequential loop, staged
// kChunk rows at a time in shared memory, both sides' operands of an index
// side by side (one vector load). s and u are symmetric, so the row of the
// loop index holds every operand: s_ik = s[k][i]. Each output element is one
// thread's sum in a fixed order; partial results over index ranges are summed
// in a fixed order after: no atomics, bitwise reproducible.
//
// What the inner loops keep out: the cosine's half (folded into one edge's u,
// cosine_half), the smooth-L1 constants (0.5 / beta, 0.5 beta), the loss's
// pair weights (a tile wholly above the diagonal weighs every triplet 2), and
// a scalar upstream factor (applied to each chunk's sums). Every triplet
// kernel fits 128 registers at 256 threads (16 warps per SM) but the float64
// loss with an (N, N, N) upstream (passes_min_blocks), and none spills:
// scripts/kernel_resources.py gates both, scripts/kernel_loops.py counts the
// instructions per triplet (docs/gpu.md).
//
// Loss forward (sum over all triplets): a block owns (j, k) with k >= j
// (A_ijk = A_ikj: k > j counts twice, k == j once) and loops over the vertex i.
// Backward, with G_ijk = dL/dA_ijk and Gs_ijk = G_ijk + G_ikj, dL/ds is built
// from two passes (rkd_math.h):
//   vertex pass: a block owns (i, j), loops over k: p_ij = sum_k Gs_ijk w_ik,
//     q_ij = sum_k Gs_ijk A_ijk, and V_ij = vertex_edge_grad(p, q, w_ij);
//   opposite pass: a block owns (j, k) with k >= j, loops over i:
//     R_jk = sum_i Gs_ijk w_ij w_ik, symmetric, stored at (j, k) and (k, j).
// Then W_ij = V_ij + V_ji + opposite_edge_grad(R_ij) (the op layer's
// AngleWeight) feeds grad_from_weights of pair_matrix_kernel.cuh. The host
// side that launches these kernels is gpu_backend.cuh.
#pragma once

#include <type_traits>

#include "../core/angle_op.h"
#include "common.cuh"

namespace rkd {
namespace gpu {

// Triplet tiling: 16 x 16 threads, each a kRows x kCols micro-tile (first
// tile index ty + 16 r, second tx + 16 c), kChunk loop steps per stage. The
// vertex pass, which keeps four float64 values per element in registers,
// takes kVertexCols columns per thread (a 32 x 32 tile) so that every triplet
// kernel fits 128 registers: two blocks, 16 warps, per SM.
constexpr int kTri = 16;
constexpr int kRows = 2;
constexpr int kCols = 4;
constexpr int kVertexCols = 2;
constexpr int kOppositeCols = 2;
constexpr int kTA = kTri * kRows;  // tile extent along the first index
constexpr int kTB = kTri * kCols;  // along the second
constexpr int kTV = kTri * kVertexCols;  // the vertex pass's, along its second
constexpr int kTO = kTri * kOppositeCols;  // the opposite pass's
constexpr int kChunk = 8;
constexpr int kTriThreads = kTri * kTri;

// The vertex rows [begin, end) in `splits` ranges of per_split rows (a
// multiple of kChunk), one per blockIdx.z.
struct VertexSplit {
  int64_t begin, end, splits, per_split;
  RKD_DEV Rows range(int64_t z) const {
    const int64_t b = begin + z * per_split;
    return {b, b + per_split < end ? b + per_split : end};
  }
};

// The staged operands of one index of a triplet, both sides side by side so
// that one (vector) shared load fetches them: s of sides a and b, and u of
// both, the half of the cosine folded in where the index is the cosine's
// u_ij (cosine_half), with w of side a where a pass needs it (EdgeW).
template <typename T>
struct alignas(2 * sizeof(T)) Two {
  T a, b;
};
template <typename T>
struct alignas(4 * sizeof(T)) EdgeW {
  T ua, wa, ub, unused;
};

template <typename Acc>
RKD_DEV void put(Two<Acc>& d, Acc half, Acc ua, Acc ub, Acc) {
  d = {half * ua, half * ub};
}
template <typename Acc>
RKD_DEV void put(EdgeW<Acc>& d, Acc half, Acc ua, Acc ub, Acc wa) {
  d = {half * ua, wa, half * ub, Acc(0)};
}

// Rows r0 + l, columns c0 + c of s and u of sides a and b (b where kB; else
// 0), into s[l][c] and e[l][c] (u times `half`, 1 or 0.5, and w_a =
// active_inv_edge(s_a, u_a)); 0 outside the matrix.
template <bool kB, int W, typename Acc, typename E>
RKD_DEV void stage(Two<double> (*s)[W], E (*e)[W], const Edges<Acc>& a, const Edges<Acc>& b, int64_t N, int64_t r0,
                   int64_t c0, Acc half, double eps2, int t) {
  for (int idx = t; idx < kChunk * W; idx += kTriThreads) {
    const int l = idx / W, c = idx % W;
    const int64_t r = r0 + l, col = c0 + c;
    const bool in = r < N && col < N;
    const double sa = in ? a.s[r * N + col] : 0.0, sb = kB && in ? b.s[r * N + col] : 0.0;
    const Acc ua = in ? a.u[r * N + col] : Acc(0), ub = kB && in ? b.u[r * N + col] : Acc(0);
    s[l][c] = {sa, sb};
    if (e != nullptr) put(e[l][c], half, ua, ub, static_cast<Acc>(active_inv_edge(sa, static_cast<double>(ua), eps2)));
  }
}

RKD_DEV int64_t clamp_dev(int64_t v, int64_t N) { return v < N ? v : N - 1; }

// The loop steps of a stage unrolled by two in float32 on sm_90 (half the
// loop's overhead per triplet). Float64, which holds twice the registers,
// would spill at 128 registers, and so would sm_80's float32 loss sum.
template <typename Acc>
constexpr int steps_unrolled() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  return 1;
#else
  return sizeof(Acc) == 4 ? 2 : 1;
#endif
}

// A chunk's Acc sum into the float64 accumulators, times the upstream's
// uniform factor where the loop left it out (exact: a product of two floats
// fits a double; of two doubles, one rounding).
template <typename G, typename Acc>
RKD_DEV double flush(const G& g, Acc sum) {
  if constexpr (G::kUniform) return static_cast<double>(g.factor()) * static_cast<double>(sum);
  return static_cast<double>(sum);
}

// ---- kernels ---------------------------------------------------------------------------

// The (N, N, N) cosines of a (kLoss false) or the elementwise loss
// l(A_a - A_b) (kLoss true): a block per row (i, j), threads along k.
template <typename Acc, typename Out, bool kLoss>
__global__ void __launch_bounds__(kBlock) angle_values_kernel(Edges<Acc> a, Edges<Acc> b, int64_t N, Huber<Acc> huber,
                                                              Out* __restrict__ out) {
  const int64_t i = blockIdx.y, j = blockIdx.x;
  const double sa_ij = a.s[i * N + j], sb_ij = b.s[i * N + j];
  const Acc ua_ij = a.u[i * N + j], ub_ij = b.u[i * N + j];
  Out* row = out + (i * N + j) * N;
  for (int64_t k = threadIdx.x; k < N; k += kBlock) {
    Acc v = cosine(sa_ij, a.s[i * N + k], a.s[j * N + k], ua_ij, a.u[i * N + k]);
    if constexpr (kLoss)
      v = smooth_l1(v - cosine(sb_ij, b.s[i * N + k], b.s[j * N + k], ub_ij, b.u[i * N + k]), huber);
    row[k] = narrow<Out>(static_cast<double>(v));
  }
}

// The staged operands of the loss sum.
template <typename Acc>
struct LossSumStage {
  Two<double> sJ[kChunk][kTA], sK[kChunk][kTB];
  Two<Acc> uJ[kChunk][kTA], uK[kChunk][kTB];
};

// One (j, k) tile's sum over the vertex rows `range`. A tile wholly above the
// diagonal and inside the matrix (kInterior) weighs every triplet 2: it sums
// the values and doubles the chunk's sum, the same bits as summing the doubled
// values (a power-of-two scaling is exact).
template <bool kInterior, typename Acc>
RKD_DEV double loss_sum_tile(LossSumStage<Acc>& st, const Edges<Acc>& a, const Edges<Acc>& b, int64_t N,
                             const Huber<Acc>& huber, Rows range, int64_t j0, int64_t k0) {
  auto& sJ = st.sJ;
  auto& sK = st.sK;
  auto& uJ = st.uJ;
  auto& uK = st.uK;
  const int tx = threadIdx.x, ty = threadIdx.y, t = ty * kTri + tx;
  double sa_jk[kRows][kCols], sb_jk[kRows][kCols];
  // Each element's weight, 0, 1 (k == j) or 2 (k > j), in 2 bits of one register.
  unsigned weights = 0;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int64_t j = j0 + ty + kTri * r, k = k0 + tx + kTri * c;
      const bool in = j < N && k < N;
      sa_jk[r][c] = in ? a.s[j * N + k] : 0.0;
      sb_jk[r][c] = in ? b.s[j * N + k] : 0.0;
      weights |= (!in || k < j ? 0u : (k == j ? 1u : 2u)) << (2 * (r * kCols + c));
    }
  }
  double total = 0.0;
  for (int64_t i0 = range.begin; i0 < range.end; i0 += kChunk) {
    stage<true>(sJ, uJ, a, b, N, i0, j0, Acc(0.5), 0.0, t);
    stage<true>(sK, uK, a, b, N, i0, k0, Acc(1), 0.0, t);
    __syncthreads();
    Acc part = Acc(0);
    const int n = range.end - i0 < kChunk ? static_cast<int>(range.end - i0) : kChunk;
#pragma unroll(steps_unrolled<Acc>())
    for (int l = 0; l < n; ++l) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const Two<double> s_ij = sJ[l][ty + kTri * r];
        const Two<Acc> hu_ij = uJ[l][ty + kTri * r];
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const Two<double> s_ik = sK[l][tx + kTri * c];
          const Two<Acc> u_ik = uK[l][tx + kTri * c];
          const Acc A = cosine_half(s_ij.a, s_ik.a, sa_jk[r][c], hu_ij.a, u_ik.a);
          const Acc B = cosine_half(s_ij.b, s_ik.b, sb_jk[r][c], hu_ij.b, u_ik.b);
          const Acc v = smooth_l1(A - B, huber);
          if constexpr (kInterior)
            part += v;
          else {  // a select, not a product: padding entries must not turn a 0 weight into NaN
            const Acc weight = static_cast<Acc>((weights >> (2 * (r * kCols + c))) & 3u);
            part += weight > Acc(0) ? weight * v : Acc(0);
          }
        }
      }
    }
    total += kInterior ? 2.0 * static_cast<double>(part) : static_cast<double>(part);
    __syncthreads();
  }
  return total;
}

// Blocks own (j, k) tiles; blockIdx.z takes the vertex rows split.range(z).
// Writes one partial sum per block (0 for tiles below the diagonal).
template <typename Acc>
__global__ void __launch_bounds__(kTriThreads, 2) angle_loss_sum_kernel(Edges<Acc> a, Edges<Acc> b, int64_t N,
                                                                        Huber<Acc> huber, VertexSplit split,
                                                                        double* __restrict__ partial) {
  __shared__ LossSumStage<Acc> st;
  __shared__ double red[kTriThreads];
  const int t = threadIdx.y * kTri + threadIdx.x;
  const int64_t block = (static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kTA, k0 = static_cast<int64_t>(blockIdx.x) * kTB;
  if (k0 + kTB - 1 < j0) {
    if (t == 0) partial[block] = 0.0;
    return;
  }
  const Rows range = split.range(blockIdx.z);
  const bool interior = j0 + kTA - 1 < k0 && k0 + kTB <= N;  // uniform over the block
  double total = interior ? loss_sum_tile<true>(st, a, b, N, huber, range, j0, k0)
                          : loss_sum_tile<false>(st, a, b, N, huber, range, j0, k0);
  total = block_sum<kTriThreads>(total, red, t);
  if (t == 0) partial[block] = total;
}

// The staged operands of the two backward passes (one or the other per block:
// angle_passes_kernel holds them in one union).
template <typename Acc>
struct VertexStage {
  Two<double> sI[kChunk][kTA], sJ[kChunk][kTV];
  EdgeW<Acc> eI[kChunk][kTA];
};
template <typename Acc>
struct OppositeStage {
  Two<double> sJ[kChunk][kTA], sK[kChunk][kTO];
  EdgeW<Acc> eJ[kChunk][kTA], eK[kChunk][kTO];
};
template <typename Acc>
union PassStage {
  VertexStage<Acc> vertex;
  OppositeStage<Acc> opposite;
};

// Vertex pass (block blk of its grid): a block owns an (i, j) tile of kTA x
// kTV, i in the vertices, and loops over k in ks.range(z), z = blk.z. Writes
// slice z of the rows of V for the vertices, (vertices.size(), N): V is
// linear in p and q, so the slices' sum is V.
template <typename Acc, typename Up>
RKD_DEV void angle_vertex_block(VertexStage<Acc>& st, uint3 blk, const Edges<Acc>& a, const Edges<Acc>& b,
                                const Up& up, int64_t N, Rows vertices, const Huber<Acc>& huber, double eps2,
                                double kappa, const VertexSplit& ks, double* __restrict__ V) {
  constexpr int kC = kVertexCols;
  auto& sI = st.sI;
  auto& sJ = st.sJ;
  auto& eI = st.eI;
  const int tx = threadIdx.x, ty = threadIdx.y, t = ty * kTri + tx;
  const int64_t i0 = vertices.begin + static_cast<int64_t>(blk.y) * kTA;
  const int64_t j0 = static_cast<int64_t>(blk.x) * kTV;
  const auto g = up.eval();
  // Elements past the edge compute on clamped indices (every read stays in
  // bounds) and are not stored. hu = 0.5 u_ij (cosine_half).
  double sa_ij[kRows][kC], sb_ij[kRows][kC], p[kRows][kC], q[kRows][kC];
  Acc hua_ij[kRows][kC], hub_ij[kRows][kC];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      const int64_t i = clamp_dev(i0 + ty + kTri * r, N), j = clamp_dev(j0 + tx + kTri * c, N);
      sa_ij[r][c] = a.s[i * N + j];
      sb_ij[r][c] = Up::kLoss ? b.s[i * N + j] : 0.0;
      hua_ij[r][c] = Acc(0.5) * a.u[i * N + j];
      hub_ij[r][c] = Up::kLoss ? Acc(0.5) * b.u[i * N + j] : Acc(0);
      p[r][c] = 0.0;
      q[r][c] = 0.0;
    }
  }
  const Rows range = ks.range(blk.z);
  for (int64_t k0 = range.begin; k0 < range.end; k0 += kChunk) {
    stage<Up::kLoss>(sI, eI, a, b, N, k0, i0, Acc(1), eps2, t);
    stage<Up::kLoss>(sJ, static_cast<Two<Acc>(*)[kTV]>(nullptr), a, b, N, k0, j0, Acc(1), eps2, t);
    __syncthreads();
    Acc pp[kRows][kC] = {}, qq[kRows][kC] = {};
    const int n = range.end - k0 < kChunk ? static_cast<int>(range.end - k0) : kChunk;
#pragma unroll(steps_unrolled<Acc>())
    for (int l = 0; l < n; ++l) {
      const int64_t k = k0 + l;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int il = ty + kTri * r;
        const int64_t i = clamp_dev(i0 + il, N);
        const Two<double> s_ik = sI[l][il];
        const EdgeW<Acc> e_ik = eI[l][il];
#pragma unroll
        for (int c = 0; c < kC; ++c) {
          const int jl = tx + kTri * c;
          const int64_t j = clamp_dev(j0 + jl, N);
          const Two<double> s_jk = sJ[l][jl];
          const Acc A = cosine_half(sa_ij[r][c], s_ik.a, s_jk.a, hua_ij[r][c], e_ik.ua);
          Acc d = Acc(0);
          if constexpr (Up::kLoss)
            d = smooth_l1_grad(A - cosine_half(sb_ij[r][c], s_ik.b, s_jk.b, hub_ij[r][c], e_ik.ub), huber);
          const Acc gs = decltype(g)::kUniform ? d : g.gsym(i, j, k, d);  // uniform: the factor at the flush
          pp[r][c] += gs * e_ik.wa;
          qq[r][c] += gs * A;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        p[r][c] += flush(g, pp[r][c]);
        q[r][c] += flush(g, qq[r][c]);
      }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      const int64_t i = i0 + ty + kTri * r, j = j0 + tx + kTri * c;
      if (i >= vertices.end || j >= N) continue;
      const double w_ij = active_inv_edge(sa_ij[r][c], static_cast<double>(a.u[i * N + j]), eps2);
      V[(static_cast<int64_t>(blk.z) * (vertices.end - vertices.begin) + i - vertices.begin) * N + j] =
          i == j ? 0.0 : vertex_edge_grad(p[r][c], q[r][c], w_ij, kappa);
    }
  }
}

// Opposite pass (block blk of its grid): a block owns a (j, k) tile on or above the diagonal (blocks
// below it return at once) and loops over the vertex rows split.range(z),
// z = blk.z. Writes slice z of R: R[z] (N, N), symmetric.
template <typename Acc, typename Up>
RKD_DEV void angle_opposite_block(OppositeStage<Acc>& st, uint3 blk, const Edges<Acc>& a, const Edges<Acc>& b,
                                  const Up& up, int64_t N, const Huber<Acc>& huber, double eps2,
                                  const VertexSplit& split, double* __restrict__ R) {
  auto& sJ = st.sJ;
  auto& sK = st.sK;
  auto& eJ = st.eJ;
  auto& eK = st.eK;
  const int tx = threadIdx.x, ty = threadIdx.y, t = ty * kTri + tx;
  constexpr int kC = kOppositeCols;
  const int64_t j0 = static_cast<int64_t>(blk.y) * kTA, k0 = static_cast<int64_t>(blk.x) * kTO;
  if (k0 + kTO - 1 < j0) return;
  const auto g = up.eval();
  double sa_jk[kRows][kC], sb_jk[kRows][kC], acc[kRows][kC];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      const int64_t j = clamp_dev(j0 + ty + kTri * r, N), k = clamp_dev(k0 + tx + kTri * c, N);
      sa_jk[r][c] = a.s[j * N + k];
      sb_jk[r][c] = Up::kLoss ? b.s[j * N + k] : 0.0;
      acc[r][c] = 0.0;
    }
  }
  const Rows range = split.range(blk.z);
  for (int64_t i0 = range.begin; i0 < range.end; i0 += kChunk) {
    // The j side carries the cosines' halves: u_ij is the cosine's first edge.
    stage<Up::kLoss>(sJ, eJ, a, b, N, i0, j0, Acc(0.5), eps2, t);
    stage<Up::kLoss>(sK, eK, a, b, N, i0, k0, Acc(1), eps2, t);
    __syncthreads();
    Acc part[kRows][kC] = {};
    const int n = range.end - i0 < kChunk ? static_cast<int>(range.end - i0) : kChunk;
#pragma unroll(steps_unrolled<Acc>())
    for (int l = 0; l < n; ++l) {
      const int64_t i = i0 + l;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int jl = ty + kTri * r;
        const int64_t j = clamp_dev(j0 + jl, N);
        const Two<double> s_ij = sJ[l][jl];
        const EdgeW<Acc> e_ij = eJ[l][jl];
#pragma unroll
        for (int c = 0; c < kC; ++c) {
          const int kl = tx + kTri * c;
          const int64_t k = clamp_dev(k0 + kl, N);
          const Two<double> s_ik = sK[l][kl];
          const EdgeW<Acc> e_ik = eK[l][kl];
          const Acc A = cosine_half(s_ij.a, s_ik.a, sa_jk[r][c], e_ij.ua, e_ik.ua);
          Acc d = Acc(0);
          if constexpr (Up::kLoss)
            d = smooth_l1_grad(A - cosine_half(s_ij.b, s_ik.b, sb_jk[r][c], e_ij.ub, e_ik.ub), huber);
          const Acc gs = decltype(g)::kUniform ? d : g.gsym(i, j, k, d);  // uniform: the factor at the flush
          part[r][c] += gs * e_ij.wa * e_ik.wa;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int c = 0; c < kC; ++c) acc[r][c] += flush(g, part[r][c]);
    __syncthreads();
  }
  double* out = R + static_cast<int64_t>(blk.z) * N * N;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      const int64_t j = j0 + ty + kTri * r, k = k0 + tx + kTri * c;
      if (j >= N || k >= N || k < j) continue;
      out[j * N + k] = acc[r][c];
      out[k * N + j] = acc[r][c];
    }
  }
}

// The block (x, y, z) of grid g with flat index f (x fastest).
RKD_DEV uint3 unflatten(int64_t f, const dim3& g) {
  return make_uint3(static_cast<unsigned>(f % g.x), static_cast<unsigned>(f / g.x % g.y),
                    static_cast<unsigned>(f / (static_cast<int64_t>(g.x) * g.y)));
}

// Both backward passes in one launch (they read the same operands and write
// different outputs): the vertex pass's grid vgrid, then the opposite pass's
// ogrid, flattened.
//
// Two blocks (16 warps) per SM, which caps a thread at 128 registers, for all
// but the float64 loss with an (N, N, N) upstream gradient (reduction
// 'none'): its upstream's two 64-bit addresses per element do not fit beside
// the float64 accumulators without spilling, so it takes what it needs.
template <typename Acc, typename Up>
constexpr int passes_min_blocks() {
  return sizeof(Acc) == 8 && Up::kLoss && !std::is_same<Up, ScalarUpstream<Acc>>::value ? 1 : 2;
}

template <typename Acc, typename Up>
__global__ void __launch_bounds__(kTriThreads, passes_min_blocks<Acc, Up>()) angle_passes_kernel(Edges<Acc> a, Edges<Acc> b, Up up, int64_t N,
                                                                   Rows vertices, Huber<Acc> huber, double eps2,
                                                                   double kappa, VertexSplit ks, double* V,
                                                                   VertexSplit split, double* R, dim3 vgrid,
                                                                   dim3 ogrid) {
  __shared__ PassStage<Acc> st;
  const int64_t f = blockIdx.x, nv = static_cast<int64_t>(vgrid.x) * vgrid.y * vgrid.z;
  if (f < nv)
    angle_vertex_block(st.vertex, unflatten(f, vgrid), a, b, up, N, vertices, huber, eps2, kappa, ks, V);
  else
    angle_opposite_block(st.opposite, unflatten(f - nv, ogrid), a, b, up, N, huber, eps2, split, R);
}

// ---- launch geometry ----------------------------------------------------------------------------

// u of s_a in rows [0, N), of s_b in rows [N, 2 N) (the rows of a map over 2 N rows).
struct InvEdge {
  const double* s_a;
  const double* s_b;
  int64_t N;
  double eps;
  bool normalize;
  RKD_DEV double operator()(int64_t i, int64_t j) const {
    const double s = i < N ? s_a[i * N + j] : s_b[(i - N) * N + j];
    return normalize ? inv_edge(s, eps) : 1.0;
  }
};

// ---- costs, for the launch plan (common.cuh's Cost) ------------------------------------
//
// Per triplet: a cosine is 2 float64 operations (its numerator) and 3 in Acc;
// smooth_l1 about 3, its derivative 2, the symmetrised upstream 2, an
// accumulation 2.
constexpr double kCosine64 = 2, kCosineAcc = 3;

// `triplets` triplets of `f64` float64 and `acc` Acc operations each, over
// `blocks` working blocks (0: the whole grid), moving `bytes`.
template <typename Acc>
Cost triplet_cost(double triplets, double f64, double acc, double bytes, double blocks) {
  Cost c = flops_in<Acc>(triplets * acc);
  c.flops64 += triplets * f64;
  c.bytes = bytes;
  c.blocks = blocks;
  c.units = triplets;
  return c;
}

// The bytes of reading s and u of `sides` sides, (N, N) each.
template <typename Acc>
double edge_bytes(int64_t N, int sides) {
  return static_cast<double>(sides) * static_cast<double>(N) * static_cast<double>(N) * (8.0 + sizeof(Acc));
}

// The distinct bytes of an upstream gradient: N^3 elements of an (N, N, N)
// one, else one.
template <typename Up>
double upstream_bytes(const Up&, int64_t) {
  return 8.0;
}
template <typename Acc, bool kLossTerm>
double upstream_bytes(const CubeUpstream<Acc, kLossTerm>&, int64_t N) {
  return static_cast<double>(N) * static_cast<double>(N) * static_cast<double>(N) * sizeof(Acc);
}

// Tiles of the (kTA, tb) grid that reach on or above the diagonal (kTA a
// multiple of tb, or tb of kTA).
inline int64_t upper_tiles(int64_t N, int64_t tb = kTB) {
  const int64_t na = ceil_div(N, kTA), nb = ceil_div(N, tb);
  int64_t n = 0;
  for (int64_t ta = 0; ta < na; ++ta) n += nb - ta * kTA / tb;
  return n;
}

// The k loop of the vertex pass over all N vertices split as split_vertices
// splits the vertex loop, for its `tiles` (i, j) tiles; unsplit for a block
// of rows (the op layer's AngleGrad: V in slices only for all vertices).
inline VertexSplit split_k(int64_t N, Rows vertices, int64_t tiles) {
  if (vertices.begin != 0 || vertices.end != N) return {0, N, 1, ceil_div(N, kChunk) * kChunk};
  const int64_t want = ceil_div(512, tiles), chunks = ceil_div(N, kChunk);
  const int64_t cap = chunks < 8 ? chunks : 8;
  const int64_t splits = want < 1 ? 1 : (want > cap ? cap : want);
  return {0, N, splits < 1 ? 1 : splits, ceil_div(chunks, splits < 1 ? 1 : splits) * kChunk};
}

// The vertex loop of the (j, k) kernels over `vertices` is split so that
// small and mid-sized N still give a few hundred blocks; a function of the
// sizes alone, so results do not depend on the device.
inline VertexSplit split_vertices(int64_t N, Rows vertices) {
  const int64_t want = ceil_div(512, upper_tiles(N)), chunks = ceil_div(vertices.size(), kChunk);
  const int64_t cap = chunks < 8 ? chunks : 8;
  const int64_t splits = want < 1 ? 1 : (want > cap ? cap : want);
  return {vertices.begin, vertices.end, splits, ceil_div(chunks, splits < 1 ? 1 : splits) * kChunk};
}

}  // namespace gpu
}  // namespace rkd
