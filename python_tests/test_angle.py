"""The angle family: angle_tensor and the fused rkd_angle_loss.

Oracle: rkd_ext.reference (the N x N x D normalise + bmm formulation), in
float64 for parity and as ground truth for accuracy comparisons.
"""
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, assert_bitwise_equal_runs, run_with_threads

import rkd_ext
from rkd_ext import reference as R
from rkd_ext.testing import (REDUCTIONS, TOL, assert_close, eager_and_compiled, float32_errors, float64_truth,
                              make_features, max_rel_err, value_and_grads, weighted_grads)


def _mask_degenerate(g):
    """Zero the entries (i, i, k) and (i, j, i), where the cosine is the constant 0."""
    n = g.shape[0]
    idx = torch.arange(n)
    g = g.clone()
    g[idx, idx, :] = 0
    g[idx, :, idx] = 0
    return g


# ---- parity with the reference in float64 ------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,ds,dt", [(3, 2, 2), (4, 1, 3), (17, 9, 5), (64, 33, 70), (129, 16, 8)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("normalize", [True, False])
def test_loss_matches_reference_float64(device, n, ds, dt, reduction, normalize):
    s = make_features(n, ds, device=device, seed=1, requires_grad=True)
    t = make_features(n, dt, device=device, seed=2, requires_grad=True)
    ours = rkd_ext.rkd_angle_loss(s, t, reduction=reduction, normalize=normalize)
    ref = R.angle_loss(s, t, reduction=reduction, normalize=normalize)
    assert_close(ours, ref, 1e-10, 1e-14 * ref.abs().max().item(), "value")
    # Unreduced and summed losses add up n^3 terms: so does their rounding. With
    # D = 1 the true gradient is 0 (collinear points), and only rounding is left.
    floor = 1e-12 * (1 if reduction == "mean" else n**3)
    for a, b in zip(weighted_grads(ours, (s, t)), weighted_grads(ref, (s, t))):
        assert_close(a, b, 1e-10, floor * max(1.0, b.abs().max().item()), "gradient")


def test_teacher_without_grad_gets_none_and_student_matches():
    s = make_features(20, 6, seed=3, requires_grad=True)
    t = make_features(20, 4, seed=4)
    ours = rkd_ext.rkd_angle_loss(s, t, beta=0.05)
    ref = R.angle_loss(s, t, beta=0.05)
    (ga,) = torch.autograd.grad(ours, s)
    (gb,) = torch.autograd.grad(ref, s)
    assert_close(ga, gb, 1e-10, 1e-14, "gradient")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,d", [(1, 3), (2, 2), (5, 3), (40, 17)])
@pytest.mark.parametrize("normalize", [True, False])
def test_angle_tensor_matches_reference_float64(device, n, d, normalize):
    x = make_features(n, d, device=device, seed=5, requires_grad=True)
    ours = rkd_ext.angle_tensor(x, normalize=normalize)
    ref = R.angle_tensor(x, normalize=normalize)
    assert_close(ours, ref, 1e-10, 1e-13 * max(1.0, ref.abs().max().item()), "value")
    idx = torch.arange(n)
    assert torch.count_nonzero(ours[idx, idx, :]) == 0 and torch.count_nonzero(ours[idx, :, idx]) == 0
    if n >= 2 and normalize:
        off = ~torch.eye(n, dtype=torch.bool, device=device)
        diag = torch.diagonal(ours, dim1=1, dim2=2)[off]
        assert_close(diag, torch.ones_like(diag), 1e-12, 0, "A[i, j, j]")
    # The reference's gradient through the degenerate (constant) entries is
    # rounding noise scaled by 1/eps; compare where it is meaningful.
    g = _mask_degenerate(torch.randn(ours.shape, dtype=torch.float64, device=device))
    (ga,) = torch.autograd.grad(ours, x, g)
    (gb,) = torch.autograd.grad(ref, x, g)
    assert_close(ga, gb, 1e-10, 1e-12 * max(1.0, gb.abs().max().item()), "gradient")


def test_angle_tensor_ignores_gradient_on_degenerate_entries():
    x = make_features(6, 4, seed=6, requires_grad=True)
    out = rkd_ext.angle_tensor(x)
    g = torch.randn(out.shape, dtype=torch.float64)
    (full,) = torch.autograd.grad(out, x, g)
    (masked,) = torch.autograd.grad(rkd_ext.angle_tensor(x), x, _mask_degenerate(g))
    assert torch.equal(full, masked)


# ---- finite differences ---------------------------------------------------------


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 8])
def test_loss_gradcheck(n):
    s = make_features(n, 3, seed=n, requires_grad=True)
    t = make_features(n, 4, seed=n + 20, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rkd_ext.rkd_angle_loss(a, b, beta=0.1), (s, t))


