// The CUDA side of the bindings (csrc/core/bind.h): the device guard, scratch
// memory from PyTorch's caching allocator, the current stream and the launch
// check, handed to the GPU backend (gpu_backend.cuh). Stable ABI only
// (../torch_stable.h).
#pragma once

#include <cuda_runtime.h>
#include <torch/csrc/stable/accelerator.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#include "../core/product_precision.h"
#include "../torch_stable.h"
#include "gpu_backend.cuh"

namespace rkd {
namespace gpu {

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("rkd_ext: ") + what + ": " + cudaGetErrorString(err));
}

// Scratch memory for the kernels of one op call, from PyTorch's caching
// allocator on the current stream (uint8 tensors on the operands' device).
// That allocator is stream-ordered, so the blocks may be released when the op
// returns, before its kernels have run.
class Scratch {
 public:
  explicit Scratch(const Tensor& like) : like_(like) {}

  void* bytes(size_t n) {
    if (n == 0) return nullptr;
    held_.push_back(empty(like_, {static_cast<int64_t>(n)}, ScalarType::Byte));
    return held_.back().mutable_data_ptr();
  }

 private:
  Tensor like_;
  std::vector<Tensor> held_;
};

struct LaunchCheck {
  void operator()() const { cuda_check(cudaGetLastError(), "CUDA kernel launch failed"); }
};

// The device's float32 : float64 throughput ratio, queried once per device.
inline int fp64_ratio(int device) {
  constexpr int kDevices = 64;
  static std::atomic<int> known[kDevices] = {};
  const bool cached = device >= 0 && device < kDevices;
  int ratio = cached ? known[device].load(std::memory_order_relaxed) : 0;
  if (ratio == 0) {
    cuda_check(cudaDeviceGetAttribute(&ratio, cudaDevAttrSingleToDoublePrecisionPerfRatio, device),
               "cudaDeviceGetAttribute");
    if (cached) known[device].store(ratio, std::memory_order_relaxed);
  }
  return ratio;
}

// Whether the distance family's products run in float32 on this device
// (product_precision.h).
inline bool float32_products(int device) {
  const ProductPrecision p = product_precision();
  if (p != ProductPrecision::Auto) return p == ProductPrecision::Float32;
  return gpu_float32_products(p, fp64_ratio(device));
}

struct CudaCtx {
  template <typename F>
  static void run(const Tensor& on, double /*work: the CPU's serial threshold*/, const F& f) {
    const int device = on.get_device_index();
    const torch::stable::accelerator::DeviceGuard guard(device);
    Scratch scratch(on);
    GpuBackend<Scratch, LaunchCheck> be(scratch, static_cast<cudaStream_t>(current_cuda_stream(device)),
                                        LaunchCheck{}, float32_products(device),
                                        fp64_ratio(device) >= kSlowFp64Ratio);
    f(be);
  }
};

}  // namespace gpu
}  // namespace rkd
