// The op bindings, once for every backend: argument checks (../checks.h),
// contiguous operands, the outputs, then one call into the op layer. Ctx
// supplies the device side:
//   template <class F> static void run(const at::Device&, F f)
// sets the device guard, makes the backend (on the current stream) and calls
// f(backend). csrc/cpu/*_cpu.cpp and csrc/cuda/*_cuda.cu register these with
// their Ctx.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "rkd_loss_op.h"
#include "shard_op.h"

namespace rkd {
namespace bind {

inline Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::Float32;
    case at::kDouble: return Dtype::Float64;
    case at::kHalf: return Dtype::Float16;
    case at::kBFloat16: return Dtype::BFloat16;
    default: TORCH_CHECK(false, "rkd_ext: unsupported dtype ", t.scalar_type());
  }
}

// Views of contiguous tensors (the caller keeps them alive).
inline Features features(const at::Tensor& x) { return {x.const_data_ptr(), dtype_of(x), x.size(0), x.size(1)}; }
inline Operand operand(const at::Tensor& t) { return {t.const_data_ptr(), dtype_of(t)}; }
inline Buffer buffer(at::Tensor& t) { return {t.defined() && t.numel() > 0 ? t.mutable_data_ptr() : nullptr, dtype_of(t)}; }
inline double* f64(at::Tensor& t) { return t.mutable_data_ptr<double>(); }

inline at::Tensor square(const at::Tensor& x, at::ScalarType dtype) {
  return at::empty({x.size(0), x.size(0)}, x.options().dtype(dtype));
}

// A loss output: (N, N) or (N, N, N) for reduction 'none', a scalar otherwise.
inline at::Tensor loss_output(const at::Tensor& s, const at::Tensor& t, Reduction red, int64_t rank) {
  const int64_t N = s.size(0);
  const auto opts = s.options().dtype(loss_dtype(s, t));
  if (red != Reduction::None) return at::empty({}, opts);
  return rank == 2 ? at::empty({N, N}, opts) : at::empty({N, N, N}, opts);
}

// The gradient of an input, or an empty tensor when it is not wanted.
inline at::Tensor input_grad(const at::Tensor& x, bool wanted) {
  return wanted ? at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous))
                : at::empty({0}, x.options());
}

// The contiguous inputs of a loss op and the float64 pair matrices it
// computes (forward) or was handed (backward).
struct LossOperands {
  at::Tensor s, t, ps, pt;
  Features fs() const { return features(s); }
  Features ft() const { return features(t); }
};

inline LossOperands loss_forward_operands(const char* op, const at::Tensor& student, const at::Tensor& teacher,
                                          double beta, double eps) {
  check_pair(op, student, teacher);
  check_beta(op, beta);
  check_eps(op, eps);
  const at::Tensor s = student.contiguous();
  return {s, teacher.contiguous(), square(s, at::kDouble), square(s, at::kDouble)};
}

// The gradients a loss backward op returns: empty tensors for the inputs
// that want none (and null buffers for the op layer).
struct LossGrads {
  at::Tensor gs, gt;
  Buffer bs, bt;
  LossGrads(const LossOperands& in, bool student_grad, bool teacher_grad)
      : gs(input_grad(in.s, student_grad)), gt(input_grad(in.t, teacher_grad)) {
    bs = student_grad ? buffer(gs) : Buffer{nullptr, dtype_of(in.s)};
    bt = teacher_grad ? buffer(gt) : Buffer{nullptr, dtype_of(in.t)};
  }
};

// The checks of a single-input backward op: x, the saved matrix, the upstream gradient of rank `rank`.
inline void check_single_backward(const char* op, const at::Tensor& grad, const at::Tensor& x, const char* saved_name,
                                  const at::Tensor& saved, int64_t rank) {
  check_features(op, "x", x);
  const int64_t N = x.size(0);
  check_saved(op, saved_name, saved, N);
  const std::vector<int64_t> want(static_cast<size_t>(rank), N);
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef(want), op, ": grad must have shape (", N, ", ", N,
                    rank == 3 ? ", " : "", rank == 3 ? std::to_string(N) : "", "), got ", grad.sizes());
  check_same_device(op, "grad", grad, x);
  check_same_device(op, saved_name, saved, x);
}

