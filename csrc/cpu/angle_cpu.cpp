// CPU kernels of the angle-wise RKD ops: the N x N x N angle tensor and the
// fused angle loss, forward and backward.
//
// Everything is built from the float64 squared-distance matrix s (law of
// cosines, rkd_math.h), so the fused loss needs O(N^2) memory and no N^3 or
// N^2 D buffer: O(N^2 D) for s (pairwise_cpu.cpp), then O(N^3) elementwise
// work. s and every cosine numerator stay in float64: the numerator
// s_ij + s_ik - s_jk cancels for near-duplicate points.
//
// Backward: for L = sum f(A_ijk), dL/ds gathers, per pair, the edge terms at
// the vertex (p, q of rkd_math.h, summed over k for fixed (i, j)) and the
// opposite-edge terms (r, summed over the vertex i for fixed (j, k)). Both are
// computed in one pass where a task owns the point j: it writes column j of
// the vertex-edge matrix V and row j of the opposite-edge matrix Rm, so no two
// tasks write the same element and the summation order is fixed.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
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

// The float64 s and u matrices of one input; for the unnormalised variant u
// is all ones and eps2 < 0 (no clamp).
struct Edges {
  at::Tensor sq;   // (N, N) float64
  at::Tensor inv;  // (N, N) float64: u
  double eps2;
  const double* s() const { return sq.const_data_ptr<double>(); }
  const double* u() const { return inv.const_data_ptr<double>(); }
};

Edges make_edges(at::Tensor sq, double eps, bool normalize) {
  const int64_t N = sq.size(0);
  Edges e{sq, at::empty_like(sq), normalize ? eps * eps : -1.0};
  const double* s = sq.const_data_ptr<double>();
  double* u = e.inv.mutable_data_ptr<double>();
  at::parallel_for(0, N, grain_for(N), [&](int64_t b, int64_t end) {
    for (int64_t i = b; i < end; ++i)
      for (int64_t j = 0; j < N; ++j) u[i * N + j] = normalize ? inv_edge(s[i * N + j], eps) : 1.0;
  });
  return e;
}

Edges edges_of(const at::Tensor& x, double eps, bool normalize) {
  // The law of cosines subtracts squared distances: always the float64 Gram product.
  return make_edges(pair_matrix_cpu(x, PairOut::Sq, 0.0, GramPrecision::F64), eps, normalize);
}

// Rows of one triplet row (i, j, *) of one input.
struct Row {
  const double* s_i;
  const double* s_j;
  const double* u_i;
  double s_ij, u_ij;
};

RKD_INLINE Row row_of(const Edges& e, int64_t N, int64_t i, int64_t j) {
  const double* s = e.s();
  const double* u = e.u();
  return {s + i * N, s + j * N, u + i * N, s[i * N + j], u[i * N + j]};
}

// sum over k in [k0, k1) of smooth_l1(A^a_ijk - A^b_ijk).
RKD_CPU_CLONES double loss_row(const Row& a, const Row& b, int64_t k0, int64_t k1, const Huber<double>& h) {
  const double* as_i = a.s_i;
  const double* as_j = a.s_j;
  const double* au_i = a.u_i;
  const double* bs_i = b.s_i;
  const double* bs_j = b.s_j;
  const double* bu_i = b.u_i;
  return reduce_lanes(k1 - k0, [&](int64_t t) RKD_LAMBDA_INLINE {
    const int64_t k = k0 + t;
    const double r = angle_from_sq(a.s_ij, as_i[k], as_j[k], a.u_ij, au_i[k]) -
                     angle_from_sq(b.s_ij, bs_i[k], bs_j[k], b.u_ij, bu_i[k]);
    return smooth_l1(r, h);
  });
}

// Elementwise loss (or cosines of a alone, when b is null) of a triplet row.
RKD_CPU_CLONES void values_row(const Row& a, const Row* b, int64_t N, const Huber<double>& h, double* out) {
  for (int64_t k = 0; k < N; ++k) out[k] = angle_from_sq(a.s_ij, a.s_i[k], a.s_j[k], a.u_ij, a.u_i[k]);
  if (b)
    for (int64_t k = 0; k < N; ++k)
      out[k] = smooth_l1(out[k] - angle_from_sq(b->s_ij, b->s_i[k], b->s_j[k], b->u_ij, b->u_i[k]), h);
}

