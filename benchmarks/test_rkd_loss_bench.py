"""The full objective RKDLoss(25, 50), both terms from the fused op, vs the reference's two terms weighted and added;
forward and forward+backward.

Run: pytest benchmarks/test_rkd_loss_bench.py --benchmark-only   (RKD_BENCH_QUICK=1: small sizes)
See common.py for what every case does before it is timed.
"""

from .common import bench

test_rkd_loss = bench("rkd_loss")
