// What every CUDA op binding shares: the glue between torch tensors and the
// torch-free kernels (device element types, scratch memory, the launch
// check), and the two per-input steps of pairwise_cuda.cu.
//
// Bindings check their arguments (../checks.h), set a device guard on the
// inputs' device, and launch on the current stream; the helpers below assume
// both.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "../checks.h"
#include "pairwise_kernel.cuh"

namespace rkd {
namespace gpu {

// The kernels' element type for a torch scalar type: c10::Half and
// c10::BFloat16 have the layout of __half and __nv_bfloat16.
template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<c10::Half> {
  using type = __half;
};
template <>
struct DeviceType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
const typename DeviceType<T>::type* in_ptr(const at::Tensor& t) {
  return reinterpret_cast<const typename DeviceType<T>::type*>(t.const_data_ptr<T>());
}

template <typename T>
typename DeviceType<T>::type* out_ptr(at::Tensor& t) {
  return reinterpret_cast<typename DeviceType<T>::type*>(t.mutable_data_ptr<T>());
}

// Scratch memory for the kernels of one op call, from PyTorch's caching
// allocator on the current stream. That allocator is stream-ordered, so the
// blocks may be released when the op returns, before its kernels have run.
class Scratch {
 public:
  explicit Scratch(const at::Device& device) : opts_(at::TensorOptions().device(device).dtype(at::kByte)) {}

  void* bytes(size_t n) {
    if (n == 0) return nullptr;
    held_.push_back(at::empty({static_cast<int64_t>(n)}, opts_));
    return held_.back().mutable_data_ptr();
  }

 private:
  at::TensorOptions opts_;
  std::vector<at::Tensor> held_;
};

struct LaunchCheck {
  void operator()() const { C10_CUDA_KERNEL_LAUNCH_CHECK(); }
};

// c10's getCurrentCUDAStream is the one at::cuda re-exports; this header
// avoids ATen/cuda/CUDAContext.h, which needs the cuBLAS and cuSPARSE headers.
inline Reduce to_reduce(Reduction r) {
  return r == Reduction::None ? Reduce::None : (r == Reduction::Mean ? Reduce::Mean : Reduce::Sum);
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// A tensor handed to a backward op must live where the features do: the
// kernels dereference its pointer on that device.
inline void check_same_device(const char* op, const char* arg, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", arg, " must be on the features' device ", x.device(),
                    ", got ", t.device());
}

// The (N, N) float64 pair matrix of x (any layout).
at::Tensor pair_matrix_cuda(const at::Tensor& x, PairKind what, double eps);

// dL/dx (contiguous, x's dtype) from the weights W (N, N) and their row sums
// w, both contiguous float64 (see pairwise_kernel.cuh).
at::Tensor grad_from_weights_cuda(const at::Tensor& x, const at::Tensor& W, const at::Tensor& w);

}  // namespace gpu
}  // namespace rkd
