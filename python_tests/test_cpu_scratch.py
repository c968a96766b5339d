"""The scratch memory the CPU kernels keep between calls (csrc/core/scratch_cache.h): buffers of at least 256 KiB
(the float64 copies of the centred features that the small-batch float64 Gram product reads, the angle tensor
backward's N^3 copies of its upstream gradient, the backend's other large scratch), reused by the next call
instead of freed and faulted in again.

A call must not depend on what a reused buffer held (every value it reads is written first), the cache must hold at
most six buffers and 64 MiB in all, the largest first, and releasing it must free them (the policy is driven
directly through the _cpu_scratch_cycle op). The values are checked
against the float64 reference, and the same call is compared bit for bit with the cache empty and with it full of
other calls' data. A fork while another thread uses the cache leaves the child a usable one."""
import os
import threading
import time

import pytest
import torch

import rkd_ext
from rkd_ext import reference
from rkd_ext.testing import make_features

from conftest import in_forked_child

ops = torch.ops.rkd_ext
F64 = 8
MIN_BYTES = 256 << 10
LIMIT = 64 << 20


def features(n, d, seed, dtype=torch.float32, requires_grad=False):
    return make_features(n, d, seed=seed, requires_grad=requires_grad, dtype=dtype, draw_dtype=torch.float32)


def angle_loss_and_grad(n, d, seed):
    s = features(n, d, seed, requires_grad=True)
    t = features(n, d, seed + 1)
    value = rkd_ext.rkd_angle_loss(s, t)
    value.backward()
    return s, t, value.detach(), s.grad


def angle_tensor_and_grad(n, d, seed):
    x = features(n, d, seed, requires_grad=True)
    g = torch.Generator().manual_seed(seed)
    up = torch.randn((n, n, n), generator=g)
    a = rkd_ext.angle_tensor(x)
    a.backward(up)
    return x, up, a.detach(), x.grad


