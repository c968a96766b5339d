"""The CUDA kernels' compiled resources: registers, spills, shared memory and occupancy, for every kernel and GPU.

ptxas's own report (-Xptxas -v) of csrc/cuda/standalone/compile_check.cu,
which instantiates every kernel the op layer can launch, compiled with the
flags of PyTorch's extension build (the same sources and flags as the
extension), for each architecture; the block shape of each kernel from its
launches on the host emulator (scripts/emulate_cuda.py --kernels); the
theoretical occupancy from both (OCCUPANCY below, the CUDA occupancy
calculator's rules).

  --write    regenerate docs/gpu.md's resource table and its data,
             docs/gpu_kernel_resources.json (launches from the full emulated case set)
  --check    fail on a spill the data does not have (a kernel that did not
             spill, or more bytes than it), static shared memory past the
             48 KiB a launch may use without an opt-in, or a triplet kernel
             below 16 resident warps per SM on sm_90 (MIN_WARPS)
  --so LIB   also check a built extension (cuobjdump): SASS for each
             architecture and every kernel the emulated case set launches, with
             the registers and shared memory of this table (the table
             describes the build users get)

Usage: python scripts/kernel_resources.py [--archs 80,90] [--ptxas-logs DIR] [--launches JSON]
                                          [--write] [--check] [--so LIB [--cuobjdump BIN]]
Needs nvcc (NVCC, else on PATH, else /usr/local/cuda/bin/nvcc) and what emulate_cuda.py needs.
"""
import argparse
import concurrent.futures
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "docs", "gpu_kernel_resources.json")
DOC = os.path.join(ROOT, "docs", "gpu.md")
BEGIN, END = "<!-- kernel-resources:begin -->", "<!-- kernel-resources:end -->"
# The defines and options of torch.utils.cpp_extension's CUDA build and setup.py's nvcc flags, less the C++
# standard and the optimisation level (scripts/check_cuda.sh compiles with these too: --print-nvcc-flags).
EXTENSION_FLAGS = ["-lineinfo", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
                   "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
                   "-D__CUDA_NO_HALF2_OPERATORS__"]
NVCC_FLAGS = ["-std=c++17", "-O3", *EXTENSION_FLAGS]
# Every warning an error (they change no code).
WARNINGS = ["-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra"]
# A launch may use 48 KiB of shared memory (static plus dynamic) without cudaFuncSetAttribute.
SMEM_NO_OPT_IN = 48 * 1024
# Resident warps per SM the triplet kernels must reach on sm_90 (at 256 threads: at most 128 registers), so that
# enough warps hide the latency of their shared loads and float64 additions; the one instantiation allowed fewer
# (angle_kernel.cuh's passes_min_blocks: the float64 loss with an (N, N, N) upstream gradient) is named.
MIN_WARPS = {"rkd::gpu::angle_loss_sum_kernel": 16, "rkd::gpu::angle_passes_kernel": 16}
MIN_WARPS_ARCH = 90
MIN_WARPS_EXEMPT = "CubeUpstream<double, true>"

# Per architecture, for the theoretical occupancy (CUDA occupancy calculator, compute capability 8.0
# and 9.0): warps and blocks an SM holds, its 32-bit registers (allocated per warp in units of 256),
# its shared memory at the largest carve-out (allocated in units of 128 bytes, 1 KiB of each block's
# reserved for the system).
OCCUPANCY = {
    80: dict(warps=64, blocks=32, regs=65536, reg_unit=256, smem=164 * 1024, smem_unit=128, smem_reserved=1024),
    90: dict(warps=64, blocks=32, regs=65536, reg_unit=256, smem=228 * 1024, smem_unit=128, smem_reserved=1024),
}


def nvcc():
    return os.environ.get("NVCC") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"


def compile_log(arch, out):
    """ptxas's report of compile_check.cu for sm_<arch>, also written to out/kernels_sm_<arch>.log."""
    cmd = [nvcc(), *NVCC_FLAGS, *WARNINGS, "-Xptxas", "-v", "-gencode", f"arch=compute_{arch},code=sm_{arch}", "-c",
           os.path.join(ROOT, "csrc", "cuda", "standalone", "compile_check.cu"), "-o", os.path.join(out, f"{arch}.o")]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"nvcc failed for sm_{arch}:\n{run.stdout[-4000:]}{run.stderr[-4000:]}")
    with open(os.path.join(out, f"kernels_sm_{arch}.log"), "w") as f:
        f.write(run.stdout + run.stderr)
    return run.stdout + run.stderr


