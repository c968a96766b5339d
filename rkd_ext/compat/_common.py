"""Input handling shared by the compat wrappers, with errors in each framework's own argument names."""
import torch

from .. import _checks

_HALF = (torch.float16, torch.bfloat16)


def flat(fn, name, x, *, two_d_only=False):
    """``x`` as (N, -1), as the frameworks' ``view(N, -1)`` / ``flatten(1)`` would, with a clear error otherwise.

    ``two_d_only``: the framework indexes its input as (N, D) and fails on any
    other rank; refuse it with a message instead of guessing a flattening.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if two_d_only and x.dim() != 2:
        raise ValueError(f"{fn}: {name} must be a 2-D (N, D) tensor, got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.dim() == 0:
        raise ValueError(f"{fn}: {name} must have a batch dimension, got a 0-D tensor")
    # reshape, not view: the frameworks' view(N, -1) fails on non-contiguous
    # input, and accepting it changes no value.
    return _checks.features(fn, name, x.reshape(x.shape[0], -1))


def pair(fn, names, student, teacher, *, two_d_only=False):
    """Both inputs flattened, on one device and with one batch size."""
    s = flat(fn, names[0], student, two_d_only=two_d_only)
    t = flat(fn, names[1], teacher, two_d_only=two_d_only)
    if s.device != t.device:
        raise ValueError(f"{fn}: {names[0]} and {names[1]} must be on the same device, got {s.device} and {t.device}")
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"{fn}: {names[0]} and {names[1]} must have the same batch size, "
                         f"got {s.shape[0]} and {t.shape[0]}")
    return s, t


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


def weighted_sum(terms):
    """Sum of ``weight * loss()`` over (weight, loss) pairs, skipping the computation of terms weighted 0."""
    total = None
    for weight, loss in terms:
        if weight:
            term = weight * loss()
            total = term if total is None else total + term
    return total
