// The angle-wise RKD ops, once for every backend: angle_tensor and
// rkd_angle_loss, forward and backward.
//
// Everything is built from the float64 squared-distance matrices s (law of
// cosines, rkd_math.h): O(N^2 D) for s, then O(N^3) elementwise triplet
// passes, O(N^2) memory. Besides the primitives of distance_op.h the backend
// B supplies:
//   Triplet<T>                the type its triplet arithmetic runs in for results of type T
//   to<Acc>(Operand, n)       an operand in Acc
//   edges<Acc>(s, N, args)    u = inv_edge(s) (1 unnormalised)
//   edge_pair<Acc>(s_a, s_b, N, args)   {edges of s_a, edges of s_b} (a backend may compute them together)
//   pairs_and_edges<Acc>(Features s, Features t, args, sq_s, sq_t)   both inputs' s as angle_pairs
//                             computes them, into sq_s and sq_t, and their edge_pair (a backend may
//                             compute the edges with s)
//   angle_values(a, b, N, beta, Buffer)      cosines of a (b null), or l(A_a - A_b), (N, N, N)
//   angle_loss_sum(a, b, N, Rows, beta, Fin)    Fin(sum of l(A_a - A_b) over the triplets
//                                               whose vertex is in Rows)
//   angle_passes(a, b, Up, N, Rows, args) -> AngleGrad   the backward's triplet passes for
//                                               side a over the vertices in Rows
//
// Backward, with G_ijk = dL/dA_ijk and Gs_ijk = G_ijk + G_ikj (rkd_math.h):
// the vertex terms V_ij = vertex_edge_grad(sum_k Gs_ijk w_ik, sum_k Gs_ijk A_ijk, w_ij)
// and the symmetric opposite-edge sums R_jk = sum_i Gs_ijk w_ij w_ik, which
// a backend may hand back in slices (partial sums over ranges of i, summed in
// order here), give the weights W_ij = V_ij + V_ji + opposite_edge_grad(R_ij).
#pragma once

#include "distance_op.h"

