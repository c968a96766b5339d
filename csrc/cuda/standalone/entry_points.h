// Every op of the op layer (csrc/core/*_op.h) as a C function on raw
// pointers, run on the GPU backend (gpu_backend.cuh): what the host emulator
// exposes to scripts/emulate_cuda.py (emulate.cpp) and what plain nvcc
// compiles for the device (compile_check.cu), so that both go through the
// same op sequences as the CUDA bindings.
//
// The including file defines, before including this header, a struct
// Platform with `static void* alloc(size_t)`, `static void release(void*)`
// and `static void check()` (run after every launch). Pointers are device
// memory (host memory under the emulator); dtype codes are rkd::Dtype's,
// reduction codes rkd::Reduction's. Outputs are allocated by the caller with the shapes
// of the op schemas (csrc/ops.cpp); a null gradient output is not wanted.
#pragma once

#include <vector>

#include "../../core/product_precision.h"
#include "../../core/rkd_loss_op.h"
#include "../../core/shard_op.h"
#include "../gpu_backend.cuh"

namespace rkd {
namespace entry {

// Scratch memory of one op call, released when it returns.
struct Scratch {
  std::vector<void*> held;
  void* bytes(size_t n) {
    void* p = n == 0 ? nullptr : Platform::alloc(n);
    if (p != nullptr) held.push_back(p);
    return p;
  }
  ~Scratch() {
    for (void* p : held) Platform::release(p);
  }
};

struct Check {
  void operator()() const { Platform::check(); }
};

// The float32 : float64 throughput ratio of the emulated GPU, which
// ProductPrecision::Auto decides by (rkd_set_product_precision); an H200's 2
// until set.
inline int& emulated_fp64_ratio() {
  static int ratio = 2;
  return ratio;
}

template <typename F>
void with_backend(const F& f) {
  Scratch scratch;
  gpu::GpuBackend<Scratch, Check> be(scratch, nullptr, Check{},
                                     gpu_float32_products(product_precision(), emulated_fp64_ratio()),
                                     emulated_fp64_ratio() >= kSlowFp64Ratio);
  f(be);
}

inline Features features(const void* x, int dtype, int64_t N, int64_t D) { return {x, static_cast<Dtype>(dtype), N, D}; }
inline Buffer buffer(void* p, int dtype) { return {p, static_cast<Dtype>(dtype)}; }
inline Operand operand(const void* p, int dtype) { return {p, static_cast<Dtype>(dtype)}; }

inline RkdLossArgs rkd_loss_args(double distance_weight, double angle_weight, double beta, double eps,
                                 double angle_eps, int reduction, int squared, double mean_offset, int normalize) {
  const Reduction red = static_cast<Reduction>(reduction);
  return {distance_weight, angle_weight, {beta, eps, red, squared != 0, mean_offset},
          {beta, angle_eps, red, normalize != 0}};
}

}  // namespace entry
}  // namespace rkd

