// The op bindings, once for every backend: argument checks (../checks.h),
// contiguous operands, the outputs, then one call into the op layer. Ctx
// supplies the device side:
//   template <class F> static void run(const Tensor& on, F f)
// sets the device guard for on's device, makes the backend (on the current
// stream) and calls f(backend). csrc/cpu/*_cpu.cpp and csrc/cuda/*_cuda.cu
// register these with their Ctx. Every tensor here is a torch::stable::Tensor
// (../torch_stable.h): no op touches torch's unstable C++ API.
#pragma once

#include <string>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "rkd_loss_op.h"
#include "shard_op.h"

namespace rkd {
namespace bind {

inline Dtype dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case ScalarType::Float: return Dtype::Float32;
    case ScalarType::Double: return Dtype::Float64;
    case ScalarType::Half: return Dtype::Float16;
    case ScalarType::BFloat16: return Dtype::BFloat16;
    default: value_error("rkd_ext: unsupported dtype ", t.scalar_type());
  }
}

// Views of contiguous tensors (the caller keeps them alive).
inline Features features(const Tensor& x) { return {x.const_data_ptr(), dtype_of(x), x.size(0), x.size(1)}; }
inline Operand operand(const Tensor& t) { return {t.const_data_ptr(), dtype_of(t)}; }
inline Buffer buffer(const Tensor& t) { return {t.defined() && t.numel() > 0 ? t.mutable_data_ptr() : nullptr, dtype_of(t)}; }
inline double* f64(const Tensor& t) { return t.mutable_data_ptr<double>(); }

inline Tensor square(const Tensor& x, ScalarType dtype) { return empty(x, {x.size(0), x.size(0)}, dtype); }

// A loss output: (N, N) or (N, N, N) for reduction 'none', a scalar otherwise.
inline Tensor loss_output(const Tensor& s, const Tensor& t, Reduction red, int64_t rank) {
  const int64_t N = s.size(0);
  const ScalarType dtype = loss_dtype(s, t);
  if (red != Reduction::None) return empty(s, {}, dtype);
  return rank == 2 ? empty(s, {N, N}, dtype) : empty(s, {N, N, N}, dtype);
}

// The gradient of an input, or an empty tensor when it is not wanted.
inline Tensor input_grad(const Tensor& x, bool wanted) {
  const Shape s = x.sizes();
  return empty(x, wanted ? std::vector<int64_t>(s.begin(), s.end()) : std::vector<int64_t>{0});
}

// The contiguous inputs of a loss op and the float64 pair matrices it
// computes (forward) or was handed (backward).
// The element operations of a call, which the CPU weighs against its serial
// threshold (cpu_backend.h's CpuCtx; the CUDA context ignores it): the pair
// products of `rows` rows (all N: -1) against all N rows of x, and N^2 per
// row for triplets.
inline double pair_work(const Tensor& x, int64_t rows = -1) {
  const double N = static_cast<double>(x.size(0));
  return (rows < 0 ? N : static_cast<double>(rows)) * N * static_cast<double>(x.size(1));
}
inline double triplet_work(int64_t N, int64_t rows = -1) {
  const double n = static_cast<double>(N);
  return (rows < 0 ? n : static_cast<double>(rows)) * n * n;
}

struct LossOperands {
  Tensor s, t, ps, pt;
  Features fs() const { return features(s); }
  Features ft() const { return features(t); }
  double work(bool triplets) const { return pair_work(s) + pair_work(t) + (triplets ? triplet_work(s.size(0)) : 0.0); }
};

inline LossOperands loss_forward_operands(const char* op, const Tensor& student, const Tensor& teacher,
                                          double beta, double eps) {
  check_pair(op, student, teacher);
  check_beta(op, beta);
  check_eps(op, eps);
  const Tensor s = as_contiguous(student);
  return {s, as_contiguous(teacher), square(s, ScalarType::Double), square(s, ScalarType::Double)};
}

