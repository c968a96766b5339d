"""The CPU's serial threshold (csrc/core/serial_work.h): calls below it open no parallel region, calls above it
do, and a call's outputs are the same bits either way.

The parallel regions are counted by the extension (rkd_ext's _cpu_parallel_regions op), so the threshold's
decision is observed directly; the outputs are compared with the same call made through the thread pool."""
import math

import pytest
import torch

import rkd_ext
from conftest import cpu_serial_work
from rkd_ext.testing import make_features

ops = torch.ops.rkd_ext


def regions(fn):
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
