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
// the three indices, each thread a kRows x kCols micro-tile of it, and the
// third index is the sequential loop, staged kChunk rows at a time in shared
// memory. s and u are symmetric, so the row of the loop index holds every
// operand: s_ik = s[k][i]. Each output element is one thread's sum in a fixed
// order; partial results over index ranges are summed in a fixed order after:
// no atomics, bitwise reproducible.
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

#include "../core/angle_op.h"
#include "common.cuh"

namespace rkd {
namespace gpu {

// Triplet tiling: 16 x 16 threads, each a kRows x kCols micro-tile (first
// tile index ty + 16 r, second tx + 16 c), kChunk loop steps per stage.
constexpr int kTri = 16;
constexpr int kRows = 2;
constexpr int kCols = 4;
constexpr int kTA = kTri * kRows;  // tile extent along the first index
constexpr int kTB = kTri * kCols;  // along the second
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

// s[l][c] and, where the destination is not null, u[l][c] and
// w[l][c] = active_inv_edge(s, u) for rows r0 + l and columns c0 + c of one
// side; 0 outside the matrix.
template <int W, typename Acc>
RKD_DEV void stage(double (*s)[W], Acc (*u)[W], Acc (*w)[W], const Edges<Acc>& e, int64_t N, int64_t r0, int64_t c0,
                   double eps2, int t) {
  for (int idx = t; idx < kChunk * W; idx += kTriThreads) {
    const int l = idx / W, c = idx % W;
    const int64_t r = r0 + l, col = c0 + c;
    const bool in = r < N && col < N;
    const double sv = in ? e.s[r * N + col] : 0.0;
    const Acc uv = in ? e.u[r * N + col] : Acc(0);
    s[l][c] = sv;
    if (u != nullptr) u[l][c] = uv;
    if (w != nullptr) w[l][c] = static_cast<Acc>(active_inv_edge(sv, static_cast<double>(uv), eps2));
  }
}

RKD_DEV int64_t clamp_dev(int64_t v, int64_t N) { return v < N ? v : N - 1; }

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

// Blocks own (j, k) tiles; blockIdx.z takes the vertex rows split.range(z).
// Writes one partial sum per block (0 for tiles below the diagonal).
template <typename Acc>
__global__ void __launch_bounds__(kTriThreads) angle_loss_sum_kernel(Edges<Acc> a, Edges<Acc> b, int64_t N,
                                                                     Huber<Acc> huber, VertexSplit split,
                                                                     double* __restrict__ partial) {
  __shared__ double sJa[kChunk][kTA], sKa[kChunk][kTB], sJb[kChunk][kTA], sKb[kChunk][kTB];
  __shared__ Acc uJa[kChunk][kTA], uKa[kChunk][kTB], uJb[kChunk][kTA], uKb[kChunk][kTB];
  __shared__ double red[kTriThreads];
  const int tx = threadIdx.x, ty = threadIdx.y, t = ty * kTri + tx;
  const int64_t block = (static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kTA, k0 = static_cast<int64_t>(blockIdx.x) * kTB;
  if (k0 + kTB - 1 < j0) {
    if (t == 0) partial[block] = 0.0;
    return;
  }
  double sa_jk[kRows][kCols], sb_jk[kRows][kCols];
  Acc weight[kRows][kCols];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int64_t j = j0 + ty + kTri * r, k = k0 + tx + kTri * c;
      const bool in = j < N && k < N;
      sa_jk[r][c] = in ? a.s[j * N + k] : 0.0;
      sb_jk[r][c] = in ? b.s[j * N + k] : 0.0;
      weight[r][c] = !in || k < j ? Acc(0) : (k == j ? Acc(1) : Acc(2));
    }
  }
  const Rows range = split.range(blockIdx.z);
  const int64_t i_begin = range.begin, i_end = range.end;
  double total = 0.0;
  for (int64_t i0 = i_begin; i0 < i_end; i0 += kChunk) {
    stage<kTA, Acc>(sJa, uJa, nullptr, a, N, i0, j0, 0.0, t);
    stage<kTB, Acc>(sKa, uKa, nullptr, a, N, i0, k0, 0.0, t);
    stage<kTA, Acc>(sJb, uJb, nullptr, b, N, i0, j0, 0.0, t);
    stage<kTB, Acc>(sKb, uKb, nullptr, b, N, i0, k0, 0.0, t);
    __syncthreads();
    const int n = i_end - i0 < kChunk ? static_cast<int>(i_end - i0) : kChunk;
    Acc part = Acc(0);
    for (int l = 0; l < n; ++l) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int jl = ty + kTri * r;
        const double sa_ij = sJa[l][jl], sb_ij = sJb[l][jl];
        const Acc ua_ij = uJa[l][jl], ub_ij = uJb[l][jl];
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const int kl = tx + kTri * c;
          const Acc A = cosine(sa_ij, sKa[l][kl], sa_jk[r][c], ua_ij, uKa[l][kl]);
          const Acc B = cosine(sb_ij, sKb[l][kl], sb_jk[r][c], ub_ij, uKb[l][kl]);
          // A select, not a product: padding entries must not turn a 0 weight into NaN.
          const Acc v = smooth_l1(A - B, huber);
          part += weight[r][c] > Acc(0) ? weight[r][c] * v : Acc(0);
        }
      }
    }
    total += static_cast<double>(part);
    __syncthreads();
  }
  total = block_sum<kTriThreads>(total, red, t);
  if (t == 0) partial[block] = total;
}

