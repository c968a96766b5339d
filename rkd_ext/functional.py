r"""RKD relations and losses as functions.

Notation (Park et al., CVPR 2019): for a batch :math:`x \in \mathbb{R}^{N \times D}`,

.. math::

    s_{ij} = \|x_i - x_j\|^2, \qquad
    d_{ij} = \sqrt{\max(s_{ij}, \epsilon)} \;(i \ne j), \quad d_{ii} = 0, \qquad
    \mu = \frac{1}{N(N-1)} \sum_{i \ne j} d_{ij}, \qquad
    \psi_D = d / \mu,

and the distance-wise loss is the smooth-L1 (threshold :math:`\beta`) between
:math:`\psi_D(S)` and :math:`\psi_D(T)`, averaged over all :math:`N^2` entries
(diagonal included), as in the reference implementation.

Inputs of rank > 2 are flattened to (N, -1). Student and teacher may have
different feature sizes but must have the same N. float16 and bfloat16 inputs
are computed in float32 or wider; losses are returned in float32 (float64 when
an input is float64); gradients come back in each input's dtype. Gradients reach
every input that requires them, the teacher included.

Degenerate input: with N = 1 there are no pairs. The reference returns NaN,
which poisons a training run; these functions return 0 with a zero gradient and
warn once per process (under torch.compile, once while the graph is traced).

Squared distances come from the Gram form on the batch-centred features in
float64, with pairs too close for it recomputed from direct differences; exactly
coincident samples get a zero subgradient through their pair (the reference's
is scaled by :math:`1/\epsilon`). How, and how exact: docs/numerics.md.
"""
import warnings

import torch

from . import _checks, _ext, ops, reference
from ._torch_private import comptime

__all__ = [
    "pairwise_distance", "normalized_distance", "rkd_distance_loss", "angle_tensor", "rkd_angle_loss", "rkd_loss",
]

_warned = set()
_NO_PAIRS = ("a batch of one sample has no pairs; returning 0 with a zero gradient "
             "(the reference implementation returns NaN here)")
_NO_TRIPLETS = ("a batch of fewer than 3 samples has no triplets; returning 0 with a zero gradient "
                "(the reference implementation returns NaN or 0 here)")


def _warn_once(fn, msg):
    if torch.compiler.is_dynamo_compiling():
        # Dynamo cannot put warnings.warn in a graph (an error under
        # fullgraph=True): warn while the graph is traced instead, once per
        # process as in eager mode.
        comptime(_warn_while_tracing)
    elif fn not in _warned:
        _warned.add(fn)
        warnings.warn(f"{fn}: {msg}", UserWarning, stacklevel=3)


def _warn_while_tracing(ctx):
    # Runs as plain Python at trace time, reading _warn_once's (constant) arguments.
    _warn_once(ctx.get_local("fn").as_python_constant(), ctx.get_local("msg").as_python_constant())


def _no_relations(student, teacher, dtype, reduction, rank):
    """The fallback's loss for a batch without relations: 0, connected to both
    inputs so that backward gives them zero gradients; (N,) * rank zeros for 'none'."""
    zero = (student.sum() * 0 + teacher.sum() * 0).to(dtype)
    return zero.expand((student.shape[0],) * rank).clone() if reduction == "none" else zero


def _fallback_input(x):
    # The reference computes in the input dtype; half types are upcast so the
    # fallback, like the kernels, computes in float32 (the cast's gradient
    # brings gradients back in the input dtype).
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def pairwise_distance(x, *, eps=1e-12):
    r"""The (N, N) Euclidean distance matrix :math:`d_{ij} = \sqrt{\max(s_{ij}, \epsilon)}`, zero diagonal.

    Args:
        x: (N, D) features, or (N, ...) flattened to (N, -1).
        eps: clamp applied to the squared distances (keeps the gradient finite).

    Returns:
        (N, N) tensor in x's dtype.
    """
    fn = "pairwise_distance"
    x = _checks.features(fn, "x", x)
    eps = _checks.eps(fn, eps)
    if _ext.usable_for(x):
        return torch.ops.rkd_ext.pairwise_distance(x, eps)[0]
    return reference.pairwise_distance(_fallback_input(x), eps).to(x.dtype)


def normalized_distance(x, *, eps=1e-12):
    r"""Distances divided by their off-diagonal mean, :math:`\psi_D = d / \mu` (gradient flows through :math:`\mu`).

    Args:
        x: (N, D) features, or (N, ...) flattened to (N, -1).
        eps: clamp applied to the squared distances.

    Returns:
        (N, N) tensor in x's dtype; all zeros (with a one-time warning) when N = 1.
    """
    fn = "normalized_distance"
    x = _checks.features(fn, "x", x)
    eps = _checks.eps(fn, eps)
    if x.shape[0] < 2:
        _warn_once(fn, _NO_PAIRS)
    if _ext.usable_for(x):
        return torch.ops.rkd_ext.normalized_distance(x, eps)[0]
    if x.shape[0] < 2:
        return x.sum() * 0 + x.new_zeros((1, 1))
    return reference.normalized_distance(_fallback_input(x), eps).to(x.dtype)


