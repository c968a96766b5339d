// CPU kernels of the distance-wise RKD ops: the pairwise distance matrix, the
// mean-normalised distance matrix and the fused distance loss, forward and
// backward.
//
// The O(N^2 D) parts are the kernels of pairwise_cpu.cpp; the rest are O(N^2)
// float64 passes over the clamped distance matrix d (zero diagonal) with the
// formulas of rkd_math.h. Forward ops hand d to their backward op (the
// "dist64" outputs), so the backward never recomputes distances.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../checks.h"
#include "../rkd_math.h"
#include "cpu_util.h"
#include "pairwise_cpu.h"

namespace rkd {
namespace {

// Calls f(i) for every row i of an N x N pass, in parallel.
template <typename F>
void for_rows(int64_t N, const F& f) {
  at::parallel_for(0, N, grain_for(N), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) f(i);
  });
}

// sum_i f(i) over rows, with per-row values summed in row order: the same
// result for any thread count.
template <typename F>
double sum_rows(int64_t N, const F& f) {
  std::vector<double> rows(static_cast<size_t>(N));
  for_rows(N, [&](int64_t i) { rows[i] = f(i); });
  double t = 0.0;
  for (double v : rows) t += v;
  return t;
}

double pair_count(int64_t N) { return static_cast<double>(N) * static_cast<double>(N - 1); }

// The clamped distance matrix (float64, zero diagonal) of x.
// Distances tolerate the fast Gram product: unlike angles they never subtract
// squared distances from each other.
at::Tensor dist64(const at::Tensor& x, double eps, bool squared = false) {
  return pair_matrix_cpu(x, squared ? PairOut::SqClamped : PairOut::Dist, eps, GramPrecision::Fast);
}

// Mean of the N(N-1) off-diagonal distances.
double mean_distance(const double* d, int64_t N) {
  return sum_rows(N, [&](int64_t i) { return sum_lanes(d + i * N, N); }) / pair_count(N);
}

// For psi = d / mean(d) and dL/dpsi = g: dL/ds_ij = (g_ij - c) / mu * dd/ds_ij
// with c = sum_kl g_kl psi_kl / (N(N-1)) (the gradient through the mean).
// Returns c; g(i, j) is a function so callers need not store it.
template <typename G>
double mean_term(int64_t N, const double* d, double inv_mu, const G& g) {
  return inv_mu * sum_rows(N, [&](int64_t i) {
           return reduce_lanes(N, [&](int64_t j) { return g(i, j) * d[i * N + j]; });
         }) / pair_count(N);
}

at::Tensor as_f64(const at::Tensor& g) { return g.to(at::kDouble).contiguous(); }

// ---- row kernels of the loss (cloned per ISA: they carry the O(N^2) passes) ----
// A row's residuals are r_j = a_j * is - b_j * it (a, b: student and teacher
// distance rows, is, it: their inverse means).

RKD_CPU_CLONES double loss_row_sum(const double* __restrict a, const double* __restrict b, int64_t N, double is,
                                   double it, const Huber<double>& h) {
  return reduce_lanes(N, [&](int64_t j) RKD_LAMBDA_INLINE { return smooth_l1(a[j] * is - b[j] * it, h); });
}

// sum_j l'(r_j) a_j and sum_j l'(r_j) b_j: the row's share of the mean terms.
RKD_CPU_CLONES void grad_sums_row(const double* __restrict a, const double* __restrict b, int64_t N, double is,
                                  double it, const Huber<double>& h, double* out) {
  out[0] = reduce_lanes(N, [&](int64_t j) RKD_LAMBDA_INLINE { return smooth_l1_grad(a[j] * is - b[j] * it, h) * a[j]; });
  out[1] = reduce_lanes(N, [&](int64_t j) RKD_LAMBDA_INLINE { return smooth_l1_grad(a[j] * is - b[j] * it, h) * b[j]; });
}

