"""Mixed precision: under torch.autocast the losses compute in float32 and return float32.

Oracle: rkd_ext.reference (and, for the compat wrappers, each framework's
formulation on top of it) run in float32 outside autocast on the same input
values. A loss computed in float16/bfloat16 would be off by ~1e-3; ours must
agree to float32 rounding. Gradients come back in the input dtype and equal
the float32 oracle's up to that dtype's rounding.
"""
import pytest
import torch
from test_compat import CASES, case_inputs

import rkd_ext
from rkd_ext import reference as R
from rkd_ext.testing import assert_close, make_features, max_rel_err

AUTOCAST = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
    pytest.param("cpu", torch.float16, id="cpu-fp16"),
    pytest.param("cuda", torch.float16, id="cuda-fp16", marks=[
        pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=[
        pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]),
]

CORE = {
    "rkd_distance_loss": (lambda s, t: rkd_ext.rkd_distance_loss(s, t), R.distance_loss),
    "rkd_distance_loss(squared, sum)": (
        lambda s, t: rkd_ext.rkd_distance_loss(s, t, squared=True, reduction="sum", mean_offset=1e-3),
        lambda s, t: R.distance_loss(s, t, squared=True, reduction="sum", mean_offset=1e-3)),
    "rkd_angle_loss": (lambda s, t: rkd_ext.rkd_angle_loss(s, t), R.angle_loss),
    "rkd_angle_loss(normalize=False)": (lambda s, t: rkd_ext.rkd_angle_loss(s, t, normalize=False),
                                        lambda s, t: R.angle_loss(s, t, normalize=False)),
    "RKDDistanceLoss": (lambda s, t: rkd_ext.RKDDistanceLoss()(s, t), R.distance_loss),
    "RKDAngleLoss": (lambda s, t: rkd_ext.RKDAngleLoss(beta=0.5)(s, t), lambda s, t: R.angle_loss(s, t, beta=0.5)),
    "RKDLoss": (lambda s, t: rkd_ext.RKDLoss()(s, t), lambda s, t: 25 * R.distance_loss(s, t) + 50 * R.angle_loss(s, t)),
}


def _run(call, oracle, s, t, device, amp_dtype, teacher_grad):
    with torch.autocast(device, dtype=amp_dtype):
        loss = call(s, t)
    assert loss.dtype == torch.float32, f"loss dtype {loss.dtype}"

    s32 = s.detach().float().requires_grad_()
    t32 = t.detach().float().requires_grad_()
    ref = oracle(s32, t32)
    assert_close(loss, ref, 1e-5, 1e-5 * float(ref.detach().abs().max()), "value")

    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(4)).to(device)
    (loss * w).sum().backward()
    (ref * w).sum().backward()
    # Up to the rounding of a gradient to the input dtype (float32: its own rounding).
    grad_tol = 1e-5 if s.dtype == torch.float32 else torch.finfo(s.dtype).eps
    assert s.grad.dtype == s.dtype
    assert max_rel_err(s.grad, s32.grad) <= grad_tol, "student gradient"
    if teacher_grad:
        assert t.grad.dtype == t.dtype
        assert max_rel_err(t.grad, t32.grad) <= grad_tol, "teacher gradient"


@pytest.mark.parametrize("device,amp_dtype", AUTOCAST)
@pytest.mark.parametrize("low_precision_inputs", [True, False], ids=["half-inputs", "float32-inputs"])
@pytest.mark.parametrize("name", list(CORE))
def test_core_losses_under_autocast(name, device, amp_dtype, low_precision_inputs):
    dtype = amp_dtype if low_precision_inputs else torch.float32
    s = make_features(9, 13, dtype=dtype, device=device, seed=1, requires_grad=True)
    t = make_features(9, 6, dtype=dtype, device=device, seed=2, requires_grad=True)
    _run(*CORE[name], s, t, device, amp_dtype, teacher_grad=True)


@pytest.mark.parametrize("device,amp_dtype", AUTOCAST)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_compat_under_autocast(case, device, amp_dtype):
    s, t = case_inputs(case, 8, amp_dtype, device)
    _run(case.call, case.oracle, s, t, device, amp_dtype, case.teacher_grad)


@pytest.mark.parametrize("device,amp_dtype", AUTOCAST)
def test_autocast_in_a_training_step(device, amp_dtype):
    # The usual shape of mixed-precision distillation: features from layers
    # that autocast runs in low precision, the loss on top.
    torch.manual_seed(0)
    student = torch.nn.Linear(16, 8).to(device)
    x = make_features(10, 16, dtype=torch.float32, device=device, seed=3)
    t = make_features(10, 12, dtype=torch.float32, device=device, seed=4)
    with torch.autocast(device, dtype=amp_dtype):
        features = student(x)
        assert features.dtype == amp_dtype
        loss = rkd_ext.RKDLoss()(features, t)
    assert loss.dtype == torch.float32
    loss.backward()
    assert student.weight.grad.dtype == torch.float32 and torch.isfinite(student.weight.grad).all()
    ref = 25 * R.distance_loss(features.detach().float(), t) + 50 * R.angle_loss(features.detach().float(), t)
    assert_close(loss, ref, 1e-5, 1e-6, "value")
