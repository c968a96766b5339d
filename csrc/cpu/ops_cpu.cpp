// Every rkd_ext op on the CPU. Each op's sequence of steps is csrc/core/
// (distance_op.h: pairwise_distance, normalized_distance, rkd_distance_loss;
// angle_op.h: angle_tensor, rkd_angle_loss; rkd_loss_op.h: rkd_loss, both terms at once;
// shard_op.h: the row-range ops),
// shared with the CUDA build; the bindings are csrc/core/bind.h. The CPU
// primitives they run on are cpu_backend.h (the O(N^2) passes),
// pair_matrix_cpu.cpp (the O(N^2 D) products) and angle_cpu.cpp (the
// triplet passes).
#include "../core/bind.h"
#include "cpu_backend.h"

STABLE_TORCH_LIBRARY_IMPL(rkd_ext, CPU, m) { rkd::bind::register_ops<rkd::CpuCtx>(m); }
