// The CUDA side of the bindings (csrc/core/bind.h): the device guard, scratch
// memory from PyTorch's caching allocator, the current stream and the launch
// check, handed to the GPU backend (gpu_backend.cuh).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <atomic>
#include <vector>

#include "../core/product_precision.h"
#include "gpu_backend.cuh"

namespace rkd {
namespace gpu {

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

// The device's float32 : float64 throughput ratio, queried once per device.
inline int fp64_ratio(c10::DeviceIndex device) {
  constexpr int kDevices = 64;
  static std::atomic<int> known[kDevices] = {};
  const bool cached = device >= 0 && device < kDevices;
  int ratio = cached ? known[device].load(std::memory_order_relaxed) : 0;
  if (ratio == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&ratio, cudaDevAttrSingleToDoublePrecisionPerfRatio, device));
    if (cached) known[device].store(ratio, std::memory_order_relaxed);
  }
  return ratio;
}

// Whether the distance family's products run in float32 on this device
// (product_precision.h).
inline bool float32_products(c10::DeviceIndex device) {
  const ProductPrecision p = product_precision();
  if (p != ProductPrecision::Auto) return p == ProductPrecision::Float32;
  return gpu_float32_products(p, fp64_ratio(device));
}

struct CudaCtx {
  // c10's getCurrentCUDAStream is the one at::cuda re-exports; this header
  // avoids ATen/cuda/CUDAContext.h, which needs the cuBLAS and cuSPARSE headers.
  template <typename F>
  static void run(const at::Device& device, const F& f) {
    const c10::cuda::CUDAGuard guard(device);
    Scratch scratch(device);
    const c10::DeviceIndex index = guard.current_device().index();
    GpuBackend<Scratch, LaunchCheck> be(scratch, c10::cuda::getCurrentCUDAStream().stream(), LaunchCheck{},
                                        float32_products(index), fp64_ratio(index) >= kSlowFp64Ratio);
    f(be);
  }
};

}  // namespace gpu
}  // namespace rkd
