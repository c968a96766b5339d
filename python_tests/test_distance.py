"""The distance family: pairwise_distance, normalized_distance, rkd_distance_loss.

Oracle: rkd_ext.reference (the reference formulation in plain PyTorch), run in
float64 for parity and as ground truth for accuracy comparisons.
"""
import warnings

import pytest
import torch
from conftest import DEVICES, assert_bitwise_equal_runs, run_with_threads

import rkd_ext
from rkd_ext import reference as R
from rkd_ext.testing import (REDUCTIONS, TOL, assert_close, eager_and_compiled, float32_errors, float64_truth,
                              make_features, max_rel_err, value_and_grads, weighted_grads)


# ---- parity with the reference in float64 ------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,ds,dt", [(2, 3, 3), (3, 1, 4), (17, 5, 9), (64, 33, 20), (130, 300, 17)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("teacher_grad", [False, True])
def test_loss_matches_reference_float64(device, n, ds, dt, reduction, teacher_grad):
    s = make_features(n, ds, device=device, seed=1, requires_grad=True)
    t = make_features(n, dt, device=device, seed=2, requires_grad=teacher_grad)
    ours = rkd_ext.rkd_distance_loss(s, t, reduction=reduction)
    ref = R.distance_loss(s, t, reduction=reduction)
    assert ours.dtype == torch.float64
    assert_close(ours, ref, 1e-10, 1e-13, "value")
    for a, b in zip(weighted_grads(ours, (s, t)), weighted_grads(ref, (s, t))):
        assert_close(a, b, 1e-10, 1e-13 * max(1.0, b.abs().max().item()), "gradient")


@pytest.mark.parametrize("kw", [dict(squared=True), dict(mean_offset=1e-7), dict(beta=0.3),
                                dict(beta=0.0), dict(eps=1e-3, squared=True, mean_offset=0.5)])
def test_loss_variants_match_reference(kw):
    s = make_features(40, 12, seed=3, requires_grad=True)
    t = make_features(40, 7, seed=4, requires_grad=True)
    ref_kw = dict(beta=kw.get("beta", 1.0), eps=kw.get("eps", 1e-12), squared=kw.get("squared", False),
                  mean_offset=kw.get("mean_offset", 0.0))
    ours = rkd_ext.rkd_distance_loss(s, t, **kw)
    ref = R.distance_loss(s, t, **ref_kw)
    assert_close(ours, ref, 1e-10, 1e-14, "value")
    for a, b in zip(weighted_grads(ours, (s, t)), weighted_grads(ref, (s, t))):
        assert_close(a, b, 1e-9, 1e-14, "gradient")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fn,ref", [(rkd_ext.pairwise_distance, R.pairwise_distance),
                                    (rkd_ext.normalized_distance, R.normalized_distance)])
@pytest.mark.parametrize("n,d", [(2, 1), (5, 3), (100, 64)])
def test_matrices_match_reference_float64(device, fn, ref, n, d):
    x = make_features(n, d, device=device, seed=5, requires_grad=True)
    ours, expected = fn(x), ref(x)
    assert_close(ours, expected, 1e-10, 1e-13, "value")
    assert torch.count_nonzero(torch.diagonal(ours)) == 0
    assert_close(weighted_grads(ours, (x,))[0], weighted_grads(expected, (x,))[0], 1e-10, 1e-12, "gradient")


def test_noncontiguous_and_high_rank_inputs():
    base_s = make_features(24, 60, seed=6)
    base_t = make_features(24, 2 * 3 * 5, seed=7)
    s = base_s[:, ::2].requires_grad_(True)  # (24, 30), non-contiguous
    t4 = base_t.reshape(24, 2, 3, 5).transpose(2, 3).requires_grad_(True)  # 4-D, non-contiguous
    ours = rkd_ext.rkd_distance_loss(s, t4)
    ref = R.distance_loss(s, t4.reshape(24, -1))
    assert_close(ours, ref, 1e-10, 1e-14, "value")
    for a, b in zip(weighted_grads(ours, (s, t4)), weighted_grads(ref, (s, t4))):
        assert a.shape == b.shape
        assert_close(a, b, 1e-10, 1e-14, "gradient")
    module = rkd_ext.RKDDistanceLoss()
    assert_close(module(s, t4), ref, 1e-10, 1e-14, "module")


# ---- gradients by finite differences ------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 8])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_gradcheck(n, reduction):
    s = make_features(n, 4, seed=n, requires_grad=True)
    t = make_features(n, 3, seed=n + 10, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rkd_ext.rkd_distance_loss(a, b, reduction=reduction), (s, t))


