"""torch.compile(fullgraph=True) of every public function and module, and torch.export of a module using the loss.

Oracle: the same call run eagerly (whose numbers the op tests check against
the reference). fullgraph=True turns any graph break into an error; the
aot_eager backend traces forward and backward through the fake kernels and
the autograd registrations, and a few cases also go through inductor's code
generation (slower to compile, so not every case).
"""
import io

import pytest
import torch
import torch._dynamo.testing
from conftest import DEVICES
from test_compat import CASES, case_inputs
from torch import nn

import rkd_ext
from rkd_ext.compat import mmrazor
from rkd_ext.testing import assert_close, make_features


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _grads(out, inputs):
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype).to(out.device)
    return torch.autograd.grad(out, inputs, w, allow_unused=True)


def _compare(fn, args, backend, what, **compile_kw):
    compiled = torch.compile(fn, fullgraph=True, backend=backend, **compile_kw)
    wanted = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    got, expected = compiled(*args), fn(*args)
    assert got.dtype == expected.dtype
    assert_close(got, expected, 1e-6, 1e-7, f"{what} value")
    for g, e in zip(_grads(got, wanted), _grads(expected, wanted)):
        assert (g is None) == (e is None), f"{what}: which inputs get a gradient"
        if e is not None:
            assert_close(g, e, 1e-6, 1e-7 * float(e.abs().max()), f"{what} gradient")


FUNCTIONS = {
    "pairwise_distance": lambda s, t: rkd_ext.pairwise_distance(s),
    "normalized_distance": lambda s, t: rkd_ext.normalized_distance(s, eps=1e-10),
    "angle_tensor": lambda s, t: rkd_ext.angle_tensor(s),
    "angle_tensor(normalize=False)": lambda s, t: rkd_ext.angle_tensor(s, normalize=False),
    "rkd_distance_loss": lambda s, t: rkd_ext.rkd_distance_loss(s, t, beta=0.5, squared=True, mean_offset=1e-7),
    "rkd_distance_loss(none)": lambda s, t: rkd_ext.rkd_distance_loss(s, t, reduction="none"),
    "rkd_angle_loss": lambda s, t: rkd_ext.rkd_angle_loss(s, t, reduction="sum"),
    "rkd_angle_loss(normalize=False, none)": lambda s, t: rkd_ext.rkd_angle_loss(s, t, normalize=False,
                                                                                reduction="none"),
    "RKDDistanceLoss": rkd_ext.RKDDistanceLoss(),
    "RKDAngleLoss": rkd_ext.RKDAngleLoss(),
    "rkd_loss": lambda s, t: rkd_ext.rkd_loss(s, t, beta=0.5, squared=True, mean_offset=1e-7, normalize=False),
    "rkd_loss(sum, distance only)": lambda s, t: rkd_ext.rkd_loss(s, t, angle_weight=0, reduction="sum"),
    "RKDLoss": rkd_ext.RKDLoss(),
    "RKDLoss(angle only)": rkd_ext.RKDLoss(distance_weight=0),
    # Without a process group the gather is the identity and must not break the graph.
    "RKDLoss(gather_distributed, single process)": rkd_ext.RKDLoss(gather_distributed=True),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_public_api_compiles_fullgraph(name, device):
    s = make_features(7, 5, dtype=torch.float32, device=device, seed=1, requires_grad=True)
    t = make_features(7, 3, dtype=torch.float32, device=device, seed=2, requires_grad=True)
    _compare(FUNCTIONS[name], (s, t), "aot_eager", name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_compat_compiles_fullgraph(case, device):
    s, t = case_inputs(case, 7, torch.float32, device)
    _compare(case.call, (s, t), "aot_eager", repr(case))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,fn", [
    ("RKDLoss", rkd_ext.RKDLoss()),
    ("mmrazor.DistanceWiseRKD", mmrazor.DistanceWiseRKD()),
])
def test_inductor(name, fn, device):
    s = make_features(9, 6, dtype=torch.float32, device=device, seed=3, requires_grad=True)
    t = make_features(9, 4, dtype=torch.float32, device=device, seed=4)
    _compare(fn, (s, t), "inductor", name)


def test_batch_size_changes_compile_at_most_twice():
    # Batches differ in size (the last of an epoch). With torch.compile's
    # default automatic dynamic shapes, the second size recompiles once with a
    # symbolic N, which the fake kernels must support; later sizes reuse it.
    loss = rkd_ext.RKDLoss()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(loss, fullgraph=True, backend=counter)
    for n in (5, 8, 11, 13):
        s = make_features(n, 6, dtype=torch.float32, seed=n, requires_grad=True)
        t = make_features(n, 4, dtype=torch.float32, seed=n + 1)
        assert_close(compiled(s, t), loss(s, t), 1e-6, 1e-7, f"N={n}")
    assert counter.frame_count == 2


def test_dynamic_true_compiles_once():
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(rkd_ext.rkd_distance_loss, fullgraph=True, backend=counter, dynamic=True)
    for n in (5, 8):
        s = make_features(n, 6, dtype=torch.float32, seed=n)
        assert_close(compiled(s, s[:, :3]), rkd_ext.rkd_distance_loss(s, s[:, :3]), 1e-6, 1e-7, f"N={n}")
    assert counter.frame_count == 1


class _Distill(nn.Module):
    """A projection head trained with RKD against fixed teacher features."""

    def __init__(self, loss):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(6, 4)
        self.loss = loss

    def forward(self, x, teacher):
        return self.loss(self.proj(x), teacher)


@pytest.mark.parametrize("loss,ops", [
    (rkd_ext.RKDLoss(), ("rkd_loss",)),
    (mmrazor.AngleWiseRKD(), ("rkd_angle_loss",)),
], ids=["RKDLoss", "mmrazor.AngleWiseRKD"])
def test_export(loss, ops):
    model = _Distill(loss)
    x, t = make_features(7, 6, dtype=torch.float32, seed=6), make_features(7, 5, dtype=torch.float32, seed=7)
    n = torch.export.Dim("n", min=3)
    exported = torch.export.export(model, (x, t), dynamic_shapes={"x": {0: n}, "teacher": {0: n}})
    graph = str(exported.graph)
    for op in ops:
        assert f"rkd_ext.{op}" in graph, f"{op} is not in the exported graph"

    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    buffer.seek(0)
    reloaded = torch.export.load(buffer).module()
    for n_rows in (7, 12):
        x, t = make_features(n_rows, 6, dtype=torch.float32, seed=n_rows), make_features(n_rows, 5, seed=1).float()
        expected = model(x, t)
        for runner in (exported.module(), reloaded):
            got = runner(x, t)
            assert_close(got, expected, 1e-6, 1e-7, f"exported N={n_rows}")
            got_grad = torch.autograd.grad(got, list(runner.parameters()))
            expected_grad = torch.autograd.grad(expected, list(model.parameters()), retain_graph=True)
            for g, e in zip(got_grad, expected_grad):
                assert_close(g, e, 1e-6, 1e-7, "exported gradient")
