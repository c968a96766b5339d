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


class _Term(nn.Module):
    _loss = None

    def forward(self, student, teacher):
        student, teacher = _common.pair(type(self).__name__, _NAMES, student, teacher, two_d_only=True)
        return type(self)._loss(student, teacher.detach())


class RkdDistance(_Term):
    """Distance-wise RKD loss: smooth-L1 between mean-normalised distance matrices.

    ``forward(student, teacher)`` with (N, D_s) and (N, D_t) tensors; returns a
    scalar. The teacher is detached (the reference computes it under no_grad).
    """

    _loss = staticmethod(rkd_distance_loss)


class RKdAngle(_Term):
    """Angle-wise RKD loss: smooth-L1 between the triplet-cosine tensors, over all N^3 triplets.

    ``forward(student, teacher)`` with (N, D_s) and (N, D_t) tensors; returns a
    scalar. The teacher is detached (the reference computes it under no_grad).
    """

    _loss = staticmethod(rkd_angle_loss)
