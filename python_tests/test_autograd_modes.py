"""Differentiation beyond loss.backward(): torch.func's transforms and forward-mode AD.

Oracle: torch.autograd on rkd_ext.reference in float64. Reverse mode through
torch.func (grad, vjp, jacrev, also under torch.compile) and through compiled
autograd must give the reference's derivatives; forward mode, which the
operators do not implement, must be a clear error rather than a zero tangent.
"""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from rkd_ext.testing import assert_close, make_features
from torch._dynamo import compiled_autograd
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import rkd_ext
from rkd_ext import reference as R

# jacrev vmaps the backward operators, which have no batching rule: torch's
# per-sample fallback is correct, and says it is slow.
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def _weights(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _angle_weights(n):
    # The reference's gradient through the constant entries A[i, i, k] and
    # A[i, j, i] is rounding noise scaled by 1/eps: weight them 0.
    w = _weights((n, n, n))
    idx = torch.arange(n)
    w[idx, idx, :] = 0
    w[idx, :, idx] = 0
    return w


# name -> (ours, reference), both (student, teacher) -> scalar.
N = 6
SCALAR = {
    "pairwise_distance": (lambda s, t: (rkd_ext.pairwise_distance(s) * _weights((N, N))).sum(),
                          lambda s, t: (R.pairwise_distance(s) * _weights((N, N))).sum()),
    "normalized_distance": (lambda s, t: (rkd_ext.normalized_distance(s) * _weights((N, N))).sum(),
                            lambda s, t: (R.normalized_distance(s) * _weights((N, N))).sum()),
    "angle_tensor": (lambda s, t: (rkd_ext.angle_tensor(s) * _angle_weights(N)).sum(),
                     lambda s, t: (R.angle_tensor(s) * _angle_weights(N)).sum()),
    "rkd_distance_loss": (lambda s, t: rkd_ext.rkd_distance_loss(s, t, beta=0.5, squared=True),
                          lambda s, t: R.distance_loss(s, t, beta=0.5, squared=True)),
    "rkd_distance_loss(none)": (lambda s, t: (rkd_ext.rkd_distance_loss(s, t, reduction="none")
                                              * _weights((N, N))).sum(),
                                lambda s, t: (R.distance_loss(s, t, reduction="none") * _weights((N, N))).sum()),
    "rkd_angle_loss": (lambda s, t: rkd_ext.rkd_angle_loss(s, t, beta=0.2),
                       lambda s, t: R.angle_loss(s, t, beta=0.2)),
    "rkd_angle_loss(normalize=False, sum)": (
        lambda s, t: rkd_ext.rkd_angle_loss(s, t, normalize=False, reduction="sum"),
        lambda s, t: R.angle_loss(s, t, normalize=False, reduction="sum")),
    "RKDLoss": (lambda s, t: rkd_ext.RKDLoss()(s, t),
                lambda s, t: 25 * R.distance_loss(s, t) + 50 * R.angle_loss(s, t)),
    "rkd_loss": (lambda s, t: rkd_ext.rkd_loss(s, t, distance_weight=2.0, angle_weight=3.0, beta=0.5, reduction="sum"),
                 lambda s, t: 2 * R.distance_loss(s, t, beta=0.5, reduction="sum")
                 + 3 * R.angle_loss(s, t, beta=0.5, reduction="sum")),
}


def _inputs():
    return make_features(N, 4, seed=1), make_features(N, 3, seed=2)


def _reference_grads(ref, s, t):
    s, t = s.clone().requires_grad_(), t.clone().requires_grad_()
    return torch.autograd.grad(ref(s, t), (s, t), allow_unused=True)


def _assert_grads_match(got, expected, what):
    for name, g, e in zip(("student", "teacher"), got, expected):
        if e is None:  # the function does not use the teacher
            assert_close(g, torch.zeros_like(g), 0, 0, f"{what} {name} gradient")
        else:
            assert_close(g, e, 1e-10, 1e-12 * max(1.0, float(e.abs().max())), f"{what} {name} gradient")


@pytest.mark.parametrize("name", list(SCALAR))
def test_func_grad_matches_reference(name):
    ours, ref = SCALAR[name]
    s, t = _inputs()
    _assert_grads_match(grad(ours, argnums=(0, 1))(s, t), _reference_grads(ref, s, t), name)


@pytest.mark.parametrize("name", ["rkd_distance_loss", "rkd_angle_loss", "RKDLoss", "rkd_loss"])
def test_func_vjp_matches_reference(name):
    ours, ref = SCALAR[name]
    s, t = _inputs()
    value, pullback = vjp(ours, s, t)
    assert_close(value, ref(s, t), 1e-10, 0, f"{name} value")
    _assert_grads_match(pullback(torch.tensor(1.0, dtype=torch.float64)), _reference_grads(ref, s, t), name)


@pytest.mark.parametrize("name,ours,ref", [
    ("pairwise_distance", rkd_ext.pairwise_distance, R.pairwise_distance),
    ("normalized_distance", rkd_ext.normalized_distance, R.normalized_distance),
])
def test_jacrev_matches_reference_jacobian(name, ours, ref):
    x = make_features(5, 3, seed=3)
    got = jacrev(ours)(x)
    expected = torch.autograd.functional.jacobian(ref, x)
    assert got.shape == (5, 5, 5, 3)
    assert_close(got, expected, 1e-10, 1e-12, f"{name} jacobian")


def test_func_grad_under_torch_compile_fullgraph():
    ours, ref = SCALAR["rkd_angle_loss"]
    s, t = _inputs()
    compiled = torch.compile(grad(ours, argnums=(0, 1)), fullgraph=True, backend="aot_eager")
    _assert_grads_match(compiled(s, t), _reference_grads(ref, s, t), "compiled")


def test_per_sample_grads_under_vmap_match_reference():
    # B independent problems stacked along a leading dim: vmap(grad(loss)) is
    # the reference gradient of each.
    ours, ref = SCALAR["rkd_angle_loss"]
    s = torch.stack([make_features(N, 4, seed=10 + b) for b in range(3)])
    t = torch.stack([make_features(N, 3, seed=20 + b) for b in range(3)])
    got_s, got_t = vmap(grad(ours, argnums=(0, 1)))(s, t)
    for b in range(3):
        _assert_grads_match((got_s[b], got_t[b]), _reference_grads(ref, s[b], t[b]), f"problem {b}")


@pytest.mark.parametrize("second_order,message", [
    (lambda f: lambda s, t: grad(lambda x: grad(f)(x, t).sum())(s), "double backward"),
    (lambda f: lambda s, t: jacrev(jacrev(f))(s, t), "double backward"),
    # forward-over-reverse: the forward-mode pass reaches the forward op first
    (lambda f: lambda s, t: hessian(f)(s, t), "forward-mode AD"),
], ids=["grad(grad)", "jacrev(jacrev)", "hessian"])
def test_second_order_through_torch_func_is_a_clear_error(second_order, message):
    ours, _ = SCALAR["rkd_distance_loss"]
    s, t = _inputs()
    with pytest.raises(RuntimeError, match=message):
        second_order(ours)(s, t)


# ---- forward mode: a clear error, never a silent zero ----------------------------

FORWARD_MODES = {
    "torch.func.jvp": lambda f, s, t: jvp(f, (s, t), (torch.ones_like(s), torch.ones_like(t))),
    "torch.func.jacfwd": lambda f, s, t: jacfwd(f)(s, t),
}


def _forward_ad(f, s, t):
    with fwAD.dual_level():
        out = f(fwAD.make_dual(s, torch.ones_like(s)), t)
        return fwAD.unpack_dual(out).tangent


FORWARD_MODES["torch.autograd.forward_ad"] = _forward_ad


@pytest.mark.parametrize("mode", list(FORWARD_MODES))
@pytest.mark.parametrize("name", ["pairwise_distance", "normalized_distance", "angle_tensor", "rkd_distance_loss",
                                  "rkd_angle_loss", "rkd_loss"])
def test_forward_mode_is_a_clear_error(name, mode):
    ours, _ = SCALAR[name]
    s, t = _inputs()
    with pytest.raises(RuntimeError, match=f"forward-mode AD .* through {name} is not supported.*reverse mode"):
        FORWARD_MODES[mode](ours, s, t)


def test_compiled_autograd_matches_reference():
    ours, ref = SCALAR["RKDLoss"]
    s, t = (x.clone().requires_grad_() for x in _inputs())
    loss = ours(s, t)
    torch._dynamo.reset()
    try:
        with compiled_autograd._enable(torch.compile(backend="aot_eager")):
            loss.backward()
    finally:
        torch._dynamo.reset()
    _assert_grads_match((s.grad, t.grad), _reference_grads(ref, s.detach(), t.detach()), "compiled autograd")
