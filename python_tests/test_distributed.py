"""gather_distributed (and shard): RKD relations over the global batch of a data-parallel job.

Two or three gloo processes on CPU, each with different data and a different
batch size. Oracle: the reference loss of a single process on the
concatenated batch (float64), whose parameter gradients
DistributedDataParallel's averaged gradients must equal.
"""
import os
import tempfile
import time
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import rkd_ext
from rkd_ext import _rows, distributed
from rkd_ext import reference as R
from rkd_ext.testing import assert_close, make_features

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


def _data(rank, sizes=SIZES):
    g = torch.Generator().manual_seed(100 + rank)
    return (torch.randn(sizes[rank], D_IN, generator=g, dtype=torch.float64),
            torch.randn(sizes[rank], D_T, generator=g, dtype=torch.float64))


def _student():
    torch.manual_seed(0)
    return nn.Linear(D_IN, D_S).double()


def _global_batch(sizes=SIZES):
    xs, ts = zip(*(_data(r, sizes) for r in range(len(sizes))))
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


NEEDS_GLOO = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")


def _spawn(worker, nprocs, *args):
    with tempfile.TemporaryDirectory() as tmp:
        context = mp.start_processes(worker, args=(os.path.join(tmp, "store"),) + args, nprocs=nprocs, join=False,
                                     start_method="spawn")
        deadline = time.monotonic() + 120
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                for p in context.processes:
                    p.terminate()
                pytest.fail("the distributed workers did not finish within 120 s")


@NEEDS_GLOO
def test_ddp_global_batch_update_equals_single_process():
    _spawn(_worker, WORLD)


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


# ---- shard=True: the global-batch loss split across ranks by anchor -----------------------

# Unequal batch sizes; with three ranks, one rank holds a single sample and one two.
SHARD_SIZES = {2: (3, 5), 3: (1, 4, 2)}

# name: (module, mode-free reference on the global batch)
SHARDED = {
    "distance": (lambda **kw: rkd_ext.RKDDistanceLoss(**kw), R.distance_loss),
    "distance sum": (lambda **kw: rkd_ext.RKDDistanceLoss(reduction="sum", beta=0.5, **kw),
                     lambda s, t: R.distance_loss(s, t, beta=0.5, reduction="sum")),
    "angle": (lambda **kw: rkd_ext.RKDAngleLoss(**kw), R.angle_loss),
    "angle sum": (lambda **kw: rkd_ext.RKDAngleLoss(reduction="sum", beta=0.0, **kw),
                  lambda s, t: R.angle_loss(s, t, beta=0.0, reduction="sum")),
    "full": (lambda **kw: rkd_ext.RKDLoss(distance_weight=2.0, angle_weight=3.0, **kw), LOSSES["full"][1]),
}


def _ddp_step(criterion, x, teacher):
    """Loss and DDP-averaged parameter gradients of a Linear student."""
    model = DistributedDataParallel(_student())
    loss = criterion(model(x), teacher)
    loss.backward()
    return loss, [p.grad for p in model.module.parameters()]


def _single_process(reference, xs, ts):
    single = _student()
    expected = reference(single(xs), ts)
    expected.backward()
    return expected, [p.grad for p in single.parameters()]


def _check_sharded_ddp_update(rank, sizes):
    x, t = _data(rank, sizes)
    xs, ts = _global_batch(sizes)
    for name, (make, reference) in SHARDED.items():
        sharded = make(gather_distributed=True, shard=True)
        for what, criterion in ((name, sharded), (name + " compiled", torch.compile(sharded, backend="aot_eager"))):
            if what.endswith("compiled") and name != "full":
                continue
            loss, grads = _ddp_step(criterion, x, t)
            expected, expected_grads = _single_process(reference, xs, ts)
            assert_close(loss, expected, *TOL, f"rank {rank} {what} value")
            for g, e, pname in zip(grads, expected_grads, ("weight", "bias")):
                assert_close(g, e, *TOL, f"rank {rank} {what} grad of {pname}")
        # The gathered mode computes the same update.
        loss, grads = _ddp_step(make(gather_distributed=True), x, t)
        sharded_loss, sharded_grads = _ddp_step(sharded, x, t)
        assert_close(sharded_loss, loss, *TOL, f"rank {rank} {name}: sharded vs gathered value")
        for g, e in zip(sharded_grads, grads):
            assert_close(g, e, *TOL, f"rank {rank} {name}: sharded vs gathered gradient")


