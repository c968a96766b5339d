"""Angle relations and loss: ours (fused, and the loss materialised from our angle tensor) vs the
reference, the reference under torch.compile and the law of cosines in plain PyTorch; forward and
forward+backward.

Run: pytest benchmarks/test_angle_bench.py --benchmark-only   (RKD_BENCH_QUICK=1: small sizes)
See common.py for what every case does before it is timed; cases that cannot fit, or would take
too long on CPU, are skipped with the estimate as the reason.
"""
import pytest

from .common import cases, run_case

PARAMS = ("dtype", "n", "d", "mode", "impl")


@pytest.mark.parametrize(PARAMS, cases("angle_tensor"))
def test_angle_tensor(benchmark, device, dtype, n, d, mode, impl):
    run_case(benchmark, "angle_tensor", impl, device, dtype, mode, n, d)


@pytest.mark.parametrize(PARAMS, cases("angle_loss"))
def test_angle_loss(benchmark, device, dtype, n, d, mode, impl):
    run_case(benchmark, "angle_loss", impl, device, dtype, mode, n, d)
