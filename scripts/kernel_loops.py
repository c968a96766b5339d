"""Instructions per unit of work in the compiled inner loops (SASS) of the kernels that do the O(N^3) and O(N^2 D) work.

Compiles csrc/cuda/standalone/compile_check.cu for one architecture with the
extension's flags (scripts/kernel_resources.py's), or reads an object or
library given with --obj, disassembles the float32 instantiations of the
triplet kernels (angle_loss_sum_kernel, angle_passes_kernel) and of the
products (gram_partial_kernel, gram_partial32_kernel, grad_gemm_kernel,
grad_gemm32_kernel) with cuobjdump, and counts their inner loops (innermost
loops: a backward branch and the code it jumps over, holding no other loop):

- triplet loops: the inner loops that read shared memory and store nothing.
  A float32 triplet forms each cosine's float64 numerator and converts it
  once (F2F.F32.F64), so the triplets one pass of a loop evaluates are its
  conversions over the cosines per triplet (2 for a loss, 1 for the angle
  tensor's backward); a loop with no conversion is not reported. The loops
  of a kernel print in code order (angle_passes_kernel: the vertex pass's,
  then the opposite pass's, as the compiler laid them out).
- product loops: the inner loop that reads shared memory with the most
  multiply-adds (FFMA, DFMA); its unit is one multiply-add, and the loop's
  instructions include the staging of the next operand tiles.

Each row gives the instructions per unit by class (float64, convert,
float32, integer, special functions, shared loads, other) and the
shared-memory pipe's clocks per unit of one warp's loads (shared_wavefronts:
one warp's unit is 32 threads' units): scripts/launch_plan.py prices each
launch of these kernels with them. What it ignores: everything outside the counted
loops (per-chunk staging of the triplet kernels, epilogues), amortised over
many units at the sizes that matter.

  --write   regenerate docs/gpu_kernel_loops.json and docs/gpu.md's table
  --check   fail on a loop missing from, or dearer per unit than, the committed data

Usage: python scripts/kernel_loops.py [--arch 90] [--obj FILE] [--cuobjdump BIN] [--json OUT] [--write] [--check]
Needs nvcc (unless --obj) and cuobjdump (on PATH, CUDA_HOME/bin, or the nvidia-cuda-cuobjdump package), with
nvdisasm beside it or on PATH (the nvidia-cuda-nvdisasm package) for cuobjdump 13.2 and later.
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_resources as K  # noqa: E402

DATA = os.path.join(K.ROOT, "docs", "gpu_kernel_loops.json")
BEGIN, END = "<!-- kernel-loops:begin -->", "<!-- kernel-loops:end -->"
TRIPLET_KERNELS = ("angle_loss_sum_kernel", "angle_passes_kernel")
PRODUCT_KERNELS = ("gram_partial_kernel", "gram_partial32_kernel", "grad_gemm_kernel", "grad_gemm32_kernel")
# The float32 instantiations (If...), and gram_partial_kernel, whose only type parameter is its float64 side.
SYMBOL = re.compile(r"(_ZN3rkd3gpu\d+(?:(?:%s)If|gram_partial_kernelI)\w*)" % "|".join(TRIPLET_KERNELS + PRODUCT_KERNELS))
CLASSES = ("float64", "convert", "float32", "integer", "special", "shared load", "other")


def cosines_per_triplet(demangled):
    """2 where a triplet compares the two sides' cosines (a loss), 1 for the angle tensor's backward."""
    return 1 if "CubeUpstream<float, false>" in demangled else 2


def instructions(sass):
    """[(address, instruction text)] of one function's cuobjdump -sass listing."""
    return [(int(a, 16), t.strip()) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", sass)]


def opcode(text):
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]


def inner_loops(insts):
    """The innermost loops (a backward branch and the code it jumps over, holding no other loop): [(start, end)]
    indices."""
    index = {a: i for i, (a, _) in enumerate(insts)}
    loops = []
    for i, (a, t) in enumerate(insts):
        m = re.search(r"\bBRA\s+0x([0-9a-f]+)", t)
        if m and int(m.group(1), 16) <= a and int(m.group(1), 16) in index:
            loops.append((index[int(m.group(1), 16)], i))
    return [l for l in loops if not any(o != l and l[0] <= o[0] and o[1] <= l[1] for o in loops)]


