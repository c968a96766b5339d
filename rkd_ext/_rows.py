r"""Row-range RKD operators: the pieces of a loss over a global batch that one rank computes.

The sharded mode of :mod:`rkd_ext.distributed` splits the work of the global
batch by anchor: rank r computes the terms whose first index is one of its
rows ``[begin, end)``. These five operators are that work. Each calls the
compiled ``torch.ops.rkd_ext`` kernel of the same name when the loaded
extension has one for the tensor's device, and the pure-PyTorch version below
otherwise; the pure-PyTorch versions are also the oracle the kernels are
tested against.

Conventions: every tensor is contiguous; ``x`` is the (N, D) feature batch of
all ranks, rows ``[begin, end)`` are this rank's, n = end - begin; pair and
weight matrices are float64. :math:`s_{ij} = \|x_i - x_j\|^2`, computed in
float64 on the batch-centred features :math:`\bar x = x - \operatorname{mean}(x)`
(the mean over all N rows) as the kernels do: the Gram form, with pairs too
close for it recomputed from direct differences.

* ``pair_matrix_rows(x, begin, end, kind, eps) -> (n, N)``: ``out[i - begin, j]``
  is :math:`s_{ij}` (``kind='sq'``), :math:`\max(s_{ij}, \epsilon)`
  (``'sq_clamped'``) or :math:`\sqrt{\max(s_{ij}, \epsilon)}` (``'dist'``) for
  j != i, and exactly 0 at j == i.
* ``pair_matrix_rows_backward(grad, x, values, begin, kind, eps) -> (n, D)``:
  the gradient for the rows ``[begin, begin + n)`` of a loss that is a
  symmetric function of the full pair matrix, from ``grad`` = dL/d(values) of
  this block of rows only. With :math:`W_{ij} = 2 g_{ij}\, dv/ds_{ij}` (the 2
  stands for the pair (j, i), which another rank holds; dv/ds is
  :math:`1/(2v)` for 'dist' where :math:`v > \sqrt\epsilon`, 1 for
  'sq_clamped' where :math:`v > \epsilon`, 1 for 'sq', 0 elsewhere) it is
  ``grad_rows(x, W, begin)``.
* ``grad_rows(x, W, begin) -> (n, D)``: :math:`dx_i = 2 (w_i \bar x_i - \sum_j W_{ij} \bar x_j)`,
  :math:`w_i = \sum_j W_{ij}`, for i in ``[begin, begin + n)``; W is (n, N),
  its entries at j == i are ignored.
* ``angle_loss_rows(sq_s, sq_t, begin, end, beta, eps, normalize, wide) -> ()``:
  the plain sum over i in ``[begin, end)`` and all j, k of
  :math:`\ell_\beta(A^s_{ijk} - A^t_{ijk})`, with the cosines at vertex i from
  the law of cosines, :math:`A_{ijk} = \tfrac12 (s_{ij} + s_{ik} - s_{jk}) u_{ij} u_{ik}`,
  :math:`u = 1 / \max(\sqrt s, \epsilon)` (u = 1 when ``normalize=False``).
  ``sq_s``, ``sq_t``: the full (N, N) squared distances, symmetric with a zero
  diagonal; :math:`A_{iik} = A_{iji} = 0`. ``wide``: the
  type of the triplet arithmetic of the CUDA kernel (float64, or float32);
  the CPU kernel and the pure-PyTorch version always use float64.
* ``angle_grad_rows(sq_a, sq_b, coef, begin, end, beta, eps, normalize, wide) -> (V, R)``:
  side a's share of the angle loss gradient from the vertices in
  ``[begin, end)``, with :math:`G_{ijk} = c\, \ell_\beta'(A^a_{ijk} - A^b_{ijk})`
  (``coef`` c a float64 0-d tensor, the upstream gradient of the plain sum),
  :math:`G^s_{ijk} = G_{ijk} + G_{ikj}`, w = u where the clamp is inactive
  (:math:`s \ge \epsilon^2`) and 0 where it holds (w = 1 unnormalised),
  :math:`\kappa` = 1 (0 unnormalised):
  :math:`V_{i j} = \tfrac12 w_{ij} \sum_k G^s_{ijk} w_{ik} - \tfrac12 \kappa w_{ij}^2 \sum_k G^s_{ijk} A_{ijk}`
  ((n, N), 0 at j == i), the derivative through the edges at vertex i, and
  :math:`R_{jk} = \sum_i G^s_{ijk} w_{ij} w_{ik}` ((N, N), symmetric), the
  opposite edges. Summed over all ranks, :math:`W = V + V^\top - \tfrac12 R`
  is the weight matrix of the gradient, :math:`dL/dx_i` = ``grad_rows`` of
  its rows.
"""
import functools
import math

