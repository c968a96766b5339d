"""Loads the compiled extension, or explains why the pure-PyTorch fallback is used.

`rkd_ext._C` is built on PyTorch's stable ABI for torch STABLE_ABI_FLOOR: one
build serves that torch and every later one, whatever torch it was compiled
against. Importing rkd_ext under an older torch is an ImportError naming both
versions. A CUDA build also needs a torch built for the same CUDA major version
as the extension: where its CUDA runtime is missing the extension is not used at
all, and where it loads beside a torch of another CUDA major version its CPU
kernels are used and CUDA tensors take the pure-PyTorch reference. Set ``RKD_EXT_REQUIRE_EXT=1`` to turn the fallback into an ImportError
(CI and benchmarks do, so a broken build cannot pass silently as the slow
reference).
"""
import os
import re
import warnings

import torch

from ._floor import STABLE_ABI_FLOOR

__all__ = ["C", "reason", "available", "usable_for", "build_info", "STABLE_ABI_FLOOR"]


def _release(version):
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _check_floor():
    running = _release(torch.__version__)
    if running is not None and running < STABLE_ABI_FLOOR:
        floor = ".".join(map(str, STABLE_ABI_FLOOR))
        raise ImportError(f"rkd_ext needs torch >= {floor} (its compiled kernels use the stable ABI of torch "
                          f"{floor}), but torch {torch.__version__} is running: upgrade torch, or install an "
                          f"rkd_ext release made for torch {'.'.join(map(str, running))}")


def _parse_info(text):
    info = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    info["with_cuda"] = info.get("with_cuda") == "1"
    return info


_CUDA_MAJOR = "a CUDA build of rkd_ext needs a torch built for the CUDA major version it was compiled with"


def cuda_mismatch(info, torch_version, torch_cuda):
    """Why the CUDA kernels of a loaded build cannot serve this torch (another CUDA major version), or None."""
    if not info.get("with_cuda") or not torch_cuda:
        return None
    built, running = info["cuda_version"].split(".")[0], torch_cuda.split(".")[0]
    if built == running:
        return None
    return (f"rkd_ext's CUDA kernels were built for CUDA {info['cuda_version']} but torch {torch_version} uses CUDA "
            f"{torch_cuda}: {_CUDA_MAJOR}")


def _load():
    try:
        from . import _C  # noqa: F401  (loading the library registers the operators)
    except (ImportError, OSError) as exc:
        hint = f" ({_CUDA_MAJOR})" if "libcudart" in str(exc) else ""
        return None, None, f"the compiled extension rkd_ext._C could not be loaded ({exc}){hint}"
    info = _parse_info(torch.ops.rkd_ext._build_info())
    return torch.ops.rkd_ext, info, None


_check_floor()
C, _info, reason = _load()
available = C is not None
cuda_reason = cuda_mismatch(_info, torch.__version__, torch.version.cuda) if available else None
for _why, _what in ((reason, ""), (cuda_reason, " for CUDA tensors")):
    if _why is None:
        continue
    if os.environ.get("RKD_EXT_REQUIRE_EXT", "0") == "1":
        raise ImportError(_why + " (RKD_EXT_REQUIRE_EXT=1 forbids the pure-PyTorch fallback)")
    warnings.warn(_why + f"; falling back to the pure-PyTorch reference implementation{_what} "
                  "(same values, slower, O(N^3 D) memory for the angle loss)", RuntimeWarning, stacklevel=2)


def usable_for(x):
    """Whether the compiled kernels handle tensors on x's device."""
    if not available:
        return False
    if x.device.type == "cpu":
        return True
    return x.device.type == "cuda" and bool(_info["with_cuda"]) and cuda_reason is None


def build_info():
    """How the loaded extension was built, which torch releases it serves, and the running torch (a dict)."""
    info = dict(_info) if _info is not None else {}
    info.update(
        extension_loaded=available,
        fallback_reason=reason,
        cuda_fallback_reason=cuda_reason,
        running_torch=torch.__version__,
        running_cuda=torch.version.cuda,
        matches_running_torch=available,
        product_precision=("auto", "float64", "float32")[C._product_precision()] if available else None,
    )
    info.setdefault("stable_abi_floor", ".".join(map(str, STABLE_ABI_FLOOR)))
    return info