// ---- distance family ------------------------------------------------------------------

// pairwise_distance and normalized_distance: (the result in x's dtype, the float64 distances).
template <typename Ctx, bool kNormalized>
std::tuple<at::Tensor, at::Tensor> distance_matrix(const at::Tensor& x_in, double eps) {
  const char* op = kNormalized ? "normalized_distance" : "pairwise_distance";
  check_features(op, "x", x_in);
  check_eps(op, eps);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = square(x, x.scalar_type()), d64 = square(x, at::kDouble);
  Ctx::run(x.device(), [&](auto& be) {
    if (kNormalized)
      normalized_distance(be, features(x), eps, f64(d64), buffer(out));
    else
      pairwise_distance(be, features(x), eps, f64(d64), buffer(out));
  });
  return {out, d64};
}

template <typename Ctx, bool kNormalized>
at::Tensor distance_matrix_backward(const at::Tensor& grad, const at::Tensor& x_in, const at::Tensor& d64,
                                    double eps) {
  const char* op = kNormalized ? "normalized_distance_backward" : "pairwise_distance_backward";
  check_single_backward(op, grad, x_in, "dist64", d64, 2);
  const at::Tensor x = x_in.contiguous(), g = grad.contiguous();
  at::Tensor dx = input_grad(x, true);
  Ctx::run(x.device(), [&](auto& be) {
    if (kNormalized)
      normalized_distance_backward(be, operand(g), features(x), d64.const_data_ptr<double>(), eps, buffer(dx));
    else
      pairwise_distance_backward(be, operand(g), features(x), d64.const_data_ptr<double>(), eps, buffer(dx));
  });
  return dx;
}

// The loss statistics a distance-term forward keeps for its backward.
inline at::Tensor loss_stats(const at::Tensor& s) { return at::empty({kLossStats}, s.options().dtype(at::kDouble)); }

template <typename Ctx>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rkd_distance_loss(const at::Tensor& student,
                                                                             const at::Tensor& teacher, double beta,
                                                                             double eps, c10::string_view reduction,
                                                                             bool squared, double mean_offset) {
  constexpr const char* op = "rkd_distance_loss";
  LossOperands in = loss_forward_operands(op, student, teacher, beta, eps);
  check_mean_offset(op, mean_offset);
  const DistanceArgs args{beta, eps, parse_reduction(op, std::string(reduction)), squared, mean_offset};
  at::Tensor loss = loss_output(in.s, in.t, args.reduction, 2), stats = loss_stats(in.s);
  Ctx::run(in.s.device(), [&](auto& be) {
    rkd::rkd_distance_loss(be, in.fs(), in.ft(), args, f64(in.ps), f64(in.pt), f64(stats), buffer(loss));
  });
  return {loss, in.ps, in.pt, stats};
}

template <typename Ctx>
std::tuple<at::Tensor, at::Tensor> rkd_distance_loss_backward(
    const at::Tensor& grad, const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& ds,
    const at::Tensor& dt, const at::Tensor& stats, double beta, double eps, c10::string_view reduction, bool squared,
    double mean_offset, bool student_grad, bool teacher_grad) {
  constexpr const char* op = "rkd_distance_loss_backward";
  const Reduction red = check_loss_backward(op, grad, student, teacher, "dist64_student", ds, "dist64_teacher", dt,
                                            std::string(reduction), 2);
  check_saved_stats(op, stats, student, kLossStats);
  const DistanceArgs args{beta, eps, red, squared, mean_offset};
  const LossOperands in{student.contiguous(), teacher.contiguous(), ds, dt};
  const at::Tensor g = grad.contiguous();
  const LossGrads out(in, student_grad, teacher_grad);
  Ctx::run(in.s.device(), [&](auto& be) {
    rkd::rkd_distance_loss_backward(be, operand(g), in.fs(), in.ft(), ds.const_data_ptr<double>(),
                                    dt.const_data_ptr<double>(), stats.const_data_ptr<double>(), args, out.bs,
                                    out.bt);
  });
  return {out.gs, out.gt};
}

