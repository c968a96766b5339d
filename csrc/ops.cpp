// Every rkd_ext operator schema, in one place, and the _C Python module: a
// limited-API module with no functions of its own, whose import loads this
// library and so registers the operators (torch_stable.h: only the stable ABI).
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
#include <Python.h>

#include <string>

#include "build_config.h"
#include "core/product_precision.h"
#include "core/scratch_cache.h"
#include "core/serial_work.h"
#include "cpu/cpu_pool.h"
#include "torch_stable.h"

STABLE_TORCH_LIBRARY(rkd_ext, m) {
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
  // How this library was built, and the process-wide product precision
  // (rkd_ext/_ext.py, rkd_ext/precision.py); no tensor arguments.
  m.def("_build_info() -> str");
  m.def("_product_precision() -> int");
  m.def("_set_product_precision(int mode) -> ()");
  // The CPU's serial threshold (csrc/core/serial_work.h).
  m.def("_cpu_serial_work() -> float");
  m.def("_set_cpu_serial_work(float work) -> ()");
  m.def("_cpu_parallel_regions() -> int");
  m.def("_cpu_region_chunks() -> int");
  m.def("_set_cpu_region_chunks(int chunks) -> ()");
  // Which threads run the CPU's parallel regions (csrc/cpu/cpu_pool.h): 0
  // torch's intra-op pool, 1 the kernels' own; and the own pool's workers.
  m.def("_cpu_pool() -> int");
  m.def("_set_cpu_pool(int kind) -> ()");
  m.def("_cpu_pool_workers() -> int");
  m.def("_cpu_pool_worker_chunks() -> int");
  // The CPU's contention guard (csrc/core/serial_work.h): its hold in seconds
  // (0 turns it off), the holds it has started, and a way to start one as
  // its ledger does.
  m.def("_cpu_contention_hold() -> float");
  m.def("_set_cpu_contention_hold(float seconds) -> ()");
  m.def("_cpu_contention_holds() -> int");
  m.def("_cpu_mark_contended() -> ()");
  // The scratch the CPU kernels keep between calls (csrc/core/scratch_cache.h):
  // its bytes, and a way to free it.
  m.def("_cpu_scratch_bytes() -> int");
  m.def("_cpu_release_scratch() -> ()");
  // Takes scratch of `first` and then of `second` bytes (0: none) at once,
  // and gives them back in that order: the tests' handle on the cache's policy.
  m.def("_cpu_scratch_cycle(int first, int second) -> ()");
  m.def("_cpu_scratch_hold(float seconds) -> ()");
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

// One "key=value" line each; rkd_ext/_ext.py parses it.
std::string build_info() {
  std::string out;
  const auto add = [&](const char* key, const std::string& value) { out += std::string(key) + "=" + value + "\n"; };
  add("torch_version", TORCH_VERSION);
  add("torch_full_version", RKD_EXT_TORCH_FULL_VERSION);
  add("stable_abi_floor", std::to_string((TORCH_TARGET_VERSION >> 56) & 0xff) + "." +
                              std::to_string((TORCH_TARGET_VERSION >> 48) & 0xff));
  add("with_cuda", RKD_EXT_WITH_CUDA ? "1" : "0");
  add("cuda_version", RKD_EXT_CUDA_VERSION);
  add("cuda_arch_list", RKD_EXT_CUDA_ARCH_LIST);
  add("compiler", compiler());
  return out;
}

int64_t get_product_precision() { return static_cast<int64_t>(rkd::product_precision()); }

void set_product_precision(int64_t mode) {
  RKD_CHECK_VALUE(mode >= 0 && mode <= 2, "_set_product_precision: mode must be 0, 1 or 2, got ", mode);
  rkd::set_product_precision(static_cast<rkd::ProductPrecision>(mode));
}

double get_cpu_serial_work() { return rkd::serial_work_setting().load(); }

void set_cpu_serial_work(double work) {
  RKD_CHECK_VALUE(work >= 0.0, "_set_cpu_serial_work: work must be >= 0 (element operations), got ", work);
  rkd::serial_work_setting().store(work);
}

int64_t cpu_parallel_regions() { return rkd::parallel_regions().load(); }

int64_t get_cpu_region_chunks() { return rkd::region_chunks_setting().load(); }

void set_cpu_region_chunks(int64_t chunks) {
  RKD_CHECK_VALUE(chunks >= 1 && chunks <= 64, "_set_cpu_region_chunks: chunks must be within [1, 64], got ", chunks);
  rkd::region_chunks_setting().store(chunks);
}

int64_t get_cpu_pool() { return rkd::pool_setting().load(); }

void set_cpu_pool(int64_t kind) {
  RKD_CHECK_VALUE(kind == 0 || kind == 1, "_set_cpu_pool: kind must be 0 (torch's pool) or 1 (the own pool), got ",
                  kind);
  rkd::pool_setting().store(static_cast<int>(kind));
}

int64_t cpu_pool_workers() { return rkd::CpuPool::get().workers(); }

int64_t cpu_pool_worker_chunks() { return rkd::CpuPool::get().worker_chunks(); }

double get_cpu_contention_hold() { return static_cast<double>(rkd::contention_hold_ns().load()) * 1e-9; }

void set_cpu_contention_hold(double seconds) {
  RKD_CHECK_VALUE(seconds >= 0.0 && seconds <= 3600.0,
                  "_set_cpu_contention_hold: seconds must be within [0, 3600], got ", seconds);
  rkd::contention_hold_ns().store(static_cast<int64_t>(seconds * 1e9));
  if (seconds == 0.0) rkd::contended_until_ns().store(0);
}

int64_t cpu_contention_holds() { return rkd::contention_holds().load(); }

void cpu_mark_contended() { rkd::mark_contended(); }

int64_t cpu_scratch_bytes() { return static_cast<int64_t>(rkd::ScratchCache::held_bytes()); }

void cpu_release_scratch() { rkd::ScratchCache::release(); }

void cpu_scratch_cycle(int64_t first, int64_t second) {
  RKD_CHECK_VALUE(first >= 0 && second >= 0, "_cpu_scratch_cycle: sizes must be >= 0 bytes, got ", first, " and ",
                  second);
  const auto take = [](int64_t bytes) {
    return bytes ? rkd::ScratchCache::take_for<unsigned char>(static_cast<size_t>(bytes)) : rkd::ScratchCache::Ptr();
  };
  rkd::ScratchCache::Ptr a = take(first);
  rkd::ScratchCache::Ptr b = take(second);
  a.reset();
  b.reset();
}

void cpu_scratch_hold(double seconds) {
  RKD_CHECK_VALUE(seconds >= 0.0 && seconds <= 10.0, "_cpu_scratch_hold: seconds must be within [0, 10], got ",
                  seconds);
  rkd::ScratchCache::hold_lock_for(static_cast<int64_t>(seconds * 1e9));
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(rkd_ext, CompositeExplicitAutograd, m) {
  m.impl("_build_info", TORCH_BOX(&build_info));
  m.impl("_product_precision", TORCH_BOX(&get_product_precision));
  m.impl("_set_product_precision", TORCH_BOX(&set_product_precision));
  m.impl("_cpu_serial_work", TORCH_BOX(&get_cpu_serial_work));
  m.impl("_set_cpu_serial_work", TORCH_BOX(&set_cpu_serial_work));
  m.impl("_cpu_parallel_regions", TORCH_BOX(&cpu_parallel_regions));
  m.impl("_cpu_region_chunks", TORCH_BOX(&get_cpu_region_chunks));
  m.impl("_set_cpu_region_chunks", TORCH_BOX(&set_cpu_region_chunks));
  m.impl("_cpu_pool", TORCH_BOX(&get_cpu_pool));
  m.impl("_set_cpu_pool", TORCH_BOX(&set_cpu_pool));
  m.impl("_cpu_pool_workers", TORCH_BOX(&cpu_pool_workers));
  m.impl("_cpu_pool_worker_chunks", TORCH_BOX(&cpu_pool_worker_chunks));
  m.impl("_cpu_contention_hold", TORCH_BOX(&get_cpu_contention_hold));
  m.impl("_set_cpu_contention_hold", TORCH_BOX(&set_cpu_contention_hold));
  m.impl("_cpu_contention_holds", TORCH_BOX(&cpu_contention_holds));
  m.impl("_cpu_mark_contended", TORCH_BOX(&cpu_mark_contended));
  m.impl("_cpu_scratch_bytes", TORCH_BOX(&cpu_scratch_bytes));
  m.impl("_cpu_release_scratch", TORCH_BOX(&cpu_release_scratch));
  m.impl("_cpu_scratch_cycle", TORCH_BOX(&cpu_scratch_cycle));
  m.impl("_cpu_scratch_hold", TORCH_BOX(&cpu_scratch_hold));
}

// The module itself: nothing but the import that loads this library.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "rkd_ext compiled kernels; the operators live under "
                                   "torch.ops.rkd_ext", -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&def);
}
