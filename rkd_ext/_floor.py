"""The oldest torch the compiled extension serves, in one place, free of imports.

setup.py and scripts/check_cuda.sh read it by path (before anything is built); rkd_ext/_ext.py checks the running
torch against it. torch::stable::parallel_for and get_num_threads (torch's thread pool and thread count, which the
CPU kernels follow) arrived in torch 2.10.
"""
STABLE_ABI_FLOOR = (2, 10)
PY_LIMITED_API = 0x03090000  # CPython 3.9, the oldest this package supports


def compile_flags():
    """The flags every translation unit of the extension is compiled with: the stable ABI's target, the limited API."""
    major, minor = STABLE_ABI_FLOOR
    return [f"-DTORCH_TARGET_VERSION=0x{major:02x}{minor:02x}000000000000", f"-DPy_LIMITED_API=0x{PY_LIMITED_API:08x}"]
