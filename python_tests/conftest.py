"""Shared test vocabulary: devices, dtypes, tolerances, and a few helpers.

Every op test is parametrised over ``DEVICES`` (CUDA cases skip cleanly when no
GPU is visible) and, where it makes sense, ``DTYPES``; tolerances come from
``TOL`` so that a change of policy happens in one place.
"""
import os

import pytest
import torch

# Benchmarks and CI must not pass silently on the pure-PyTorch fallback.
os.environ.setdefault("RKD_EXT_REQUIRE_EXT", "1")

import rkd_ext  # noqa: E402
from rkd_ext import _ext  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
CUDA_KERNELS = HAS_CUDA and bool(_ext.build_info().get("with_cuda"))

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"),
    ]),
]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
FLOAT_DTYPES = [torch.float32, torch.float64]

# (rtol, atol) for comparing an op's output in a given dtype with the float64 reference.
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (5e-2, 1e-2),
}

cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")


def make_features(n, d, *, dtype=torch.float64, device="cpu", seed=0, kind="random", requires_grad=False):
    """A batch of n features of size d.

    kind: "random" (standard normal), "offset" (mean 100x the spread, like
    post-ReLU features), "near" (pairs of rows 1e-3 apart relative to the
    spread), "dup" (some rows exact duplicates of others).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if kind == "offset":
        x = x + 100.0
    elif kind == "near":
        half = (n + 1) // 2
        base = x[:half]
        x = torch.cat([base, base + 1e-3 * torch.randn(base.shape, generator=g, dtype=torch.float64)])[:n]
    elif kind == "dup":
        x[n // 2:] = x[: n - n // 2].clone()
    elif kind != "random":
        raise ValueError(kind)
    return x.to(dtype=dtype, device=device).requires_grad_(requires_grad)


def assert_close(actual, expected, rtol, atol, what=""):
    """torch.testing.assert_close that names the worst element in its message."""
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
    """max |actual - truth| / max |truth|, computed in float64."""
    a = actual.detach().double().cpu()
    t = truth.detach().double().cpu()
    return float((a - t).abs().max() / t.abs().max().clamp_min(1e-300))


def run_with_threads(fn, threads=(1, 2, 2)):
    """fn() under each intra-op thread count in turn; the list of its results."""
    before = torch.get_num_threads()
    try:
        out = []
        for n in threads:
            torch.set_num_threads(n)
            out.append(fn())
        return out
    finally:
        torch.set_num_threads(before)


def assert_bitwise_equal_runs(results):
    """Every run's tensors equal the first run's, bit for bit."""
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))
