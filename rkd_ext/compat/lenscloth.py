"""The authors' RKD losses (``metric/loss.py`` of the reference code), computed by rkd_ext's kernels.

Replace ``from metric.loss import RkdDistance, RKdAngle`` with
``from rkd_ext.compat.lenscloth import RkdDistance, RKdAngle``. The modules take
no arguments; the reference training script weights them 1 and 2.

Differences: a batch of one sample gives 0 (with a warning) instead of NaN for
the distance loss; exactly coincident samples get a zero subgradient instead of
one scaled by 1/eps.
"""
from torch import nn

from ..functional import rkd_angle_loss, rkd_distance_loss
from . import _common

__all__ = ["RkdDistance", "RKdAngle"]

_NAMES = ("student", "teacher")


class RkdDistance(nn.Module):
    """Distance-wise RKD loss: smooth-L1 between mean-normalised distance matrices.

    ``forward(student, teacher)`` with (N, D_s) and (N, D_t) tensors; returns a
    scalar. The teacher is detached (the reference computes it under no_grad).
    """

    def forward(self, student, teacher):
        student, teacher = _common.pair("RkdDistance", _NAMES, student, teacher, two_d_only=True)
        return rkd_distance_loss(student, teacher.detach())


class RKdAngle(nn.Module):
    """Angle-wise RKD loss: smooth-L1 between the triplet-cosine tensors, over all N^3 triplets.

    ``forward(student, teacher)`` with (N, D_s) and (N, D_t) tensors; returns a
    scalar. The teacher is detached (the reference computes it under no_grad).
    """

    def forward(self, student, teacher):
        student, teacher = _common.pair("RKdAngle", _NAMES, student, teacher, two_d_only=True)
        return rkd_angle_loss(student, teacher.detach())