def test_reused_buffers_give_the_same_bits_and_the_reference():
    ops._cpu_release_scratch()
    s, t, fresh, fresh_grad = angle_loss_and_grad(32, 1100, seed=3)  # copies of 282 KB: cached
    assert ops._cpu_scratch_bytes() >= 32 * 1100 * F64
    # Only larger buffers of other values in the cache: the next call at the first size takes them.
    ops._cpu_release_scratch()
    angle_loss_and_grad(48, 2100, seed=7)
    assert ops._cpu_scratch_bytes() >= 2 * 48 * 2100 * F64
    _, _, reused, reused_grad = angle_loss_and_grad(32, 1100, seed=3)
    assert torch.equal(fresh, reused) and torch.equal(fresh_grad, reused_grad)

    s64 = s.detach().double().requires_grad_()
    expected = reference.angle_loss(s64, t.double())
    expected.backward()
    torch.testing.assert_close(reused.double(), expected.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(reused_grad.double(), s64.grad, rtol=1e-4, atol=1e-7)


def test_angle_tensor_backward_reuses_its_cubic_buffers():
    # At N = 72 the backward's float64 copies of the (N, N, N) upstream gradient are 3 MB each.
    ops._cpu_release_scratch()
    x, up, fresh, fresh_grad = angle_tensor_and_grad(72, 64, seed=5)
    assert ops._cpu_scratch_bytes() >= 2 * 72 ** 3 * F64
    ops._cpu_release_scratch()
    angle_tensor_and_grad(80, 64, seed=9)  # only larger copies of other values in the cache
    _, _, reused, reused_grad = angle_tensor_and_grad(72, 64, seed=5)
    assert torch.equal(fresh, reused) and torch.equal(fresh_grad, reused_grad)

    # The reference's gradient through the constant entries (i, i, k) and (i, j, i) is 0/0: compared without them.
    n = up.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    up_masked = up.double().masked_fill(eye[:, :, None] | eye[:, None, :], 0.0)
    (masked_grad,) = torch.autograd.grad(rkd_ext.angle_tensor(x), x, up_masked.float())
    assert torch.equal(masked_grad, reused_grad)  # ours ignores them
    x64 = x.detach().double().requires_grad_()
    reference.angle_tensor(x64).backward(up_masked)
    torch.testing.assert_close(reused_grad.double(), x64.grad, rtol=1e-4, atol=1e-6)


def test_small_buffers_are_not_kept_and_release_frees_the_rest():
    ops._cpu_release_scratch()
    rkd_ext.angle_tensor(features(20, 400, seed=1))  # a 64 KB copy: the heap's
    assert ops._cpu_scratch_bytes() == 0
    rkd_ext.angle_tensor(features(40, 1000, seed=1))  # 320 KB: kept
    assert ops._cpu_scratch_bytes() == 40 * 1000 * F64
    # Two inputs: the student's copy (768 KB) is kept beside the first; the teacher's (179 KB) is not.
    rkd_ext.rkd_angle_loss(features(32, 3000, seed=2), features(32, 700, seed=3))
    assert ops._cpu_scratch_bytes() == (32 * 3000 + 40 * 1000) * F64
    ops._cpu_release_scratch()
    assert ops._cpu_scratch_bytes() == 0


def test_the_bound_keeps_the_largest_buffers_under_64_mib():
    ops._cpu_release_scratch()
    over = LIMIT // (16 * F64) + 8  # 16 rows of this many float64 values: just over 64 MiB
    rkd_ext.angle_tensor(features(16, over, seed=1))
    assert ops._cpu_scratch_bytes() == 0
    half = over // 2  # 32 MiB: kept
    rkd_ext.angle_tensor(features(16, half, seed=1))
    assert ops._cpu_scratch_bytes() == 16 * half * F64
    # 40 MiB more would pass the bound: the 32 MiB buffer, smaller, makes way for it.
    larger = (40 << 20) // (16 * F64)
    rkd_ext.angle_tensor(features(16, larger, seed=1))
    assert ops._cpu_scratch_bytes() == 16 * larger * F64
    ops._cpu_release_scratch()


MIB = 1 << 20


def test_a_buffer_that_does_not_fit_beside_larger_ones_leaves_the_cache_as_it_was():
    ops._cpu_release_scratch()
    ops._cpu_scratch_cycle(50 * MIB, 5 * MIB)
    assert ops._cpu_scratch_bytes() == 55 * MIB
    # The 50 MiB buffer is taken and given back, then a new 20 MiB one, which does not fit beside it: the
    # 5 MiB buffer stays (freeing it would not make room).
    ops._cpu_scratch_cycle(50 * MIB, 20 * MIB)
    assert ops._cpu_scratch_bytes() == 55 * MIB
    # A 30 MiB buffer, given back first, then a new 40 MiB one: the 30 MiB buffer and the 5 MiB one make way.
    ops._cpu_release_scratch()
    ops._cpu_scratch_cycle(30 * MIB, 5 * MIB)
    ops._cpu_scratch_cycle(30 * MIB, 40 * MIB)
    assert ops._cpu_scratch_bytes() == 40 * MIB
    ops._cpu_release_scratch()


def test_at_most_six_buffers_the_largest():
    ops._cpu_release_scratch()
    sizes = [(k + 1) * MIB for k in range(8)]  # 1..8 MiB, 36 MiB in all: under the bound
    for first, second in zip(sizes[::2], sizes[1::2]):  # each pair larger than everything held before it
        ops._cpu_scratch_cycle(first, second)
    assert ops._cpu_scratch_bytes() == sum(sizes[2:])
    # Buffers below 256 KiB are never kept.
    ops._cpu_release_scratch()
    ops._cpu_scratch_cycle(MIN_BYTES - 8, 0)
    assert ops._cpu_scratch_bytes() == 0
    ops._cpu_scratch_cycle(MIN_BYTES, 0)
    assert ops._cpu_scratch_bytes() == MIN_BYTES
    ops._cpu_release_scratch()


def test_cycle_rejects_negative_sizes():
    with pytest.raises(ValueError, match="_cpu_scratch_cycle: sizes must be >= 0"):
        ops._cpu_scratch_cycle(-1, 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_reuse_the_same_buffers(dtype):
    ops._cpu_release_scratch()
    x = features(40, 1000, seed=4, dtype=dtype)
    first = rkd_ext.angle_tensor(x)
    held = ops._cpu_scratch_bytes()
    assert held == 40 * 1000 * F64
    again = rkd_ext.angle_tensor(x)
    assert ops._cpu_scratch_bytes() == held
    assert torch.equal(first, again)
    torch.testing.assert_close(first.double(), reference.angle_tensor(x.double()), rtol=0,
                               atol=1e-12 if dtype == torch.float64 else 1e-2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Python 3.12's warning on fork with threads running
def test_a_fork_while_another_thread_holds_the_cache_leaves_the_child_able_to_use_it():
    # A data loader forks its workers from a process whose other threads may be inside an op (torch.ops calls
    # run without the GIL). The plant: another thread holds the cache's lock for 0.5 s, as a call in the middle of
    # a slot update would, and this one forks meanwhile. The child's first large scratch must not wait for a
    # lock that no thread of the child will ever release.
    thread = threading.Thread(target=ops._cpu_scratch_hold, args=(0.5,))
    thread.start()
    time.sleep(0.1)
    assert thread.is_alive()  # the lock is held now
    def child():  # uses the cache
        ops._cpu_scratch_cycle(1 << 20, 2 << 20)
        return True

    status = in_forked_child(child, 10.0)
    thread.join()
    assert status is not None, "the child hung on the cache's lock"
    assert status == 0


def test_hold_rejects_bad_values():
    for bad in (-1.0, 11.0):
        with pytest.raises(ValueError, match="_cpu_scratch_hold: seconds"):
            ops._cpu_scratch_hold(bad)
