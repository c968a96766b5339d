// The distance-wise RKD ops on CUDA: pairwise_distance, normalized_distance
// and rkd_distance_loss, forward and backward.
//
// Their sequence of steps is csrc/core/distance_op.h, shared with the CPU
// build and the host emulation; the bindings are csrc/core/bind.h; the GPU
// primitives they run on are gpu_backend.cuh.
#include <torch/library.h>

#include "../core/bind.h"
#include "cuda_context.h"

TORCH_LIBRARY_IMPL(rkd_ext, CUDA, m) { rkd::bind::register_distance_ops<rkd::gpu::CudaCtx>(m); }