// The (N, N, N) tensor of cosines of a (b null), or of the elementwise loss
// between a and b, written row by row straight into the output dtype.
at::Tensor triplet_values(const Edges& a, const Edges* b, int64_t N, double beta, at::ScalarType dtype,
                          const at::TensorOptions& opts) {
  at::Tensor out = at::empty({N, N, N}, opts.dtype(dtype));
  const Huber<double> h(beta);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "rkd_triplet_values", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * N, std::max<int64_t>(1, 4096 / std::max<int64_t>(N, 1)), [&](int64_t lo, int64_t hi) {
      std::vector<double> row(static_cast<size_t>(N));
      for (int64_t t = lo; t < hi; ++t) {
        const int64_t i = t / N, j = t % N;
        if (b) {
          const Row rb = row_of(*b, N, i, j);
          values_row(row_of(a, N, i, j), &rb, N, h, row.data());
        } else {
          values_row(row_of(a, N, i, j), nullptr, N, h, row.data());
        }
        for (int64_t k = 0; k < N; ++k) o[t * N + k] = static_cast<scalar_t>(row[k]);
      }
    });
  });
  return out;
}

// Where dL/dA comes from in a backward row: the smooth-L1 of a loss with a
// scalar upstream gradient, the same with an (N, N, N) upstream gradient
// ('none' reduction), or the upstream gradient itself (the angle tensor).
enum class Upstream { LossScalar, LossTensor, Raw };

struct GradIn {
  double scalar;        // LossScalar: upstream * scale
  const double* g;      // LossTensor / Raw: upstream[i][j][:]
  const double* gsym;   // LossTensor / Raw: upstream[i][j][:] + upstream[i][:][j]
  Huber<double> huber;
  double eps2;
};

// One backward row (i, j, *) for input a (b is the other side of the loss):
// returns p and q, and adds dL/dA_ijk w_ij w_ik to rm_j[k].
template <Upstream U>
RKD_INLINE void grad_row(const Row& a, const Row& b, const GradIn& in, int64_t N, double* __restrict rm_j,
                         double* pq) {
  // Local restrict copies: rm_j is written, and the compiler must know it
  // aliases none of the rows it reads to vectorise.
  const double* __restrict as_i = a.s_i;
  const double* __restrict as_j = a.s_j;
  const double* __restrict au_i = a.u_i;
  const double* __restrict bs_i = b.s_i;
  const double* __restrict bs_j = b.s_j;
  const double* __restrict bu_i = b.u_i;
  const double* __restrict g = in.g;
  const double* __restrict gsym = in.gsym;
  const double w_ij = active_inv_edge(a.s_ij, a.u_ij, in.eps2);
  double p[kLanes] = {}, q[kLanes] = {};
  auto body = [&](int64_t k, int64_t l) RKD_LAMBDA_INLINE {
    const double A = angle_from_sq(a.s_ij, as_i[k], as_j[k], a.u_ij, au_i[k]);
    double G, Gs;
    if constexpr (U == Upstream::Raw) {
      G = g[k];
      Gs = gsym[k];
    } else {
      const double d = smooth_l1_grad(A - angle_from_sq(b.s_ij, bs_i[k], bs_j[k], b.u_ij, bu_i[k]), in.huber);
      if constexpr (U == Upstream::LossScalar) {
        G = in.scalar * d;
        Gs = 2.0 * G;  // dL/dA is symmetric in (j, k) when the upstream gradient is a scalar
      } else {
        G = g[k] * d;
        Gs = gsym[k] * d;
      }
    }
    const double w_ik = active_inv_edge(as_i[k], au_i[k], in.eps2);
    p[l] += Gs * w_ik;
    q[l] += Gs * A;
    rm_j[k] += G * w_ik * w_ij;
  };
  int64_t k = 0;
  for (; k + kLanes <= N; k += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) body(k + l, l);
  for (; k < N; ++k) body(k, k % kLanes);
  pq[0] = lane_sum(p);
  pq[1] = lane_sum(q);
}

