"""rkd_ext.compat: each framework's RKD API, reproduced on rkd_ext's kernels.

Oracle: each framework's formulation written from the specification (input
handling, weights, clamp, normaliser, which side is computed without gradient)
on top of rkd_ext.reference, evaluated in float64. The wrappers run in float32
and must match within 1e-5 (values, and student gradients relative to their
largest entry); in float64 they must match tightly, which also pins the small
constants (KD_Lib's 1e-10 clamp and 1e-7 mean offset, mdistiller's eps).
"""
import importlib
import importlib.util
import inspect
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES

import rkd_ext.compat
import rkd_ext.functional
from rkd_ext import reference as R
from rkd_ext.compat import kdlib, lenscloth, mdistiller, mmrazor, repdistiller, torchdistill
from rkd_ext.testing import assert_close, make_features, max_rel_err


def _flat(x):
    return x.reshape(x.shape[0], -1)


def _no_grad(x):
    return x.detach()


# ---- each framework's formulation, from the specification --------------------
# An oracle takes (student, teacher) tensors and returns the loss; ``call``
# feeds the same tensors to the wrapper through the framework's own interface.


def _ref_dist(s, t, **kw):
    return R.distance_loss(s, t, **kw)


def _ref_angle(s, t, **kw):
    return R.angle_loss(s, t, **kw)


def _mmrazor_oracle(kind, loss_weight, with_l2_norm):
    def oracle(s, t):
        s, t = _flat(s), _flat(t)
        if with_l2_norm:
            s, t = F.normalize(s, p=2, dim=1), F.normalize(t, p=2, dim=1)
        return (_ref_dist(s, t) if kind == "distance" else _ref_angle(s, t)) * loss_weight
    return oracle


def _torchdistill_oracle(dist_factor, angle_factor, reduction):
    def oracle(s, t):
        s, t = _flat(s), _no_grad(_flat(t))
        total = 0
        if dist_factor:
            total = total + dist_factor * _ref_dist(s, t, reduction=reduction)
        if angle_factor:
            a = _ref_angle(s, t, reduction=reduction)
            total = total + angle_factor * (a.reshape(-1) if reduction == "none" else a)
        return total
    return oracle


def _weighted_oracle(w_d, w_a, dist_kw=None, angle_kw=None):
    def oracle(s, t):
        s, t = _flat(s), _no_grad(_flat(t))
        return w_d * _ref_dist(s, t, **(dist_kw or {})) + w_a * _ref_angle(s, t, **(angle_kw or {}))
    return oracle


KDLIB_DIST = dict(eps=1e-10, mean_offset=1e-7)


class Case:
    """One framework entry point: how to call it, its oracle, its input ranks, whether the teacher gets a gradient."""

    def __init__(self, name, call, oracle, *, rank=4, teacher_grad=False):
        self.name, self.call, self.oracle, self.rank, self.teacher_grad = name, call, oracle, rank, teacher_grad

    def __repr__(self):
        return self.name


def _io(s, t):
    return {"layer4": {"output": s}}, {"fc": {"output": t}}


