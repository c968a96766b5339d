// The row-range ops of relations sharded by anchor over a global batch, on
// the CPU: their sequence of steps is csrc/core/shard_op.h, the bindings
// csrc/core/bind.h, the primitives cpu_backend.h.
#include <torch/library.h>

#include "../core/bind.h"
#include "cpu_backend.h"

TORCH_LIBRARY_IMPL(rkd_ext, CPU, m) { rkd::bind::register_shard_ops<rkd::CpuCtx>(m); }
