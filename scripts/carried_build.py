"""Whether a CUDA build of rkd_ext made elsewhere can run here, so that a GPU's minutes go to running, not compiling.

    python scripts/carried_build.py [--wheel WHEEL] [--arch 9.0]

With --wheel, the wheel's library (rkd_ext/_C.abi3.so) is first put into this tree's rkd_ext/. The library in the
tree is then loaded: it is usable when it loads under the running torch (built on the stable ABI, it serves every
torch from its floor on whose CUDA major version matches) with CUDA kernels, for --arch when given. Exit status 0
when usable, 1 otherwise (the reason is printed); scripts/gpu_run.sh's build stage compiles in that case.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "rkd_ext", "_C.abi3.so")

# Run in a fresh interpreter: the import must not be cached from a library replaced since.
_PROBE = """
import json, os
os.environ["RKD_EXT_REQUIRE_EXT"] = "0"
import warnings
warnings.simplefilter("ignore")
import rkd_ext
print(json.dumps(rkd_ext.build_info()))
"""


def extract(wheel):
    with zipfile.ZipFile(wheel) as z:
        name = next((n for n in z.namelist() if re.fullmatch(r"rkd_ext/_C\.abi3\.so", n)), None)
        if name is None:
            raise SystemExit(f"{wheel} holds no rkd_ext/_C.abi3.so")
        with z.open(name) as src, open(LIB + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst)
    os.replace(LIB + ".part", LIB)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", help="a wheel of rkd_ext whose library to carry in")
    p.add_argument("--arch", default="", help="the GPU architecture it must hold kernels for, e.g. 9.0")
    a = p.parse_args(argv)
    if a.wheel:
        extract(a.wheel)
        print(f"carried in: {os.path.basename(a.wheel)}")
    if not os.path.exists(LIB):
        print("no carried build: rkd_ext/_C.abi3.so is absent")
        return 1
    import json
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        print(f"carried build does not import here:\n{out.stderr[-2000:]}")
        return 1
    info = json.loads(out.stdout.strip().splitlines()[-1])
    archs = [v.replace("+PTX", "") for v in info.get("cuda_arch_list", "").split(";") if v]
    problems = []
    if not info["extension_loaded"]:
        problems.append(info["fallback_reason"])
    elif not info["with_cuda"]:
        problems.append("it is a CPU-only build")
    elif a.arch and a.arch not in archs:
        problems.append(f"it holds no kernels for sm_{a.arch.replace('.', '')}")
    print(f"carried build: made against torch {info.get('torch_full_version')} (serves >= "
          f"{info['stable_abi_floor']}), CUDA {info.get('cuda_version') or 'none'}, archs "
          f"{info.get('cuda_arch_list') or 'none'}; torch {info['running_torch']} here: "
          + ("used" if not problems else "not used, " + "; ".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