// ---- angle family ---------------------------------------------------------------------

template <typename Ctx>
std::tuple<at::Tensor, at::Tensor> angle_tensor(const at::Tensor& x_in, double eps, bool normalize) {
  check_features("angle_tensor", "x", x_in);
  check_eps("angle_tensor", eps);
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0);
  at::Tensor out = at::empty({N, N, N}, x.options()), sq = square(x, at::kDouble);
  Ctx::run(x.device(), [&](auto& be) {
    rkd::angle_tensor(be, features(x), AngleArgs{0.0, eps, Reduction::None, normalize}, f64(sq), buffer(out));
  });
  return {out, sq};
}

template <typename Ctx>
at::Tensor angle_tensor_backward(const at::Tensor& grad, const at::Tensor& x_in, const at::Tensor& sq, double eps,
                                 bool normalize) {
  check_single_backward("angle_tensor_backward", grad, x_in, "sq", sq, 3);
  const at::Tensor x = x_in.contiguous(), g = grad.contiguous();
  at::Tensor dx = input_grad(x, true);
  Ctx::run(x.device(), [&](auto& be) {
    rkd::angle_tensor_backward(be, operand(g), features(x), sq.const_data_ptr<double>(),
                               AngleArgs{0.0, eps, Reduction::None, normalize}, buffer(dx));
  });
  return dx;
}

template <typename Ctx>
std::tuple<at::Tensor, at::Tensor, at::Tensor> rkd_angle_loss(const at::Tensor& student, const at::Tensor& teacher,
                                                              double beta, double eps, c10::string_view reduction,
                                                              bool normalize) {
  constexpr const char* op = "rkd_angle_loss";
  LossOperands in = loss_forward_operands(op, student, teacher, beta, eps);
  const AngleArgs args{beta, eps, parse_reduction(op, std::string(reduction)), normalize};
  at::Tensor loss = loss_output(in.s, in.t, args.reduction, 3);
  Ctx::run(in.s.device(), [&](auto& be) {
    rkd::rkd_angle_loss(be, in.fs(), in.ft(), args, f64(in.ps), f64(in.pt), buffer(loss));
  });
  return {loss, in.ps, in.pt};
}

template <typename Ctx>
std::tuple<at::Tensor, at::Tensor> rkd_angle_loss_backward(const at::Tensor& grad, const at::Tensor& student,
                                                           const at::Tensor& teacher, const at::Tensor& sq_s,
                                                           const at::Tensor& sq_t, double beta, double eps,
                                                           c10::string_view reduction, bool normalize,
                                                           bool student_grad, bool teacher_grad) {
  const Reduction red = check_loss_backward("rkd_angle_loss_backward", grad, student, teacher, "sq_student", sq_s,
                                            "sq_teacher", sq_t, std::string(reduction), 3);
  const AngleArgs args{beta, eps, red, normalize};
  const LossOperands in{student.contiguous(), teacher.contiguous(), sq_s, sq_t};
  const at::Tensor g = grad.contiguous();
  const LossGrads out(in, student_grad, teacher_grad);
  const Dtype loss = loss_dtype(student, teacher) == at::kDouble ? Dtype::Float64 : Dtype::Float32;
  Ctx::run(in.s.device(), [&](auto& be) {
    rkd::rkd_angle_loss_backward(be, operand(g), in.fs(), in.ft(), sq_s.const_data_ptr<double>(),
                                 sq_t.const_data_ptr<double>(), args, loss, out.bs, out.bt);
  });
  return {out.gs, out.gt};
}

// ---- both terms (rkd_loss_op.h) ---------------------------------------------------------