def test_loss_gradcheck_variants():
    s = make_features(6, 4, seed=11, requires_grad=True)
    t = make_features(6, 5, seed=12, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: rkd_ext.rkd_distance_loss(a, b, squared=True, mean_offset=0.1, beta=0.2), (s, t))


@pytest.mark.parametrize("fn", [rkd_ext.pairwise_distance, rkd_ext.normalized_distance])
def test_matrix_gradcheck(fn):
    x = make_features(7, 3, seed=13, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,))


def test_double_backward_is_a_clear_error():
    s = make_features(6, 4, seed=14, requires_grad=True)
    t = make_features(6, 4, seed=15)
    (g,) = torch.autograd.grad(rkd_ext.rkd_distance_loss(s, t), s, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# ---- accuracy against float64 ground truth --------------------------------------


@pytest.mark.parametrize("kind", ["random", "offset", "near"])
def test_float32_at_least_as_accurate_as_reference(kind):
    x64, y64, truth, truth_grad = float64_truth(R.distance_loss, kind, (16, 17))
    ours_val, ours_grad = float32_errors(rkd_ext.rkd_distance_loss, x64, y64, truth, truth_grad)
    ref_val, ref_grad = float32_errors(R.distance_loss, x64, y64, truth, truth_grad)
    assert ours_val <= ref_val + 1e-9, (ours_val, ref_val)
    assert ours_grad <= ref_grad + 1e-9, (ours_grad, ref_grad)


def test_offset_batch_keeps_float32_accuracy():
    # A common offset 100x the spread costs the reference's expanded form its
    # digits; ours stays near float32 rounding.
    x = make_features(48, 128, seed=18, kind="offset")
    truth = R.pairwise_distance(x - x.mean(0))
    ours = rkd_ext.pairwise_distance(x.float())
    assert max_rel_err(ours, truth) < 1e-6


def test_exact_duplicates_give_finite_gradients():
    s = make_features(10, 6, seed=19, kind="dup", requires_grad=True)
    t = make_features(10, 6, seed=20, requires_grad=True)
    loss = rkd_ext.rkd_distance_loss(s, t)
    assert_close(loss, R.distance_loss(s, t), 1e-10, 1e-14, "value")
    gs, gt = torch.autograd.grad(loss, (s, t))
    assert torch.isfinite(gs).all() and torch.isfinite(gt).all()
    d = rkd_ext.pairwise_distance(s)
    assert d[0, 5].item() == pytest.approx(1e-6)  # sqrt of the clamp: rows 0 and 5 coincide


# ---- dtypes --------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs(device, dtype):
    s = make_features(32, 16, seed=21, dtype=dtype, device=device, requires_grad=True)
    t = make_features(32, 8, seed=22, dtype=dtype, device=device)
    loss = rkd_ext.rkd_distance_loss(s, t)
    assert loss.dtype == torch.float32
    (g,) = torch.autograd.grad(loss, s)
    assert g.dtype == dtype
    s32 = s.detach().float().requires_grad_(True)
    ref = R.distance_loss(s32.double(), t.double())
    (ref_g,) = torch.autograd.grad(ref, s32)
    rtol, atol = TOL[dtype]
    assert_close(loss, ref, rtol, atol, "value")
    assert_close(g.float(), ref_g, rtol, atol * ref_g.abs().max().item(), "gradient")
    assert rkd_ext.pairwise_distance(s).dtype == dtype


def test_mixed_dtypes_promote_loss():
    s = make_features(8, 4, seed=23, dtype=torch.float16)
    t = make_features(8, 4, seed=24, dtype=torch.float64)
    assert rkd_ext.rkd_distance_loss(s, t).dtype == torch.float64


# ---- degenerate and bad input ---------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*no pairs")
def test_single_sample_returns_zero_with_zero_grad():
    s = make_features(1, 4, seed=25, requires_grad=True)
    t = make_features(1, 3, seed=26, requires_grad=True)
    loss = rkd_ext.rkd_distance_loss(s, t)
    assert loss.item() == 0.0
    gs, gt = torch.autograd.grad(loss, (s, t))
    assert torch.count_nonzero(gs) == 0 and torch.count_nonzero(gt) == 0
    assert rkd_ext.rkd_distance_loss(s, t, reduction="none").shape == (1, 1)
    assert rkd_ext.pairwise_distance(s).tolist() == [[0.0]]


@pytest.mark.parametrize("bad,match,exc", [
    (lambda s, t: rkd_ext.rkd_distance_loss(s[:0], t[:0]), "student must hold at least one sample", ValueError),
    (lambda s, t: rkd_ext.rkd_distance_loss(s[0], t), r"student must have shape \(N, D\)", ValueError),
    (lambda s, t: rkd_ext.rkd_distance_loss(s, t[0]), r"teacher must have shape \(N, D\)", ValueError),
    (lambda s, t: rkd_ext.rkd_distance_loss(s, t[:3]), "same batch size, got 5 and 3", ValueError),
    (lambda s, t: rkd_ext.rkd_distance_loss(s.long(), t), "student must be float16, bfloat16, float32 or float64",
     TypeError),
    (lambda s, t: rkd_ext.rkd_distance_loss(s, t.to(torch.complex64)), "teacher must be float16", TypeError),
    (lambda s, t: rkd_ext.rkd_distance_loss(s, t.to("meta")), "same device", ValueError),
    (lambda s, t: rkd_ext.rkd_distance_loss(s.tolist(), t), "student must be a torch.Tensor", TypeError),
    (lambda s, t: rkd_ext.rkd_distance_loss(s, t, reduction="avg"), "reduction must be", ValueError),
    (lambda s, t: rkd_ext.rkd_distance_loss(s, t, eps=0.0), "eps must be a positive", ValueError),
    (lambda s, t: rkd_ext.rkd_distance_loss(s, t, beta=-1.0), "beta must be", ValueError),
    (lambda s, t: rkd_ext.rkd_distance_loss(s, t, beta=float("nan")), "beta must be", ValueError),
    (lambda s, t: rkd_ext.rkd_distance_loss(s, t, mean_offset=-1.0), "mean_offset must be", ValueError),
    (lambda s, t: rkd_ext.pairwise_distance(s.int()), "x must be float16", TypeError),
])
def test_bad_input_is_a_clear_error(bad, match, exc):
    s, t = make_features(5, 3, seed=27), make_features(5, 4, seed=28)
    with pytest.raises(exc, match=match):
        bad(s, t)


def test_ops_check_their_arguments_directly():
    # The dispatcher ops can be called without the Python wrappers: they check too.
    ops = torch.ops.rkd_ext
    x = make_features(4, 3, seed=29)
    with pytest.raises(ValueError, match="2-D"):
        ops.pairwise_distance(x[0], 1e-12)
    # The raw operator's dtype error is a ValueError: the stable ABI carries no TypeError (csrc/torch_stable.h).
    with pytest.raises(ValueError, match=r"pairwise_distance: x must be float16, bfloat16, float32 or float64, got Int"):
        ops.pairwise_distance(x.int(), 1e-12)
    with pytest.raises(ValueError, match="same batch size"):
        ops.rkd_distance_loss(x, x[:2], 1.0, 1e-12, "mean", False, 0.0)
    d, d64 = ops.pairwise_distance(x, 1e-12)
    with pytest.raises(ValueError, match="float64 matrix saved by the forward op"):
        ops.pairwise_distance_backward(torch.ones(4, 4), x, d64.float(), 1e-12)
    with pytest.raises(ValueError, match="grad must have shape"):
        ops.pairwise_distance_backward(torch.ones(3, 4), x, d64, 1e-12)
    _, a, b, stats = ops.rkd_distance_loss(x, x, 1.0, 1e-12, "mean", False, 0.0)
    for bad in (stats.float(), stats[:3], stats.reshape(2, 2)):
        with pytest.raises(ValueError, match="stats must be the contiguous"):
            ops.rkd_distance_loss_backward(torch.tensor(1.0), x, x, a, b, bad, 1.0, 1e-12, "mean", False, 0.0,
                                           True, True)


def test_nan_and_inf_propagate():
    s = make_features(6, 3, seed=30)
    t = make_features(6, 3, seed=31)
    s_nan = s.clone()
    s_nan[2, 1] = float("nan")
    assert torch.isnan(rkd_ext.rkd_distance_loss(s_nan, t))
    s_inf = s.clone()
    s_inf[0, 0] = float("inf")
    assert not torch.isfinite(rkd_ext.rkd_distance_loss(s_inf, t))


# ---- determinism ------------------------------------------------------------------


# The CPU's products: the small-batch kernel in one feature chunk and in several
# (summed in chunk order), and the panel GEMM (N > 64 with short features, N > 256).
@pytest.mark.parametrize("n, ds, dt", [(40, 100, 90), (20, 5000, 2100), (70, 40, 30), (300, 70, 50)])
def test_bitwise_deterministic_across_calls_and_thread_counts(n, ds, dt):
    s = make_features(n, ds, seed=32, dtype=torch.float32, requires_grad=True)
    t = make_features(n, dt, seed=33, dtype=torch.float32, requires_grad=True)

    assert_bitwise_equal_runs(run_with_threads(lambda: value_and_grads(rkd_ext.rkd_distance_loss, s, t)))


# ---- dispatcher integration -------------------------------------------------------


def _op_samples():
    x = make_features(9, 5, seed=34, requires_grad=True)
    t = make_features(9, 4, seed=35, requires_grad=True)
    ops = torch.ops.rkd_ext
    yield ops.pairwise_distance.default, (x, 1e-12)
    yield ops.normalized_distance.default, (x, 1e-12)
    yield ops.rkd_distance_loss.default, (x, t, 1.0, 1e-12, "mean", False, 0.0)
    yield ops.rkd_distance_loss.default, (x, t, 0.5, 1e-12, "none", True, 1e-7)
    xd = x.detach()
    _, d64 = ops.pairwise_distance(xd, 1e-12)
    yield ops.pairwise_distance_backward.default, (torch.randn(9, 9, dtype=torch.float64), xd, d64, 1e-12)
    yield ops.normalized_distance_backward.default, (torch.randn(9, 9, dtype=torch.float64), xd, d64, 1e-12)
    td = t.detach()
    _, a, b, stats = ops.rkd_distance_loss(xd, td, 1.0, 1e-12, "sum", False, 0.0)
    yield ops.rkd_distance_loss_backward.default, (torch.tensor(1.0, dtype=torch.float64), xd, td, a, b, stats,
                                                   1.0, 1e-12, "sum", False, 0.0, True, True)
    _, a, b, stats = ops.rkd_distance_loss(xd, td, 1.0, 1e-12, "none", False, 0.0)
    yield ops.rkd_distance_loss_backward.default, (torch.randn(9, 9, dtype=torch.float64), xd, td, a, b, stats,
                                                   1.0, 1e-12, "none", False, 0.0, True, False)


@pytest.mark.parametrize("op,args", list(_op_samples()), ids=lambda v: getattr(v, "__name__", ""))
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_matches_eager():
    s = make_features(20, 8, seed=36, dtype=torch.float32, requires_grad=True)
    t = make_features(20, 6, seed=37, dtype=torch.float32)
    module = rkd_ext.RKDDistanceLoss()

    def f(a, b):
        return module(a, b) + rkd_ext.rkd_distance_loss(a, b, reduction="sum") * 0.01

    (eager, ge), (out, gc) = eager_and_compiled(f, s, t)
    assert_close(out, eager, 1e-6, 0, "value")
    assert_close(gc, ge, 1e-6, 1e-9, "gradient")


def test_fake_kernels_give_shapes_under_fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        s = torch.empty(11, 7)
        t = torch.empty(11, 3, dtype=torch.float16)
        loss, a, b, stats = torch.ops.rkd_ext.rkd_distance_loss(s, t, 1.0, 1e-12, "none", False, 0.0)
        assert loss.shape == (11, 11) and loss.dtype == torch.float32 and a.dtype == torch.float64
        assert stats.shape == (4,) and stats.dtype == torch.float64


def test_no_warning_on_ordinary_batches():
    s, t = make_features(6, 3, seed=38), make_features(6, 3, seed=39)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rkd_ext.rkd_distance_loss(s, t)


# ---- extreme scales -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", [1e20, 1e-20])
def test_extreme_scales_keep_their_digits(dtype, scale):
    # Distances near 1e20 (squares near 1e40) and near 1e-20 (squares near
    # 1e-40) are in float32's range although their squares are not: the
    # products must neither overflow nor underflow. eps scales along, or it
    # would clamp every tiny distance.
    eps = 1e-12 * scale**2
    x = (make_features(6, 5, seed=40) * scale).to(dtype)
    y = (make_features(6, 4, seed=41) * scale).to(dtype)
    x64, y64 = x.double(), y.double()
    rtol = TOL[dtype][0]
    d = rkd_ext.pairwise_distance(x, eps=eps)
    assert torch.isfinite(d).all()
    assert max_rel_err(d, R.pairwise_distance(x64, eps=eps)) < rtol
    s = x.detach().clone().requires_grad_(True)
    loss = rkd_ext.rkd_distance_loss(s, y, eps=eps)
    (g,) = torch.autograd.grad(loss, s)
    s64 = x64.clone().requires_grad_(True)
    truth = R.distance_loss(s64, y64, eps=eps)
    (truth_grad,) = torch.autograd.grad(truth, s64)
    assert max_rel_err(loss, truth) < 1e-5  # float32 arithmetic on the exact upcast inputs
    assert torch.isfinite(g).all()
    assert max_rel_err(g, truth_grad) < rtol
