r"""Fake kernels, autograd and autocast for the torch.ops.rkd_ext operators.

The schemas and the real kernels are registered by the compiled extension
(csrc/ops.cpp and the per-backend files). This module adds what torch needs on
top, so that the operators work under autograd, torch.func, torch.compile,
torch.export, opcheck and autocast:

* a fake (meta) kernel per operator: output shapes and dtypes only;
* autograd for each forward operator, whose backward calls the matching
  registered ``*_backward`` operator; it also serves torch.func's reverse-mode
  transforms (grad, vjp, jacrev, and vmap over them);
* for the ``*_backward`` operators, an autograd formula that raises a clear
  error: double backward is not supported;
* forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad) raises a
  clear error instead of dropping the tangent;
* autocast (CPU and CUDA): inputs in float16/bfloat16 are cast to float32, so
  the operators always compute and return in float32 or wider.

Forward operators also return the float64 matrices their backward needs, so
that it never recomputes the O(N^2 D) part: the distance ops the clamped
distances ``dist64`` (:math:`\sqrt{\max(s, \epsilon)}`, zero diagonal), the angle
ops the squared distances ``sq`` (the law of cosines needs :math:`s` itself).
The autograd context keeps them for the backward operator. ``rkd_loss``, both
terms at once, returns the squared distances ``sq`` of each input: the one
matrix per input that both of its terms are computed from. The losses with a
distance term (``rkd_distance_loss``, ``rkd_loss``) also return ``stats``, four
float64 values: the inverse means of both sides and, for a scalar loss, each
side's gradient term through the mean per unit upstream gradient, so that
their backward runs no reduction.
"""
import torch
from . import _ext, _torch_private as private

__all__ = ["OPS", "SHARD_OPS", "loss_dtype"]

# Forward operators with a backward; every one of them is also autocast to float32.
OPS = ("pairwise_distance", "normalized_distance", "rkd_distance_loss", "angle_tensor", "rkd_angle_loss", "rkd_loss")


def loss_dtype(a, b):
    """dtype of a loss: float64 if either input is float64, float32 otherwise."""
    return torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32


def _square(x, dtype):
    n = x.shape[0]
    return x.new_empty((n, n), dtype=dtype)


def _check_pair_fake(student, teacher):
    torch._check(student.dim() == 2 and teacher.dim() == 2,
                 lambda: "rkd_ext: student and teacher must be 2-D (N, D) tensors")
    torch._check(student.shape[0] == teacher.shape[0],
                 lambda: "rkd_ext: student and teacher must have the same batch size")


def _loss_backward_fake(grad, student, teacher, *args):
    """The fake kernel of every loss backward operator, whose arguments end with (student_grad, teacher_grad)."""
    _check_pair_fake(student, teacher)

    def out(x, wanted):
        return torch.empty_like(x, memory_format=torch.contiguous_format) if wanted else x.new_empty((0,))

    return out(student, args[-2]), out(teacher, args[-1])


# The statistics a loss with a distance term keeps for its backward (csrc/core/distance_op.h's kLossStats).
LOSS_STATS = 4


def _loss_stats(x):
    return x.new_empty((LOSS_STATS,), dtype=torch.float64)


def _register_fakes():
    lib = "rkd_ext::"

    @torch.library.register_fake(lib + "pairwise_distance")
    def _(x, eps):
        torch._check(x.dim() == 2, lambda: "pairwise_distance: x must be a 2-D (N, D) tensor")
        return _square(x, x.dtype), _square(x, torch.float64)

    @torch.library.register_fake(lib + "normalized_distance")
    def _(x, eps):
        torch._check(x.dim() == 2, lambda: "normalized_distance: x must be a 2-D (N, D) tensor")
        return _square(x, x.dtype), _square(x, torch.float64)

    @torch.library.register_fake(lib + "pairwise_distance_backward")
    def _(grad, x, dist64, eps):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "normalized_distance_backward")
    def _(grad, x, dist64, eps):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "rkd_distance_loss")
    def _(student, teacher, beta, eps, reduction, squared, mean_offset):
        _check_pair_fake(student, teacher)
        dtype = loss_dtype(student, teacher)
        loss = _square(student, dtype) if reduction == "none" else student.new_empty((), dtype=dtype)
        return loss, _square(student, torch.float64), _square(teacher, torch.float64), _loss_stats(student)

    torch.library.register_fake(lib + "rkd_distance_loss_backward")(_loss_backward_fake)


def _register_angle_fakes():
    lib = "rkd_ext::"

    @torch.library.register_fake(lib + "angle_tensor")
    def _(x, eps, normalize):
        torch._check(x.dim() == 2, lambda: "angle_tensor: x must be a 2-D (N, D) tensor")
        n = x.shape[0]
        return x.new_empty((n, n, n)), _square(x, torch.float64)

    @torch.library.register_fake(lib + "angle_tensor_backward")
    def _(grad, x, sq, eps, normalize):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "rkd_angle_loss")
    def _(student, teacher, beta, eps, reduction, normalize):
        _check_pair_fake(student, teacher)
        dtype = loss_dtype(student, teacher)
        n = student.shape[0]
        loss = student.new_empty((n, n, n), dtype=dtype) if reduction == "none" else student.new_empty((), dtype=dtype)
        return loss, _square(student, torch.float64), _square(teacher, torch.float64)

    torch.library.register_fake(lib + "rkd_angle_loss_backward")(_loss_backward_fake)


