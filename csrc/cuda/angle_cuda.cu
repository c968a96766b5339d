// The angle-wise RKD ops on CUDA: angle_tensor and rkd_angle_loss, forward
// and backward.
//
// Their sequence of steps is csrc/core/angle_op.h, shared with the CPU build
// and the host emulation; the bindings are csrc/core/bind.h; the GPU
// primitives they run on are gpu_backend.cuh and the triplet kernels of
// angle_kernel.cuh.
#include <torch/library.h>

#include "../core/bind.h"
#include "cuda_context.h"

TORCH_LIBRARY_IMPL(rkd_ext, CUDA, m) { rkd::bind::register_angle_ops<rkd::gpu::CudaCtx>(m); }
