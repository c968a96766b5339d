// CUDA bindings of the distance-wise RKD ops: checks, device guard, current
// stream, then the kernels of pairwise_kernel.cuh and distance_kernel.cuh.
// The counterparts of csrc/cpu/distance_cpu.cpp, which they follow case for
// case (N = 1, reductions, which gradients are wanted).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "cuda_binding.h"
#include "distance_kernel.cuh"

namespace rkd {
namespace gpu {
namespace {

// The clamped distance matrix (float64, zero diagonal) of x, or the clamped
// squared distances when `squared`.
at::Tensor dist64(const at::Tensor& x, double eps, bool squared = false) {
  return pair_matrix_cuda(x, squared ? PairKind::SqClamped : PairKind::Dist, eps);
}

at::Tensor as_f64(const at::Tensor& g) { return g.to(at::kDouble).contiguous(); }

// ---- pairwise_distance --------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> pairwise_distance_cuda(const at::Tensor& x, double eps) {
  check_features("pairwise_distance", "x", x);
  check_eps("pairwise_distance", eps);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor d = dist64(x, eps);
  // A copy even for float64: an op's outputs must not alias each other.
  return {d.to(x.scalar_type(), /*non_blocking=*/false, /*copy=*/true), d};
}

at::Tensor pairwise_distance_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& dist,
                                           double eps) {
  constexpr const char* op = "pairwise_distance_backward";
  check_features(op, "x", x);
  const int64_t N = x.size(0);
  check_square_grad(op, grad, N);
  check_saved(op, "dist64", dist, N);
  check_same_device(op, "grad", grad, x);
  check_same_device(op, "dist64", dist, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor g = as_f64(grad);
  at::Tensor W = at::empty_like(dist), w = at::empty({N}, dist.options());
  pairwise_distance_weights(g.const_data_ptr<double>(), dist.const_data_ptr<double>(), N, eps,
                            W.mutable_data_ptr<double>(), w.mutable_data_ptr<double>(), current_stream(),
                            LaunchCheck{});
  return grad_from_weights_cuda(x, W, w);
}

// ---- normalized_distance ------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> normalized_distance_cuda(const at::Tensor& x, double eps) {
  check_features("normalized_distance", "x", x);
  check_eps("normalized_distance", eps);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0);
  at::Tensor d = dist64(x, eps);
  if (N < 2) return {at::zeros({N, N}, x.options()), d};
  at::Tensor psi = at::empty({N, N}, x.options());
  Scratch scratch(x.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rkd_normalized_distance_cuda", [&] {
    normalized_distance(d.const_data_ptr<double>(), N, out_ptr<scalar_t>(psi), scratch, current_stream(),
                        LaunchCheck{});
  });
  return {psi, d};
}

at::Tensor normalized_distance_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& dist,
                                             double eps) {
  constexpr const char* op = "normalized_distance_backward";
  check_features(op, "x", x);
  const int64_t N = x.size(0);
  check_square_grad(op, grad, N);
  check_saved(op, "dist64", dist, N);
  check_same_device(op, "grad", grad, x);
  check_same_device(op, "dist64", dist, x);
  const c10::cuda::CUDAGuard guard(x.device());
  if (N < 2) return at::zeros_like(x, at::MemoryFormat::Contiguous);
  const at::Tensor g = as_f64(grad);
  at::Tensor W = at::empty_like(dist), w = at::empty({N}, dist.options());
  Scratch scratch(x.device());
  normalized_distance_weights(g.const_data_ptr<double>(), dist.const_data_ptr<double>(), N, eps,
                              W.mutable_data_ptr<double>(), w.mutable_data_ptr<double>(), scratch, current_stream(),
                              LaunchCheck{});
  return grad_from_weights_cuda(x, W, w);
}

