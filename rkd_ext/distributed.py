r"""Relations over the global batch under data parallelism: gathered, or sharded by anchor.

Gathered (the modules' ``gather_distributed=True``): the features of all ranks
are gathered (the student's with an autograd-aware all_gather, the teacher's
without gradient) and every rank computes the whole loss of the global batch.
Sharded (``shard=True`` too): rank r computes only the relations whose first
index is one of its own samples, with the row operators of :mod:`rkd_ext._rows`,
and what those rows need of the others is communicated, never recomputed. In
both, every rank gets the same loss value and DistributedDataParallel's
averaging makes the update equal to the single-process update on the
concatenated batch; every rank must make the same calls, forward and backward.
Why the gradients are exact, what each mode communicates and costs, and
measurements: docs/distributed.md.
"""
import torch
import torch.distributed as dist

from . import _checks, _rows, ops
from . import functional as F

__all__ = ["world_size", "all_gather_with_grad", "all_gather_no_grad", "gather_student_teacher", "sharded_loss"]


def world_size(group=None):
    """Number of ranks in ``group``; 1 when torch.distributed is unavailable or not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


# Every collective of this module goes through these three. torch 2.13 renamed the single-tensor
# collectives (the old names warn); earlier versions have only the old names.
def _all_gather_single(out, x, group):
    getattr(dist, "all_gather_single", dist.all_gather_into_tensor)(out, x, group=group)


def _reduce_scatter_single(out, x, group):
    getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)(out, x, group=group)


def _all_reduce(x, group):
    dist.all_reduce(x, group=group)


def _all_gather_table(row, device, group):
    """The (world size, len(row)) table of every rank's list of ints ``row``."""
    mine = torch.tensor(row, dtype=torch.long, device=device)
    table = mine.new_empty(world_size(group) * len(row))
    _all_gather_single(table, mine, group)
    return table.view(-1, len(row)).tolist()


def _all_gather_rows(x, sizes, group):
    """Concatenate x (this rank's sizes[rank] rows) of every rank along dim 0, outside autograd."""
    longest = max(sizes)
    x = x.detach().contiguous()
    # all_gather needs equal shapes: pad every shard to the longest one.
    padded = x if x.shape[0] == longest else torch.cat([x, x.new_zeros((longest - x.shape[0],) + x.shape[1:])])
    out = x.new_empty((len(sizes) * longest,) + x.shape[1:])
    _all_gather_single(out, padded, group)
    if min(sizes) == longest:
        return out
    return torch.cat([out[r * longest:r * longest + size] for r, size in enumerate(sizes)])


@torch.compiler.disable
def _gather(x, group):
    sizes = [row[0] for row in _all_gather_table([x.shape[0]], x.device, group)]
    return _all_gather_rows(x, sizes, group), sizes


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        gathered, sizes = _gather(x, group)
        ctx.group = group
        ctx.sizes = sizes
        ctx.rank = dist.get_rank(group)
        return gathered

    @staticmethod
    def backward(ctx, grad):
        # Each rank's copy of the loss depends on every shard: sum the copies'
        # gradients, then keep this rank's slice.
        grad = grad.contiguous().clone()
        _all_reduce(grad, ctx.group)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None


@torch.compiler.disable
def _apply_all_gather(x, group):
    return _AllGather.apply(x, group)


def all_gather_with_grad(x, group=None):
    """Concatenate ``x`` of every rank along dim 0, differentiably (see the module docstring).

    Args:
        x: (N_r, ...) tensor on this rank; trailing dims must match across ranks.
        group: process group (default: the world).

    Returns:
        (sum of N_r, ...) tensor, shards in rank order; ``x`` itself when there is one rank.
    """
    if world_size(group) == 1:
        return x
    return _apply_all_gather(x, group)


def all_gather_no_grad(x, group=None):
    """Concatenate ``x`` of every rank along dim 0, outside autograd (for the teacher)."""
    if world_size(group) == 1:
        return x.detach()
    with torch.no_grad():
        return _gather(x.detach(), group)[0]