CASES = [
    Case("lenscloth.RkdDistance", lambda s, t: lenscloth.RkdDistance()(s, t),
         lambda s, t: _ref_dist(s, _no_grad(t)), rank=2),
    Case("lenscloth.RKdAngle", lambda s, t: lenscloth.RKdAngle()(s, t),
         lambda s, t: _ref_angle(s, _no_grad(t)), rank=2),
    Case("mmrazor.DistanceWiseRKD()", lambda s, t: mmrazor.DistanceWiseRKD()(s, t),
         _mmrazor_oracle("distance", 25.0, True), teacher_grad=True),
    Case("mmrazor.DistanceWiseRKD(3, False)",
         lambda s, t: mmrazor.DistanceWiseRKD(loss_weight=3.0, with_l2_norm=False)(preds_S=s, preds_T=t),
         _mmrazor_oracle("distance", 3.0, False), teacher_grad=True),
    Case("mmrazor.AngleWiseRKD()", lambda s, t: mmrazor.AngleWiseRKD()(s, t),
         _mmrazor_oracle("angle", 50.0, True), teacher_grad=True),
    Case("mmrazor.AngleWiseRKD(7, False)",
         lambda s, t: mmrazor.AngleWiseRKD(loss_weight=7.0, with_l2_norm=False)(preds_S=s, preds_T=t),
         _mmrazor_oracle("angle", 7.0, False), teacher_grad=True),
    Case("torchdistill.RKDLoss(1, 2, mean)",
         lambda s, t: torchdistill.RKDLoss("layer4", "fc", 1.0, 2.0, "mean")(*_io(s, t), torch.tensor([0])),
         _torchdistill_oracle(1.0, 2.0, "mean")),
    Case("torchdistill.RKDLoss(1.5, 0, sum)",
         lambda s, t: torchdistill.RKDLoss("layer4", "fc", 1.5, 0, "sum", extra=1)(*_io(s, t)),
         _torchdistill_oracle(1.5, 0, "sum")),
    Case("torchdistill.RKDLoss(0, 2, none)",
         lambda s, t: torchdistill.RKDLoss(student_output_path="layer4", teacher_output_path="fc", dist_factor=0,
                                           angle_factor=2.0, reduction="none")(*_io(s, t)),
         _torchdistill_oracle(0, 2.0, "none")),
    Case("torchdistill.RKDLoss(3, None, none)",
         lambda s, t: torchdistill.RKDLoss("layer4", "fc", 3.0, None, "none")(*_io(s, t)),
         _torchdistill_oracle(3.0, 0, "none")),
    Case("repdistiller.RKDLoss()", lambda s, t: repdistiller.RKDLoss()(s, t), _weighted_oracle(25, 50)),
    Case("repdistiller.RKDLoss(2, 0.5)", lambda s, t: repdistiller.RKDLoss(w_d=2, w_a=0.5)(f_s=s, f_t=t),
         _weighted_oracle(2, 0.5)),
    Case("mdistiller.rkd_loss", lambda s, t: mdistiller.rkd_loss(s, t), _weighted_oracle(25, 50)),
    Case("mdistiller.rkd_loss(squared)",
         lambda s, t: mdistiller.rkd_loss(f_s=s, f_t=t, squared=True, distance_weight=3, angle_weight=4),
         _weighted_oracle(3, 4, dist_kw=dict(squared=True))),
    Case("kdlib.RKDDistanceLoss", lambda s, t: kdlib.RKDDistanceLoss()(t, s),
         lambda s, t: _ref_dist(s, _no_grad(t), **KDLIB_DIST), rank=2),
    Case("kdlib.RKDAngleLoss", lambda s, t: kdlib.RKDAngleLoss()(t, s),
         lambda s, t: _ref_angle(s, _no_grad(t)), rank=2),
    Case("kdlib.RKDAngleLoss(normalize=False)",
         lambda s, t: kdlib.RKDAngleLoss()(teacher=t, student=s, normalize=False),
         lambda s, t: _ref_angle(s, _no_grad(t), normalize=False), rank=2),
    Case("kdlib.RKDLoss()", lambda s, t: kdlib.RKDLoss()(t, s),
         _weighted_oracle(0.5, 0.5, dist_kw=KDLIB_DIST), rank=2),
    Case("kdlib.RKDLoss(2, 3, False)",
         lambda s, t: kdlib.RKDLoss(dist_ratio=2.0, angle_ratio=3.0, normalize=False)(teacher=t, student=s),
         _weighted_oracle(2.0, 3.0, dist_kw=KDLIB_DIST, angle_kw=dict(normalize=False)), rank=2),
]


def case_inputs(case, n, dtype, device, scale=1.0):
    shape_s, shape_t = ((n, 3, 2, 2), (n, 5, 3)) if case.rank == 4 else ((n, 12), (n, 15))
    s = make_features(n, 12, seed=11).reshape(shape_s) * scale
    t = make_features(n, 15, seed=12).reshape(shape_t) * scale
    return (s.to(dtype=dtype, device=device).requires_grad_(),
            t.to(dtype=dtype, device=device).requires_grad_())


