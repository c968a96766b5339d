// CUDA bindings of the angle-wise RKD ops: checks, device guard, current
// stream, then the kernels of pairwise_kernel.cuh and angle_kernel.cuh. The
// counterparts of csrc/cpu/angle_cpu.cpp, which they follow case for case.
//
// The triplet arithmetic type is float64 when the result is float64 (the
// loss of a float64 input, the angle tensor of float64 features) and float32
// otherwise; s and the cosine numerators are float64 either way.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <type_traits>

#include "angle_kernel.cuh"
#include "cuda_binding.h"

namespace rkd {
namespace gpu {
namespace {

// s, unclamped (the law of cosines subtracts squared distances).
at::Tensor sq64(const at::Tensor& x) { return pair_matrix_cuda(x, PairKind::Sq, 0.0); }

void check_cube_grad(const char* op, const at::Tensor& grad, int64_t N) {
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == N && grad.size(1) == N && grad.size(2) == N, op,
                    ": grad must have shape (", N, ", ", N, ", ", N, "), got ", grad.sizes());
}

// ---- angle_tensor ---------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> angle_tensor_cuda(const at::Tensor& x, double eps, bool normalize) {
  check_features("angle_tensor", "x", x);
  check_eps("angle_tensor", eps);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0);
  at::Tensor sq = sq64(x);
  at::Tensor out = at::empty({N, N, N}, x.options());
  Scratch scratch(x.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rkd_angle_tensor_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    angle_tensor<acc_t>(sq.const_data_ptr<double>(), N, eps, normalize, out_ptr<scalar_t>(out), scratch,
                        current_stream(), LaunchCheck{});
  });
  return {out, sq};
}

