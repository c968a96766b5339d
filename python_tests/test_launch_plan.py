"""scripts/launch_plan.py: its launch records against facts known without it.

The plan dry-runs the GPU backend's op sequences (no GPU needed, only g++ and
the CUDA headers). The facts: the op layer's sequences, which launches they
are made of and how composed ops add up; each kernel's grid from the sizes;
the flops of a product from its shape; the time model from its formula.
"""
import importlib.util
import os
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None or
    not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime.h")),
    reason="needs g++ and the CUDA headers")


def _load():
    spec = importlib.util.spec_from_file_location("launch_plan", os.path.join(ROOT, "scripts", "launch_plan.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def lp():
    return _load()


@pytest.fixture(scope="module")
def rec(lp):
    return lp.Recorder(lp.build())


def kernels(launches):
    return [l.kernel.split("<")[0] for l in launches]


def test_pairwise_distance_sequence(rec):
    # Forward: centre (column means, then centring), the Gram product, the
    # float32 copy of the float64 distances. Backward: the upstream gradient
    # to float64, the weights, centre again, the W x X product.
    assert kernels(rec.run("pairwise_distance", 40, 100)) == [
        "column_mean", "centre", "gram_pairs", "convert",
        "convert", "weights", "column_mean", "centre", "grad_gemm"]


def test_rkd_loss_is_both_terms(rec):
    # RKDLoss calls the two losses one after the other: its plan is theirs, concatenated.
    for n, d in ((16, 512), (130, 70)):
        both = rec.run("rkd_distance_loss", n, d) + rec.run("rkd_angle_loss", n, d)
        assert rec.run("RKDLoss", n, d) == both


def test_gram_grid_and_flops(rec, lp):
    # N = 130: 3 x 3 tiles of 64, of which the 6 on or above the diagonal work,
    # each 64 x 64 dot products of length D.
    n, d = 130, 300
    gram = [l for l in rec.run("pairwise_distance", n, d) if l.kernel.startswith("gram_pairs")]
    assert len(gram) == 1
    g = gram[0]
    assert g.grid == (3, 3, 1) and g.block == (16, 16, 1) and g.blocks == 6
    assert g.flops64 == pytest.approx(6 * 64 * 64 * 2 * d + 6 * n * n)
    assert g.flops32 == 0
    # xc and the norms read, the N x N float64 pair values written.
    assert g.bytes == 8 * (n * d + n + n * n)


def test_grad_gemm_covers_the_gradient(rec):
    n, d = 70, 200
    gemm = [l for l in rec.run("normalized_distance", n, d) if l.kernel.startswith("grad_gemm")]
    assert len(gemm) == 1
    gx, gy, _ = gemm[0].grid
    assert gx * 64 >= d > (gx - 1) * 64 and gy * 64 >= n > (gy - 1) * 64


def test_angle_loss_float32_triplets(rec):
    # A float32 loss runs its triplet arithmetic in float32; the numerators
    # of the cosines stay float64.
    launches = rec.run("rkd_angle_loss", 64, 32)
    tri = [l for l in launches if l.kernel.startswith(("angle_loss_sum", "angle_vertex", "angle_opposite"))]
    assert kernels(tri) == ["angle_loss_sum", "angle_vertex", "angle_opposite"]
    assert all(l.flops32 > 0 and l.flops64 > 0 for l in tri)


def test_time_model(lp):
    p = lp.PROFILES["h200"]
    # 1 GB over the whole machine: bandwidth-bound.
    l = lp.Launch("k", (1000, 1, 1), (256, 1, 1), 1e9, 0.0, 1e6, 1000)
    assert l.time(p) == pytest.approx(p.launch + 1e9 / p.bandwidth)
    # One block: 1/132 of the machine's arithmetic.
    l = lp.Launch("k", (1, 1, 1), (256, 1, 1), 0.0, 67e6, 34e6, 1)
    assert l.work(p) == pytest.approx((67e6 / p.fp32 + 34e6 / p.fp64) * p.sms)
    assert l.flagged(p)  # about 264 us of work on one block
    assert not lp.Launch("k", (132, 1, 1), (256, 1, 1), 0.0, 0.0, 34e6 * 132, 132).flagged(p)


def test_check_targets(lp):
    one = lp.Launch("k", (1, 1, 1), (256, 1, 1), 0.0, 0.0, 0.0, 1)
    ok = [("rkd_distance_loss", 32, 512, [one] * lp.TARGETS["rkd_distance_loss"])]
    assert lp.violations(ok) == []
    over = [("rkd_distance_loss", 32, 512, [one] * (lp.TARGETS["rkd_distance_loss"] + 1))]
    assert len(lp.violations(over)) == 1
    # Above N = 256 the count targets do not apply.
    assert lp.violations([("rkd_distance_loss", 1024, 512, [one] * 100)]) == []


def test_report_says_estimate(lp, capsys):
    assert lp.main(["--ops", "pairwise_distance", "--sizes", "typical"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATES FROM A MODEL" in out and "| pairwise_distance | 32 | 25088 |" in out
