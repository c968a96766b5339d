"""Whether a built rkd_ext._C depends on anything but PyTorch's stable ABI and Python's limited API.

    python scripts/abi_check.py [LIB]     # default: the rkd_ext._C that `import rkd_ext` loads

Reads the library's imported symbols (``nm -D --undefined-only``) and flags every one that binds it to one torch
release or one CPython: C++ symbols of c10, ATen or torch (the stable ABI reaches torch only through the C shim:
``aoti_torch_*``, ``torch_*``), CPython's private ``_Py*`` symbols, and pybind11. Exit status 1 when any is found.
"""
import argparse
import os
import re
import subprocess
import sys

# Itanium-mangled names in the namespaces c10, at and torch (nested names start _ZN, _ZNK, _ZNR, _ZNO, ...).
_TORCH_CXX = re.compile(r"^_Z(N[KVRO]*)?(3c10|2at|5torch)")


def imported_symbols(lib):
    out = subprocess.run(["nm", "-D", "--undefined-only", lib], capture_output=True, text=True, check=True).stdout
    return sorted({line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()})


def unstable(symbols):
    """The symbols among these that are neither the stable ABI's C shim nor the limited API."""
    return [s for s in symbols if _TORCH_CXX.match(s) or s.startswith("_Py") or "pybind11" in s]


def loaded_library():
    import importlib.util
    spec = importlib.util.find_spec("rkd_ext._C")
    if spec is None or not spec.origin:
        raise SystemExit("rkd_ext._C is not built")
    return spec.origin


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("lib", nargs="?", help="the library (default: the rkd_ext._C on the import path)")
    lib = p.parse_args(argv).lib or loaded_library()
    symbols = imported_symbols(lib)
    bad = unstable(symbols)
    shim = [s for s in symbols if s.startswith(("aoti_torch_", "torch_"))]
    print(f"{os.path.basename(lib)}: {len(symbols)} imported symbols, {len(shim)} from torch's stable C shim, "
          f"{len(bad)} outside the stable ABI and the limited API")
    for s in bad:
        print("  " + s)
    if not lib.endswith(".abi3.so"):
        print("  not named as a limited-API module (.abi3.so)")
        return 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