RKD_CPU_CLONES void grad_row_scalar(const Row& a, const Row& b, const GradIn& in, int64_t N, double* rm_j,
                                    double* pq) {
  grad_row<Upstream::LossScalar>(a, b, in, N, rm_j, pq);
}
RKD_CPU_CLONES void grad_row_tensor(const Row& a, const Row& b, const GradIn& in, int64_t N, double* rm_j,
                                    double* pq) {
  grad_row<Upstream::LossTensor>(a, b, in, N, rm_j, pq);
}
RKD_CPU_CLONES void grad_row_raw(const Row& a, const Row& b, const GradIn& in, int64_t N, double* rm_j,
                                 double* pq) {
  grad_row<Upstream::Raw>(a, b, in, N, rm_j, pq);
}

// dL/dx for input x with edges ea, given dL/dA through `in` (b: the other
// side of a loss; ignored for Raw). up/upsym: (N, N, N) upstream tensors for
// LossTensor and Raw.
at::Tensor angle_input_grad(Upstream U, const at::Tensor& x, const Edges& ea, const Edges& eb, double scalar,
                            const double* up, const double* upsym, double beta, bool normalize) {
  const int64_t N = x.size(0);
  std::vector<double> V(static_cast<size_t>(N * N), 0.0);   // vertex-edge terms, [i][j]
  std::vector<double> Rm(static_cast<size_t>(N * N), 0.0);  // opposite-edge sums, [j][k]
  const double kappa = normalize ? 1.0 : 0.0;
  at::parallel_for(0, N, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      double* rm_j = Rm.data() + j * N;
      for (int64_t i = 0; i < N; ++i) {
        if (i == j) continue;
        const Row a = row_of(ea, N, i, j);
        const Row b = U == Upstream::Raw ? a : row_of(eb, N, i, j);
        const int64_t off = (i * N + j) * N;
        const GradIn in{scalar, up ? up + off : nullptr, upsym ? upsym + off : nullptr, Huber<double>(beta),
                        ea.eps2};
        double pq[2];
        if (U == Upstream::LossScalar)
          grad_row_scalar(a, b, in, N, rm_j, pq);
        else if (U == Upstream::LossTensor)
          grad_row_tensor(a, b, in, N, rm_j, pq);
        else
          grad_row_raw(a, b, in, N, rm_j, pq);
        V[i * N + j] = vertex_edge_grad(pq[0], pq[1], active_inv_edge(a.s_ij, a.u_ij, ea.eps2), kappa);
      }
    }
  });
  return grad_from_sq_cpu(x, GramPrecision::F64, [&](int64_t i, int64_t j) {
    return V[i * N + j] + opposite_edge_grad(Rm[i * N + j]);
  });
}

// ---- angle_tensor ---------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> angle_tensor_cpu(const at::Tensor& x, double eps, bool normalize) {
  check_features("angle_tensor", "x", x);
  check_eps("angle_tensor", eps);
  const int64_t N = x.size(0);
  const Edges e = edges_of(x, eps, normalize);
  return {triplet_values(e, nullptr, N, 0.0, x.scalar_type(), x.options()), e.sq};
}

// (N, N, N) upstream gradient in float64, and its (j, k)-symmetrised sum.
// With `mask_degenerate`, the entries (i, i, k) and (i, j, i) are zeroed: the
// cosines there are the constant 0, so their gradient must not flow (the
// formulas of rkd_math.h only vanish there through l'(0) = 0 in a loss).
std::pair<at::Tensor, at::Tensor> upstream_pair(const at::Tensor& grad, bool mask_degenerate) {
  at::Tensor g = grad.to(at::kDouble, /*non_blocking=*/false, /*copy=*/true).contiguous();
  if (mask_degenerate) {
    g.diagonal(0, 0, 1).zero_();
    g.diagonal(0, 0, 2).zero_();
  }
  return {g, (g + g.transpose(1, 2)).contiguous()};
}

at::Tensor angle_tensor_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& sq, double eps,
                                     bool normalize) {
  constexpr const char* op = "angle_tensor_backward";
  check_features(op, "x", x);
  const int64_t N = x.size(0);
  check_saved(op, "sq", sq, N);
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == N && grad.size(1) == N && grad.size(2) == N, op,
                    ": grad must have shape (", N, ", ", N, ", ", N, "), got ", grad.sizes());
  const Edges e = make_edges(sq, eps, normalize);
  const auto [g, gsym] = upstream_pair(grad, true);
  return angle_input_grad(Upstream::Raw, x, e, e, 0.0, g.const_data_ptr<double>(), gsym.const_data_ptr<double>(),
                          0.0, normalize);
}

