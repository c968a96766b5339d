"""The CUDA kernels: every op on the GPU against the CPU op and the reference.

Values and gradients across dtypes and sizes (odd N past every tile, D = 1,
different student and teacher widths), gradcheck in float64, opcheck and
torch.compile on CUDA, bitwise determinism, int64 indexing, memory, and the
errors bad input gets. The oracle of the sweep is the CPU op run in float64
on the same input values (the CPU ops are tested against the reference in
test_distance.py and test_angle.py); the reference itself is the oracle in
float64 on small sizes.

Skipped unless a GPU is visible and rkd_ext was built with its CUDA kernels;
scripts/gpu_run.sh builds and runs everything on a GPU machine.
"""
import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA_KERNELS, HAS_CUDA

import rkd_ext
from rkd_ext import reference as R
from rkd_ext.testing import DTYPES, TINY, assert_close, make_features
from rkd_ext.testing import KERNEL_FLOOR as FLOOR, KERNEL_NOISE as NOISE, KERNEL_RTOL as RTOL

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA_KERNELS, reason="rkd_ext was built without CUDA kernels" if HAS_CUDA
                       else "no CUDA device"),
]

OPS = torch.ops.rkd_ext
NS = [1, 2, 3, 31, 128, 257, 1000]
# (D_student, D_teacher): every D in {1, 3, 64, 512}, never equal.
DIMS = [(1, 3), (3, 64), (64, 512), (512, 1)]
LOSSES = ("rkd_distance_loss", "rkd_angle_loss", "rkd_loss")


def close(actual, expected, rtol, atol, what):
    """max |actual - expected| <= rtol max |expected| + atol (NaN where expected has NaN)."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert torch.equal(torch.isnan(a), torch.isnan(e)), f"{what}: NaN pattern differs"
    a, e = a.nan_to_num(0.0), e.nan_to_num(0.0)
    if e.numel() == 0:
        return
    scale, err = float(e.abs().max()), float((a - e).abs().max())
    assert err <= rtol * scale + atol, f"{what}: max error {err:.3e}, largest element {scale:.3e}"


def _call(name, s, t, reduction="mean", **kw):
    fns = {
        "pairwise_distance": lambda: rkd_ext.pairwise_distance(s, **kw),
        "normalized_distance": lambda: rkd_ext.normalized_distance(s, **kw),
        "angle_tensor": lambda: rkd_ext.angle_tensor(s, **kw),
        "rkd_distance_loss": lambda: rkd_ext.rkd_distance_loss(s, t, reduction=reduction, **kw),
        "rkd_angle_loss": lambda: rkd_ext.rkd_angle_loss(s, t, reduction=reduction, **kw),
        "rkd_loss": lambda: rkd_ext.rkd_loss(s, t, reduction=reduction, **kw),
    }
    return fns[name]()


def _upstream(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def _value_and_grads(name, s, t, reduction="mean", w=None, **kw):
    """The op's value, the gradients of <value, w> w.r.t. s and t (zeros where
    unused), and w: random weights in the value's dtype unless given."""
    out = _call(name, s, t, reduction, **kw)
    if w is None:
        w = _upstream(out.shape, out.dtype, out.numel())
    grads = torch.autograd.grad(out, (s, t), w.to(out), allow_unused=True)
    return out, [torch.zeros_like(x) if g is None else g for x, g in zip((s, t), grads)], w


def _pair(n, dims, dtype, seed, kind="random"):
    s = make_features(n, dims[0], dtype=dtype, seed=seed, kind=kind)
    t = make_features(n, dims[1], dtype=dtype, seed=seed + 1, kind=kind)
    return s, t