namespace rkd {

// One side of the loss: s and u, both (N, N) and symmetric.
template <typename Acc>
struct Edges {
  const double* s;
  const Acc* u;
};

// s < eps2 is where the clamp of F.normalize holds; < 0 never clamps (the
// unnormalised variant, where u == w == 1).
inline double clamp_eps2(const AngleArgs& a) { return a.normalize ? a.eps * a.eps : -1.0; }

// 1 where the cosine's normalisation depends on s (the vertex edges' terms
// kappa A w^2 of rkd_math.h), 0 unnormalised.
inline double kappa_of(const AngleArgs& a) { return a.normalize ? 1.0 : 0.0; }

// ---- dL/dA: where the gradient of a cosine comes from ----------------------------------
//
// gsym(i, j, k, d) = Gs_ijk for a triplet and d = l'(A_a - A_b). kLoss:
// whether d is needed (the angle tensor's backward takes dL/dA as it comes).

// A reduced loss: G = (upstream / div) d, symmetric in (j, k).
template <typename Acc>
struct ScalarUpstream {
  static constexpr bool kLoss = true;
  LossUpstream up;  // the upstream gradient: one element in backend memory
  double div;       // N^3 for 'mean', 1 for 'sum'
  // kUniform: G is one factor times d, so a backend may sum d-weighted terms
  // and apply the factor to the sums (factor()), a multiply per triplet less.
  struct Eval {
    static constexpr bool kUniform = true;
    Acc c2;  // 2 c: (2 c) d is 2 (c d) bit for bit (a power-of-two scaling)
    RKD_HD Acc gsym(int64_t, int64_t, int64_t, Acc d) const { return c2 * d; }
    RKD_HD Acc factor() const { return c2; }
  };
  RKD_HD Eval eval() const { return {Acc(2) * static_cast<Acc>(up[0] / div)}; }
};

// An (N, N, N) upstream gradient. Of a loss with reduction 'none' (kLoss):
// G_ijk = up_ijk d. Of the angle tensor: G_ijk = up_ijk, except on the
// degenerate entries (j == i or k == i), whose cosines are the constant 0.
template <typename Acc, bool kLossTerm>
struct CubeUpstream {
  static constexpr bool kLoss = kLossTerm;
  const Acc* up;
  int64_t N;
  static constexpr bool kUniform = false;
  RKD_HD CubeUpstream eval() const { return *this; }
  RKD_HD Acc gsym(int64_t i, int64_t j, int64_t k, Acc d) const {
    const Acc g = up[(i * N + j) * N + k] + up[(i * N + k) * N + j];
    if (kLoss) return g * d;
    return (j == i || k == i) ? Acc(0) : g;
  }
};

template <typename Acc>
using TensorUpstream = CubeUpstream<Acc, true>;
template <typename Acc>
using RawUpstream = CubeUpstream<Acc, false>;

// What angle_passes returns: the rows of V for its vertices, (n, N), as
// `vslices` partial sums (a backend may split the vertex pass's loop; only
// when the vertices are all N rows, so that V's slices are (N, N)), and R
// over those vertices as `slices` (N, N) partial sums.
struct AngleGrad {
  const double* V;
  const double* R;
  int64_t slices;
  int64_t vslices = 1;
};

// The sum of `count` (N, N) slices at m, in order.
RKD_HD double slice_sum(const double* m, int64_t count, int64_t N, int64_t i, int64_t j) {
  double r = m[i * N + j];
  for (int64_t z = 1; z < count; ++z) r += m[z * N * N + i * N + j];
  return r;
}

// R summed over its slices, in order.
struct SliceSum {
  AngleGrad g;
  int64_t N;
  RKD_HD double operator()(int64_t i, int64_t j) const { return slice_sum(g.R, g.slices, N, i, j); }
};

// V summed over its slices, in order (all N vertices).
struct VertexSliceSum {
  AngleGrad g;
  int64_t N;
  RKD_HD double operator()(int64_t i, int64_t j) const { return slice_sum(g.V, g.vslices, N, i, j); }
};

// The weight functor of distance_op.h for the angle ops (V of all vertices).
struct AngleWeight {
  AngleGrad g;
  int64_t N;
  RKD_HD double operator()(int64_t i, int64_t j) const {
    const VertexSliceSum V{g, N};
    return V(i, j) + V(j, i) + opposite_edge_grad(SliceSum{g, N}(i, j));
  }
  RKD_HD bool rowwise() const { return false; }
};

// ---- the ops ---------------------------------------------------------------------------

// s of x, unclamped, always from the float64 product: the law of cosines
// subtracts squared distances.
template <typename B>
void angle_pairs(B& be, const Features& x, double* sq) {
  be.pair_matrix(x, PairKind::Sq, 0.0, Precision::F64, sq);
}

// Calls f(Acc()) with the backend's triplet type for results in float64
// (wide) or float32.
template <typename B, typename F>
void with_triplet_type(bool wide, const F& f) {
  if (wide)
    f(typename B::template Triplet<double>());
  else
    f(typename B::template Triplet<float>());
}

template <typename B>
void angle_grad_through(B& be, const Features& x, const AngleGrad& g, const Buffer& dx) {
  grad_through(be, x, AngleWeight{g, x.N}, Precision::F64, dx);  // W holds large terms that cancel
}

// sq: the (N, N) float64 squared distances (kept for the backward); out: (N, N, N) in x's dtype.
template <typename B>
void angle_tensor(B& be, const Features& x, const AngleArgs& a, double* sq, const Buffer& out) {
  angle_pairs(be, x, sq);
  with_triplet_type<B>(x.dtype == Dtype::Float64, [&](auto acc) {
    using Acc = decltype(acc);
    const Edges<Acc> e = be.template edges<Acc>(sq, x.N, a);
    be.angle_values(e, static_cast<const Edges<Acc>*>(nullptr), x.N, 0.0, out);
  });
}

template <typename B>
void angle_tensor_backward(B& be, const Operand& grad, const Features& x, const double* sq, const AngleArgs& a,
                           const Buffer& dx) {
  const int64_t N = x.N;
  with_triplet_type<B>(x.dtype == Dtype::Float64, [&](auto acc) {
    using Acc = decltype(acc);
    const Edges<Acc> e = be.template edges<Acc>(sq, N, a);
    const RawUpstream<Acc> up{be.template to<Acc>(grad, N * N * N), N};
    angle_grad_through(be, x, be.angle_passes(e, e, up, N, all_rows(N), a), dx);
  });
}

// loss: (N, N, N) for reduction 'none', else one element, in float64 if
// either input is float64, float32 otherwise.
template <typename B>
void rkd_angle_loss(B& be, const Features& s, const Features& t, const AngleArgs& a, double* sq_s, double* sq_t,
                    const Buffer& loss) {
  const int64_t N = s.N;
  const bool none = a.reduction == Reduction::None;
  if (N < 3) {  // no triplets with three distinct points
    be.pair_matrices(s, t, PairKind::Sq, 0.0, Precision::F64, sq_s, sq_t);  // as angle_pairs, both sides
    return be.fill_zero(loss, none ? N * N * N : 1);
  }
  const bool wide = loss.dtype == Dtype::Float64;
  with_triplet_type<B>(wide, [&](auto acc) {
    using Acc = decltype(acc);
    const auto e = be.template pairs_and_edges<Acc>(s, t, a, sq_s, sq_t);
    const Edges<Acc>&ea = e.first, &eb = e.second;
    if (none) return be.angle_values(ea, &eb, N, a.beta, loss);
    const double n = static_cast<double>(N), div = mean_divisor(a.reduction, n * n * n);
    with_loss_out(loss, [&](auto* out) {
      using Out = std::remove_pointer_t<decltype(out)>;
      be.angle_loss_sum(ea, eb, N, all_rows(N), a.beta, StoreLoss<Out>{out, div});
    });
  });
}

template <typename B>
void rkd_angle_loss_backward(B& be, const Operand& grad, const Features& s, const Features& t, const double* sq_s,
                             const double* sq_t, const AngleArgs& a, Dtype loss_dtype, const Buffer& gs,
                             const Buffer& gt) {
  const int64_t N = s.N;
  if (!gs.data && !gt.data) return;
  if (N < 3) return zero_grads(be, s, t, gs, gt);
  with_triplet_type<B>(loss_dtype == Dtype::Float64, [&](auto acc) {
    using Acc = decltype(acc);
    const auto e = be.template edge_pair<Acc>(sq_s, sq_t, N, a);
    const Edges<Acc>&ea = e.first, &eb = e.second;
    // The teacher's gradient is the student's with the roles swapped: the
    // residual changes sign, and so does dL/dA.
    auto sides = [&](const auto& up) {
      if (gs.data) angle_grad_through(be, s, be.angle_passes(ea, eb, up, N, all_rows(N), a), gs);
      if (gt.data) angle_grad_through(be, t, be.angle_passes(eb, ea, up, N, all_rows(N), a), gt);
    };
    if (a.reduction == Reduction::None) {
      sides(TensorUpstream<Acc>{be.template to<Acc>(grad, N * N * N), N});
    } else {
      const double n = static_cast<double>(N);
      sides(ScalarUpstream<Acc>{loss_upstream(be, grad, 1), mean_divisor(a.reduction, n * n * n)});
    }
  });
}

}  // namespace rkd