// Vertex pass (block blk of its grid): a block owns an (i, j) tile, i in the vertices, and loops over
// k in ks.range(z), z = blk.z. Writes slice z of the rows of V for the
// vertices, (vertices.size(), N): V is linear in p and q, so the slices'
// sum is V.
template <typename Acc, typename Up>
RKD_DEV void angle_vertex_block(uint3 blk, const Edges<Acc>& a, const Edges<Acc>& b, const Up& up, int64_t N,
                                Rows vertices, const Huber<Acc>& huber, double eps2, double kappa,
                                const VertexSplit& ks, double* __restrict__ V) {
  __shared__ double sIa[kChunk][kTA], sJa[kChunk][kTB], sIb[kChunk][kTA], sJb[kChunk][kTB];
  __shared__ Acc uIa[kChunk][kTA], wIa[kChunk][kTA], uIb[kChunk][kTA];
  const int tx = threadIdx.x, ty = threadIdx.y, t = ty * kTri + tx;
  const int64_t i0 = vertices.begin + static_cast<int64_t>(blk.y) * kTA;
  const int64_t j0 = static_cast<int64_t>(blk.x) * kTB;
  const auto g = up.eval();
  // Elements past the edge compute on clamped indices (every read stays in
  // bounds) and are not stored.
  double sa_ij[kRows][kCols], sb_ij[kRows][kCols], p[kRows][kCols], q[kRows][kCols];
  Acc ua_ij[kRows][kCols], ub_ij[kRows][kCols];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int64_t i = clamp_dev(i0 + ty + kTri * r, N), j = clamp_dev(j0 + tx + kTri * c, N);
      sa_ij[r][c] = a.s[i * N + j];
      sb_ij[r][c] = b.s[i * N + j];
      ua_ij[r][c] = a.u[i * N + j];
      ub_ij[r][c] = b.u[i * N + j];
      p[r][c] = 0.0;
      q[r][c] = 0.0;
    }
  }
  const Rows range = ks.range(blk.z);
  for (int64_t k0 = range.begin; k0 < range.end; k0 += kChunk) {
    stage<kTA, Acc>(sIa, uIa, wIa, a, N, k0, i0, eps2, t);
    stage<kTB, Acc>(sJa, nullptr, nullptr, a, N, k0, j0, eps2, t);
    if constexpr (Up::kLoss) {
      stage<kTA, Acc>(sIb, uIb, nullptr, b, N, k0, i0, eps2, t);
      stage<kTB, Acc>(sJb, nullptr, nullptr, b, N, k0, j0, eps2, t);
    }
    __syncthreads();
    const int n = range.end - k0 < kChunk ? static_cast<int>(range.end - k0) : kChunk;
    Acc pp[kRows][kCols] = {}, qq[kRows][kCols] = {};
    for (int l = 0; l < n; ++l) {
      const int64_t k = k0 + l;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int il = ty + kTri * r;
        const int64_t i = clamp_dev(i0 + il, N);
        const double sa_ik = sIa[l][il];
        const Acc ua_ik = uIa[l][il], w_ik = wIa[l][il];
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const int jl = tx + kTri * c;
          const int64_t j = clamp_dev(j0 + jl, N);
          const Acc A = cosine(sa_ij[r][c], sa_ik, sJa[l][jl], ua_ij[r][c], ua_ik);
          Acc d = Acc(0);
          if constexpr (Up::kLoss)
            d = smooth_l1_grad(A - cosine(sb_ij[r][c], sIb[l][il], sJb[l][jl], ub_ij[r][c], uIb[l][il]), huber);
          const Acc gs = g.gsym(i, j, k, d);
          pp[r][c] += gs * w_ik;
          qq[r][c] += gs * A;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        p[r][c] += static_cast<double>(pp[r][c]);
        q[r][c] += static_cast<double>(qq[r][c]);
      }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int64_t i = i0 + ty + kTri * r, j = j0 + tx + kTri * c;
      if (i >= vertices.end || j >= N) continue;
      const double w_ij = active_inv_edge(sa_ij[r][c], static_cast<double>(ua_ij[r][c]), eps2);
      V[(static_cast<int64_t>(blk.z) * (vertices.end - vertices.begin) + i - vertices.begin) * N + j] =
          i == j ? 0.0 : vertex_edge_grad(p[r][c], q[r][c], w_ij, kappa);
    }
  }
}

