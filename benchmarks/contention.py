"""The CPU's contention guard (csrc/core/serial_work.h) on and off, its parallel regions' chunking against one
equal share per thread, or its own worker pool against torch's, in three conditions: calls back to back, calls
after a sleep, and calls beside busy processes.

    python -m benchmarks.contention [--compare guard|chunks|pool] [--ops distance_loss,angle_loss,rkd_loss]
                                    [--n 32,64,128] [--d 512,2048] [--rounds 10] [--block-ms 30] [--gap-ms 10]
                                    [--busy 1] [--json OUT.json] [--md OUT.md]

Each case (an op's forward + backward, float32, N x D) runs `--rounds` rounds per condition; a round times a block
of calls with the defaults ("on") and a block with the compared setting off, in alternating order, each after
0.1 s of untimed calls in the same setting, and takes the ratio of the blocks' medians (below 1: the default made
calls faster). `--compare guard` (the default) turns the guard off (hold 0); `--compare chunks` makes every
parallel region hand out one equal share per thread (region chunks 1, at::parallel_for's own split) instead of
the default chunks that free threads take in turn; `--compare pool` runs the regions on torch's intra-op pool
(OpenMP) instead of the kernels' own pool (csrc/cpu/cpu_pool.h). Conditions: `idle` (calls back to back),
`gap` (`--gap-ms` of sleep before each call: the pool's threads fall asleep, which the guard must not take for
contention), `busy` (`--busy` busy processes beside the rounds, started before and killed after). Also counted
with the defaults: the parallel regions the calls opened and the holds the guard started, per 1,000 calls.
The same bits come out either way (python_tests/test_cpu_serial.py, and each op's determinism test), so only
time is compared.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

os.environ.setdefault("RKD_EXT_REQUIRE_EXT", "1")

import rkd_ext  # noqa: E402
from rkd_ext.testing import make_features  # noqa: E402

from .paired import _busy, _commit, _hardware  # noqa: E402

OPS = {
    "distance_loss": rkd_ext.rkd_distance_loss,
    "angle_loss": rkd_ext.rkd_angle_loss,
    "rkd_loss": rkd_ext.rkd_loss,
}
CONDITIONS = ("idle", "gap", "busy")
# What the compared setting off means.
OFF = dict(guard="the contention guard off", chunks="one equal share per thread in every parallel region",
           pool="the parallel regions on torch's intra-op pool")


def _set_hold(seconds):
    ops = torch.ops.rkd_ext
    ops._set_cpu_contention_hold(0.0)  # ends any hold in force
    ops._set_cpu_contention_hold(seconds)


def _set(compare, on, hold, chunks, pool=1):
    """The defaults (on), or the compared setting off: the guard (hold 0), the chunking (one share per thread) or
    the pool (torch's)."""
    _set_hold(hold if on or compare != "guard" else 0.0)
    torch.ops.rkd_ext._set_cpu_region_chunks(chunks if on or compare != "chunks" else 1)
    torch.ops.rkd_ext._set_cpu_pool(pool if on or compare != "pool" else 0)


def measure(op, n, d, condition, rounds, block_s, gap_s, busy, hold, settle_s=0.1, compare="guard", chunks=4,
            pool=1):
    """One case in one condition: the median round's on / off time ratio, its spread, both medians, and the
    parallel regions opened and holds started per 1,000 calls with the defaults."""
    ops = torch.ops.rkd_ext
    s = make_features(n, d, seed=1, requires_grad=True, dtype=torch.float32, draw_dtype=torch.float32)
    t = make_features(n, d, seed=2, dtype=torch.float32, draw_dtype=torch.float32)
    fn = OPS[op]

    def call():
        s.grad = None
        fn(s, t).backward()

    call()
    start = time.perf_counter()
    call()
    one = time.perf_counter() - start
    calls = max(3, min(200, int(block_s / max(one, 1e-9))))
    if condition == "gap":
        calls = min(calls, 10)
    on, off, ratios = [], [], []
    opened = holds = guarded_calls = 0
    with _busy(busy if condition == "busy" else 0):
        for r in range(rounds):
            for guard in ((True, False) if r % 2 == 0 else (False, True)):
                _set(compare, guard, hold, chunks, pool)
                # Untimed calls first: a loop's steady state, where the guard has seen the machine (a hold
                # starts once its ledger is in debt), not its first calls after the switch.
                settle = time.perf_counter() + settle_s
                while time.perf_counter() < settle:
                    call()
                regions, found = ops._cpu_parallel_regions(), ops._cpu_contention_holds()
                times = []
                for _ in range(calls):
                    if condition == "gap":
                        time.sleep(gap_s)
                    begin = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - begin)
                (on if guard else off).append(statistics.median(times))
                if guard:
                    opened += ops._cpu_parallel_regions() - regions
                    holds += ops._cpu_contention_holds() - found
                    guarded_calls += calls
            ratios.append(on[-1] / off[-1])
    _set(compare, True, hold, chunks, pool)
    ratios.sort()
    return dict(compare=compare, op=op, n=n, d=d, condition=condition, rounds=rounds, calls=calls,
                on_s=statistics.median(on), off_s=statistics.median(off), ratio=statistics.median(ratios),
                p10=ratios[int(0.1 * (len(ratios) - 1) + 0.5)], p90=ratios[int(0.9 * (len(ratios) - 1) + 0.5)],
                regions_per_1000=1000 * opened / guarded_calls, holds_per_1000=1000 * holds / guarded_calls)


