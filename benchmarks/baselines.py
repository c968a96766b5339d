"""What users write instead of rkd_ext, as benchmark baselines: plain PyTorch only."""
import torch
import torch.nn.functional as F


def offdiag_mean_normalize(d):
    """d divided by the mean of its N(N-1) off-diagonal entries (the RKD normaliser)."""
    n = d.shape[0]
    return d / (d.sum() / (n * (n - 1)))


def cdist_distance(x):
    return torch.cdist(x, x)


def cdist_normalized_distance(x):
    return offdiag_mean_normalize(torch.cdist(x, x))


def cdist_distance_loss(student, teacher):
    return F.smooth_l1_loss(cdist_normalized_distance(student), cdist_normalized_distance(teacher))


def law_of_cosines_angle(x, eps=1e-12):
    """The (N, N, N) angle tensor from squared distances, in plain PyTorch (N^3 temporaries, no N^2 D).

    s must be exactly symmetric with a zero diagonal, or the degenerate entries
    (divided by eps) blow up.
    """
    n2 = x.pow(2).sum(1)
    sq = (n2.unsqueeze(1) + n2.unsqueeze(0) - 2 * (x @ x.t())).clamp_min(0)
    sq = 0.5 * (sq + sq.t())
    sq = sq.masked_fill(torch.eye(x.shape[0], dtype=torch.bool, device=x.device), 0.0)
    r = sq.sqrt().clamp_min(eps)
    num = sq.unsqueeze(2) + sq.unsqueeze(1) - sq.unsqueeze(0)
    return num / (2 * r.unsqueeze(2) * r.unsqueeze(1))


def law_of_cosines_angle_loss(student, teacher, eps=1e-12):
    return F.smooth_l1_loss(law_of_cosines_angle(student, eps), law_of_cosines_angle(teacher, eps))