def _compare_with_cpu(name, n, dims, dtype, reduction="mean", kind="random", **kw):
    s, t = _pair(n, dims, dtype, 7 * n + dims[0], kind)
    sg, tg = s.cuda().requires_grad_(True), t.cuda().requires_grad_(True)
    vg, gg, w = _value_and_grads(name, sg, tg, reduction, **kw)
    s64, t64 = s.double().requires_grad_(True), t.double().requires_grad_(True)
    vc, gc, _ = _value_and_grads(name, s64, t64, reduction, w.double(), **kw)
    out_dtype = (torch.float64 if dtype == torch.float64 else torch.float32) if name in LOSSES else dtype
    tag = f"{name} n={n} dims={dims} {dtype} {reduction} {kind} {kw}"
    assert vg.device.type == "cuda" and vg.dtype == out_dtype, f"{tag}: {vg.device} {vg.dtype}"
    close(vg, vc, RTOL[dtype], FLOOR[dtype], f"{tag}: value")
    angles = "angle" in name or name == "rkd_loss"
    # With N <= 2 every normalised relation is constant (distances 1, no triplets): the exact gradient is 0,
    # and what the kernels give is rounding noise (nvcc's contraction keeps it from cancelling exactly).
    noise = n <= 2 and name != "pairwise_distance"
    for side, a, b, x, d in zip(("student", "teacher"), gg, gc, (s, t), dims):
        assert a.dtype == x.dtype, f"{tag}: {side} gradient dtype {a.dtype}"
        if angles and d == 1 and n > 2:
            assert bool(torch.isfinite(a).all()), f"{tag}: {side} gradient not finite"
            continue
        close(a, b, RTOL[dtype], NOISE[dtype] if noise else FLOOR[dtype], f"{tag}: {side} gradient")


# ---- CUDA against CPU: values and gradients ------------------------------------------


def _sweep():
    for name in ("pairwise_distance", "normalized_distance", "rkd_distance_loss", "angle_tensor", "rkd_angle_loss",
                 "rkd_loss"):
        for n in NS:
            if name == "angle_tensor" and n > 257:
                continue  # (N, N, N) output: covered up to 257 here, at 1300 by the int64 test
            for dims in DIMS:
                for dtype in DTYPES:
                    yield pytest.param(name, n, dims, dtype, id=f"{name}-n{n}-d{dims[0]}x{dims[1]}-{str(dtype)[6:]}")


@pytest.mark.parametrize("name,n,dims,dtype", list(_sweep()))
def test_matches_cpu(name, n, dims, dtype):
    _compare_with_cpu(name, n, dims, dtype)


@pytest.mark.parametrize("n", [2, 3, 31, 128])
@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["rkd_distance_loss", "rkd_angle_loss"])
def test_reductions_match_cpu(name, dtype, reduction, n):
    _compare_with_cpu(name, n, (5, 3), dtype, reduction)