def markdown(results, meta):
    off = OFF[meta.get("compare", "guard")]
    lines = [f"# The CPU's defaults against {off}", "",
             f"- command: `{meta['command']}`",
             f"- {meta['hardware']}; torch {meta['torch']}; {meta['threads']} threads; float32, forward + backward",
             f"- commit: {meta['commit']}; {meta['date']} UTC; load average {meta['load'][0]:.1f} at the start",
             f"- {meta['rounds']} rounds per case and condition, each a block of calls with the defaults (on) and one "
             f"with {off} (off; alternating order); on / off is the median round's ratio of the blocks' medians, "
             f"beside the rounds' 10th-90th percentiles. gap: {meta['gap_ms']:g} ms of sleep before each call; busy: "
             f"{meta['busy']} busy process(es) beside the rounds. Regions and holds: parallel regions opened and "
             "holds started per 1,000 calls with the defaults.", ""]
    for condition in CONDITIONS:
        sel = [r for r in results if r["condition"] == condition]
        if not sel:
            continue
        lines += [f"## {condition}", "",
                  "| op | N | D | on | off | on / off | rounds: p10-p90 | regions | holds |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['op']} | {r['n']} | {r['d']} | {r['on_s'] * 1e3:.3g} ms | {r['off_s'] * 1e3:.3g} ms | "
                  f"{r['ratio']:.2f}x | {r['p10']:.2f}-{r['p90']:.2f}x | {r['regions_per_1000']:.0f} | "
                  f"{r['holds_per_1000']:.1f} |" for r in sel]
        lines.append("")
    return "\n".join(lines)


def _ints(text, what, p):
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        p.error(f"{what}: a comma list of integers, got {text!r}")
    if not values or min(values) < 2:
        p.error(f"{what}: every value must be at least 2, got {text!r}")
    return values


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", choices=sorted(OFF), default="guard",
                   help="the setting timed on and off: the contention guard, the regions' chunking, or the pool")
    p.add_argument("--ops", default=",".join(OPS), help="comma list of " + ", ".join(OPS))
    p.add_argument("--n", default="32,64,128", help="comma list of batch sizes")
    p.add_argument("--d", default="512,2048", help="comma list of feature sizes")
    p.add_argument("--conditions", default=",".join(CONDITIONS), help="comma list of " + ", ".join(CONDITIONS))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--block-ms", type=float, default=30.0)
    p.add_argument("--gap-ms", type=float, default=10.0)
    p.add_argument("--busy", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--md", help="write the markdown tables here")
    a = p.parse_args(argv)
    ops = [o for o in a.ops.split(",") if o]
    conditions = [c for c in a.conditions.split(",") if c]
    for o in ops:
        if o not in OPS:
            p.error(f"--ops: unknown op {o!r} (have {', '.join(OPS)})")
    for c in conditions:
        if c not in CONDITIONS:
            p.error(f"--conditions: unknown condition {c!r} (have {', '.join(CONDITIONS)})")
    if a.rounds < 1 or a.block_ms <= 0 or a.gap_ms <= 0 or a.busy < 1:
        p.error("--rounds and --busy must be at least 1, --block-ms and --gap-ms positive")
    ns, ds = _ints(a.n, "--n", p), _ints(a.d, "--d", p)
    hold, chunks = torch.ops.rkd_ext._cpu_contention_hold(), torch.ops.rkd_ext._cpu_region_chunks()
    pool = torch.ops.rkd_ext._cpu_pool()
    if a.compare == "guard" and hold == 0:
        p.error("the contention guard is off in this process; nothing to compare")
    if a.compare == "chunks" and chunks == 1:
        p.error("parallel regions hand out one share per thread in this process; nothing to compare")
    if a.compare == "pool" and pool == 0:
        p.error("parallel regions run on torch's pool in this process; nothing to compare")
    load = os.getloadavg()
    results = []
    for condition in conditions:
        for op in ops:
            for n in ns:
                for d in ds:
                    r = measure(op, n, d, condition, a.rounds, a.block_ms / 1e3, a.gap_ms / 1e3, a.busy, hold,
                                compare=a.compare, chunks=chunks, pool=pool)
                    results.append(r)
                    print(f"{condition:5s} {op:14s} N={n:4d} D={d:6d} on {r['on_s'] * 1e3:8.3f} ms "
                          f"off {r['off_s'] * 1e3:8.3f} ms  on/off {r['ratio']:.2f} [{r['p10']:.2f}-{r['p90']:.2f}] "
                          f"holds {r['holds_per_1000']:.1f}/1000 calls", flush=True)
    meta = dict(command="python -m benchmarks.contention " + " ".join(sys.argv[1:] if argv is None else argv),
                compare=a.compare, chunks=chunks, pool=pool, rounds=a.rounds, block_ms=a.block_ms, gap_ms=a.gap_ms,
                busy=a.busy, hold_s=hold,
                threads=torch.get_num_threads(), torch=torch.__version__, hardware=_hardware("cpu"),
                commit=_commit(), load=load, date=time.strftime("%Y-%m-%d %H:%M", time.gmtime()))
    for path, text in ((a.json, lambda: json.dumps(dict(meta=meta, results=results), indent=1)),
                       (a.md, lambda: markdown(results, meta) + "\n")):
        if path:
            with open(path + ".tmp", "w") as f:
                f.write(text())
            os.replace(path + ".tmp", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
