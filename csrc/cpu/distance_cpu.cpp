// The distance-wise RKD ops on the CPU: pairwise_distance,
// normalized_distance and rkd_distance_loss, forward and backward.
//
// Their sequence of steps is csrc/core/distance_op.h, shared with the CUDA
// build; the bindings are csrc/core/bind.h. The CPU primitives they run on are
// cpu_backend.h (the O(N^2) passes) and pair_matrix_cpu.cpp (the O(N^2 D)
// products).
#include <torch/library.h>

#include "../core/bind.h"
#include "cpu_backend.h"

TORCH_LIBRARY_IMPL(rkd_ext, CPU, m) { rkd::bind::register_distance_ops<rkd::CpuCtx>(m); }