def _check_against_oracle(case, s, t, rtol, grad_rtol):
    ours = case.call(s, t)
    s64 = s.detach().double().requires_grad_()
    t64 = t.detach().double().requires_grad_()
    ref = case.oracle(s64, t64)
    assert ours.dtype == (torch.float64 if s.dtype == torch.float64 else torch.float32)
    assert_close(ours, ref, rtol, rtol * float(ref.detach().abs().max()), f"{case} value")
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (ours * w.to(ours)).sum().backward()
    (ref * w).sum().backward()
    assert s.grad is not None and s.grad.dtype == s.dtype
    assert max_rel_err(s.grad, s64.grad) <= grad_rtol, f"{case} student grad"
    if case.teacher_grad:
        assert t.grad is not None, f"{case}: the framework propagates to the teacher"
        assert max_rel_err(t.grad, t64.grad) <= grad_rtol, f"{case} teacher grad"
    else:
        assert t.grad is None, f"{case}: the framework computes the teacher without gradient"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_float32_matches_framework(case, device):
    s, t = case_inputs(case, 9, torch.float32, device)
    _check_against_oracle(case, s, t, 1e-5, 1e-5)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_float64_matches_framework_tightly(case):
    # Small-scale features (mean distance ~1e-4): KD_Lib's 1e-7 mean offset
    # shifts the loss by ~1e-3 relative here, far above this tolerance.
    s, t = case_inputs(case, 7, torch.float64, "cpu", scale=1e-4)
    _check_against_oracle(case, s, t, 1e-9, 1e-8)


def test_kdlib_clamp_and_mdistiller_eps_are_theirs():
    # Pairs 3e-6 apart have squared distances ~1e-11: clamped at KD_Lib's
    # 1e-10, not at the default 1e-12. A large mdistiller eps clamps ordinary pairs.
    base = make_features(6, 3, seed=5)
    near = torch.cat([base, base + 3e-6 * make_features(6, 3, seed=6)])
    t = make_features(12, 4, seed=7)
    s = near.clone().requires_grad_()
    got = kdlib.RKDDistanceLoss()(t, s)
    assert_close(got, R.distance_loss(near, t, eps=1e-10, mean_offset=1e-7), 1e-10, 0, "kdlib clamp")
    assert abs(got.item() - R.distance_loss(near, t, eps=1e-12, mean_offset=1e-7).item()) > 1e-9
    got = mdistiller.rkd_loss(s, t, eps=2.0, angle_weight=0)
    assert_close(got, 25 * R.distance_loss(near, t, eps=2.0), 1e-10, 0, "mdistiller eps")


# ---- the frameworks' signatures ------------------------------------------------

SIGNATURES = [
    (lenscloth.RkdDistance, None, "(student, teacher)"),
    (lenscloth.RKdAngle, None, "(student, teacher)"),
    (mmrazor.DistanceWiseRKD, "(loss_weight=25.0, with_l2_norm=True)", "(preds_S, preds_T)"),
    (mmrazor.AngleWiseRKD, "(loss_weight=50.0, with_l2_norm=True)", "(preds_S, preds_T)"),
    (torchdistill.RKDLoss,
     "(student_output_path, teacher_output_path, dist_factor, angle_factor, reduction, **kwargs)",
     "(student_io_dict, teacher_io_dict, *args, **kwargs)"),
    (repdistiller.RKDLoss, "(w_d=25, w_a=50)", "(f_s, f_t)"),
    (kdlib.RKDDistanceLoss, None, "(teacher, student)"),
    (kdlib.RKDAngleLoss, None, "(teacher, student, normalize=True)"),
    (kdlib.RKDLoss, "(dist_ratio=0.5, angle_ratio=0.5, normalize=True)", "(teacher, student)"),
]


@pytest.mark.parametrize("cls,init,forward", SIGNATURES,
                         ids=[f"{c.__module__.rsplit('.', 1)[1]}.{c.__name__}" for c, _, _ in SIGNATURES])