def gather_student_teacher(student, teacher, group=None):
    """The global-batch (student, teacher): the student gathered with gradient, the teacher without."""
    if not isinstance(student, torch.Tensor) or not isinstance(teacher, torch.Tensor):
        raise TypeError(f"gather_student_teacher: student and teacher must be torch.Tensors, "
                        f"got {type(student).__name__} and {type(teacher).__name__}")
    if student.dim() == 0 or teacher.dim() == 0 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"gather_student_teacher: student and teacher must have the same batch size, "
                         f"got shapes {tuple(student.shape)} and {tuple(teacher.shape)}")
    return all_gather_with_grad(student, group), all_gather_no_grad(teacher, group)


# ---- the sharded mode -------------------------------------------------------------------


class _Shard:
    """Where this rank's rows lie in the global batch: sizes[r] rows of rank r, in rank order."""

    def __init__(self, sizes, rank, group):
        self.sizes, self.rank, self.group = sizes, rank, group
        self.total = sum(sizes)
        self.begin = sum(sizes[:rank])
        self.end = self.begin + sizes[rank]


def _shard_layout(fn, student, teacher, group):
    """Check this rank's inputs, and share the outcome with every rank in one collective.

    Returns the inputs as (n, D) tensors, the _Shard, and which sides (student,
    teacher) some rank differentiates. An error on any rank is an error on
    every rank: the rank with bad input raises its own, the others say which
    rank it was, and no rank is left waiting in a collective.
    """
    if not isinstance(student, torch.Tensor) or not isinstance(teacher, torch.Tensor):
        raise TypeError(f"{fn}: student and teacher must be torch.Tensors, "
                        f"got {type(student).__name__} and {type(teacher).__name__}")
    try:
        s, t = _checks.pair(fn, student, teacher)
        error = None
    except (TypeError, ValueError) as exc:
        s, t, error = student, teacher, exc
    grad = torch.is_grad_enabled()
    row = [s.shape[0] if s.dim() else 0, error is None, grad and s.requires_grad, grad and t.requires_grad]
    table = _all_gather_table(row, s.device, group)
    if error is not None:
        raise error
    refused = [r for r, (_, ok, _, _) in enumerate(table) if not ok]
    if refused:
        raise ValueError(f"{fn}: the inputs of rank {', '.join(map(str, refused))} were refused (that rank's "
                         "error says why); every rank must pass valid features")
    differentiated = [bool(rs or rt) for _, _, rs, rt in table]
    if any(differentiated) and not all(differentiated):
        yes = [str(r) for r, d in enumerate(differentiated) if d]
        no = [str(r) for r, d in enumerate(differentiated) if not d]
        raise RuntimeError(f"{fn}: in the sharded mode the loss must be differentiable on every rank or on none "
                           "(each rank's backward takes part in collectives with the others'), but inputs require "
                           f"grad on rank {', '.join(yes)} and not on rank {', '.join(no)}")
    sides = (any(r[2] for r in table), any(r[3] for r in table))
    return s, t, _Shard([r[0] for r in table], dist.get_rank(group), group), sides


class _AllReduceSum(torch.autograd.Function):
    """The sum over ranks; its adjoint sums the gradients over ranks."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone()
        _all_reduce(x, group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        _all_reduce(grad, ctx.group)
        return grad, None


def _reduce_scatter_rows(m, shard):
    """This rank's rows of the sum over ranks of m (N, ...)."""
    longest = max(shard.sizes)
    if min(shard.sizes) == longest:
        blocks = m.contiguous()
    else:
        blocks = m.new_zeros((len(shard.sizes) * longest,) + m.shape[1:])
        begin = 0
        for r, size in enumerate(shard.sizes):
            blocks[r * longest:r * longest + size] = m[begin:begin + size]
            begin += size
    out = m.new_empty((longest,) + m.shape[1:])
    _reduce_scatter_single(out, blocks, shard.group)
    return out[:shard.end - shard.begin]


class _PairRows(torch.autograd.Function):
    """This rank's rows of a pair matrix of the global batch ``full``, differentiable in its own rows ``x``.

    The backward returns the gradient of a loss that is symmetric in the pairs
    (i, j) and (j, i): each rank accounts for the pairs whose other half a
    different rank holds (see _rows.pair_matrix_rows_backward).
    """

    @staticmethod
    def forward(ctx, x, full, shard, kind, eps):
        values = _rows.pair_matrix_rows(full, shard.begin, shard.end, kind, eps)
        ctx.save_for_backward(full, values)
        ctx.args = (shard.begin, kind, eps)
        return values

    @staticmethod
    def backward(ctx, grad):
        full, values = ctx.saved_tensors
        return _rows.pair_matrix_rows_backward(grad.contiguous(), full, values, *ctx.args), None, None, None, None