at::Tensor angle_tensor_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& sq, double eps,
                                      bool normalize) {
  constexpr const char* op = "angle_tensor_backward";
  check_features(op, "x", x);
  const int64_t N = x.size(0);
  check_saved(op, "sq", sq, N);
  check_cube_grad(op, grad, N);
  check_same_device(op, "grad", grad, x);
  check_same_device(op, "sq", sq, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor up = grad.to(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
  at::Tensor W = at::empty_like(sq), w = at::empty({N}, sq.options());
  Scratch scratch(x.device());
  AT_DISPATCH_FLOATING_TYPES(up.scalar_type(), "rkd_angle_tensor_backward_cuda", [&] {
    const Edges<scalar_t> e = make_edges<scalar_t>(sq.const_data_ptr<double>(), N, eps, normalize, scratch,
                                                   current_stream(), LaunchCheck{});
    angle_tensor_weights(e, up.const_data_ptr<scalar_t>(), N, eps, normalize, W.mutable_data_ptr<double>(),
                         w.mutable_data_ptr<double>(), scratch, current_stream(), LaunchCheck{});
  });
  return grad_from_weights_cuda(x, W, w);
}

// ---- rkd_angle_loss -----------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> rkd_angle_loss_cuda(const at::Tensor& student,
                                                                   const at::Tensor& teacher, double beta,
                                                                   double eps, c10::string_view reduction,
                                                                   bool normalize) {
  constexpr const char* op = "rkd_angle_loss";
  check_pair(op, student, teacher);
  check_beta(op, beta);
  check_eps(op, eps);
  const Reduction red = parse_reduction(op, std::string(reduction));
  const c10::cuda::CUDAGuard guard(student.device());
  const int64_t N = student.size(0);
  const auto out_opts = student.options().dtype(loss_dtype(student, teacher));
  at::Tensor sq_s = sq64(student), sq_t = sq64(teacher);
  if (N < 3) {
    return {red == Reduction::None ? at::zeros({N, N, N}, out_opts) : at::zeros({}, out_opts), sq_s, sq_t};
  }
  at::Tensor loss = red == Reduction::None ? at::empty({N, N, N}, out_opts) : at::empty({}, out_opts);
  Scratch scratch(student.device());
  AT_DISPATCH_FLOATING_TYPES(loss.scalar_type(), "rkd_angle_loss_cuda", [&] {
    const Edges<scalar_t> a = make_edges<scalar_t>(sq_s.const_data_ptr<double>(), N, eps, normalize, scratch,
                                                   current_stream(), LaunchCheck{});
    const Edges<scalar_t> b = make_edges<scalar_t>(sq_t.const_data_ptr<double>(), N, eps, normalize, scratch,
                                                   current_stream(), LaunchCheck{});
    angle_loss(a, b, N, beta, to_reduce(red), loss.mutable_data_ptr<scalar_t>(), scratch, current_stream(),
               LaunchCheck{});
  });
  return {loss, sq_s, sq_t};
}

std::tuple<at::Tensor, at::Tensor> rkd_angle_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& sq_s,
    const at::Tensor& sq_t, double beta, double eps, c10::string_view reduction, bool normalize, bool student_grad,
    bool teacher_grad) {
  constexpr const char* op = "rkd_angle_loss_backward";
  const Reduction red = check_loss_backward(op, grad, student, teacher, "sq_student", sq_s, "sq_teacher", sq_t,
                                            std::string(reduction), 3);
  const int64_t N = student.size(0);
  check_same_device(op, "grad", grad, student);
  check_same_device(op, "sq_student", sq_s, student);
  check_same_device(op, "sq_teacher", sq_t, student);
  const c10::cuda::CUDAGuard guard(student.device());
  if (N < 3 || (!student_grad && !teacher_grad)) return zero_loss_grads(student, teacher, student_grad, teacher_grad);
  at::Tensor gstu, gtea;
  std::tie(gstu, gtea) = zero_loss_grads(student, teacher, false, false);
  const at::ScalarType acc = loss_dtype(student, teacher);
  // 'none': the (N, N, N) upstream gradient in the arithmetic type; otherwise
  // the float64 scalar, read on the device.
  const at::Tensor up = grad.to(red == Reduction::None ? acc : at::kDouble).contiguous();
  Scratch scratch(student.device());
  AT_DISPATCH_FLOATING_TYPES(acc, "rkd_angle_loss_backward_cuda", [&] {
    const Edges<scalar_t> a = make_edges<scalar_t>(sq_s.const_data_ptr<double>(), N, eps, normalize, scratch,
                                                   current_stream(), LaunchCheck{});
    const Edges<scalar_t> b = make_edges<scalar_t>(sq_t.const_data_ptr<double>(), N, eps, normalize, scratch,
                                                   current_stream(), LaunchCheck{});
    // The teacher's gradient is the student's with the roles swapped: the
    // residual changes sign, and so does dL/dA.
    auto side = [&](const at::Tensor& x, const Edges<scalar_t>& mine, const Edges<scalar_t>& other) {
      at::Tensor W = at::empty_like(sq_s), w = at::empty({N}, sq_s.options());
      angle_loss_weights(mine, other, up.const_data_ptr(), to_reduce(red), N, beta, eps, normalize,
                         W.mutable_data_ptr<double>(), w.mutable_data_ptr<double>(), scratch, current_stream(),
                         LaunchCheck{});
      return grad_from_weights_cuda(x, W, w);
    };
    if (student_grad) gstu = side(student, a, b);
    if (teacher_grad) gtea = side(teacher, b, a);
  });
  return {gstu, gtea};
}

}  // namespace

TORCH_LIBRARY_IMPL(rkd_ext, CUDA, m) {
  m.impl("angle_tensor", &angle_tensor_cuda);
  m.impl("angle_tensor_backward", &angle_tensor_backward_cuda);
  m.impl("rkd_angle_loss", &rkd_angle_loss_cuda);
  m.impl("rkd_angle_loss_backward", &rkd_angle_loss_backward_cuda);
}

}  // namespace gpu
}  // namespace rkd
