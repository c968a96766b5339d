"""``python -m benchmarks.serial_threshold``: where the CPU's calling thread alone is as fast as the thread pool.

Each case times rkd_ext's own op (forward + backward, float32, back to back) two ways in interleaved rounds
(benchmarks.paired's method): with every call serial (the calling thread, no parallel region) and with every
call parallel (torch's intra-op pool, as before the threshold), switched through
``torch.ops.rkd_ext._set_cpu_serial_work``. It prints each case's call work (element operations, as
csrc/core/bind.h counts them: N^2 (D_s + D_t), plus N^3 for the angle family) beside parallel / serial, and
the largest work below which no case is slower serial by more than --slack: the value csrc/core/serial_work.h's
kSerialWork is set from. Run it alone on the machine (OpenMP timings collapse beside another busy process).

    python -m benchmarks.serial_threshold [--ops OP,...] [--rounds 9] [--slack 1.05] [--json OUT.json]
"""
import argparse
import json
import math
import statistics
import sys

import torch

from . import paired
from .impls import FORWARD_BACKWARD, IMPLS, KIND

SERIAL, PARALLEL = "ours_serial", "ours_parallel"
_current = {"work": None}


def _with_serial_work(fn, work):
    """fn with the threshold set to `work` (only when it changes: within a block of calls it costs nothing)."""
    def run(*args):
        if _current["work"] != work:
            torch.ops.rkd_ext._set_cpu_serial_work(work)
            _current["work"] = work
        return fn(*args)
    return run


def call_work(op, n, d):
    """Element operations of one call at (n, d), as bind.h's pair_work and triplet_work count them."""
    pairs = n * n * d * (2 if KIND[op] == "loss" else 1)
    return pairs + (n**3 if op.startswith("angle") or op == "rkd_loss" else 0)


def threshold(rows, slack):
    """The largest work w such that no case of work <= w is slower serial than parallel by more than slack."""
    best = 0.0
    for r in sorted(rows, key=lambda r: r["work"]):
        if r["parallel_over_serial"] < 1.0 / slack:
            break
        best = r["work"]
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", default=",".join(IMPLS))
    p.add_argument("--n", default="16,32,64,128")
    p.add_argument("--d", default="512,2048,25088")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--slack", type=float, default=1.05, help="serial at most this much slower (default 1.05)")
    p.add_argument("--json", help="write the cases here")
    args = p.parse_args(argv)
    default = torch.ops.rkd_ext._cpu_serial_work()
    rows = []
    try:
        for op in args.ops.split(","):
            IMPLS[op][SERIAL] = _with_serial_work(IMPLS[op]["ours"], math.inf)
            IMPLS[op][PARALLEL] = _with_serial_work(IMPLS[op]["ours"], 0.0)
            for n in map(int, args.n.split(",")):
                for d in map(int, args.d.split(",")):
                    r = paired.measure(op, SERIAL, PARALLEL, FORWARD_BACKWARD, n, d, rounds=args.rounds)
                    if "skipped" in r:
                        continue
                    row = dict(op=op, n=n, d=d, work=float(call_work(op, n, d)), serial_s=r["impl_s"],
                               parallel_s=r["base_s"], parallel_over_serial=r["speedup"], p10=r["p10"], p90=r["p90"])
                    rows.append(row)
                    print(f"{op:20s} N={n:4d} D={d:6d} work {row['work']:.3g}: serial {row['serial_s'] * 1e3:.3g} ms, "
                          f"parallel {row['parallel_s'] * 1e3:.3g} ms, parallel / serial {r['speedup']:.2f} "
                          f"({r['p10']:.2f}-{r['p90']:.2f})", flush=True)
    finally:
        torch.ops.rkd_ext._set_cpu_serial_work(default)
    w = threshold(rows, args.slack)
    print(f"\nlargest work with serial at most {args.slack:g}x slower than parallel in every case at or below it: "
          f"{w:.3g} (threads: {torch.get_num_threads()}; the setting now: {default:.3g})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=torch.get_num_threads(), slack=args.slack, threshold=w,
                           median_ratio=statistics.median(r["parallel_over_serial"] for r in rows) if rows else None,
                           cases=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