@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("normalize", [True, False])
def test_loss_gradcheck_reductions(reduction, normalize):
    s = make_features(5, 3, seed=30, requires_grad=True)
    t = make_features(5, 2, seed=31, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: rkd_ext.rkd_angle_loss(a, b, reduction=reduction, normalize=normalize), (s, t))


def test_angle_tensor_gradcheck():
    x = make_features(5, 3, seed=32, requires_grad=True)
    assert torch.autograd.gradcheck(rkd_ext.angle_tensor, (x,))


def test_gradcheck_with_duplicate_rows_in_the_batch():
    # Rows 0 and 1 coincide and stay fixed; the loss is smooth in the other
    # rows, and the zero subgradient through the coincident pair is exact there.
    fixed = make_features(1, 3, seed=33).repeat(2, 1)
    free = make_features(5, 3, seed=34, requires_grad=True)
    teacher = make_features(7, 4, seed=35, kind="dup")

    def loss(f):
        return rkd_ext.rkd_angle_loss(torch.cat([fixed, f]), teacher, beta=0.2)

    assert torch.autograd.gradcheck(loss, (free,))


def test_double_backward_is_a_clear_error():
    s = make_features(5, 3, seed=36, requires_grad=True)
    (g,) = torch.autograd.grad(rkd_ext.rkd_angle_loss(s, make_features(5, 3, seed=37)), s, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# ---- accuracy against float64 ground truth ----------------------------------------


@pytest.mark.parametrize("kind", ["random", "offset", "near"])
def test_float32_error_at_most_twice_the_reference(kind):
    x64, y64, truth, truth_grad = float64_truth(R.angle_loss, kind, (38, 39))
    truth_tensor = R.angle_tensor(x64)

    def run(loss_fn, tensor_fn):
        return (*float32_errors(loss_fn, x64, y64, truth, truth_grad),
                max_rel_err(tensor_fn(x64.float()), truth_tensor))

    ours = run(rkd_ext.rkd_angle_loss, rkd_ext.angle_tensor)
    ref = run(R.angle_loss, R.angle_tensor)
    for what, o, r in zip(("value", "gradient", "angle tensor"), ours, ref):
        assert o <= 2 * r + 1e-9, f"{kind} {what}: ours {o:.3e} vs reference {r:.3e}"


# ---- dtypes -------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs(device, dtype):
    s = make_features(24, 16, seed=40, dtype=dtype, device=device, requires_grad=True)
    t = make_features(24, 8, seed=41, dtype=dtype, device=device)
    loss = rkd_ext.rkd_angle_loss(s, t)
    assert loss.dtype == torch.float32
    (g,) = torch.autograd.grad(loss, s)
    assert g.dtype == dtype
    s64 = s.detach().double().requires_grad_(True)
    ref = R.angle_loss(s64, t.double())
    (ref_g,) = torch.autograd.grad(ref, s64)
    rtol, atol = TOL[dtype]
    assert_close(loss, ref, rtol, atol, "value")
    assert_close(g.float(), ref_g, rtol, atol * ref_g.abs().max().item(), "gradient")
    assert rkd_ext.angle_tensor(s).dtype == dtype


# ---- degenerate input ------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.filterwarnings("ignore:.*no triplets")
def test_fewer_than_three_samples_give_zero(n):
    s = make_features(n, 4, seed=42, requires_grad=True)
    t = make_features(n, 3, seed=43, requires_grad=True)
    loss = rkd_ext.rkd_angle_loss(s, t)
    assert loss.item() == 0.0
    gs, gt = torch.autograd.grad(loss, (s, t))
    assert torch.count_nonzero(gs) == 0 and torch.count_nonzero(gt) == 0
    assert rkd_ext.rkd_angle_loss(s, t, reduction="none").shape == (n, n, n)


def test_exact_duplicates_give_finite_documented_gradients():
    s = make_features(9, 5, seed=44, kind="dup", requires_grad=True)
    t = make_features(9, 5, seed=45, kind="dup", requires_grad=True)
    loss = rkd_ext.rkd_angle_loss(s, t)
    assert_close(loss, R.angle_loss(s, t), 1e-10, 1e-14, "value")
    gs, gt = torch.autograd.grad(loss, (s, t))
    assert torch.isfinite(gs).all() and torch.isfinite(gt).all()
    # Rows 0 and 4 coincide in both inputs, so swapping them leaves the loss
    # unchanged: with the zero subgradient through their own pair they get
    # the same gradient (the reference's is dominated by 1/eps-scaled noise).
    assert_close(gs[0], gs[4], 1e-9, 1e-12, "coincident rows")


@pytest.mark.parametrize("bad,match,exc", [
    (lambda s, t: rkd_ext.rkd_angle_loss(s[:0], t[:0]), "student must hold at least one sample", ValueError),
    (lambda s, t: rkd_ext.rkd_angle_loss(s, t[:2]), "same batch size, got 5 and 2", ValueError),
    (lambda s, t: rkd_ext.rkd_angle_loss(s, t.long()), "teacher must be float16", TypeError),
    (lambda s, t: rkd_ext.rkd_angle_loss(s, t, reduction="mean "), "reduction must be", ValueError),
    (lambda s, t: rkd_ext.angle_tensor(s[0]), r"x must have shape \(N, D\)", ValueError),
    (lambda s, t: torch.ops.rkd_ext.rkd_angle_loss(s, t[:3], 1.0, 1e-12, "mean", True), "same batch size",
     ValueError),
    (lambda s, t: torch.ops.rkd_ext.angle_tensor_backward(torch.ones(5, 5), s, torch.zeros(5, 5, dtype=torch.float64),
                                                          1e-12, True), "grad must have shape", ValueError),
])
def test_bad_input_is_a_clear_error(bad, match, exc):
    s, t = make_features(5, 3, seed=46), make_features(5, 4, seed=47)
    with pytest.raises(exc, match=match):
        bad(s, t)


def test_nan_propagates():
    s = make_features(6, 3, seed=48)
    s[3, 0] = float("nan")
    assert torch.isnan(rkd_ext.rkd_angle_loss(s, make_features(6, 3, seed=49)))


# ---- determinism and dispatcher integration ------------------------------------------


def test_bitwise_deterministic_across_calls_and_thread_counts():
    s = make_features(45, 20, seed=50, dtype=torch.float32, requires_grad=True)
    t = make_features(45, 12, seed=51, dtype=torch.float32, requires_grad=True)

    assert_bitwise_equal_runs(run_with_threads(lambda: value_and_grads(rkd_ext.rkd_angle_loss, s, t)))


def _op_samples():
    ops = torch.ops.rkd_ext
    x = make_features(7, 4, seed=52, requires_grad=True)
    t = make_features(7, 3, seed=53, requires_grad=True)
    yield ops.angle_tensor.default, (x, 1e-12, True)
    yield ops.angle_tensor.default, (x, 1e-12, False)
    yield ops.rkd_angle_loss.default, (x, t, 1.0, 1e-12, "mean", True)
    yield ops.rkd_angle_loss.default, (x, t, 0.3, 1e-12, "none", False)
    xd, td = x.detach(), t.detach()
    _, sq = ops.angle_tensor(xd, 1e-12, True)
    yield ops.angle_tensor_backward.default, (torch.randn(7, 7, 7, dtype=torch.float64), xd, sq, 1e-12, True)
    _, a, b = ops.rkd_angle_loss(xd, td, 1.0, 1e-12, "sum", True)
    yield ops.rkd_angle_loss_backward.default, (torch.tensor(2.0, dtype=torch.float64), xd, td, a, b, 1.0, 1e-12,
                                                "sum", True, True, True)


@pytest.mark.parametrize("op,args", list(_op_samples()))
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_matches_eager():
    s = make_features(16, 8, seed=54, dtype=torch.float32, requires_grad=True)
    t = make_features(16, 6, seed=55, dtype=torch.float32)
    criterion = rkd_ext.RKDLoss()

    def f(a, b):
        return criterion(F.normalize(a, dim=1), F.normalize(b, dim=1))

    (eager, ge), (out, gc) = eager_and_compiled(f, s, t)
    assert_close(out, eager, 1e-6, 0, "value")
    assert_close(gc, ge, 1e-5, 1e-8, "gradient")


# ---- large N: int64 indexing -----------------------------------------------------------


def _chunked_truth(x, y, chunk=8):
    """float64 angle loss and its gradient w.r.t. x, a few vertices at a time."""
    x = x.detach().clone().requires_grad_(True)
    n = x.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    ey = F.normalize(y.unsqueeze(0) - y.unsqueeze(1), dim=2)
    for i0 in range(0, n, chunk):
        ex = F.normalize(x.unsqueeze(0) - x[i0:i0 + chunk].unsqueeze(1), dim=2)
        ax = torch.bmm(ex, ex.transpose(1, 2))
        ay = torch.bmm(ey[i0:i0 + chunk], ey[i0:i0 + chunk].transpose(1, 2))
        part = F.smooth_l1_loss(ax, ay, reduction="sum") / n**3
        part.backward()
        total += part.detach()
    return total, x.grad


@pytest.mark.slow
def test_large_batch_beyond_int32_indexing():
    n = 1400  # n^3 > 2^31
    s = make_features(n, 6, seed=56, requires_grad=True)
    t = make_features(n, 5, seed=57)
    loss = rkd_ext.rkd_angle_loss(s, t)
    (g,) = torch.autograd.grad(loss, s)
    truth, truth_grad = _chunked_truth(s, t)
    assert_close(loss, truth, 1e-9, 0, "value")
    assert_close(g, truth_grad, 1e-7, 1e-9 * truth_grad.abs().max().item(), "gradient")
