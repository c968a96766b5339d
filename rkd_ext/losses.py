"""RKD losses as nn.Modules: thin wrappers over rkd_ext.functional.

With ``gather_distributed=True`` the relations span the global batch of a
data-parallel job: the student features of all ranks are gathered with an
autograd-aware all_gather and the teacher's without gradient (see
:mod:`rkd_ext.distributed`); under DistributedDataParallel the update then
equals the single-process update on the concatenated batch. Every rank gets
the same loss value. The teacher receives no gradient in this mode. Without an
initialised process group the local batch is the global one.
"""
import torch
from torch import nn

from . import _checks, distributed
from . import functional as F

__all__ = ["RKDDistanceLoss", "RKDAngleLoss", "RKDLoss"]


class _RelationLoss(nn.Module):
    """One RKD term as a module: the loss function ``_loss`` and its arguments."""

    _loss = None

    def __init__(self, beta=1.0, eps=1e-12, reduction="mean", gather_distributed=False):
        super().__init__()
        fn = type(self).__name__
        self.beta = _checks.beta(fn, beta)
        self.eps = _checks.eps(fn, eps)
        self.reduction = _checks.reduction(fn, reduction)
        self.gather_distributed = _checks.flag(fn, "gather_distributed", gather_distributed)

    def forward(self, student, teacher):
        if self.gather_distributed:
            student, teacher = distributed.gather_student_teacher(student, teacher)
        return type(self)._loss(student, teacher, beta=self.beta, eps=self.eps, reduction=self.reduction)

    def extra_repr(self):
        return (f"beta={self.beta}, eps={self.eps}, reduction={self.reduction!r}"
                + (", gather_distributed=True" if self.gather_distributed else ""))


class RKDDistanceLoss(_RelationLoss):
    r"""Distance-wise RKD loss (Park et al., CVPR 2019).

    ``loss = smooth_l1(d(S) / mean d(S), d(T) / mean d(T))`` averaged over all N^2
    pairs, with d the Euclidean distance matrix of the batch; see
    :func:`rkd_ext.rkd_distance_loss`. Inputs of rank > 2 are flattened to (N, -1).

    Args:
        beta: smooth-L1 threshold.
        eps: clamp applied to squared distances.
        reduction: 'mean', 'sum' or 'none'.
        gather_distributed: compute the relations over the batches of all
            ranks (see the module docstring).

    Shape:
        student (N, *), teacher (N, *) -> scalar, or (N, N) for reduction='none'
        (N the global batch size when gathering).
    """

    _loss = staticmethod(F.rkd_distance_loss)


class RKDAngleLoss(_RelationLoss):
    r"""Angle-wise RKD loss (Park et al., CVPR 2019).

    Smooth-L1 between the triplet-angle tensors of student and teacher features,
    averaged over all N^3 triplets; see :func:`rkd_ext.rkd_angle_loss`. Inputs of
    rank > 2 are flattened to (N, -1).

    Args:
        beta: smooth-L1 threshold.
        eps: clamp applied to difference norms.
        reduction: 'mean', 'sum' or 'none'.
        gather_distributed: compute the relations over the batches of all
            ranks (see the module docstring).
    """

    _loss = staticmethod(F.rkd_angle_loss)


class RKDLoss(nn.Module):
    r"""The full RKD objective: ``distance_weight * distance loss + angle_weight * angle loss``.

    Defaults are the paper's (and mmrazor's / RepDistiller's) weights 25 and 50.
    Weights are finite numbers >= 0; a weight of 0 skips that term's
    computation entirely (the inputs are checked all the same).

    Args:
        distance_weight: weight of the distance-wise term.
        angle_weight: weight of the angle-wise term.
        beta: smooth-L1 threshold of both terms.
        eps: clamp of both terms.
        gather_distributed: compute the relations over the batches of all
            ranks (see the module docstring); one gather serves both terms.
    """

    def __init__(self, distance_weight=25.0, angle_weight=50.0, beta=1.0, eps=1e-12, gather_distributed=False):
        super().__init__()
        fn = "RKDLoss"
        self.distance_weight = _checks.non_negative(fn, "distance_weight", distance_weight)
        self.angle_weight = _checks.non_negative(fn, "angle_weight", angle_weight)
        self.beta = _checks.beta(fn, beta)
        self.eps = _checks.eps(fn, eps)
        self.gather_distributed = _checks.flag(fn, "gather_distributed", gather_distributed)

    def forward(self, student, teacher):
        if self.gather_distributed:
            student, teacher = distributed.gather_student_teacher(student, teacher)
        # Checked here too, not only by the terms: with both weights 0 no term runs.
        student, teacher = _checks.pair("RKDLoss", student, teacher)
        loss = None
        if self.distance_weight != 0:
            loss = self.distance_weight * F.rkd_distance_loss(student, teacher, beta=self.beta, eps=self.eps)
        if self.angle_weight != 0:
            term = self.angle_weight * F.rkd_angle_loss(student, teacher, beta=self.beta, eps=self.eps)
            loss = term if loss is None else loss + term
        if loss is None:
            return student.new_zeros((), dtype=torch.float32) + 0 * student.sum()
        return loss

    def extra_repr(self):
        return (f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}, "
                f"beta={self.beta}, eps={self.eps}"
                + (", gather_distributed=True" if self.gather_distributed else ""))
