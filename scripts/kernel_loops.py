"""Instructions per triplet of the float32 triplet kernels, counted in their compiled inner loops (SASS).

Compiles csrc/cuda/standalone/compile_check.cu for one architecture with the
extension's flags (scripts/kernel_resources.py's), or reads an object or
library given with --obj, disassembles each float32 instantiation of
angle_loss_sum_kernel and angle_passes_kernel with cuobjdump, and finds its
triplet loops: the innermost loops (a backward branch and the code it jumps
over, holding no other loop) that read shared memory and store nothing. A float32 triplet forms each cosine's float64 numerator and converts
it once (F2F.F32.F64), so the triplets one pass of a loop evaluates are its
conversions over the cosines per triplet (2 for a loss, 1 for the angle
tensor's backward); instructions per triplet are the loop's instructions over
that (a loop with no conversion is not reported). The loops of a kernel print in code order (angle_passes_kernel: the
vertex pass's, then the opposite pass's, as the compiler laid them out).

What it ignores: the staging loops and everything outside the triplet loops
(each block stages kChunk rows per chunk: amortised over the chunk's
triplets), and that instructions differ in cost (a DADD takes two of a
float32 unit's issue slots on H100/H200; a shared load's latency is hidden
only with enough warps).

  --write   regenerate docs/gpu_triplet_loops.json and docs/gpu.md's table
  --check   fail on a triplet loop missing from, or dearer per triplet than, the committed data

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

DATA = os.path.join(K.ROOT, "docs", "gpu_triplet_loops.json")
BEGIN, END = "<!-- triplet-loops:begin -->", "<!-- triplet-loops:end -->"


def cosines_per_triplet(demangled):
    """2 where a triplet compares the two sides' cosines (a loss), 1 for the angle tensor's backward."""
    return 1 if "CubeUpstream<float, false>" in demangled else 2


def instructions(sass):
    """[(address, instruction text)] of one function's cuobjdump -sass listing."""
    return [(int(a, 16), t.strip()) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", sass)]


def opcode(text):
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]


def triplet_loops(insts):
    """The innermost loops that read shared memory and store nothing (the staging loops store to shared memory;
    a loop over an (N, N, N) upstream gradient also reads global memory): [(start, end)] indices."""
    index = {a: i for i, (a, _) in enumerate(insts)}
    loops = []
    for i, (a, t) in enumerate(insts):
        m = re.search(r"\bBRA\s+0x([0-9a-f]+)", t)
        if m and int(m.group(1), 16) <= a and int(m.group(1), 16) in index:
            loops.append((index[int(m.group(1), 16)], i))
    inner = [l for l in loops if not any(o != l and l[0] <= o[0] and o[1] <= l[1] for o in loops)]
    out = []
    for s, e in inner:
        ops = [opcode(t) for _, t in insts[s:e + 1]]
        if any(o.startswith("LDS") for o in ops) and not any(o.startswith(("STG", "STS")) for o in ops):
            out.append((s, e))
    return out


def classify(op):
    if op.startswith("DADD") or op.startswith("DMUL") or op.startswith("DFMA"):
        return "float64"
    if op.startswith("F2F"):
        return "convert"
    if op.startswith("LDS"):
        return "shared load"
    if op.startswith(("FMUL", "FFMA", "FADD", "FMNMX", "FSETP", "FSEL")):
        return "float32"
    return "other"


def loops_of(sass, demangled, name=None):
    """The triplet loops of one function's SASS listing: a row per loop with a conversion."""
    insts = instructions(sass)
    rows = []
    for n, (s, e) in enumerate(triplet_loops(insts)):
        ops = [opcode(t) for _, t in insts[s:e + 1]]
        triplets = sum(o.startswith("F2F.F32.F64") for o in ops) / cosines_per_triplet(demangled)
        if not triplets:
            continue
        classes = collections.Counter(classify(o) for o in ops)
        rows.append(dict(kernel=name or demangled, demangled=demangled, loop=n, instructions=len(ops),
                         triplets=triplets, per_triplet=round(len(ops) / triplets, 3),
                         classes={k: round(v / triplets, 3) for k, v in sorted(classes.items())}))
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
    mangled = sorted(set(re.findall(r"(_ZN3rkd3gpu\d+(?:angle_loss_sum_kernel|angle_passes_kernel)If\w*)", names)))
    if not mangled:  # older cuobjdump: the names from the SASS listing
        listing = subprocess.run([tool, "-sass", obj], capture_output=True, text=True, env=env).stdout
        mangled = sorted(set(re.findall(r"Function : (_ZN3rkd3gpu\d+(?:angle_loss_sum_kernel|angle_passes_kernel)If\w*)",
                                        listing)))
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
    """Problems: a triplet loop of the baseline missing, or costing more instructions per triplet than it did."""
    now = {(r["kernel"], r["loop"]): r for r in rows}
    problems = []
    for b in baseline:
        r = now.get((b["kernel"], b["loop"]))
        if r is None:
            problems.append(f"{b['demangled'][:120]} loop {b['loop']}: not found (was {b['per_triplet']:.1f} "
                            "instructions per triplet)")
        elif r["per_triplet"] > b["per_triplet"] + slack:
            problems.append(f"{b['demangled'][:120]} loop {b['loop']}: {r['per_triplet']:.1f} instructions per "
                            f"triplet, was {b['per_triplet']:.1f} in {os.path.relpath(DATA, K.ROOT)}")
    return problems


def markdown(rows, arch):
    lines = ["| kernel | loop | instructions / triplets | per triplet | float64 | convert | float32 | shared loads | "
             "other |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = r["classes"]
        short = re.sub(r"^void rkd::gpu::|\(.*$", "", r["demangled"]).replace("rkd::", "")
        lines.append(f"| `{short}` | {r['loop']} | {r['instructions']} / {r['triplets']:g} | {r['per_triplet']:.1f} | "
                     + " | ".join(f"{c.get(k, 0):.1f}" for k in ("float64", "convert", "float32", "shared load",
                                                                  "other")) + " |")
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
        sys.exit("kernel_loops: no triplet loop found")
    print(f"sm_{args.arch}: instructions per triplet in the float32 triplet kernels' inner loops (SASS)")
    table = markdown(rows, args.arch)
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
        print(f"{len(rows)} triplet loops; {len(problems)} problems")
        sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
