// The distance-wise RKD ops, once for every backend: pairwise_distance,
// normalized_distance and rkd_distance_loss, forward and backward.
//
// Each op is a sequence of steps over the backend B, which supplies the
// primitives (see csrc/cpu/cpu_backend.h and csrc/cuda/gpu_backend.cuh):
//   scratch<T>(n)                       memory that lives as long as the backend
//   to_f64(Operand, n)                  a float64 view or copy of an operand
//   fill_zero(Buffer, n), convert(const double*, n, Buffer)
//   pair_matrix(Features, PairKind, eps, Precision, double* out)
//   pair_matrices(Features s, Features t, PairKind, eps, Precision, double* out_s, double* out_t)
//                                       both sides' pair matrices (a backend may run them together)
//   reduce_seq(N, ReduceStep or Group...)   fin(sum over i, j of f(i, j)), each sum in a fixed
//                                       order, for each step in order; a step's f may read what
//                                       the steps before its group stored (Group, below)
//   map(F, N, Buffer)                   out_ij = F(i, j)
//   pair_rows(Features, Rows, PairKind, eps, Precision, double* out)   rows of the pair matrix
//   weights(Features, Rows, Precision) -> W   rows of the weight matrix of the gradient product
//   build_weights(F, W), grad_from_weights(Features, W, Buffer)   dL/dx for W's rows
// Scalars the steps derive (inverse means, the mean-gradient term) live in
// backend memory and are read by the functors below, so nothing waits for
// the host on a GPU.
//
// The functors are the per-element terms: host and device code, evaluated by
// every backend. A weight functor's f(i, j) is W_ij = dL/ds_ij + dL/ds_ji,
// the weight matrix of the gradient product (its diagonal is ignored: W_ii
// = 0); f.rowwise() says f(i, j) reads nothing of row j, so a backend may
// evaluate W along rows rather than in tiles that keep the transposed reads
// in cache.
#pragma once

#include <cmath>
#include <type_traits>

#include "../rkd_math.h"
#include "params.h"

