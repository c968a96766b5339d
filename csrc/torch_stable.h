// What the bindings take from torch, all of it on PyTorch's stable ABI
// (torch/csrc/stable, torch/headeronly), and the few shims that ABI still
// lacks. Nothing here, nor anywhere in csrc/, includes ATen, c10 or pybind11:
// the compiled extension calls torch only through the stable C shim, so one
// build serves every torch from TORCH_TARGET_VERSION (set by setup.py from
// rkd_ext/_floor.py's STABLE_ABI_FLOOR) on. python_tests/test_build.py checks
// the built library imports no C++ symbol of torch.
//
// The shims, each with why it is here and when it can go:
//
// 1. Typed errors (value_error, RKD_CHECK_VALUE). The stable ABI has no
//    c10::ValueError or c10::TypeError, and its STD_TORCH_CHECK throws
//    std::runtime_error (a Python RuntimeError) with the C++ function, file
//    and line in front of the message. torch's Python bindings turn
//    std::invalid_argument into ValueError, so a bad argument still reads as
//    one, and the message is only ours. No standard exception becomes a
//    TypeError: an unsupported dtype handed to a raw operator is a ValueError
//    (the public Python API checks dtypes first and raises TypeError).
//    torch 2.15 turns every exception a stable-ABI kernel throws into a
//    RuntimeError with the same message; rkd_ext/ops.py's value_errors puts
//    the ValueError back for messages that start with the operator's name,
//    as every argument check's does.
//    Can go when the stable ABI throws typed errors.
// 2. The current CUDA stream as a cudaStream_t (cuda/cuda_context.h):
//    torch::stable::accelerator::Stream::nativeHandle() arrived in torch
//    2.13; before it, aoti_torch_get_current_cuda_stream from the AOTI C
//    shim, which every torch with the stable ABI exports. Can go when the
//    floor reaches 2.13.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>
#if defined(__CUDACC__)
#include <torch/csrc/stable/accelerator.h>
#if TORCH_FEATURE_VERSION < TORCH_VERSION_2_13_0
// Shim 2's function, exported by libtorch_cuda since the AOTI C shim began; its header declares it only when torch
// itself is compiled (USE_CUDA), so it is declared here with the header's signature.
extern "C" AOTITorchError aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);
#endif
#endif

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if !defined(TORCH_TARGET_VERSION)
#error "rkd_ext builds for a stable-ABI floor: compile with -DTORCH_TARGET_VERSION (setup.py sets it)"
#endif

namespace rkd {

using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using Half = torch::headeronly::Half;
using BFloat16 = torch::headeronly::BFloat16;
using Shape = torch::headeronly::IntHeaderOnlyArrayRef;

// Shim 1: a ValueError with our message alone.
template <typename... Args>
[[noreturn]] inline void value_error(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  throw std::invalid_argument(out.str());
}

#define RKD_CHECK_VALUE(cond, ...)         \
  do {                                     \
    if (!(cond)) ::rkd::value_error(__VA_ARGS__); \
  } while (0)

// How messages print a shape, a dtype and a device: as torch itself prints them ([4, 3], Float, cuda:0).
struct ShapeOf {
  Shape s;
};
inline ShapeOf shape(const Tensor& t) { return {t.sizes()}; }
inline std::ostream& operator<<(std::ostream& o, const ShapeOf& v) {
  o << '[';
  for (size_t i = 0; i < v.s.size(); ++i) o << (i ? ", " : "") << v.s[i];
  return o << ']';
}

struct DeviceOf {
  torch::stable::Device d;
};
inline DeviceOf device_of(const Tensor& t) { return {t.device()}; }
inline std::ostream& operator<<(std::ostream& o, const DeviceOf& v) {
  using torch::headeronly::DeviceType;
  switch (v.d.type()) {
    case DeviceType::CPU: o << "cpu"; break;
    case DeviceType::CUDA: o << "cuda"; break;
    case DeviceType::Meta: o << "meta"; break;
    default: o << "device type " << static_cast<int>(v.d.type());
  }
  if (v.d.has_index()) o << ':' << static_cast<int>(v.d.index());
  return o;
}

inline bool same_shape(const Tensor& t, const std::vector<int64_t>& want) {
  const Shape s = t.sizes();
  if (s.size() != want.size()) return false;
  for (size_t i = 0; i < want.size(); ++i)
    if (s[i] != want[i]) return false;
  return true;
}

// t itself when already contiguous (no dispatcher call), a contiguous copy otherwise.
inline Tensor as_contiguous(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

// An uninitialised tensor of the given shape and dtype on like's device.
inline Tensor empty(const Tensor& like, std::vector<int64_t> sizes, ScalarType dtype) {
  return torch::stable::new_empty(like, Shape(sizes), dtype);
}
inline Tensor empty(const Tensor& like, std::vector<int64_t> sizes) { return empty(like, std::move(sizes), like.scalar_type()); }

#if defined(__CUDACC__)
// Shim 2: the current CUDA stream of a device, as a cudaStream_t.
inline void* current_cuda_stream(int32_t device) {
#if TORCH_FEATURE_VERSION >= TORCH_VERSION_2_13_0
  return torch::stable::accelerator::getCurrentStream(device).nativeHandle();
#else
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(device, &stream));
  return stream;
#endif
}
#endif

}  // namespace rkd
