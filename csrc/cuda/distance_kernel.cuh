// CUDA kernels of the distance-wise RKD ops (torch-free), the counterparts of
// csrc/cpu/distance_cpu.cpp: everything after the pair matrices of
// pairwise_kernel.cuh. These are O(N^2) float64 passes over the clamped
// distance matrix d (zero diagonal) with the formulas of rkd_math.h; the
// scalars they need (inverse means, the mean-gradient term) stay in device
// memory, so nothing waits for the host.
#pragma once

#include "common.cuh"

namespace rkd {
namespace gpu {

// *out = 1 / (total / pairs + offset): the inverse of the off-diagonal mean
// (plus an offset) from the sum of all entries.
struct StoreInvMean {
  double* out;
  double pairs;
  double offset;
  RKD_DEV void operator()(double total) const { *out = 1.0 / (total / pairs + offset); }
};

// *out = (*inv) total / pairs: the gradient through the mean,
// c = inv_mu sum_kl g_kl d_kl / (N (N - 1)).
struct StoreMeanTerm {
  double* out;
  const double* inv;
  double pairs;
  RKD_DEV void operator()(double total) const { *out = *inv * total / pairs; }
};

inline double pair_count(int64_t N) { return static_cast<double>(N) * static_cast<double>(N - 1); }

// *out = 1 / (mean of the off-diagonal entries of d + offset). N >= 2.
template <typename Alloc, typename Check>
void inverse_mean(const double* d, int64_t N, double offset, double* out, Alloc& alloc, cudaStream_t stream,
                  const Check& check) {
  double* rows = take<double>(alloc, N);
  row_sums(MatrixAt{d, N}, N, rows, stream, check);
  finish(rows, N, StoreInvMean{out, pair_count(N), offset}, stream, check);
}

// ---- normalized_distance ------------------------------------------------------------

struct ScaledBy {
  const double* d;
  int64_t N;
  const double* inv;
  RKD_DEV double operator()(int64_t i, int64_t j) const { return d[i * N + j] * *inv; }
};

// psi = d / mean(d) in T. N >= 2.
template <typename T, typename Alloc, typename Check>
void normalized_distance(const double* d, int64_t N, T* psi, Alloc& alloc, cudaStream_t stream, const Check& check) {
  double* inv = take<double>(alloc, 1);
  inverse_mean(d, N, 0.0, inv, alloc, stream, check);
  map<T>(ScaledBy{d, N, inv}, N, psi, stream, check);
}

// ---- gradients (the weights W of pairwise_kernel.cuh's grad_from_weights) -----------

struct ProductAt {
  const double* a;
  const double* b;
  int64_t N;
  RKD_DEV double operator()(int64_t i, int64_t j) const { return a[i * N + j] * b[i * N + j]; }
};

// d = dist_from_sq(s): dL/ds_ij = g_ij ddist/ds.
struct PairwiseWeight {
  const double* g;
  const double* d;
  int64_t N;
  double sqrt_eps;
  RKD_DEV double gs(int64_t i, int64_t j) const { return g[i * N + j] * ddist_dsq(d[i * N + j], sqrt_eps); }
  RKD_DEV double operator()(int64_t i, int64_t j) const { return gs(i, j) + gs(j, i); }
};

// psi = d / mu: dL/ds_ij = (g_ij - c) / mu ddist/ds, stats = {1 / mu, c}.
struct NormalizedWeight {
  const double* g;
  const double* d;
  int64_t N;
  const double* stats;
  double sqrt_eps;
  RKD_DEV double gs(int64_t i, int64_t j) const {
    return (g[i * N + j] - stats[1]) * stats[0] * ddist_dsq(d[i * N + j], sqrt_eps);
  }
  RKD_DEV double operator()(int64_t i, int64_t j) const { return gs(i, j) + gs(j, i); }
};

// g: the (N, N) float64 upstream gradient; d: the saved distances.
template <typename Check>
void pairwise_distance_weights(const double* g, const double* d, int64_t N, double eps, double* W, double* w,
                               cudaStream_t stream, const Check& check) {
  build_weights(PairwiseWeight{g, d, N, sqrt(eps)}, N, W, w, stream, check);
}

// N >= 2.
template <typename Alloc, typename Check>
void normalized_distance_weights(const double* g, const double* d, int64_t N, double eps, double* W, double* w,
                                 Alloc& alloc, cudaStream_t stream, const Check& check) {
  double* stats = take<double>(alloc, 2);
  double* rows = take<double>(alloc, N);
  inverse_mean(d, N, 0.0, stats, alloc, stream, check);
  row_sums(ProductAt{g, d, N}, N, rows, stream, check);
  finish(rows, N, StoreMeanTerm{stats + 1, stats, pair_count(N)}, stream, check);
  build_weights(NormalizedWeight{g, d, N, stats, sqrt(eps)}, N, W, w, stream, check);
}

// ---- rkd_distance_loss ------------------------------------------------------------------
//
// a, b: the stored values of the two sides (distances, or clamped squares
// when `squared`); stats[0], stats[1]: 1 / (mean + offset) of a and of b.

struct LossTerm {
  const double* a;
  const double* b;
  int64_t N;
  const double* stats;
  Huber<double> huber;
  RKD_DEV double operator()(int64_t i, int64_t j) const {
    return smooth_l1(a[i * N + j] * stats[0] - b[i * N + j] * stats[1], huber);
  }
};

// reduction 'none': out is (N, N); otherwise a scalar. N >= 2.
template <typename Out, typename Alloc, typename Check>
void distance_loss(const double* a, const double* b, int64_t N, double beta, double mean_offset, Reduce red, Out* out,
                   Alloc& alloc, cudaStream_t stream, const Check& check) {
  double* stats = take<double>(alloc, 2);
  inverse_mean(a, N, mean_offset, stats, alloc, stream, check);
  inverse_mean(b, N, mean_offset, stats + 1, alloc, stream, check);
  const LossTerm term{a, b, N, stats, Huber<double>(beta)};
  if (red == Reduce::None) {
    map<Out>(term, N, out, stream, check);
    return;
  }
  double* rows = take<double>(alloc, N);
  row_sums(term, N, rows, stream, check);
  const double div = red == Reduce::Mean ? static_cast<double>(N) * static_cast<double>(N) : 1.0;
  finish(rows, N, StoreLoss<Out>{out, div}, stream, check);
}

// g = dL/dpsi_a = upstream * scale * l'(psi_a - psi_b); stats = {1 / mu_a', 1 / mu_b', c}.
struct LossGrad {
  const double* a;
  const double* b;
  const double* up;  // (N, N) for reduction 'none', else one element
  int64_t N;
  const double* stats;
  double scale;
  Huber<double> huber;
  bool none;
  RKD_DEV double operator()(int64_t i, int64_t j) const {
    const double u = none ? up[i * N + j] : up[0];
    return u * scale * smooth_l1_grad(a[i * N + j] * stats[0] - b[i * N + j] * stats[1], huber);
  }
};

struct LossGradTimesValue {
  LossGrad g;
  RKD_DEV double operator()(int64_t i, int64_t j) const { return g(i, j) * g.a[i * g.N + j]; }
};

// dL/ds_ij of side a = (g_ij - c) / mu_a' d value / ds (value: a distance, or
// a clamped square when `squared`).
struct LossWeight {
  LossGrad g;
  double eps, sqrt_eps;
  bool squared;
  RKD_DEV double gs(int64_t i, int64_t j) const {
    const double v = g.a[i * g.N + j];
    const double dv = squared ? dclamped_dsq(v, eps) : ddist_dsq(v, sqrt_eps);
    return (g(i, j) - g.stats[2]) * g.stats[0] * dv;
  }
  RKD_DEV double operator()(int64_t i, int64_t j) const { return gs(i, j) + gs(j, i); }
};

// W and w for the gradient of side a, whose partner in the loss is b. The
// other side's gradient is the same call with the roles swapped: the
// residual, and with it g, changes sign. up: the float64 upstream gradient.
// N >= 2.
template <typename Alloc, typename Check>
void distance_loss_weights(const double* a, const double* b, const double* up, int64_t N, double beta, double eps,
                           Reduce red, bool squared, double mean_offset, double* W, double* w, Alloc& alloc,
                           cudaStream_t stream, const Check& check) {
  double* stats = take<double>(alloc, 3);
  double* rows = take<double>(alloc, N);
  inverse_mean(a, N, mean_offset, stats, alloc, stream, check);
  inverse_mean(b, N, mean_offset, stats + 1, alloc, stream, check);
  const double scale = red == Reduce::Mean ? 1.0 / (static_cast<double>(N) * static_cast<double>(N)) : 1.0;
  const LossGrad g{a, b, up, N, stats, scale, Huber<double>(beta), red == Reduce::None};
  row_sums(LossGradTimesValue{g}, N, rows, stream, check);
  finish(rows, N, StoreMeanTerm{stats + 2, stats, pair_count(N)}, stream, check);
  build_weights(LossWeight{g, eps, sqrt(eps), squared}, N, W, w, stream, check);
}

}  // namespace gpu
}  // namespace rkd