import torch
import torch.nn.functional as F

from . import _ext, _torch_private as private

__all__ = ["FALLBACK", "KINDS", "kernel", "pair_matrix_rows", "pair_matrix_rows_backward", "grad_rows",
           "angle_loss_rows", "angle_grad_rows", "smooth_l1_grad_"]

KINDS = ("sq", "sq_clamped", "dist")

# A Gram-form pair s = n_i + n_j - 2 <xc_i, xc_j> is kept when s >= NEAR (n_i + n_j) and recomputed from
# direct differences otherwise, as kNear in csrc/rkd_math.h: the kept pairs are accurate to ~1e-14.
_NEAR = 1e-2
# Elements of one (vertices, N, N) block of triplets in the pure-PyTorch angle operators: the block's
# temporaries stay within a few hundred MB whatever N.
_TRIPLET_BLOCK = 1 << 22


@functools.lru_cache(maxsize=None)
def _kernel(name, device_type):
    if not _ext.available or device_type not in ("cpu", "cuda"):
        return None
    key = "CUDA" if device_type == "cuda" else "CPU"
    try:
        if private.has_kernel_for(f"rkd_ext::{name}", key):
            return getattr(torch.ops.rkd_ext, name).default
    except RuntimeError:  # an extension built before the operator existed
        pass
    return None


def kernel(name, x):
    """The compiled operator ``torch.ops.rkd_ext.<name>`` for x's device, or None when the extension has none."""
    return _kernel(name, x.device.type) if _ext.usable_for(x) else None


def _centred(x):
    x = x.double()
    return x - x.mean(0)


def _diagonal(n, begin, device):
    """(rows, columns) of the entries j == i of a block of rows [begin, begin + n)."""
    rows = torch.arange(n, device=device)
    return rows, rows + begin


def _pair_matrix_rows(x, begin, end, kind, eps):
    xc = _centred(x)
    norms = (xc * xc).sum(1)
    mine = xc[begin:end]
    scale = norms[begin:end, None] + norms[None, :]
    s = scale - 2.0 * (mine @ xc.T)
    # Not `s < NEAR * scale`: a NaN is recomputed (and stays NaN).
    i, j = (~(s >= _NEAR * scale)).nonzero(as_tuple=True)
    s[i, j] = (mine[i] - xc[j]).pow(2).sum(1)
    if kind == "dist":
        s = s.clamp(min=eps).sqrt()
    elif kind == "sq_clamped":
        s = s.clamp(min=eps)
    s[_diagonal(end - begin, begin, s.device)] = 0.0
    return s


def _grad_rows(x, W, begin):
    xc = _centred(x)
    W = W.clone()
    W[_diagonal(W.shape[0], begin, W.device)] = 0.0
    w = W.sum(1, keepdim=True)
    return (2.0 * (w * xc[begin:begin + W.shape[0]] - W @ xc)).to(x.dtype)


def _dvalue_dsq(values, kind, eps):
    # Written as `v <= threshold ? 0 : ...` (csrc/rkd_math.h) so that a NaN passes through.
    if kind == "dist":
        return torch.where(values <= math.sqrt(eps), 0.0, 0.5 / values)
    if kind == "sq_clamped":
        return torch.where(values <= eps, 0.0, 1.0)
    return torch.ones_like(values)


def _pair_matrix_rows_backward(grad, x, values, begin, kind, eps):
    return _grad_rows(x, 2.0 * grad * _dvalue_dsq(values, kind, eps), begin)


