"""Input handling shared by the compat wrappers, with errors in each framework's own argument names."""
import torch

from .. import _checks, functional

_HALF = (torch.float16, torch.bfloat16)


def pair(fn, names, student, teacher, *, two_d_only=False):
    """Both inputs as (N, -1), as the frameworks' ``view(N, -1)`` / ``flatten(1)`` would, checked.

    ``two_d_only``: the framework indexes its inputs as (N, D) and fails on any
    other rank; refuse it with a message instead of guessing a flattening.
    The flattening is a reshape, not a view: the frameworks' ``view(N, -1)``
    fails on non-contiguous input, and accepting it changes no value.
    """
    if two_d_only:
        for name, x in zip(names, (student, teacher)):
            if _checks.tensor(fn, name, x).dim() != 2:
                raise ValueError(f"{fn}: {name} must be a 2-D (N, D) tensor, "
                                 f"got {x.dim()}-D with shape {tuple(x.shape)}")
    return _checks.pair(fn, student, teacher, names=names, min_dim=1)


def l2_normalize(x):
    """Rows scaled to unit norm (``F.normalize(x, dim=1)``), in float32 or wider.

    The kernels compute in float32 or wider; normalising half-precision
    features first in their own dtype would throw away the digits they keep.
    """
    wide = x.float() if x.dtype in _HALF else x
    return torch.nn.functional.normalize(wide, p=2, dim=1)


def zero_loss(student):
    """A float32 zero that stays connected to the student, for a loss whose every term is weighted 0."""
    return student.new_zeros((), dtype=torch.float32) + 0 * student.sum()


def rkd_loss(student, teacher, distance_weight, angle_weight, *, eps=1e-12, reduction="mean", squared=False,
             mean_offset=0.0, normalize=True):
    """``distance_weight * distance loss + angle_weight * angle loss`` from the fused operator (rkd_ext.rkd_loss).

    Checked inputs and scalars; smooth-L1 with beta 1 and the angle term's
    clamp at 1e-12 (``F.normalize``'s), as in every framework; ``eps`` clamps
    the distance term's squared distances. A term weighted 0 is not computed;
    with both, the loss is :func:`zero_loss`.
    """
    if not distance_weight and not angle_weight:
        return zero_loss(student)
    return functional._rkd_loss(student, teacher, distance_weight, angle_weight, 1.0, eps, 1e-12, reduction, squared,
                                mean_offset, normalize)


def weighted_sum(terms):
    """Sum of ``weight * loss()`` over (weight, loss) pairs, skipping the computation of terms weighted 0."""
    total = None
    for weight, loss in terms:
        if weight:
            term = weight * loss()
            total = term if total is None else total + term
    return total
