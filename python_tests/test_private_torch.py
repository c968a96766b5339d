"""Private torch helpers are used through rkd_ext/_torch_private.py only, each explained there."""
import pathlib
import re

import rkd_ext
from rkd_ext import _torch_private

PACKAGE = pathlib.Path(rkd_ext.__file__).parent
# A private torch name (torch._x, torch.a._x, an import from a private torch
# module or of a private name); not dunders, not our own torch.ops.rkd_ext._x,
# not torch._check (documented by torch).
PRIVATE = re.compile(r"torch(\.[A-Za-z]\w*)*\._(?!_|check\b)\w+|from torch(\.\w+)*\._\w+|from torch\.[\w.]+ import _\w+")
GOES = re.compile(r"can go|goes with", re.I)


def private_uses(text):
    return [m.group(0) for line in text.splitlines() if not line.lstrip().startswith("#")
            for m in PRIVATE.finditer(line) if not m.group(0).startswith("torch.ops.")]


def test_the_pattern_finds_private_names():
    planted = ("x = torch._C._AutoDispatchBelowAutograd()\nfrom torch._dynamo.comptime import comptime\n"
               "from torch.autograd.forward_ad import _set_fwd_grad_enabled\nc = torch.autograd.function._Single\n")
    assert len(private_uses(planted)) == 4
    assert private_uses("torch._check(x > 0)\nv = torch.__version__\ntorch.ops.rkd_ext._build_info()\n") == []


def test_only_the_private_module_uses_them():
    found = {str(p.relative_to(PACKAGE)): private_uses(p.read_text())
             for p in PACKAGE.rglob("*.py") if p.name != "_torch_private.py"}
    assert {k: v for k, v in found.items() if v} == {}


def comment_says_it_goes(name, lines):
    """The comment block right above ``name = ...`` says when it can go."""
    at = next(i for i, line in enumerate(lines) if line.startswith(f"{name} = "))
    comment = []
    for line in reversed(lines[:at]):
        if not line.startswith("#"):
            break
        comment.append(line)
    return bool(GOES.search(" ".join(comment)))


def explained(name, lines):
    """A function whose docstring says when it can go, or an assignment under a comment that does."""
    obj = getattr(_torch_private, name)
    if callable(obj) and getattr(obj, "__module__", None) == _torch_private.__name__ and obj.__doc__:
        return bool(GOES.search(obj.__doc__))
    return comment_says_it_goes(name, lines)


def test_every_helper_says_when_it_can_go():
    lines = (PACKAGE / "_torch_private.py").read_text().splitlines()
    assert [n for n in _torch_private.__all__ if not explained(n, lines)] == []
    # planted: a helper with a reason but no way out, and one with no comment at all
    assert not comment_says_it_goes("x", ["", "# needed for speed", "x = torch._C._y"])
    assert not comment_says_it_goes("x", ["y = 1", "x = torch._C._y"])
    assert comment_says_it_goes("x", ["# needed for speed; can go in torch 3", "x = torch._C._y"])