def triplet_loops(insts):
    """The innermost loops that read shared memory and store nothing (the staging loops store to shared memory;
    a loop over an (N, N, N) upstream gradient also reads global memory)."""
    out = []
    for s, e in inner_loops(insts):
        ops = [opcode(t) for _, t in insts[s:e + 1]]
        if any(o.startswith("LDS") for o in ops) and not any(o.startswith(("STG", "STS")) for o in ops):
            out.append((s, e))
    return out


def multiply_adds(ops):
    return sum(o.startswith(("FFMA", "DFMA")) for o in ops)


def product_loop(insts):
    """The innermost loop that reads shared memory with the most multiply-adds, or None."""
    loops = [(multiply_adds([opcode(t) for _, t in insts[s:e + 1]]), s, e) for s, e in inner_loops(insts)
             if any(opcode(t).startswith("LDS") for _, t in insts[s:e + 1])]
    best = max(loops, default=(0, 0, 0))
    return best[1:] if best[0] else None


def classify(op):
    if op.startswith(("DADD", "DMUL", "DFMA", "DSETP", "DMNMX")):
        return "float64"
    if op.startswith(("F2F", "I2F.F64", "F2I.F64", "I2F.S64", "F2I.S64")):
        return "convert"
    if op.startswith("LDS"):
        return "shared load"
    if op.startswith(("FMUL", "FFMA", "FADD", "FMNMX", "FSETP", "FSEL", "FCHK")):
        return "float32"
    if op.startswith("MUFU"):
        return "special"
    if op.startswith(("IADD", "IMAD", "ISETP", "IMNMX", "LEA", "LOP", "SHF", "SEL", "PRMT", "IABS")):
        return "integer"
    return "other"


