"""Angle loss: ours vs the reference vs the law of cosines in plain PyTorch.

Run: pytest benchmarks/test_angle_bench.py --benchmark-only   (RKD_BENCH_QUICK=1: small sizes)
Cases whose estimated memory does not fit are skipped with the estimate as the reason.
"""
import pytest

import rkd_ext
from rkd_ext import reference as R

from .baselines import law_of_cosines_angle_loss, law_of_cosines_bytes, reference_angle_bytes
from .common import check_close, features, loss_step, memory_budget, record, sizes

NS = sizes([64, 256, 1024], [64, 128])
DS = sizes([128, 512, 2048], [128])
IMPLS = {
    "ours": (rkd_ext.rkd_angle_loss, lambda n, d: 0),
    "reference": (R.angle_loss, reference_angle_bytes),
    "law_of_cosines": (law_of_cosines_angle_loss, lambda n, d: law_of_cosines_bytes(n)),
}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
def test_angle_loss(benchmark, device, mode, n, d, impl):
    fn, estimate = IMPLS[impl]
    need = estimate(n, d)
    if need > memory_budget(device):
        pytest.skip(f"{impl} needs about {need / 2**30:.1f} GiB at n={n} d={d}")
    s = features(n, d, device, seed=1, requires_grad=(mode == "forward_backward"))
    t = features(n, d, device, seed=2)
    if n <= 256:
        check_close(fn(s, t), R.angle_loss(s.double(), t.double()), 1e-4, f"{impl} n={n} d={d}")
    slow = n >= 1024 and impl != "ours"
    record(benchmark, loss_step(fn, s, t, mode, device), device, sizes(1 if slow else 5, 2),
           op="angle_loss", mode=mode, n=n, d=d, impl=impl)