def parse_ptxas(text):
    """{mangled kernel: {regs, spill_stores, spill_loads, stack, smem}} from ptxas -v output."""
    kernels, name = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            name = m.group(1)
            kernels[name] = dict(regs=0, spill_stores=0, spill_loads=0, stack=0, smem=0)
            continue
        if name is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            k = kernels[name]
            k["stack"], k["spill_stores"], k["spill_loads"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            kernels[name]["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            kernels[name]["smem"] = int(s.group(1)) if s else 0
    return kernels


def demangle(names):
    tool = shutil.which("c++filt")
    if not tool or not names:
        return dict(zip(names, names))
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def template_of(demangled):
    """"rkd::gpu::gram_finish_kernel" of "void rkd::gpu::gram_finish_kernel<...>(...)"."""
    name = demangled[5:] if demangled.startswith("void ") else demangled
    return re.split(r"[<(]", name, 1)[0]


def occupancy(arch, regs, smem, threads):
    """Resident warps per SM of a kernel (regs per thread, static shared bytes) launched with `threads`."""
    o = OCCUPANCY[arch]
    warps_per_block = -(-threads // 32)
    limits = [o["blocks"], o["warps"] // warps_per_block]
    if regs:
        per_warp = -(-regs * 32 // o["reg_unit"]) * o["reg_unit"]
        limits.append(o["regs"] // per_warp // warps_per_block)
    per_block = -(-(smem + o["smem_reserved"]) // o["smem_unit"]) * o["smem_unit"]
    limits.append(o["smem"] // per_block)
    return min(limits) * warps_per_block


def emulated_launches(quick):
    """{mangled kernel: {"block": [x, y, z], "launches": n}} over the emulated case set (plain build)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernels.json")
        cmd = [sys.executable, os.path.join(ROOT, "scripts", "emulate_cuda.py"), "--build", "plain", "--kernels", path]
        run = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"the emulation failed:\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
        with open(path) as f:
            return json.load(f)


def table(archs, logs, launches):
    """Every compiled kernel per architecture: resources, block, occupancy."""
    names = sorted({name for kernels in logs.values() for name in kernels})
    pretty = demangle(names)
    block_of = {}  # template -> threads per block, from the kernels of it that were launched
    for name, info in launches.items():
        t = template_of(pretty.get(name, name))
        threads = info["block"][0] * info["block"][1] * info["block"][2]
        if block_of.setdefault(t, threads) != threads:
            raise RuntimeError(f"{t} is launched with {block_of[t]} and {threads} threads: one block shape per kernel")
    rows = []
    for arch in archs:
        for name, k in sorted(logs[arch].items()):
            t = template_of(pretty[name])
            threads = block_of.get(t)
            warps = occupancy(arch, k["regs"], k["smem"], threads) if threads else None
            rows.append(dict(arch=arch, kernel=name, demangled=pretty[name], template=t, launched=name in launches,
                             threads=threads, warps=warps, **k))
    return rows


def check(rows, baseline, launches):
    """Problems: new or larger spills against the baseline, a triplet kernel below its resident warps, shared
    memory past the limit, launched kernels missing from the compiled set."""
    base = {(r["arch"], r["kernel"]): r for r in baseline}
    problems = []
    for r in rows:
        spill = r["spill_stores"] + r["spill_loads"]
        b = base.get((r["arch"], r["kernel"]))
        allowed = b["spill_stores"] + b["spill_loads"] if b else 0
        if spill > allowed:
            was = f"{allowed} bytes in {os.path.relpath(DATA, ROOT)}" if b else "a kernel not in " + \
                os.path.relpath(DATA, ROOT)
            problems.append(f"sm_{r['arch']} {r['demangled'][:160]}: spills {spill} bytes "
                            f"({r['spill_stores']} stored, {r['spill_loads']} loaded; was {was})")
        need = MIN_WARPS.get(r.get("template"))
        if (need and r["arch"] == MIN_WARPS_ARCH and MIN_WARPS_EXEMPT not in r["demangled"]
                and (r.get("warps") or 0) < need):
            problems.append(f"sm_{r['arch']} {r['demangled'][:160]}: {r.get('warps')} resident warps per SM "
                            f"({r['regs']} registers), below the {need} a triplet kernel must reach")
        if r["smem"] > SMEM_NO_OPT_IN:
            problems.append(f"sm_{r['arch']} {r['demangled'][:160]}: {r['smem']} bytes of static shared memory, "
                            f"above the {SMEM_NO_OPT_IN} a launch may use without an opt-in")
    compiled = {(r["arch"], r["kernel"]) for r in rows}
    for arch in sorted({r["arch"] for r in rows}):
        for name in sorted(launches):
            if (arch, name) not in compiled:
                problems.append(f"sm_{arch}: {name} is launched but not compiled")
    return problems


def markdown(rows, archs):
    """One row per kernel template and architecture: the range over its instantiations."""
    lines = ["| kernel | arch | instantiations | registers | spill stores / loads (bytes) | static smem | "
             "threads per block | resident warps per SM (of 64) |", "|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in rows:
        by.setdefault((r["template"], r["arch"]), []).append(r)

    def span(values, unit=""):
        lo, hi = min(values), max(values)
        return f"{lo}{unit}" if lo == hi else f"{lo}-{hi}{unit}"
    for (t, arch), rs in sorted(by.items()):
        warps = [r["warps"] for r in rs if r["warps"] is not None]
        spills = f"{span([r['spill_stores'] for r in rs])} / {span([r['spill_loads'] for r in rs])}"
        lines.append(f"| `{t.replace('rkd::gpu::', '')}` | sm_{arch} | {len(rs)} | {span([r['regs'] for r in rs])} | "
                     f"{spills} | {span([r['smem'] for r in rs], ' B')} | {rs[0]['threads'] or '?'} | "
                     f"{span(warps) if warps else '?'} |")
    return "\n".join(lines)


def cuobjdump_tool(given):
    if given:
        return given
    for cand in (shutil.which("cuobjdump"), os.path.join(os.path.dirname(nvcc()), "cuobjdump")):
        if cand and os.path.exists(cand):
            return cand
    try:  # the registry's nvidia-cuda-cuobjdump (nvidia.cu13: a namespace package)
        spec = importlib.util.find_spec("nvidia.cu13")
    except ImportError:
        spec = None
    for base in spec.submodule_search_locations if spec else []:
        cand = os.path.join(base, "bin", "cuobjdump")
        if os.path.exists(cand):
            return cand
    return None


def check_so(lib, tool, archs, rows, launches):
    """Problems of a built extension: missing architectures or kernels, resources unlike the table's."""
    out = subprocess.run([tool, "--dump-resource-usage", lib], capture_output=True, text=True)
    if out.returncode != 0:
        return [f"cuobjdump failed on {lib}: {out.stderr.strip()}"]
    found, arch = {}, None
    for line in out.stdout.splitlines():
        m = re.match(r"\s*arch = sm_(\d+)", line)
        if m:
            arch = int(m.group(1))
            found.setdefault(arch, {})
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", line)
        if m and arch is not None:
            found[arch][name] = tuple(map(int, m.groups()))
    problems = []
    ptx = subprocess.run([tool, "--list-ptx", lib], capture_output=True, text=True).stdout.strip()
    # cuobjdump's SHARED on sm_90 counts the 1 KiB the system reserves in every block that uses shared memory;
    # ptxas's report does not.
    expected = {(r["arch"], r["kernel"]): (r["regs"], r["stack"], r["smem"] + (1024 if r["arch"] >= 90 and r["smem"]
                                                                                  else 0)) for r in rows}
    for a in archs:
        if a not in found:
            problems.append(f"{lib}: no SASS for sm_{a} (cubins: {sorted(found)})")
            continue
        for name in sorted(launches):
            if name not in found[a]:
                problems.append(f"{lib}: sm_{a} has no SASS for {name}, which the op layer launches")
        for name, res in sorted(found[a].items()):
            if (a, name) in expected and expected[(a, name)] != res:
                problems.append(f"{lib}: sm_{a} {name}: registers, stack, shared {res}, the table has "
                                f"{expected[(a, name)]}")
    print(f"{lib}: SASS for {', '.join(f'sm_{a} ({len(found[a])} kernels)' for a in sorted(found))}"
          f"{'; PTX: ' + ptx.replace(chr(10), ', ') if ptx else '; no PTX'}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="80,90", help="compute capabilities (default 80,90)")
    ap.add_argument("--print-nvcc-flags", action="store_true",
                    help="print the extension's nvcc flags with every warning an error (no standard, no -O), "
                         "one a line, and stop")
    ap.add_argument("--ptxas-logs", metavar="DIR",
                    help="ptxas's reports in DIR/kernels_sm_<arch>.log: read where they exist, else compiled and "
                         "written there")
    ap.add_argument("--compile-only", action="store_true", help="only compile (with --ptxas-logs: to read later)")
    ap.add_argument("--launches", metavar="JSON",
                    help="emulate_cuda.py --kernels output, instead of running it (none: no launches)")
    ap.add_argument("--write", action="store_true", help="regenerate docs/gpu.md's table and its data")
    ap.add_argument("--check", action="store_true", help="fail on a new spill or shared memory past the limit")
    ap.add_argument("--so", metavar="LIB", help="check this built extension's SASS against the table")
    ap.add_argument("--cuobjdump", metavar="BIN", help="cuobjdump to use with --so")
    args = ap.parse_args()
    if args.print_nvcc_flags:
        print("\n".join(EXTENSION_FLAGS + WARNINGS))
        return 0
    archs = [int(a) for a in args.archs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.ptxas_logs or tmp
        texts, todo = {}, []
        for a in archs:
            path = os.path.join(out, f"kernels_sm_{a}.log")
            if args.ptxas_logs and not args.compile_only and os.path.exists(path):
                with open(path) as f:
                    texts[a] = f.read()
            else:
                todo.append(a)
        with concurrent.futures.ThreadPoolExecutor(max(1, len(todo))) as pool:
            texts.update(zip(todo, pool.map(lambda a: compile_log(a, out), todo)))
    if args.compile_only:
        print(f"compiled compile_check.cu for sm_{', sm_'.join(map(str, archs))}: every kernel, no warning")
        return 0
    logs = {a: parse_ptxas(texts[a]) for a in archs}
    if args.launches == "none":  # spills and shared memory need no launches
        launches = {}
    elif args.launches:
        with open(args.launches) as f:
            launches = json.load(f)
    else:
        launches = emulated_launches(quick=not args.write)
    rows = table(archs, logs, launches)
    print(markdown(rows, archs))
    problems = []
    if args.check:
        with open(DATA) as f:
            problems += check(rows, json.load(f)["kernels"], launches)
    if args.so:
        tool = cuobjdump_tool(args.cuobjdump)
        if tool is None:
            problems.append("--so: no cuobjdump (pip install nvidia-cuda-cuobjdump, or pass --cuobjdump)")
        else:
            problems += check_so(args.so, tool, archs, rows, launches)
    if args.write:
        os.makedirs(os.path.dirname(DATA), exist_ok=True)
        with open(DATA, "w") as f:  # one kernel a line
            head = json.dumps({"command": "python scripts/kernel_resources.py --write", "nvcc_flags": NVCC_FLAGS})
            records = ",\n".join(json.dumps({k: v for k, v in r.items() if k != "demangled"}) for r in rows)
            f.write(f'{head[:-1]}, "kernels": [\n{records}\n]}}\n')
        with open(DOC) as f:
            doc = f.read()
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        with open(DOC, "w") as f:
            f.write(f"{head}{BEGIN}\n{markdown(rows, archs)}\n{END}{tail}")
        print(f"wrote {os.path.relpath(DATA, ROOT)} and the table in {os.path.relpath(DOC, ROOT)}")
    for p in problems:
        print(f"FAIL {p}")
    spills = sum(r["spill_stores"] + r["spill_loads"] > 0 for r in rows)
    print(f"{len(rows)} kernels over sm_{', sm_'.join(map(str, archs))}; {spills} spill; "
          f"{len(launches)} launched by the emulated case set; {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
