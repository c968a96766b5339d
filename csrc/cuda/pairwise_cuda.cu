// The per-input steps of every CUDA op, dispatched on the input's dtype: the
// float64 pair matrix and the gradient from the pair weights
// (pairwise_kernel.cuh).
#include <ATen/Dispatch.h>

#include "cuda_binding.h"

namespace rkd {
namespace gpu {

at::Tensor pair_matrix_cuda(const at::Tensor& x_in, PairKind what, double eps) {
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor out = at::empty({N, N}, x.options().dtype(at::kDouble));
  Scratch scratch(x.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rkd_pair_matrix_cuda", [&] {
    pair_matrix(in_ptr<scalar_t>(x), N, D, what, eps, out.mutable_data_ptr<double>(), scratch, current_stream(),
                LaunchCheck{});
  });
  return out;
}

at::Tensor grad_from_weights_cuda(const at::Tensor& x_in, const at::Tensor& W, const at::Tensor& w) {
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor dx = at::empty({N, D}, x.options());
  Scratch scratch(x.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rkd_grad_from_weights_cuda", [&] {
    grad_from_weights(in_ptr<scalar_t>(x), N, D, W.const_data_ptr<double>(), w.const_data_ptr<double>(),
                      out_ptr<scalar_t>(dx), scratch, current_stream(), LaunchCheck{});
  });
  return dx;
}

}  // namespace gpu
}  // namespace rkd
