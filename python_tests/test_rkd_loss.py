"""The fused rkd_loss: both RKD terms from one squared-distance matrix per input, one gradient product per input.

Oracle: rkd_ext.reference, ``distance_weight * distance_loss + angle_weight *
angle_loss``, in float64 for parity and as ground truth for accuracy; finite
differences (gradcheck). The single-term ops serve only where the fused op
must reduce to them exactly (a term weighted 0 is skipped).
"""
import pytest
import torch
from conftest import DEVICES, assert_bitwise_equal_runs, run_with_threads

import rkd_ext
from rkd_ext import reference as R
from rkd_ext.testing import (TOL, assert_close, eager_and_compiled, float32_errors, float64_truth, make_features,
                             value_and_grads)

OPS = torch.ops.rkd_ext


def _reference(s, t, distance_weight=25.0, angle_weight=50.0, beta=1.0, eps=1e-12, angle_eps=None, reduction="mean",
               squared=False, mean_offset=0.0, normalize=True):
    angle_eps = eps if angle_eps is None else angle_eps
    loss = 0
    if distance_weight:
        loss = loss + distance_weight * R.distance_loss(s, t, beta, eps, reduction, squared, mean_offset)
    if angle_weight:
        loss = loss + angle_weight * R.angle_loss(s, t, beta, angle_eps, reduction, normalize)
    return loss


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs, allow_unused=True)


# ---- parity with the reference in float64 ------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,ds,dt", [(3, 2, 2), (4, 1, 3), (17, 9, 5), (64, 33, 70)])
@pytest.mark.parametrize("weights", [(25.0, 50.0), (25.0, 0.0), (0.0, 50.0), (1.5, 0.5)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_reference_float64(device, n, ds, dt, weights, reduction):
    s = make_features(n, ds, device=device, seed=1, requires_grad=True)
    t = make_features(n, dt, device=device, seed=2, requires_grad=True)
    kw = dict(distance_weight=weights[0], angle_weight=weights[1], reduction=reduction)
    ours = rkd_ext.rkd_loss(s, t, **kw)
    ref = _reference(s, t, **kw)
    assert ours.dtype == torch.float64
    assert_close(ours, ref, 1e-10, 1e-14 * ref.abs().item(), "value")
    # A summed angle term adds n^3 terms, and so does its rounding; with D = 1
    # the angle gradient is 0 (collinear points) and only rounding, times the
    # weights, is left.
    floor = 1e-12 * sum(weights) * (1 if reduction == "mean" else n**3)
    for a, b in zip(_grads(ours, (s, t)), _grads(ref, (s, t))):
        assert_close(a, b, 1e-10, floor * max(1.0, b.abs().max().item()), "gradient")


@pytest.mark.parametrize("kw", [
    dict(beta=0.3, squared=True),
    dict(eps=1e-10, mean_offset=1e-7, normalize=False),
    dict(beta=0.0, angle_eps=1e-6),
    dict(distance_weight=3.0, angle_weight=0.0, squared=True, mean_offset=0.5),
], ids=repr)
def test_variants_match_reference(kw):
    s = make_features(12, 7, seed=3, requires_grad=True)
    t = make_features(12, 5, seed=4, requires_grad=True)
    ours, ref = rkd_ext.rkd_loss(s, t, **kw), _reference(s, t, **kw)
    assert_close(ours, ref, 1e-10, 1e-14, "value")
    for a, b in zip(_grads(ours, (s, t)), _grads(ref, (s, t))):
        assert_close(a, b, 1e-10, 1e-12 * b.abs().max().item(), "gradient")


def test_noncontiguous_and_high_rank_inputs():
    s = make_features(6, 24, seed=5).reshape(6, 2, 3, 4).transpose(1, 3).requires_grad_()
    t = make_features(6, 10, seed=6).t().contiguous().t()
    ours = rkd_ext.rkd_loss(s, t)
    ref = _reference(s.reshape(6, -1), t)
    assert_close(ours, ref, 1e-10, 1e-14, "value")
    assert_close(_grads(ours, (s,))[0], _grads(ref, (s,))[0], 1e-10, 1e-12, "gradient")


# ---- finite differences --------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    dict(),
    dict(reduction="sum", beta=0.5),
    dict(squared=True, mean_offset=1e-7, normalize=False),
    dict(angle_weight=0.0),
    dict(distance_weight=0.0, beta=0.2),
], ids=repr)
def test_gradcheck(kw):
    s = make_features(5, 3, seed=7, requires_grad=True)
    t = make_features(5, 2, seed=8, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rkd_ext.rkd_loss(a, b, **kw), (s, t))


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_one_sided_gradients_match_reference(side):
    s = make_features(9, 4, seed=9, requires_grad=side == "student")
    t = make_features(9, 6, seed=10, requires_grad=side == "teacher")
    x = s if side == "student" else t
    (ours,) = torch.autograd.grad(rkd_ext.rkd_loss(s, t, beta=0.4), x)
    (ref,) = torch.autograd.grad(_reference(s, t, beta=0.4), x)
    assert_close(ours, ref, 1e-10, 1e-12 * ref.abs().max().item(), "gradient")


