"""torchdistill's ``RKDLoss`` (``torchdistill/losses/mid_level.py``), computed by rkd_ext's kernels.

Replace ``from torchdistill.losses.mid_level import RKDLoss`` with
``from rkd_ext.compat.torchdistill import RKDLoss``.

When torchdistill is installed, importing this module also registers the class
as the middle-level loss ``RKDExtRKDLoss`` (torchdistill's own ``RKDLoss`` stays
torchdistill's), so a YAML config selects it by listing this module under
``dependencies`` and using ``key: 'RKDExtRKDLoss'`` with the usual kwargs.

Differences: a batch of one sample gives 0 (with a warning) instead of NaN for
the distance term; exactly coincident samples get a zero subgradient instead
of one scaled by 1/eps; a factor of ``None`` counts as 0, and with both factors
0 the loss is a float32 zero tensor (connected to the student) rather than the
integer 0.
"""
from torch import nn

from .. import _checks
from ..functional import rkd_angle_loss, rkd_distance_loss
from . import _common, _registry

__all__ = ["RKDLoss", "REGISTERED_NAME"]


def _factor(name, value):
    # torchdistill skips a term whose factor is None, as one of 0.
    return None if value is None else _checks.non_negative("RKDLoss", name, value)


class RKDLoss(nn.Module):
    """``dist_factor * distance loss + angle_factor * angle loss`` on recorded module outputs.

    Args:
        student_output_path: module path whose recorded output is the student's features.
        teacher_output_path: module path whose recorded output is the teacher's features.
        dist_factor: weight of the distance-wise term; 0 (or None) skips it.
        angle_factor: weight of the angle-wise term; 0 (or None) skips it.
        reduction: smooth-L1 reduction, 'mean', 'sum' or 'none' ('none' gives the
            (N, N) distance loss and the flattened (N^3,) angle loss, so it only
            combines with one of the factors set).
        **kwargs: accepted and ignored, as in torchdistill.

    ``forward(student_io_dict, teacher_io_dict, *args, **kwargs)`` reads
    ``io_dict[path]['output'].flatten(1)`` of both. The teacher is detached
    (torchdistill computes it under no_grad). With reduction 'mean' or 'sum'
    both terms come from one fused operator (:func:`rkd_ext.rkd_loss`).
    """

    def __init__(self, student_output_path, teacher_output_path, dist_factor, angle_factor, reduction, **kwargs):
        super().__init__()
        self.student_output_path = student_output_path
        self.teacher_output_path = teacher_output_path
        self.dist_factor = _factor("dist_factor", dist_factor)
        self.angle_factor = _factor("angle_factor", angle_factor)
        self.reduction = _checks.reduction("RKDLoss", reduction)

    def forward(self, student_io_dict, teacher_io_dict, *args, **kwargs):
        s_name = f"student_io_dict[{self.student_output_path!r}]['output']"
        t_name = f"teacher_io_dict[{self.teacher_output_path!r}]['output']"
        student, teacher = _common.pair(
            "RKDLoss", (s_name, t_name),
            student_io_dict[self.student_output_path]["output"],
            teacher_io_dict[self.teacher_output_path]["output"])
        teacher = teacher.detach()
        if self.reduction != "none":
            return _common.rkd_loss(student, teacher, self.dist_factor or 0.0, self.angle_factor or 0.0,
                                    reduction=self.reduction)
        # The elementwise terms differ in shape: they add up only when one of them is computed.
        loss = _common.weighted_sum([
            (self.dist_factor, lambda: rkd_distance_loss(student, teacher, reduction=self.reduction)),
            (self.angle_factor, lambda: self._angle(student, teacher)),
        ])
        return _common.zero_loss(student) if loss is None else loss

    def _angle(self, student, teacher):
        loss = rkd_angle_loss(student, teacher, reduction=self.reduction)
        # torchdistill compares flattened angle vectors.
        return loss.reshape(-1) if self.reduction == "none" else loss

    def extra_repr(self):
        return (f"student_output_path={self.student_output_path!r}, "
                f"teacher_output_path={self.teacher_output_path!r}, dist_factor={self.dist_factor}, "
                f"angle_factor={self.angle_factor}, reduction={self.reduction!r}")


REGISTERED_NAME = "RKDExtRKDLoss"


def _register():
    registry = _registry.import_if_installed("torchdistill.losses.registry", "torchdistill")
    if registry is None:
        return
    # torchdistill >= 1.0 calls it a middle-level loss, 0.3 a single loss; same decorator either way.
    register = getattr(registry, "register_mid_level_loss", None) or registry.register_single_loss
    register(key=REGISTERED_NAME)(RKDLoss)


_register()