inline RkdLossArgs rkd_loss_args(const char* op, double distance_weight, double angle_weight, double beta,
                                 double eps, double angle_eps, const std::string& reduction, bool squared,
                                 double mean_offset, bool normalize) {
  check_non_negative(op, "distance_weight", distance_weight);
  check_non_negative(op, "angle_weight", angle_weight);
  check_beta(op, beta);
  check_eps(op, eps);
  check_eps(op, angle_eps, "angle_eps");
  check_mean_offset(op, mean_offset);
  const Reduction red = parse_reduction(op, reduction);
  TORCH_CHECK_VALUE(red != Reduction::None, op,
                    ": reduction must be 'mean' or 'sum' (the elementwise losses of the two terms have different "
                    "shapes, (N, N) and (N, N, N)), got 'none'");
  return {distance_weight, angle_weight, {beta, eps, red, squared, mean_offset}, {beta, angle_eps, red, normalize}};
}

template <typename Ctx>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rkd_loss(const at::Tensor& student,
                                                                    const at::Tensor& teacher, double distance_weight,
                                                                    double angle_weight, double beta, double eps,
                                                                    double angle_eps, c10::string_view reduction,
                                                                    bool squared, double mean_offset, bool normalize) {
  constexpr const char* op = "rkd_loss";
  const RkdLossArgs args = rkd_loss_args(op, distance_weight, angle_weight, beta, eps, angle_eps,
                                         std::string(reduction), squared, mean_offset, normalize);
  LossOperands in = loss_forward_operands(op, student, teacher, beta, eps);
  at::Tensor loss = loss_output(in.s, in.t, args.distance.reduction, 2), stats = loss_stats(in.s);
  Ctx::run(in.s.device(), [&](auto& be) {
    rkd::rkd_loss(be, in.fs(), in.ft(), args, f64(in.ps), f64(in.pt), f64(stats), buffer(loss));
  });
  return {loss, in.ps, in.pt, stats};
}

template <typename Ctx>
std::tuple<at::Tensor, at::Tensor> rkd_loss_backward(const at::Tensor& grad, const at::Tensor& student,
                                                     const at::Tensor& teacher, const at::Tensor& sq_s,
                                                     const at::Tensor& sq_t, const at::Tensor& stats,
                                                     double distance_weight,
                                                     double angle_weight, double beta, double eps, double angle_eps,
                                                     c10::string_view reduction, bool squared, double mean_offset,
                                                     bool normalize, bool student_grad, bool teacher_grad) {
  constexpr const char* op = "rkd_loss_backward";
  const std::string red(reduction);
  const RkdLossArgs args =
      rkd_loss_args(op, distance_weight, angle_weight, beta, eps, angle_eps, red, squared, mean_offset, normalize);
  check_loss_backward(op, grad, student, teacher, "sq_student", sq_s, "sq_teacher", sq_t, red, 0);
  check_saved_stats(op, stats, student, kLossStats);
  const LossOperands in{student.contiguous(), teacher.contiguous(), sq_s, sq_t};
  const at::Tensor g = grad.contiguous();
  const LossGrads out(in, student_grad, teacher_grad);
  const Dtype loss = loss_dtype(student, teacher) == at::kDouble ? Dtype::Float64 : Dtype::Float32;
  Ctx::run(in.s.device(), [&](auto& be) {
    rkd::rkd_loss_backward(be, operand(g), in.fs(), in.ft(), sq_s.const_data_ptr<double>(),
                           sq_t.const_data_ptr<double>(), stats.const_data_ptr<double>(), args, loss, out.bs,
                           out.bt);
  });
  return {out.gs, out.gt};
}

// ---- rows of the global batch (shard_op.h) ------------------------------------------

inline Rows check_rows(const char* op, int64_t begin, int64_t end, int64_t N) {
  TORCH_CHECK_VALUE(0 <= begin && begin <= end && end <= N, op, ": rows must satisfy 0 <= begin <= end <= N = ", N,
                    ", got begin ", begin, " and end ", end);
  return {begin, end};
}

inline PairKind parse_kind(const char* op, const std::string& kind) {
  if (kind == "sq") return PairKind::Sq;
  if (kind == "sq_clamped") return PairKind::SqClamped;
  if (kind == "dist") return PairKind::Dist;
  TORCH_CHECK_VALUE(false, op, ": kind must be 'sq', 'sq_clamped' or 'dist', got '", kind, "'");
}

