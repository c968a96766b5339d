"""RKD losses as nn.Modules: thin wrappers over rkd_ext.functional."""
from torch import nn

from . import functional as F

__all__ = ["RKDDistanceLoss"]


class RKDDistanceLoss(nn.Module):
    r"""Distance-wise RKD loss (Park et al., CVPR 2019).

    ``loss = smooth_l1(d(S) / mean d(S), d(T) / mean d(T))`` averaged over all N^2
    pairs, with d the Euclidean distance matrix of the batch; see
    :func:`rkd_ext.rkd_distance_loss`. Inputs of rank > 2 are flattened to (N, -1).

    Args:
        beta: smooth-L1 threshold.
        eps: clamp applied to squared distances.
        reduction: 'mean', 'sum' or 'none'.

    Shape:
        student (N, *), teacher (N, *) -> scalar, or (N, N) for reduction='none'.
    """

    def __init__(self, beta=1.0, eps=1e-12, reduction="mean"):
        super().__init__()
        self.beta = beta
        self.eps = eps
        self.reduction = reduction

    def forward(self, student, teacher):
        return F.rkd_distance_loss(student, teacher, beta=self.beta, eps=self.eps, reduction=self.reduction)

    def extra_repr(self):
        return f"beta={self.beta}, eps={self.eps}, reduction={self.reduction!r}"
