"""mmrazor's ``DistanceWiseRKD`` and ``AngleWiseRKD``, computed by rkd_ext's kernels.

The classes of ``mmrazor/models/losses/relational_kd.py``, same arguments and numbers.

Replace ``from mmrazor.models.losses import DistanceWiseRKD, AngleWiseRKD`` with
``from rkd_ext.compat.mmrazor import DistanceWiseRKD, AngleWiseRKD``.

When mmrazor is installed, importing this module also registers both classes in
mmrazor's ``MODELS`` registry as ``RKDExtDistanceWiseRKD`` and
``RKDExtAngleWiseRKD`` (mmrazor's own names stay mmrazor's), so a config selects
them with::

    custom_imports = dict(imports=['rkd_ext.compat.mmrazor'], allow_failed_imports=False)
    ...
    distill_losses=dict(
        loss_dw=dict(type='RKDExtDistanceWiseRKD', with_l2_norm=True, loss_weight=25),
        loss_aw=dict(type='RKDExtAngleWiseRKD', with_l2_norm=True, loss_weight=50)),

``loss_forward_mappings`` stay as they are: the forward arguments keep
mmrazor's names ``preds_S`` and ``preds_T``.

As in mmrazor, the teacher is not detached: it receives gradients when it
requires them. Differences: a batch of one sample gives 0 (with a warning)
instead of NaN for the distance loss; exactly coincident samples get a zero
subgradient instead of one scaled by 1/eps.
"""
from torch import nn

from .. import _checks
from ..functional import rkd_angle_loss, rkd_distance_loss
from . import _common, _registry

__all__ = ["DistanceWiseRKD", "AngleWiseRKD", "REGISTERED_NAMES"]

_NAMES = ("preds_S", "preds_T")


def _prepare(fn, preds_S, preds_T, with_l2_norm):
    s, t = _common.pair(fn, _NAMES, preds_S, preds_T)
    if with_l2_norm:
        s, t = _common.l2_normalize(s), _common.l2_normalize(t)
    return s, t


class _WeightedTerm(nn.Module):
    """One RKD term, times ``loss_weight``, with mmrazor's arguments and forward signature."""

    _loss = None

    def __init__(self, loss_weight, with_l2_norm):
        super().__init__()
        name = type(self).__name__
        self.loss_weight = _checks.non_negative(name, "loss_weight", loss_weight)
        self.with_l2_norm = _checks.flag(name, "with_l2_norm", with_l2_norm)

    def forward(self, preds_S, preds_T):  # mmrazor checks these argument names
        s, t = _prepare(type(self).__name__, preds_S, preds_T, self.with_l2_norm)
        return type(self)._loss(s, t) * self.loss_weight

    def extra_repr(self):
        return f"loss_weight={self.loss_weight}, with_l2_norm={self.with_l2_norm}"


class DistanceWiseRKD(_WeightedTerm):
    """Distance-wise RKD loss, times ``loss_weight``.

    Args:
        loss_weight: weight of the loss.
        with_l2_norm: scale each (flattened) feature vector to unit norm first.

    ``forward(preds_S, preds_T)`` with (N, C, H, W) or (N, C) tensors, flattened
    to (N, -1); returns a scalar.
    """

    _loss = staticmethod(rkd_distance_loss)

    def __init__(self, loss_weight=25.0, with_l2_norm=True):
        super().__init__(loss_weight, with_l2_norm)


class AngleWiseRKD(_WeightedTerm):
    """Angle-wise RKD loss, times ``loss_weight``; arguments and forward as :class:`DistanceWiseRKD`."""

    _loss = staticmethod(rkd_angle_loss)

    def __init__(self, loss_weight=50.0, with_l2_norm=True):
        super().__init__(loss_weight, with_l2_norm)


REGISTERED_NAMES = {"RKDExtDistanceWiseRKD": DistanceWiseRKD, "RKDExtAngleWiseRKD": AngleWiseRKD}


def _register():
    registry = _registry.import_if_installed("mmrazor.registry", "mmrazor")
    if registry is None:
        return
    for name, cls in REGISTERED_NAMES.items():
        # force=False: a name already taken raises the registry's own KeyError
        # rather than silently replacing someone else's class.
        registry.MODELS.register_module(name=name, module=cls)


_register()
