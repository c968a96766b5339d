"""KD_Lib's RKD losses (``KD_Lib/KD/vision/RKD/loss_metric.py``), computed by rkd_ext's kernels.

Replace ``from KD_Lib.KD.vision.RKD.loss_metric import RKDLoss`` (or
``RKDDistanceLoss``, ``RKDAngleLoss``) with ``from rkd_ext.compat.kdlib import
RKDLoss``. As in KD_Lib, ``forward`` takes the teacher first:
``forward(teacher, student)``. The KD_Lib numerics are kept: squared distances
clamped at 1e-10, 1e-7 added to the mean distance before dividing, and
``normalize=False`` comparing unnormalised dot products of difference vectors.

Differences: a batch of one sample gives 0 (with a warning) instead of NaN;
exactly coincident samples get a zero subgradient instead of one scaled by
1/eps; a term weighted 0 is not computed.
"""
from torch import nn

from .. import _checks
from ..functional import rkd_angle_loss, rkd_distance_loss
from . import _common

__all__ = ["RKDDistanceLoss", "RKDAngleLoss", "RKDLoss"]

_NAMES = ("student", "teacher")
_CLAMP = 1e-10
_MEAN_OFFSET = 1e-7


def _pair(fn, teacher, student):
    student, teacher = _common.pair(fn, _NAMES, student, teacher, two_d_only=True)
    return student, teacher.detach()


def _distance(student, teacher):
    return rkd_distance_loss(student, teacher, eps=_CLAMP, mean_offset=_MEAN_OFFSET)


def _angle(student, teacher, normalize):
    return rkd_angle_loss(student, teacher, normalize=normalize)


class RKDDistanceLoss(nn.Module):
    """Distance-wise RKD loss with KD_Lib's clamp (1e-10) and normaliser (mean + 1e-7).

    ``forward(teacher, student)`` with (N, D) tensors, teacher first; the
    teacher is detached (KD_Lib computes it under no_grad).
    """

    def forward(self, teacher, student):
        return _distance(*_pair("RKDDistanceLoss", teacher, student))


class RKDAngleLoss(nn.Module):
    """Angle-wise RKD loss, over all N^3 triplets.

    ``forward(teacher, student, normalize=True)``, teacher first; with
    ``normalize=False`` the difference vectors are not normalised (dot
    products instead of cosines). The teacher is detached.
    """

    def forward(self, teacher, student, normalize=True):
        return _angle(*_pair("RKDAngleLoss", teacher, student), _checks.flag("RKDAngleLoss", "normalize", normalize))


class RKDLoss(nn.Module):
    """``angle_ratio * angle loss + dist_ratio * distance loss``, both from one fused operator.

    The terms come from :func:`rkd_ext.rkd_loss`.

    Args:
        dist_ratio: weight of the distance-wise term.
        angle_ratio: weight of the angle-wise term.
        normalize: normalise the difference vectors of the angle term.

    ``forward(teacher, student)``, teacher first; the teacher is detached.
    """

    def __init__(self, dist_ratio=0.5, angle_ratio=0.5, normalize=True):
        super().__init__()
        self.dist_ratio = _checks.non_negative("RKDLoss", "dist_ratio", dist_ratio)
        self.angle_ratio = _checks.non_negative("RKDLoss", "angle_ratio", angle_ratio)
        self.normalize = _checks.flag("RKDLoss", "normalize", normalize)

    def forward(self, teacher, student):
        student, teacher = _pair("RKDLoss", teacher, student)
        return _common.rkd_loss(student, teacher, self.dist_ratio, self.angle_ratio, eps=_CLAMP,
                                mean_offset=_MEAN_OFFSET, normalize=self.normalize)

    def extra_repr(self):
        return f"dist_ratio={self.dist_ratio}, angle_ratio={self.angle_ratio}, normalize={self.normalize}"
