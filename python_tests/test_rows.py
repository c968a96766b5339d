"""The row-range operators of the sharded mode (rkd_ext._rows).

The pure-PyTorch versions against the reference: their values against
rkd_ext.reference's pair matrices and elementwise losses, their gradients
(assembled from row blocks as the ranks of a job assemble them) against
autograd of the reference losses, all in float64. The compiled kernels
against the pure-PyTorch versions, skipped where the extension has none.
"""
import pytest
import torch
from conftest import DEVICES

from rkd_ext import _rows, ops
from rkd_ext import reference as R
from rkd_ext.testing import assert_close, make_features

FB = _rows.FALLBACK
TOL = (1e-10, 1e-12)
EPS = 1e-12
N, D = 11, 5
# Row blocks of a batch of N, as ranks of unequal sizes hold them; one block of a single row.
BLOCKS = [(0, 4), (4, 5), (5, 11)]
BETAS = [1.0, 0.3, 0.0]


def _symmetric(m):
    return torch.triu(m) + torch.triu(m, 1).T


def _sq(x):
    """The full squared-distance matrix from the blocks' rows, made symmetric as the sharded mode does."""
    return _symmetric(torch.cat([FB["pair_matrix_rows"](x, b, e, "sq", EPS) for b, e in BLOCKS]))


def _reference_pairs(x, kind):
    if kind == "dist":
        return R.pairwise_distance(x, EPS)
    s = (x[:, None, :] - x[None, :, :]).pow(2).sum(2)  # direct differences: exact, unclamped
    if kind == "sq_clamped":
        s = s.clamp(min=EPS)
    return s.masked_fill(torch.eye(x.shape[0], dtype=torch.bool), 0.0)


@pytest.mark.parametrize("data", ["random", "offset", "near"])
@pytest.mark.parametrize("kind", _rows.KINDS)
def test_pair_matrix_rows_are_rows_of_the_pair_matrix(kind, data):
    x = make_features(N, D, kind=data, seed=1)
    full = _reference_pairs(x, kind)
    for b, e in BLOCKS + [(3, 3)]:
        rows = FB["pair_matrix_rows"](x, b, e, kind, EPS)
        assert rows.dtype == torch.float64
        assert_close(rows, full[b:e], *TOL, f"{kind} rows [{b}, {e})")
        assert bool((rows[torch.arange(e - b), torch.arange(b, e)] == 0).all()), "the diagonal is exactly 0"


