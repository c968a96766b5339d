"""Distance relations and loss: ours (fused, and the loss materialised from our op) vs the reference,
the reference under torch.compile and torch.cdist; forward and forward+backward.

Run: pytest benchmarks/test_distance_bench.py --benchmark-only   (RKD_BENCH_QUICK=1: small sizes)
See common.py for what every case does before it is timed.
"""

from .common import bench

test_pairwise_distance = bench("pairwise_distance")
test_normalized_distance = bench("normalized_distance")
test_distance_loss = bench("distance_loss")