// The gradients a loss backward op returns: empty tensors for the inputs
// that want none (and null buffers for the op layer).
struct LossGrads {
  Tensor gs, gt;
  Buffer bs, bt;
  LossGrads(const LossOperands& in, bool student_grad, bool teacher_grad)
      : gs(input_grad(in.s, student_grad)), gt(input_grad(in.t, teacher_grad)) {
    bs = student_grad ? buffer(gs) : Buffer{nullptr, dtype_of(in.s)};
    bt = teacher_grad ? buffer(gt) : Buffer{nullptr, dtype_of(in.t)};
  }
};

// The checks of a single-input backward op: x, the saved matrix, the upstream gradient of rank `rank`.
inline void check_single_backward(const char* op, const Tensor& grad, const Tensor& x, const char* saved_name,
                                  const Tensor& saved, int64_t rank) {
  check_features(op, "x", x);
  const int64_t N = x.size(0);
  check_saved(op, saved_name, saved, N);
  RKD_CHECK_VALUE(same_shape(grad, std::vector<int64_t>(static_cast<size_t>(rank), N)), op, ": grad must have shape (",
                  N, ", ", N, rank == 3 ? ", " : "", rank == 3 ? std::to_string(N) : "", "), got ", shape(grad));
  check_same_device(op, "grad", grad, x);
  check_same_device(op, saved_name, saved, x);
}

// ---- distance family ------------------------------------------------------------------

// pairwise_distance and normalized_distance: (the result in x's dtype, the float64 distances).
template <typename Ctx, bool kNormalized>
std::tuple<Tensor, Tensor> distance_matrix(const Tensor& x_in, double eps) {
  const char* op = kNormalized ? "normalized_distance" : "pairwise_distance";
  check_features(op, "x", x_in);
  check_eps(op, eps);
  const Tensor x = as_contiguous(x_in);
  Tensor out = square(x, x.scalar_type()), d64 = square(x, ScalarType::Double);
  Ctx::run(x, pair_work(x), [&](auto& be) {
    if (kNormalized)
      normalized_distance(be, features(x), eps, f64(d64), buffer(out));
    else
      pairwise_distance(be, features(x), eps, f64(d64), buffer(out));
  });
  return {out, d64};
}

template <typename Ctx, bool kNormalized>
Tensor distance_matrix_backward(const Tensor& grad, const Tensor& x_in, const Tensor& d64,
                                    double eps) {
  const char* op = kNormalized ? "normalized_distance_backward" : "pairwise_distance_backward";
  check_single_backward(op, grad, x_in, "dist64", d64, 2);
  const Tensor x = as_contiguous(x_in), g = as_contiguous(grad);
  Tensor dx = input_grad(x, true);
  Ctx::run(x, pair_work(x), [&](auto& be) {
    if (kNormalized)
      normalized_distance_backward(be, operand(g), features(x), d64.const_data_ptr<double>(), eps, buffer(dx));
    else
      pairwise_distance_backward(be, operand(g), features(x), d64.const_data_ptr<double>(), eps, buffer(dx));
  });
  return dx;
}

// The loss statistics a distance-term forward keeps for its backward.
inline Tensor loss_stats(const Tensor& s) { return empty(s, {kLossStats}, ScalarType::Double); }

template <typename Ctx>
std::tuple<Tensor, Tensor, Tensor, Tensor> rkd_distance_loss(const Tensor& student,
                                                                             const Tensor& teacher, double beta,
                                                                             double eps, const std::string& reduction,
                                                                             bool squared, double mean_offset) {
  constexpr const char* op = "rkd_distance_loss";
  LossOperands in = loss_forward_operands(op, student, teacher, beta, eps);
  check_mean_offset(op, mean_offset);
  const DistanceArgs args{beta, eps, parse_reduction(op, reduction), squared, mean_offset};
  Tensor loss = loss_output(in.s, in.t, args.reduction, 2), stats = loss_stats(in.s);
  Ctx::run(in.s, in.work(false), [&](auto& be) {
    rkd::rkd_distance_loss(be, in.fs(), in.ft(), args, f64(in.ps), f64(in.pt), f64(stats), buffer(loss));
  });
  return {loss, in.ps, in.pt, stats};
}