def shared_wavefronts(op):
    """Clocks of the shared-memory pipe one warp's load takes: one per 128 distinct bytes, at least one. The
    counted loops run on 16 x 16 threads whose operands are either broadcast along a row (ty + 16 r: two
    addresses per warp) or one word per thread of a row (tx + 16 c: 16 consecutive addresses), so a warp reads at
    most 16 distinct words: LDS and LDS.64 one clock, LDS.128 two (bank conflicts aside)."""
    m = re.search(r"\.(64|128)\b", op)
    width = int(m.group(1)) // 8 if m else 4
    return max(1, 16 * width // 128)


def row(name, demangled, loop, ops, unit, units):
    classes = collections.Counter(classify(o) for o in ops)
    return dict(kernel=name or demangled, demangled=demangled, loop=loop, unit=unit, instructions=len(ops),
                units=units, per_unit=round(len(ops) / units, 3),
                classes={k: round(v / units, 4) for k, v in sorted(classes.items())},
                shared_wavefronts=round(sum(shared_wavefronts(o) for o in ops if o.startswith("LDS")) / units, 4))


def loops_of(sass, demangled, name=None):
    """The counted loops of one function's SASS listing: a row per triplet loop with a conversion, or the
    product loop."""
    insts = instructions(sass)
    rows = []
    if any(k + "<" in demangled for k in PRODUCT_KERNELS):
        found = product_loop(insts)
        if found:
            ops = [opcode(t) for _, t in insts[found[0]:found[1] + 1]]
            rows.append(row(name, demangled, 0, ops, "multiply-add", multiply_adds(ops)))
        return rows
    for n, (s, e) in enumerate(triplet_loops(insts)):
        ops = [opcode(t) for _, t in insts[s:e + 1]]
        triplets = sum(o.startswith("F2F.F32.F64") for o in ops) / cosines_per_triplet(demangled)
        if triplets:
            rows.append(row(name, demangled, n, ops, "triplet", triplets))
    return rows


def arch_section(listing, arch):
    """The part of a cuobjdump listing for sm_<arch> (a library holds every architecture's code; cuobjdump's own
    -arch filter fails on some releases when another architecture lacks the function)."""
    parts = re.split(r"^\s*arch = sm_(\d+)\s*$", listing, flags=re.M)
    for a, text in zip(parts[1::2], parts[2::2]):
        if int(a) == arch:
            return text
    return listing if len(parts) == 1 else ""


def analyse(obj, tool, arch):
    # cuobjdump 13.2 and later disassemble through nvdisasm, which the registry's nvidia-cuda-nvdisasm puts beside
    # nvidia-cuda-cuobjdump's cuobjdump.
    env = dict(os.environ, PATH=os.path.dirname(os.path.abspath(tool)) + os.pathsep + os.environ.get("PATH", ""))
    names = subprocess.run([tool, "-symbols", obj], capture_output=True, text=True, env=env).stdout
    mangled = sorted(set(SYMBOL.findall(names)))
    if not mangled:  # older cuobjdump: the names from the SASS listing
        listing = subprocess.run([tool, "-sass", obj], capture_output=True, text=True, env=env).stdout
        mangled = sorted(set(SYMBOL.findall(" ".join(re.findall(r"Function : (\S+)", listing)))))
    pretty = K.demangle(mangled)
    rows = []
    for name in mangled:
        run = subprocess.run([tool, "-sass", "-fun", name, obj], capture_output=True, text=True, env=env)
        sass = arch_section(run.stdout, arch)
        if not instructions(sass):
            raise RuntimeError(f"cuobjdump gave no sm_{arch} SASS for {name} in {obj}: {run.stderr.strip()[:300]}")
        rows += loops_of(sass, pretty[name], name)
    return rows


def check(rows, baseline, slack=0.05):
    """Problems: a loop of the baseline missing, or costing more instructions per unit than it did."""
    now = {(r["kernel"], r["loop"]): r for r in rows}
    problems = []
    for b in baseline:
        r = now.get((b["kernel"], b["loop"]))
        if r is None:
            problems.append(f"{b['demangled'][:120]} loop {b['loop']}: not found (was {b['per_unit']:.2f} "
                            f"instructions per {b['unit']})")
        elif r["per_unit"] > b["per_unit"] + slack:
            problems.append(f"{b['demangled'][:120]} loop {b['loop']}: {r['per_unit']:.2f} instructions per "
                            f"{b['unit']}, was {b['per_unit']:.2f} in {os.path.relpath(DATA, K.ROOT)}")
    return problems


def short_name(demangled):
    return re.sub(r"rkd::(gpu::)?", "", re.sub(r"^void |\(.*$", "", demangled)).replace("_kernel", "")


def markdown(rows):
    lines = ["| kernel | loop | unit | instructions / units | per unit | " + " | ".join(CLASSES) +
             " | shared wavefronts |", "|---|---:|---|---:|---:|" + "---:|" * (len(CLASSES) + 1)]
    for r in rows:
        c = r["classes"]
        lines.append(f"| `{short_name(r['demangled'])}` | {r['loop']} | {r['unit']} | {r['instructions']} / "
                     f"{r['units']:g} | {r['per_unit']:.2f} | " + " | ".join(f"{c.get(k, 0):.2f}" for k in CLASSES)
                     + f" | {r['shared_wavefronts']:.2f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--obj", help="an object or library to read instead of compiling")
    ap.add_argument("--cuobjdump", help="the cuobjdump to use")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--write", action="store_true", help=f"write {os.path.relpath(DATA, K.ROOT)} and docs/gpu.md's table")
    ap.add_argument("--check", action="store_true", help="fail on a loop dearer than the committed data")
    args = ap.parse_args()
    tool = K.cuobjdump_tool(args.cuobjdump)
    if tool is None:
        sys.exit("kernel_loops: cuobjdump not found (pip install nvidia-cuda-cuobjdump, or pass --cuobjdump)")
    with tempfile.TemporaryDirectory() as tmp:
        obj = args.obj
        if obj is None:
            K.compile_log(args.arch, tmp)
            obj = os.path.join(tmp, f"{args.arch}.o")
        rows = analyse(obj, tool, args.arch)
    if not rows:
        sys.exit("kernel_loops: no loop found")
    print(f"sm_{args.arch}: instructions per unit of work in the inner loops of the float32 triplet kernels and of "
          "the products (SASS)")
    table = markdown(rows)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(arch=args.arch, rows=rows), f, indent=1)
    if args.write:
        with open(DATA, "w") as f:
            json.dump(dict(command=f"python scripts/kernel_loops.py --arch {args.arch} --write",
                           nvcc_flags=K.NVCC_FLAGS, arch=args.arch, rows=rows), f, indent=1)
            f.write("\n")
        with open(K.DOC) as f:
            doc = f.read()
        b, e = doc.index(BEGIN) + len(BEGIN), doc.index(END)
        with open(K.DOC, "w") as f:
            f.write(doc[:b] + "\n" + table + "\n" + doc[e:])
        print(f"wrote {os.path.relpath(DATA, K.ROOT)} and the table in docs/gpu.md")
    if args.check:
        with open(DATA) as f:
            base = json.load(f)
        if base["arch"] != args.arch:
            sys.exit(f"kernel_loops: the committed data is for sm_{base['arch']}")
        problems = check(rows, base["rows"])
        for p in problems:
            print("PROBLEM:", p)
        print(f"{len(rows)} loops; {len(problems)} problems")
        sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