namespace rkd {

inline double pair_count(int64_t N) { return static_cast<double>(N) * static_cast<double>(N - 1); }

// ---- scalar stores (Fin of a reduction) ------------------------------------------------

// *out = 1 / (total / pairs + offset): the inverse of the off-diagonal mean
// (plus an offset) from the sum of all entries (the diagonal is 0).
struct StoreInvMean {
  double* out;
  double pairs, offset;
  RKD_HD void operator()(double total) const { *out = 1.0 / (total / pairs + offset); }
};

// *out = (*inv) total / pairs: the gradient through the mean,
// c = inv_mu sum_kl g_kl v_kl / (N (N - 1)).
struct StoreMeanTerm {
  double* out;
  const double* inv;
  double pairs;
  RKD_HD void operator()(double total) const { *out = *inv * total / pairs; }
};

// A reduced loss: total / div (N^2 or N^3 for 'mean', 1 for 'sum'), in Out.
template <typename Out>
struct StoreLoss {
  Out* out;
  double div;
  RKD_HD void operator()(double total) const { *out = static_cast<Out>(total / div); }
};

// One reduction of reduce_seq: fin(sum over i, j of f(i, j)).
template <typename F, typename Fin>
struct ReduceStep {
  F f;
  Fin fin;
};

template <typename F, typename Fin>
ReduceStep<F, Fin> step(const F& f, const Fin& fin) {
  return {f, fin};
}

// Steps of reduce_seq that a backend may sum together (in the same
// launches): no member's f reads what another member stores, though each may
// read what the steps before the group stored, and a member's fin may read
// what the members before it stored (the fins run in order). group(a, b, ...) makes one; a step
// alone is a group of one (as_group). Member k's summand is f(k, i, j) and
// its fin fin(k, total); for_each visits the members in order on the host.
template <typename... S>
struct Group;

template <>
struct Group<> {
  static constexpr int kSize = 0;
  RKD_HD double f(int, int64_t, int64_t) const { return 0.0; }
  RKD_HD void fin(int, double) const {}
};

template <typename S, typename... Rest>
struct Group<S, Rest...> {
  static constexpr int kSize = 1 + static_cast<int>(sizeof...(Rest));
  S first;
  Group<Rest...> rest;
  RKD_HD double f(int k, int64_t i, int64_t j) const { return k == 0 ? first.f(i, j) : rest.f(k - 1, i, j); }
  RKD_HD void fin(int k, double total) const {
    if (k == 0)
      first.fin(total);
    else
      rest.fin(k - 1, total);
  }
};

inline Group<> group() { return {}; }

template <typename S, typename... Rest>
Group<S, Rest...> group(const S& s, const Rest&... rest) {
  return {s, group(rest...)};
}

template <typename F, typename Fin>
Group<ReduceStep<F, Fin>> as_group(const ReduceStep<F, Fin>& s) {
  return group(s);
}

template <typename... S>
const Group<S...>& as_group(const Group<S...>& g) {
  return g;
}

template <typename Fn>
void for_each(const Group<>&, const Fn&) {}

template <typename S, typename... Rest, typename Fn>
void for_each(const Group<S, Rest...>& g, const Fn& fn) {
  fn(g.first);
  for_each(g.rest, fn);
}

// The upstream gradient of a loss, read in place when it is float32 or
// float64 (autograd hands a loss's backward the loss's dtype, one of the
// two), so that no conversion runs before the backward; other dtypes are
// the backend's float64 copy.
struct LossUpstream {
  const void* p;
  bool f64;
  RKD_HD double operator[](int64_t l) const {
    return f64 ? static_cast<const double*>(p)[l] : static_cast<double>(static_cast<const float*>(p)[l]);
  }
};

template <typename B>
LossUpstream loss_upstream(B& be, const Operand& grad, int64_t n) {
  if (grad.dtype == Dtype::Float32) return {grad.data, false};
  return {be.to_f64(grad, n), true};
}

// ---- N x N terms ---------------------------------------------------------------------

struct MatrixAt {
  const double* m;
  int64_t N;
  RKD_HD double operator()(int64_t i, int64_t j) const { return m[i * N + j]; }
};

struct ScaledBy {
  const double* d;
  int64_t N;
  const double* inv;
  RKD_HD double operator()(int64_t i, int64_t j) const { return d[i * N + j] * *inv; }
};

struct ProductAt {
  const double* a;
  const double* b;
  int64_t N;
  RKD_HD double operator()(int64_t i, int64_t j) const { return a[i * N + j] * b[i * N + j]; }
};

// The weight functor of a term G with G::gs(i, j) = dL/ds_ij.
template <typename G>
struct Symmetrised {
  G g;
  RKD_HD double operator()(int64_t i, int64_t j) const { return g.gs(i, j) + g.gs(j, i); }
  RKD_HD bool rowwise() const { return false; }
};

// pairwise_distance: dL/ds_ij = g_ij dd/ds.
struct PairwiseGrad {
  const double* g;
  const double* d;
  int64_t N;
  double sqrt_eps;
  RKD_HD double gs(int64_t i, int64_t j) const { return g[i * N + j] * ddist_dsq(d[i * N + j], sqrt_eps); }
};

// normalized_distance, psi = d / mu: stats = {1 / mu, c}.
struct NormalizedGrad {
  const double* g;
  const double* d;
  int64_t N;
  const double* stats;
  double sqrt_eps;
  RKD_HD double gs(int64_t i, int64_t j) const {
    return mean_grad(g[i * N + j], stats[1], stats[0], ddist_dsq(d[i * N + j], sqrt_eps));
  }
};

// How a loss reads its pair values from the matrices it holds: the values
// themselves, or (from_sq) the pair values of unclamped squared distances s,
// computed as they are read: sqrt(max(s, eps)), or max(s, eps) with
// `squared`, 0 on the diagonal.
struct PairValue {
  bool from_sq = false;
  double eps = 0.0;
  bool squared = false;
  RKD_HD double operator()(const double* m, int64_t N, int64_t i, int64_t j) const {
    const double v = m[i * N + j];
    if (!from_sq) return v;
    return i == j ? 0.0 : squared ? clamp_sq(v, eps) : dist_from_sq(v, eps);
  }
};

// The loss between sides a and b (their pair matrices, read through pv:
// distances, or clamped squares with `squared`); *inv_a, *inv_b: 1 / (mean +
// offset) of a and of b.
struct LossTerm {
  const double* a;
  const double* b;
  int64_t N;
  const double* inv_a;
  const double* inv_b;
  Huber<double> huber;
  PairValue pv{};
  RKD_HD double va(int64_t i, int64_t j) const { return pv(a, N, i, j); }
  RKD_HD double vb(int64_t i, int64_t j) const { return pv(b, N, i, j); }
  RKD_HD double r(int64_t i, int64_t j) const { return residual(va(i, j), *inv_a, vb(i, j), *inv_b); }
  RKD_HD double operator()(int64_t i, int64_t j) const { return smooth_l1(r(i, j), huber); }
  LossTerm swapped() const { return {b, a, N, inv_b, inv_a, huber, pv}; }
};

// Side a's pair values of a loss term (what its inverse mean sums).
struct SideValues {
  LossTerm t;
  RKD_HD double operator()(int64_t i, int64_t j) const { return t.va(i, j); }
};

// dL/dpsi_a = upstream * scale * l'(psi_a - psi_b); up holds N x N values for
// reduction 'none', else one. The other side's gradient is the same term
// with a and b swapped: the residual, and with it every term, changes sign.
struct LossGrad {
  LossTerm t;
  LossUpstream up;
  double scale;
  bool none;
  RKD_HD double up_at(int64_t i, int64_t j) const { return none ? up[i * t.N + j] : up[0]; }
  RKD_HD double operator()(int64_t i, int64_t j) const {
    return up_at(i, j) * scale * smooth_l1_grad(t.r(i, j), t.huber);
  }
};

// The mean term's summand g_ij a_ij.
struct LossGradTimesValue {
  LossGrad g;
  RKD_HD double operator()(int64_t i, int64_t j) const { return g(i, j) * g.t.va(i, j); }
};

// The same per unit upstream gradient and scale, l'(r_ij) a_ij: what the
// forward sums for a scalar upstream gradient, which scales it later.
struct UnitGradTimesValue {
  LossTerm t;
  RKD_HD double operator()(int64_t i, int64_t j) const { return smooth_l1_grad(t.r(i, j), t.huber) * t.va(i, j); }
};

// dL/ds_ij of side a: mean_grad(g, c, 1 / mu_a, dv/ds), with c = *c, or with
// `unit`, c = upstream * scale * *c (*c from UnitGradTimesValue).
struct LossWeight {
  LossGrad g;
  const double* c;
  bool unit;
  double eps, sqrt_eps;
  bool squared;
  RKD_HD double mean_term() const { return unit ? g.up_at(0, 0) * g.scale * *c : *c; }
  RKD_HD double gs(int64_t i, int64_t j) const {
    const double dv = dvalue_dsq(g.t.va(i, j), squared, eps, sqrt_eps);
    return mean_grad(g(i, j), mean_term(), *g.t.inv_a, dv);
  }
  // a and b are symmetric, and so is gs when the upstream gradient is a
  // scalar: then gs(j, i) == gs(i, j) bit for bit, and doubling is exact.
  RKD_HD double operator()(int64_t i, int64_t j) const { return g.none ? gs(i, j) + gs(j, i) : 2.0 * gs(i, j); }
  RKD_HD bool rowwise() const { return !g.none; }
};

// What a loss's forward keeps for its backward beside the pair matrices
// (4 float64): the inverse means of both sides, then each side's mean term
// per unit upstream gradient and scale where the forward sums them (below;
// zeros where it does not).
constexpr int64_t kLossStats = 4;

// Whether the forward sums the mean terms with the loss, so that the
// backward runs no reduction: for a scalar loss (the upstream gradient of
// 'none' is a matrix, which the mean terms weight) on a backend that says
// so with `static constexpr bool kForwardMeanTerms = true` (the GPU, where
// the backward's reductions would cost launches; on the CPU they cost only
// their arithmetic, which the forward then need not pay when no backward
// follows).
template <typename B>
bool forward_mean_terms(Reduction red) {
  return B::kForwardMeanTerms && red != Reduction::None;
}

// The steps of a distance term's forward: both inverse means in one group,
// then the loss (fin `store`), with both unit mean terms in its group where
// forward_mean_terms (else their stats are zeroed).
inline auto inverse_means(const LossTerm& t, double offset, double* stats) {
  return group(step(SideValues{t}, StoreInvMean{stats, pair_count(t.N), offset}),
               step(SideValues{t.swapped()}, StoreInvMean{stats + 1, pair_count(t.N), offset}));
}

template <typename B, typename Store>
void distance_term_sums(B& be, const LossTerm& t, double offset, const Store& store, Reduction red, double* stats) {
  const auto inv = inverse_means(t, offset, stats);
  const double pairs = pair_count(t.N);
  if (forward_mean_terms<B>(red))
    return be.reduce_seq(t.N, inv,
                         group(step(t, store), step(UnitGradTimesValue{t}, StoreMeanTerm{stats + 2, stats, pairs}),
                               step(UnitGradTimesValue{t.swapped()}, StoreMeanTerm{stats + 3, stats + 1, pairs})));
  be.fill_zero(Buffer{stats + 2, Dtype::Float64}, kLossStats - 2);
  be.reduce_seq(t.N, inv, step(t, store));
}

// The backward's mean terms of the sides wanted (g_s's, g_t's; the inverse
// means read from the forward's stats): the forward's per unit upstream
// gradient where it summed them, else summed here in one group.
struct MeanTerms {
  const double* c;  // c[0] the student's, c[1] the teacher's
  bool unit;
};

template <typename B>
MeanTerms mean_terms(B& be, const LossGrad& g_s, const LossGrad& g_t, const double* stats, Reduction red,
                     bool want_s, bool want_t) {
  if (forward_mean_terms<B>(red)) return {stats + 2, true};
  const int64_t N = g_s.t.N;
  double* c = be.template scratch<double>(2);
  const auto c_s = step(LossGradTimesValue{g_s}, StoreMeanTerm{c, g_s.t.inv_a, pair_count(N)});
  const auto c_t = step(LossGradTimesValue{g_t}, StoreMeanTerm{c + 1, g_t.t.inv_a, pair_count(N)});
  if (want_s && want_t)
    be.reduce_seq(N, group(c_s, c_t));
  else if (want_s)
    be.reduce_seq(N, c_s);
  else
    be.reduce_seq(N, c_t);
  return {c, false};
}

// ---- the ops ---------------------------------------------------------------------------

// The pair matrices of the distance family tolerate the fast product: unlike
// angles they never subtract squared distances from each other.
template <typename B>
void distance_pairs(B& be, const Features& x, PairKind kind, double eps, double* out) {
  be.pair_matrix(x, kind, eps, Precision::Fast, out);
}

// The step that stores 1 / (mean of d + offset) at out.
inline ReduceStep<MatrixAt, StoreInvMean> inverse_mean(const double* d, int64_t N, double offset, double* out) {
  return step(MatrixAt{d, N}, StoreInvMean{out, pair_count(N), offset});
}

// dL/dx through the weights of f, in products of the given precision.
template <typename B, typename F>
void grad_through(B& be, const Features& x, const F& f, Precision precision, const Buffer& dx) {
  auto W = be.weights(x, all_rows(x.N), precision);
  be.build_weights(f, W);
  be.grad_from_weights(x, W, dx);
}

// d64: (N, N) float64 distances (kept for the backward); dist: the same in x's dtype.
template <typename B>
void pairwise_distance(B& be, const Features& x, double eps, double* d64, const Buffer& dist) {
  distance_pairs(be, x, PairKind::Dist, eps, d64);
  be.convert(d64, x.N * x.N, dist);
}

template <typename B>
void pairwise_distance_backward(B& be, const Operand& grad, const Features& x, const double* d64, double eps,
                                const Buffer& dx) {
  const double* g = be.to_f64(grad, x.N * x.N);
  grad_through(be, x, Symmetrised<PairwiseGrad>{{g, d64, x.N, std::sqrt(eps)}}, Precision::Fast, dx);
}

template <typename B>
void normalized_distance(B& be, const Features& x, double eps, double* d64, const Buffer& psi) {
  const int64_t N = x.N;
  distance_pairs(be, x, PairKind::Dist, eps, d64);
  if (N < 2) return be.fill_zero(psi, N * N);  // no pairs, no mean
  double* inv = be.template scratch<double>(1);
  be.reduce_seq(N, inverse_mean(d64, N, 0.0, inv));
  be.map(ScaledBy{d64, N, inv}, N, psi);
}

template <typename B>
void normalized_distance_backward(B& be, const Operand& grad, const Features& x, const double* d64, double eps,
                                  const Buffer& dx) {
  const int64_t N = x.N;
  if (N < 2) return be.fill_zero(dx, N * x.D);
  const double* g = be.to_f64(grad, N * N);
  double* stats = be.template scratch<double>(2);
  be.reduce_seq(N, group(inverse_mean(d64, N, 0.0, stats),
                         step(ProductAt{g, d64, N}, StoreMeanTerm{stats + 1, stats, pair_count(N)})));
  grad_through(be, x, Symmetrised<NormalizedGrad>{{g, d64, N, stats, std::sqrt(eps)}}, Precision::Fast, dx);
}

inline double mean_divisor(Reduction red, double elements) { return red == Reduction::Mean ? elements : 1.0; }

// Calls f(out) with the reduced loss's element pointer: float64 or float32.
template <typename F>
void with_loss_out(const Buffer& loss, const F& f) {
  if (loss.dtype == Dtype::Float64)
    f(static_cast<double*>(loss.data));
  else
    f(static_cast<float*>(loss.data));
}

// ds, dt: the (N, N) float64 pair values of each side and stats the
// kLossStats values above (all kept for the backward); loss: (N, N) for
// reduction 'none', else one element.
template <typename B>
void rkd_distance_loss(B& be, const Features& s, const Features& t, const DistanceArgs& a, double* ds, double* dt,
                       double* stats, const Buffer& loss) {
  const int64_t N = s.N;
  const PairKind kind = a.squared ? PairKind::SqClamped : PairKind::Dist;
  be.pair_matrices(s, t, kind, a.eps, Precision::Fast, ds, dt);  // as distance_pairs, both sides
  const bool none = a.reduction == Reduction::None;
  if (N < 2) {
    be.fill_zero(Buffer{stats, Dtype::Float64}, kLossStats);
    return be.fill_zero(loss, none ? N * N : 1);
  }
  // The diagonal needs no special case: 0 on both sides gives l(0) = 0.
  const LossTerm term{ds, dt, N, stats, stats + 1, Huber<double>(a.beta)};
  if (none) {
    be.fill_zero(Buffer{stats + 2, Dtype::Float64}, kLossStats - 2);
    be.reduce_seq(N, inverse_means(term, a.mean_offset, stats));
    return be.map(term, N, loss);
  }
  const double div = mean_divisor(a.reduction, static_cast<double>(N) * static_cast<double>(N));
  with_loss_out(loss, [&](auto* out) {
    using Out = std::remove_pointer_t<decltype(out)>;
    distance_term_sums(be, term, a.mean_offset, StoreLoss<Out>{out, div}, a.reduction, stats);
  });
}

// The gradients of a loss without relations: zeros where wanted.
template <typename B>
void zero_grads(B& be, const Features& s, const Features& t, const Buffer& gs, const Buffer& gt) {
  if (gs.data) be.fill_zero(gs, s.N * s.D);
  if (gt.data) be.fill_zero(gt, t.N * t.D);
}

// gs, gt: the gradients wanted (a null Buffer for one that is not); ds, dt,
// stats: what the forward kept.
template <typename B>
void rkd_distance_loss_backward(B& be, const Operand& grad, const Features& s, const Features& t, const double* ds,
                                const double* dt, const double* stats, const DistanceArgs& a, const Buffer& gs,
                                const Buffer& gt) {
  const int64_t N = s.N;
  if (!gs.data && !gt.data) return;
  if (N < 2) return zero_grads(be, s, t, gs, gt);
  const bool none = a.reduction == Reduction::None;
  const LossUpstream up = loss_upstream(be, grad, none ? N * N : 1);
  const double scale = 1.0 / mean_divisor(a.reduction, static_cast<double>(N) * static_cast<double>(N));
  const Huber<double> huber(a.beta);
  // The teacher's gradient is the student's with the roles swapped.
  const LossGrad g_s{LossTerm{ds, dt, N, stats, stats + 1, huber}, up, scale, none};
  const LossGrad g_t{LossTerm{dt, ds, N, stats + 1, stats, huber}, up, scale, none};
  const MeanTerms c = mean_terms(be, g_s, g_t, stats, a.reduction, gs.data != nullptr, gt.data != nullptr);
  const double sqrt_eps = std::sqrt(a.eps);
  if (gs.data) grad_through(be, s, LossWeight{g_s, c.c, c.unit, a.eps, sqrt_eps, a.squared}, Precision::Fast, gs);
  if (gt.data) grad_through(be, t, LossWeight{g_t, c.c + 1, c.unit, a.eps, sqrt_eps, a.squared}, Precision::Fast, gt);
}

}  // namespace rkd
