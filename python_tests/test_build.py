"""The compiled extension: build information, the stable ABI it is built on, and the pure-PyTorch fallback."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import rkd_ext


def test_build_info_reports_the_compiled_build():
    info = rkd_ext.build_info()
    assert info["extension_loaded"] and info["matches_running_torch"]
    assert info["fallback_reason"] is None
    floor = tuple(int(v) for v in info["stable_abi_floor"].split("."))
    assert tuple(int(v) for v in torch.__version__.split(".")[:2]) >= floor
    assert isinstance(info["with_cuda"], bool) and info["compiler"]


def test_info_command():
    out = subprocess.run([sys.executable, "-m", "rkd_ext.info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "compiled kernels in use  yes" in out.stdout


# A child process in which `rkd_ext._C` cannot be imported, as on an install
# whose build failed or was made for another torch.
_BLOCK_C = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "rkd_ext._C":
            raise ImportError("simulated missing extension")
sys.meta_path.insert(0, Block())
"""


def _run_without_extension(body, require=None):
    env = {k: v for k, v in __import__("os").environ.items() if k != "RKD_EXT_REQUIRE_EXT"}
    if require is not None:
        env["RKD_EXT_REQUIRE_EXT"] = require
    code = _BLOCK_C + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_fallback_to_reference_warns_and_matches():
    out = _run_without_extension("""
        import warnings
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import rkd_ext
        assert any("falling back to the pure-PyTorch reference" in str(x.message) for x in w), w
        import torch
        from rkd_ext import reference as R
        g = torch.Generator().manual_seed(0)
        s = torch.randn(12, 5, generator=g, dtype=torch.float64, requires_grad=True)
        t = torch.randn(12, 3, generator=g, dtype=torch.float64)
        assert torch.allclose(rkd_ext.rkd_distance_loss(s, t), R.distance_loss(s, t), rtol=0, atol=0)
        assert rkd_ext.rkd_distance_loss(s[:1], t[:1]).item() == 0.0
        assert rkd_ext.rkd_distance_loss(s.half(), t.half()).dtype == torch.float32
        assert not rkd_ext.build_info()["extension_loaded"]
        print("fallback ok")
    """)
    assert out.returncode == 0, out.stderr
    assert "fallback ok" in out.stdout


def test_require_ext_turns_fallback_into_import_error():
    out = _run_without_extension("import rkd_ext", require="1")
    assert out.returncode != 0
    assert "ImportError" in out.stderr and "RKD_EXT_REQUIRE_EXT=1" in out.stderr


