"""Build rkd_ext._C: the C++ kernels always, the CUDA kernels when possible.

The extension uses only PyTorch's stable ABI and Python's limited API: one
build (one wheel, tagged cp39-abi3) serves every torch from STABLE_ABI_FLOOR
(rkd_ext/_floor.py) on and every CPython from 3.9 on. A CUDA build also needs a
torch built for the same CUDA major version as the toolkit that compiled it.

Environment variables:
  FORCE_CUDA=1           build the CUDA kernels even if torch or nvcc were not detected
  FORCE_ONLY_CPU=1       build the C++ kernels only, even with a CUDA toolkit present
  TORCH_CUDA_ARCH_LIST   GPU architectures to compile for, e.g. "8.0;9.0" (read by torch)
  MAX_JOBS               parallel compile jobs (read by torch's ninja build)
  RKD_EXT_DEBUG=1        -O0 -g instead of optimised code
"""
import glob
import os
import runpy
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit("rkd_ext compiles against your PyTorch: install torch first, then run "
             "`pip install --no-build-isolation .`")

HERE = os.path.dirname(os.path.abspath(__file__))
# The stable ABI's floor and the limited API, read by path: nothing is built yet.
ABI_FLAGS = runpy.run_path(os.path.join(HERE, "rkd_ext", "_floor.py"))["compile_flags"]()


def flag(name):
    return os.environ.get(name, "0") == "1"


def with_cuda():
    if flag("FORCE_ONLY_CPU"):
        return False
    # Decided by the build, never by torch.cuda.is_available(): build machines often have no GPU.
    return flag("FORCE_CUDA") or (torch.version.cuda is not None and CUDA_HOME is not None)


def write_build_config(cuda):
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "default") if cuda else ""
    text = "\n".join([
        "// Written by setup.py; do not edit.",
        "#pragma once",
        f'#define RKD_EXT_TORCH_FULL_VERSION "{torch.__version__}"',
        f"#define RKD_EXT_WITH_CUDA {int(cuda)}",
        f'#define RKD_EXT_CUDA_VERSION "{torch.version.cuda if cuda else ""}"',
        f'#define RKD_EXT_CUDA_ARCH_LIST "{arch}"',
        "",
    ])
    path = os.path.join(HERE, "csrc", "build_config.h")
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


def remove_stale_builds():
    """A build made before the limited API (_C.cpython-*.so) would shadow the new _C.abi3.so on import."""
    for path in glob.glob(os.path.join(HERE, "rkd_ext", "_C.cpython-*")):
        os.remove(path)


def get_extensions():
    cuda = with_cuda()
    write_build_config(cuda)
    remove_stale_builds()
    opt = ["-O0", "-g"] if flag("RKD_EXT_DEBUG") else ["-O3"]
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # No -ffast-math: results must not depend on reassociation. These two only let
    # sqrt and branch-free selects vectorise, as in torch's own build.
    fp = ["-fno-math-errno", "-fno-trapping-math"]
    # The stable ABI's floor and the limited API; the CPU kernels run on torch's own thread pool
    # (torch::stable::parallel_for), so no OpenMP here.
    extra = {"cxx": opt + fp + ABI_FLAGS + ["-Wall", "-Wno-psabi"]}
    kind = CppExtension
    if cuda:
        kind = CUDAExtension
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        extra["nvcc"] = opt + ABI_FLAGS + ["-lineinfo", "--expt-relaxed-constexpr"]
    return [kind("rkd_ext._C", sources, extra_compile_args=extra, py_limited_api=True)]


setup(
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
