"""rkd_ext.set_product_precision: the setting's API, and each mode against the float64 reference.

The oracle is the reference implementation (rkd_ext.reference) run in
float64 on the same input values; the modes are also checked to differ
where they should (the distance family's float32 products) and nowhere else
(float64 features, the angle family). The GPU's float32 products are checked
on the host emulator by scripts/emulate_cuda.py, and on a GPU by
test_cuda_modes_match_float64_reference below.
"""
import tempfile

import pytest
import torch
from conftest import CUDA_KERNELS, load_script, needs_host_cuda

import rkd_ext
from rkd_ext import reference as R
from rkd_ext.testing import assert_close, make_features

# Errors against the float64 reference on float32 inputs, relative to each
# element (plus an absolute floor for elements near 0): float64 products
# leave the float32 rounding of the result; float32 products add ~1e-7
# relative to the squared norms in each kept pair (gram_near keeps pairs of
# at least 1e-2 of them) and, for gradients, ~1e-7 of the largest term of
# the W x X product, 1e3 times the result for pairs 1e-3 apart ("near").
MODE_TOL = {"float64": (2e-6, 1e-7), "float32": (1e-5, 1e-6)}
NEAR_GRAD_TOL = (1e-3, 1e-5)


@pytest.fixture(autouse=True)
def _restore():
    before = rkd_ext.get_product_precision()
    yield
    rkd_ext.set_product_precision(before)


def test_default_is_auto_and_reported():
    assert rkd_ext.get_product_precision() == "auto"
    assert rkd_ext.build_info()["product_precision"] == "auto"


@pytest.mark.parametrize("mode", ["auto", "float64", "float32"])
def test_set_get_round_trip(mode):
    rkd_ext.set_product_precision(mode)
    assert rkd_ext.get_product_precision() == mode
    assert rkd_ext.build_info()["product_precision"] == mode


@pytest.mark.parametrize("bad", ["fp32", "Float32", "", None, 32, torch.float32])
def test_bad_mode_raises_naming_the_argument(bad):
    with pytest.raises(ValueError, match=r"set_product_precision: mode must be one of 'auto', 'float64', 'float32'"):
        rkd_ext.set_product_precision(bad)
    assert rkd_ext.get_product_precision() == "auto"


def test_context_manager_restores_even_on_error():
    rkd_ext.set_product_precision("float32")
    with rkd_ext.product_precision("float64"):
        assert rkd_ext.get_product_precision() == "float64"
    assert rkd_ext.get_product_precision() == "float32"
    with pytest.raises(RuntimeError, match="inside"):
        with rkd_ext.product_precision("auto"):
            raise RuntimeError("inside")
    assert rkd_ext.get_product_precision() == "float32"
    with pytest.raises(ValueError, match="mode"):
        with rkd_ext.product_precision("double"):
            pass
    assert rkd_ext.get_product_precision() == "float32"


def _loss_and_grad(fn, s, t):
    s = s.clone().requires_grad_(True)
    loss = fn(s, t)
    (g,) = torch.autograd.grad(loss, s)
    return loss.detach(), g


@pytest.mark.parametrize("kind", ["random", "offset", "near", "dup"])
@pytest.mark.parametrize("mode", ["float64", "float32"])
@pytest.mark.parametrize("n,d", [(48, 256), (200, 96)])  # the small-batch kernel and the panel GEMM
def test_cpu_modes_match_float64_reference(mode, kind, n, d):
    s = make_features(n, d, seed=3, kind=kind).float()
    t = make_features(n, d + 5, seed=4, kind=kind).float()
    truth, truth_grad = _loss_and_grad(R.distance_loss, s.double(), t.double())
    dist_truth = R.pairwise_distance(s.double())
    with rkd_ext.product_precision(mode):
        loss, grad = _loss_and_grad(rkd_ext.rkd_distance_loss, s, t)
        dist = rkd_ext.pairwise_distance(s)
    rtol, atol = MODE_TOL[mode]
    assert_close(loss, truth, rtol, atol, f"{mode} {kind} loss")
    assert_close(dist, dist_truth, rtol, atol * dist_truth.abs().max(), f"{mode} {kind} distances")
    grtol, gatol = NEAR_GRAD_TOL if kind == "near" and mode == "float32" else MODE_TOL[mode]
    assert_close(grad, truth_grad, grtol, gatol * truth_grad.abs().max(), f"{mode} {kind} gradient")


def test_modes_differ_only_in_the_distance_familys_float32_products():
    s = make_features(64, 256, seed=5).float()
    t = make_features(64, 128, seed=6).float()
    ops = torch.ops.rkd_ext
    out = {}
    for mode in ("auto", "float64", "float32"):
        with rkd_ext.product_precision(mode):
            out[mode] = dict(
                dist=ops.pairwise_distance(s, 1e-12)[1],
                dist_f64_input=ops.pairwise_distance(s.double(), 1e-12)[1],
                angle=ops.rkd_angle_loss(s, t, 1.0, 1e-12, "mean", True)[0],
                rkd=ops.rkd_loss(s, t, 25.0, 50.0, 1.0, 1e-12, 1e-12, "mean", False, 0.0, True)[0])
    # On the CPU "auto" is float32 products for in-range features, as before the setting existed.
    for key in out["auto"]:
        assert torch.equal(out["auto"][key], out["float32"][key]), key
    assert not torch.equal(out["float32"]["dist"], out["float64"]["dist"])
    for key in ("dist_f64_input", "angle", "rkd"):
        assert torch.equal(out["float32"][key], out["float64"][key]), key


@pytest.mark.skipif(not CUDA_KERNELS, reason="needs a GPU and the CUDA kernels")
@pytest.mark.parametrize("mode", ["float64", "float32"])
def test_cuda_modes_match_float64_reference(mode):
    s = make_features(70, 300, seed=7, kind="offset", device="cuda").float()
    t = make_features(70, 129, seed=8, kind="offset", device="cuda").float()
    truth, truth_grad = _loss_and_grad(R.distance_loss, s.double(), t.double())
    with rkd_ext.product_precision(mode):
        loss, grad = _loss_and_grad(rkd_ext.rkd_distance_loss, s, t)
    rtol, atol = MODE_TOL[mode]
    assert_close(loss, truth, rtol, atol, f"{mode} loss")
    assert_close(grad, truth_grad, rtol, atol * truth_grad.abs().max(), f"{mode} gradient")


@needs_host_cuda
def test_gpu_float32_products_within_the_reference_float32_error():
    # The accuracy requirement of the float32 products, on the accuracy suite's batches
    # (benchmarks/accuracy_products.py): against the float64 truth, the distance loss's value and
    # student gradient with the GPU's float32 products (emulated) are at most as far off as the
    # reference implementation run in float32.
    A = load_script("benchmarks/accuracy_products.py")
    with tempfile.TemporaryDirectory() as tmp:
        emu = A._emulator(tmp)
        for kind in ("random", "offset", "near"):
            (v32, g32), _, (vref, gref) = A.errors(emu, "distance", kind, 48, 200)
            assert v32 <= vref and g32 <= gref, (kind, v32, vref, g32, gref)
