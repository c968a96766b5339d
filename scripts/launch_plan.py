"""The CUDA launch plan of every op, with estimated times from a stated model.

Dry-runs the op sequences of the GPU backend (csrc/core on
csrc/cuda/gpu_backend.cuh, through csrc/cuda/standalone/entry_points.h) with a
launch that records each kernel, its grid and block and the cost written
beside the launch (common.cuh's Cost: distinct bytes moved, float32 and
float64 flops, working blocks) and executes nothing (csrc/cuda/standalone/
plan.cpp). The product precision (rkd_ext.set_product_precision) is "auto"
unless --products says otherwise: each profile's plan is made with that
profile's float32 : float64 ratio, as a GPU with those rates would choose
(where the ratio is at least 8: float32 products for the distance family,
and reductions in one block only up to N = 16). Each op runs forward and
then backward as autograd calls it with the teacher detached: only the
student's gradient is asked for. Inputs are
float32, student and teacher (N, D); losses use reduction 'mean'.

THE TIMES ARE ESTIMATES FROM A MODEL, NOT MEASUREMENTS. Per launch:
    time = launch + max(bytes / bandwidth, compute)
For the kernels whose inner loops scripts/kernel_loops.py counts in the
compiled code (the triplet kernels, the products: docs/gpu_kernel_loops.json,
or --loops from another build), compute comes from that loop:
    clocks per unit = max(instructions / issue rate, each instruction class / its rate,
                          shared-memory wavefronts / 32)
    compute = units / SMs used * clocks per unit / hide / clock
    hide = min(1, resident warps / 16)
The units (triplets, multiply-adds) come from the launch's Cost; the rates
are the profile's, per SM and clock (an SM issues one warp instruction per
scheduler per clock: 128 thread instructions); a kernel with two loops is
priced at its dearer one; resident warps are what the kernel's registers and
shared memory allow on sm_90 (docs/gpu_kernel_resources.json), or what its
blocks fill when there are fewer than that per SM. The latency term
assumes a scheduler needs four warps to issue every clock (a shared load
takes about 29 clocks; the loops interleave two to four independent chains);
that figure is an assumption, not a measurement. The other kernels are priced
from the flops written beside their launch:
    compute = (flops32 / fp32 + flops64 / fp64) / min(1, working blocks / SMs)
What the model ignores: everything outside the counted loops of the counted
kernels (staging per chunk, epilogues), bank conflicts, memory latency, the tail of
a grid that does not fill its last wave, kernels torch itself launches
around the ops (autograd's gradient accumulation, say), and the close pairs
a pair matrix recomputes (they depend on the data). The instruction counts
are sm_90's, used for every profile.

A launch is flagged when it leaves SMs idle for long: fewer working blocks
than the GPU has SMs, and its estimated work times the idle share of the SMs
(1 - blocks / SMs) over 5 us. (Until the plan priced the products from their
loops, the rule was any work over 10 us on fewer blocks than SMs; it flagged
128 blocks on 132 SMs, which idle 3% of the GPU.)

Usage:
  python scripts/launch_plan.py [--profile NAME] [--detail | --compact] [--ops A,B] [--sizes typical|large|all]
                                [--products auto|float64|float32] [--loops JSON] [--check]
--loops: the loop counts of another build (python scripts/kernel_loops.py --obj LIB --json JSON).
--compact: one row per op and N, one column per D (what the README shows).
--check: exit 1 when, at N <= 256, a launch count exceeds its target (TARGETS) or a flagged launch appears at the
typical sizes. Needs g++ and the CUDA headers (CUDA_HOME, default /usr/local/cuda); no GPU, no torch.
"""
import argparse
import ctypes
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32, F64 = 0, 1                      # rkd::Dtype
MEAN = 1                             # rkd::Reduction
PRODUCTS = {"auto": 0, "float64": 1, "float32": 2}  # rkd::ProductPrecision
FLAG_IDLE_US = 5.0


# Rates per SM and clock, in thread results, by scripts/kernel_loops.py's instruction class (CUDA C++
# Programming Guide, arithmetic instruction throughput: compute capability 9.0 for the H200, 8.9 for the slow
# one); "issue" every instruction (four schedulers of one warp instruction per clock); "shared": warp loads'
# wavefronts (128 bytes of shared memory, 32 banks of 4 bytes, per clock). Classes not listed ("other": moves,
# branches, predicates) cost issue alone.
SM90_RATES = {"issue": 128, "float32": 128, "float64": 64, "convert": 16, "integer": 64, "special": 16,
              "shared": 1}