// A float64 (rows, cols) matrix handed to a row op, on x's device.
inline void check_matrix(const char* op, const char* arg, const at::Tensor& m, int64_t rows, int64_t cols,
                         const at::Tensor& x) {
  TORCH_CHECK_VALUE(m.dim() == 2 && m.size(0) == rows && m.size(1) == cols && m.scalar_type() == at::kDouble, op,
                    ": ", arg, " must be a float64 (", rows, ", ", cols, ") matrix, got ", m.scalar_type(),
                    " of shape ", m.sizes());
  check_same_device(op, arg, m, x);
}

template <typename Ctx>
at::Tensor pair_matrix_rows(const at::Tensor& x_in, int64_t begin, int64_t end, c10::string_view kind, double eps) {
  constexpr const char* op = "pair_matrix_rows";
  check_features(op, "x", x_in);
  check_eps(op, eps);
  const Rows rows = check_rows(op, begin, end, x_in.size(0));
  const PairKind k = parse_kind(op, std::string(kind));
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty({rows.size(), x.size(0)}, x.options().dtype(at::kDouble));
  Ctx::run(x.device(), [&](auto& be) { rkd::pair_matrix_rows(be, features(x), rows, k, eps, f64(out)); });
  return out;
}

template <typename Ctx>
at::Tensor pair_matrix_rows_backward(const at::Tensor& grad, const at::Tensor& x_in, const at::Tensor& values,
                                     int64_t begin, c10::string_view kind, double eps) {
  constexpr const char* op = "pair_matrix_rows_backward";
  check_features(op, "x", x_in);
  const int64_t N = x_in.size(0), n = values.dim() == 2 ? values.size(0) : -1;
  check_matrix(op, "values", values, n, N, x_in);
  check_same_device(op, "grad", grad, x_in);
  TORCH_CHECK_VALUE(grad.sizes() == values.sizes(), op, ": grad must have the shape of values ", values.sizes(),
                    ", got ", grad.sizes());
  const Rows rows = check_rows(op, begin, begin + n, N);
  const PairKind k = parse_kind(op, std::string(kind));
  const at::Tensor x = x_in.contiguous(), g = grad.contiguous(), v = values.contiguous();
  at::Tensor dx = at::empty({n, x.size(1)}, x.options());
  Ctx::run(x.device(), [&](auto& be) {
    rkd::pair_matrix_rows_backward(be, operand(g), features(x), v.const_data_ptr<double>(), rows, k, eps, buffer(dx));
  });
  return dx;
}

template <typename Ctx>
at::Tensor grad_rows(const at::Tensor& x_in, const at::Tensor& W_in, int64_t begin) {
  constexpr const char* op = "grad_rows";
  check_features(op, "x", x_in);
  const int64_t N = x_in.size(0), n = W_in.dim() == 2 ? W_in.size(0) : -1;
  check_matrix(op, "W", W_in, n, N, x_in);
  const Rows rows = check_rows(op, begin, begin + n, N);
  const at::Tensor x = x_in.contiguous(), W = W_in.contiguous();
  at::Tensor dx = at::empty({n, x.size(1)}, x.options());
  Ctx::run(x.device(), [&](auto& be) { rkd::grad_rows(be, features(x), W.const_data_ptr<double>(), rows, buffer(dx)); });
  return dx;
}

// The checks of the angle row ops: the two (N, N) float64 matrices, the rows, beta and eps.
inline Rows check_angle_rows(const char* op, const at::Tensor& sq_a, const at::Tensor& sq_b, int64_t begin,
                             int64_t end, double beta, double eps) {
  const int64_t N = sq_a.dim() == 2 ? sq_a.size(0) : -1;
  TORCH_CHECK_VALUE(N > 0, op, ": the squared distances must be a non-empty (N, N) matrix, got shape ", sq_a.sizes());
  check_matrix(op, "the first squared-distance matrix", sq_a, N, N, sq_a);
  check_matrix(op, "the second squared-distance matrix", sq_b, N, N, sq_a);
  check_beta(op, beta);
  check_eps(op, eps);
  return check_rows(op, begin, end, N);
}

