"""RepDistiller's ``RKDLoss`` (``distiller_zoo/RKD.py``), computed by rkd_ext's kernels.

Replace ``from distiller_zoo import RKDLoss`` with
``from rkd_ext.compat.repdistiller import RKDLoss``.

Differences: a batch of one sample gives 0 (with a warning) instead of NaN;
exactly coincident samples get a zero subgradient instead of one scaled by
1/eps; a term weighted 0 is not computed.
"""
from torch import nn

from .. import _checks
from . import _common

__all__ = ["RKDLoss"]


class RKDLoss(nn.Module):
    """``w_d * distance loss + w_a * angle loss`` between (N, ...) features flattened to (N, -1).

    Args:
        w_d: weight of the distance-wise term.
        w_a: weight of the angle-wise term.

    ``forward(f_s, f_t)`` returns a scalar, both terms from one fused operator
    (:func:`rkd_ext.rkd_loss`). The teacher ``f_t`` is detached (RepDistiller
    computes it under no_grad).
    """

    def __init__(self, w_d=25, w_a=50):
        super().__init__()
        self.w_d = _checks.non_negative("RKDLoss", "w_d", w_d)
        self.w_a = _checks.non_negative("RKDLoss", "w_a", w_a)

    def forward(self, f_s, f_t):
        student, teacher = _common.pair("RKDLoss", ("f_s", "f_t"), f_s, f_t)
        return _common.rkd_loss(student, teacher.detach(), self.w_d, self.w_a)

    def extra_repr(self):
        return f"w_d={self.w_d}, w_a={self.w_a}"