def _check_sharded_teacher_gradient(rank, sizes, pure_pytorch):
    # Only some ranks' teachers require grad (rank 0, and rank 2 of three): each of them receives
    # W dL/dT_r, like the students, whose gradients must not change. Run with the row operators named in
    # pure_pytorch replaced by their fallback. D = 40: torch's products give s_ij on one rank and s_ji on
    # another that differ in the last bits, which the angle kernels' law of cosines would amplify by 1/eps
    # at the degenerate triplets unless the gathered s is made symmetric.
    world = len(sizes)
    rows = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
    s_all = make_features(sum(sizes), 40, seed=20, requires_grad=True)
    t_all = make_features(sum(sizes), D_T, seed=21, kind="near", requires_grad=True)
    s = s_all.detach()[rows].clone().requires_grad_()
    teacher = t_all.detach()[rows].clone().requires_grad_(rank % 2 == 0)
    kernel = _rows.kernel
    _rows.kernel = lambda name, x: None if name in pure_pytorch else kernel(name, x)
    try:
        loss = distributed.sharded_loss(s, teacher, distance_weight=2.0, angle_weight=3.0)
        loss.backward()
    finally:
        _rows.kernel = kernel
    expected = 2.0 * R.distance_loss(s_all, t_all) + 3.0 * R.angle_loss(s_all, t_all)
    expected.backward()
    what = f"rank {rank}, pure PyTorch {', '.join(pure_pytorch) or 'none'}:"
    assert_close(loss, expected, *TOL, f"{what} value")
    assert_close(s.grad, world * s_all.grad[rows], *TOL, f"{what} student grad")
    if teacher.requires_grad:
        assert_close(teacher.grad, world * t_all.grad[rows], *TOL, f"{what} teacher grad")


def _check_sharded_float32(rank, sizes):
    x, t = _data(rank, sizes)
    xs, ts = _global_batch(sizes)
    s = x[:, :D_S].float().requires_grad_()
    loss = rkd_ext.RKDLoss(gather_distributed=True, shard=True)(s, t.float())
    loss.backward()
    s_all = xs[:, :D_S].clone().requires_grad_()
    expected = 25 * R.distance_loss(s_all, ts) + 50 * R.angle_loss(s_all, ts)
    expected.backward()
    rows = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
    assert loss.dtype == torch.float32 and s.grad.dtype == torch.float32
    assert_close(loss, expected, 1e-5, 1e-6, f"rank {rank} float32 value")
    assert_close(s.grad, len(sizes) * s_all.grad[rows], 1e-5, 1e-6 * float(s_all.grad.abs().max()),
                 f"rank {rank} float32 grad")


def _check_sharded_without_triplets(rank, world):
    # One sample per rank and two ranks: the global batch has pairs but no triplets.
    x, t = _data(rank)
    xs, ts = _global_batch()
    s = x[:1, :D_S].clone().requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = rkd_ext.RKDLoss(distance_weight=2.0, angle_weight=3.0, gather_distributed=True, shard=True)(s, t[:1])
    assert any("no triplets" in str(w.message) for w in caught)
    loss.backward()
    firsts = [sum(SIZES[:r]) for r in range(world)]
    s_all = xs[firsts, :D_S].clone().requires_grad_()
    expected = 2.0 * R.distance_loss(s_all, ts[firsts])
    expected.backward()
    assert_close(loss, expected, *TOL, f"rank {rank} value")
    assert_close(s.grad, world * s_all.grad[rank:rank + 1], *TOL, f"rank {rank} grad")


def _check_sharded_errors_reach_every_rank(rank):
    # Bad input on rank 1 is an error on every rank, not a hang in the next collective.
    x, t = _data(rank)
    s = x[:, :D_S].clone().requires_grad_()
    criterion = rkd_ext.RKDAngleLoss(gather_distributed=True, shard=True)
    message = "same batch size" if rank == 1 else "the inputs of rank 1 were refused"
    with pytest.raises(ValueError, match=message):
        criterion(s, t[:2] if rank == 1 else t)
    # A loss differentiated on some ranks only would leave the others waiting in backward.
    with torch.set_grad_enabled(rank != 0), \
            pytest.raises(RuntimeError, match="differentiable on every rank or on none"):
        criterion(s, t)
    with torch.no_grad():  # on every rank: fine, an evaluation
        assert torch.isfinite(criterion(s, t))


def _shard_worker(rank, init_file, world):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        sizes = SHARD_SIZES[world]
        _check_sharded_ddp_update(rank, sizes)
        for pure_pytorch in ((), ("pair_matrix_rows",), _rows.FALLBACK):
            _check_sharded_teacher_gradient(rank, sizes, pure_pytorch)
        _check_sharded_float32(rank, sizes)
        if world == 2:
            _check_sharded_without_triplets(rank, world)
            _check_sharded_errors_reach_every_rank(rank)
    finally:
        dist.destroy_process_group()


