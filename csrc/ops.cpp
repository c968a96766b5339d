// Every rkd_ext operator schema, in one place, and the _C Python module.
//
// Kernels register per backend (cpu/*_cpu.cpp, cuda/*_cuda.cu); fake kernels,
// autograd and autocast are registered from Python (rkd_ext/ops.py).
//
// Forward ops that have a backward also return the float64 clamped distance
// matrices they computed ("dist64": sqrt(max(s, eps)), zero diagonal), so the
// backward op never recomputes the O(N^2 D) part, and the losses with a
// distance term their "stats" (the inverse means and the mean terms per unit
// upstream gradient, csrc/core/distance_op.h's kLossStats), so it runs no
// reduction for a scalar loss; the Python wrappers keep them for autograd and
// do not expose them.
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#include "build_config.h"
#include "core/product_precision.h"

TORCH_LIBRARY(rkd_ext, m) {
  m.def("pairwise_distance(Tensor x, float eps) -> (Tensor dist, Tensor dist64)");
  m.def("pairwise_distance_backward(Tensor grad, Tensor x, Tensor dist64, float eps) -> Tensor");
  m.def("normalized_distance(Tensor x, float eps) -> (Tensor psi, Tensor dist64)");
  m.def("normalized_distance_backward(Tensor grad, Tensor x, Tensor dist64, float eps) -> Tensor");
  m.def(
      "rkd_distance_loss(Tensor student, Tensor teacher, float beta, float eps, str reduction, bool squared,"
      " float mean_offset)"
      " -> (Tensor loss, Tensor dist64_student, Tensor dist64_teacher, Tensor stats)");
  m.def(
      "rkd_distance_loss_backward(Tensor grad, Tensor student, Tensor teacher, Tensor dist64_student,"
      " Tensor dist64_teacher, Tensor stats, float beta, float eps, str reduction, bool squared, float mean_offset,"
      " bool student_grad, bool teacher_grad)"
      " -> (Tensor grad_student, Tensor grad_teacher)");
  // Angle ops return the float64 squared-distance matrices ("sq") instead:
  // the law of cosines needs s itself.
  m.def("angle_tensor(Tensor x, float eps, bool normalize) -> (Tensor angle, Tensor sq)");
  m.def("angle_tensor_backward(Tensor grad, Tensor x, Tensor sq, float eps, bool normalize) -> Tensor");
  m.def(
      "rkd_angle_loss(Tensor student, Tensor teacher, float beta, float eps, str reduction, bool normalize)"
      " -> (Tensor loss, Tensor sq_student, Tensor sq_teacher)");
  m.def(
      "rkd_angle_loss_backward(Tensor grad, Tensor student, Tensor teacher, Tensor sq_student, Tensor sq_teacher,"
      " float beta, float eps, str reduction, bool normalize, bool student_grad, bool teacher_grad)"
      " -> (Tensor grad_student, Tensor grad_teacher)");
  // Both terms, distance_weight * rkd_distance_loss + angle_weight * rkd_angle_loss, from one squared-distance
  // matrix per input: eps is the distance term's clamp, angle_eps the angle term's; reduction 'mean' or 'sum'.
  m.def(
      "rkd_loss(Tensor student, Tensor teacher, float distance_weight, float angle_weight, float beta, float eps,"
      " float angle_eps, str reduction, bool squared, float mean_offset, bool normalize)"
      " -> (Tensor loss, Tensor sq_student, Tensor sq_teacher, Tensor stats)");
  m.def(
      "rkd_loss_backward(Tensor grad, Tensor student, Tensor teacher, Tensor sq_student, Tensor sq_teacher,"
      " Tensor stats, float distance_weight, float angle_weight, float beta, float eps, float angle_eps, str reduction,"
      " bool squared, float mean_offset, bool normalize, bool student_grad, bool teacher_grad)"
      " -> (Tensor grad_student, Tensor grad_teacher)");
  // Rows [begin, end) of the global batch, for relations sharded by anchor
  // (rkd_ext/distributed.py); no autograd of their own.
  m.def("pair_matrix_rows(Tensor x, int begin, int end, str kind, float eps) -> Tensor");
  m.def("pair_matrix_rows_backward(Tensor grad, Tensor x, Tensor values, int begin, str kind, float eps) -> Tensor");
  m.def("grad_rows(Tensor x, Tensor W, int begin) -> Tensor");
  m.def(
      "angle_loss_rows(Tensor sq_student, Tensor sq_teacher, int begin, int end, float beta, float eps,"
      " bool normalize, bool wide) -> Tensor");
  m.def(
      "angle_grad_rows(Tensor sq_a, Tensor sq_b, Tensor coef, int begin, int end, float beta, float eps,"
      " bool normalize, bool wide) -> (Tensor V, Tensor R)");
}

namespace {

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

pybind11::dict build_info() {
  pybind11::dict d;
  d["torch_version"] = TORCH_VERSION;
  d["torch_full_version"] = RKD_EXT_TORCH_FULL_VERSION;
  d["with_cuda"] = static_cast<bool>(RKD_EXT_WITH_CUDA);
  d["cuda_version"] = RKD_EXT_CUDA_VERSION;
  d["cuda_arch_list"] = RKD_EXT_CUDA_ARCH_LIST;
  d["compiler"] = compiler();
#ifdef _GLIBCXX_USE_CXX11_ABI
  d["cxx11_abi"] = static_cast<bool>(_GLIBCXX_USE_CXX11_ABI);
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rkd_ext compiled kernels; the operators live under torch.ops.rkd_ext";
  m.def("build_info", &build_info, "How this extension was built (a dict).");
  // The process-wide product precision as rkd::ProductPrecision's code (rkd_ext/precision.py).
  m.def("_set_product_precision", [](int mode) { rkd::set_product_precision(static_cast<rkd::ProductPrecision>(mode)); });
  m.def("_product_precision", [] { return static_cast<int>(rkd::product_precision()); });
}
