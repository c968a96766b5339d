"""The shared vocabulary of rkd_ext's tests and benchmarks: feature batches, dtypes, tolerances, comparisons.

For python_tests/, benchmarks/ and scripts/, so that they generate the same
batches and judge them by the same bounds; not part of the library's API, and
free to change with the tests. Needs only torch (pytest's devices and markers
live in python_tests/conftest.py).
"""
import torch

__all__ = [
    "DTYPES",
    "EMULATION_NOISE",
    "FEATURE_KINDS",
    "KERNEL_FLOOR",
    "KERNEL_NOISE",
    "KERNEL_RTOL",
    "TINY",
    "TOL",
    "assert_close",
    "REDUCTIONS",
    "eager_and_compiled",
    "float32_errors",
    "float64_truth",
    "make_features",
    "max_rel_err",
    "value_and_grads",
    "weighted_grads",
]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
REDUCTIONS = ["mean", "sum", "none"]
FEATURE_KINDS = ("random", "offset", "near", "dup")


def make_features(n, d, *, dtype=torch.float64, device="cpu", seed=0, kind="random", requires_grad=False,
                  draw_dtype=torch.float64):
    """A batch of n features of size d, drawn on the CPU so that every device gets the same numbers.

    kind: "random" (standard normal), "offset" (mean 100x the spread, like
    post-ReLU features), "near" (pairs of rows 1e-3 apart relative to the
    spread), "dup" (the last n - n // 2 rows copies of the first n - n // 2
    as drawn: some rows exact duplicates of others).
    draw_dtype: the dtype the normal draws (and the kind's arithmetic) are
    made in before the cast to dtype. The same seed draws different numbers
    in float64 (the tests, the accuracy table, the emulation) and in float32
    (the benchmarks and the GPU targets).
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"make_features: kind must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=draw_dtype)
    if kind == "offset":
        x = x + 100.0
    elif kind == "near":
        half = (n + 1) // 2
        base = x[:half]
        x = torch.cat([base, base + 1e-3 * torch.randn(base.shape, generator=g, dtype=draw_dtype)])[:n]
    elif kind == "dup":
        x[n // 2:] = x[: n - n // 2].clone()
    return x.to(dtype=dtype, device=device).requires_grad_(requires_grad)


# (rtol, atol) for comparing an op's output in a given dtype with the float64 reference.
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (5e-2, 1e-2),
}

# The CUDA kernels, on a GPU or emulated on the host, against the CPU op run
# in float64 on the same input values (exact upcasts) and the same upstream
# gradients. Error bounds, relative to the largest element of the CPU result:
# the kernels compute in float64, or with float32 triplet arithmetic on
# float64 squared distances and cosine numerators (measured within 3e-7 of
# float64, near-duplicates included); half results add the rounding of the
# output.
KERNEL_RTOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# On a GPU (python_tests/test_cuda.py): with N = 2 every cosine is a constant,
# and with D = 1 every triplet is collinear: the exact angle gradient is 0 and
# what is left of cancelling terms is noise. For N = 2 that is rounding noise,
# bounded here; for D = 1 the terms grow like the inverse square of the
# closest gap (~1e9 at N = 257; the CPU's float32 gradient is then ~100), so
# only finiteness is checked there.
KERNEL_NOISE = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-3}
# Emulated on the host (scripts/emulate_cuda.py), where D = 1 is checked too
# at small N: with D = 1 every triplet is collinear, and with N = 2 every
# cosine is a constant 0 or 1; the exact angle gradient is 0, and what is left
# of the cancelling terms is rounding noise (at these small N).
EMULATION_NOISE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 1e-3}
# Absolute floors: a quantity that is exactly 0 in float64 (a loss at N = 2,
# where both normalised distances are 1; a gradient through coincident
# points) may be a rounding error squared here; float16 rounds subnormal
# results (below 6e-5) to multiples of 2^-24.
TINY = 1e-20
KERNEL_FLOOR = {torch.float64: TINY, torch.float32: TINY, torch.float16: 2.0**-24, torch.bfloat16: TINY}


def assert_close(actual, expected, rtol, atol, what=""):
    """|actual - expected| <= atol + rtol |expected| elementwise; the message names the worst element."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    if not bool((err <= bound).all()):
        idx = int(torch.argmax(err - bound))
        flat_a, flat_e = actual.flatten(), expected.flatten()
        raise AssertionError(f"{what}: worst element {idx}: {flat_a[idx].item()!r} vs {flat_e[idx].item()!r} "
                             f"(abs err {err.flatten()[idx].item():.3e}, rtol={rtol}, atol={atol})")


def max_rel_err(actual, truth):
    """max |actual - truth| / max |truth|, computed in float64 on truth's device (the result does not depend on it)."""
    t = truth.detach().double()
    a = actual.detach().to(device=t.device, dtype=torch.float64)
    return float((a - t).abs().max() / t.abs().max().clamp_min(1e-300))


def value_and_grads(fn, *inputs):
    """(fn(*inputs), its gradients w.r.t. the inputs that require grad, in order)."""
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, [x for x in inputs if x.requires_grad]))


def float32_errors(fn, x64, y64, truth, truth_grad):
    """max_rel_err of fn's value and gradient (w.r.t. its first input) on the float32 roundings of x64, y64."""
    val, grad = value_and_grads(fn, x64.float().requires_grad_(True), y64.float())
    return max_rel_err(val, truth), max_rel_err(grad, truth_grad)


def eager_and_compiled(f, s, t):
    """[(value, gradient w.r.t. s)] of f(s, t) eagerly and under torch.compile(fullgraph=True)."""
    return [value_and_grads(g, s, t) for g in (f, torch.compile(f, fullgraph=True))]


def weighted_grads(out, inputs, seed=0):
    """Gradients of <out, random float64-drawn weights> w.r.t. the inputs that require grad."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    return torch.autograd.grad(out, [x for x in inputs if x.requires_grad], w)


def float64_truth(loss, kind, seeds, n=64, d=256):
    """Features x64, y64 of a kind, and loss(x64, y64) with its gradient w.r.t. x64, all in float64."""
    x64 = make_features(n, d, seed=seeds[0], kind=kind)
    y64 = make_features(n, d, seed=seeds[1], kind=kind)
    return (x64, y64, *value_and_grads(loss, x64.clone().requires_grad_(True), y64))
