"""Argument checks of the public functions, matching the kernels' own checks.

Every public function runs these before dispatching, so the compiled path, the
pure-PyTorch fallback and torch.compile tracing all reject bad input with the
same message: the function, the argument, what was expected, what came.
"""
import math

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_REDUCTIONS = ("mean", "sum", "none")


def features(fn, name, x):
    """Check a feature batch and return it as (N, D), flattening trailing dims."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{fn}: {name} must have shape (N, D) or (N, ...) with at least 2 dims, "
                         f"got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{fn}: {name} must hold at least one sample (N > 0), got shape {tuple(x.shape)}")
    return x if x.dim() == 2 else x.reshape(x.shape[0], -1)


def pair(fn, student, teacher):
    """Check a student/teacher pair and return both as (N, D_s), (N, D_t)."""
    s = features(fn, "student", student)
    t = features(fn, "teacher", teacher)
    if s.device != t.device:
        raise ValueError(f"{fn}: student and teacher must be on the same device, got {s.device} and {t.device}")
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"{fn}: student and teacher must have the same batch size, "
                         f"got {s.shape[0]} and {t.shape[0]}")
    return s, t


def _symbolic(value):
    # While torch.compile traces, float arguments may be symbolic
    # (dynamic=True) and cannot be inspected; the kernels check them at run
    # time with the same messages.
    return torch.compiler.is_compiling() or isinstance(value, (torch.SymFloat, torch.SymInt))


def eps(fn, value):
    if _symbolic(value):
        return value
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{fn}: eps must be a positive finite number, got {value!r}")
    return float(value)


def non_negative(fn, name, value):
    if _symbolic(value):
        return value
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{fn}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def beta(fn, value):
    return non_negative(fn, "beta", value)


def reduction(fn, value):
    if value not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be 'mean', 'sum' or 'none', got {value!r}")
    return value