template <typename Ctx>
std::tuple<Tensor, Tensor> rkd_distance_loss_backward(
    const Tensor& grad, const Tensor& student, const Tensor& teacher, const Tensor& ds,
    const Tensor& dt, const Tensor& stats, double beta, double eps, const std::string& reduction, bool squared,
    double mean_offset, bool student_grad, bool teacher_grad) {
  constexpr const char* op = "rkd_distance_loss_backward";
  const Reduction red = check_loss_backward(op, grad, student, teacher, "dist64_student", ds, "dist64_teacher", dt,
                                            reduction, 2);
  check_saved_stats(op, stats, student, kLossStats);
  const DistanceArgs args{beta, eps, red, squared, mean_offset};
  const LossOperands in{as_contiguous(student), as_contiguous(teacher), ds, dt};
  const Tensor g = as_contiguous(grad);
  const LossGrads out(in, student_grad, teacher_grad);
  Ctx::run(in.s, in.work(false), [&](auto& be) {
    rkd::rkd_distance_loss_backward(be, operand(g), in.fs(), in.ft(), ds.const_data_ptr<double>(),
                                    dt.const_data_ptr<double>(), stats.const_data_ptr<double>(), args, out.bs,
                                    out.bt);
  });
  return {out.gs, out.gt};
}

// ---- angle family ---------------------------------------------------------------------

template <typename Ctx>
std::tuple<Tensor, Tensor> angle_tensor(const Tensor& x_in, double eps, bool normalize) {
  check_features("angle_tensor", "x", x_in);
  check_eps("angle_tensor", eps);
  const Tensor x = as_contiguous(x_in);
  const int64_t N = x.size(0);
  Tensor out = empty(x, {N, N, N}), sq = square(x, ScalarType::Double);
  Ctx::run(x, pair_work(x) + triplet_work(N), [&](auto& be) {
    rkd::angle_tensor(be, features(x), AngleArgs{0.0, eps, Reduction::None, normalize}, f64(sq), buffer(out));
  });
  return {out, sq};
}

template <typename Ctx>
Tensor angle_tensor_backward(const Tensor& grad, const Tensor& x_in, const Tensor& sq, double eps,
                                 bool normalize) {
  check_single_backward("angle_tensor_backward", grad, x_in, "sq", sq, 3);
  const Tensor x = as_contiguous(x_in), g = as_contiguous(grad);
  Tensor dx = input_grad(x, true);
  Ctx::run(x, pair_work(x) + triplet_work(x.size(0)), [&](auto& be) {
    rkd::angle_tensor_backward(be, operand(g), features(x), sq.const_data_ptr<double>(),
                               AngleArgs{0.0, eps, Reduction::None, normalize}, buffer(dx));
  });
  return dx;
}

template <typename Ctx>
std::tuple<Tensor, Tensor, Tensor> rkd_angle_loss(const Tensor& student, const Tensor& teacher,
                                                              double beta, double eps, const std::string& reduction,
                                                              bool normalize) {
  constexpr const char* op = "rkd_angle_loss";
  LossOperands in = loss_forward_operands(op, student, teacher, beta, eps);
  const AngleArgs args{beta, eps, parse_reduction(op, reduction), normalize};
  Tensor loss = loss_output(in.s, in.t, args.reduction, 3);
  Ctx::run(in.s, in.work(true), [&](auto& be) {
    rkd::rkd_angle_loss(be, in.fs(), in.ft(), args, f64(in.ps), f64(in.pt), buffer(loss));
  });
  return {loss, in.ps, in.pt};
}

