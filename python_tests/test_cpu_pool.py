"""The CPU kernels' own worker pool (csrc/cpu/cpu_pool.h): its workers follow torch's thread count and do take
part, a forked child gets working workers of its own, two threads calling at once get the bits of one, and the
setting rejects what it does not know. Bitwise equality with torch's pool and with one thread is checked by every
op's determinism test (conftest's run_with_threads); the pool's own synchronisation under a thread sanitizer by
test_cpu_pool_tsan.py."""
import os
import threading
import time

import pytest
import torch

import rkd_ext
from conftest import cpu_contention_hold, cpu_pool, cpu_serial_work, in_forked_child
from rkd_ext.testing import make_features

ops = torch.ops.rkd_ext

pytestmark = pytest.mark.skipif(os.cpu_count() is None or os.cpu_count() < 2, reason="one core")


def _call(n=96, d=512, seed=1):
    s = make_features(n, d, seed=seed, requires_grad=True)
    t = make_features(n, d, seed=seed + 1)
    value = rkd_ext.rkd_loss(s, t)
    value.backward()
    return value.detach(), s.grad


def _workers_take_part(deadline_s=20.0):
    """Whether the pool's workers run chunks of some call within the deadline (a loaded machine may leave a
    worker without a core for a while; the caller then runs every chunk itself)."""
    before = ops._cpu_pool_worker_chunks()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        _call()
        if ops._cpu_pool_worker_chunks() > before:
            return True
    return False


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    with cpu_serial_work(0.0), cpu_contention_hold(0.0), cpu_pool(1):
        yield
    torch.set_num_threads(before)


def test_setting_default_and_bad_values():
    assert ops._cpu_pool() == 1
    for bad in (-1, 2):
        with pytest.raises((ValueError, RuntimeError), match="kind must be 0"):
            ops._set_cpu_pool(bad)
    assert ops._cpu_pool() == 1


def test_workers_follow_torch_threads_and_take_part(threads):
    for n in (3, 2):
        torch.set_num_threads(n)
        _call()
        assert ops._cpu_pool_workers() == n - 1
        assert _workers_take_part()


def test_torch_pool_runs_no_chunk_on_the_own_workers(threads):
    torch.set_num_threads(2)
    _call()
    with cpu_pool(0):
        before = ops._cpu_pool_worker_chunks()
        for _ in range(5):
            _call()
        assert ops._cpu_pool_worker_chunks() == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_has_workers_of_its_own(threads):
    # The parent's workers are threads the child does not have: the child must make its own, not count on them
    # (without them its regions would run on the calling thread alone, and a change of thread count would wait
    # on threads that do not exist).
    torch.set_num_threads(2)
    assert _workers_take_part()
    status = in_forked_child(lambda: _workers_take_part(10.0), 60.0)
    assert status is not None, "the child hung"
    assert status == 0, "the child's workers ran no chunk"


def test_two_threads_calling_at_once_get_the_bits_of_one(threads):
    # One caller at a time has the pool; a region of another thread meanwhile runs on torch's pool. Either way
    # the bits of a call alone.
    torch.set_num_threads(2)
    alone = [_call(seed=2 * k + 1) for k in range(2)]
    got = [[], []]

    def loop(k):
        for _ in range(20):
            got[k].append(_call(seed=2 * k + 1))

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for k in range(2):
        assert len(got[k]) == 20
        for value, grad in got[k]:
            assert torch.equal(value, alone[k][0]) and torch.equal(grad, alone[k][1])
