"""The float64 scratch the CPU kernels keep between calls (csrc/core/scratch_cache.h): the angle family's centred
copies of the features, reused by the next call instead of freed and faulted in again.

A call must not depend on what a reused buffer held (every value it reads is written first), the cache must hold at
most two buffers of at most 64 MiB, and releasing it must free them. The values are checked against the float64
reference, and the same call is compared bit for bit with the cache empty and with it full of another call's
data."""
import pytest
import torch

import rkd_ext
from rkd_ext import reference
from rkd_ext.testing import make_features

ops = torch.ops.rkd_ext
F64 = 8
LIMIT = 64 << 20


def angle_loss_and_grad(n, d, seed):
    s = make_features(n, d, seed=seed, requires_grad=True, dtype=torch.float32, draw_dtype=torch.float32)
    t = make_features(n, d, seed=seed + 1, dtype=torch.float32, draw_dtype=torch.float32)
    value = rkd_ext.rkd_angle_loss(s, t)
    value.backward()
    return s, t, value.detach(), s.grad


def test_reused_buffers_give_the_same_bits_and_the_reference():
    ops._cpu_release_scratch()
    s, t, fresh, fresh_grad = angle_loss_and_grad(24, 300, seed=3)
    # Larger buffers of other values in the cache: the next call at the first size takes one of them.
    angle_loss_and_grad(48, 2100, seed=7)
    assert ops._cpu_scratch_bytes() >= 48 * 2100 * F64
    _, _, reused, reused_grad = angle_loss_and_grad(24, 300, seed=3)
    assert torch.equal(fresh, reused) and torch.equal(fresh_grad, reused_grad)

    s64 = s.detach().double().requires_grad_()
    expected = reference.angle_loss(s64, t.double())
    expected.backward()
    torch.testing.assert_close(reused.double(), expected.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(reused_grad.double(), s64.grad, rtol=1e-4, atol=1e-7)


def test_cache_keeps_the_two_largest_buffers_and_releases_them():
    ops._cpu_release_scratch()
    assert ops._cpu_scratch_bytes() == 0
    x = make_features(40, 1000, seed=1, dtype=torch.float32, draw_dtype=torch.float32)
    rkd_ext.angle_tensor(x)
    assert ops._cpu_scratch_bytes() == 40 * 1000 * F64
    # Two inputs of other sizes: the cache ends with the two largest of the three buffers.
    s = make_features(32, 3000, seed=2, dtype=torch.float32, draw_dtype=torch.float32)
    t = make_features(32, 700, seed=3, dtype=torch.float32, draw_dtype=torch.float32)
    rkd_ext.rkd_angle_loss(s, t)
    assert ops._cpu_scratch_bytes() == (32 * 3000 + 40 * 1000) * F64
    ops._cpu_release_scratch()
    assert ops._cpu_scratch_bytes() == 0


def test_buffers_over_the_limit_are_freed():
    ops._cpu_release_scratch()
    d = LIMIT // (16 * F64) + 8  # 16 rows of this many float64 values: just over 64 MiB
    x = make_features(16, d, seed=1, dtype=torch.float32, draw_dtype=torch.float32)
    rkd_ext.angle_tensor(x)
    assert ops._cpu_scratch_bytes() == 0
    rkd_ext.angle_tensor(x[:, : d // 2])
    assert ops._cpu_scratch_bytes() == 16 * (d // 2) * F64
    ops._cpu_release_scratch()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_reuse_the_same_buffers(dtype):
    ops._cpu_release_scratch()
    x = make_features(20, 400, seed=4, dtype=dtype, draw_dtype=torch.float32)
    first = rkd_ext.angle_tensor(x)
    held = ops._cpu_scratch_bytes()
    assert held == 20 * 400 * F64
    again = rkd_ext.angle_tensor(x)
    assert ops._cpu_scratch_bytes() == held
    assert torch.equal(first, again)
    torch.testing.assert_close(first.double(), reference.angle_tensor(x.double()), rtol=0,
                               atol=1e-12 if dtype == torch.float64 else 1e-2)
