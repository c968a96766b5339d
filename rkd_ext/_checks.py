"""Argument checks of the public functions, modules and compat wrappers, matching the kernels' own checks.

Every public entry point runs these before dispatching, so the compiled path,
the pure-PyTorch fallback and torch.compile tracing all reject bad input with
the same message: the function, the argument, what was expected, what came.

Scalars (``eps``, ``beta``, ``mean_offset``, loss weights) may be any real
number: a Python or NumPy int or float, or a 0-d real tensor; they are used as
Python floats. A bool is refused there (``beta=True`` is a mistake, not 1), and
so are complex numbers and non-finite values. Switches (``squared``,
``normalize``, ...) must be a bool (Python's or NumPy's): a string such as
``'False'`` would otherwise count as true.
"""
import math
import numbers

import numpy as np
import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_REDUCTIONS = ("mean", "sum", "none")
_SHAPES = {1: "(N, ...) with a batch dimension", 2: "(N, D) or (N, ...) with at least 2 dims"}


def _got(value):
    return f"{value!r} ({type(value).__name__})"


def tensor(fn, name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def features(fn, name, x, *, min_dim=2):
    """Check a feature batch and return it as (N, D), flattening trailing dims.

    ``min_dim=1`` accepts (N,) as (N, 1), as the frameworks' ``view(N, -1)``
    does; rkd_ext's own functions want at least (N, D).
    """
    tensor(fn, name, x)
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{fn}: {name} must have shape {_SHAPES[min_dim]}, "
                         f"got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{fn}: {name} must hold at least one sample (N > 0), got shape {tuple(x.shape)}")
    return x if x.dim() == 2 else x.reshape(x.shape[0], -1)


def pair(fn, student, teacher, *, names=("student", "teacher"), min_dim=2):
    """Check a student/teacher pair and return both as (N, D_s), (N, D_t)."""
    s = features(fn, names[0], student, min_dim=min_dim)
    t = features(fn, names[1], teacher, min_dim=min_dim)
    if s.device != t.device:
        raise ValueError(f"{fn}: {names[0]} and {names[1]} must be on the same device, "
                         f"got {s.device} and {t.device}")
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"{fn}: {names[0]} and {names[1]} must have the same batch size, "
                         f"got {s.shape[0]} and {t.shape[0]}")
    return s, t


def _symbolic(value):
    # While torch.compile traces, float arguments may be symbolic
    # (dynamic=True) and cannot be inspected; the kernels check them at run
    # time with the same messages.
    return torch.compiler.is_compiling() or isinstance(value, (torch.SymFloat, torch.SymInt))


def _real(fn, name, value, expected):
    """``value`` as a float when it is a real scalar (see the module docstring), else a TypeError."""
    if isinstance(value, torch.Tensor):
        real = value.dim() == 0 and not value.is_complex() and value.dtype != torch.bool
    else:
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not real:
        raise TypeError(f"{fn}: {name} must be {expected}: a real number (int, float, NumPy scalar or 0-d "
                        f"tensor; not a bool), got {_got(value)}")
    return float(value)


def eps(fn, value, name="eps"):
    if _symbolic(value):
        return value
    expected = "a positive finite number"
    number = _real(fn, name, value, expected)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{fn}: {name} must be {expected}, got {value!r}")
    return number


def non_negative(fn, name, value):
    """A finite real number >= 0 (smooth-L1 threshold, mean offset, loss weight), as a float."""
    if _symbolic(value):
        return value
    expected = "a finite number >= 0"
    number = _real(fn, name, value, expected)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{fn}: {name} must be {expected}, got {value!r}")
    return number


def beta(fn, value):
    return non_negative(fn, "beta", value)


def flag(fn, name, value):
    """A switch, as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be a bool (True or False), got {_got(value)}")
    return bool(value)


def reduction(fn, value):
    if not isinstance(value, str) or value not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be 'mean', 'sum' or 'none', got {value!r}")
    return value


def reduced(fn, value):
    """A reduction of both RKD terms at once: 'mean' or 'sum' (their elementwise losses differ in shape)."""
    if reduction(fn, value) == "none":
        raise ValueError(f"{fn}: reduction must be 'mean' or 'sum' when both terms are combined (their elementwise "
                         "losses have different shapes, (N, N) and (N, N, N); rkd_distance_loss and "
                         "rkd_angle_loss give each), got 'none'")
    return value
