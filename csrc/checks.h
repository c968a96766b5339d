// Argument checks shared by every op binding (CPU and CUDA): one place that
// decides what a valid input is and how the error reads.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "core/params.h"
#include "torch_stable.h"

namespace rkd {

inline Reduction parse_reduction(const char* op, const std::string& reduction) {
  if (reduction == "mean") return Reduction::Mean;
  if (reduction == "sum") return Reduction::Sum;
  if (reduction == "none") return Reduction::None;
  value_error(op, ": reduction must be 'mean', 'sum' or 'none', got '", reduction, "'");
}

inline void check_features(const char* op, const char* arg, const Tensor& x) {
  RKD_CHECK_VALUE(x.defined(), op, ": ", arg, " must be a tensor, got None");
  RKD_CHECK_VALUE(x.dim() == 2, op, ": ", arg, " must be a 2-D (N, D) tensor, got ", x.dim(),
                    "-D with shape ", shape(x));
  RKD_CHECK_VALUE(x.size(0) > 0, op, ": ", arg, " must hold at least one sample (N > 0), got shape ",
                    shape(x));
  const auto t = x.scalar_type();
  RKD_CHECK_VALUE(t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half || t == ScalarType::BFloat16, op, ": ",
                   arg, " must be float16, bfloat16, float32 or float64, got ", t);
}

inline void check_pair(const char* op, const Tensor& student, const Tensor& teacher) {
  check_features(op, "student", student);
  check_features(op, "teacher", teacher);
  RKD_CHECK_VALUE(student.device() == teacher.device(), op,
                    ": student and teacher must be on the same device, got ", device_of(student), " and ",
                    device_of(teacher));
  RKD_CHECK_VALUE(student.size(0) == teacher.size(0), op,
                    ": student and teacher must have the same batch size, got ", student.size(0), " and ",
                    teacher.size(0));
}

inline void check_eps(const char* op, double eps, const char* arg = "eps") {
  RKD_CHECK_VALUE(std::isfinite(eps) && eps > 0.0, op, ": ", arg, " must be a positive finite number, got ", eps);
}

// A smooth-L1 threshold, mean offset or loss weight.
inline void check_non_negative(const char* op, const char* arg, double value) {
  RKD_CHECK_VALUE(std::isfinite(value) && value >= 0.0, op, ": ", arg, " must be a finite number >= 0, got ",
                    value);
}

inline void check_beta(const char* op, double beta) { check_non_negative(op, "beta", beta); }

inline void check_mean_offset(const char* op, double mean_offset) {
  check_non_negative(op, "mean_offset", mean_offset);
}

// Gradient of a matrix-valued output, checked before a backward kernel reads it.
inline void check_square_grad(const char* op, const Tensor& grad, int64_t n) {
  RKD_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == n && grad.size(1) == n, op,
                    ": grad must have shape (", n, ", ", n, "), got ", shape(grad));
}

// A float64 matrix saved by a forward op and handed to its backward.
inline void check_saved(const char* op, const char* arg, const Tensor& sq, int64_t n) {
  RKD_CHECK_VALUE(sq.dim() == 2 && sq.size(0) == n && sq.size(1) == n && sq.scalar_type() == ScalarType::Double &&
                        sq.is_contiguous(),
                    op, ": ", arg, " must be the contiguous (", n, ", ", n,
                    ") float64 matrix saved by the forward op, got ", sq.scalar_type(), " of shape ", shape(sq));
}

// The loss statistics a distance-term forward saved (rkd::kLossStats float64 values).
inline void check_saved_stats(const char* op, const Tensor& stats, const Tensor& x, int64_t n) {
  RKD_CHECK_VALUE(stats.dim() == 1 && stats.size(0) == n && stats.scalar_type() == ScalarType::Double &&
                        stats.is_contiguous(),
                    op, ": stats must be the contiguous (", n, ",) float64 tensor saved by the forward op, got ",
                    stats.scalar_type(), " of shape ", shape(stats));
  RKD_CHECK_VALUE(stats.device() == x.device(), op, ": stats must be on the features' device ", device_of(x),
                    ", got ", device_of(stats));
}

// A tensor handed to a backward op must live where the features do: the
// kernels dereference its pointer on that device.
inline void check_same_device(const char* op, const char* arg, const Tensor& t, const Tensor& x) {
  RKD_CHECK_VALUE(t.device() == x.device(), op, ": ", arg, " must be on the features' device ", device_of(x),
                    ", got ", device_of(t));
}

// The checks every loss backward op makes: the pair, the reduction, the two
// saved float64 matrices, and the upstream gradient (a scalar for 'mean' and
// 'sum', rank `elem_rank` with every size N for 'none'), all on the
// features' device. Returns the reduction.
inline Reduction check_loss_backward(const char* op, const Tensor& grad, const Tensor& student,
                                     const Tensor& teacher, const char* saved_s_name, const Tensor& saved_s,
                                     const char* saved_t_name, const Tensor& saved_t,
                                     const std::string& reduction, int64_t elem_rank) {
  check_pair(op, student, teacher);
  const Reduction red = parse_reduction(op, reduction);
  const int64_t N = student.size(0);
  check_saved(op, saved_s_name, saved_s, N);
  check_saved(op, saved_t_name, saved_t, N);
  check_same_device(op, "grad", grad, student);
  check_same_device(op, saved_s_name, saved_s, student);
  check_same_device(op, saved_t_name, saved_t, student);
  if (red == Reduction::None) {
    bool ok = grad.dim() == elem_rank;
    for (int64_t d = 0; ok && d < elem_rank; ++d) ok = grad.size(d) == N;
    RKD_CHECK_VALUE(ok, op, ": grad must have ", elem_rank, " dimensions of size ", N, " for reduction 'none', got ",
                      shape(grad));
  } else {
    RKD_CHECK_VALUE(grad.numel() == 1, op, ": grad must be a scalar for reduction '", reduction, "', got shape ",
                      shape(grad));
  }
  return red;
}

// dtype of a loss: float32 for half inputs, float64 if either input is.
inline ScalarType loss_dtype(const Tensor& a, const Tensor& b) {
  return (a.scalar_type() == ScalarType::Double || b.scalar_type() == ScalarType::Double) ? ScalarType::Double : ScalarType::Float;
}

}  // namespace rkd
