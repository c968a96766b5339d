"""Scalar, switch and input arguments of every public function, module and compat wrapper.

Accepted forms must be used as the number (or bool) they stand for: the
oracle is rkd_ext.reference called with that Python float or bool, in float64.
Refused forms must raise an error that names the argument and what came.
"""
import fractions

import numpy as np
import pytest
import torch
from rkd_ext.testing import assert_close, make_features
from test_compat import CASES, case_inputs

import rkd_ext
from rkd_ext import reference as R
from rkd_ext.compat import kdlib, mdistiller, mmrazor, repdistiller, torchdistill

# ---- real scalars: eps, beta, mean_offset ------------------------------------------

# The same number in every form a caller may hold it in.
FOUR = [4, 4.0, np.float32(4.0), np.float64(4.0), np.float16(4.0), np.int64(4), np.int32(4), torch.tensor(4.0),
        torch.tensor(4.0, dtype=torch.float64), torch.tensor(4), fractions.Fraction(4)]
QUARTER = [0.25, np.float32(0.25), np.float16(0.25), torch.tensor(0.25), torch.tensor(0.25, dtype=torch.float64),
           fractions.Fraction(1, 4)]


def _inputs():
    # Squared distances from 0.6 (teacher) and 2.6 (student) to ~30: eps=4
    # clamps some of each, so a wrong eps shows in the value.
    return make_features(7, 3, seed=1), make_features(7, 4, seed=2)


def _form(value):
    return f"{type(value).__name__}({float(value)})"


# (name, ours(s, t, value), reference(s, t, float)) for a scalar that takes 4.0
SCALAR_FOUR = [
    ("rkd_distance_loss(eps)", lambda s, t, v: rkd_ext.rkd_distance_loss(s, t, eps=v),
     lambda s, t, v: R.distance_loss(s, t, eps=v)),
    ("pairwise_distance(eps)", lambda s, t, v: rkd_ext.pairwise_distance(s, eps=v),
     lambda s, t, v: R.pairwise_distance(s, eps=v)),
    ("normalized_distance(eps)", lambda s, t, v: rkd_ext.normalized_distance(s, eps=v),
     lambda s, t, v: R.normalized_distance(s, eps=v)),
    ("rkd_distance_loss(beta)", lambda s, t, v: rkd_ext.rkd_distance_loss(s * 3, t, beta=v),
     lambda s, t, v: R.distance_loss(s * 3, t, beta=v)),
    ("rkd_distance_loss(mean_offset)", lambda s, t, v: rkd_ext.rkd_distance_loss(s, t, mean_offset=v),
     lambda s, t, v: R.distance_loss(s, t, mean_offset=v)),
    ("RKDDistanceLoss(eps)", lambda s, t, v: rkd_ext.RKDDistanceLoss(eps=v)(s, t),
     lambda s, t, v: R.distance_loss(s, t, eps=v)),
    ("RKDLoss(eps)", lambda s, t, v: rkd_ext.RKDLoss(eps=v)(s, t),
     lambda s, t, v: 25 * R.distance_loss(s, t, eps=v) + 50 * R.angle_loss(s, t, eps=v)),
    ("mdistiller.rkd_loss(eps)", lambda s, t, v: mdistiller.rkd_loss(s, t, eps=v, angle_weight=0),
     lambda s, t, v: 25 * R.distance_loss(s, t, eps=v)),
]
# eps of the angle terms clamps difference norms (from 0.16 on inputs scaled by 0.1),
# beta the cosine differences (< 2).
SCALAR_QUARTER = [
    ("rkd_angle_loss(beta)", lambda s, t, v: rkd_ext.rkd_angle_loss(s, t, beta=v),
     lambda s, t, v: R.angle_loss(s, t, beta=v)),
    ("angle_tensor(eps)", lambda s, t, v: rkd_ext.angle_tensor(s * 0.1, eps=v),
     lambda s, t, v: R.angle_tensor(s * 0.1, eps=v)),
    ("rkd_angle_loss(eps)", lambda s, t, v: rkd_ext.rkd_angle_loss(s * 0.1, t, eps=v),
     lambda s, t, v: R.angle_loss(s * 0.1, t, eps=v)),
    ("RKDAngleLoss(beta)", lambda s, t, v: rkd_ext.RKDAngleLoss(beta=v)(s, t),
     lambda s, t, v: R.angle_loss(s, t, beta=v)),
]


def _scalar_cases(cases, forms):
    return [pytest.param(ours, ref, v, id=f"{name}={_form(v)}") for name, ours, ref in cases for v in forms]


