r"""Relations over the global batch under data parallelism.

RKD compares relations among the samples of a batch; with data parallelism
each rank only sees its own shard, so the relations it can form are those
within the shard. Gathering the features of all ranks first makes every rank
compute the loss over the global batch.

The gather of the student is autograd-aware: every rank holds the same global
loss :math:`L(S_1, \dots, S_W)`, and the backward of the gather sums the
gradients that the W copies send to each shard, so rank r receives
:math:`\sum_{r'} \partial L_{r'} / \partial S_r = W \, \partial L / \partial S_r`.
DistributedDataParallel then averages parameter gradients over the W ranks,
which makes the update equal to the single-process update on the concatenated
batch. The teacher is gathered without gradient.

Ranks may hold different batch sizes (the last batch of an epoch); the
features are concatenated in rank order. Every rank of the group must make the
same calls, forward and backward, as with any collective.

Under torch.compile the gather runs eagerly, as a graph break: the shard sizes
are only known at run time. ``fullgraph=True`` therefore works with
``gather_distributed=True`` only without an initialised multi-rank process
group (where the gather is the identity).
"""
import torch
import torch.distributed as dist

__all__ = ["world_size", "all_gather_with_grad", "all_gather_no_grad", "gather_student_teacher"]


def world_size(group=None):
    """Number of ranks in ``group``; 1 when torch.distributed is unavailable or not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


@torch.compiler.disable
def _gather(x, group):
    x = x.contiguous()
    n = world_size(group)
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(n)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device), group=group)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    # all_gather needs equal shapes: pad every shard to the longest one.
    padded = x if x.shape[0] == longest else torch.cat([x, x.new_zeros((longest - x.shape[0],) + x.shape[1:])])
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:size] for p, size in zip(parts, sizes)]), sizes


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
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
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