def test_signatures_are_the_frameworks(cls, init, forward):
    # init None: like the framework's class, no constructor of its own (nn.Module's).
    if init is None:
        assert "__init__" not in vars(cls)
    else:
        assert str(inspect.signature(cls)) == init
    assert str(inspect.signature(cls.forward)).replace("self, ", "") == forward
    assert issubclass(cls, torch.nn.Module)


def test_mdistiller_signature():
    assert str(inspect.signature(mdistiller.rkd_loss)) == \
        "(f_s, f_t, squared=False, eps=1e-12, distance_weight=25, angle_weight=50)"


# ---- deliberate differences and errors ----------------------------------------


@pytest.fixture
def warn_once_kept(monkeypatch):
    """Warn-once warnings (Python's and TORCH_WARN_ONCE) emitted without being used up.

    They stay due for the tests elsewhere that assert them.
    """
    monkeypatch.setattr(rkd_ext.functional, "_warned", set())
    before = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(before)


@pytest.mark.parametrize("call", [
    lambda s, t: lenscloth.RkdDistance()(s, t),
    lambda s, t: mmrazor.DistanceWiseRKD()(s, t),
    lambda s, t: repdistiller.RKDLoss()(s, t),
    lambda s, t: kdlib.RKDLoss()(t, s),
], ids=["lenscloth", "mmrazor", "repdistiller", "kdlib"])
def test_single_sample_gives_zero_not_nan(call, warn_once_kept):
    s = make_features(1, 4, dtype=torch.float32, requires_grad=True)
    t = make_features(1, 5, dtype=torch.float32, seed=1)
    with pytest.warns(UserWarning, match="sample"):
        loss = call(s, t)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(s.grad, torch.zeros_like(s))


def _has_op(name):
    try:
        getattr(torch.ops.rkd_ext, name)
    except (AttributeError, RuntimeError):
        return False
    return True


# Until its kernel is built, the angle loss runs on the reference, whose
# gradient through a coincident pair is scaled by 1/eps.
ANGLE_ON_REFERENCE = pytest.mark.xfail(not _has_op("rkd_angle_loss"), strict=True,
                                       reason="the angle loss kernel is not in this build")


@pytest.mark.parametrize("call", [
    pytest.param(lambda s, t: lenscloth.RkdDistance()(s, t), id="lenscloth.RkdDistance"),
    pytest.param(lambda s, t: kdlib.RKDDistanceLoss()(t, s), id="kdlib.RKDDistanceLoss"),
    pytest.param(lambda s, t: mmrazor.DistanceWiseRKD(with_l2_norm=False)(s, t), id="mmrazor.DistanceWiseRKD"),
    pytest.param(lambda s, t: lenscloth.RKdAngle()(s, t), id="lenscloth.RKdAngle", marks=ANGLE_ON_REFERENCE),
    pytest.param(lambda s, t: repdistiller.RKDLoss()(s, t), id="repdistiller.RKDLoss", marks=ANGLE_ON_REFERENCE),
])
def test_exact_duplicates_give_moderate_gradients(call):
    s = make_features(8, 6, dtype=torch.float32, kind="dup", requires_grad=True)
    t = make_features(8, 6, dtype=torch.float32, seed=3)
    call(s, t).backward()
    # The frameworks' gradient through a coincident pair is of order 1/eps (1e10 and more).
    assert torch.isfinite(s.grad).all() and s.grad.abs().max() < 1e3


@pytest.mark.parametrize("call,message", [
    (lambda: mmrazor.DistanceWiseRKD()(torch.randn(4, 3), torch.randn(5, 3)), "preds_S and preds_T"),
    (lambda: repdistiller.RKDLoss()(torch.randn(4, 3), torch.randn(4, 3, dtype=torch.float64).long()), "f_t"),
    (lambda: mdistiller.rkd_loss(torch.randn(4, 3), "x"), "f_t must be a torch.Tensor"),
    (lambda: kdlib.RKDLoss()(torch.randn(4, 3, 2), torch.randn(4, 3)), "teacher must be a 2-D"),
    (lambda: lenscloth.RKdAngle()(torch.randn(4), torch.randn(4, 3)), "student must be a 2-D"),
    (lambda: torchdistill.RKDLoss("a", "b", 1.0, 1.0, "elementwise"), "reduction"),
    (lambda: torchdistill.RKDLoss("a", "b", 1.0, 1.0, "mean")({"a": {"output": torch.randn(3, 2)}},
                                                              {"b": {"output": torch.randn(2, 2)}}),
     "student_io_dict['a']['output'] and teacher_io_dict['b']['output'] must have the same batch size"),
], ids=["mmrazor-batch", "repdistiller-dtype", "mdistiller-type", "kdlib-rank", "lenscloth-rank",
        "torchdistill-reduction", "torchdistill-batch"])