@NEEDS_GLOO
@pytest.mark.parametrize("world", sorted(SHARD_SIZES))
def test_sharded_ddp_update_equals_single_process(world):
    _spawn(_shard_worker, world, world)


@pytest.fixture
def one_rank_group(tmp_path):
    """A process group of one rank: the sharded code path with every collective trivial."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(params=["kernels", "pure PyTorch"])
def row_operators(request, monkeypatch):
    """The row operators of the compiled extension, or their pure-PyTorch fallback."""
    if request.param == "pure PyTorch":
        monkeypatch.setattr(_rows, "kernel", lambda name, x: None)
    elif _rows.kernel("angle_grad_rows", torch.empty(0)) is None:
        pytest.skip("the loaded extension has no row operators")


@NEEDS_GLOO
@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0), (2.0, 3.0)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sharded_loss_on_one_rank_is_the_plain_loss(one_rank_group, row_operators, reduction, weights):
    s = make_features(7, 4, seed=1, requires_grad=True)
    t = make_features(7, 5, seed=2, requires_grad=True)
    loss = distributed.sharded_loss(s, t, distance_weight=weights[0], angle_weight=weights[1], beta=0.5,
                                    reduction=reduction)
    expected = (weights[0] * R.distance_loss(s, t, beta=0.5, reduction=reduction)
                + weights[1] * R.angle_loss(s, t, beta=0.5, reduction=reduction))
    assert_close(loss, expected, *TOL, "value")
    for got, want, what in zip(torch.autograd.grad(loss, (s, t)), torch.autograd.grad(expected, (s, t)),
                               ("student", "teacher")):
        assert_close(got, want, *TOL, f"{what} grad")


def test_shard_without_process_group_is_the_plain_loss_teacher_included():
    s = make_features(6, 4, seed=3, requires_grad=True)
    t = make_features(6, 5, seed=4, requires_grad=True)
    loss = rkd_ext.RKDLoss(gather_distributed=True, shard=True)(s, t)
    expected = 25 * R.distance_loss(s, t) + 50 * R.angle_loss(s, t)
    assert_close(loss, expected, *TOL, "value")
    for got, want in zip(torch.autograd.grad(loss, (s, t)), torch.autograd.grad(expected, (s, t))):
        assert_close(got, want, *TOL, "grad")


MODULES = {
    "RKDDistanceLoss": rkd_ext.RKDDistanceLoss,
    "RKDAngleLoss": rkd_ext.RKDAngleLoss,
    "RKDLoss": rkd_ext.RKDLoss,
}


@pytest.mark.parametrize("name", MODULES)
def test_shard_arguments_are_checked(name):
    module = MODULES[name]
    with pytest.raises(TypeError, match=f"{name}: shard must be a bool \\(True or False\\), got 'yes' \\(str\\)"):
        module(gather_distributed=True, shard="yes")
    with pytest.raises(ValueError, match=f"{name}: shard=True .* needs gather_distributed=True"):
        module(shard=True)
    assert "shard=True" in repr(module(gather_distributed=True, shard=True))


@pytest.mark.parametrize("name", ["RKDDistanceLoss", "RKDAngleLoss"])
def test_shard_refuses_the_elementwise_loss(name):
    with pytest.raises(ValueError, match=f"{name}: the sharded mode computes reduction 'mean' or 'sum' only.*"
                                         "got 'none'"):
        MODULES[name](reduction="none", gather_distributed=True, shard=True)


def test_sharded_loss_checks_its_arguments():
    s, t = torch.randn(3, 2), torch.randn(3, 2)
    with pytest.raises(ValueError, match="sharded_loss: the sharded mode computes reduction 'mean' or 'sum'"):
        distributed.sharded_loss(s, t, distance_weight=1, angle_weight=1, reduction="none")
    with pytest.raises(ValueError, match="sharded_loss: angle_weight must be a finite number >= 0, got -1"):
        distributed.sharded_loss(s, t, distance_weight=1, angle_weight=-1)
    with pytest.raises(ValueError, match="sharded_loss: eps must be a positive finite number"):
        distributed.sharded_loss(s, t, distance_weight=1, angle_weight=1, eps=0)
    with pytest.raises(TypeError, match="sharded_loss: student and teacher must be torch.Tensors, got Tensor and list"):
        distributed.sharded_loss(s, [1, 2, 3], distance_weight=1, angle_weight=1)