def test_double_backward_is_a_clear_error():
    s = make_features(5, 3, seed=11, requires_grad=True)
    (g,) = torch.autograd.grad(rkd_ext.rkd_loss(s, make_features(5, 3, seed=12)), s, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# ---- a term weighted 0 is skipped --------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("term", ["distance", "angle"])
def test_one_term_alone_is_that_terms_op_bit_for_bit(term, dtype):
    # With the other term weighted 0 nothing of it runs: the fused op is the
    # single-term op, down to its arithmetic (the distance loss's float32
    # products for float32 features, which the angle term would forbid).
    s = make_features(20, 9, seed=13, dtype=dtype, requires_grad=True)
    t = make_features(20, 7, seed=14, dtype=dtype, requires_grad=True)
    weights = (1.0, 0.0) if term == "distance" else (0.0, 1.0)
    single = rkd_ext.rkd_distance_loss if term == "distance" else rkd_ext.rkd_angle_loss
    fused = value_and_grads(lambda a, b: rkd_ext.rkd_loss(a, b, distance_weight=weights[0],
                                                          angle_weight=weights[1], beta=0.7), s, t)
    alone = value_and_grads(lambda a, b: single(a, b, beta=0.7), s, t)
    for a, b in zip(fused, alone):
        assert torch.equal(a, b)


def test_both_weights_zero_give_zero_with_zero_gradients():
    s = make_features(6, 3, seed=15, requires_grad=True)
    t = make_features(6, 4, seed=16, requires_grad=True)
    loss = rkd_ext.rkd_loss(s, t, distance_weight=0, angle_weight=0)
    assert loss.item() == 0.0
    for g, x in zip(_grads(loss, (s, t)), (s, t)):
        assert torch.equal(g, torch.zeros_like(x))


# ---- accuracy and agreement with the separate terms in float32 ----------------------------


@pytest.mark.parametrize("kind", ["random", "offset", "near"])
def test_float32_error_at_most_twice_the_reference(kind):
    x64, y64, truth, truth_grad = float64_truth(_reference, kind, (17, 18))
    ours = float32_errors(rkd_ext.rkd_loss, x64, y64, truth, truth_grad)
    ref = float32_errors(_reference, x64, y64, truth, truth_grad)
    # What rounding the inputs to float32 costs exact arithmetic: on near
    # duplicates it dominates the angle term, and the reference's own
    # rounding errors may happen to offset part of it.
    inputs = float32_errors(lambda a, b: _reference(a.double(), b.double()), x64, y64, truth, truth_grad)
    for what, o, r, i in zip(("value", "gradient"), ours, ref, inputs):
        assert o <= 2 * max(r, i) + 1e-9, f"{kind} {what}: ours {o:.3e} vs reference {r:.3e} (inputs {i:.3e})"


def test_float32_agrees_with_the_separate_terms():
    # The same loss as the two ops weighted and added, to float32 rounding: the
    # distance term gets float64 products here, and the sum is rounded once.
    s = make_features(32, 64, seed=19, dtype=torch.float32, requires_grad=True)
    t = make_features(32, 48, seed=20, dtype=torch.float32)
    fused = value_and_grads(rkd_ext.rkd_loss, s, t)
    separate = value_and_grads(lambda a, b: 25 * rkd_ext.rkd_distance_loss(a, b) + 50 * rkd_ext.rkd_angle_loss(a, b),
                               s, t)
    rtol, _ = TOL[torch.float32]
    for a, b in zip(fused, separate):
        assert_close(a, b, rtol, rtol * b.abs().max().item(), "fused vs separate")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs(device, dtype):
    s = make_features(24, 16, seed=21, dtype=dtype, device=device, requires_grad=True)
    t = make_features(24, 8, seed=22, dtype=dtype, device=device)
    loss = rkd_ext.rkd_loss(s, t)
    assert loss.dtype == torch.float32
    (g,) = torch.autograd.grad(loss, s)
    assert g.dtype == dtype
    s64 = s.detach().double().requires_grad_(True)
    ref = _reference(s64, t.double())
    (ref_g,) = torch.autograd.grad(ref, s64)
    rtol, atol = TOL[dtype]
    assert_close(loss, ref, rtol, atol * ref.abs().item(), "value")
    assert_close(g.float(), ref_g, rtol, atol * ref_g.abs().max().item(), "gradient")


def test_mixed_dtypes_promote_loss():
    s = make_features(7, 3, seed=23, dtype=torch.float32)
    t = make_features(7, 3, seed=24, dtype=torch.float64)
    assert rkd_ext.rkd_loss(s, t).dtype == torch.float64


# ---- degenerate and bad input ---------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.filterwarnings("ignore:.*no (pairs|triplets)")
def test_batches_without_relations(n):
    # N = 1: neither term has relations; N = 2: the distance term alone.
    s = make_features(n, 4, seed=25, requires_grad=True)
    t = make_features(n, 3, seed=26, requires_grad=True)
    loss = rkd_ext.rkd_loss(s, t)
    expected = 25 * R.distance_loss(s, t) if n == 2 else torch.zeros((), dtype=torch.float64)
    assert_close(loss, expected, 1e-10, 1e-14, "value")
    gs, gt = _grads(loss, (s, t))
    assert torch.isfinite(gs).all() and torch.isfinite(gt).all()
    if n == 1:
        assert torch.count_nonzero(gs) == 0 and torch.count_nonzero(gt) == 0


def test_exact_duplicates_give_finite_gradients():
    s = make_features(9, 5, seed=27, kind="dup", requires_grad=True)
    t = make_features(9, 5, seed=28, kind="dup")
    loss = rkd_ext.rkd_loss(s, t)
    assert_close(loss, _reference(s, t), 1e-10, 1e-14, "value")
    (g,) = _grads(loss, (s,))
    assert torch.isfinite(g).all() and g.abs().max() < 1e3


@pytest.mark.parametrize("bad,match,exc", [
    (lambda s, t: rkd_ext.rkd_loss(s, t, reduction="none"), "reduction must be 'mean' or 'sum'", ValueError),
    (lambda s, t: rkd_ext.rkd_loss(s, t, reduction="avg"), "reduction must be", ValueError),
    (lambda s, t: rkd_ext.rkd_loss(s, t[:2]), "same batch size, got 5 and 2", ValueError),
    (lambda s, t: rkd_ext.rkd_loss(s, t.long()), "teacher must be float16", TypeError),
    (lambda s, t: rkd_ext.rkd_loss(s, t, angle_weight=-1.0), "rkd_loss: angle_weight must be a finite number >= 0",
     ValueError),
    (lambda s, t: rkd_ext.rkd_loss(s, t, angle_eps=0.0), "rkd_loss: angle_eps must be a positive finite number",
     ValueError),
    (lambda s, t: rkd_ext.rkd_loss(s, t, normalize="False"), "normalize must be a bool", TypeError),
    (lambda s, t: OPS.rkd_loss(s, t, 1.0, 1.0, 1.0, 1e-12, 1e-12, "none", False, 0.0, True),
     "rkd_loss: reduction must be 'mean' or 'sum'", ValueError),
    (lambda s, t: OPS.rkd_loss(s, t, float("inf"), 1.0, 1.0, 1e-12, 1e-12, "mean", False, 0.0, True),
     "rkd_loss: distance_weight must be a finite number >= 0", ValueError),
    (lambda s, t: OPS.rkd_loss(s, t, 1.0, 1.0, 1.0, 1e-12, -1.0, "mean", False, 0.0, True),
     "rkd_loss: angle_eps must be a positive finite number", ValueError),
    (lambda s, t: OPS.rkd_loss_backward(torch.ones(2), s, t, torch.zeros(5, 5, dtype=torch.float64),
                                        torch.zeros(5, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.float64),
                                        1.0, 1.0, 1.0, 1e-12, 1e-12, "mean", False, 0.0, True, True, True),
     "grad must be a scalar", ValueError),
    (lambda s, t: OPS.rkd_loss_backward(torch.ones(()), s, t, torch.zeros(4, 4, dtype=torch.float64),
                                        torch.zeros(5, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.float64),
                                        1.0, 1.0, 1.0, 1e-12, 1e-12, "mean", False, 0.0, True, True, True),
     "sq_student must be the contiguous", ValueError),
    (lambda s, t: OPS.rkd_loss_backward(torch.ones(()), s, t, torch.zeros(5, 5, dtype=torch.float64),
                                        torch.zeros(5, 5, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                                        1.0, 1.0, 1.0, 1e-12, 1e-12, "mean", False, 0.0, True, True, True),
     r"stats must be the contiguous \(4,\) float64 tensor", ValueError),
])
def test_bad_input_is_a_clear_error(bad, match, exc):
    s, t = make_features(5, 3, seed=29), make_features(5, 4, seed=30)
    with pytest.raises(exc, match=match):
        bad(s, t)


def test_nan_propagates():
    s = make_features(6, 3, seed=31)
    s[3, 0] = float("nan")
    assert torch.isnan(rkd_ext.rkd_loss(s, make_features(6, 3, seed=32)))


# ---- determinism, dispatcher and compiler integration -----------------------------------------


def test_bitwise_deterministic_across_calls_and_thread_counts():
    s = make_features(45, 20, seed=33, dtype=torch.float32, requires_grad=True)
    t = make_features(45, 12, seed=34, dtype=torch.float32, requires_grad=True)
    assert_bitwise_equal_runs(run_with_threads(lambda: value_and_grads(rkd_ext.rkd_loss, s, t)))


def _op_samples():
    x = make_features(7, 4, seed=35, requires_grad=True)
    t = make_features(7, 3, seed=36, requires_grad=True)
    yield OPS.rkd_loss.default, (x, t, 25.0, 50.0, 1.0, 1e-12, 1e-12, "mean", False, 0.0, True)
    yield OPS.rkd_loss.default, (x, t, 0.5, 0.5, 0.3, 1e-10, 1e-12, "sum", True, 1e-7, False)
    yield OPS.rkd_loss.default, (x, t, 2.0, 0.0, 1.0, 1e-12, 1e-12, "mean", False, 0.0, True)
    xd, td = x.detach(), t.detach()
    args = (25.0, 50.0, 1.0, 1e-12, 1e-12, "sum", False, 0.0, True)
    _, a, b, stats = OPS.rkd_loss(xd, td, *args)
    yield OPS.rkd_loss_backward.default, (torch.tensor(2.0, dtype=torch.float64), xd, td, a, b, stats, *args, True,
                                          True)
    yield OPS.rkd_loss_backward.default, (torch.tensor(0.5, dtype=torch.float64), xd, td, a, b, stats, *args, False,
                                          True)


@pytest.mark.parametrize("op,args", list(_op_samples()), ids=lambda v: getattr(v, "__name__", ""))
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("fn", [
    rkd_ext.RKDLoss(),
    lambda s, t: rkd_ext.rkd_loss(s, t, reduction="sum", squared=True, normalize=False),
], ids=["RKDLoss", "rkd_loss(sum, squared, normalize=False)"])
def test_torch_compile_fullgraph_matches_eager(fn):
    s = make_features(16, 8, seed=37, dtype=torch.float32, requires_grad=True)
    t = make_features(16, 6, seed=38, dtype=torch.float32)
    (eager, eager_g), (compiled, compiled_g) = eager_and_compiled(fn, s, t)
    assert_close(compiled, eager, 1e-6, 1e-7, "value")
    assert_close(compiled_g, eager_g, 1e-6, 1e-7 * eager_g.abs().max().item(), "gradient")


def test_rkdloss_is_the_fused_op():
    graph = torch.export.export(rkd_ext.RKDLoss(), (make_features(6, 4, seed=39), make_features(6, 3, seed=40)))
    text = str(graph.graph)
    assert "rkd_ext.rkd_loss" in text
    assert "rkd_distance_loss" not in text and "rkd_angle_loss" not in text


def test_fake_kernel_gives_shapes_under_fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        s, t = torch.empty(9, 5), torch.empty(9, 3, dtype=torch.float64)
        loss, a, b, stats = OPS.rkd_loss(s, t, 25.0, 50.0, 1.0, 1e-12, 1e-12, "mean", False, 0.0, True)
        assert stats.shape == (4,) and stats.dtype == torch.float64
        assert loss.shape == () and loss.dtype == torch.float64
        assert a.shape == b.shape == (9, 9) and a.dtype == torch.float64
