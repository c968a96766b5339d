"""Angle relations and loss: ours (fused, and the loss materialised from our angle tensor) vs the
reference, the reference under torch.compile and the law of cosines in plain PyTorch; forward and
forward+backward.

Run: pytest benchmarks/test_angle_bench.py --benchmark-only   (RKD_BENCH_QUICK=1: small sizes)
See common.py for what every case does before it is timed; cases that cannot fit, or would take
too long on CPU, are skipped with the estimate as the reason.
"""

from .common import bench

test_angle_tensor = bench("angle_tensor")
test_angle_loss = bench("angle_loss")
