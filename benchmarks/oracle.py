"""Float64 ground truth for the correctness gate, affordable at every benchmarked size.

The reference itself cannot serve as the oracle at large N: its angle tensor
takes O(N^3 D) time and O(N^2 D) memory. Instead the squared distances come
from the Gram matrix of the centred features in float64 (centring removes a
common offset, float64 the cancellation), the relations follow from them as
the specification defines them, and the angle relations come from the law of
cosines one block of vertices at a time, so memory stays O(N^2) plus a block.
Gradients w.r.t. the squared distances are accumulated block by block, then
pushed through to the features once.
"""
import torch
import torch.nn.functional as F

EPS = 1e-12
_BLOCK_BYTES = {"cpu": 2**28, "cuda": 2**32}
# Temporaries of one block of the angle loss with its backward, in units of a (block, N, N) float64 tensor.
_BLOCK_TEMPS = 12


def angle_rows(n):
    """Vertices whose angle-tensor slices the gate compares: all of them for small N, else 32 spread out."""
    return torch.arange(n) if n <= 256 else torch.linspace(0, n - 1, 32).round().long()


def _sq_dist(x):
    xc = x - x.mean(0)
    n2 = xc.pow(2).sum(1)
    s = n2.unsqueeze(1) + n2.unsqueeze(0) - 2.0 * (xc @ xc.t())
    s = (0.5 * (s + s.t())).clamp_min(0.0)
    return s.masked_fill(torch.eye(x.shape[0], dtype=torch.bool, device=x.device), 0.0)


def _distance(s):
    eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    return s.clamp_min(EPS).sqrt().masked_fill(eye, 0.0)


def _normalized(s):
    d = _distance(s)
    n = s.shape[0]
    return d / (d.sum() / (n * (n - 1)))


def _angle_block(s, idx):
    """A[i, :, :] for the vertices i in idx: (s_ij + s_ik - s_jk) / (2 r_ij r_ik), 0 where j == i or k == i."""
    # Clamping s (not sqrt(s)) keeps the gradient finite on the zero diagonal.
    r = s[idx].clamp_min(EPS * EPS).sqrt()
    si = s[idx]
    a = (si.unsqueeze(2) + si.unsqueeze(1) - s.unsqueeze(0)) / (2.0 * r.unsqueeze(2) * r.unsqueeze(1))
    vertex = torch.arange(s.shape[0], device=s.device).unsqueeze(0) == idx.unsqueeze(1)
    return a.masked_fill(vertex.unsqueeze(2) | vertex.unsqueeze(1), 0.0)


def _blocks(vertices, n):
    """vertices split into blocks whose (block, N, N) temporaries fit the block budget."""
    per_vertex = _BLOCK_TEMPS * n * n * 8
    return vertices.split(max(1, _BLOCK_BYTES.get(vertices.device.type, 2**28) // per_vertex))


def _leaf(x):
    return x.detach().to(torch.float64).requires_grad_()


def expected(op, inputs, grad_out=None, want_grad=False):
    """(value, grad) of op in float64.

    value is the whole output, except for angle_tensor: its slices at angle_rows(N).
    grad is None unless want_grad: then the gradient w.r.t. the first input of
    the loss, or of <grad_out, output> for a tensor op.
    """
    if op == "rkd_loss":
        return _rkd_loss(inputs, want_grad)
    x = _leaf(inputs[0])
    if op == "angle_loss":
        return _angle_loss(x, inputs[1].detach().to(torch.float64), want_grad)
    if op == "angle_tensor":
        return _angle_tensor(x, grad_out, want_grad)
    with torch.set_grad_enabled(want_grad):
        if op == "pairwise_distance":
            out = _distance(_sq_dist(x))
        elif op == "normalized_distance":
            out = _normalized(_sq_dist(x))
        elif op == "distance_loss":
            out = F.smooth_l1_loss(_normalized(_sq_dist(x)), _normalized(_sq_dist(inputs[1].to(torch.float64))))
        else:
            raise ValueError(f"no oracle for op {op!r}")
        if want_grad:
            (out if grad_out is None else (out * grad_out.to(torch.float64)).sum()).backward()
    return out.detach(), (x.grad if want_grad else None)


def _angle_loss(x, teacher, want_grad):
    n = x.shape[0]
    with torch.set_grad_enabled(want_grad):
        s = _sq_dist(x)
    s_leaf = _leaf(s)
    s_t = _sq_dist(teacher)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for idx in _blocks(torch.arange(n, device=x.device), n):
        with torch.no_grad():
            a_t = _angle_block(s_t, idx)
        with torch.set_grad_enabled(want_grad):
            part = F.smooth_l1_loss(_angle_block(s_leaf, idx), a_t, reduction="sum") / n**3
        if want_grad:
            part.backward()
        total += part.detach()
    if not want_grad:
        return total, None
    s.backward(s_leaf.grad)
    return total, x.grad


def _rkd_loss(inputs, want_grad):
    """25 x the distance loss + 50 x the angle loss, value and gradient, from the oracles of both."""
    (dv, dg), (av, ag) = (expected(op, inputs, want_grad=want_grad) for op in ("distance_loss", "angle_loss"))
    return 25 * dv + 50 * av, (25 * dg + 50 * ag if want_grad else None)


def _angle_tensor(x, grad_out, want_grad):
    with torch.set_grad_enabled(want_grad):
        s = _sq_dist(x)
    s_leaf = _leaf(s)
    n = x.shape[0]
    with torch.no_grad():
        value = torch.cat([_angle_block(s_leaf, idx) for idx in _blocks(angle_rows(n).to(x.device), n)])
    if not want_grad:
        return value, None
    for idx in _blocks(torch.arange(n, device=x.device), n):
        with torch.enable_grad():
            (_angle_block(s_leaf, idx) * grad_out[idx].to(torch.float64)).sum().backward()
    s.backward(s_leaf.grad)
    return value, x.grad