def test_degenerate_batches_warn_once_per_process():
    code = textwrap.dedent("""
        import warnings, torch, rkd_ext
        x = torch.randn(1, 3)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            for _ in range(3):
                rkd_ext.rkd_distance_loss(x, x)
                rkd_ext.rkd_angle_loss(x, x)
        msgs = [str(m.message) for m in w]
        assert sum("no pairs" in m for m in msgs) == 1, msgs
        assert sum("no triplets" in m for m in msgs) == 1, msgs
        print("warned once")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "warned once" in out.stdout


# ---- the stable ABI -------------------------------------------------------------------------------------------------

_STABLE_SRC = """
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
torch::stable::Tensor twin(const torch::stable::Tensor& x) { return torch::stable::empty_like(x); }
STABLE_TORCH_LIBRARY(rkd_abi_probe, m) { m.def("twin(Tensor x) -> Tensor"); }
STABLE_TORCH_LIBRARY_IMPL(rkd_abi_probe, CPU, m) { m.impl("twin", TORCH_BOX(&twin)); }
"""
# The same library with one call into c10's C++ API, bound to one torch release. (Compiled without
# TORCH_TARGET_VERSION, as a file that missed the build's flags would be: with it, torch's unstable headers refuse
# to compile.)
_PLANTED_SRC = """
#include <torch/csrc/stable/library.h>
#include <c10/util/Exception.h>
void planted(int n) { TORCH_CHECK(n > 0, "planted"); }
"""


def _abi_check():
    from conftest import load_script
    return load_script("scripts/abi_check.py")


def test_the_extension_imports_nothing_outside_the_stable_abi():
    """The loaded _C is a limited-API module whose only torch symbols are the stable C shim's."""
    abi = _abi_check()
    lib = abi.loaded_library()
    assert lib.endswith(".abi3.so"), lib
    symbols = abi.imported_symbols(lib)
    assert abi.unstable(symbols) == []
    assert "torch_call_dispatcher" in symbols and "PyModule_Create2" in symbols


@pytest.mark.parametrize("source, flagged", [(_STABLE_SRC, False), (_PLANTED_SRC, True)], ids=["stable", "planted"])
def test_abi_check_catches_a_c10_call(tmp_path, source, flagged):
    import shutil
    import sysconfig
    if shutil.which("g++") is None or shutil.which("nm") is None:
        pytest.skip("needs g++ and nm")
    abi = _abi_check()
    src, lib = tmp_path / "probe.cpp", tmp_path / "probe.abi3.so"
    src.write_text(source)
    inc = os.path.join(os.path.dirname(torch.__file__), "include")
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    target = [] if flagged else ["-DTORCH_TARGET_VERSION=0x020a000000000000"]
    subprocess.run(["g++", "-std=c++17", "-O0", "-shared", "-fPIC", *target, "-I", inc, "-I", sysconfig.get_paths()["include"], str(src), "-o", str(lib), "-L", libdir,
                    "-lc10", "-ltorch_cpu"], check=True, capture_output=True, timeout=300)
    bad = abi.unstable(abi.imported_symbols(str(lib)))
    assert bool(bad) == flagged, bad
    if flagged:
        assert any(s.startswith("_ZN3c10") for s in bad), bad


def test_import_below_the_floor_names_both_versions():
    floor = ".".join(map(str, rkd_ext._ext.STABLE_ABI_FLOOR))
    code = textwrap.dedent("""
        import torch
        torch.__version__ = "2.9.1"
        try:
            import rkd_ext
        except ImportError as e:
            print("ImportError:", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ImportError:" in out.stdout and f"torch >= {floor}" in out.stdout and "2.9.1" in out.stdout, out.stdout


def test_build_info_reports_the_floor_and_the_running_torch():
    info = rkd_ext.build_info()
    assert info["stable_abi_floor"] == ".".join(map(str, rkd_ext._ext.STABLE_ABI_FLOOR))
    assert info["running_torch"] == torch.__version__
    out = subprocess.run([sys.executable, "-m", "rkd_ext.info"], capture_output=True, text=True, timeout=120)
    assert f"serves torch             >= {info['stable_abi_floor']} (stable ABI)" in out.stdout, out.stdout


@pytest.mark.parametrize("info, torch_cuda, refused", [
    (dict(with_cuda=True, cuda_version="13.0"), "12.8", True),    # torch 2.10's CUDA beside a CUDA 13 build
    (dict(with_cuda=True, cuda_version="13.0"), "13.2", False),   # torch 2.15's: the same major version
    (dict(with_cuda=True, cuda_version="13.0"), None, False),     # a CPU torch: no CUDA tensors to serve
    (dict(with_cuda=False, cuda_version=""), "12.8", False),      # a CPU-only build
])
def test_cuda_kernels_refuse_a_torch_of_another_cuda_major_version(info, torch_cuda, refused):
    why = rkd_ext._ext.cuda_mismatch(info, "2.10.0+cu128", torch_cuda)
    assert (why is not None) == refused
    if refused:
        assert "built for CUDA 13.0" in why and "uses CUDA 12.8" in why and "CUDA major version" in why


def test_argument_errors_are_value_errors_whatever_torch_does_with_the_kernel_exception():
    """torch 2.15 hands a stable kernel's std::invalid_argument on as a RuntimeError: it becomes a ValueError again."""
    from rkd_ext.ops import value_errors

    def raising(exc):
        def op(*args):
            raise exc
        return op

    with pytest.raises(ValueError, match="^rkd_loss: eps must be"):
        value_errors("rkd_loss", raising(RuntimeError("rkd_loss: eps must be a positive finite number, got 0")))()
    for exc in (RuntimeError("rkd_ext: CUDA kernel launch failed"), RuntimeError("rkd_loss_backward: grad"),
                NotImplementedError("rkd_loss: not here")):
        with pytest.raises(type(exc), match=str(exc)):
            value_errors("rkd_loss", raising(exc))()
    assert value_errors("rkd_loss", lambda *a: sum(a))(1, 2) == 3
