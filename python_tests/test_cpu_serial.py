"""The CPU's serial threshold, contention guard and region chunks (csrc/core/serial_work.h): calls below the
threshold open no parallel region, calls above it do, calls during a contention hold do not, and a call's outputs
are the same bits either way.

The parallel regions are counted by the extension (rkd_ext's _cpu_parallel_regions op), so the decisions are
observed directly; the outputs are compared with the same call made through the thread pool. Region counts are
taken with the guard off, so that a neighbour on the machine running the tests cannot change them."""
import contextlib
import math
import os
import subprocess
import sys
import time

import pytest
import torch

import rkd_ext
from conftest import cpu_contention_hold, cpu_pool, cpu_serial_work
from rkd_ext.testing import make_features

ops = torch.ops.rkd_ext


def regions(fn, guard=False):
    """The parallel regions fn opens: with the contention guard off, or (guard) as it stands."""
    with contextlib.nullcontext() if guard else cpu_contention_hold(0.0):
        before = ops._cpu_parallel_regions()
        fn()
        return ops._cpu_parallel_regions() - before


def loss_and_grads(loss, n, ds, dt):
    s = make_features(n, ds, seed=1, requires_grad=True)
    t = make_features(n, dt, seed=2)
    value = loss(s, t)
    value.backward()
    return value.detach(), s.grad


LOSSES = [rkd_ext.rkd_distance_loss, rkd_ext.rkd_angle_loss, lambda s, t: rkd_ext.rkd_loss(s, t)]


@pytest.mark.parametrize("loss", LOSSES, ids=["distance", "angle", "rkd"])
def test_default_threshold_decides_by_work(loss):
    # N = 16, D = 512 (work 2.7e5 element operations) below the threshold: no parallel region, forward or
    # backward. N = 64, D = 512 (4.2e6): the thread pool.
    assert ops._cpu_serial_work() == pytest.approx(3e5)
    if torch.get_num_threads() < 2:
        pytest.skip("one intra-op thread: nothing runs in parallel")
    assert regions(lambda: loss_and_grads(loss, 16, 512, 512)) == 0
    assert regions(lambda: loss_and_grads(loss, 64, 512, 512)) > 0


@pytest.mark.parametrize("loss", LOSSES, ids=["distance", "angle", "rkd"])
@pytest.mark.parametrize("n, ds, dt", [(16, 512, 300), (70, 130, 257)])
def test_serial_and_parallel_give_the_same_bits(loss, n, ds, dt):
    with cpu_serial_work(0.0):
        parallel = loss_and_grads(loss, n, ds, dt)
    with cpu_serial_work(math.inf):
        assert regions(lambda: None) == 0
        serial_regions = regions(lambda: loss_and_grads(loss, n, ds, dt))
        serial = loss_and_grads(loss, n, ds, dt)
    assert serial_regions == 0
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))


def test_tensor_ops_and_rows_serial():
    x = make_features(40, 70, seed=3, requires_grad=True)
    with cpu_serial_work(math.inf):
        n = regions(lambda: (rkd_ext.angle_tensor(x).sum() + rkd_ext.pairwise_distance(x).sum()).backward())
        rows = regions(lambda: ops.pair_matrix_rows(x.detach(), 0, 20, "dist", 1e-12))
    assert n == 0 and rows == 0


def test_setting_rejects_negative_work():
    with pytest.raises((ValueError, RuntimeError), match="work must be >= 0"):
        ops._set_cpu_serial_work(-1.0)
    assert ops._cpu_serial_work() == pytest.approx(3e5)


def test_contention_hold_runs_calls_serial_with_the_same_bits():
    # A hold, as the guard's ledger starts one: calls above the threshold run on the calling thread until it
    # ends, with the pool's bits; afterwards they use the pool again.
    if torch.get_num_threads() < 2:
        pytest.skip("one intra-op thread: nothing runs in parallel")
    pooled = []
    assert regions(lambda: pooled.append(loss_and_grads(rkd_ext.rkd_distance_loss, 64, 512, 512))) > 0
    held = []
    with cpu_contention_hold(60.0):
        ops._cpu_mark_contended()
        assert regions(lambda: held.append(loss_and_grads(rkd_ext.rkd_distance_loss, 64, 512, 512)), guard=True) == 0
        assert regions(lambda: loss_and_grads(rkd_ext.rkd_angle_loss, 64, 512, 512), guard=True) == 0
    assert all(torch.equal(a, b) for a, b in zip(held[0], pooled[0]))
    assert regions(lambda: loss_and_grads(rkd_ext.rkd_distance_loss, 64, 512, 512), guard=True) > 0


def test_guard_catches_a_busy_neighbour():
    # The plant: a busy process on every core, so that the pool's workers wait for the scheduler. On torch's
    # pool, whose regions wait for every worker to arrive, the guard must notice (a hold counted) and hold (a
    # call above the threshold opens no region). (The kernels' own pool does not wait for a worker that has
    # not started, so its regions seldom lose to the calling thread alone, and the guard seldom holds there.)
    if torch.get_num_threads() < 2:
        pytest.skip("one intra-op thread: nothing runs in parallel")
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
             for _ in range(os.cpu_count() or 2)]
    try:
        with cpu_contention_hold(60.0), cpu_pool(0):
            before = ops._cpu_contention_holds()
            deadline, held = time.monotonic() + 60.0, False
            while not held and time.monotonic() < deadline:
                held = regions(lambda: loss_and_grads(rkd_ext.rkd_distance_loss, 128, 512, 512), guard=True) == 0
            found = ops._cpu_contention_holds() - before
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert found >= 1 and held


def test_contention_hold_rejects_bad_values():
    for bad in (-1.0, 1e9):
        with pytest.raises((ValueError, RuntimeError), match="seconds must be within"):
            ops._set_cpu_contention_hold(bad)
    assert ops._cpu_contention_hold() == pytest.approx(0.25)


def test_region_chunks_setting():
    # Bitwise equality across chunkings is checked by every op's determinism test (conftest's run_with_threads).
    assert ops._cpu_region_chunks() == 4
    for bad in (0, 65, -1):
        with pytest.raises((ValueError, RuntimeError), match="chunks must be within"):
            ops._set_cpu_region_chunks(bad)
    assert ops._cpu_region_chunks() == 4