template <typename Ctx>
at::Tensor angle_loss_rows(const at::Tensor& sq_s, const at::Tensor& sq_t, int64_t begin, int64_t end, double beta,
                           double eps, bool normalize, bool wide) {
  const Rows rows = check_angle_rows("angle_loss_rows", sq_s, sq_t, begin, end, beta, eps);
  const at::Tensor a = sq_s.contiguous(), b = sq_t.contiguous();
  at::Tensor out = at::empty({}, a.options());
  Ctx::run(a.device(), [&](auto& be) {
    rkd::angle_loss_rows(be, a.const_data_ptr<double>(), b.const_data_ptr<double>(), a.size(0), rows,
                         AngleArgs{beta, eps, Reduction::Sum, normalize}, wide, buffer(out));
  });
  return out;
}

template <typename Ctx>
std::tuple<at::Tensor, at::Tensor> angle_grad_rows(const at::Tensor& sq_a, const at::Tensor& sq_b,
                                                   const at::Tensor& coef, int64_t begin, int64_t end, double beta,
                                                   double eps, bool normalize, bool wide) {
  constexpr const char* op = "angle_grad_rows";
  const Rows rows = check_angle_rows(op, sq_a, sq_b, begin, end, beta, eps);
  TORCH_CHECK_VALUE(coef.numel() == 1 && coef.scalar_type() == at::kDouble, op,
                    ": coef must be one float64 element, got ", coef.scalar_type(), " of shape ", coef.sizes());
  check_same_device(op, "coef", coef, sq_a);
  const at::Tensor a = sq_a.contiguous(), b = sq_b.contiguous(), c = coef.contiguous();
  const int64_t N = a.size(0);
  at::Tensor V = at::empty({rows.size(), N}, a.options()), R = at::empty({N, N}, a.options());
  Ctx::run(a.device(), [&](auto& be) {
    rkd::angle_grad_rows(be, a.const_data_ptr<double>(), b.const_data_ptr<double>(), c.const_data_ptr<double>(), N,
                         rows, AngleArgs{beta, eps, Reduction::Sum, normalize}, wide, buffer(V), buffer(R));
  });
  return {V, R};
}

// Every op, for one backend's TORCH_LIBRARY_IMPL block (the schemas are csrc/ops.cpp).
template <typename Ctx, typename M>
void register_ops(M& m) {
  m.impl("pairwise_distance", &distance_matrix<Ctx, false>);
  m.impl("pairwise_distance_backward", &distance_matrix_backward<Ctx, false>);
  m.impl("normalized_distance", &distance_matrix<Ctx, true>);
  m.impl("normalized_distance_backward", &distance_matrix_backward<Ctx, true>);
  m.impl("rkd_distance_loss", &rkd_distance_loss<Ctx>);
  m.impl("rkd_distance_loss_backward", &rkd_distance_loss_backward<Ctx>);
  m.impl("angle_tensor", &angle_tensor<Ctx>);
  m.impl("angle_tensor_backward", &angle_tensor_backward<Ctx>);
  m.impl("rkd_angle_loss", &rkd_angle_loss<Ctx>);
  m.impl("rkd_angle_loss_backward", &rkd_angle_loss_backward<Ctx>);
  m.impl("rkd_loss", &rkd_loss<Ctx>);
  m.impl("rkd_loss_backward", &rkd_loss_backward<Ctx>);
  m.impl("pair_matrix_rows", &pair_matrix_rows<Ctx>);
  m.impl("pair_matrix_rows_backward", &pair_matrix_rows_backward<Ctx>);
  m.impl("grad_rows", &grad_rows<Ctx>);
  m.impl("angle_loss_rows", &angle_loss_rows<Ctx>);
  m.impl("angle_grad_rows", &angle_grad_rows<Ctx>);
}

}  // namespace bind
}  // namespace rkd
