"""torch.compile(fullgraph=True) on batches without relations (N = 1; N < 3 for angles).

Eager mode returns 0 with a zero gradient and warns once per process; a
compiled call must return the same (the documented 0, not the reference's NaN)
in a process where that warning has not fired yet, and give the warning once,
while the graph is traced. The once-state is reset for every case.
"""
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from rkd_ext.testing import make_features
from test_compat import CASES

import rkd_ext
import rkd_ext.functional

NO_RELATIONS = "no pairs|no triplets"


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch):
    """No warning fired yet and nothing compiled yet, as in a fresh process."""
    monkeypatch.setattr(rkd_ext.functional, "_warned", set())
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


CALLS = {
    "rkd_distance_loss": (lambda s, t: rkd_ext.rkd_distance_loss(s, t), 1, ()),
    "rkd_distance_loss(sum)": (lambda s, t: rkd_ext.rkd_distance_loss(s, t, reduction="sum"), 1, ()),
    "rkd_distance_loss(none)": (lambda s, t: rkd_ext.rkd_distance_loss(s, t, reduction="none"), 1, (1, 1)),
    "normalized_distance": (lambda s, t: rkd_ext.normalized_distance(s), 1, (1, 1)),
    "rkd_angle_loss(N=1)": (lambda s, t: rkd_ext.rkd_angle_loss(s, t), 1, ()),
    "rkd_angle_loss(N=2)": (lambda s, t: rkd_ext.rkd_angle_loss(s, t), 2, ()),
    "rkd_angle_loss(N=2, none)": (lambda s, t: rkd_ext.rkd_angle_loss(s, t, reduction="none"), 2, (2, 2, 2)),
    "RKDDistanceLoss": (rkd_ext.RKDDistanceLoss(), 1, ()),
    "RKDAngleLoss": (rkd_ext.RKDAngleLoss(), 2, ()),
    "RKDLoss(N=1)": (rkd_ext.RKDLoss(), 1, ()),
    "RKDLoss(N=2)": (rkd_ext.RKDLoss(distance_weight=0), 2, ()),
    "RKDLoss(gather_distributed)": (rkd_ext.RKDLoss(gather_distributed=True), 1, ()),
}


def _warnings_of(fn, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args)
    return out, [str(w.message) for w in caught if any(m in str(w.message) for m in NO_RELATIONS.split("|"))]


def _assert_zero_with_zero_grads(out, shape, inputs, what):
    assert out.shape == shape, what
    assert torch.equal(out, torch.zeros_like(out)), f"{what}: {out}"
    grads = torch.autograd.grad(out.sum(), [x for x in inputs if x.requires_grad], allow_unused=True)
    for g, x in zip(grads, inputs):
        assert g is None or torch.equal(g, torch.zeros_like(x)), f"{what}: gradient {g}"


@pytest.mark.parametrize("name", list(CALLS))
def test_compiled_no_relations_is_zero_and_warns_once(name):
    fn, n, shape = CALLS[name]
    s = make_features(n, 4, dtype=torch.float32, seed=1, requires_grad=True)
    t = make_features(n, 3, dtype=torch.float32, seed=2, requires_grad=True)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out, first = _warnings_of(compiled, s, t)
    _assert_zero_with_zero_grads(out, shape, (s, t), name)
    again, second = _warnings_of(compiled, s, t)
    _assert_zero_with_zero_grads(again, shape, (s, t), name)
    assert first and len(first) == len(set(first)) and not second, (first, second)
    # Once per process: the eager path, later, does not warn again.
    _, eager = _warnings_of(fn, s, t)
    assert not eager, eager


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_compiled_compat_single_sample_is_zero(case):
    s = make_features(1, 12, dtype=torch.float32, seed=3).reshape((1, 3, 2, 2) if case.rank == 4 else (1, 12))
    t = make_features(1, 15, dtype=torch.float32, seed=4).reshape((1, 5, 3) if case.rank == 4 else (1, 15))
    s.requires_grad_()
    compiled = torch.compile(case.call, fullgraph=True, backend="aot_eager")
    out, caught = _warnings_of(compiled, s, t)
    assert caught, f"{case}: no warning"
    _assert_zero_with_zero_grads(out, out.shape, (s,), repr(case))


def test_inductor_no_relations():
    s = make_features(1, 4, dtype=torch.float32, seed=5, requires_grad=True)
    t = make_features(1, 3, dtype=torch.float32, seed=6)
    out, caught = _warnings_of(torch.compile(rkd_ext.RKDLoss(), fullgraph=True), s, t)
    assert caught
    _assert_zero_with_zero_grads(out, (), (s,), "inductor")


def test_fresh_process_compiles_without_relations():
    code = textwrap.dedent("""
        import warnings, torch, rkd_ext
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            s = torch.randn(2, 3, requires_grad=True)
            f = torch.compile(lambda s, t: rkd_ext.rkd_angle_loss(s, t), fullgraph=True, backend="aot_eager")
            loss = f(s, torch.randn(2, 3))
            loss.backward()
        assert loss.item() == 0.0 and torch.equal(s.grad, torch.zeros_like(s)), (loss, s.grad)
        assert sum("no triplets" in str(m.message) for m in w) == 1, [str(m.message) for m in w]
        print("compiled ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "compiled ok" in out.stdout