@pytest.mark.parametrize("ours,ref,value", _scalar_cases(SCALAR_FOUR, FOUR) + _scalar_cases(SCALAR_QUARTER, QUARTER))
def test_real_scalars_in_any_form_are_that_number(ours, ref, value):
    s, t = _inputs()
    got = ours(s, t, value)
    expected = ref(s, t, float(value))
    assert_close(got, expected, 1e-10, 1e-13, "value")


@pytest.mark.parametrize("cases,value", [(SCALAR_FOUR, 4.0), (SCALAR_QUARTER, 0.25)], ids=["4", "1/4"])
def test_the_scalar_matters_in_the_cases_above(cases, value):
    # Each case's reference differs between the tested value and the
    # argument's default, so a wrapper that ignored the argument could not pass.
    defaults = {"eps": 1e-12, "beta": 1.0, "mean_offset": 0.0}
    s, t = _inputs()
    for name, _, ref in cases:
        arg = name[name.index("(") + 1:-1]
        assert not torch.allclose(ref(s, t, value), ref(s, t, defaults[arg]), rtol=1e-6, atol=0), name


REFUSED_TYPES = [True, False, np.bool_(True), 1 + 0j, np.complex64(1), torch.tensor(1 + 0j), torch.tensor(True),
                 torch.tensor([1.0]), "1e-3", None, [1.0]]


# (name, call(value), the message's argument)
SCALAR_ARGS = [
    ("rkd_distance_loss(eps)", lambda v: rkd_ext.rkd_distance_loss(*_inputs(), eps=v), "rkd_distance_loss: eps"),
    ("rkd_distance_loss(beta)", lambda v: rkd_ext.rkd_distance_loss(*_inputs(), beta=v), "rkd_distance_loss: beta"),
    ("rkd_distance_loss(mean_offset)", lambda v: rkd_ext.rkd_distance_loss(*_inputs(), mean_offset=v),
     "rkd_distance_loss: mean_offset"),
    ("pairwise_distance(eps)", lambda v: rkd_ext.pairwise_distance(_inputs()[0], eps=v), "pairwise_distance: eps"),
    ("normalized_distance(eps)", lambda v: rkd_ext.normalized_distance(_inputs()[0], eps=v),
     "normalized_distance: eps"),
    ("angle_tensor(eps)", lambda v: rkd_ext.angle_tensor(_inputs()[0], eps=v), "angle_tensor: eps"),
    ("rkd_angle_loss(eps)", lambda v: rkd_ext.rkd_angle_loss(*_inputs(), eps=v), "rkd_angle_loss: eps"),
    ("rkd_angle_loss(beta)", lambda v: rkd_ext.rkd_angle_loss(*_inputs(), beta=v), "rkd_angle_loss: beta"),
    ("RKDDistanceLoss(eps)", lambda v: rkd_ext.RKDDistanceLoss(eps=v), "RKDDistanceLoss: eps"),
    ("RKDAngleLoss(beta)", lambda v: rkd_ext.RKDAngleLoss(beta=v), "RKDAngleLoss: beta"),
    ("RKDLoss(eps)", lambda v: rkd_ext.RKDLoss(eps=v), "RKDLoss: eps"),
    ("RKDLoss(beta)", lambda v: rkd_ext.RKDLoss(beta=v), "RKDLoss: beta"),
    ("mdistiller.rkd_loss(eps)", lambda v: mdistiller.rkd_loss(*_inputs(), eps=v), "rkd_loss: eps"),
]


@pytest.mark.parametrize("value", REFUSED_TYPES, ids=repr)
@pytest.mark.parametrize("name,call,arg", SCALAR_ARGS, ids=[c[0] for c in SCALAR_ARGS])
def test_scalars_that_are_not_real_numbers_are_refused(name, call, arg, value):
    with pytest.raises(TypeError, match=f"{arg} must be .*a real number.*got .*\\({type(value).__name__}\\)"):
        call(value)


BAD_VALUES = [float("nan"), float("inf"), -float("inf"), np.float32("nan"), torch.tensor(float("inf")), -1.0,
              np.float32(-0.5)]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
@pytest.mark.parametrize("name,call,arg", SCALAR_ARGS, ids=[c[0] for c in SCALAR_ARGS])
def test_non_finite_and_negative_scalars_are_refused(name, call, arg, value):
    with pytest.raises(ValueError, match=f"{arg} must be a (positive finite number|finite number >= 0), got"):
        call(value)


