"""Distance relations and loss: ours (fused, and the loss materialised from our op) vs the reference,
the reference under torch.compile and torch.cdist; forward and forward+backward.

Run: pytest benchmarks/test_distance_bench.py --benchmark-only   (RKD_BENCH_QUICK=1: small sizes)
See common.py for what every case does before it is timed.
"""
import pytest

from .common import cases, run_case

PARAMS = ("dtype", "n", "d", "mode", "impl")


@pytest.mark.parametrize(PARAMS, cases("pairwise_distance"))
def test_pairwise_distance(benchmark, device, dtype, n, d, mode, impl):
    run_case(benchmark, "pairwise_distance", impl, device, dtype, mode, n, d)


@pytest.mark.parametrize(PARAMS, cases("normalized_distance"))
def test_normalized_distance(benchmark, device, dtype, n, d, mode, impl):
    run_case(benchmark, "normalized_distance", impl, device, dtype, mode, n, d)


@pytest.mark.parametrize(PARAMS, cases("distance_loss"))
def test_distance_loss(benchmark, device, dtype, n, d, mode, impl):
    run_case(benchmark, "distance_loss", impl, device, dtype, mode, n, d)
