// Per-element RKD math shared by the CPU and CUDA kernels.
//
// Every formula the kernels evaluate lives here once, as an inline function
// that compiles for the host and (under nvcc) for the device, so the two
// backends cannot drift apart. Nothing in this header depends on torch.
//
// Conventions: `s` is a squared Euclidean distance, `eps` the clamp applied
// to it (the reference's `clamp(min=eps)` before the square root), `beta` the
// smooth-L1 threshold. NaN inputs propagate: no comparison here is written so
// that a NaN silently turns into a finite value.
#pragma once

#include <cmath>

#include "core/params.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RKD_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always_inline: the CPU kernels call these from ISA-specific clones.
#define RKD_HD inline __attribute__((always_inline))
#else
#define RKD_HD inline
#endif

namespace rkd {

// max(s, eps) that keeps NaN (std::max/fmax would not, or not portably).
template <typename T>
RKD_HD T clamp_sq(T s, T eps) {
  return s < eps ? eps : s;
}

// Off-diagonal distance of the reference: sqrt(max(s, eps)).
template <typename T>
RKD_HD T dist_from_sq(T s, T eps) {
  return sqrt(clamp_sq(s, eps));
}

// The stored pair value of kind `what` from the squared distance s of a pair
// i != j: s itself, max(s, eps), or sqrt(max(s, eps)).
RKD_HD double pair_value(PairKind what, double s, double eps) {
  if (what == PairKind::Dist) return dist_from_sq(s, eps);
  if (what == PairKind::SqClamped) return clamp_sq(s, eps);
  return s;
}

// d dist / d s, written in terms of the clamped distance d = dist_from_sq(s)
// with sqrt_eps = sqrt(eps): 1 / (2 d) where the clamp is inactive, 0 where
// it holds (d == sqrt(eps)) and on the diagonal (d == 0). Exactly coincident
// points thus get a zero subgradient rather than the reference's
// 1/eps-scaled one. NaN passes through.
template <typename T>
RKD_HD T ddist_dsq(T d, T sqrt_eps) {
  return d <= sqrt_eps ? T(0) : T(0.5) / d;
}

// d max(s, eps) / d s through the clamped value v = max(s, eps): 0 where the
// clamp holds (and on the diagonal, v == 0), 1 elsewhere.
template <typename T>
RKD_HD T dclamped_dsq(T v, T eps) {
  return v <= eps ? T(0) : T(1);
}

// Smooth-L1 (Huber) with threshold beta, as torch.nn.functional.smooth_l1_loss:
// 0.5 r^2 / beta when |r| < beta, |r| - 0.5 beta otherwise; beta == 0 is L1.
// 1 / beta is kept alongside (infinite for beta == 0) so the hot loops
// multiply instead of divide. Both functions are single selects over values
// computed unconditionally, which vectorises; an infinite or NaN value in
// the branch not taken is discarded by the select.
// The half is applied to the constant, r^2 (0.5 / beta): the same number as
// 0.5 r^2 / beta (a product by a power of two is exact, barring a subnormal
// r^2), and in a loop one multiply per element less, 0.5 / beta being
// loop-invariant.
template <typename T>
struct Huber {
  T beta, inv_beta;
  RKD_HD explicit Huber(T b) : beta(b), inv_beta(T(1) / b) {}
};

template <typename T>
RKD_HD T smooth_l1(T r, const Huber<T>& h) {
  const T a = fabs(r);
  const T quadratic = r * r * (T(0.5) * h.inv_beta);
  const T linear = a - T(0.5) * h.beta;
  return a < h.beta ? quadratic : linear;
}

// d smooth_l1 / d r = clamp(r / beta, -1, 1): r / beta inside the quadratic
// zone, sign(r) outside; 0 at r == 0 (also for beta == 0, where 0 / beta is
// NaN); NaN stays NaN.
template <typename T>
RKD_HD T smooth_l1_grad(T r, const Huber<T>& h) {
  T x = r * h.inv_beta;
  x = r == T(0) ? r : x;
  x = x < T(-1) ? T(-1) : x;
  return x > T(1) ? T(1) : x;
}

// ---- distances ------------------------------------------------------------------

// The residual of the distance loss between normalised distances:
// psi_a - psi_b = a / mu_a - b / mu_b, with the inverse means inv_a, inv_b.
template <typename T>
RKD_HD T residual(T a, T inv_a, T b, T inv_b) {
  return a * inv_a - b * inv_b;
}

// d value / d s for a stored pair value v: a clamped distance (ddist_dsq) or,
// with `squared`, a clamped square (dclamped_dsq).
template <typename T>
RKD_HD T dvalue_dsq(T v, bool squared, T eps, T sqrt_eps) {
  return squared ? dclamped_dsq(v, eps) : ddist_dsq(v, sqrt_eps);
}

// dL/ds_ij for psi = v / mu with dL/dpsi = g: (g - c) / mu dv/ds, where
// c = sum_kl g_kl psi_kl / (N (N - 1)) is the gradient through the mean.
template <typename T>
RKD_HD T mean_grad(T g, T c, T inv_mu, T dv) {
  return (g - c) * inv_mu * dv;
}

// ---- the O(N^2 D) products ----------------------------------------------------------

// A Gram-form pair s = n_i + n_j - 2 <xc_i, xc_j> is kept when s >= kNear
// (n_i + n_j); closer pairs are recomputed from direct differences. The
// float64 form's error is about sqrt(D) 1e-16 (n_i + n_j), and a float32
// product with float64 accumulation (Precision::Fast) about 1e-7 (n_i + n_j)
// at worst: every kept pair is accurate to ~1e-14 and ~1e-5 relative.
constexpr double kNear = 1e-2;

RKD_HD double gram_sq(double n_i, double n_j, double g_ij) { return n_i + n_j - 2.0 * g_ij; }

// Not `v < kNear (...)`: a NaN is recomputed (and stays NaN) rather than kept.
RKD_HD bool gram_near(double v, double n_i, double n_j) { return !(v >= kNear * (n_i + n_j)); }

// dL/dx_ik = 2 (w_i xc_ik - (W xc)_ik) with W = dL/ds + (dL/ds)^T, w its
// row sums, xc the centred features.
RKD_HD double grad_epilogue(double w_i, double xc_ik, double wx_ik) { return 2.0 * (w_i * xc_ik - wx_ik); }

// ---- angles ------------------------------------------------------------------
//
// A_ijk = <e_ij, e_ik>, e_ij = (x_j - x_i) / max(||x_j - x_i||, eps), from the
// squared distances alone (law of cosines, `cosine` below):
//   A_ijk = 0.5 (s_ij + s_ik - s_jk) u_ij u_ik,   u = 1 / max(sqrt(s), eps).
// Degenerate entries need no special case: with j == i or k == i the
// numerator is exactly 0 (s is symmetric with a zero diagonal). The
// unnormalised variant (dot products of the raw difference vectors) is the
// same formula with u == 1.
//
// Derivatives, with w the gradient-active reciprocal (u where the clamp is
// inactive, 0 where it holds, so coincident points get a zero subgradient):
//   dA/ds_ij = 0.5 w_ij w_ik - 0.5 kappa A w_ij^2   (edges at the vertex;
//   dA/ds_ik = 0.5 w_ij w_ik - 0.5 kappa A w_ik^2    kappa = 0 unnormalised)
//   dA/ds_jk = -0.5 w_ij w_ik                        (the opposite edge)

// 1 / max(sqrt(s), eps): the reciprocal edge length F.normalize divides by.
template <typename T>
RKD_HD T inv_edge(T s, T eps) {
  const T r = sqrt(s);
  return T(1) / (r < eps ? eps : r);
}

// w from u: 0 where the clamp holds (s < eps^2). eps2 < 0 never clamps (the
// unnormalised variant, where u == w == 1).
template <typename T>
RKD_HD T active_inv_edge(T s, T u, T eps2) {
  return s < eps2 ? T(0) : u;
}

// The cosine at vertex i from the three squared distances. The numerator
// s_ij + s_ik - s_jk cancels for near-duplicate points, so it is formed in
// the type of s (float64); the rest runs in Acc, which may be narrower.
template <typename Acc, typename S>
RKD_HD Acc cosine(S s_ij, S s_ik, S s_jk, Acc u_ij, Acc u_ik) {
  return Acc(0.5) * static_cast<Acc>(s_ij + s_ik - s_jk) * u_ij * u_ik;
}

// cosine() with the half folded into one edge, hu_ij = 0.5 u_ij: the same
// bits (scaling by a power of two is exact, barring a subnormal u_ij), one
// multiply less where hu_ij is formed once for many triplets.
template <typename Acc, typename S>
RKD_HD Acc cosine_half(S s_ij, S s_ik, S s_jk, Acc hu_ij, Acc u_ik) {
  return static_cast<Acc>(s_ij + s_ik - s_jk) * hu_ij * u_ik;
}

// dL/ds_ij through the edge (i, j) at vertex i, summed over the triplets
// (i, j, k) and (i, k, j): p = sum_k Gsym_ijk w_ik, q = sum_k Gsym_ijk A_ijk,
// with Gsym_ijk = dL/dA_ijk + dL/dA_ikj.
template <typename T>
RKD_HD T vertex_edge_grad(T p, T q, T w_ij, T kappa) {
  return T(0.5) * w_ij * p - T(0.5) * kappa * w_ij * w_ij * q;
}

// dL/ds_jk through the opposite edge of the triplets (i, j, k), summed over
// the vertex i: -0.5 r with r = sum_i dL/dA_ijk w_ij w_ik.
template <typename T>
RKD_HD T opposite_edge_grad(T r) {
  return T(-0.5) * r;
}

}  // namespace rkd
