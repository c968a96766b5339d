// The full RKD objective as one op, once for every backend:
//   rkd_loss = distance_weight * the distance loss + angle_weight * the angle loss,
// forward and backward, sequenced from the primitives of distance_op.h and
// angle_op.h (no primitive of its own).
//
// One pair matrix per input serves both terms: the unclamped squared
// distances s in float64 products (Precision::F64, which the law of cosines
// needs; the distance term reads its pair values off s elementwise, so it
// gets the same accurate s). The backward forms one weight matrix per input,
// the sum of both terms' weight functors, each scaled by its term's weight
// through its upstream gradient, and runs one gradient product with it.
//
// A term weighted 0, or without relations in a batch of N (N < 2 pairs, N < 3
// triplets), is skipped: none of its passes run. With the angle term skipped
// the pair matrix and the product use Precision::Fast, as the distance loss
// alone does, and without either term nothing runs but the zero fills.
//
// Reductions 'mean' and 'sum' only: the terms' elementwise losses have
// different shapes ((N, N) and (N, N, N)), so 'none' has no sum.
#pragma once

#include <cmath>
#include <tuple>
#include <type_traits>

#include "angle_op.h"

namespace rkd {

struct RkdLossArgs {
  double distance_weight, angle_weight;
  DistanceArgs distance;  // reduction: the loss's, 'mean' or 'sum'
  AngleArgs angle;        // beta and reduction: the same as the distance term's
};

// The terms that run for a batch of N.
struct Terms {
  bool distance, angle;
  bool any() const { return distance || angle; }
  Precision precision() const { return angle ? Precision::F64 : Precision::Fast; }
};

inline Terms terms_of(const RkdLossArgs& a, int64_t N) {
  return {a.distance_weight != 0.0 && N >= 2, a.angle_weight != 0.0 && N >= 3};
}

// A term's reduced loss, weighted, added to the term stored before it (base,
// in backend memory; null for none): *out = *base + weight * total / div.
template <typename Out>
struct WeightedLoss {
  Out* out;
  double div, weight;
  const double* base;
  RKD_HD void operator()(double total) const {
    *out = static_cast<Out>((base ? *base : 0.0) + weight * (total / div));
  }
};

// The weight functor of both terms: the sum of theirs.
template <typename D, typename A>
struct SummedWeights {
  D d;
  A a;
  RKD_HD double operator()(int64_t i, int64_t j) const { return d(i, j) + a(i, j); }
  RKD_HD bool rowwise() const { return d.rowwise() && a.rowwise(); }
};

// The distance term between the squared distances sq_s and sq_t, its pair
// values read off them (no matrices of its own), its inverse means at
// stats[0] and stats[1] (distance_op.h's kLossStats).
inline LossTerm distance_term(const double* sq_s, const double* sq_t, int64_t N, const DistanceArgs& a,
                              const double* stats) {
  return {sq_s, sq_t, N, stats, stats + 1, Huber<double>(a.beta), PairValue{true, a.eps, a.squared}};
}

inline double pairs_divisor(const RkdLossArgs& a, int64_t N) {
  return mean_divisor(a.distance.reduction, static_cast<double>(N) * static_cast<double>(N));
}

inline double triplets_divisor(const RkdLossArgs& a, int64_t N) {
  const double n = static_cast<double>(N);
  return mean_divisor(a.distance.reduction, n * n * n);
}

// sq_s, sq_t: the (N, N) float64 squared distances of each side (zeros when
// no term runs) and stats the distance term's kLossStats values (zeros when
// it does not run), kept for the backward; loss: one element, in float64 if
// either input is float64, float32 otherwise.
template <typename B>
void rkd_loss(B& be, const Features& s, const Features& t, const RkdLossArgs& a, double* sq_s, double* sq_t,
              double* stats, const Buffer& loss) {
  const int64_t N = s.N;
  const Terms on = terms_of(a, N);
  if (!on.distance) be.fill_zero(Buffer{stats, Dtype::Float64}, kLossStats);
  if (!on.any()) {
    be.fill_zero(Buffer{sq_s, Dtype::Float64}, N * N);
    be.fill_zero(Buffer{sq_t, Dtype::Float64}, N * N);
    return be.fill_zero(loss, 1);
  }
  const bool wide = loss.dtype == Dtype::Float64;
  with_loss_out(loss, [&](auto* out) {
    using Out = std::remove_pointer_t<decltype(out)>;
    // The weighted distance term: its inverse means, then its sum and its
    // mean terms, in one sequence of reductions.
    auto distance = [&](auto store) {
      const LossTerm term = distance_term(sq_s, sq_t, N, a.distance, stats);
      distance_term_sums(be, term, a.distance.mean_offset, store, a.distance.reduction, stats);
    };
    if (!on.angle) {
      be.pair_matrices(s, t, PairKind::Sq, 0.0, Precision::Fast, sq_s, sq_t);
      return distance(WeightedLoss<Out>{out, pairs_divisor(a, N), a.distance_weight, nullptr});
    }
    with_triplet_type<B>(wide, [&](auto acc) {
      using Acc = decltype(acc);
      const auto e = be.template pairs_and_edges<Acc>(s, t, a.angle, sq_s, sq_t);
      const double* dist = nullptr;  // the weighted distance term, when it runs
      if (on.distance) {
        double* d = be.template scratch<double>(1);
        distance(WeightedLoss<double>{d, pairs_divisor(a, N), a.distance_weight, nullptr});
        dist = d;
      }
      be.angle_loss_sum(e.first, e.second, N, all_rows(N), a.angle.beta,
                        WeightedLoss<Out>{out, triplets_divisor(a, N), a.angle_weight, dist});
    });
  });
}

// gs, gt: the gradients wanted (a null Buffer for one that is not); sq_s,
// sq_t, stats: what the forward kept.
template <typename B>
void rkd_loss_backward(B& be, const Operand& grad, const Features& s, const Features& t, const double* sq_s,
                       const double* sq_t, const double* stats, const RkdLossArgs& a, Dtype loss_dtype,
                       const Buffer& gs, const Buffer& gt) {
  const int64_t N = s.N;
  if (!gs.data && !gt.data) return;
  const Terms on = terms_of(a, N);
  if (!on.any()) return zero_grads(be, s, t, gs, gt);
  const LossUpstream up = loss_upstream(be, grad, 1);
  // Each term's weight scales its upstream gradient: the distance term's
  // through LossGrad's scale, the angle term's folded into its divisor.
  const double scale = a.distance_weight / pairs_divisor(a, N);
  // The distance term, its pair values read off s, its inverse means the
  // forward's, and its mean terms (distance_op.h's mean_terms).
  const LossTerm term = distance_term(sq_s, sq_t, N, a.distance, stats);
  const LossGrad g_s{term, up, scale, false}, g_t{term.swapped(), up, scale, false};
  MeanTerms c{stats + 2, true};
  if (on.distance) c = mean_terms(be, g_s, g_t, stats, a.distance.reduction, gs.data != nullptr, gt.data != nullptr);
  const double sqrt_eps = std::sqrt(a.distance.eps);
  with_triplet_type<B>(loss_dtype == Dtype::Float64, [&](auto acc) {
    using Acc = decltype(acc);
    Edges<Acc> es{sq_s, nullptr}, et{sq_t, nullptr};
    if (on.angle) std::tie(es, et) = be.template edge_pair<Acc>(sq_s, sq_t, N, a.angle);
    const ScalarUpstream<Acc> up_a{up, triplets_divisor(a, N) / a.angle_weight};
    // One side's gradient (the teacher's is the student's with the roles
    // swapped): one weight matrix, one product.
    auto side = [&](const Features& x, const LossWeight& dist, const Edges<Acc>& mine, const Edges<Acc>& other,
                    const Buffer& dx) {
      if (!dx.data) return;
      if (!on.angle) return grad_through(be, x, dist, Precision::Fast, dx);
      const AngleWeight angle{be.angle_passes(mine, other, up_a, N, all_rows(N), a.angle), N};
      if (!on.distance) return grad_through(be, x, angle, Precision::F64, dx);
      grad_through(be, x, SummedWeights<LossWeight, AngleWeight>{dist, angle}, Precision::F64, dx);
    };
    side(s, LossWeight{g_s, c.c, c.unit, a.distance.eps, sqrt_eps, a.distance.squared}, es, et, gs);
    side(t, LossWeight{g_t, c.c + 1, c.unit, a.distance.eps, sqrt_eps, a.distance.squared}, et, es, gt);
  });
}

}  // namespace rkd
