"""Distance loss: ours vs the reference, forward and forward+backward.

Run: pytest benchmarks/test_distance_bench.py --benchmark-only
     (RKD_BENCH_QUICK=1 for a quick pass over small sizes)
Each case checks the result against the reference before it is timed, and
records the peak memory above the inputs in extra_info["peak_mb"].
"""
import pytest

import rkd_ext
from rkd_ext import reference as R

from .common import check_close, features, loss_step, record, sizes

NS = sizes([64, 256, 1024], [64, 256])
DS = sizes([128, 512, 2048], [128])
IMPLS = {"ours": rkd_ext.rkd_distance_loss, "reference": R.distance_loss}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
def test_distance_loss(benchmark, device, mode, n, d, impl):
    fn = IMPLS[impl]
    s = features(n, d, device, seed=1, requires_grad=(mode == "forward_backward"))
    t = features(n, d, device, seed=2)
    check_close(fn(s, t), R.distance_loss(s.double(), t.double()), 1e-4, f"{impl} n={n} d={d}")
    record(benchmark, loss_step(fn, s, t, mode, device), device, sizes(10, 3),
           op="distance_loss", mode=mode, n=n, d=d, impl=impl)