@pytest.mark.parametrize("value", [0, 0.0, np.float32(0.0), torch.tensor(0.0)], ids=repr)
def test_eps_zero_is_refused_and_beta_zero_is_l1(value):
    s, t = _inputs()
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        rkd_ext.rkd_distance_loss(s, t, eps=value)
    assert_close(rkd_ext.rkd_distance_loss(s, t, beta=value), R.distance_loss(s, t, beta=0.0), 1e-10, 0, "beta=0")


# ---- switches: squared, normalize, with_l2_norm, gather_distributed -----------------

NOT_BOOLS = ["False", "True", 0, 1, None, 1.0, torch.tensor(True), [False]]

# (name, call(switch)) where the switch is a keyword of a function or constructor
SWITCHES = [
    ("rkd_distance_loss(squared)", lambda v: rkd_ext.rkd_distance_loss(*_inputs(), squared=v)),
    ("angle_tensor(normalize)", lambda v: rkd_ext.angle_tensor(_inputs()[0], normalize=v)),
    ("rkd_angle_loss(normalize)", lambda v: rkd_ext.rkd_angle_loss(*_inputs(), normalize=v)),
    ("RKDDistanceLoss(gather_distributed)", lambda v: rkd_ext.RKDDistanceLoss(gather_distributed=v)),
    ("RKDLoss(gather_distributed)", lambda v: rkd_ext.RKDLoss(gather_distributed=v)),
    ("mdistiller.rkd_loss(squared)", lambda v: mdistiller.rkd_loss(*_inputs(), squared=v)),
    ("mmrazor.DistanceWiseRKD(with_l2_norm)", lambda v: mmrazor.DistanceWiseRKD(with_l2_norm=v)),
    ("mmrazor.AngleWiseRKD(with_l2_norm)", lambda v: mmrazor.AngleWiseRKD(with_l2_norm=v)),
    ("kdlib.RKDAngleLoss.forward(normalize)", lambda v: kdlib.RKDAngleLoss()(*_inputs()[::-1], normalize=v)),
    ("kdlib.RKDLoss(normalize)", lambda v: kdlib.RKDLoss(normalize=v)),
]


@pytest.mark.parametrize("value", NOT_BOOLS, ids=repr)
@pytest.mark.parametrize("name,call", SWITCHES, ids=[c[0] for c in SWITCHES])
def test_switches_must_be_bools(name, call, value):
    arg = name[name.index("(") + 1:-1]
    message = f"{arg} must be a bool \\(True or False\\), got .*\\({type(value).__name__}\\)"
    with pytest.raises(TypeError, match=message):
        call(value)


@pytest.mark.parametrize("flag", [False, True])
def test_numpy_bools_are_bools(flag):
    s, t = _inputs()
    assert_close(rkd_ext.rkd_distance_loss(s, t, squared=np.bool_(flag)), R.distance_loss(s, t, squared=flag),
                 1e-10, 0, "squared")
    assert_close(rkd_ext.rkd_angle_loss(s, t, normalize=np.bool_(flag)), R.angle_loss(s, t, normalize=flag),
                 1e-10, 0, "normalize")
    # The two settings give different numbers: a switch ignored would show.
    assert not torch.allclose(R.distance_loss(s, t, squared=flag), R.distance_loss(s, t, squared=not flag))


# ---- inputs are checked whatever the weights -----------------------------------------

BAD_INPUTS = [
    ("int64", lambda s, t: (s.long(), t), TypeError, "student must be float16, bfloat16, float32 or float64"),
    ("N = 0", lambda s, t: (s[:0], t[:0]), ValueError, "student must hold at least one sample"),
    ("mismatched N", lambda s, t: (s, t[:3]), ValueError, "must have the same batch size, got 7 and 3"),
    ("list", lambda s, t: (s.tolist(), t), TypeError, "student must be a torch.Tensor, got list"),
]