def _register_rkd_loss_fakes():
    lib = "rkd_ext::"

    @torch.library.register_fake(lib + "rkd_loss")
    def _(student, teacher, distance_weight, angle_weight, beta, eps, angle_eps, reduction, squared, mean_offset,
          normalize):
        _check_pair_fake(student, teacher)
        torch._check(reduction != "none", lambda: "rkd_loss: reduction must be 'mean' or 'sum', got 'none'")
        loss = student.new_empty((), dtype=loss_dtype(student, teacher))
        return loss, _square(student, torch.float64), _square(teacher, torch.float64), _loss_stats(student)

    torch.library.register_fake(lib + "rkd_loss_backward")(_loss_backward_fake)


# The row-range operators of the sharded mode (rkd_ext/_rows.py), in extensions that have them. They run
# inside the autograd Functions of rkd_ext.distributed, so they need no autograd of their own.
SHARD_OPS = ("pair_matrix_rows", "pair_matrix_rows_backward", "grad_rows", "angle_loss_rows", "angle_grad_rows")


def _defined(name):
    """Whether the loaded extension defines the operator ``rkd_ext::name``."""
    return private.schema_exists(f"rkd_ext::{name}")


def _register_shard_fakes():
    lib = "rkd_ext::"
    fakes = {}

    def fake(name):
        def record(fn):
            fakes[name] = fn
            return fn

        return record

    def rows(begin, end, N):
        torch._check(0 <= begin and begin <= end and end <= N, lambda: f"rows [{begin}, {end}) of a batch of {N}")
        return end - begin

    @fake("pair_matrix_rows")
    def _(x, begin, end, kind, eps):
        return x.new_empty((rows(begin, end, x.shape[0]), x.shape[0]), dtype=torch.float64)

    @fake("pair_matrix_rows_backward")
    def _(grad, x, values, begin, kind, eps):
        return x.new_empty((rows(begin, begin + values.shape[0], x.shape[0]), x.shape[1]))

    @fake("grad_rows")
    def _(x, W, begin):
        return x.new_empty((rows(begin, begin + W.shape[0], x.shape[0]), x.shape[1]))

    @fake("angle_loss_rows")
    def _(sq_s, sq_t, begin, end, beta, eps, normalize, wide):
        rows(begin, end, sq_s.shape[0])
        return sq_s.new_empty(())

    @fake("angle_grad_rows")
    def _(sq_a, sq_b, coef, begin, end, beta, eps, normalize, wide):
        N = sq_a.shape[0]
        return sq_a.new_empty((rows(begin, end, N), N)), sq_a.new_empty((N, N))

    for name, fn in fakes.items():
        if _defined(name):
            torch.library.register_fake(lib + name)(fn)


_LIB = torch.library.Library("rkd_ext", "IMPL")

_NO_FORWARD_AD = (
    "rkd_ext: forward-mode AD (torch.func.jvp, torch.func.jacfwd, torch.autograd.forward_ad) through {op} is "
    "not supported: the operators only have a backward formula. Use reverse mode (loss.backward(), "
    "torch.autograd.grad, torch.func.grad, torch.func.vjp, torch.func.jacrev), or rkd_ext.reference for "
    "forward-mode derivatives")


def value_errors(name, op):
    """op, raising ValueError for a bad argument on every torch.

    The kernels report a bad argument as std::invalid_argument with a message
    that starts with the operator's name (csrc/torch_stable.h). Up to torch 2.14
    that arrives as a ValueError; torch 2.15 turns every exception thrown by a
    stable-ABI kernel into a RuntimeError with the same message, which is put
    back here.
    """
    prefix = name + ": "

    def call(*args):
        try:
            return op(*args)
        except RuntimeError as exc:
            if type(exc) is RuntimeError and str(exc).startswith(prefix):
                raise ValueError(str(exc)) from None
            raise

    return call