// ---- rkd_distance_loss --------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> rkd_distance_loss_cuda(const at::Tensor& student,
                                                                      const at::Tensor& teacher, double beta,
                                                                      double eps, c10::string_view reduction,
                                                                      bool squared, double mean_offset) {
  constexpr const char* op = "rkd_distance_loss";
  check_pair(op, student, teacher);
  check_beta(op, beta);
  check_eps(op, eps);
  check_mean_offset(op, mean_offset);
  const Reduction red = parse_reduction(op, std::string(reduction));
  const c10::cuda::CUDAGuard guard(student.device());
  const int64_t N = student.size(0);
  const auto out_opts = student.options().dtype(loss_dtype(student, teacher));
  at::Tensor ds = dist64(student, eps, squared), dt = dist64(teacher, eps, squared);
  if (N < 2) return {red == Reduction::None ? at::zeros({N, N}, out_opts) : at::zeros({}, out_opts), ds, dt};
  at::Tensor loss = red == Reduction::None ? at::empty({N, N}, out_opts) : at::empty({}, out_opts);
  Scratch scratch(student.device());
  AT_DISPATCH_FLOATING_TYPES(loss.scalar_type(), "rkd_distance_loss_cuda", [&] {
    distance_loss(ds.const_data_ptr<double>(), dt.const_data_ptr<double>(), N, beta, mean_offset, to_reduce(red),
                  loss.mutable_data_ptr<scalar_t>(), scratch, current_stream(), LaunchCheck{});
  });
  return {loss, ds, dt};
}

std::tuple<at::Tensor, at::Tensor> rkd_distance_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& dist_s,
    const at::Tensor& dist_t, double beta, double eps, c10::string_view reduction, bool squared,
    double mean_offset, bool student_grad, bool teacher_grad) {
  constexpr const char* op = "rkd_distance_loss_backward";
  const Reduction red = check_loss_backward(op, grad, student, teacher, "dist64_student", dist_s, "dist64_teacher",
                                            dist_t, std::string(reduction), 2);
  const int64_t N = student.size(0);
  check_same_device(op, "grad", grad, student);
  check_same_device(op, "dist64_student", dist_s, student);
  check_same_device(op, "dist64_teacher", dist_t, student);
  const c10::cuda::CUDAGuard guard(student.device());
  if (N < 2 || (!student_grad && !teacher_grad)) return zero_loss_grads(student, teacher, student_grad, teacher_grad);
  at::Tensor gstu, gtea;
  std::tie(gstu, gtea) = zero_loss_grads(student, teacher, false, false);
  const at::Tensor up = as_f64(grad);
  // The teacher's gradient is the student's with the roles swapped.
  auto side = [&](const at::Tensor& x, const at::Tensor& a, const at::Tensor& b) {
    at::Tensor W = at::empty_like(a), w = at::empty({N}, a.options());
    Scratch scratch(x.device());
    distance_loss_weights(a.const_data_ptr<double>(), b.const_data_ptr<double>(), up.const_data_ptr<double>(), N,
                          beta, eps, to_reduce(red), squared, mean_offset, W.mutable_data_ptr<double>(),
                          w.mutable_data_ptr<double>(), scratch, current_stream(), LaunchCheck{});
    return grad_from_weights_cuda(x, W, w);
  };
  if (student_grad) gstu = side(student, dist_s, dist_t);
  if (teacher_grad) gtea = side(teacher, dist_t, dist_s);
  return {gstu, gtea};
}

}  // namespace

TORCH_LIBRARY_IMPL(rkd_ext, CUDA, m) {
  m.impl("pairwise_distance", &pairwise_distance_cuda);
  m.impl("pairwise_distance_backward", &pairwise_distance_backward_cuda);
  m.impl("normalized_distance", &normalized_distance_cuda);
  m.impl("normalized_distance_backward", &normalized_distance_backward_cuda);
  m.impl("rkd_distance_loss", &rkd_distance_loss_cuda);
  m.impl("rkd_distance_loss_backward", &rkd_distance_loss_backward_cuda);
}

}  // namespace gpu
}  // namespace rkd
