// The row-range ops of relations sharded by anchor over a global batch, on
// CUDA: their sequence of steps is csrc/core/shard_op.h, the bindings
// csrc/core/bind.h, the primitives gpu_backend.cuh.
#include <torch/library.h>

#include "../core/bind.h"
#include "cuda_context.h"

TORCH_LIBRARY_IMPL(rkd_ext, CUDA, m) { rkd::bind::register_shard_ops<rkd::gpu::CudaCtx>(m); }
