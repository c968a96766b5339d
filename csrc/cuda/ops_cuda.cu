// Every rkd_ext op on CUDA. Each op's sequence of steps is csrc/core/
// (distance_op.h, angle_op.h, rkd_loss_op.h, shard_op.h), shared with the CPU build and the
// host emulation; the bindings are csrc/core/bind.h. The GPU primitives they
// run on are gpu_backend.cuh, launching the kernels of pair_matrix_kernel.cuh,
// angle_kernel.cuh and common.cuh.
#include "../core/bind.h"
#include "cuda_context.h"

STABLE_TORCH_LIBRARY_IMPL(rkd_ext, CUDA, m) { rkd::bind::register_ops<rkd::gpu::CudaCtx>(m); }
