"""The compiled extension: build information, and the pure-PyTorch fallback."""
import subprocess
import sys
import textwrap

import torch

import rkd_ext


def test_build_info_reports_the_compiled_build():
    info = rkd_ext.build_info()
    assert info["extension_loaded"] and info["matches_running_torch"]
    assert info["fallback_reason"] is None
    assert info["torch_version"].split(".")[:2] == torch.__version__.split(".")[:2]
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