@pytest.mark.parametrize("kind", _rows.KINDS)
def test_pair_matrix_rows_backward_is_the_gradient_of_a_symmetric_loss(kind):
    # L = sum of a smooth function of the pair matrix with symmetric coefficients: symmetric in (i, j), (j, i).
    x = make_features(N, D, seed=2, requires_grad=True)
    c = torch.randn(N, N, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    c = c + c.T
    loss = (c * _reference_pairs(x, kind)).pow(2).sum()
    expected, = torch.autograd.grad(loss, x)
    values = FB["pair_matrix_rows"](x.detach(), 0, N, kind, EPS)
    grad = 2 * c * c * values  # dL/d(values)
    got = torch.cat([FB["pair_matrix_rows_backward"](grad[b:e], x.detach(), values[b:e], b, kind, EPS)
                     for b, e in BLOCKS])
    assert_close(got, expected, *TOL, f"{kind} gradient")


def test_grad_rows_is_the_gram_gradient_and_ignores_the_diagonal():
    # dx_i = 2 sum_j W_ij (x_i - x_j) is the gradient of sum_{i<j} W_ij s_ij for a symmetric W.
    x = make_features(N, D, kind="offset", seed=4, requires_grad=True)
    W = torch.randn(N, N, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    W = W + W.T
    expected, = torch.autograd.grad(0.5 * (W * _reference_pairs(x, "sq")).sum(), x)
    W.diagonal().fill_(1e6)  # ignored
    got = torch.cat([FB["grad_rows"](x.detach(), W[b:e].contiguous(), b) for b, e in BLOCKS])
    assert_close(got, expected, *TOL, "gradient")
    assert FB["grad_rows"](x.float().detach(), W[:2].contiguous(), 0).dtype == torch.float32


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("beta", BETAS)
def test_angle_loss_rows_sums_the_triplets_of_its_vertices(beta, normalize):
    s, t = make_features(N, D, seed=6), make_features(N, 3, seed=7, kind="near")
    elementwise = R.angle_loss(s, t, beta=beta, reduction="none", normalize=normalize)
    sq_s, sq_t = _sq(s), _sq(t)
    for b, e in BLOCKS + [(2, 2)]:
        got = FB["angle_loss_rows"](sq_s, sq_t, b, e, beta, EPS, normalize, True)
        assert_close(got, elementwise[b:e].sum(), *TOL, f"vertices [{b}, {e})")


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("beta", BETAS)
def test_angle_grad_rows_assemble_the_gradient(beta, normalize):
    # W = V + V^T - R / 2 with V's rows and R's sum over the blocks; dL/dx = grad_rows of W's rows.
    s = make_features(N, D, seed=8, requires_grad=True)
    t = make_features(N, 3, seed=9, kind="offset", requires_grad=True)
    coef = torch.tensor(0.7, dtype=torch.float64)
    loss = coef * R.angle_loss(s, t, beta=beta, reduction="sum", normalize=normalize)
    expected = torch.autograd.grad(loss, (s, t))
    sq = (_sq(s.detach()), _sq(t.detach()))
    for side, x in enumerate((s, t)):
        sq_a, sq_b = sq[side], sq[1 - side]
        V = torch.empty(N, N, dtype=torch.float64)
        Rsum = torch.zeros(N, N, dtype=torch.float64)
        for b, e in BLOCKS:
            v, r = FB["angle_grad_rows"](sq_a, sq_b, coef, b, e, beta, EPS, normalize, True)
            assert bool((v[torch.arange(e - b), torch.arange(b, e)] == 0).all())
            V[b:e] = v
            Rsum += r
        assert_close(Rsum, Rsum.T, 1e-14, 1e-16, "R is symmetric")
        W = V + V.T - 0.5 * Rsum
        got = torch.cat([FB["grad_rows"](x.detach(), W[b:e].contiguous(), b) for b, e in BLOCKS])
        assert_close(got, expected[side], *TOL, f"side {side} gradient")


def test_angle_operators_split_their_vertices_into_blocks():
    # The pure-PyTorch angle operators walk the vertices in blocks of about _TRIPLET_BLOCK triplets: with a
    # block budget of 2 vertices, a range of 5 takes three blocks and must give the same numbers as one.
    s, t = make_features(N, D, seed=10), make_features(N, 3, seed=11)
    sq_s, sq_t = _sq(s), _sq(t)
    coef = torch.tensor(1.0, dtype=torch.float64)
    whole = FB["angle_loss_rows"](sq_s, sq_t, 3, 8, 1.0, EPS, True, True), \
        FB["angle_grad_rows"](sq_s, sq_t, coef, 3, 8, 1.0, EPS, True, True)
    budget = _rows._TRIPLET_BLOCK
    try:
        _rows._TRIPLET_BLOCK = 2 * N * N
        assert len(_rows._blocks(sq_s, 3, 8)) == 3
        split = FB["angle_loss_rows"](sq_s, sq_t, 3, 8, 1.0, EPS, True, True), \
            FB["angle_grad_rows"](sq_s, sq_t, coef, 3, 8, 1.0, EPS, True, True)
    finally:
        _rows._TRIPLET_BLOCK = budget
    assert_close(split[0], whole[0], 1e-14, 0, "loss")
    for a, b in zip(split[1], whole[1]):
        assert_close(a, b, 1e-14, 1e-300, "V, R")


# ---- the compiled kernels against the pure-PyTorch versions ----------------------------------

def _close(got, want, rtol, what):
    """Within rtol of the largest element of want (entries that cancel to ~0 are judged on that scale)."""
    scale = float(want.abs().max()) if want.numel() else 1.0
    assert_close(got, want, rtol, rtol * scale, what)


def _kernel_or_skip(name, device):
    op = _rows.kernel(name, torch.empty(0, device=device))
    if op is None:
        pytest.skip(f"the loaded extension has no {name} kernel for {device}")
    return op


KERNEL_N, KERNEL_D = 70, 19
# Blocks: empty, a single row, the whole batch, and ranges that straddle the kernels' tiles.
KERNEL_BLOCKS = [(0, KERNEL_N), (0, 0), (69, 70), (5, 6), (3, 40), (33, 70)]


def _kernel_inputs(device, kind="random"):
    x = make_features(KERNEL_N, KERNEL_D, kind=kind, seed=12, device=device)
    t = make_features(KERNEL_N, 7, kind="random", seed=13, device=device)
    return x, t


def _kernel_sq(x):
    return _symmetric(FB["pair_matrix_rows"](x, 0, x.shape[0], "sq", EPS)).contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("data", ["random", "offset", "near", "dup"])
@pytest.mark.parametrize("kind", _rows.KINDS)
def test_kernel_pair_matrix_rows_and_backward(kind, data, device):
    op = _kernel_or_skip("pair_matrix_rows", device)
    backward = _kernel_or_skip("pair_matrix_rows_backward", device)
    x, _ = _kernel_inputs(device, data)
    g = torch.Generator().manual_seed(14)
    for b, e in KERNEL_BLOCKS:
        got, expected = op(x, b, e, kind, EPS), FB["pair_matrix_rows"](x, b, e, kind, EPS)
        _close(got, expected, 1e-12, f"values [{b}, {e})")
        grad = torch.randn(expected.shape, generator=g, dtype=torch.float64).to(device)
        got = backward(grad, x, expected, b, kind, EPS)
        want = FB["pair_matrix_rows_backward"](grad, x, expected, b, kind, EPS)
        _close(got, want, 1e-12, f"gradient [{b}, {e})")


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_grad_rows(device):
    op = _kernel_or_skip("grad_rows", device)
    x, _ = _kernel_inputs(device, "offset")
    W = torch.randn(KERNEL_N, KERNEL_N, generator=torch.Generator().manual_seed(15), dtype=torch.float64).to(device)
    for b, e in KERNEL_BLOCKS:
        block = W[b:e].contiguous()
        got, want = op(x, block, b), FB["grad_rows"](x, block, b)
        _close(got, want, 1e-12, f"rows [{b}, {e})")


def _wide_tolerance(device, wide):
    # The CPU kernels compute the triplets in float64 whatever `wide` says; the CUDA kernels in float32
    # when it is False.
    return 1e-12 if wide or device == "cpu" else 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wide", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("beta", [1.0, 0.0])
def test_kernel_angle_rows(beta, normalize, wide, device):
    loss_op = _kernel_or_skip("angle_loss_rows", device)
    grad_op = _kernel_or_skip("angle_grad_rows", device)
    x, t = _kernel_inputs(device, "near")
    sq_s, sq_t = _kernel_sq(x), _kernel_sq(t)
    coef = torch.tensor(0.3, dtype=torch.float64, device=device)
    rtol = _wide_tolerance(device, wide)
    for b, e in KERNEL_BLOCKS:
        got = loss_op(sq_s, sq_t, b, e, beta, EPS, normalize, wide)
        want = FB["angle_loss_rows"](sq_s, sq_t, b, e, beta, EPS, normalize, wide)
        _close(got, want, rtol, f"loss over vertices [{b}, {e})")
        (V, R_), (V_want, R_want) = (grad_op(sq_s, sq_t, coef, b, e, beta, EPS, normalize, wide),
                                     FB["angle_grad_rows"](sq_s, sq_t, coef, b, e, beta, EPS, normalize, wide))
        _close(V, V_want, rtol, f"V [{b}, {e})")
        # R's diagonal takes no part in the gradient (grad_rows ignores W_jj); it collects the triplets
        # (i, j, j), where A = 1 on both sides and, with beta = 0, l' is the sign of rounding noise.
        off = ~torch.eye(KERNEL_N, dtype=torch.bool, device=device)
        _close(R_[off], R_want[off], rtol, f"R [{b}, {e})")


def _opcheck_cases():
    x = make_features(9, 4, seed=16)
    sq = _kernel_sq(x)
    sq2 = _kernel_sq(make_features(9, 3, seed=17))
    W = torch.randn(3, 9, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    values = FB["pair_matrix_rows"](x, 2, 5, "dist", EPS)
    return {
        "pair_matrix_rows": (x, 2, 5, "dist", EPS),
        "pair_matrix_rows_backward": (W, x, values, 2, "dist", EPS),
        "grad_rows": (x, W, 2),
        "angle_loss_rows": (sq, sq2, 2, 5, 1.0, EPS, True, True),
        "angle_grad_rows": (sq, sq2, torch.tensor(0.5, dtype=torch.float64), 2, 5, 1.0, EPS, True, True),
    }


@pytest.mark.parametrize("name", ops.SHARD_OPS)
def test_kernel_opcheck(name):
    # Schema, fake kernel (registered by rkd_ext.ops) and dispatch agree.
    op = _kernel_or_skip(name, "cpu")
    torch.library.opcheck(op, _opcheck_cases()[name])


# The small-batch product in one feature chunk and in several, and the panel GEMM (N > 64 with short
# features, N > 256); float32 (the fast product for distances, float64 for squared distances).
@pytest.mark.parametrize("n, d", [(40, 19), (30, 5000), (70, 19), (300, 40)])
def test_kernel_rows_equal_the_full_matrix_bitwise(n, d):
    op = _kernel_or_skip("pair_matrix_rows", "cpu")
    x = make_features(n, d, seed=16, dtype=torch.float32)
    full = {"dist": torch.ops.rkd_ext.pairwise_distance(x, EPS)[1],
            "sq": torch.ops.rkd_ext.angle_tensor(x, EPS, True)[1]}
    for kind, m in full.items():
        for b, e in [(0, n), (n - 1, n), (3, n // 2 + 1), (n // 3, n)]:
            assert torch.equal(op(x, b, e, kind, EPS), m[b:e]), (kind, b, e)
