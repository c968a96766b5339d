"""mdistiller's ``rkd_loss`` (``mdistiller/distillers/RKD.py``), computed by rkd_ext's kernels.

Replace ``from mdistiller.distillers.RKD import rkd_loss`` with
``from rkd_ext.compat.mdistiller import rkd_loss``.

Differences: a batch of one sample gives 0 (with a warning) instead of NaN;
exactly coincident samples get a zero subgradient instead of one scaled by
1/eps; a term weighted 0 is not computed.
"""
from .. import _checks
from . import _common

__all__ = ["rkd_loss"]


def rkd_loss(f_s, f_t, squared=False, eps=1e-12, distance_weight=25, angle_weight=50):
    """``distance_weight * distance loss + angle_weight * angle loss`` between features flattened to (N, -1).

    Args:
        f_s: student features (N, ...).
        f_t: teacher features (N, ...), detached (mdistiller computes them under no_grad).
        squared: normalise squared distances instead of distances (distance term only).
        eps: clamp of the squared distances (distance term only; the angle term
            keeps ``F.normalize``'s 1e-12, as in mdistiller).
        distance_weight: weight of the distance-wise term.
        angle_weight: weight of the angle-wise term.

    Returns:
        A scalar loss, both terms from one fused operator (:func:`rkd_ext.rkd_loss`).
    """
    fn = "rkd_loss"
    student, teacher = _common.pair(fn, ("f_s", "f_t"), f_s, f_t)
    teacher = teacher.detach()
    return _common.rkd_loss(student, teacher, _checks.non_negative(fn, "distance_weight", distance_weight),
                            _checks.non_negative(fn, "angle_weight", angle_weight), eps=_checks.eps(fn, eps),
                            squared=_checks.flag(fn, "squared", squared))