// Opposite pass (block blk of its grid): a block owns a (j, k) tile on or above the diagonal (blocks
// below it return at once) and loops over the vertex rows split.range(z),
// z = blk.z. Writes slice z of R: R[z] (N, N), symmetric.
template <typename Acc, typename Up>
RKD_DEV void angle_opposite_block(uint3 blk, const Edges<Acc>& a, const Edges<Acc>& b, const Up& up, int64_t N,
                                  const Huber<Acc>& huber, double eps2, const VertexSplit& split,
                                  double* __restrict__ R) {
  __shared__ double sJa[kChunk][kTA], sKa[kChunk][kTB], sJb[kChunk][kTA], sKb[kChunk][kTB];
  __shared__ Acc uJa[kChunk][kTA], wJa[kChunk][kTA], uKa[kChunk][kTB], wKa[kChunk][kTB];
  __shared__ Acc uJb[kChunk][kTA], uKb[kChunk][kTB];
  const int tx = threadIdx.x, ty = threadIdx.y, t = ty * kTri + tx;
  const int64_t j0 = static_cast<int64_t>(blk.y) * kTA, k0 = static_cast<int64_t>(blk.x) * kTB;
  if (k0 + kTB - 1 < j0) return;
  const auto g = up.eval();
  double sa_jk[kRows][kCols], sb_jk[kRows][kCols], acc[kRows][kCols];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int64_t j = clamp_dev(j0 + ty + kTri * r, N), k = clamp_dev(k0 + tx + kTri * c, N);
      sa_jk[r][c] = a.s[j * N + k];
      sb_jk[r][c] = b.s[j * N + k];
      acc[r][c] = 0.0;
    }
  }
  const Rows range = split.range(blk.z);
  const int64_t i_begin = range.begin, i_end = range.end;
  for (int64_t i0 = i_begin; i0 < i_end; i0 += kChunk) {
    stage<kTA, Acc>(sJa, uJa, wJa, a, N, i0, j0, eps2, t);
    stage<kTB, Acc>(sKa, uKa, wKa, a, N, i0, k0, eps2, t);
    if constexpr (Up::kLoss) {
      stage<kTA, Acc>(sJb, uJb, nullptr, b, N, i0, j0, eps2, t);
      stage<kTB, Acc>(sKb, uKb, nullptr, b, N, i0, k0, eps2, t);
    }
    __syncthreads();
    const int n = i_end - i0 < kChunk ? static_cast<int>(i_end - i0) : kChunk;
    Acc part[kRows][kCols] = {};
    for (int l = 0; l < n; ++l) {
      const int64_t i = i0 + l;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int jl = ty + kTri * r;
        const int64_t j = clamp_dev(j0 + jl, N);
        const double sa_ij = sJa[l][jl];
        const Acc ua_ij = uJa[l][jl], w_ij = wJa[l][jl];
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const int kl = tx + kTri * c;
          const int64_t k = clamp_dev(k0 + kl, N);
          const Acc A = cosine(sa_ij, sKa[l][kl], sa_jk[r][c], ua_ij, uKa[l][kl]);
          Acc d = Acc(0);
          if constexpr (Up::kLoss)
            d = smooth_l1_grad(A - cosine(sJb[l][jl], sKb[l][kl], sb_jk[r][c], uJb[l][jl], uKb[l][kl]), huber);
          part[r][c] += g.gsym(i, j, k, d) * w_ij * wKa[l][kl];
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[r][c] += static_cast<double>(part[r][c]);
    __syncthreads();
  }
  double* out = R + static_cast<int64_t>(blk.z) * N * N;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
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
template <typename Acc, typename Up>
__global__ void __launch_bounds__(kTriThreads) angle_passes_kernel(Edges<Acc> a, Edges<Acc> b, Up up, int64_t N,
                                                                   Rows vertices, Huber<Acc> huber, double eps2,
                                                                   double kappa, VertexSplit ks, double* V,
                                                                   VertexSplit split, double* R, dim3 vgrid,
                                                                   dim3 ogrid) {
  const int64_t f = blockIdx.x, nv = static_cast<int64_t>(vgrid.x) * vgrid.y * vgrid.z;
  if (f < nv)
    angle_vertex_block(unflatten(f, vgrid), a, b, up, N, vertices, huber, eps2, kappa, ks, V);
  else
    angle_opposite_block(unflatten(f - nv, ogrid), a, b, up, N, huber, eps2, split, R);
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

// Tiles of the (kTA, kTB) grid that reach on or above the diagonal.
inline int64_t upper_tiles(int64_t N) {
  const int64_t na = ceil_div(N, kTA), nb = ceil_div(N, kTB);
  int64_t n = 0;
  for (int64_t ta = 0; ta < na; ++ta) n += nb - ta * kTA / kTB;
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
