r"""The reference RKD formulation in plain PyTorch.

This is the formulation every public implementation descends from (Park et al.,
CVPR 2019, and the authors' code), written out so that it can serve three roles:
the oracle the kernels are tested against, the baseline they are benchmarked
against, and the fallback used when the compiled extension is unavailable.

It deliberately keeps the reference's numerics: squared distances in the
expanded form :math:`|x_i|^2 + |x_j|^2 - 2 x_i \cdot x_j`, clamped at ``eps``;
angles from an N x N x D tensor of normalised difference vectors. It also
keeps its costs: O(N^2) memory for distances, O(N^2 D + N^3) for angles.

Unlike the reference's training script it does not detach the teacher:
gradients reach every input that requires them.
"""
import torch
import torch.nn.functional as F

__all__ = [
    "pairwise_distance",
    "normalized_distance",
    "distance_loss",
    "angle_tensor",
    "angle_loss",
]


def pairwise_distance(x, eps=1e-12, squared=False):
    r"""(N, N) distances :math:`\sqrt{\max(s_{ij}, \epsilon)}`, zero diagonal.

    ``s`` comes from the expanded form, so close or offset points lose digits to
    cancellation exactly as in the reference implementations.
    """
    sq_norm = x.pow(2).sum(dim=1)
    s = (sq_norm.unsqueeze(1) + sq_norm.unsqueeze(0) - 2.0 * (x @ x.t())).clamp(min=eps)
    d = s if squared else s.sqrt()
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d.masked_fill(eye, 0.0)


def normalized_distance(x, eps=1e-12, squared=False, mean_offset=0.0):
    """Distances divided by (their mean over the N(N-1) off-diagonal pairs + mean_offset)."""
    d = pairwise_distance(x, eps, squared)
    n = x.shape[0]
    return d / (d.sum() / (n * (n - 1)) + mean_offset)


def distance_loss(student, teacher, beta=1.0, eps=1e-12, reduction="mean", squared=False, mean_offset=0.0):
    """Smooth-L1 between the normalised distance matrices, over all N^2 entries.

    ``squared`` normalises squared distances instead of distances (mdistiller's
    option); ``mean_offset`` is added to the mean before dividing (KD_Lib adds 1e-7).
    """
    return F.smooth_l1_loss(normalized_distance(student, eps, squared, mean_offset),
                            normalized_distance(teacher, eps, squared, mean_offset),
                            reduction=reduction, beta=beta)


def angle_tensor(x, eps=1e-12, normalize=True):
    r"""(N, N, N) cosines :math:`A_{ijk} = \langle e_{ij}, e_{ik} \rangle`, vertex first.

    :math:`e_{ij} = (x_j - x_i) / \max(\|x_j - x_i\|, \epsilon)`; zero where j == i
    or k == i. With ``normalize=False`` the difference vectors are not
    normalised (KD_Lib's option): :math:`A_{ijk} = \langle x_j - x_i, x_k - x_i \rangle`.
    """
    e = x.unsqueeze(0) - x.unsqueeze(1)
    if normalize:
        e = F.normalize(e, p=2, dim=2, eps=eps)
    return torch.bmm(e, e.transpose(1, 2))


def angle_loss(student, teacher, beta=1.0, eps=1e-12, reduction="mean", normalize=True):
    """Smooth-L1 between the angle tensors, over all N^3 entries."""
    return F.smooth_l1_loss(angle_tensor(student, eps, normalize), angle_tensor(teacher, eps, normalize),
                            reduction=reduction, beta=beta)