class _DistanceRows(torch.autograd.Function):
    """The plain sum over this rank's rows of smooth_l1(d_s / mu_s - d_t / mu_t), mu = (mu_s, mu_t).

    Its backward written out: autograd would keep four more (n, N) matrices for it.
    """

    @staticmethod
    def forward(ctx, d_s, d_t, mu, beta):
        ctx.save_for_backward(d_s, d_t, mu)
        ctx.beta = beta
        return torch.nn.functional.smooth_l1_loss(d_s / mu[0], d_t / mu[1], reduction="sum", beta=beta)

    @staticmethod
    def backward(ctx, grad):
        d_s, d_t, mu = ctx.saved_tensors
        inv = 1.0 / mu
        # g = dL/dpsi_s = -dL/dpsi_t for psi = d / mu, and dpsi/dmu = -psi / mu.
        g = _rows.smooth_l1_grad_((d_s * inv[0]).addcmul_(d_t, -inv[1]), ctx.beta).mul_(grad)
        flat = g.view(-1)
        grad_mu = torch.stack([-(flat @ d_s.view(-1)) * inv[0] ** 2, (flat @ d_t.view(-1)) * inv[1] ** 2])
        grad_s = g * inv[0] if ctx.needs_input_grad[0] else None
        grad_t = g.mul_(-inv[1]) if ctx.needs_input_grad[1] else None
        return grad_s, grad_t, grad_mu, None


def _symmetric(m):
    # Rows computed by different ranks agree on s_ij = s_ji only to rounding; the law of cosines needs them
    # equal (A_iji = 0 exactly): every rank takes each pair from the upper triangle.
    upper = torch.ones(m.shape, dtype=torch.bool, device=m.device).triu_()
    return torch.where(upper, m, m.T)


def _gathered_sq(full, shard, eps):
    """The (N, N) squared distances of the global batch, from every rank's rows of them."""
    rows = _rows.pair_matrix_rows(full, shard.begin, shard.end, "sq", eps)
    return _symmetric(_all_gather_rows(rows, shard.sizes, shard.group))


def _angle_weight_rows(sq_a, sq_b, coef, shard, args):
    """This rank's rows of side a's weight matrix W = V + V^T - R / 2, summed over the ranks' shares."""
    b, e = shard.begin, shard.end
    V, R = _rows.angle_grad_rows(sq_a, sq_b, coef, b, e, *args)
    share = R.mul_(-0.5)
    share[b:e] += V
    share[:, b:e] += V.T
    return _reduce_scatter_rows(share, shard)


class _AngleRows(torch.autograd.Function):
    """The plain sum of the angle loss over the triplets whose vertex is one of this rank's rows.

    Forward: this rank's rows of s for each side, all-gathered into the full
    (N, N) matrices. Backward: for each side some rank differentiates, every
    rank computes its share of W = V + V^T - R / 2; a reduce-scatter sums the
    shares and hands each rank its rows, from which its features' gradient is
    one product (see _rows.angle_grad_rows).
    """

    @staticmethod
    def forward(ctx, student, teacher, s_full, t_full, shard, sides, beta, eps, normalize, wide):
        sq_s, sq_t = _gathered_sq(s_full, shard, eps), _gathered_sq(t_full, shard, eps)
        ctx.save_for_backward(s_full, t_full, sq_s, sq_t)
        ctx.shard, ctx.sides, ctx.args = shard, sides, (beta, eps, normalize, wide)
        return _rows.angle_loss_rows(sq_s, sq_t, shard.begin, shard.end, beta, eps, normalize, wide)

    @staticmethod
    def backward(ctx, grad):
        s_full, t_full, sq_s, sq_t = ctx.saved_tensors
        coef = grad.to(torch.float64).contiguous()
        grads = [None, None]
        for k, (x, sq_a, sq_b) in enumerate(((s_full, sq_s, sq_t), (t_full, sq_t, sq_s))):
            if ctx.sides[k]:
                weights = _angle_weight_rows(sq_a, sq_b, coef, ctx.shard, ctx.args)
                if ctx.needs_input_grad[k]:
                    grads[k] = _rows.grad_rows(x, weights, ctx.shard.begin)
        return (*grads,) + (None,) * 8


