// The vocabulary of the op layer (csrc/core/*_op.h), shared by every backend:
// what an op's operands are and how it is configured. Torch-free, so that the
// CPU build, the CUDA build and the host emulation of the CUDA kernels
// include the same definitions.
#pragma once

#include <cstdint>

namespace rkd {

// Element types of features, outputs and upstream gradients. The values are
// the emulator's ABI (scripts/emulate_cuda.py).
enum class Dtype : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

enum class Reduction : int { None = 0, Mean = 1, Sum = 2 };

// What a pair matrix holds: s_ij = ||x_i - x_j||^2, max(s_ij, eps), or
// sqrt(max(s_ij, eps)); the diagonal is exactly 0 in all three.
enum class PairKind : int { Sq = 0, SqClamped = 1, Dist = 2 };

// Arithmetic of the O(N^2 D) products. F64: float64 throughout (what the law
// of cosines needs: it subtracts squared distances). Fast: a backend may use
// float32 products with float64 accumulation for non-float64 features (the
// distance family tolerates it: it never subtracts squared distances); close
// pairs are recomputed exactly either way.
enum class Precision { F64, Fast };

// Contiguous row-major (N, D) features on the backend's device.
struct Features {
  const void* data;
  Dtype dtype;
  int64_t N, D;
};

// A contiguous operand (an upstream gradient) and a contiguous output. An
// output with a null pointer is not wanted.
struct Operand {
  const void* data;
  Dtype dtype;
};

struct Buffer {
  void* data;
  Dtype dtype;
};

// The rows [begin, end) of an N x N relation matrix (the anchors of a shard
// of the global batch); all_rows(N) is the whole matrix.
struct Rows {
  int64_t begin, end;
  int64_t size() const { return end - begin; }
};

inline Rows all_rows(int64_t N) { return {0, N}; }

struct DistanceArgs {
  double beta, eps;
  Reduction reduction;
  bool squared;        // s instead of d (mdistiller's squared=True)
  double mean_offset;  // added to the mean before normalising (KD_Lib's 1e-7)
};

struct AngleArgs {
  double beta, eps;
  Reduction reduction;
  bool normalize;  // false: dot products of raw difference vectors (KD_Lib's normalize=False)
};

// Calls f(T()) with T the host element type of dtype: Half and BFloat16 are
// the backend's 16-bit types (c10's on the CPU, CUDA's on the GPU).
template <typename Half, typename BFloat16, typename F>
void visit_dtype(Dtype dtype, const F& f) {
  switch (dtype) {
    case Dtype::Float32: f(float()); break;
    case Dtype::Float64: f(double()); break;
    case Dtype::Float16: f(Half()); break;
    case Dtype::BFloat16: f(BFloat16()); break;
  }
}

}  // namespace rkd
