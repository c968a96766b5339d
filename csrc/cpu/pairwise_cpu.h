// The O(N^2 D) CPU kernels every RKD op is built from.
//
// pair_matrix_cpu: the N x N matrix of squared distances s_ij = ||x_i - x_j||^2
//   (or of clamped distances sqrt(max(s_ij, eps))) in float64, diagonal exactly
//   0. s is computed in the Gram form on the batch-centred features in float64
//   (relations are translation invariant, and centring removes the
//   cancellation a common offset causes); pairs too close for the Gram form to
//   stay accurate are recomputed from direct differences, so near-duplicates
//   are exact and exact duplicates give exactly 0.
// grad_from_sq_cpu: given dL/ds as a function gs(i, j), the gradient
//   dL/dx_i = 2 sum_j W_ij (x_i - x_j) with W = gs + gs^T, evaluated on the
//   centred features and returned in x's dtype. The product W x runs in
//   float64, or with GramPrecision::Fast for non-float64 inputs in float32
//   with float64 accumulation every few dozen terms.
//
// Every output element is computed by one thread in a fixed order, whatever
// the thread count: results are bitwise reproducible.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu_util.h"

namespace rkd {

// What pair_matrix_cpu stores: s, max(s, eps), or sqrt(max(s, eps)).
enum class PairOut { Sq, SqClamped, Dist };

// Arithmetic of the Gram product. F64 always computes in float64 (what the
// law of cosines needs: it subtracts squared distances). Fast uses float32
// products with float64 accumulation every few dozen terms for float32 and
// half inputs (float64 inputs always get F64); close pairs are recomputed
// exactly either way.
enum class GramPrecision { F64, Fast };

// x: 2-D floating tensor (any layout). Returns a contiguous (N, N) float64 tensor.
at::Tensor pair_matrix_cpu(const at::Tensor& x, PairOut what, double eps, GramPrecision precision);

// W = gs + gs^T (zero diagonal) in the GEMM's element type T, and its row sums
// in float64.
template <typename T>
struct PairWeights {
  std::vector<T> W;
  std::vector<double> w;
};

template <typename T>
at::Tensor grad_from_weights_cpu(const at::Tensor& x, const PairWeights<T>& pw);

// Builds PairWeights from gs(i, j) (its value at i == j is ignored) in 64 x 64 tiles,
// so the transposed reads gs(j, i) stay in cache.
template <typename T, typename F>
PairWeights<T> build_weights(int64_t N, const F& gs) {
  PairWeights<T> pw;
  pw.W.resize(static_cast<size_t>(N * N));
  pw.w.assign(static_cast<size_t>(N), 0.0);
  constexpr int64_t B = 64;
  const int64_t nb = (N + B - 1) / B;
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    double v[B];
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t i1 = std::min(N, bi * B + B);
      for (int64_t bj = 0; bj < nb; ++bj) {
        const int64_t j0 = bj * B, nj = std::min(N, j0 + B) - j0;
        for (int64_t i = bi * B; i < i1; ++i) {
          // Branch-free loops over a row segment, so they vectorise; gs is
          // evaluated on the diagonal too and overwritten.
          for (int64_t l = 0; l < nj; ++l) v[l] = gs(i, j0 + l) + gs(j0 + l, i);
          if (i >= j0 && i < j0 + nj) v[i - j0] = 0.0;
          T* row = pw.W.data() + i * N + j0;
          for (int64_t l = 0; l < nj; ++l) row[l] = static_cast<T>(v[l]);
          pw.w[i] += sum_lanes(v, nj);  // tiles in column order: a fixed summation order
        }
      }
    }
  });
  return pw;
}

// With GramPrecision::F64 the product runs in float64 whatever x's dtype:
// the angle ops need it, their W holds large terms that cancel.
template <typename F>
at::Tensor grad_from_sq_cpu(const at::Tensor& x, GramPrecision precision, const F& gs) {
  const int64_t N = x.size(0);
  if (precision == GramPrecision::F64 || x.scalar_type() == at::kDouble)
    return grad_from_weights_cpu(x, build_weights<double>(N, gs));
  return grad_from_weights_cpu(x, build_weights<float>(N, gs));
}

}  // namespace rkd