extern "C" {

// The process-wide product precision (rkd::ProductPrecision's code) and the
// emulated GPU's float32 : float64 ratio, for the op calls that follow.
void rkd_set_product_precision(int mode, int fp64_ratio) {
  rkd::set_product_precision(static_cast<rkd::ProductPrecision>(mode));
  rkd::entry::emulated_fp64_ratio() = fp64_ratio;
}

// pairwise_distance (normalized = 0) or normalized_distance (1).
void rkd_distance_matrix(int normalized, int dtype, const void* x, int64_t N, int64_t D, double eps, double* d64,
                         void* out) {
  using namespace rkd::entry;
  with_backend([&](auto& be) {
    if (normalized)
      rkd::normalized_distance(be, features(x, dtype, N, D), eps, d64, buffer(out, dtype));
    else
      rkd::pairwise_distance(be, features(x, dtype, N, D), eps, d64, buffer(out, dtype));
  });
}

void rkd_distance_matrix_backward(int normalized, int grad_dtype, const void* grad, int dtype, const void* x, int64_t N,
                                  int64_t D, const double* d64, double eps, void* dx) {
  using namespace rkd::entry;
  with_backend([&](auto& be) {
    if (normalized)
      rkd::normalized_distance_backward(be, operand(grad, grad_dtype), features(x, dtype, N, D), d64, eps,
                                        buffer(dx, dtype));
    else
      rkd::pairwise_distance_backward(be, operand(grad, grad_dtype), features(x, dtype, N, D), d64, eps,
                                      buffer(dx, dtype));
  });
}

void rkd_distance_loss_c(int ds_, const void* s, int dt_, const void* t, int64_t N, int64_t Ds, int64_t Dt, double beta,
                         double eps, int reduction, int squared, double mean_offset, double* dist_s, double* dist_t,
                         double* stats, int loss_dtype, void* loss) {
  using namespace rkd::entry;
  const rkd::DistanceArgs args{beta, eps, static_cast<rkd::Reduction>(reduction), squared != 0, mean_offset};
  with_backend([&](auto& be) {
    rkd::rkd_distance_loss(be, features(s, ds_, N, Ds), features(t, dt_, N, Dt), args, dist_s, dist_t, stats,
                           buffer(loss, loss_dtype));
  });
}

void rkd_distance_loss_backward_c(int grad_dtype, const void* grad, int ds_, const void* s, int dt_, const void* t,
                                  int64_t N, int64_t Ds, int64_t Dt, const double* dist_s, const double* dist_t,
                                  const double* stats, double beta, double eps, int reduction, int squared, double mean_offset, void* gs,
                                  void* gt) {
  using namespace rkd::entry;
  const rkd::DistanceArgs args{beta, eps, static_cast<rkd::Reduction>(reduction), squared != 0, mean_offset};
  with_backend([&](auto& be) {
    rkd::rkd_distance_loss_backward(be, operand(grad, grad_dtype), features(s, ds_, N, Ds), features(t, dt_, N, Dt),
                                    dist_s, dist_t, stats, args, buffer(gs, ds_), buffer(gt, dt_));
  });
}

void rkd_angle_tensor_c(int dtype, const void* x, int64_t N, int64_t D, double eps, int normalize, double* sq,
                        void* out) {
  using namespace rkd::entry;
  const rkd::AngleArgs args{0.0, eps, rkd::Reduction::None, normalize != 0};
  with_backend([&](auto& be) { rkd::angle_tensor(be, features(x, dtype, N, D), args, sq, buffer(out, dtype)); });
}

void rkd_angle_tensor_backward_c(int grad_dtype, const void* grad, int dtype, const void* x, int64_t N, int64_t D,
                                 const double* sq, double eps, int normalize, void* dx) {
  using namespace rkd::entry;
  const rkd::AngleArgs args{0.0, eps, rkd::Reduction::None, normalize != 0};
  with_backend([&](auto& be) {
    rkd::angle_tensor_backward(be, operand(grad, grad_dtype), features(x, dtype, N, D), sq, args, buffer(dx, dtype));
  });
}

void rkd_angle_loss_c(int ds_, const void* s, int dt_, const void* t, int64_t N, int64_t Ds, int64_t Dt, double beta,
                      double eps, int reduction, int normalize, double* sq_s, double* sq_t, int loss_dtype,
                      void* loss) {
  using namespace rkd::entry;
  const rkd::AngleArgs args{beta, eps, static_cast<rkd::Reduction>(reduction), normalize != 0};
  with_backend([&](auto& be) {
    rkd::rkd_angle_loss(be, features(s, ds_, N, Ds), features(t, dt_, N, Dt), args, sq_s, sq_t,
                        buffer(loss, loss_dtype));
  });
}

void rkd_angle_loss_backward_c(int grad_dtype, const void* grad, int ds_, const void* s, int dt_, const void* t,
                               int64_t N, int64_t Ds, int64_t Dt, const double* sq_s, const double* sq_t, double beta,
                               double eps, int reduction, int normalize, int loss_dtype, void* gs, void* gt) {
  using namespace rkd::entry;
  const rkd::AngleArgs args{beta, eps, static_cast<rkd::Reduction>(reduction), normalize != 0};
  with_backend([&](auto& be) {
    rkd::rkd_angle_loss_backward(be, operand(grad, grad_dtype), features(s, ds_, N, Ds), features(t, dt_, N, Dt),
                                 sq_s, sq_t, args, static_cast<rkd::Dtype>(loss_dtype), buffer(gs, ds_),
                                 buffer(gt, dt_));
  });
}

// ---- both terms (rkd_loss_op.h); reduction 'mean' or 'sum' ----

void rkd_loss_c(int ds_, const void* s, int dt_, const void* t, int64_t N, int64_t Ds, int64_t Dt,
                double distance_weight, double angle_weight, double beta, double eps, double angle_eps, int reduction,
                int squared, double mean_offset, int normalize, double* sq_s, double* sq_t, double* stats,
                int loss_dtype, void* loss) {
  using namespace rkd::entry;
  const rkd::RkdLossArgs args = rkd_loss_args(distance_weight, angle_weight, beta, eps, angle_eps, reduction, squared,
                                              mean_offset, normalize);
  with_backend([&](auto& be) {
    rkd::rkd_loss(be, features(s, ds_, N, Ds), features(t, dt_, N, Dt), args, sq_s, sq_t, stats,
                  buffer(loss, loss_dtype));
  });
}

void rkd_loss_backward_c(int grad_dtype, const void* grad, int ds_, const void* s, int dt_, const void* t, int64_t N,
                         int64_t Ds, int64_t Dt, const double* sq_s, const double* sq_t, const double* stats,
                         double distance_weight,
                         double angle_weight, double beta, double eps, double angle_eps, int reduction, int squared,
                         double mean_offset, int normalize, int loss_dtype, void* gs, void* gt) {
  using namespace rkd::entry;
  const rkd::RkdLossArgs args = rkd_loss_args(distance_weight, angle_weight, beta, eps, angle_eps, reduction, squared,
                                              mean_offset, normalize);
  with_backend([&](auto& be) {
    rkd::rkd_loss_backward(be, operand(grad, grad_dtype), features(s, ds_, N, Ds), features(t, dt_, N, Dt), sq_s,
                           sq_t, stats, args, static_cast<rkd::Dtype>(loss_dtype), buffer(gs, ds_), buffer(gt, dt_));
  });
}

// ---- rows of the global batch (shard_op.h); kind codes are rkd::PairKind's ----

void rkd_pair_matrix_rows_c(int dtype, const void* x, int64_t N, int64_t D, int64_t begin, int64_t end, int kind,
                            double eps, double* out) {
  using namespace rkd::entry;
  with_backend([&](auto& be) {
    rkd::pair_matrix_rows(be, features(x, dtype, N, D), rkd::Rows{begin, end}, static_cast<rkd::PairKind>(kind), eps,
                          out);
  });
}

void rkd_pair_matrix_rows_backward_c(int grad_dtype, const void* grad, int dtype, const void* x, int64_t N, int64_t D,
                                     const double* values, int64_t begin, int64_t end, int kind, double eps, void* dx) {
  using namespace rkd::entry;
  with_backend([&](auto& be) {
    rkd::pair_matrix_rows_backward(be, operand(grad, grad_dtype), features(x, dtype, N, D), values,
                                   rkd::Rows{begin, end}, static_cast<rkd::PairKind>(kind), eps, buffer(dx, dtype));
  });
}

void rkd_grad_rows_c(int dtype, const void* x, int64_t N, int64_t D, const double* W, int64_t begin, int64_t end,
                     void* dx) {
  using namespace rkd::entry;
  with_backend([&](auto& be) {
    rkd::grad_rows(be, features(x, dtype, N, D), W, rkd::Rows{begin, end}, buffer(dx, dtype));
  });
}

void rkd_angle_loss_rows_c(const double* sq_s, const double* sq_t, int64_t N, int64_t begin, int64_t end, double beta,
                           double eps, int normalize, int wide, double* out) {
  using namespace rkd::entry;
  const rkd::AngleArgs args{beta, eps, rkd::Reduction::Sum, normalize != 0};
  with_backend([&](auto& be) {
    rkd::angle_loss_rows(be, sq_s, sq_t, N, rkd::Rows{begin, end}, args, wide != 0, buffer(out, 1));
  });
}

void rkd_angle_grad_rows_c(const double* sq_a, const double* sq_b, const double* coef, int64_t N, int64_t begin,
                           int64_t end, double beta, double eps, int normalize, int wide, double* V, double* R) {
  using namespace rkd::entry;
  const rkd::AngleArgs args{beta, eps, rkd::Reduction::Sum, normalize != 0};
  with_backend([&](auto& be) {
    rkd::angle_grad_rows(be, sq_a, sq_b, coef, N, rkd::Rows{begin, end}, args, wide != 0, buffer(V, 1),
                         buffer(R, 1));
  });
}

}  // extern "C"