@dataclass(frozen=True)
class Profile:
    name: str
    sms: int
    clock: float       # Hz (boost)
    rates: dict        # per SM and clock (SM90_RATES's keys)
    bandwidth: float   # bytes/s
    launch: float      # s per launch

    @property
    def fp32(self):
        """FLOP/s of plain (non-tensor) float32 FMAs: our kernels use no tensor cores."""
        return 2 * self.rates["float32"] * self.sms * self.clock

    @property
    def fp64(self):
        return 2 * self.rates["float64"] * self.sms * self.clock

    @property
    def fp64_ratio(self):
        """cudaDevAttrSingleToDoublePrecisionPerfRatio of such a GPU."""
        return round(self.rates["float32"] / self.rates["float64"])


PROFILES = {
    # H200 SXM: 132 SMs at 1.98 GHz (the H100's die): fp32 67 TFLOP/s, fp64 33 on the CUDA cores (the 67 TFLOP/s
    # fp64 figure is the tensor cores', which our kernels do not use); HBM3e 4.8 TB/s.
    "h200": Profile("H200 (132 SMs at 1.98 GHz, fp32 67 TFLOP/s, fp64 33 TFLOP/s, 4.8 TB/s, 3 us/launch)",
                    132, 1.98e9, SM90_RATES, 4.8e12, 3e-6),
    # An RTX 4090-class GPU (compute capability 8.9): 128 SMs at 2.52 GHz, fp32 83 TFLOP/s, fp64 and conversions
    # to and from 64-bit types at 2 per SM and clock (1/64 of float32), about 1 TB/s.
    "slow-fp64": Profile("slow fp64 (128 SMs at 2.52 GHz, fp32 83 TFLOP/s, fp64 1.3 TFLOP/s, 1.0 TB/s, 3 us/launch)",
                         128, 2.52e9, dict(SM90_RATES, float64=2, convert=2), 1.0e12, 3e-6),
}
HIDE_WARPS = 16  # resident warps per SM that issue every clock (the latency term's assumption)
LOOPS = os.path.join(ROOT, "docs", "gpu_kernel_loops.json")
RESOURCES = os.path.join(ROOT, "docs", "gpu_kernel_resources.json")