@pytest.mark.parametrize("weights", [(0, 0), (0, 50.0), (25.0, 0), (25.0, 50.0)], ids=str)
@pytest.mark.parametrize("name,make,exc,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_rkdloss_checks_inputs_whatever_the_weights(name, make, exc, message, weights):
    s, t = make(*_inputs())
    with pytest.raises(exc, match=message):
        rkd_ext.RKDLoss(*weights)(s, t)


def test_rkdloss_with_both_weights_zero_is_a_connected_zero():
    s, t = _inputs()
    s.requires_grad_()
    loss = rkd_ext.RKDLoss(0, 0)(s, t)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(s.grad, torch.zeros_like(s))


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_compat_wrappers_refuse_an_empty_batch(case):
    s, t = case_inputs(case, 0, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"must hold at least one sample \(N > 0\), got shape \(0, "):
        case.call(s, t)


# ---- loss weights ------------------------------------------------------------------------

# (name, build(w), the message's argument, reference(s, t, w)) with w the one weight under test
WEIGHTS = [
    ("RKDLoss(distance_weight)", lambda w: rkd_ext.RKDLoss(distance_weight=w, angle_weight=0),
     "RKDLoss: distance_weight", lambda s, t, w: w * R.distance_loss(s, t)),
    ("RKDLoss(angle_weight)", lambda w: rkd_ext.RKDLoss(distance_weight=0, angle_weight=w),
     "RKDLoss: angle_weight", lambda s, t, w: w * R.angle_loss(s, t)),
    ("repdistiller.RKDLoss(w_d)", lambda w: repdistiller.RKDLoss(w_d=w, w_a=0), "RKDLoss: w_d",
     lambda s, t, w: w * R.distance_loss(s, t)),
    ("repdistiller.RKDLoss(w_a)", lambda w: repdistiller.RKDLoss(w_d=0, w_a=w), "RKDLoss: w_a",
     lambda s, t, w: w * R.angle_loss(s, t)),
    ("kdlib.RKDLoss(dist_ratio)", lambda w: (lambda s, t: kdlib.RKDLoss(dist_ratio=w, angle_ratio=0)(t, s)),
     "RKDLoss: dist_ratio", lambda s, t, w: w * R.distance_loss(s, t, eps=1e-10, mean_offset=1e-7)),
    ("kdlib.RKDLoss(angle_ratio)", lambda w: (lambda s, t: kdlib.RKDLoss(dist_ratio=0, angle_ratio=w)(t, s)),
     "RKDLoss: angle_ratio", lambda s, t, w: w * R.angle_loss(s, t)),
    ("mmrazor.DistanceWiseRKD(loss_weight)",
     lambda w: mmrazor.DistanceWiseRKD(loss_weight=w, with_l2_norm=False), "DistanceWiseRKD: loss_weight",
     lambda s, t, w: w * R.distance_loss(s, t)),
    ("mmrazor.AngleWiseRKD(loss_weight)", lambda w: mmrazor.AngleWiseRKD(loss_weight=w, with_l2_norm=False),
     "AngleWiseRKD: loss_weight", lambda s, t, w: w * R.angle_loss(s, t)),
    ("torchdistill.RKDLoss(dist_factor)",
     lambda w: (lambda s, t: torchdistill.RKDLoss("a", "b", w, None, "mean")({"a": {"output": s}},
                                                                            {"b": {"output": t}})),
     "RKDLoss: dist_factor", lambda s, t, w: w * R.distance_loss(s, t)),
    ("torchdistill.RKDLoss(angle_factor)",
     lambda w: (lambda s, t: torchdistill.RKDLoss("a", "b", 0, w, "mean")({"a": {"output": s}},
                                                                         {"b": {"output": t}})),
     "RKDLoss: angle_factor", lambda s, t, w: w * R.angle_loss(s, t)),
    ("mdistiller.rkd_loss(distance_weight)",
     lambda w: (lambda s, t: mdistiller.rkd_loss(s, t, distance_weight=w, angle_weight=0)),
     "rkd_loss: distance_weight", lambda s, t, w: w * R.distance_loss(s, t)),
    ("mdistiller.rkd_loss(angle_weight)",
     lambda w: (lambda s, t: mdistiller.rkd_loss(s, t, distance_weight=0, angle_weight=w)),
     "rkd_loss: angle_weight", lambda s, t, w: w * R.angle_loss(s, t)),
]
_IDS = [w[0] for w in WEIGHTS]


@pytest.mark.parametrize("value", [3, np.float32(3.0), np.int64(3), torch.tensor(3.0), fractions.Fraction(3)],
                         ids=repr)
@pytest.mark.parametrize("name,build,arg,ref", WEIGHTS, ids=_IDS)
def test_weights_in_any_real_form_are_that_number(name, build, arg, ref, value):
    s, t = _inputs()
    assert_close(build(value)(s, t), ref(s, t, 3.0), 1e-10, 0, name)


@pytest.mark.parametrize("value,exc", [
    (-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), (np.float32("-inf"), ValueError),
    ("25", TypeError), (True, TypeError), (1 + 0j, TypeError), (torch.tensor([2.0]), TypeError),
], ids=repr)
@pytest.mark.parametrize("name,build,arg,ref", WEIGHTS, ids=_IDS)
def test_bad_weights_are_refused(name, build, arg, ref, value, exc):
    with pytest.raises(exc, match=f"{arg} must be a finite number >= 0"):
        build(value)(*_inputs())