// ---- rkd_angle_loss -----------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> rkd_angle_loss_cpu(const at::Tensor& student,
                                                                  const at::Tensor& teacher, double beta,
                                                                  double eps, c10::string_view reduction,
                                                                  bool normalize) {
  constexpr const char* op = "rkd_angle_loss";
  check_pair(op, student, teacher);
  check_beta(op, beta);
  check_eps(op, eps);
  const Reduction red = parse_reduction(op, std::string(reduction));
  const int64_t N = student.size(0);
  const auto out_opts = student.options().dtype(loss_dtype(student, teacher));
  const Edges a = edges_of(student, eps, normalize), b = edges_of(teacher, eps, normalize);
  if (N < 3) {
    return {red == Reduction::None ? at::zeros({N, N, N}, out_opts) : at::zeros({}, out_opts), a.sq, b.sq};
  }
  if (red == Reduction::None)
    return {triplet_values(a, &b, N, beta, out_opts.dtype().toScalarType(), student.options()), a.sq, b.sq};
  // A_ijk = A_ikj: each row (i, j) sums k > j twice plus k == j once. Rows i
  // j == i (and the k == i entries) are exactly 0 and contribute l(0) = 0.
  const Huber<double> h(beta);
  std::vector<double> rows(static_cast<size_t>(N), 0.0);
  at::parallel_for(0, N, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      double acc = 0.0;
      for (int64_t j = 0; j < N; ++j) {
        if (j == i) continue;
        const Row ra = row_of(a, N, i, j), rb = row_of(b, N, i, j);
        acc += 2.0 * loss_row(ra, rb, j + 1, N, h) + loss_row(ra, rb, j, j + 1, h);
      }
      rows[i] = acc;
    }
  });
  double total = 0.0;
  for (double v : rows) total += v;
  if (red == Reduction::Mean) total /= static_cast<double>(N) * static_cast<double>(N) * static_cast<double>(N);
  return {at::scalar_tensor(total, out_opts), a.sq, b.sq};
}

std::tuple<at::Tensor, at::Tensor> rkd_angle_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& sq_s,
    const at::Tensor& sq_t, double beta, double eps, c10::string_view reduction, bool normalize, bool student_grad,
    bool teacher_grad) {
  const Reduction red = check_loss_backward("rkd_angle_loss_backward", grad, student, teacher, "sq_student", sq_s,
                                            "sq_teacher", sq_t, std::string(reduction), 3);
  const int64_t N = student.size(0);
  if (N < 3 || (!student_grad && !teacher_grad)) return zero_loss_grads(student, teacher, student_grad, teacher_grad);
  auto [gstu, gtea] = zero_loss_grads(student, teacher, false, false);
  const Edges a = make_edges(sq_s, eps, normalize), b = make_edges(sq_t, eps, normalize);
  // The teacher's gradient is the student's with the roles swapped: the
  // residual changes sign, and so does dL/dA.
  if (red == Reduction::None) {
    const auto [g, gsym] = upstream_pair(grad, false);
    const double* gp = g.const_data_ptr<double>();
    const double* gs = gsym.const_data_ptr<double>();
    if (student_grad) gstu = angle_input_grad(Upstream::LossTensor, student, a, b, 0.0, gp, gs, beta, normalize);
    if (teacher_grad) gtea = angle_input_grad(Upstream::LossTensor, teacher, b, a, 0.0, gp, gs, beta, normalize);
  } else {
    double up = grad.to(at::kDouble).item<double>();
    if (red == Reduction::Mean) up /= static_cast<double>(N) * static_cast<double>(N) * static_cast<double>(N);
    if (student_grad)
      gstu = angle_input_grad(Upstream::LossScalar, student, a, b, up, nullptr, nullptr, beta, normalize);
    if (teacher_grad)
      gtea = angle_input_grad(Upstream::LossScalar, teacher, b, a, up, nullptr, nullptr, beta, normalize);
  }
  return {gstu, gtea};
}

}  // namespace

TORCH_LIBRARY_IMPL(rkd_ext, CPU, m) {
  m.impl("angle_tensor", &angle_tensor_cpu);
  m.impl("angle_tensor_backward", &angle_tensor_backward_cpu);
  m.impl("rkd_angle_loss", &rkd_angle_loss_cpu);
  m.impl("rkd_angle_loss_backward", &rkd_angle_loss_backward_cpu);
}

}  // namespace rkd