// One row of W = 2 dL/ds for one side of a loss with a scalar upstream
// gradient (then dL/ds is symmetric): W_j = 2 (k l'(r_j) - c) inv dv/ds(x_j),
// x the side's stored values (distances, or clamped squares with `squared`).
// Returns the row sum. The diagonal comes out 0: r = 0 there, and dv/ds(0) = 0.
template <typename T, bool Squared>
RKD_INLINE double weights_row(const double* __restrict a, const double* __restrict b, const double* __restrict x,
                              int64_t N, double is, double it, const Huber<double>& h, double k, double c,
                              double inv, double eps, T* __restrict w) {
  const double sqrt_eps = std::sqrt(eps);
  auto body = [&](int64_t j) RKD_LAMBDA_INLINE {
    const double dv = Squared ? dclamped_dsq(x[j], eps) : ddist_dsq(x[j], sqrt_eps);
    const double v = 2.0 * (k * smooth_l1_grad(a[j] * is - b[j] * it, h) - c) * inv * dv;
    w[j] = static_cast<T>(v);
    return v;
  };
  return reduce_lanes(N, body);
}

template <typename T>
RKD_INLINE double weights_row_of(const double* a, const double* b, const double* x, int64_t N, double is, double it,
                                 const Huber<double>& h, double k, double c, double inv, bool squared, double eps,
                                 T* w) {
  return squared ? weights_row<T, true>(a, b, x, N, is, it, h, k, c, inv, eps, w)
                 : weights_row<T, false>(a, b, x, N, is, it, h, k, c, inv, eps, w);
}

RKD_CPU_CLONES double weights_row_any(const double* a, const double* b, const double* x, int64_t N, double is,
                                      double it, const Huber<double>& h, double k, double c, double inv,
                                      bool squared, double eps, float* w) {
  return weights_row_of<float>(a, b, x, N, is, it, h, k, c, inv, squared, eps, w);
}
RKD_CPU_CLONES double weights_row_any(const double* a, const double* b, const double* x, int64_t N, double is,
                                      double it, const Huber<double>& h, double k, double c, double inv,
                                      bool squared, double eps, double* w) {
  return weights_row_of<double>(a, b, x, N, is, it, h, k, c, inv, squared, eps, w);
}

// dL/dx for one side of a loss with a scalar upstream gradient.
template <typename T>
at::Tensor scalar_loss_grad_as(const at::Tensor& x, const double* a, const double* b, const double* side, int64_t N,
                            double is, double it, const Huber<double>& h, double k, double c, double inv,
                            bool squared, double eps) {
  PairWeights<T> pw;
  pw.W.resize(static_cast<size_t>(N * N));
  pw.w.resize(static_cast<size_t>(N));
  at::parallel_for(0, N, grain_for(N), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      pw.w[i] = weights_row_any(a + i * N, b + i * N, side + i * N, N, is, it, h, k, c, inv, squared, eps,
                                pw.W.data() + i * N);
  });
  return grad_from_weights_cpu(x, pw);
}

// W in float64 for float64 inputs, float32 otherwise (see GramPrecision::Fast).
at::Tensor scalar_loss_grad(const at::Tensor& x, const double* a, const double* b, const double* side, int64_t N,
                            double is, double it, const Huber<double>& h, double k, double c, double inv,
                            bool squared, double eps) {
  if (x.scalar_type() == at::kDouble)
    return scalar_loss_grad_as<double>(x, a, b, side, N, is, it, h, k, c, inv, squared, eps);
  return scalar_loss_grad_as<float>(x, a, b, side, N, is, it, h, k, c, inv, squared, eps);
}

// ---- pairwise_distance --------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> pairwise_distance_cpu(const at::Tensor& x, double eps) {
  check_features("pairwise_distance", "x", x);
  check_eps("pairwise_distance", eps);
  at::Tensor d = dist64(x, eps);
  // A copy even for float64: an op's outputs must not alias each other.
  return {d.to(x.scalar_type(), /*non_blocking=*/false, /*copy=*/true), d};
}