def test_errors_name_the_frameworks_argument(call, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_all_terms_weighted_zero_give_a_connected_zero():
    s = make_features(5, 3, dtype=torch.float32, requires_grad=True)
    t = make_features(5, 3, dtype=torch.float32, seed=1)
    losses = [
        repdistiller.RKDLoss(0, 0)(s, t),
        mdistiller.rkd_loss(s, t, distance_weight=0, angle_weight=0),
        kdlib.RKDLoss(0, 0)(t, s),
        torchdistill.RKDLoss("layer4", "fc", 0, None, "mean")(*_io(s, t)),
    ]
    for loss in losses:
        assert loss.dtype == torch.float32 and loss.item() == 0.0
        loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


# ---- registration with the frameworks' registries ---------------------------
# The frameworks are not installed here: a stand-in with the same interface as
# mmengine's Registry (which mmrazor's MODELS is) and torchdistill's registry
# module is injected into sys.modules, and mmengine's real Registry is used
# too where mmengine is importable.


class FakeMMRegistry:
    """mmengine.registry.Registry's registration interface: register_module, module_dict, build."""

    def __init__(self, name):
        self.name = name
        self._module_dict = {}

    @property
    def module_dict(self):
        return self._module_dict

    def register_module(self, name=None, force=False, module=None):
        key = name or module.__name__
        if not force and key in self._module_dict:
            raise KeyError(f"{key} is already registered in {self.name}")
        self._module_dict[key] = module
        return module

    def get(self, key):
        return self._module_dict.get(key)

    def build(self, cfg):
        cfg = dict(cfg)
        return self._module_dict[cfg.pop("type")](**cfg)


def _mmengine_registry(name):
    mmengine_registry = pytest.importorskip("mmengine.registry")
    return mmengine_registry.Registry(name, scope="mmrazor")


REGISTRIES = [pytest.param(FakeMMRegistry, id="stand-in"), pytest.param(_mmengine_registry, id="mmengine")]


class MmrazorOwnDistanceWiseRKD(torch.nn.Module):
    pass


def _fresh_import(monkeypatch, name):
    """Import rkd_ext.compat.<name> anew (its registration runs at import), restoring the old module afterwards."""
    full = f"rkd_ext.compat.{name}"
    monkeypatch.setattr(rkd_ext.compat, name, sys.modules[full])
    monkeypatch.delitem(sys.modules, full)
    return importlib.import_module(full)


def _install(monkeypatch, modules):
    for name, mod in modules.items():
        monkeypatch.setitem(sys.modules, name, mod)


def _fake_mmrazor(monkeypatch, registry_factory):
    registry = types.ModuleType("mmrazor.registry")
    registry.MODELS = registry_factory("model")
    registry.MODELS.register_module(name="DistanceWiseRKD", module=MmrazorOwnDistanceWiseRKD)
    package = types.ModuleType("mmrazor")
    package.__path__ = []
    package.registry = registry
    _install(monkeypatch, {"mmrazor": package, "mmrazor.registry": registry})
    return registry.MODELS


@pytest.mark.parametrize("registry_factory", REGISTRIES)
def test_mmrazor_registration(monkeypatch, registry_factory):
    models = _fake_mmrazor(monkeypatch, registry_factory)
    module = _fresh_import(monkeypatch, "mmrazor")
    assert models.get("RKDExtDistanceWiseRKD") is module.DistanceWiseRKD
    assert models.get("RKDExtAngleWiseRKD") is module.AngleWiseRKD
    assert models.get("DistanceWiseRKD") is MmrazorOwnDistanceWiseRKD
    loss = models.build(dict(type="RKDExtAngleWiseRKD", loss_weight=5, with_l2_norm=False))
    assert isinstance(loss, module.AngleWiseRKD) and loss.loss_weight == 5 and not loss.with_l2_norm
    # mmrazor's ConfigurableDistiller maps recorded tensors onto these forward parameter names.
    assert {"preds_S", "preds_T"} <= set(inspect.signature(loss.forward).parameters)
    s, t = make_features(6, 4), make_features(6, 3, seed=1)
    assert_close(loss(s, t), 5 * R.angle_loss(s, t), 1e-10, 0, "built loss")
    # A name someone else already holds is not silently replaced.
    monkeypatch.delitem(sys.modules, "rkd_ext.compat.mmrazor")
    with pytest.raises(KeyError, match="RKDExtDistanceWiseRKD"):
        importlib.import_module("rkd_ext.compat.mmrazor")


def test_mmrazor_custom_imports_through_mmengine_config(monkeypatch, tmp_path):
    mmengine_config = pytest.importorskip("mmengine.config")
    models = _fake_mmrazor(monkeypatch, _mmengine_registry)
    monkeypatch.delitem(sys.modules, "rkd_ext.compat.mmrazor")
    monkeypatch.setattr(rkd_ext.compat, "mmrazor", mmrazor)
    path = tmp_path / "rkd_config.py"
    path.write_text("custom_imports = dict(imports=['rkd_ext.compat.mmrazor'], allow_failed_imports=False)\n"
                    "loss_dw = dict(type='RKDExtDistanceWiseRKD', with_l2_norm=True, loss_weight=25)\n")
    cfg = mmengine_config.Config.fromfile(str(path))
    loss = models.build(cfg.loss_dw)
    assert type(loss).__module__ == "rkd_ext.compat.mmrazor" and loss.loss_weight == 25


def _fake_torchdistill(monkeypatch, register_name):
    registry = types.ModuleType("torchdistill.losses.registry")
    registry.LOSS_DICT = {}
    registry.OWN_DICT = {"RKDLoss": object}

    def register(arg=None, **kwargs):
        def _register(cls_or_func):
            registry.OWN_DICT[kwargs.get("key") or cls_or_func.__name__] = cls_or_func
            return cls_or_func
        return _register(arg) if callable(arg) else _register

    def get_loss(config):
        return registry.OWN_DICT[config["key"]](**config["kwargs"])

    setattr(registry, register_name, register)
    registry.get_loss = get_loss
    losses = types.ModuleType("torchdistill.losses")
    losses.__path__ = []
    losses.registry = registry
    package = types.ModuleType("torchdistill")
    package.__path__ = []
    package.losses = losses
    _install(monkeypatch, {"torchdistill": package, "torchdistill.losses": losses,
                           "torchdistill.losses.registry": registry})
    return registry


# torchdistill itself (its registry and its own RKDLoss) where it is installed: the CUDA-build stage
# (scripts/check_cuda_build.sh) installs it beside a CUDA torch; the stand-in covers the rest.
TORCHDISTILL = importlib.util.find_spec("torchdistill") is not None


@pytest.mark.skipif(TORCHDISTILL, reason="torchdistill is installed: its real registry is tested instead")
@pytest.mark.parametrize("register_name", ["register_mid_level_loss", "register_single_loss"],
                         ids=["torchdistill-1.x", "torchdistill-0.3"])
def test_torchdistill_registration(monkeypatch, register_name):
    registry = _fake_torchdistill(monkeypatch, register_name)
    module = _fresh_import(monkeypatch, "torchdistill")
    assert registry.OWN_DICT["RKDExtRKDLoss"] is module.RKDLoss
    assert registry.OWN_DICT["RKDLoss"] is object
    loss = registry.get_loss({"key": "RKDExtRKDLoss", "kwargs": dict(
        student_output_path="layer4", teacher_output_path="fc", dist_factor=1.0, angle_factor=2.0,
        reduction="mean")})
    s, t = make_features(6, 4), make_features(6, 3, seed=1)
    assert_close(loss(*_io(s, t)), R.distance_loss(s, t) + 2 * R.angle_loss(s, t), 1e-10, 0, "built loss")


@pytest.mark.skipif(not TORCHDISTILL, reason="torchdistill is not installed (scripts/check_cuda_build.sh installs it)")
@pytest.mark.parametrize("dist_factor,angle_factor,reduction", [
    (1.0, 2.0, "mean"), (25.0, 50.0, "mean"), (1.5, 0.0, "sum"), (0.0, 2.0, "mean"), (3.0, 0.0, "none"),
    (0.0, 2.0, "none"),
])
def test_torchdistill_real_registry(dist_factor, angle_factor, reduction):
    """RKDExtRKDLoss built from a config by torchdistill's own registry equals torchdistill's own RKDLoss:
    the value and the gradients of both inputs (the teacher's: none from either)."""
    registry = importlib.import_module("torchdistill.losses.registry")
    kwargs = dict(student_output_path="layer4", teacher_output_path="fc", dist_factor=dist_factor,
                  angle_factor=angle_factor, reduction=reduction)
    ours = registry.get_mid_level_loss({"key": "RKDExtRKDLoss", "kwargs": kwargs})
    theirs = registry.get_mid_level_loss({"key": "RKDLoss", "kwargs": kwargs})
    assert type(ours) is torchdistill.RKDLoss
    assert type(theirs).__module__ == "torchdistill.losses.mid_level"
    s = make_features(10, 24, dtype=torch.float64, seed=3).reshape(10, 2, 3, 4)
    t = make_features(10, 12, dtype=torch.float64, seed=4).reshape(10, 3, 4)
    results = []
    for loss_module in (ours, theirs):
        sg, tg = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
        loss = loss_module({"layer4": {"output": sg}}, {"fc": {"output": tg}})
        w = torch.randn(loss.shape, generator=torch.Generator().manual_seed(5), dtype=loss.dtype)
        gs, gt = torch.autograd.grad((loss * w).sum(), (sg, tg), allow_unused=True)
        results.append((loss.detach(), gs, gt))
    (v, gs, gt), (v_ref, gs_ref, gt_ref) = results
    assert v.shape == v_ref.shape
    assert_close(v, v_ref, 1e-9, 1e-12 * float(v_ref.abs().max()), "value")
    assert_close(gs, gs_ref, 1e-9, 1e-9 * float(gs_ref.abs().max()), "student gradient")
    assert gt is None and gt_ref is None


REGISTRY_MODULES = {"mmrazor": "mmrazor.registry", "torchdistill": "torchdistill.losses.registry"}


@pytest.mark.parametrize("name", ["mmrazor", "torchdistill"])
def test_absent_framework_is_skipped(monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # what an uninstalled package looks like to import
    module = _fresh_import(monkeypatch, name)
    s, t = make_features(6, 4), make_features(6, 3, seed=1)
    loss = module.DistanceWiseRKD()(s, t) if name == "mmrazor" else module.RKDLoss("layer4", "fc", 1, 0, "mean")(
        *_io(s, t))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", ["mmrazor", "torchdistill"])
def test_installed_but_broken_framework_is_reported(monkeypatch, tmp_path, name):
    # An installed framework whose own dependency is missing: hiding the
    # error would only move it to the config that names our losses.
    package_dir = tmp_path
    for part in REGISTRY_MODULES[name].split(".")[:-1]:
        package_dir = package_dir / part
        package_dir.mkdir()
        (package_dir / "__init__.py").write_text("")
    (package_dir / "registry.py").write_text("import rkd_ext_test_missing_dependency\n")
    for mod in list(sys.modules):
        if mod == name or mod.startswith(name + "."):
            monkeypatch.delitem(sys.modules, mod)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(rkd_ext.compat, name, sys.modules[f"rkd_ext.compat.{name}"])
    monkeypatch.delitem(sys.modules, f"rkd_ext.compat.{name}")
    with pytest.raises(ModuleNotFoundError, match="rkd_ext_test_missing_dependency"):
        importlib.import_module(f"rkd_ext.compat.{name}")