@pytest.mark.parametrize("kw", [dict(beta=0.3), dict(beta=0.0), dict(eps=1e-3), dict(squared=True),
                                dict(mean_offset=1e-7), dict(squared=True, mean_offset=0.5, beta=2.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distance_variants_match_cpu(dtype, kw):
    for reduction in ("mean", "none"):
        _compare_with_cpu("rkd_distance_loss", 67, (9, 4), dtype, reduction, **kw)


@pytest.mark.parametrize("kw", [dict(distance_weight=25.0, angle_weight=0.0), dict(distance_weight=0.0),
                                dict(reduction="sum", beta=0.3), dict(squared=True, mean_offset=1e-7, normalize=False)],
                         ids=repr)
@pytest.mark.parametrize("n", [2, 3, 31, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rkd_loss_variants_match_cpu(dtype, n, kw):
    _compare_with_cpu("rkd_loss", n, (5, 9), dtype, **kw)


@pytest.mark.parametrize("kw", [dict(beta=0.3), dict(beta=0.0), dict(eps=1e-3), dict(normalize=False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_angle_variants_match_cpu(dtype, kw):
    for reduction in ("mean", "none"):
        _compare_with_cpu("rkd_angle_loss", 67, (9, 4), dtype, reduction, **kw)
    _compare_with_cpu("angle_tensor", 67, (9, 4), dtype, **{k: v for k, v in kw.items() if k != "beta"})


@pytest.mark.parametrize("kind", ["offset", "near", "dup"])
@pytest.mark.parametrize("name", ["pairwise_distance", "normalized_distance", "rkd_distance_loss", "angle_tensor",
                                  "rkd_angle_loss"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_data_matches_cpu(name, kind, dtype):
    _compare_with_cpu(name, 70, (33, 12), dtype, kind=kind)


def test_feature_dimension_zero_matches_cpu():
    for name in ("pairwise_distance", "normalized_distance", "rkd_distance_loss", "angle_tensor", "rkd_angle_loss",
                 "rkd_loss"):
        _compare_with_cpu(name, 5, (0, 3), torch.float32)


def test_mixed_dtypes_match_cpu():
    s = make_features(40, 7, dtype=torch.float16, seed=1)
    t = make_features(40, 5, dtype=torch.float32, seed=2)
    for fn in (rkd_ext.rkd_distance_loss, rkd_ext.rkd_angle_loss):
        sg, tg = s.cuda().requires_grad_(True), t.cuda().requires_grad_(True)
        loss = fn(sg, tg)
        gs, gt = torch.autograd.grad(loss, (sg, tg))
        assert loss.dtype == torch.float32 and gs.dtype == torch.float16 and gt.dtype == torch.float32
        s64, t64 = s.double().requires_grad_(True), t.double().requires_grad_(True)
        truth = fn(s64, t64)
        ts, tt = torch.autograd.grad(truth, (s64, t64))
        name = fn.__name__
        close(loss, truth, RTOL[torch.float32], TINY, f"{name}: value")
        close(gs, ts, RTOL[torch.float16], FLOOR[torch.float16], f"{name}: student gradient")
        close(gt, tt, RTOL[torch.float32], TINY, f"{name}: teacher gradient")


def test_noncontiguous_and_high_rank_inputs():
    base_s = make_features(24, 60, seed=6)
    base_t = make_features(24, 30, seed=7)
    for fn in (rkd_ext.rkd_distance_loss, rkd_ext.rkd_angle_loss):
        out = {}
        for device in ("cpu", "cuda"):
            s = base_s.to(device)[:, ::2].requires_grad_(True)
            t = base_t.to(device).reshape(24, 2, 3, 5).transpose(2, 3).requires_grad_(True)
            loss = fn(s, t)
            out[device] = (loss, *torch.autograd.grad(loss, (s, t)))
        for a, b in zip(out["cuda"], out["cpu"]):
            assert a.shape == b.shape
            close(a, b, 1e-9, TINY, fn.__name__)


def test_nan_propagates_like_cpu():
    s = make_features(9, 4, seed=8)
    s[3, 1] = float("nan")
    t = make_features(9, 4, seed=9)
    for name in ("pairwise_distance", "rkd_distance_loss", "angle_tensor", "rkd_angle_loss"):
        cpu = _call(name, s, t, "none")
        gpu = _call(name, s.cuda(), t.cuda(), "none")
        assert torch.equal(torch.isnan(gpu.cpu()), torch.isnan(cpu)), name


# ---- CUDA against the reference (float64) ----------------------------------------------


@pytest.mark.parametrize("n,ds,dt", [(3, 1, 4), (31, 64, 3), (128, 5, 9)])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_angle_loss_matches_reference_float64(n, ds, dt, reduction, normalize):
    s = make_features(n, ds, device="cuda", seed=10, requires_grad=True)
    t = make_features(n, dt, device="cuda", seed=11, requires_grad=True)
    ours = rkd_ext.rkd_angle_loss(s, t, reduction=reduction, normalize=normalize)
    ref = R.angle_loss(s, t, reduction=reduction, normalize=normalize)
    assert_close(ours, ref, 1e-9, 1e-13, "value")
    w = torch.randn(ours.shape, dtype=torch.float64, device="cuda")
    for a, b, d in zip(torch.autograd.grad(ours, (s, t), w), torch.autograd.grad(ref, (s, t), w), (ds, dt)):
        floor = 1e-9 if d == 1 else 1e-12 * b.abs().max().item()
        assert_close(a, b, 1e-8, floor, "gradient")


@pytest.mark.parametrize("n,ds,dt", [(2, 3, 3), (31, 1, 4), (257, 64, 7)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_distance_loss_matches_reference_float64(n, ds, dt, reduction):
    s = make_features(n, ds, device="cuda", seed=12, requires_grad=True)
    t = make_features(n, dt, device="cuda", seed=13, requires_grad=True)
    ours = rkd_ext.rkd_distance_loss(s, t, reduction=reduction)
    ref = R.distance_loss(s, t, reduction=reduction)
    assert_close(ours, ref, 1e-10, 1e-13, "value")
    w = torch.randn(ours.shape, dtype=torch.float64, device="cuda")
    for a, b in zip(torch.autograd.grad(ours, (s, t), w), torch.autograd.grad(ref, (s, t), w)):
        assert_close(a, b, 1e-9, 1e-13 * b.abs().max().item(), "gradient")


@pytest.mark.parametrize("fn,ref", [(rkd_ext.pairwise_distance, R.pairwise_distance),
                                    (rkd_ext.normalized_distance, R.normalized_distance),
                                    (rkd_ext.angle_tensor, R.angle_tensor)])
@pytest.mark.parametrize("n,d", [(2, 1), (31, 3), (130, 64)])
def test_matrices_match_reference_float64(fn, ref, n, d):
    x = make_features(n, d, device="cuda", seed=14, requires_grad=True)
    ours, expected = fn(x), ref(x)
    assert_close(ours, expected, 1e-10, 1e-13, "value")
    w = torch.randn(ours.shape, dtype=torch.float64, device="cuda")
    (a,), (b,) = torch.autograd.grad(ours, x, w), torch.autograd.grad(expected, x, w)
    floor = 1e-9 if fn is rkd_ext.angle_tensor and (d == 1 or n <= 2) else 1e-12 * b.abs().max().item()
    assert_close(a, b, 1e-9, floor, "gradient")


def test_angle_tensor_degenerate_entries():
    x = make_features(6, 3, device="cuda", seed=15)
    a = rkd_ext.angle_tensor(x).cpu()
    idx = torch.arange(6)
    # A_iik = A_iji = 0 exactly; A_ijj = 1 for j != i.
    assert torch.count_nonzero(a[idx, idx, :]) == 0 and torch.count_nonzero(a[idx, :, idx]) == 0
    off = ~torch.eye(6, dtype=torch.bool)
    assert torch.allclose(a.diagonal(0, 1, 2)[off], torch.ones(30, dtype=a.dtype), rtol=0, atol=1e-14)


# ---- gradcheck in float64 on CUDA ---------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("normalize", [True, False])
def test_angle_loss_gradcheck(reduction, normalize):
    s = make_features(5, 3, device="cuda", seed=16, requires_grad=True)
    t = make_features(5, 4, device="cuda", seed=17, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: rkd_ext.rkd_angle_loss(a, b, reduction=reduction, normalize=normalize, beta=0.5), (s, t))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kw", [dict(), dict(squared=True, mean_offset=0.1, beta=0.2)])
def test_distance_loss_gradcheck(reduction, kw):
    s = make_features(6, 4, device="cuda", seed=18, requires_grad=True)
    t = make_features(6, 3, device="cuda", seed=19, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rkd_ext.rkd_distance_loss(a, b, reduction=reduction, **kw), (s, t))


@pytest.mark.parametrize("fn", [rkd_ext.pairwise_distance, rkd_ext.normalized_distance, rkd_ext.angle_tensor,
                                lambda x: rkd_ext.angle_tensor(x, normalize=False)])
def test_matrix_gradcheck(fn):
    x = make_features(6, 3, device="cuda", seed=20, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,))


# ---- dispatcher integration on CUDA ----------------------------------------------------------


def _op_samples():
    x = make_features(9, 5, device="cuda", seed=21, requires_grad=True)
    t = make_features(9, 4, device="cuda", seed=22, requires_grad=True)
    xd, td = x.detach(), t.detach()
    up2 = torch.randn(9, 9, dtype=torch.float64, device="cuda")
    up3 = torch.randn(9, 9, 9, dtype=torch.float64, device="cuda")
    one = torch.tensor(1.5, dtype=torch.float64, device="cuda")
    yield OPS.pairwise_distance.default, (x, 1e-12)
    yield OPS.normalized_distance.default, (x, 1e-12)
    yield OPS.rkd_distance_loss.default, (x, t, 1.0, 1e-12, "mean", False, 0.0)
    yield OPS.rkd_distance_loss.default, (x, t, 0.5, 1e-12, "none", True, 1e-7)
    yield OPS.angle_tensor.default, (x, 1e-12, True)
    yield OPS.angle_tensor.default, (x, 1e-12, False)
    yield OPS.rkd_angle_loss.default, (x, t, 1.0, 1e-12, "mean", True)
    yield OPS.rkd_angle_loss.default, (x, t, 0.3, 1e-12, "none", False)
    _, d64 = OPS.pairwise_distance(xd, 1e-12)
    yield OPS.pairwise_distance_backward.default, (up2, xd, d64, 1e-12)
    yield OPS.normalized_distance_backward.default, (up2, xd, d64, 1e-12)
    _, a, b = OPS.rkd_distance_loss(xd, td, 1.0, 1e-12, "sum", False, 0.0)
    yield OPS.rkd_distance_loss_backward.default, (one, xd, td, a, b, 1.0, 1e-12, "sum", False, 0.0, True, True)
    _, sq = OPS.angle_tensor(xd, 1e-12, True)
    yield OPS.angle_tensor_backward.default, (up3, xd, sq, 1e-12, True)
    _, a, b = OPS.rkd_angle_loss(xd, td, 1.0, 1e-12, "none", True)
    yield OPS.rkd_angle_loss_backward.default, (up3, xd, td, a, b, 1.0, 1e-12, "none", True, True, False)
    fused = (25.0, 50.0, 1.0, 1e-12, 1e-12, "mean", False, 0.0, True)
    yield OPS.rkd_loss.default, (x, t, *fused)
    _, a, b = OPS.rkd_loss(xd, td, *fused)
    yield OPS.rkd_loss_backward.default, (one, xd, td, a, b, *fused, True, False)


@pytest.mark.parametrize("op,args", list(_op_samples()) if CUDA_KERNELS else [],
                         ids=lambda v: getattr(v, "__name__", ""))
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph_matches_eager(dynamic):
    s = make_features(40, 16, dtype=torch.float32, device="cuda", seed=23, requires_grad=True)
    t = make_features(40, 12, dtype=torch.float32, device="cuda", seed=24)
    criterion = rkd_ext.RKDLoss()

    def f(a, b):
        return criterion(F.normalize(a, dim=1), F.normalize(b, dim=1)) + rkd_ext.rkd_distance_loss(a, b)

    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
    eager = f(s, t)
    (ge,) = torch.autograd.grad(eager, s)
    out = compiled(s, t)
    (gc,) = torch.autograd.grad(out, s)
    assert out.device.type == "cuda"
    assert_close(out, eager, 1e-6, 0, "value")
    assert_close(gc, ge, 1e-5, 1e-8, "gradient")


# ---- determinism ------------------------------------------------------------------------


@pytest.mark.parametrize("name,n", [("pairwise_distance", 257), ("normalized_distance", 257),
                                    ("rkd_distance_loss", 1000), ("angle_tensor", 129), ("rkd_angle_loss", 1000),
                                    ("rkd_angle_loss", 257)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bitwise_deterministic(name, n, dtype):
    s = make_features(n, 64, dtype=dtype, device="cuda", seed=25, requires_grad=True)
    t = make_features(n, 48, dtype=dtype, device="cuda", seed=26, requires_grad=True)
    runs = [_value_and_grads(name, s, t) for _ in range(3)]
    for out, grads, _ in runs[1:]:
        assert torch.equal(out, runs[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, runs[0][1]))


def test_side_stream_gives_the_same_bits():
    s = make_features(100, 20, dtype=torch.float32, device="cuda", seed=27, requires_grad=True)
    t = make_features(100, 10, dtype=torch.float32, device="cuda", seed=28)
    expected = _value_and_grads("rkd_angle_loss", s, t)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = _value_and_grads("rkd_angle_loss", s, t)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1][0], expected[1][0])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device_uses_its_own_device():
    s = make_features(50, 8, seed=29)
    t = make_features(50, 6, seed=30)
    for fn in (rkd_ext.rkd_distance_loss, rkd_ext.rkd_angle_loss):
        with torch.cuda.device(0):
            got = fn(s.to("cuda:1"), t.to("cuda:1"))
        assert got.device == torch.device("cuda:1")
        assert_close(got, fn(s, t), 1e-10, 1e-14, fn.__name__)


# ---- large N and memory ------------------------------------------------------------------


def test_angle_loss_beyond_int32_indexing():
    n = 1300  # n^3 > 2^31
    s = make_features(n, 6, seed=31)
    t = make_features(n, 5, seed=32)
    out = {}
    for device in ("cpu", "cuda"):
        sd = s.to(device).requires_grad_(True)
        loss = rkd_ext.rkd_angle_loss(sd, t.to(device))
        out[device] = (loss, *torch.autograd.grad(loss, sd))
    close(out["cuda"][0], out["cpu"][0], 1e-9, 0.0, "value")
    close(out["cuda"][1], out["cpu"][1], 1e-8, 0.0, "gradient")


def test_angle_tensor_beyond_int32_indexing():
    n = 1300
    x = make_features(n, 3, dtype=torch.float32, device="cuda", seed=33)
    a = rkd_ext.angle_tensor(x)
    # Entries past 2^31, checked against the cosines computed directly.
    x64 = x.double()
    for i, j, k in [(n - 1, n - 2, n - 3), (n - 1, 0, n - 1), (1290, 1299, 3), (n - 2, n - 1, n - 1)]:
        u, v = x64[j] - x64[i], x64[k] - x64[i]
        cos = torch.dot(F.normalize(u, dim=0), F.normalize(v, dim=0))
        assert abs(a[i, j, k].item() - cos.item()) < 1e-5, (i, j, k)


def _peak_bytes_above_inputs(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


@pytest.mark.parametrize("n,d", [(2048, 512), (4096, 512)])
def test_angle_loss_memory_is_quadratic(n, d):
    s = make_features(n, d, dtype=torch.float32, device="cuda", seed=34, requires_grad=True)
    t = make_features(n, d, dtype=torch.float32, device="cuda", seed=35)

    def step():
        rkd_ext.rkd_angle_loss(s, t).backward()

    step()
    s.grad = None
    peak = _peak_bytes_above_inputs(step)
    # O(N^2 + N D): a handful of N x N float64 matrices, nothing of N^3 or N^2 D.
    assert peak < 16 * n * n * 8 + 8 * n * d * 8, peak
    if n == 4096:
        assert peak < 2 * 2**30, peak


# ---- bad input -------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error():
    x = make_features(6, 3, device="cuda", seed=36)
    with pytest.raises(ValueError, match="at least one sample"):
        rkd_ext.rkd_angle_loss(x[:0], x[:0])
    with pytest.raises(ValueError, match="at least one sample"):
        OPS.pairwise_distance(x[:0], 1e-12)
    with pytest.raises(ValueError, match="same batch size"):
        rkd_ext.rkd_distance_loss(x, x[:4])
    with pytest.raises(ValueError, match="same batch size"):
        OPS.rkd_angle_loss(x, x[:4], 1.0, 1e-12, "mean", True)
    with pytest.raises(ValueError, match="same device"):
        OPS.rkd_distance_loss(x, x.cpu(), 1.0, 1e-12, "mean", False, 0.0)
    with pytest.raises(ValueError, match="same device"):
        OPS.rkd_angle_loss(x.cpu(), x, 1.0, 1e-12, "mean", True)
    # A ValueError from the raw operator: the stable ABI carries no TypeError (csrc/torch_stable.h).
    with pytest.raises(ValueError, match="float16, bfloat16, float32 or float64"):
        OPS.angle_tensor(x.int(), 1e-12, True)
    with pytest.raises(ValueError, match="reduction"):
        OPS.rkd_angle_loss(x, x, 1.0, 1e-12, "avg", True)
    with pytest.raises(ValueError, match="eps"):
        OPS.rkd_distance_loss(x, x, 1.0, -1.0, "mean", False, 0.0)


def test_backward_ops_reject_mismatched_tensors():
    x = make_features(6, 3, device="cuda", seed=37)
    _, d64 = OPS.pairwise_distance(x, 1e-12)
    with pytest.raises(ValueError, match="grad must"):
        OPS.pairwise_distance_backward(torch.randn(5, 5, device="cuda", dtype=torch.float64), x, d64, 1e-12)
    with pytest.raises(ValueError, match="grad must be on"):
        OPS.pairwise_distance_backward(torch.randn(6, 6, dtype=torch.float64), x, d64, 1e-12)
    with pytest.raises(ValueError, match="dist64"):
        OPS.normalized_distance_backward(torch.randn(6, 6, device="cuda"), x, d64.float(), 1e-12)
    _, sq = OPS.angle_tensor(x, 1e-12, True)
    with pytest.raises(ValueError, match="sq must be on"):
        OPS.angle_tensor_backward(torch.randn(6, 6, 6, device="cuda"), x, sq.cpu(), 1e-12, True)
    _, a, b = OPS.rkd_angle_loss(x, x, 1.0, 1e-12, "mean", True)
    with pytest.raises(ValueError, match="grad must be a scalar"):
        OPS.rkd_angle_loss_backward(torch.ones(2, device="cuda"), x, x, a, b, 1.0, 1e-12, "mean", True, True, True)