template <typename Ctx>
std::tuple<Tensor, Tensor> rkd_angle_loss_backward(const Tensor& grad, const Tensor& student,
                                                           const Tensor& teacher, const Tensor& sq_s,
                                                           const Tensor& sq_t, double beta, double eps,
                                                           const std::string& reduction, bool normalize,
                                                           bool student_grad, bool teacher_grad) {
  const Reduction red = check_loss_backward("rkd_angle_loss_backward", grad, student, teacher, "sq_student", sq_s,
                                            "sq_teacher", sq_t, reduction, 3);
  const AngleArgs args{beta, eps, red, normalize};
  const LossOperands in{as_contiguous(student), as_contiguous(teacher), sq_s, sq_t};
  const Tensor g = as_contiguous(grad);
  const LossGrads out(in, student_grad, teacher_grad);
  const Dtype loss = loss_dtype(student, teacher) == ScalarType::Double ? Dtype::Float64 : Dtype::Float32;
  Ctx::run(in.s, in.work(true), [&](auto& be) {
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
  RKD_CHECK_VALUE(red != Reduction::None, op,
                    ": reduction must be 'mean' or 'sum' (the elementwise losses of the two terms have different "
                    "shapes, (N, N) and (N, N, N)), got 'none'");
  return {distance_weight, angle_weight, {beta, eps, red, squared, mean_offset}, {beta, angle_eps, red, normalize}};
}

template <typename Ctx>
std::tuple<Tensor, Tensor, Tensor, Tensor> rkd_loss(const Tensor& student,
                                                                    const Tensor& teacher, double distance_weight,
                                                                    double angle_weight, double beta, double eps,
                                                                    double angle_eps, const std::string& reduction,
                                                                    bool squared, double mean_offset, bool normalize) {
  constexpr const char* op = "rkd_loss";
  const RkdLossArgs args = rkd_loss_args(op, distance_weight, angle_weight, beta, eps, angle_eps,
                                         reduction, squared, mean_offset, normalize);
  LossOperands in = loss_forward_operands(op, student, teacher, beta, eps);
  Tensor loss = loss_output(in.s, in.t, args.distance.reduction, 2), stats = loss_stats(in.s);
  Ctx::run(in.s, in.work(args.angle_weight != 0.0), [&](auto& be) {
    rkd::rkd_loss(be, in.fs(), in.ft(), args, f64(in.ps), f64(in.pt), f64(stats), buffer(loss));
  });
  return {loss, in.ps, in.pt, stats};
}

template <typename Ctx>
std::tuple<Tensor, Tensor> rkd_loss_backward(const Tensor& grad, const Tensor& student,
                                                     const Tensor& teacher, const Tensor& sq_s,
                                                     const Tensor& sq_t, const Tensor& stats,
                                                     double distance_weight,
                                                     double angle_weight, double beta, double eps, double angle_eps,
                                                     const std::string& reduction, bool squared, double mean_offset,
                                                     bool normalize, bool student_grad, bool teacher_grad) {
  constexpr const char* op = "rkd_loss_backward";
  const std::string red(reduction);
  const RkdLossArgs args =
      rkd_loss_args(op, distance_weight, angle_weight, beta, eps, angle_eps, red, squared, mean_offset, normalize);
  check_loss_backward(op, grad, student, teacher, "sq_student", sq_s, "sq_teacher", sq_t, red, 0);
  check_saved_stats(op, stats, student, kLossStats);
  const LossOperands in{as_contiguous(student), as_contiguous(teacher), sq_s, sq_t};
  const Tensor g = as_contiguous(grad);
  const LossGrads out(in, student_grad, teacher_grad);
  const Dtype loss = loss_dtype(student, teacher) == ScalarType::Double ? Dtype::Float64 : Dtype::Float32;
  Ctx::run(in.s, in.work(args.angle_weight != 0.0), [&](auto& be) {
    rkd::rkd_loss_backward(be, operand(g), in.fs(), in.ft(), sq_s.const_data_ptr<double>(),
                           sq_t.const_data_ptr<double>(), stats.const_data_ptr<double>(), args, loss, out.bs,
                           out.bt);
  });
  return {out.gs, out.gt};
}

// ---- rows of the global batch (shard_op.h) ------------------------------------------

inline Rows check_rows(const char* op, int64_t begin, int64_t end, int64_t N) {
  RKD_CHECK_VALUE(0 <= begin && begin <= end && end <= N, op, ": rows must satisfy 0 <= begin <= end <= N = ", N,
                    ", got begin ", begin, " and end ", end);
  return {begin, end};
}

inline PairKind parse_kind(const char* op, const std::string& kind) {
  if (kind == "sq") return PairKind::Sq;
  if (kind == "sq_clamped") return PairKind::SqClamped;
  if (kind == "dist") return PairKind::Dist;
  value_error(op, ": kind must be 'sq', 'sq_clamped' or 'dist', got '", kind, "'");
}

// A float64 (rows, cols) matrix handed to a row op, on x's device.
inline void check_matrix(const char* op, const char* arg, const Tensor& m, int64_t rows, int64_t cols,
                         const Tensor& x) {
  RKD_CHECK_VALUE(m.dim() == 2 && m.size(0) == rows && m.size(1) == cols && m.scalar_type() == ScalarType::Double, op,
                    ": ", arg, " must be a float64 (", rows, ", ", cols, ") matrix, got ", m.scalar_type(),
                    " of shape ", shape(m));
  check_same_device(op, arg, m, x);
}

template <typename Ctx>
Tensor pair_matrix_rows(const Tensor& x_in, int64_t begin, int64_t end, const std::string& kind, double eps) {
  constexpr const char* op = "pair_matrix_rows";
  check_features(op, "x", x_in);
  check_eps(op, eps);
  const Rows rows = check_rows(op, begin, end, x_in.size(0));
  const PairKind k = parse_kind(op, kind);
  const Tensor x = as_contiguous(x_in);
  Tensor out = empty(x, {rows.size(), x.size(0)}, ScalarType::Double);
  Ctx::run(x, pair_work(x, rows.size()),
           [&](auto& be) { rkd::pair_matrix_rows(be, features(x), rows, k, eps, f64(out)); });
  return out;
}

template <typename Ctx>
Tensor pair_matrix_rows_backward(const Tensor& grad, const Tensor& x_in, const Tensor& values,
                                     int64_t begin, const std::string& kind, double eps) {
  constexpr const char* op = "pair_matrix_rows_backward";
  check_features(op, "x", x_in);
  const int64_t N = x_in.size(0), n = values.dim() == 2 ? values.size(0) : -1;
  check_matrix(op, "values", values, n, N, x_in);
  check_same_device(op, "grad", grad, x_in);
  RKD_CHECK_VALUE(same_shape(grad, {n, N}), op, ": grad must have the shape of values ", shape(values), ", got ",
                  shape(grad));
  const Rows rows = check_rows(op, begin, begin + n, N);
  const PairKind k = parse_kind(op, kind);
  const Tensor x = as_contiguous(x_in), g = as_contiguous(grad), v = as_contiguous(values);
  Tensor dx = empty(x, {n, x.size(1)});
  Ctx::run(x, pair_work(x, n), [&](auto& be) {
    rkd::pair_matrix_rows_backward(be, operand(g), features(x), v.const_data_ptr<double>(), rows, k, eps, buffer(dx));
  });
  return dx;
}

template <typename Ctx>
Tensor grad_rows(const Tensor& x_in, const Tensor& W_in, int64_t begin) {
  constexpr const char* op = "grad_rows";
  check_features(op, "x", x_in);
  const int64_t N = x_in.size(0), n = W_in.dim() == 2 ? W_in.size(0) : -1;
  check_matrix(op, "W", W_in, n, N, x_in);
  const Rows rows = check_rows(op, begin, begin + n, N);
  const Tensor x = as_contiguous(x_in), W = as_contiguous(W_in);
  Tensor dx = empty(x, {n, x.size(1)});
  Ctx::run(x, pair_work(x, n),
           [&](auto& be) { rkd::grad_rows(be, features(x), W.const_data_ptr<double>(), rows, buffer(dx)); });
  return dx;
}

// The checks of the angle row ops: the two (N, N) float64 matrices, the rows, beta and eps.
inline Rows check_angle_rows(const char* op, const Tensor& sq_a, const Tensor& sq_b, int64_t begin,
                             int64_t end, double beta, double eps) {
  const int64_t N = sq_a.dim() == 2 ? sq_a.size(0) : -1;
  RKD_CHECK_VALUE(N > 0, op, ": the squared distances must be a non-empty (N, N) matrix, got shape ", shape(sq_a));
  check_matrix(op, "the first squared-distance matrix", sq_a, N, N, sq_a);
  check_matrix(op, "the second squared-distance matrix", sq_b, N, N, sq_a);
  check_beta(op, beta);
  check_eps(op, eps);
  return check_rows(op, begin, end, N);
}

template <typename Ctx>
Tensor angle_loss_rows(const Tensor& sq_s, const Tensor& sq_t, int64_t begin, int64_t end, double beta,
                           double eps, bool normalize, bool wide) {
  const Rows rows = check_angle_rows("angle_loss_rows", sq_s, sq_t, begin, end, beta, eps);
  const Tensor a = as_contiguous(sq_s), b = as_contiguous(sq_t);
  Tensor out = empty(a, {});
  Ctx::run(a, triplet_work(a.size(0), rows.size()), [&](auto& be) {
    rkd::angle_loss_rows(be, a.const_data_ptr<double>(), b.const_data_ptr<double>(), a.size(0), rows,
                         AngleArgs{beta, eps, Reduction::Sum, normalize}, wide, buffer(out));
  });
  return out;
}

template <typename Ctx>
std::tuple<Tensor, Tensor> angle_grad_rows(const Tensor& sq_a, const Tensor& sq_b,
                                                   const Tensor& coef, int64_t begin, int64_t end, double beta,
                                                   double eps, bool normalize, bool wide) {
  constexpr const char* op = "angle_grad_rows";
  const Rows rows = check_angle_rows(op, sq_a, sq_b, begin, end, beta, eps);
  RKD_CHECK_VALUE(coef.numel() == 1 && coef.scalar_type() == ScalarType::Double, op,
                    ": coef must be one float64 element, got ", coef.scalar_type(), " of shape ", shape(coef));
  check_same_device(op, "coef", coef, sq_a);
  const Tensor a = as_contiguous(sq_a), b = as_contiguous(sq_b), c = as_contiguous(coef);
  const int64_t N = a.size(0);
  Tensor V = empty(a, {rows.size(), N}), R = empty(a, {N, N});
  Ctx::run(a, triplet_work(N, rows.size()), [&](auto& be) {
    rkd::angle_grad_rows(be, a.const_data_ptr<double>(), b.const_data_ptr<double>(), c.const_data_ptr<double>(), N,
                         rows, AngleArgs{beta, eps, Reduction::Sum, normalize}, wide, buffer(V), buffer(R));
  });
  return {V, R};
}

// Every op, for one backend's STABLE_TORCH_LIBRARY_IMPL block (the schemas are csrc/ops.cpp).
// TORCH_BOX unboxes each argument from the stable ABI's stack and boxes the results.
#define RKD_BIND_IMPL(name, ...) m.impl(name, TORCH_BOX((&__VA_ARGS__)))
#define RKD_BIND(name) RKD_BIND_IMPL(#name, name<Ctx>)
template <typename Ctx, typename M>
void register_ops(M& m) {
  RKD_BIND_IMPL("pairwise_distance", distance_matrix<Ctx, false>);
  RKD_BIND_IMPL("pairwise_distance_backward", distance_matrix_backward<Ctx, false>);
  RKD_BIND_IMPL("normalized_distance", distance_matrix<Ctx, true>);
  RKD_BIND_IMPL("normalized_distance_backward", distance_matrix_backward<Ctx, true>);
  RKD_BIND(rkd_distance_loss);
  RKD_BIND(rkd_distance_loss_backward);
  RKD_BIND(angle_tensor);
  RKD_BIND(angle_tensor_backward);
  RKD_BIND(rkd_angle_loss);
  RKD_BIND(rkd_angle_loss_backward);
  RKD_BIND(rkd_loss);
  RKD_BIND(rkd_loss_backward);
  RKD_BIND(pair_matrix_rows);
  RKD_BIND(pair_matrix_rows_backward);
  RKD_BIND(grad_rows);
  RKD_BIND(angle_loss_rows);
  RKD_BIND(angle_grad_rows);
}
#undef RKD_BIND
#undef RKD_BIND_IMPL

}  // namespace bind
}  // namespace rkd