def _blocks(sq, begin, end):
    """Vertex ranges [b, e) covering [begin, end), each small enough for (e - b, N, N) temporaries."""
    step = max(1, _TRIPLET_BLOCK // max(1, sq.shape[0] ** 2))
    return [(b, min(end, b + step)) for b in range(begin, end, step)]


def _cosines(sq, b, e, eps, normalize):
    """A[i - b, j, k] for the vertices i in [b, e), and the gradient-active reciprocals w[i - b, j]."""
    s = sq[b:e]
    if normalize:
        u = 1.0 / s.sqrt().clamp(min=eps)
        w = torch.where(s < eps * eps, 0.0, u)
    else:
        u = w = torch.ones_like(s)
    a = 0.5 * (s[:, :, None] + s[:, None, :] - sq[None, :, :]) * u[:, :, None] * u[:, None, :]
    # Exactly 0 by the law of cosines only if sq is exactly symmetric; set, so that it holds regardless.
    rows, vertex = _diagonal(e - b, b, a.device)
    a[rows, vertex, :] = 0.0
    a[rows, :, vertex] = 0.0
    return a, w


def _angle_loss_rows(sq_s, sq_t, begin, end, beta, eps, normalize, wide):
    total = sq_s.new_zeros(())
    for b, e in _blocks(sq_s, begin, end):
        a_s, _ = _cosines(sq_s, b, e, eps, normalize)
        a_t, _ = _cosines(sq_t, b, e, eps, normalize)
        total = total + F.smooth_l1_loss(a_s, a_t, reduction="sum", beta=beta)
    return total


def smooth_l1_grad_(r, beta):
    """The smooth-L1 derivative, in place of r: clamp(r / beta, -1, 1), 0 at r == 0 also for beta == 0
    (csrc/rkd_math.h's smooth_l1_grad); NaN stays NaN."""
    zero = r == 0
    return r.div_(beta).masked_fill_(zero, 0.0).clamp_(-1.0, 1.0)


def _angle_grad_rows(sq_a, sq_b, coef, begin, end, beta, eps, normalize, wide):
    N = sq_a.shape[0]
    V = sq_a.new_zeros((end - begin, N))
    R = sq_a.new_zeros((N, N))
    kappa = 1.0 if normalize else 0.0
    for b, e in _blocks(sq_a, begin, end):
        a_a, w = _cosines(sq_a, b, e, eps, normalize)
        a_b, _ = _cosines(sq_b, b, e, eps, normalize)
        g = smooth_l1_grad_(a_a - a_b, beta).mul_(coef)
        gs = g + g.transpose(1, 2)
        p = (gs * w[:, None, :]).sum(2)
        q = (gs * a_a).sum(2)
        V[b - begin:e - begin] = 0.5 * w * p - 0.5 * kappa * w * w * q
        R += (gs * (w[:, :, None] * w[:, None, :])).sum(0)
    V[_diagonal(end - begin, begin, V.device)] = 0.0
    return V, R


# The pure-PyTorch operators, by name: the fallback, and the oracle of the kernels' tests.
FALLBACK = {
    "pair_matrix_rows": _pair_matrix_rows,
    "pair_matrix_rows_backward": _pair_matrix_rows_backward,
    "grad_rows": _grad_rows,
    "angle_loss_rows": _angle_loss_rows,
    "angle_grad_rows": _angle_grad_rows,
}


def _call(name, like, *args):
    return (kernel(name, like) or FALLBACK[name])(*args)


def pair_matrix_rows(x, begin, end, kind, eps):
    return _call("pair_matrix_rows", x, x, begin, end, kind, eps)


def pair_matrix_rows_backward(grad, x, values, begin, kind, eps):
    return _call("pair_matrix_rows_backward", x, grad, x, values, begin, kind, eps)


def grad_rows(x, W, begin):
    return _call("grad_rows", x, x, W, begin)


def angle_loss_rows(sq_s, sq_t, begin, end, beta, eps, normalize, wide):
    return _call("angle_loss_rows", sq_s, sq_s, sq_t, begin, end, beta, eps, normalize, wide)


def angle_grad_rows(sq_a, sq_b, coef, begin, end, beta, eps, normalize, wide):
    return _call("angle_grad_rows", sq_a, sq_a, sq_b, coef, begin, end, beta, eps, normalize, wide)