at::Tensor pairwise_distance_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& dist,
                                          double eps) {
  constexpr const char* op = "pairwise_distance_backward";
  check_features(op, "x", x);
  const int64_t N = x.size(0);
  check_square_grad(op, grad, N);
  check_saved(op, "dist64", dist, N);
  const at::Tensor g64 = as_f64(grad);
  const double* g = g64.const_data_ptr<double>();
  const double* d = dist.const_data_ptr<double>();
  const double sqrt_eps = std::sqrt(eps);
  return grad_from_sq_cpu(x, GramPrecision::Fast,
                          [&](int64_t i, int64_t j) { return g[i * N + j] * ddist_dsq(d[i * N + j], sqrt_eps); });
}

// ---- normalized_distance ------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> normalized_distance_cpu(const at::Tensor& x, double eps) {
  check_features("normalized_distance", "x", x);
  check_eps("normalized_distance", eps);
  const int64_t N = x.size(0);
  at::Tensor d = dist64(x, eps);
  if (N < 2) {
    return {at::zeros({N, N}, x.options()), d};
  }
  const double inv_mu = 1.0 / mean_distance(d.const_data_ptr<double>(), N);
  return {(d * inv_mu).to(x.scalar_type()), d};
}

at::Tensor normalized_distance_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& dist,
                                            double eps) {
  constexpr const char* op = "normalized_distance_backward";
  check_features(op, "x", x);
  const int64_t N = x.size(0);
  check_square_grad(op, grad, N);
  check_saved(op, "dist64", dist, N);
  if (N < 2) return at::zeros_like(x, at::MemoryFormat::Contiguous);
  const at::Tensor g64 = as_f64(grad);
  const double* g = g64.const_data_ptr<double>();
  const double* d = dist.const_data_ptr<double>();
  const double inv_mu = 1.0 / mean_distance(d, N), sqrt_eps = std::sqrt(eps);
  const double c = mean_term(N, d, inv_mu, [&](int64_t i, int64_t j) { return g[i * N + j]; });
  return grad_from_sq_cpu(x, GramPrecision::Fast, [&](int64_t i, int64_t j) {
    return (g[i * N + j] - c) * inv_mu * ddist_dsq(d[i * N + j], sqrt_eps);
  });
}

// ---- rkd_distance_loss --------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> rkd_distance_loss_cpu(const at::Tensor& student,
                                                                     const at::Tensor& teacher, double beta,
                                                                     double eps, c10::string_view reduction,
                                                                     bool squared, double mean_offset) {
  constexpr const char* op = "rkd_distance_loss";
  check_pair(op, student, teacher);
  check_beta(op, beta);
  check_eps(op, eps);
  check_mean_offset(op, mean_offset);
  const Reduction red = parse_reduction(op, std::string(reduction));
  const int64_t N = student.size(0);
  const auto out_opts = student.options().dtype(loss_dtype(student, teacher));
  at::Tensor ds = dist64(student, eps, squared), dt = dist64(teacher, eps, squared);
  if (N < 2) {
    return {red == Reduction::None ? at::zeros({N, N}, out_opts) : at::zeros({}, out_opts), ds, dt};
  }
  const double* a = ds.const_data_ptr<double>();
  const double* b = dt.const_data_ptr<double>();
  const double is = 1.0 / (mean_distance(a, N) + mean_offset), it = 1.0 / (mean_distance(b, N) + mean_offset);
  const Huber<double> h(beta);
  // The diagonal needs no special case: d_ii = 0 on both sides gives l(0) = 0.
  if (red == Reduction::None) {
    at::Tensor elem = at::empty({N, N}, ds.options());
    double* e = elem.mutable_data_ptr<double>();
    for_rows(N, [&](int64_t i) {
      for (int64_t j = 0; j < N; ++j) e[i * N + j] = smooth_l1(a[i * N + j] * is - b[i * N + j] * it, h);
    });
    return {elem.to(out_opts.dtype()), ds, dt};
  }
  double total = sum_rows(N, [&](int64_t i) { return loss_row_sum(a + i * N, b + i * N, N, is, it, h); });
  if (red == Reduction::Mean) total /= static_cast<double>(N) * static_cast<double>(N);
  return {at::scalar_tensor(total, out_opts), ds, dt};
}

