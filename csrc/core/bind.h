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
#include "angle_op.h"

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

inline Buffer wanted_buffer(at::Tensor& g, bool wanted) { return wanted ? buffer(g) : Buffer{nullptr, dtype_of(g)}; }

// A tensor handed to a backward op must live where the features do: the
// kernels dereference its pointer on that device.
inline void check_same_device(const char* op, const char* arg, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", arg, " must be on the features' device ", x.device(),
                    ", got ", t.device());
}

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

template <typename Ctx>
std::tuple<at::Tensor, at::Tensor, at::Tensor> rkd_distance_loss(const at::Tensor& student, const at::Tensor& teacher,
                                                                 double beta, double eps, c10::string_view reduction,
                                                                 bool squared, double mean_offset) {
  constexpr const char* op = "rkd_distance_loss";
  check_pair(op, student, teacher);
  check_beta(op, beta);
  check_eps(op, eps);
  check_mean_offset(op, mean_offset);
  const DistanceArgs args{beta, eps, parse_reduction(op, std::string(reduction)), squared, mean_offset};
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  at::Tensor ds = square(s, at::kDouble), dt = square(s, at::kDouble), loss = loss_output(s, t, args.reduction, 2);
  Ctx::run(s.device(), [&](auto& be) {
    rkd::rkd_distance_loss(be, features(s), features(t), args, f64(ds), f64(dt), buffer(loss));
  });
  return {loss, ds, dt};
}

template <typename Ctx>
std::tuple<at::Tensor, at::Tensor> rkd_distance_loss_backward(
    const at::Tensor& grad, const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& ds,
    const at::Tensor& dt, double beta, double eps, c10::string_view reduction, bool squared, double mean_offset,
    bool student_grad, bool teacher_grad) {
  constexpr const char* op = "rkd_distance_loss_backward";
  const Reduction red =
      check_loss_backward(op, grad, student, teacher, "dist64_student", ds, "dist64_teacher", dt, std::string(reduction), 2);
  check_same_device(op, "grad", grad, student);
  check_same_device(op, "dist64_student", ds, student);
  check_same_device(op, "dist64_teacher", dt, student);
  const DistanceArgs args{beta, eps, red, squared, mean_offset};
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), g = grad.contiguous();
  at::Tensor gs = input_grad(s, student_grad), gt = input_grad(t, teacher_grad);
  Ctx::run(s.device(), [&](auto& be) {
    rkd::rkd_distance_loss_backward(be, operand(g), features(s), features(t), ds.const_data_ptr<double>(),
                                    dt.const_data_ptr<double>(), args, wanted_buffer(gs, student_grad),
                                    wanted_buffer(gt, teacher_grad));
  });
  return {gs, gt};
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
  check_pair(op, student, teacher);
  check_beta(op, beta);
  check_eps(op, eps);
  const AngleArgs args{beta, eps, parse_reduction(op, std::string(reduction)), normalize};
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  at::Tensor sq_s = square(s, at::kDouble), sq_t = square(s, at::kDouble), loss = loss_output(s, t, args.reduction, 3);
  Ctx::run(s.device(), [&](auto& be) {
    rkd::rkd_angle_loss(be, features(s), features(t), args, f64(sq_s), f64(sq_t), buffer(loss));
  });
  return {loss, sq_s, sq_t};
}

template <typename Ctx>
std::tuple<at::Tensor, at::Tensor> rkd_angle_loss_backward(const at::Tensor& grad, const at::Tensor& student,
                                                           const at::Tensor& teacher, const at::Tensor& sq_s,
                                                           const at::Tensor& sq_t, double beta, double eps,
                                                           c10::string_view reduction, bool normalize,
                                                           bool student_grad, bool teacher_grad) {
  constexpr const char* op = "rkd_angle_loss_backward";
  const Reduction red =
      check_loss_backward(op, grad, student, teacher, "sq_student", sq_s, "sq_teacher", sq_t, std::string(reduction), 3);
  check_same_device(op, "grad", grad, student);
  check_same_device(op, "sq_student", sq_s, student);
  check_same_device(op, "sq_teacher", sq_t, student);
  const AngleArgs args{beta, eps, red, normalize};
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), g = grad.contiguous();
  at::Tensor gs = input_grad(s, student_grad), gt = input_grad(t, teacher_grad);
  Ctx::run(s.device(), [&](auto& be) {
    rkd::rkd_angle_loss_backward(be, operand(g), features(s), features(t), sq_s.const_data_ptr<double>(),
                                 sq_t.const_data_ptr<double>(), args, dtype_of(loss_output(s, t, red, 3)),
                                 wanted_buffer(gs, student_grad), wanted_buffer(gt, teacher_grad));
  });
  return {gs, gt};
}

// The ops of each family, for one backend's TORCH_LIBRARY_IMPL block.
template <typename Ctx, typename M>
void register_distance_ops(M& m) {
  m.impl("pairwise_distance", &distance_matrix<Ctx, false>);
  m.impl("pairwise_distance_backward", &distance_matrix_backward<Ctx, false>);
  m.impl("normalized_distance", &distance_matrix<Ctx, true>);
  m.impl("normalized_distance_backward", &distance_matrix_backward<Ctx, true>);
  m.impl("rkd_distance_loss", &rkd_distance_loss<Ctx>);
  m.impl("rkd_distance_loss_backward", &rkd_distance_loss_backward<Ctx>);
}

template <typename Ctx, typename M>
void register_angle_ops(M& m) {
  m.impl("angle_tensor", &angle_tensor<Ctx>);
  m.impl("angle_tensor_backward", &angle_tensor_backward<Ctx>);
  m.impl("rkd_angle_loss", &rkd_angle_loss<Ctx>);
  m.impl("rkd_angle_loss_backward", &rkd_angle_loss_backward<Ctx>);
}

}  // namespace bind
}  // namespace rkd
