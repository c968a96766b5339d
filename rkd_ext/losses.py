"""RKD losses as nn.Modules: thin wrappers over rkd_ext.functional.

Relations over the global batch of a data-parallel job, two ways (see
:mod:`rkd_ext.distributed`); under DistributedDataParallel both make the update
equal the single-process update on the concatenated batch, and every rank gets
the same loss value:

* ``gather_distributed=True``: the student features of all ranks are gathered
  with an autograd-aware all_gather and the teacher's without gradient, and
  every rank computes the whole loss of the global batch. The teacher receives
  no gradient in this mode.
* ``gather_distributed=True, shard=True``: the work is split by anchor: each
  rank computes the relations whose first index is one of its own samples,
  about 1/W of the products and triplets with W ranks, and the ranks exchange
  what the others need. Reductions 'mean' and 'sum' only. A teacher that
  requires grad receives its exact gradient.

Without an initialised process group (or with one rank) the local batch is the
global one, and both compute the plain loss.
"""
import torch
from torch import nn

from . import _checks, distributed
from . import functional as F

__all__ = ["RKDDistanceLoss", "RKDAngleLoss", "RKDLoss"]


class _RelationLoss(nn.Module):
    """One RKD term as a module: the loss function ``_loss`` and its arguments."""

    _loss = None
    _weights = None  # (distance, angle) weights of this term in distributed.sharded_loss

    def __init__(self, beta=1.0, eps=1e-12, reduction="mean", gather_distributed=False, shard=False):
        super().__init__()
        fn = type(self).__name__
        self.beta = _checks.beta(fn, beta)
        self.eps = _checks.eps(fn, eps)
        self.reduction = _checks.reduction(fn, reduction)
        self.gather_distributed, self.shard = _distributed_mode(fn, gather_distributed, shard)
        if self.shard:
            distributed._shardable_reduction(fn, reduction)

    def forward(self, student, teacher):
        if self.shard and distributed.world_size() > 1:
            distance_weight, angle_weight = type(self)._weights
            return distributed._sharded_loss(type(self).__name__, student, teacher, distance_weight, angle_weight,
                                             self.beta, self.eps, self.reduction, None)
        if self.gather_distributed and not self.shard:
            student, teacher = distributed.gather_student_teacher(student, teacher)
        return type(self)._loss(student, teacher, beta=self.beta, eps=self.eps, reduction=self.reduction)

    def extra_repr(self):
        return f"beta={self.beta}, eps={self.eps}, reduction={self.reduction!r}" + _mode_repr(self)


def _distributed_mode(fn, gather_distributed, shard):
    gather_distributed = _checks.flag(fn, "gather_distributed", gather_distributed)
    shard = _checks.flag(fn, "shard", shard)
    if shard and not gather_distributed:
        raise ValueError(f"{fn}: shard=True splits the loss of the global batch across ranks, so it needs "
                         "gather_distributed=True, got gather_distributed=False")
    return gather_distributed, shard


def _mode_repr(module):
    return (", gather_distributed=True" if module.gather_distributed else "") + (", shard=True" if module.shard else "")


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
        shard: with ``gather_distributed``, split the work of the global
            batch across ranks by anchor (see the module docstring); needs
            reduction 'mean' or 'sum'.

    Shape:
        student (N, *), teacher (N, *) -> scalar, or (N, N) for reduction='none'
        (N the global batch size when gathering).
    """

    _loss = staticmethod(F.rkd_distance_loss)
    _weights = (1.0, 0.0)


class RKDAngleLoss(_RelationLoss):
    r"""Angle-wise RKD loss (Park et al., CVPR 2019).

    Smooth-L1 between the triplet-angle tensors of student and teacher features,
    averaged over all N^3 triplets; see :func:`rkd_ext.rkd_angle_loss`. Inputs of
    rank > 2 are flattened to (N, -1). The arguments are those of
    :class:`RKDDistanceLoss`, except that eps clamps the norms of the
    difference vectors.

    Shape:
        student (N, *), teacher (N, *) -> scalar, or (N, N, N) for reduction='none'.
    """

    _loss = staticmethod(F.rkd_angle_loss)
    _weights = (0.0, 1.0)


class RKDLoss(nn.Module):
    r"""The full RKD objective: ``distance_weight * distance loss + angle_weight * angle loss``.

    Defaults are the paper's (and mmrazor's / RepDistiller's) weights 25 and 50.
    Both terms come from one fused operator (see :func:`rkd_ext.rkd_loss`):
    one pair matrix per input forward, one gradient product per input
    backward. Weights are finite numbers >= 0; a weight of 0 skips that term's
    computation entirely (the inputs are checked all the same).

    Args:
        distance_weight: weight of the distance-wise term.
        angle_weight: weight of the angle-wise term.
        beta: smooth-L1 threshold of both terms.
        eps: clamp of both terms.
        gather_distributed: compute the relations over the batches of all
            ranks (see the module docstring); one gather serves both terms.
        shard: with ``gather_distributed``, split the work of the global
            batch across ranks by anchor (see the module docstring); one
            gather of the features serves both terms.
    """

    def __init__(self, distance_weight=25.0, angle_weight=50.0, beta=1.0, eps=1e-12, gather_distributed=False,
                 shard=False):
        super().__init__()
        fn = "RKDLoss"
        self.distance_weight = _checks.non_negative(fn, "distance_weight", distance_weight)
        self.angle_weight = _checks.non_negative(fn, "angle_weight", angle_weight)
        self.beta = _checks.beta(fn, beta)
        self.eps = _checks.eps(fn, eps)
        self.gather_distributed, self.shard = _distributed_mode(fn, gather_distributed, shard)

    def forward(self, student, teacher):
        if self.shard and distributed.world_size() > 1:
            return distributed._sharded_loss("RKDLoss", student, teacher, self.distance_weight, self.angle_weight,
                                             self.beta, self.eps, "mean", None)
        if self.gather_distributed and not self.shard:
            student, teacher = distributed.gather_student_teacher(student, teacher)
        student, teacher = _checks.pair("RKDLoss", student, teacher)
        if self.distance_weight == 0 and self.angle_weight == 0:
            return student.new_zeros((), dtype=torch.float32) + 0 * student.sum()
        return F._rkd_loss(student, teacher, self.distance_weight, self.angle_weight, self.beta, self.eps, self.eps,
                           "mean", False, 0.0, True)

    def extra_repr(self):
        return (f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}, "
                f"beta={self.beta}, eps={self.eps}" + _mode_repr(self))
