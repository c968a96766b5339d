"""Loads the compiled extension, or explains why the pure-PyTorch fallback is used.

`rkd_ext._C` must have been built against the running torch (same major.minor):
a build for another torch is not used. Set ``RKD_EXT_REQUIRE_EXT=1`` to turn the
fallback into an ImportError (CI and benchmarks do, so a broken build cannot
pass silently as the slow reference).
"""
import os
import re
import warnings

import torch

__all__ = ["C", "reason", "available", "usable_for", "build_info"]


def _release(version):
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _load():
    try:
        from . import _C as mod
    except (ImportError, OSError) as exc:
        return None, None, f"the compiled extension rkd_ext._C could not be loaded ({exc})"
    info = dict(mod.build_info())
    if _release(info["torch_version"]) != _release(torch.__version__):
        return None, info, (f"rkd_ext._C was built against torch {info['torch_version']} but torch "
                            f"{torch.__version__} is running; rebuild it with `pip install --no-build-isolation .`")
    return mod, info, None


C, _info, reason = _load()
available = C is not None
if reason is not None:
    if os.environ.get("RKD_EXT_REQUIRE_EXT", "0") == "1":
        raise ImportError(reason + " (RKD_EXT_REQUIRE_EXT=1 forbids the pure-PyTorch fallback)")
    warnings.warn(reason + "; falling back to the pure-PyTorch reference implementation "
                  "(same values, slower, O(N^3 D) memory for the angle loss)", RuntimeWarning, stacklevel=2)


def usable_for(x):
    """Whether the compiled kernels handle tensors on x's device."""
    if not available:
        return False
    if x.device.type == "cpu":
        return True
    return x.device.type == "cuda" and bool(_info["with_cuda"])


def build_info():
    """How the loaded extension was built, and whether it matches the running torch (a dict)."""
    info = dict(_info) if _info is not None else {}
    info.update(
        extension_loaded=available,
        fallback_reason=reason,
        running_torch=torch.__version__,
        running_cuda=torch.version.cuda,
        matches_running_torch=available,
        product_precision=("auto", "float64", "float32")[C._product_precision()] if available else None,
    )
    return info