def _loss_args(fn, student, teacher, beta, eps, reduction):
    """The arguments every loss takes, checked: (student, teacher, beta, eps, reduction)."""
    student, teacher = _checks.pair(fn, student, teacher)
    return student, teacher, _checks.beta(fn, beta), _checks.eps(fn, eps), _checks.reduction(fn, reduction)


def rkd_distance_loss(student, teacher, *, beta=1.0, eps=1e-12, reduction="mean", squared=False, mean_offset=0.0):
    r"""Distance-wise RKD loss: smooth-L1 between :math:`\psi_D(\text{student})` and :math:`\psi_D(\text{teacher})`.

    Computed by a fused kernel in O(N^2 D) time and O(N^2) extra memory,
    forward and backward.

    Args:
        student: (N, D_s) student features, or (N, ...) flattened.
        teacher: (N, D_t) teacher features, or (N, ...) flattened.
        beta: smooth-L1 threshold (``beta=0`` is L1).
        eps: clamp applied to the squared distances.
        reduction: ``'mean'`` over all N^2 entries (the reference), ``'sum'``,
            or ``'none'`` for the (N, N) elementwise loss.
        squared: normalise the clamped squared distances :math:`\max(s, \epsilon)`
            instead of the distances (mdistiller's ``squared=True``).
        mean_offset: added to the mean before dividing (KD_Lib uses 1e-7).

    Returns:
        The loss, float32 (float64 if an input is float64).
    """
    fn = "rkd_distance_loss"
    student, teacher, beta, eps, reduction = _loss_args(fn, student, teacher, beta, eps, reduction)
    mean_offset = _checks.non_negative(fn, "mean_offset", mean_offset)
    squared = _checks.flag(fn, "squared", squared)
    if student.shape[0] < 2:
        _warn_once(fn, _NO_PAIRS)
    if _ext.usable_for(student):
        return torch.ops.rkd_ext.rkd_distance_loss(student, teacher, beta, eps, reduction, squared, mean_offset)[0]
    dtype = ops.loss_dtype(student, teacher)
    if student.shape[0] < 2:
        return _no_relations(student, teacher, dtype, reduction, 2)
    return reference.distance_loss(student.to(dtype), teacher.to(dtype), beta, eps, reduction, squared, mean_offset)


def angle_tensor(x, *, eps=1e-12, normalize=True):
    r"""The (N, N, N) triplet-angle tensor :math:`A_{ijk} = \langle e_{ij}, e_{ik} \rangle`, vertex first.

    :math:`e_{ij} = (x_j - x_i) / \max(\|x_j - x_i\|, \epsilon)`; :math:`A_{iik} = A_{iji} = 0`,
    :math:`A_{ijj} = 1` for :math:`j \ne i`.

    Args:
        x: (N, D) features, or (N, ...) flattened to (N, -1).
        eps: clamp applied to the difference norms (as ``F.normalize``).
        normalize: with ``False``, dot products of the unnormalised difference vectors.

    Returns:
        (N, N, N) tensor in x's dtype. Computed from the float64 squared-distance
        matrix by the law of cosines: O(N^2 D + N^3) time, O(N^2) memory besides
        the output.
    """
    fn = "angle_tensor"
    x = _checks.features(fn, "x", x)
    eps = _checks.eps(fn, eps)
    normalize = _checks.flag(fn, "normalize", normalize)
    if _ext.usable_for(x):
        return torch.ops.rkd_ext.angle_tensor(x, eps, normalize)[0]
    return reference.angle_tensor(_fallback_input(x), eps, normalize).to(x.dtype)


def rkd_angle_loss(student, teacher, *, beta=1.0, eps=1e-12, reduction="mean", normalize=True):
    r"""Angle-wise RKD loss: smooth-L1 between the angle tensors of student and teacher, over all N^3 entries.

    Fused: the cosines come from the float64 squared-distance matrices by the
    law of cosines, :math:`A_{ijk} = (s_{ij} + s_{ik} - s_{jk}) / (2 r_{ij} r_{ik})`,
    so forward and backward take O(N^2 D + N^3) time and O(N^2 + N D) memory;
    nothing of size N^3 or N^2 D is allocated (except the output for
    ``reduction='none'``). Exactly coincident samples get a zero subgradient
    through their pair.

    Args:
        student: (N, D_s) student features, or (N, ...) flattened.
        teacher: (N, D_t) teacher features, or (N, ...) flattened.
        beta: smooth-L1 threshold.
        eps: clamp applied to the difference norms.
        reduction: ``'mean'`` over all N^3 entries (the reference), ``'sum'``,
            or ``'none'`` for the (N, N, N) elementwise loss.
        normalize: with ``False``, compare unnormalised dot products of the
            difference vectors instead of cosines (KD_Lib's ``normalize=False``).

    Returns:
        The loss, float32 (float64 if an input is float64); 0 with a one-time
        warning when N < 3 (no triplets).
    """
    fn = "rkd_angle_loss"
    student, teacher, beta, eps, reduction = _loss_args(fn, student, teacher, beta, eps, reduction)
    normalize = _checks.flag(fn, "normalize", normalize)
    if student.shape[0] < 3:
        _warn_once(fn, _NO_TRIPLETS)
    if _ext.usable_for(student):
        return torch.ops.rkd_ext.rkd_angle_loss(student, teacher, beta, eps, reduction, normalize)[0]
    dtype = ops.loss_dtype(student, teacher)
    n = student.shape[0]
    if n < 3:
        return _no_relations(student, teacher, dtype, reduction, 3)
    return reference.angle_loss(student.to(dtype), teacher.to(dtype), beta, eps, reduction, normalize)


