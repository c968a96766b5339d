// Per-element RKD math shared by the CPU and CUDA kernels.
//
// Every formula the kernels evaluate lives here once, as an inline function
// that compiles for the host and (under nvcc) for the device, so the two
// backends cannot drift apart. Nothing in this header depends on torch.
//
// Conventions: `s` is a squared Euclidean distance, `eps` the clamp applied
// to it (the reference's `clamp(min=eps)` before the square root), `beta` the
// smooth-L1 threshold. NaN inputs propagate: no comparison here is written so
// that a NaN silently turns into a finite value.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RKD_HD __host__ __device__ __forceinline__
#else
#define RKD_HD inline
#endif

namespace rkd {

// max(s, eps) that keeps NaN (std::max/fmax would not, or not portably).
template <typename T>
RKD_HD T clamp_sq(T s, T eps) {
  return s < eps ? eps : s;
}

// Off-diagonal distance of the reference: sqrt(max(s, eps)).
template <typename T>
RKD_HD T dist_from_sq(T s, T eps) {
  return sqrt(clamp_sq(s, eps));
}

// d dist / d s, written in terms of the clamped distance d = dist_from_sq(s)
// with sqrt_eps = sqrt(eps): 1 / (2 d) where the clamp is inactive, 0 where
// it holds (d == sqrt(eps)) and on the diagonal (d == 0). Exactly coincident
// points thus get a zero subgradient rather than the reference's
// 1/eps-scaled one. NaN passes through.
template <typename T>
RKD_HD T ddist_dsq(T d, T sqrt_eps) {
  return d <= sqrt_eps ? T(0) : T(0.5) / d;
}

// d max(s, eps) / d s through the clamped value v = max(s, eps): 0 where the
// clamp holds (and on the diagonal, v == 0), 1 elsewhere.
template <typename T>
RKD_HD T dclamped_dsq(T v, T eps) {
  return v <= eps ? T(0) : T(1);
}

// Smooth-L1 (Huber with threshold beta), as torch.nn.functional.smooth_l1_loss:
// 0.5 r^2 / beta when |r| < beta, |r| - 0.5 beta otherwise; beta == 0 is L1.
template <typename T>
RKD_HD T smooth_l1(T r, T beta) {
  const T a = r < T(0) ? -r : r;
  return a < beta ? T(0.5) * r * r / beta : a - T(0.5) * beta;
}

// d smooth_l1 / d r: r / beta inside the quadratic zone, sign(r) outside
// (NaN stays NaN, 0 stays 0).
template <typename T>
RKD_HD T smooth_l1_grad(T r, T beta) {
  const T a = r < T(0) ? -r : r;
  const T outer = r > T(0) ? T(1) : (r < T(0) ? T(-1) : r);
  return a < beta ? r / beta : outer;
}

}  // namespace rkd