std::tuple<at::Tensor, at::Tensor> rkd_distance_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& dist_s,
    const at::Tensor& dist_t, double beta, double eps, c10::string_view reduction, bool squared,
    double mean_offset, bool student_grad, bool teacher_grad) {
  const Reduction red = check_loss_backward("rkd_distance_loss_backward", grad, student, teacher, "dist64_student",
                                            dist_s, "dist64_teacher", dist_t, std::string(reduction), 2);
  const int64_t N = student.size(0);
  if (N < 2 || (!student_grad && !teacher_grad)) return zero_loss_grads(student, teacher, student_grad, teacher_grad);
  auto [gstu, gtea] = zero_loss_grads(student, teacher, false, false);
  const double* a = dist_s.const_data_ptr<double>();
  const double* b = dist_t.const_data_ptr<double>();
  const double is = 1.0 / (mean_distance(a, N) + mean_offset), it = 1.0 / (mean_distance(b, N) + mean_offset);
  const Huber<double> h(beta);
  const double scale = red == Reduction::Mean ? 1.0 / (static_cast<double>(N) * static_cast<double>(N)) : 1.0;
  const double sqrt_eps = std::sqrt(eps);
  const at::Tensor go = as_f64(grad);
  const double* up = go.const_data_ptr<double>();
  const bool none = red == Reduction::None;
  if (!none) {
    // dL/dpsi_student = u l'(r), dL/dpsi_teacher = -u l'(r); the mean terms
    // c = inv_mu * sum g d / (N(N-1)) come from one pass for both sides.
    const double u = up[0] * scale;
    std::vector<double> sums(static_cast<size_t>(2 * N));
    for_rows(N, [&](int64_t i) { grad_sums_row(a + i * N, b + i * N, N, is, it, h, sums.data() + 2 * i); });
    double sa = 0.0, sb = 0.0;
    for (int64_t i = 0; i < N; ++i) {
      sa += sums[2 * i];
      sb += sums[2 * i + 1];
    }
    const double ca = u * is * sa / pair_count(N), cb = u * it * sb / pair_count(N);
    if (student_grad) gstu = scalar_loss_grad(student, a, b, a, N, is, it, h, u, ca, is, squared, eps);
    if (teacher_grad) gtea = scalar_loss_grad(teacher, a, b, b, N, is, it, h, -u, -cb, it, squared, eps);
    return {gstu, gtea};
  }
  // d value / d s for the stored value v (a distance, or a clamped square).
  auto dv_ds = [&](double v) { return squared ? dclamped_dsq(v, eps) : ddist_dsq(v, sqrt_eps); };
  // reduction 'none': g = dL/dpsi_student = upstream * l'(r) (dL/dpsi_teacher
  // = -g), recomputed where needed rather than stored: every pass over N x N
  // matrices costs memory traffic.
  auto g = [&](int64_t i, int64_t j) {
    return up[i * N + j] * smooth_l1_grad(a[i * N + j] * is - b[i * N + j] * it, h);
  };
  if (student_grad) {
    const double c = mean_term(N, a, is, g);
    gstu = grad_from_sq_cpu(student, GramPrecision::Fast, [&](int64_t i, int64_t j) {
      return (g(i, j) - c) * is * dv_ds(a[i * N + j]);
    });
  }
  if (teacher_grad) {
    const double c = mean_term(N, b, it, g);
    gtea = grad_from_sq_cpu(teacher, GramPrecision::Fast, [&](int64_t i, int64_t j) {
      return (c - g(i, j)) * it * dv_ds(b[i * N + j]);
    });
  }
  return {gstu, gtea};
}

}  // namespace

TORCH_LIBRARY_IMPL(rkd_ext, CPU, m) {
  m.impl("pairwise_distance", &pairwise_distance_cpu);
  m.impl("pairwise_distance_backward", &pairwise_distance_backward_cpu);
  m.impl("normalized_distance", &normalized_distance_cpu);
  m.impl("normalized_distance_backward", &normalized_distance_backward_cpu);
  m.impl("rkd_distance_loss", &rkd_distance_loss_cpu);
  m.impl("rkd_distance_loss_backward", &rkd_distance_loss_backward_cpu);
}

}  // namespace rkd