def _register_autograd_formula(name, backward, setup_context):
    """Autograd for ``rkd_ext::name``: its Autograd kernel applies an autograd.Function.

    Not torch.library.register_autograd: the Function it generates has no
    ``setup_context``, which torch.func's transforms require
    (pytorch/pytorch#170834), and it skips autograd unless an input requires
    grad, which drops a forward-mode tangent silently. Like a C++ autograd
    kernel, this kernel is reached once per torch.func level, so it records
    the op at that level only: a single-level Function, as torch.func itself
    generates for an autograd.Function. Its ``jvp`` says forward mode is
    unsupported.
    """
    op = value_errors(name, getattr(torch.ops.rkd_ext, name).default)

    def forward(*args):
        # The Function runs forward with gradients off; turned back on, the
        # levels of enclosing torch.func transforms record the op too (as
        # torch.func does for its own autograd.Function support).
        with torch.enable_grad(), private.set_fwd_grad_enabled(True), private.below_autograd():
            return op(*args)

    def jvp(ctx, *tangents):
        raise RuntimeError(_NO_FORWARD_AD.format(op=name))

    function = type(name, (private.SingleLevelFunction,), {
        "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
        "jvp": staticmethod(jvp),
        # What compiled autograd identifies a Function's backward by.
        "_compiled_autograd_key": staticmethod(private.compiled_autograd_key),
    })

    def kernel(*args):
        with private.enable_single_level_autograd_function():
            return function.apply(*args)

    _LIB.impl(name, kernel, "Autograd")


def _call_backward(op, *args):
    """``op(*args)`` for a ``*_backward`` operator, from an autograd formula.

    Its autograd kernel only refuses double backward. In a plain backward
    (no create_graph) gradients are off and there is nothing to refuse, so the
    call skips that kernel: a Function application less per backward, which
    at small N is a good part of the call's cost.
    """
    if torch.is_grad_enabled():
        return op(*args)
    with private.below_autograd():
        return op(*args)


def _no_double_backward(op_name):
    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(
            f"rkd_ext: double backward through {op_name} is not supported (a gradient of the gradient of an "
            "RKD loss was requested, e.g. by torch.autograd.grad(..., create_graph=True) followed by another "
            "backward). rkd_ext.reference differentiates twice, but its angle loss's second derivative is NaN "
            "(the unit vector from a sample to itself is 0/0)")

    _register_autograd_formula(f"{op_name}_backward", backward, setup_context)


def _register_autograd():
    ops = torch.ops.rkd_ext

    # The float64 matrices a forward op returns are only kept for its backward;
    # without materialised gradients, autograd passes None for them instead of
    # allocating N x N zeros on every backward.
    def matrix_setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        x, eps = inputs
        ctx.save_for_backward(x, output[1])
        ctx.eps = eps

    def pairwise_backward(ctx, grad, _grad_d):
        if grad is None:
            return None, None
        x, d64 = ctx.saved_tensors
        return _call_backward(ops.pairwise_distance_backward, grad, x, d64, ctx.eps), None

    def normalized_backward(ctx, grad, _grad_d):
        if grad is None:
            return None, None
        x, d64 = ctx.saved_tensors
        return _call_backward(ops.normalized_distance_backward, grad, x, d64, ctx.eps), None

    def loss_setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        student, teacher, *args = inputs
        ctx.save_for_backward(student, teacher, *output[1:])
        ctx.args = tuple(args)

    # A loss op's backward: what its forward saved (every output after the loss) gets no gradient.
    def loss_backward_of(backward_op, n_inputs):
        def backward(ctx, grad, *_grads_of_saved):
            if grad is None:
                return (None,) * n_inputs
            student, teacher, *saved = ctx.saved_tensors
            want_s, want_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            gs, gt = _call_backward(backward_op, grad, student, teacher, *saved, *ctx.args, want_s, want_t)
            return ((gs if want_s else None), (gt if want_t else None)) + (None,) * (n_inputs - 2)

        return backward

    loss_backward = loss_backward_of(ops.rkd_distance_loss_backward, 7)

    _register_autograd_formula("pairwise_distance", pairwise_backward, matrix_setup)
    _register_autograd_formula("normalized_distance", normalized_backward, matrix_setup)
    _register_autograd_formula("rkd_distance_loss", loss_backward, loss_setup)

    def angle_setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        x, eps, normalize = inputs
        ctx.save_for_backward(x, output[1])
        ctx.args = (eps, normalize)

    def angle_backward(ctx, grad, _grad_sq):
        if grad is None:
            return None, None, None
        x, sq = ctx.saved_tensors
        return _call_backward(ops.angle_tensor_backward, grad, x, sq, *ctx.args), None, None

    angle_loss_backward = loss_backward_of(ops.rkd_angle_loss_backward, 6)

    _register_autograd_formula("angle_tensor", angle_backward, angle_setup)
    _register_autograd_formula("rkd_angle_loss", angle_loss_backward, loss_setup)
    _register_autograd_formula("rkd_loss", loss_backward_of(ops.rkd_loss_backward, 11), loss_setup)
    for name in OPS:
        _no_double_backward(name)


def _register_autocast():
    if not hasattr(torch.library, "register_autocast"):  # torch < 2.5: autocast leaves the op alone
        return
    for name in OPS:
        for device in ("cpu", "cuda"):
            torch.library.register_autocast(f"rkd_ext::{name}", device, torch.float32)


if _ext.available:
    _register_fakes()
    _register_angle_fakes()
    _register_rkd_loss_fakes()
    _register_shard_fakes()
    _register_autograd()
    _register_autocast()
