"""gather_distributed: RKD relations over the global batch of a data-parallel job.

Two gloo processes on CPU, each with different data and a different batch
size. Oracle: the reference loss of a single process on the concatenated
batch (float64), whose parameter gradients DistributedDataParallel's averaged
gradients must equal.
"""
import os
import tempfile
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import rkd_ext
from rkd_ext import distributed
from rkd_ext import reference as R
from rkd_ext.testing import assert_close

WORLD = 2
SIZES = (3, 5)  # unequal on purpose: the last batch of an epoch can differ per rank
D_IN, D_S, D_T = 6, 4, 5
TOL = (1e-10, 1e-12)

LOSSES = {
    "distance": (lambda: rkd_ext.RKDDistanceLoss(gather_distributed=True), R.distance_loss),
    "angle": (lambda: rkd_ext.RKDAngleLoss(gather_distributed=True), R.angle_loss),
    "full": (lambda: rkd_ext.RKDLoss(distance_weight=2.0, angle_weight=3.0, gather_distributed=True),
             lambda s, t: 2.0 * R.distance_loss(s, t) + 3.0 * R.angle_loss(s, t)),
}


def _data(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return (torch.randn(SIZES[rank], D_IN, generator=g, dtype=torch.float64),
            torch.randn(SIZES[rank], D_T, generator=g, dtype=torch.float64))


def _student():
    torch.manual_seed(0)
    return nn.Linear(D_IN, D_S).double()


def _global_batch():
    xs, ts = zip(*(_data(r) for r in range(WORLD)))
    return torch.cat(xs), torch.cat(ts)


def _check_ddp_update_equals_single_process(rank, names=tuple(LOSSES), compiled=False):
    x, t = _data(rank)
    xs, ts = _global_batch()
    for name in names:
        make_loss, reference = LOSSES[name]
        if compiled:
            # The gather is a graph break; the rest must still compile and match.
            name += " compiled"
            criterion = torch.compile(make_loss(), backend="aot_eager")
        else:
            criterion = make_loss()
        model = DistributedDataParallel(_student())
        teacher = t.clone().requires_grad_()
        loss = criterion(model(x), teacher)
        loss.backward()

        single = _student()
        expected = reference(single(xs), ts)
        expected.backward()
        assert_close(loss, expected, *TOL, f"rank {rank} {name} value")
        for (pname, p), q in zip(model.module.named_parameters(), single.parameters()):
            assert_close(p.grad, q.grad, *TOL, f"rank {rank} {name} grad of {pname}")
        assert teacher.grad is None, f"rank {rank} {name}: the teacher is gathered without gradient"


def _check_feature_gradient(rank):
    # Every rank holds the same global loss; the gather's backward sums the
    # copies' gradients, so a rank's features get WORLD times the gradient of one copy.
    x, t = _data(rank)
    xs, ts = _global_batch()
    s = x[:, :D_S].clone().requires_grad_()
    gathered_s, gathered_t = distributed.gather_student_teacher(s, t)
    assert_close(gathered_t, ts, 0, 0, "gathered teacher")
    assert not gathered_t.requires_grad
    rkd_ext.rkd_distance_loss(gathered_s, gathered_t).backward()

    s_all = xs[:, :D_S].clone().requires_grad_()
    R.distance_loss(s_all, ts).backward()
    start = sum(SIZES[:rank])
    assert_close(s.grad, WORLD * s_all.grad[start:start + SIZES[rank]], *TOL, f"rank {rank} feature grad")


def _worker(rank, init_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        assert distributed.world_size() == WORLD
        _check_ddp_update_equals_single_process(rank)
        _check_ddp_update_equals_single_process(rank, names=("full",), compiled=True)
        _check_feature_gradient(rank)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_ddp_global_batch_update_equals_single_process():
    with tempfile.TemporaryDirectory() as tmp:
        context = mp.start_processes(_worker, args=(os.path.join(tmp, "store"),), nprocs=WORLD, join=False,
                                     start_method="spawn")
        deadline = time.monotonic() + 120
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                for p in context.processes:
                    p.terminate()
                pytest.fail("the distributed workers did not finish within 120 s")


def test_without_process_group_the_local_batch_is_global():
    assert distributed.world_size() == 1
    s = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    loss = rkd_ext.RKDLoss(gather_distributed=True)(s, t)
    expected = 25 * R.distance_loss(s, t.detach()) + 50 * R.angle_loss(s, t.detach())
    assert_close(loss, expected, *TOL, "value")
    loss.backward()
    assert t.grad is None


def test_gather_checks_its_arguments():
    with pytest.raises(ValueError, match="same batch size"):
        distributed.gather_student_teacher(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(TypeError, match="torch.Tensors"):
        distributed.gather_student_teacher(torch.randn(3, 2), [1, 2, 3])
