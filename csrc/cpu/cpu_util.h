// Small building blocks of the CPU kernels: ISA clones, fixed-order
// reductions and parallel grain sizes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <new>

// Hot loops are plain fixed-width loops that the compiler vectorises;
// target_clones builds them for AVX-512 and AVX2+FMA as well as the baseline
// ISA and picks one at load time, so a portable build still runs at the width
// of the machine it lands on.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define RKD_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RKD_CPU_CLONES
#endif

// Helpers called from the cloned hot loops must be inlined into them: an
// out-of-line copy would be compiled for the baseline ISA only.
#if defined(__GNUC__)
#define RKD_INLINE inline __attribute__((always_inline))
#define RKD_LAMBDA_INLINE __attribute__((always_inline))
#else
#define RKD_INLINE inline
#define RKD_LAMBDA_INLINE
#endif

namespace rkd {

// Eight float64 lanes: one AVX-512 register, two AVX2 registers, four SSE2
// registers, depending on the clone. Loads tolerate any 8-byte alignment.
typedef double v8d __attribute__((vector_size(64)));
typedef double v8d_u __attribute__((vector_size(64), aligned(8), may_alias));
RKD_INLINE v8d load8(const double* p) { return *reinterpret_cast<const v8d_u*>(p); }

// Sixteen float32 lanes, the same register width as v8d.
typedef float v16f __attribute__((vector_size(64)));
typedef float v16f_u __attribute__((vector_size(64), aligned(4), may_alias));
RKD_INLINE v16f load16(const float* p) { return *reinterpret_cast<const v16f_u*>(p); }

// A full-register vector of T: v8d for double, v16f for float.
template <typename T>
struct Vec;
template <>
struct Vec<double> {
  using type = v8d;
  static constexpr int64_t lanes = 8;
  RKD_INLINE static type load(const double* p) { return load8(p); }
};
template <>
struct Vec<float> {
  using type = v16f;
  static constexpr int64_t lanes = 16;
  RKD_INLINE static type load(const float* p) { return load16(p); }
};

// Scratch arrays on 64-byte boundaries: a full-register load of a block from
// the C library (16-byte aligned) spans two cache lines at every other
// offset, and the GEMMs' packed panels are read by full-register loads.
struct AlignedDelete {
  template <typename T>
  void operator()(T* p) const {
    ::operator delete[](p, std::align_val_t{64});
  }
};
template <typename T>
using AlignedArray = std::unique_ptr<T[], AlignedDelete>;
template <typename T>
AlignedArray<T> aligned_array(int64_t n) {
  const size_t count = static_cast<size_t>(std::max<int64_t>(n, 1));
  return AlignedArray<T>(static_cast<T*>(::operator new[](count * sizeof(T), std::align_val_t{64})));
}

// Independent partial sums per reduction: lets the compiler vectorise a sum
// without reassociating it, and fixes the summation order (determinism).
constexpr int64_t kLanes = 8;

// The sum of L lanes as a tree: lane l with lane l + L / 2, recursively.
template <int64_t L>
RKD_INLINE double lane_tree(const double* v) {
  if constexpr (L == 1) {
    return v[0];
  } else {
    double h[L / 2];
    for (int64_t l = 0; l < L / 2; ++l) h[l] = v[l] + v[l + L / 2];
    return lane_tree<L / 2>(h);
  }
}

// ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)).
RKD_INLINE double lane_sum(const double* v) { return lane_tree<kLanes>(v); }

// Rows per parallel task such that a task does at least ~16K element operations.
inline int64_t grain_for(int64_t row_len) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(row_len, 1)); }

// sum_k a_k, fixed order.
RKD_INLINE double sum_lanes(const double* a, int64_t n) {
  double acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += a[k + l];
  for (; k < n; ++k) acc[k % kLanes] += a[k];
  return lane_sum(acc);
}

// sum_k f(k), fixed order; f must be cheap and branch-free to vectorise.
template <typename F>
RKD_INLINE double reduce_lanes(int64_t n, const F& f) {
  double acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += f(k + l);
  for (; k < n; ++k) acc[k % kLanes] += f(k);
  return lane_sum(acc);
}

}  // namespace rkd
