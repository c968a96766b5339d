"""The full objective RKDLoss(25, 50): ours vs the reference's two terms summed, eager and compiled;
forward and forward+backward.

Run: pytest benchmarks/test_rkd_bench.py --benchmark-only   (RKD_BENCH_QUICK=1: small sizes)
See common.py for what every case does before it is timed.
"""

from .common import bench

test_rkd_loss = bench("rkd_loss")
