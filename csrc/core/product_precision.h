// The process-wide choice of arithmetic for the O(N^2 D) products of the
// distance family (Precision::Fast), in the style of
// torch.backends.cuda.matmul.allow_tf32: set from Python
// (rkd_ext.set_product_precision), read by the backends when an op call
// makes one. Torch-free, so the CPU build, the CUDA build and the host
// emulation share it.
//
//   Auto:    the CPU uses float32 products for non-float64 features in
//            range (today's behaviour); a GPU uses them when its float64
//            rate is at most 1/kSlowFp64Ratio of its float32 rate (consumer
//            parts, fp64 = 1/64; not A100/H100/H200, 1/2).
//   Float64: float64 products everywhere.
//   Float32: float32 products wherever the features are not float64 (the
//            CPU still falls back to float64 outside its float32 range).
//
// The angle family (Precision::F64) is float64 in every mode: the law of
// cosines subtracts squared distances, which a float32 product cannot feed.
#pragma once

#include <atomic>

namespace rkd {

enum class ProductPrecision : int { Auto = 0, Float64 = 1, Float32 = 2 };

// Auto's threshold on a GPU's float32 : float64 throughput ratio
// (cudaDevAttrSingleToDoublePrecisionPerfRatio).
constexpr int kSlowFp64Ratio = 8;

inline std::atomic<int>& product_precision_setting() {
  static std::atomic<int> mode{static_cast<int>(ProductPrecision::Auto)};
  return mode;
}

inline ProductPrecision product_precision() {
  return static_cast<ProductPrecision>(product_precision_setting().load(std::memory_order_relaxed));
}

inline void set_product_precision(ProductPrecision p) {
  product_precision_setting().store(static_cast<int>(p), std::memory_order_relaxed);
}

// Whether a GPU with the given float32 : float64 ratio runs the distance
// family's products in float32.
inline bool gpu_float32_products(ProductPrecision p, int fp64_ratio) {
  return p == ProductPrecision::Float32 || (p == ProductPrecision::Auto && fp64_ratio >= kSlowFp64Ratio);
}

// Whether the CPU may run them in float32 (it still checks the range).
inline bool cpu_float32_products(ProductPrecision p) { return p != ProductPrecision::Float64; }

}  // namespace rkd