@dataclass(frozen=True)
class LoopCost:
    """One kernel's counted inner loop (scripts/kernel_loops.py): per unit of work."""
    unit: str
    instructions: float
    classes: dict
    shared: float      # shared-memory pipe clocks of one warp's loads per unit (per 32 units of the SM)
    warps: int         # resident warps per SM its resources allow

    def clocks(self, p):
        """SM clocks per unit, and what bounds them."""
        terms = {"issue": self.instructions / p.rates["issue"], "shared": self.shared / 32 / p.rates["shared"]}
        terms.update({c: v / p.rates[c] for c, v in self.classes.items() if c in p.rates})
        bound = max(terms, key=terms.get)
        return terms[bound], bound

    def seconds(self, units, blocks, threads, p):
        resident = min(self.warps, math.ceil(blocks / p.sms) * max(1, threads // 32))
        clocks, _ = self.clocks(p)
        return units / min(p.sms, blocks) * clocks / min(1.0, resident / HIDE_WARPS) / p.clock


def loop_costs(loops=LOOPS, resources=RESOURCES):
    """{kernel's short name: LoopCost} from kernel_loops' data and the resource table (warps on the loops' arch)."""
    with open(loops) as f:
        data = json.load(f)
    with open(resources) as f:
        warps = {(r["kernel"], r["arch"]): r["warps"] for r in json.load(f)["kernels"]}
    out = {}
    for r in data["rows"]:
        name = short_name(r["demangled"])
        if name in out and out[name].instructions >= r["per_unit"]:
            continue  # the dearer loop prices the kernel
        w = warps.get((r["kernel"], data["arch"]))
        if w is None:
            raise SystemExit(f"launch_plan: {name} has no sm_{data['arch']} row in {os.path.relpath(resources, ROOT)}")
        out[name] = LoopCost(r["unit"], r["per_unit"], r["classes"], r["shared_wavefronts"], w)
    return out


TYPICAL = [(n, d) for n in (16, 32, 64, 128, 256) for d in (512, 2048, 25088)]
LARGE = [(n, d) for n in (1024, 4096) for d in (512, 2048)]
# Launch-count targets for forward + backward, teacher detached, at N <= 256.
TARGETS = {"rkd_distance_loss": 8, "rkd_angle_loss": 12, "RKDLoss": 16}


# ---- the recording library --------------------------------------------------------------

def _sources():
    for top, _, files in os.walk(os.path.join(ROOT, "csrc")):
        for f in sorted(files):
            if f.endswith((".h", ".cuh", ".cpp")):
                yield os.path.join(top, f)


def build():
    """plan.cpp compiled once per state of csrc (cached under build/launch_plan)."""
    h = hashlib.sha256()
    for path in sorted(_sources()):
        with open(path, "rb") as f:
            h.update(path.encode() + f.read())
    out_dir = os.path.join(ROOT, "build", "launch_plan")
    lib = os.path.join(out_dir, f"plan_{h.hexdigest()[:16]}.so")
    if not os.path.exists(lib):
        os.makedirs(out_dir, exist_ok=True)
        cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
        tmp = lib + f".{os.getpid()}.tmp"
        subprocess.run([os.environ.get("CXX", "g++"), "-std=c++17", "-O0", "-fPIC", "-shared", "-Wall", "-Wextra",
                        "-Werror", "-Wno-unknown-pragmas", "-Wno-clobbered", f"-I{cuda_home}/include",
                        os.path.join(ROOT, "csrc", "cuda", "standalone", "plan.cpp"), "-o", tmp, "-ldl"],
                       check=True)
        os.replace(tmp, lib)
    return ctypes.CDLL(lib)


@dataclass
class Launch:
    kernel: str
    grid: tuple
    block: tuple
    bytes: float
    flops32: float
    flops64: float
    blocks: float      # working blocks
    units: float = 0.0
    loop: LoopCost = None

    def compute(self, p):
        """Estimated seconds of arithmetic, and what bounds it."""
        if self.loop is not None and self.units:
            threads = self.block[0] * self.block[1] * self.block[2]
            return self.loop.seconds(self.units, self.blocks, threads, p), self.loop.clocks(p)[1]
        share = min(1.0, self.blocks / p.sms)
        return (self.flops32 / p.fp32 + self.flops64 / p.fp64) / share, "flops"

    def work(self, p):
        """Estimated seconds of work, launch overhead excluded."""
        return max(self.bytes / p.bandwidth, self.compute(p)[0])

    def bound(self, p):
        compute, what = self.compute(p)
        return "memory" if self.bytes / p.bandwidth >= compute else what

    def time(self, p):
        return p.launch + self.work(p)

    def flagged(self, p):
        return self.blocks < p.sms and self.work(p) * (1.0 - self.blocks / p.sms) > FLAG_IDLE_US * 1e-6


def short_name(name):
    """gram_pairs_kernel<Dist> from the demangled symbol."""
    name = re.sub(r"^void ", "", name)
    depth, cut = 0, len(name)
    for i in range(len(name) - 1, -1, -1):  # drop the parameter list
        if name[i] == ")":
            depth += 1
        elif name[i] == "(":
            depth -= 1
            if depth == 0:
                cut = i
                break
    name = name[:cut]
    name = re.sub(r"\(rkd::PairKind\)0", "Sq", name)
    name = re.sub(r"\(rkd::PairKind\)1", "SqClamped", name)
    name = re.sub(r"\(rkd::PairKind\)2", "Dist", name)
    name = re.sub(r"rkd::(gpu::)?", "", name)
    return name.replace("_kernel", "")


class Recorder:
    def __init__(self, lib, loops):
        self.lib = lib
        self.loops = loops
        lib.rkd_plan_size.restype = ctypes.c_int64
        self._next = 0x1000

    def ptr(self):
        """A distinct non-null address (never dereferenced)."""
        self._next += 0x1000
        return ctypes.c_void_p(self._next)

    def run(self, op, n, d, products="auto", fp64_ratio=2):
        """The launches of op at (n, d), forward then backward, with this product precision on a GPU of this
        float32 : float64 ratio (the default: an H200's)."""
        self.lib.rkd_set_product_precision(PRODUCTS[products], fp64_ratio)
        self.lib.rkd_plan_clear()
        OPS[op](self, n, d)
        name = ctypes.create_string_buffer(4096)
        dims = (ctypes.c_uint * 6)()
        cost = (ctypes.c_double * 5)()
        out = []
        for i in range(self.lib.rkd_plan_size()):
            self.lib.rkd_plan_get(ctypes.c_int64(i), name, ctypes.c_int64(len(name)), dims, cost)
            grid, block = tuple(dims[:3]), tuple(dims[3:])
            blocks = cost[3] or grid[0] * grid[1] * grid[2]
            kernel = short_name(name.value.decode())
            out.append(Launch(kernel, grid, block, cost[0], cost[1], cost[2], blocks, cost[4], self.loops.get(kernel)))
        return out


# ---- the ops, as autograd calls them ------------------------------------------------------
#
# Each function runs an op's forward and its backward on the recording
# library, float32 inputs, the upstream gradient float32 (the loss dtype), the
# student's gradient alone. A new op is one more function in OPS.

I, D_ = ctypes.c_int64, ctypes.c_double
EPS = D_(1e-12)


def _matrix(normalized):
    def run(r, n, d):
        x, d64 = r.ptr(), r.ptr()
        r.lib.rkd_distance_matrix(normalized, F32, x, I(n), I(d), EPS, d64, r.ptr())
        r.lib.rkd_distance_matrix_backward(normalized, F32, r.ptr(), F32, x, I(n), I(d), d64, EPS, r.ptr())
    return run


def _distance_loss(r, n, d):
    s, t, ds, dt, stats = r.ptr(), r.ptr(), r.ptr(), r.ptr(), r.ptr()
    common = (F32, s, F32, t, I(n), I(d), I(d))
    args = (D_(1.0), EPS, MEAN, 0, D_(0.0))
    r.lib.rkd_distance_loss_c(*common, *args, ds, dt, stats, F32, r.ptr())
    r.lib.rkd_distance_loss_backward_c(F32, r.ptr(), *common, ds, dt, stats, *args, r.ptr(), None)


def _angle_tensor(r, n, d):
    x, sq = r.ptr(), r.ptr()
    r.lib.rkd_angle_tensor_c(F32, x, I(n), I(d), EPS, 1, sq, r.ptr())
    r.lib.rkd_angle_tensor_backward_c(F32, r.ptr(), F32, x, I(n), I(d), sq, EPS, 1, r.ptr())


def _angle_loss(r, n, d):
    s, t, ss, st = r.ptr(), r.ptr(), r.ptr(), r.ptr()
    common = (F32, s, F32, t, I(n), I(d), I(d))
    args = (D_(1.0), EPS, MEAN, 1)
    r.lib.rkd_angle_loss_c(*common, *args, ss, st, F32, r.ptr())
    r.lib.rkd_angle_loss_backward_c(F32, r.ptr(), *common, ss, st, *args, F32, r.ptr(), None)


def _rkd_loss(r, n, d):
    """RKDLoss(25, 50) (rkd_ext/losses.py): the fused rkd_loss op."""
    s, t, ss, st, stats = r.ptr(), r.ptr(), r.ptr(), r.ptr(), r.ptr()
    common = (F32, s, F32, t, I(n), I(d), I(d))
    args = (D_(25.0), D_(50.0), D_(1.0), EPS, EPS, MEAN, 0, D_(0.0), 1)
    r.lib.rkd_loss_c(*common, *args, ss, st, stats, F32, r.ptr())
    r.lib.rkd_loss_backward_c(F32, r.ptr(), *common, ss, st, stats, *args, F32, r.ptr(), None)


def _rows_of_rank(ranks, kind):
    """The sharded global batch (rkd_ext.distributed): rank 0's rows of the distance matrix of n samples split
    over `ranks` ranks (pair_matrix_rows), then their gradient (pair_matrix_rows_backward, a float64 upstream
    gradient)."""
    def run(r, n, d):
        x, v, e = r.ptr(), r.ptr(), max(1, n // ranks)
        r.lib.rkd_pair_matrix_rows_c(F32, x, I(n), I(d), I(0), I(e), kind, EPS, v)
        r.lib.rkd_pair_matrix_rows_backward_c(F64, r.ptr(), F32, x, I(n), I(d), v, I(0), I(e), kind, EPS, r.ptr())
    return run


def _separate_losses(r, n, d):
    """The two losses called one after the other (what RKDLoss fuses)."""
    _distance_loss(r, n, d)
    _angle_loss(r, n, d)


OPS = {
    "pairwise_distance": _matrix(0),
    "normalized_distance": _matrix(1),
    "rkd_distance_loss": _distance_loss,
    "angle_tensor": _angle_tensor,
    "rkd_angle_loss": _angle_loss,
    "RKDLoss": _rkd_loss,
    "separate_losses": _separate_losses,
    "pair_matrix_rows/8": _rows_of_rank(8, 2),  # PairKind::Dist
}


# ---- report -------------------------------------------------------------------------------

def fmt_us(seconds):
    us = seconds * 1e6
    return f"{us:.0f}" if us >= 100 else f"{us:.1f}"


def fp64_share(launches, p):
    """The share of the estimate spent in float64 arithmetic: counted kernels bound by float64 operations or
    conversions to and from them, and the other kernels' float64 flops."""
    f64 = 0.0
    for l in launches:
        compute, what = l.compute(p)
        if what == "flops":
            f64 += l.flops64 / p.fp64 / min(1.0, l.blocks / p.sms)
        elif what in ("float64", "convert") and compute >= l.bytes / p.bandwidth:
            f64 += compute
    return f64 / sum(l.time(p) for l in launches)


def table(rows, profiles):
    """rows: (op, N, D, {profile: launches}), each profile's plan made with its own float64 ratio."""
    p0 = profiles[0]
    head = ["op", "N", "D", "launches"] + [f"est. {p} (us)" for p in profiles] + \
           [f"fp64 share, {p}" for p in profiles[1:]] + [f"flagged ({p0})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for op, n, d, plans in rows:
        ps = [PROFILES[p] for p in profiles]
        total = [sum(l.time(PROFILES[p]) for l in plans[p]) for p in profiles]
        share = []
        for p in profiles[1:]:
            share.append(f"{100 * fp64_share(plans[p], PROFILES[p]):.0f}%")
        flagged = [f"{l.kernel} {l.grid}: {fmt_us(l.work(ps[0]))} us" for l in plans[p0] if l.flagged(ps[0])]
        lines.append("| " + " | ".join([op, str(n), str(d), _counts(plans, profiles)] +
                                        [fmt_us(t) for t in total] + share + ["; ".join(flagged) or "-"]) + " |")
    return "\n".join(lines)


def _counts(plans, profiles):
    """The launch count, or each profile's where they differ."""
    counts = [len(plans[p]) for p in profiles]
    return str(counts[0]) if len(set(counts)) == 1 else "/".join(map(str, counts))


def compact(rows, profiles):
    """Rows (op, N), columns D: launches, the estimates, the slow profile's fp64 share, flagged launches."""
    ps = [PROFILES[p] for p in profiles]
    ds = sorted({d for _, _, d, _ in rows})
    cells, order = {}, []
    for op, n, d, plans in rows:
        if (op, n) not in cells:
            cells[(op, n)] = {}
            order.append((op, n))
        times = [sum(l.time(PROFILES[p]) for l in plans[p]) for p in profiles]
        text = f"{_counts(plans, profiles)} · " + " · ".join(f"{fmt_us(t)} µs" for t in times)
        if len(ps) > 1:
            text += f" ({100 * fp64_share(plans[profiles[-1]], ps[-1]):.0f}% fp64)"
        flagged = sum(l.flagged(ps[0]) for l in plans[profiles[0]])
        cells[(op, n)][d] = text + (f" · {flagged} flagged" if flagged else "")
    head = ["op", "N"] + [f"D = {d}" for d in ds]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---|" * len(ds)]
    for op, n in order:
        lines.append(f"| {op} | {n} | " + " | ".join(cells[(op, n)].get(d, "") for d in ds) + " |")
    cell = "launches · " + " · ".join(f"est. {p}" for p in profiles) + \
        (f" (share of the {profiles[-1]} estimate in float64 arithmetic)" if len(ps) > 1 else "")
    return f"Each cell: {cell}; flagged launches ({profiles[0]}), if any.\n\n" + "\n".join(lines)


def detail(op, n, d, plans, profiles):
    """Every launch of each profile's plan, estimated with that profile."""
    out = []
    for name in profiles:
        p = PROFILES[name]
        lines = [f"### {op}, N = {n}, D = {d}, {name}", "",
                 "| # | kernel | grid | block | MB | fp32 MFLOP | fp64 MFLOP | units | blocks | est. (us) | bound | flag |",
                 "|" + "---|" * 12]
        for i, l in enumerate(plans[name], 1):
            lines.append(f"| {i} | {l.kernel} | {l.grid} | {l.block} | {l.bytes / 1e6:.3f} | {l.flops32 / 1e6:.2f} | "
                         f"{l.flops64 / 1e6:.2f} | {f'{l.units:.3g} {l.loop.unit}s' if l.loop and l.units else '-'} | "
                         f"{l.blocks:.0f} | {fmt_us(l.time(p))} | {l.bound(p)} | {'FLAG' if l.flagged(p) else ''} |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def violations(rows):
    """What --check fails on: launch counts over target at N <= 256, flagged launches at the typical sizes."""
    out = []
    for op, n, d, launches in rows:
        if op in TARGETS and n <= 256 and len(launches) > TARGETS[op]:
            out.append(f"{op} N={n} D={d}: {len(launches)} launches, target {TARGETS[op]}")
        if (n, d) in TYPICAL:
            out += [f"{op} N={n} D={d}: flagged {l.kernel} {l.grid}" for l in launches if l.flagged(PROFILES["h200"])]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="append", choices=sorted(PROFILES),
                    help="profiles to estimate with, the first one flags (default: h200 and slow-fp64)")
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated ops (default: all)")
    ap.add_argument("--sizes", choices=("typical", "large", "all"), default="all")
    ap.add_argument("--detail", action="store_true", help="also list every launch")
    ap.add_argument("--compact", action="store_true", help="one row per op and N, one column per D")
    ap.add_argument("--products", choices=sorted(PRODUCTS), default="auto",
                    help="the product precision (rkd_ext.set_product_precision) the plans are made with")
    ap.add_argument("--loops", default=LOOPS, help="scripts/kernel_loops.py's counts of a build (--json) to price with "
                    f"(default: {os.path.relpath(LOOPS, ROOT)})")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed (see TARGETS)")
    args = ap.parse_args(argv)
    profiles = args.profile or ["h200", "slow-fp64"]
    sizes = {"typical": TYPICAL, "large": LARGE, "all": TYPICAL + LARGE}[args.sizes]
    rec = Recorder(build(), loop_costs(args.loops))
    planned = sorted(set(profiles) | {"h200"})  # --check judges the h200 plan
    rows = [(op, n, d, {p: rec.run(op, n, d, args.products, PROFILES[p].fp64_ratio) for p in planned})
            for op in args.ops.split(",") for n, d in sizes]
    print("Launch plan of the CUDA ops: forward + backward, float32, teacher detached, reduction 'mean'.")
    print(f"Product precision {args.products!r}, each profile's plan made with its float32 : float64 ratio "
          f"({', '.join(f'{p} {PROFILES[p].fp64_ratio}' for p in profiles)}).")
    print("ESTIMATES FROM A MODEL (scripts/launch_plan.py's docstring), not measurements:")
    for p in profiles:
        print(f"  {p}: {PROFILES[p].name}")
    print(f"Flagged: fewer working blocks than SMs, the idle SMs' share of the estimated work over {FLAG_IDLE_US:.0f} us "
          f"({profiles[0]}).\n")
    print(compact(rows, profiles) if args.compact else table(rows, profiles))
    if args.detail:
        print()
        for row in rows:
            print(detail(*row, profiles))
    bad = violations([(op, n, d, plans["h200"]) for op, n, d, plans in rows])
    for p in planned:  # the launch counts of every plan
        bad += [f"{v} ({p} plan)" for v in violations([(op, n, d, plans[p]) for op, n, d, plans in rows])
                if "target" in v and v not in bad]
    if args.check:
        for v in bad:
            print("CHECK FAILED:", v)
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