def sharded_loss(student, teacher, *, distance_weight, angle_weight, beta=1.0, eps=1e-12, reduction="mean",
                 group=None):
    r"""The weighted distance and angle losses of the global batch, sharded by anchor.

    :math:`L` = ``distance_weight`` x the distance loss + ``angle_weight`` x
    the angle loss, over the concatenation of every rank's batch: what the
    modules' ``shard=True`` computes with more than one rank (see the module
    docstring). It returns the same value on every rank, and, for this rank's
    rows, the gradients :math:`W\,\partial L / \partial S_r` and, when the
    teacher requires grad, :math:`W\,\partial L / \partial T_r` (W ranks),
    which DDP's averaging turns into the single-process gradients. Every rank
    of ``group`` must call it, with the same arguments except the features.

    Args:
        student: (n_r, D_s) this rank's student features, or (n_r, ...) flattened.
        teacher: (n_r, D_t) this rank's teacher features, or (n_r, ...) flattened.
        distance_weight, angle_weight: the terms' weights (finite, >= 0; 0 skips a term).
        beta, eps: as in :func:`rkd_ext.rkd_distance_loss` and :func:`rkd_ext.rkd_angle_loss`.
        reduction: 'mean' (over all N^2 and N^3 entries of the global batch) or 'sum'.
        group: process group (default: the world).

    Returns:
        The loss, float32 (float64 if an input is float64).
    """
    fn = "sharded_loss"
    distance_weight = _checks.non_negative(fn, "distance_weight", distance_weight)
    angle_weight = _checks.non_negative(fn, "angle_weight", angle_weight)
    return _sharded_loss(fn, student, teacher, distance_weight, angle_weight, _checks.beta(fn, beta),
                         _checks.eps(fn, eps), _shardable_reduction(fn, reduction), group)


def _shardable_reduction(fn, reduction):
    """``reduction`` if the sharded mode can compute it: 'mean' or 'sum'."""
    if _checks.reduction(fn, reduction) == "none":
        raise ValueError(f"{fn}: the sharded mode computes reduction 'mean' or 'sum' only (the elementwise loss "
                         "of the global batch is not split across ranks; use gather_distributed=True without "
                         "shard for it), got 'none'")
    return reduction


@torch.compiler.disable
def _sharded_loss(fn, student, teacher, distance_weight, angle_weight, beta, eps, reduction, group):
    s, t, shard, sides = _shard_layout(fn, student, teacher, group)
    N = shard.total
    dtype = ops.loss_dtype(s, t)
    mean = reduction == "mean"
    s_full = _all_gather_rows(s, shard.sizes, group)
    t_full = _all_gather_rows(t, shard.sizes, group)
    local = []
    if distance_weight != 0:
        if N < 2:
            F._warn_once("rkd_distance_loss", F._NO_PAIRS)
        else:
            d_s = _PairRows.apply(s, s_full, shard, "dist", eps)
            d_t = _PairRows.apply(t, t_full, shard, "dist", eps)
            mu = _AllReduceSum.apply(torch.stack([d_s.sum(), d_t.sum()]), group) / (N * (N - 1))
            term = _DistanceRows.apply(d_s, d_t, mu, beta)
            local.append(distance_weight / (N * N if mean else 1) * term)
    if angle_weight != 0:
        if N < 3:
            F._warn_once("rkd_angle_loss", F._NO_TRIPLETS)
        else:
            wide = dtype == torch.float64
            term = _AngleRows.apply(s, t, s_full, t_full, shard, sides, beta, eps, True, wide)
            local.append(angle_weight / (N ** 3 if mean else 1) * term)
    if not local:
        return (s.sum() * 0 + t.sum() * 0).to(dtype)
    return _AllReduceSum.apply(sum(local), group).to(dtype)
