// The row-range ops of relations sharded by anchor over a global batch
// (rkd_ext/distributed.py): a rank computes the terms whose first index is
// one of its own rows, against all rows of the gathered features. Once for
// every backend, over the primitives of distance_op.h and angle_op.h.
//
//   pair_matrix_rows            rows [begin, end) of a pair matrix: O(n N D)
//   pair_matrix_rows_backward   dL/dx for those rows of a loss that is a symmetric
//                               function of the pair matrix (L depends on the pairs
//                               (i, j) and (j, i) alike, as every RKD loss with a
//                               scalar upstream gradient does), from dL/d(rows)
//   grad_rows                   dL/dx for rows [begin, end) from those rows of W
//   angle_loss_rows             sum of l(A_s - A_t) over the triplets with vertex
//                               in [begin, end): O(n N^2)
//   angle_grad_rows             for one side: the rows of V for those vertices and
//                               R summed over them; summed over all shards they give
//                               the weights W_ij = V_ij + V_ji + opposite_edge_grad(R_ij)
#pragma once

#include "angle_op.h"

namespace rkd {

// The precision each family's pair matrices use (distance_pairs, angle_pairs).
inline Precision pair_precision(PairKind kind) { return kind == PairKind::Sq ? Precision::F64 : Precision::Fast; }

// W_ij = 2 g_ij dv/ds_ij for rows of a symmetric loss: the factor 2 stands for
// the pair (j, i), which the shard holding row j sees.
struct RowsWeight {
  const double* g;
  const double* v;
  int64_t N, begin;
  PairKind kind;
  double eps, sqrt_eps;
  RKD_HD double operator()(int64_t i, int64_t j) const {
    const int64_t ij = (i - begin) * N + j;
    const double dv = kind == PairKind::Sq ? 1.0 : dvalue_dsq(v[ij], kind == PairKind::SqClamped, eps, sqrt_eps);
    return 2.0 * g[ij] * dv;
  }
  RKD_HD bool rowwise() const { return true; }
};

// Given rows of W (their entries at j == i are ignored).
struct GivenRows {
  const double* W;
  int64_t N, begin;
  RKD_HD double operator()(int64_t i, int64_t j) const { return W[(i - begin) * N + j]; }
  RKD_HD bool rowwise() const { return true; }
};

// out: (rows.size(), N) float64.
template <typename B>
void pair_matrix_rows(B& be, const Features& x, Rows rows, PairKind kind, double eps, double* out) {
  be.pair_rows(x, rows, kind, eps, pair_precision(kind), out);
}

template <typename B, typename F>
void grad_through_rows(B& be, const Features& x, Rows rows, const F& f, Precision precision, const Buffer& dx) {
  if (rows.size() == 0) return;
  auto W = be.weights(x, rows, precision);
  be.build_weights(f, W);
  be.grad_from_weights(x, W, dx);
}

// grad, values: (rows.size(), N); dx: (rows.size(), D) in x's dtype.
template <typename B>
void pair_matrix_rows_backward(B& be, const Operand& grad, const Features& x, const double* values, Rows rows,
                               PairKind kind, double eps, const Buffer& dx) {
  const double* g = be.to_f64(grad, rows.size() * x.N);
  grad_through_rows(be, x, rows, RowsWeight{g, values, x.N, rows.begin, kind, eps, std::sqrt(eps)},
                    pair_precision(kind), dx);
}

// W: (rows.size(), N) float64; dx: (rows.size(), D) in x's dtype. The weights
// of the angle loss hold large terms that cancel: float64 products.
template <typename B>
void grad_rows(B& be, const Features& x, const double* W, Rows rows, const Buffer& dx) {
  grad_through_rows(be, x, rows, GivenRows{W, x.N, rows.begin}, Precision::F64, dx);
}

// out: one float64 element.
template <typename B>
void angle_loss_rows(B& be, const double* sq_s, const double* sq_t, int64_t N, Rows vertices, const AngleArgs& a,
                     bool wide, const Buffer& out) {
  if (vertices.size() == 0) return be.fill_zero(out, 1);
  with_triplet_type<B>(wide, [&](auto acc) {
    using Acc = decltype(acc);
    const Edges<Acc> ea = be.template edges<Acc>(sq_s, N, a), eb = be.template edges<Acc>(sq_t, N, a);
    be.angle_loss_sum(ea, eb, N, vertices, a.beta, StoreLoss<double>{static_cast<double*>(out.data), 1.0});
  });
}

// coef: one float64 element, G_ijk = coef l'(A_a - A_b). V: (vertices.size(),
// N) float64; R: (N, N) float64.
template <typename B>
void angle_grad_rows(B& be, const double* sq_a, const double* sq_b, const double* coef, int64_t N, Rows vertices,
                     const AngleArgs& a, bool wide, const Buffer& V, const Buffer& R) {
  if (vertices.size() == 0) return be.fill_zero(R, N * N);
  with_triplet_type<B>(wide, [&](auto acc) {
    using Acc = decltype(acc);
    const Edges<Acc> ea = be.template edges<Acc>(sq_a, N, a), eb = be.template edges<Acc>(sq_b, N, a);
    const AngleGrad g = be.angle_passes(ea, eb, ScalarUpstream<Acc>{LossUpstream{coef, true}, 1.0}, N, vertices, a);
    if (g.vslices == 1)
      be.convert(g.V, vertices.size() * N, V);
    else
      be.map(VertexSliceSum{g, N}, N, V);  // sliced V: all N vertices
    be.map(SliceSum{g, N}, N, R);
  });
}

}  // namespace rkd