def rkd_loss(student, teacher, *, distance_weight=25.0, angle_weight=50.0, beta=1.0, eps=1e-12, angle_eps=None,
             reduction="mean", squared=False, mean_offset=0.0, normalize=True):
    r"""Both RKD terms at once: ``distance_weight * rkd_distance_loss + angle_weight * rkd_angle_loss``.

    One fused operator computes both terms from one float64 squared-distance
    matrix per input (the one the angle term needs, which the distance term
    reads its distances from), and its backward sums the two terms' weights on
    the pairs before one gradient product per input: about the cost of the
    angle loss alone. The value is that of the two functions weighted and
    added, to rounding: the distance term gets the float64 products the angle
    term needs, a little more accurate than :func:`rkd_distance_loss`'s own in
    float32, and the sum is rounded once.

    Args:
        student: (N, D_s) student features, or (N, ...) flattened.
        teacher: (N, D_t) teacher features, or (N, ...) flattened.
        distance_weight: weight of the distance-wise term (the paper's 25); 0
            skips its computation.
        angle_weight: weight of the angle-wise term (the paper's 50); 0 skips
            its computation.
        beta: smooth-L1 threshold of both terms.
        eps: clamp applied to the squared distances of the distance term, and
            to the difference norms of the angle term unless ``angle_eps`` is given.
        angle_eps: clamp of the angle term's difference norms (default: ``eps``).
        reduction: ``'mean'`` (each term over all its entries, N^2 and N^3, as
            the reference) or ``'sum'``. ``'none'`` is refused: the terms'
            elementwise losses differ in shape; call the two functions for them.
        squared: the distance term normalises clamped squared distances
            (mdistiller's ``squared=True``).
        mean_offset: added to the distance term's mean before dividing (KD_Lib uses 1e-7).
        normalize: with ``False``, the angle term compares unnormalised dot
            products of the difference vectors (KD_Lib's ``normalize=False``).

    Returns:
        The loss, float32 (float64 if an input is float64). A term without
        relations (N = 1 for distances, N < 3 for angles) contributes 0, with
        the one-time warning of its function.
    """
    fn = "rkd_loss"
    student, teacher = _checks.pair(fn, student, teacher)
    eps = _checks.eps(fn, eps)
    return _rkd_loss(student, teacher, _checks.non_negative(fn, "distance_weight", distance_weight),
                     _checks.non_negative(fn, "angle_weight", angle_weight), _checks.beta(fn, beta), eps,
                     eps if angle_eps is None else _checks.eps(fn, angle_eps, "angle_eps"),
                     _checks.reduced(fn, reduction), _checks.flag(fn, "squared", squared),
                     _checks.non_negative(fn, "mean_offset", mean_offset), _checks.flag(fn, "normalize", normalize))


def _rkd_loss(student, teacher, distance_weight, angle_weight, beta, eps, angle_eps, reduction, squared, mean_offset,
              normalize):
    """rkd_loss on checked arguments: (N, D) inputs, scalars as floats and bools.

    The modules and compat wrappers check their scalars once, when they are
    built, and call this with their inputs checked.
    """
    n = student.shape[0]
    if distance_weight and n < 2:
        _warn_once("rkd_distance_loss", _NO_PAIRS)
    if angle_weight and n < 3:
        _warn_once("rkd_angle_loss", _NO_TRIPLETS)
    if _ext.usable_for(student):
        return torch.ops.rkd_ext.rkd_loss.default(student, teacher, distance_weight, angle_weight, beta, eps,
                                                  angle_eps, reduction, squared, mean_offset, normalize)[0]
    dtype = ops.loss_dtype(student, teacher)
    s, t = student.to(dtype), teacher.to(dtype)
    loss = _no_relations(student, teacher, dtype, reduction, 0)
    if distance_weight and n >= 2:
        loss = loss + distance_weight * reference.distance_loss(s, t, beta, eps, reduction, squared, mean_offset)
    if angle_weight and n >= 3:
        loss = loss + angle_weight * reference.angle_loss(s, t, beta, angle_eps, reduction, normalize)
    return loss
