"""rkd_ext.compat.mmrazor registered in an mmrazor-style registry built on mmengine's real Registry.

mmrazor 1.0.0 itself does not import on the torch this project tests with
(its own quantization imports fail), so ``mmrazor.registry`` is stood in for
by a module built as mmrazor builds its own: ``MODELS = Registry('model',
parent=mmengine.registry.MODELS)`` inside the package ``mmrazor``, hence with
the scope ``mmrazor``. Everything else (registration, lookup by scope, building
from a config dict or a config file) is mmengine's.

Oracle: mmrazor's formulation (``view(N, -1)``, ``F.normalize`` when
``with_l2_norm``, the loss times ``loss_weight``, the teacher not detached) on
top of rkd_ext.reference, in float64.
"""
import importlib
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from rkd_ext.testing import assert_close, make_features

import rkd_ext.compat
from rkd_ext import reference as R

mmengine_registry = pytest.importorskip("mmengine.registry")
mmengine_config = pytest.importorskip("mmengine.config")


class MmrazorOwnDistanceWiseRKD(torch.nn.Module):
    """Stands for mmrazor's own class, which keeps its name."""


@pytest.fixture
def mmrazor_models(monkeypatch):
    """An mmrazor package whose ``registry.MODELS`` is a child of mmengine's root MODELS, scope 'mmrazor'.

    The root registry is restored afterwards, and rkd_ext.compat.mmrazor is
    imported afresh (its registration runs at import).
    """
    full = "rkd_ext.compat.mmrazor"
    monkeypatch.setattr(rkd_ext.compat, "mmrazor", importlib.import_module(full))
    monkeypatch.delitem(sys.modules, full)
    root = mmengine_registry.MODELS
    monkeypatch.setattr(root, "_children", dict(root._children))
    models = mmengine_registry.Registry("model", parent=root, scope="mmrazor")

    registry = types.ModuleType("mmrazor.registry")
    registry.MODELS = models
    utils = types.ModuleType("mmrazor.utils")

    def register_all_modules(init_default_scope=True):
        # mmengine calls this the first time the registry is searched, as
        # mmrazor's own does: it imports mmrazor.models, registering its losses.
        models.register_module(name="DistanceWiseRKD", module=MmrazorOwnDistanceWiseRKD)

    utils.register_all_modules = register_all_modules
    package = types.ModuleType("mmrazor")
    package.__path__ = []
    package.registry, package.utils = registry, utils
    for name, module in {"mmrazor": package, "mmrazor.registry": registry, "mmrazor.utils": utils}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return models


def _compat():
    return importlib.import_module("rkd_ext.compat.mmrazor")


def _mmrazor_oracle(kind, loss_weight, with_l2_norm, s, t):
    s, t = s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1)
    if with_l2_norm:
        s, t = F.normalize(s, p=2, dim=1), F.normalize(t, p=2, dim=1)
    return loss_weight * (R.distance_loss(s, t) if kind == "distance" else R.angle_loss(s, t))


def _check_against_oracle(loss, kind, loss_weight, with_l2_norm):
    s = make_features(8, 12, seed=1).reshape(8, 3, 2, 2).requires_grad_()
    t = make_features(8, 10, seed=2).reshape(8, 10).requires_grad_()
    ours = loss(preds_S=s, preds_T=t)
    s64, t64 = s.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
    ref = _mmrazor_oracle(kind, loss_weight, with_l2_norm, s64, t64)
    assert_close(ours, ref, 1e-10, 0, f"{kind} value")
    ours.backward()
    ref.backward()
    # mmrazor does not detach the teacher: both get the reference's gradient.
    assert_close(s.grad, s64.grad, 1e-9, 1e-13, f"{kind} student gradient")
    assert_close(t.grad, t64.grad, 1e-9, 1e-13, f"{kind} teacher gradient")


def test_registered_in_the_mmrazor_scope(mmrazor_models):
    compat = _compat()
    assert mmrazor_models.get("RKDExtDistanceWiseRKD") is compat.DistanceWiseRKD
    assert mmrazor_models.get("RKDExtAngleWiseRKD") is compat.AngleWiseRKD
    assert mmrazor_models.get("DistanceWiseRKD") is MmrazorOwnDistanceWiseRKD
    # Other projects reach them through mmengine's root registry by scope prefix.
    assert mmengine_registry.MODELS.get("mmrazor.RKDExtAngleWiseRKD") is compat.AngleWiseRKD
    assert mmengine_registry.MODELS.get("RKDExtAngleWiseRKD") is None


@pytest.mark.parametrize("kind,cfg", [
    ("distance", dict(type="RKDExtDistanceWiseRKD", with_l2_norm=True, loss_weight=25)),
    ("angle", dict(type="RKDExtAngleWiseRKD", with_l2_norm=True, loss_weight=50)),
    ("distance", dict(type="RKDExtDistanceWiseRKD", with_l2_norm=False, loss_weight=3.5)),
    ("angle", dict(type="RKDExtAngleWiseRKD")),
], ids=["distance", "angle", "distance-no-l2", "angle-defaults"])
def test_built_from_a_config_dict_matches_mmrazor(mmrazor_models, kind, cfg):
    compat = _compat()
    loss = mmrazor_models.build(dict(cfg))
    assert type(loss) is (compat.DistanceWiseRKD if kind == "distance" else compat.AngleWiseRKD)
    weight = cfg.get("loss_weight", 25.0 if kind == "distance" else 50.0)
    _check_against_oracle(loss, kind, weight, cfg.get("with_l2_norm", True))


def test_built_through_the_root_registry_with_scope(mmrazor_models):
    # A model config with _scope_='mmrazor' (as in the README) is built by the
    # root registry, which switches to mmrazor's child for the type names.
    _compat()
    cfg = mmengine_config.ConfigDict(_scope_="mmrazor", type="RKDExtAngleWiseRKD", loss_weight=7, with_l2_norm=False)
    loss = mmengine_registry.MODELS.build(cfg)
    _check_against_oracle(loss, "angle", 7, False)


def test_built_from_a_config_file_with_custom_imports(mmrazor_models, tmp_path):
    path = tmp_path / "rkd_config.py"
    path.write_text("custom_imports = dict(imports=['rkd_ext.compat.mmrazor'], allow_failed_imports=False)\n"
                    "loss_dw = dict(type='RKDExtDistanceWiseRKD', with_l2_norm=True, loss_weight=25)\n")
    cfg = mmengine_config.Config.fromfile(str(path))
    loss = mmrazor_models.build(cfg.loss_dw)
    assert type(loss).__module__ == "rkd_ext.compat.mmrazor"
    _check_against_oracle(loss, "distance", 25, True)


def test_a_taken_name_is_not_replaced(mmrazor_models):
    first = _compat()
    del sys.modules["rkd_ext.compat.mmrazor"]
    with pytest.raises(KeyError, match="RKDExtDistanceWiseRKD"):
        _compat()
    assert mmrazor_models.get("RKDExtDistanceWiseRKD") is first.DistanceWiseRKD


def test_bad_config_values_name_the_argument(mmrazor_models):
    _compat()
    with pytest.raises(Exception, match="DistanceWiseRKD: loss_weight must be a finite number >= 0"):
        mmrazor_models.build(dict(type="RKDExtDistanceWiseRKD", loss_weight=-25))
