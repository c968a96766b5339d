"""Speed-ups over the reference measured in interleaved rounds: each round times a block of calls of
one implementation, then of the other, so that both see the same moment of a shared machine.

    python -m benchmarks.paired [--grid training|global|all] [--ops OP,...] [--modes M,...]
                                [--impl ours] [--base reference] [--rounds 15] [--block-ms 20] [--max-case-s 20]
                                [--gap-ms MS] [--busy K] [--json OUT.json] [--md OUT.md] [--min-speedup X]
    python -m benchmarks.paired --table OUT.json     (a saved run's speed-up tables, one column per op; a --busy
                                                      run's slowdowns too, each side's in every cell)
    python -m benchmarks.paired --slowdown IDLE.json LOADED.json   (each side's slowdown under --busy/--gap-ms)

The pytest-benchmark suites time each implementation in its own window of up to a second, one
after the other: on a machine whose speed drifts over seconds (other tenants, a second vCPU that
is busy), the ratio of two such medians moves with the drift; and where in memory the inputs and
buffers of a process land can make a memory-bound op slower or faster for that whole process.
Here a case runs `--rounds` rounds; in each, a block of calls of `--impl` and a block of `--base`
(the order alternating between rounds), each block as many calls as fit in about `--block-ms`,
its time the median call; every round after the first runs on fresh copies of the inputs
(`--same-inputs`: not). A round's speed-up is base / impl from that round; the case's speed-up is
the median over rounds, printed with the 10th and 90th percentiles of the rounds. Sizes, inputs, the float64 oracle check
before any timing and the skips are the suites' (benchmarks/common.py; RKD_BENCH_N, RKD_BENCH_D and
RKD_BENCH_QUICK apply). --gap-ms sleeps before every timed call (the way a training loop calls a loss, with
other work between: worker threads have gone idle); --busy runs that many busy processes beside each case (a
data-loading worker, a second job), paused and resumed so that every round times both implementations idle and
loaded: each side's slowdown comes from the same run, moments apart. A case whose rounds would take over `--max-case-s` gets fewer of them (at
least 3). --min-speedup exits with 1 when a case's median is below it.
"""
import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time

import torch

# Never time the pure-PyTorch fallback by accident.
os.environ.setdefault("RKD_EXT_REQUIRE_EXT", "1")

import rkd_ext  # noqa: E402  (it reads the environment set above)
from rkd_ext.testing import make_features  # noqa: E402

from . import common, costs, report
from .impls import FORWARD, FORWARD_BACKWARD, IMPLS, KIND, MODES  # noqa: E402


def _percentile(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _block(run, calls, device, gap_s=0.0):
    """The median of `calls` timed calls of run, each after `gap_s` seconds of sleep (not timed): a loop that
    does other work between calls, during which idle worker threads go to sleep."""
    times = []
    for _ in range(calls):
        if gap_s > 0:
            time.sleep(gap_s)
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# Calls per block in the idle-gap mode: each costs its gap, so blocks are a few calls, not --block-ms of them.
GAP_CALLS = 5


@contextlib.contextmanager
def _busy(count):
    """`count` processes that each keep a core busy (a data-loading worker, a second job) while the block runs;
    stopped and reaped on the way out, whatever happened."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
             for _ in range(count)]
    try:
        time.sleep(0.2)  # running before the first call
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _load(procs, on):
    """Resume (on) or pause the busy processes, and give the scheduler a moment to settle. Paused, also wait
    out rkd_ext's contention hold (csrc/core/serial_work.h), so that idle blocks time an idle process."""
    for proc in procs:
        os.kill(proc.pid, signal.SIGCONT if on else signal.SIGSTOP)
    hold = 0.0 if on or not rkd_ext._ext.available else torch.ops.rkd_ext._cpu_contention_hold()
    time.sleep(0.05 + hold)


# Untimed calls after the busy processes resume, before a loaded block (at least one, for this long). When a
# neighbour starts taking a core, the first parallel calls of an idle process run far slower than the ones after
# them until the scheduler has spread its threads over the cores: on 2 cores, torch's own parallel torch.exp on
# 400,000 elements, 20 times a call (3.4 ms idle, 7.5 ms loaded once settled), took 52-160 ms for the first call
# after SIGCONT and up to 314 ms for the first two; the angle tensor at N = 128, D = 2048 (9 ms idle, 16 ms
# loaded) 48-98 ms for its first. Timed at once, a block of short calls measures that transition and a block of
# calls of seconds averages it out, so a loaded block times the loop beside a neighbour that keeps running.
SETTLE_S = 0.4


def _settle(run, seconds):
    """Calls run until `seconds` have passed (at least once); the number of calls."""
    start, count = time.perf_counter(), 0
    while count == 0 or time.perf_counter() - start < seconds:
        run()
        count += 1
    return count


def measure(op, impl, base, mode, n, d, device="cpu", dtype="float32", rounds=15, block_s=0.02, fresh=True,
            max_case_s=20.0, gap_s=0.0, busy=0, settle_s=SETTLE_S):
    """One case: a dict with both medians, the per-round speed-ups' median and spread, or a skip reason.
    gap_s: each timed call after that much sleep; busy: that many busy processes beside the timed rounds,
    each loaded block after settle_s of untimed calls beside them."""
    case = dict(op=op, impl=impl, base=base, mode=mode, n=n, d=d, device=device, dtype=dtype)
    if gap_s > 0:
        case["gap_ms"] = gap_s * 1e3
    if busy:
        case.update(busy=busy, settle_ms=settle_s * 1e3)
    tdtype = getattr(torch, dtype)
    budget = common.memory_budget(device)
    held = costs.input_bytes(op, mode, n, d, tdtype)
    threads = torch.get_num_threads()
    for which in (impl, base):
        need = costs.memory_bytes(op, which, mode, n, d)
        if need + held > budget:
            return dict(case, why="memory",
                        skipped=f"{which} needs about {need / 2**20:.3g} MiB above the inputs (estimated)")
        if torch.device(device).type == "cpu":
            seconds = costs.cpu_seconds(op, which, mode, n, d, threads)
            if seconds > common.MAX_CPU_CALL_S:
                return dict(case, why="time", skipped=f"{which}: one call takes about {seconds:.3g} s (estimated)")
    batch = dict(dtype=tdtype, device=device, draw_dtype=torch.float32)
    x = make_features(n, d, seed=1, requires_grad=(mode == FORWARD_BACKWARD), **batch)
    inputs = (x, make_features(n, d, seed=2, **batch)) if KIND[op] == "loss" else (x,)
    grad_out = (common.relation_grad(op, n, device, tdtype)
                if KIND[op] == "tensor" and mode == FORWARD_BACKWARD else None)
    # The suites' check against the float64 oracle, both before any timing: nothing wrong is timed.
    # Its call is the warm-up.
    for which in (impl, base):
        common.gate(dict(case, impl=which), IMPLS[op][which], inputs, grad_out)
    runs = {}
    for which in (impl, base):
        run = common.step(IMPLS[op][which], inputs, grad_out, mode, device)
        start = time.perf_counter()
        run()
        runs[which] = (run, time.perf_counter() - start)
    calls = {w: max(1, min(1000, int(block_s / max(t, 1e-9)))) for w, (_, t) in runs.items()}
    if gap_s > 0:
        calls = {w: min(c, GAP_CALLS) for w, c in calls.items()}
    # Cases of seconds per call (the reference's N^2 D or N^3 D temporaries): fewer rounds, at least 3.
    per_round = sum(calls[w] * (runs[w][1] + gap_s) for w in runs)
    rounds = max(min(rounds, 3), min(rounds, int(max_case_s / max(per_round, 1e-9))))
    if busy:
        rounds = max(3, rounds // 2)  # each round times both sides twice, idle and loaded
    with _busy(busy) as procs:
        return dict(case, **_rounds(op, impl, base, mode, device, inputs, grad_out, runs, calls, rounds, fresh,
                                    gap_s, procs, settle_s))


def _rounds(op, impl, base, mode, device, inputs, grad_out, runs, calls, rounds, fresh, gap_s, procs=(),
            settle_s=SETTLE_S):
    """The rounds of a case. With busy processes (procs) each round times both implementations with them
    paused (idle) and running (loaded), in alternating order, the loaded blocks after settle_s of untimed
    calls of the faster of them (_settle; the pool's threads are the same for both): each side's slowdown is
    the median round's loaded / idle, both measured moments apart."""
    medians = {impl: [], base: []}
    idle = {impl: [], base: []}
    slowdowns = {impl: [], base: []}
    ratios = []
    rng = random.Random(0)
    for r in range(rounds):
        if fresh and r > 0:
            # New copies of the inputs behind a spacer of random size: the round runs on other
            # memory, as another process would (on a shared machine where the memory lands can
            # change an op's speed by more than the difference measured).
            spacer = torch.empty(rng.randrange(1, 1 << 20), dtype=torch.uint8, device=device).fill_(1)
            fresh_inputs = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in inputs)
            del spacer
            runs = {w: (common.step(IMPLS[op][w], fresh_inputs, grad_out, mode, device), t)
                    for w, (_, t) in runs.items()}
            for w in (impl, base):
                if runs[w][1] < 0.05:  # the round's warm-up, where a call is short enough to feel it
                    runs[w][0]()
        order = (impl, base) if r % 2 == 0 else (base, impl)
        for loaded in (((False, True) if r % 2 == 0 else (True, False)) if procs else (True,)):
            if procs:
                _load(procs, loaded)
                if loaded:
                    _settle(runs[min(runs, key=lambda w: runs[w][1])][0], settle_s)
            for which in order:
                (medians if loaded else idle)[which].append(_block(runs[which][0], calls[which], device, gap_s))
        ratios.append(medians[base][-1] / medians[impl][-1])
        if procs:
            for which in (impl, base):
                slowdowns[which].append(medians[which][-1] / idle[which][-1])
    out = dict(rounds=rounds, calls={impl: calls[impl], base: calls[base]},
               impl_s=statistics.median(medians[impl]), base_s=statistics.median(medians[base]),
               speedup=statistics.median(ratios), p10=_percentile(ratios, 0.1), p90=_percentile(ratios, 0.9))
    if procs:
        out.update(impl_idle_s=statistics.median(idle[impl]), base_idle_s=statistics.median(idle[base]),
                   impl_slowdown=statistics.median(slowdowns[impl]),
                   base_slowdown=statistics.median(slowdowns[base]))
    return out


def _fmt_s(s):
    return f"{s * 1e3:.3g} ms"


def markdown(results, meta):
    mode_name = {FORWARD: "forward", FORWARD_BACKWARD: "forward+backward"}
    lines = [f"# Interleaved speed-ups: {meta['impl']} over {meta['base']}", "",
             f"- command: `{meta['command']}`",
             f"- {meta['hardware']}; torch {meta['torch']}; {meta['threads']} threads; {meta['dtype']}",
             f"- commit: {meta['commit']}; {meta['date']} UTC; load average {meta['load'][0]:.1f} at the start, "
             f"{meta['load_end'][0]:.1f} at the end",
             f"- up to {meta['rounds']} rounds per case (at least 3; fewer where they would take over "
             f"{meta['max_case_s']:g} s); a round times a block of calls of each (about {meta['block_ms']:g} ms, "
             "the order alternating, " + ("every round after the first on fresh copies of the inputs"
                                          if meta["fresh"] else "every round on the same inputs") +
             ") and takes the ratio of the blocks' medians; the speed-up is the median round, beside the "
             "10th-90th percentile of the rounds and their number." +
             (f" Each timed call follows {meta['gap_ms']:g} ms of sleep (blocks of up to {GAP_CALLS} calls)."
              if meta.get("gap_ms") else "") +
             (f" {meta['busy']} busy process(es) (a Python loop, one core each) beside every case: each round "
              "times both implementations with them paused (idle) and running (loaded), in alternating order, "
              f"the loaded blocks after {meta.get('settle_ms', 0):g} ms of untimed calls beside them; "
              "a slowdown is the median round's loaded / idle time, the loaded speed-up the median round's."
              if meta.get("busy") else ""), ""]
    for op in dict.fromkeys(r["op"] for r in results):
        for mode in MODES:
            sel = [r for r in results if r["op"] == op and r["mode"] == mode]
            if not sel:
                continue
            if any("impl_slowdown" in r for r in sel):
                lines += [f"## {op}, {mode_name[mode]}", "", _SLOWDOWN_HEAD.format(**meta), _SLOWDOWN_RULE]
                lines += [_slowdown_row(r) for r in sel if "impl_slowdown" in r]
                lines.append("")
                continue
            lines += [f"## {op}, {mode_name[mode]}", "",
                      f"| N | D | {meta['impl']} | {meta['base']} | speed-up | rounds: p10-p90 (count) |",
                      "|---:|---:|---:|---:|---:|---:|"]
            for r in sel:
                if "skipped" in r:
                    lines.append(f"| {r['n']} | {r['d']} | | | skipped | {r['skipped']} |")
                else:
                    lines.append(f"| {r['n']} | {r['d']} | {_fmt_s(r['impl_s'])} | {_fmt_s(r['base_s'])} | "
                                 f"{r['speedup']:.2f}x | {r['p10']:.2f}-{r['p90']:.2f}x ({r['rounds']}) |")
            lines.append("")
    return "\n".join(lines)


_SLOWDOWN_HEAD = ("| N | D | {impl} idle | {impl} loaded | {impl} slowdown | {base} idle | {base} loaded | "
                  "{base} slowdown | loaded speed-up |")
_SLOWDOWN_RULE = "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"


def _slowdown_row(r):
    return (f"| {r['n']} | {r['d']} | {_fmt_s(r['impl_idle_s'])} | {_fmt_s(r['impl_s'])} | "
            f"{r['impl_slowdown']:.2f}x | {_fmt_s(r['base_idle_s'])} | {_fmt_s(r['base_s'])} | "
            f"{r['base_slowdown']:.2f}x | {r['speedup']:.2f}x |")


def speedup_tables(saved):
    """benchmarks.report's speed-up tables (one per mode, a column per op) from a saved run: each cell the
    case's median round."""
    rows, skipped = [], []
    for r in saved["results"]:
        case = {k: r[k] for k in ("op", "mode", "n", "d", "device", "dtype")}
        if "skipped" in r:
            why = r.get("why") or ("memory" if " needs " in r["skipped"] else "time")
            skipped.append(dict(case, impl=r["impl"], why=why))
            continue
        rows.append(dict(case, impl=report.BASE, median_s=r["base_s"]))
        rows.append(dict(case, impl=r["impl"], median_s=r["base_s"] / r["speedup"]))
    return report.speedups(rows, skipped, saved["meta"]["impl"])


def slowdown_table(idle, loaded):
    """Each case of two saved runs (--json), one with nothing beside it, one with --busy or --gap-ms: both
    implementations' times in each and their slowdowns (loaded / idle), and the loaded speed-up."""
    impl, base = idle["meta"]["impl"], idle["meta"]["base"]
    key = lambda r: (r["op"], r["mode"], r["n"], r["d"])  # noqa: E731
    after = {key(r): r for r in loaded["results"] if "speedup" in r}
    lines = [f"| op | N | D | {impl} idle | {impl} loaded | {impl} slowdown | {base} idle | {base} loaded | "
             f"{base} slowdown | loaded speed-up |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in idle["results"]:
        b = after.get(key(r))
        if "speedup" not in r or b is None:
            continue
        lines.append(f"| {r['op']} | {r['n']} | {r['d']} | {_fmt_s(r['impl_s'])} | {_fmt_s(b['impl_s'])} | "
                     f"{b['impl_s'] / r['impl_s']:.2f}x | {_fmt_s(r['base_s'])} | {_fmt_s(b['base_s'])} | "
                     f"{b['base_s'] / r['base_s']:.2f}x | {b['speedup']:.2f}x |")
    return "\n".join(lines)


def slowdown_grids(saved):
    """A busy run's (--busy) slowdowns in the speed-up tables' layout (one column per op): each cell the
    impl's slowdown (loaded / idle, the median round) and the base's, in bold where the impl's is the
    larger; the last row counts those cases. Empty for a run without busy processes."""
    meta, out = saved["meta"], []
    impl, base = meta["impl"], meta["base"]
    rows = [r for r in saved["results"] if "impl_slowdown" in r]
    for mode in report._ordered((r["mode"] for r in rows), list(report.MODE_NAMES)):
        sel = [r for r in rows if r["mode"] == mode]
        ops = report._ordered((r["op"] for r in sel), list(report.OPS))
        cell = {(r["op"], r["n"], r["d"]): r for r in sel}
        out += [f"{meta.get('busy', 0)} busy process(es), {report.MODE_NAMES[mode]}: slowdown (loaded / idle), "
                f"{impl} / {base}; bold where {impl} slows more", "",
                "| N | D | " + " | ".join(ops) + " |", "|---:|---:|" + "---:|" * len(ops)]
        larger = {op: [0, 0] for op in ops}
        for n, d in sorted({(r["n"], r["d"]) for r in sel}):
            cells = []
            for op in ops:
                r = cell.get((op, n, d))
                if r is None:
                    cells.append("")
                    continue
                worse = r["impl_slowdown"] > r["base_slowdown"]
                larger[op][0] += worse
                larger[op][1] += 1
                text = f"{r['impl_slowdown']:.2f} / {r['base_slowdown']:.2f}"
                cells.append(f"**{text}**" if worse else text)
            out.append(f"| {n} | {d} | " + " | ".join(cells) + " |")
        out += [f"| {impl} slows more | | " + " | ".join(f"{k} of {m}" for k, m in larger.values()) + " |", ""]
    return "\n".join(out)


def _commit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", choices=sorted(common.GRIDS), default=None,
                   help="sizes (default: as the suites read the environment, with the training grid)")
    p.add_argument("--ops", default=",".join(IMPLS), help="comma list of ops")
    p.add_argument("--modes", default=",".join(MODES), help="comma list of forward, forward_backward")
    p.add_argument("--impl", default="ours")
    p.add_argument("--base", default="reference")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--block-ms", type=float, default=20.0)
    p.add_argument("--max-case-s", type=float, default=20.0,
                   help="fewer rounds (at least 3) where --rounds would time a case for longer than this")
    p.add_argument("--same-inputs", action="store_true",
                   help="time every round on the same input tensors (default: fresh copies each round)")
    p.add_argument("--gap-ms", type=float, default=0.0,
                   help="sleep this long before each timed call (not timed), as a loop with other work between "
                        "calls does; blocks are then a few calls each")
    p.add_argument("--busy", type=int, default=0,
                   help="run this many busy processes (one core each) beside every case's timed rounds")
    p.add_argument("--settle-ms", type=float, default=SETTLE_S * 1e3,
                   help="with --busy: untimed calls for this long after the busy processes resume, before each "
                        "loaded block (0: one call)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--md", help="write the markdown table here")
    p.add_argument("--min-speedup", type=float, default=None,
                   help="exit with 1 when a case's median speed-up is below this")
    p.add_argument("--table", metavar="JSON", help="print the speed-up tables of a saved run (--json), and a --busy "
                   "run's slowdown tables, and exit")
    p.add_argument("--slowdown", nargs=2, metavar=("IDLE_JSON", "LOADED_JSON"),
                   help="print each implementation's slowdown from a run with nothing beside it to one with --busy "
                        "or --gap-ms, and exit")
    a = p.parse_args(argv)
    if a.table:
        with open(a.table) as f:
            saved = json.load(f)
        print(speedup_tables(saved))
        grids = slowdown_grids(saved)
        if grids:
            print(grids)
        return 0
    if a.slowdown:
        runs = []
        for path in a.slowdown:
            with open(path) as f:
                runs.append(json.load(f))
        print(slowdown_table(*runs))
        return 0
    ops = [o for o in a.ops.split(",") if o]
    modes = [m for m in a.modes.split(",") if m]
    for o in ops:
        if o not in IMPLS:
            p.error(f"--ops: unknown op {o!r} (have {', '.join(IMPLS)})")
        for w in (a.impl, a.base):
            if w not in IMPLS[o]:
                p.error(f"--impl/--base: {o} has no implementation {w!r} (have {', '.join(IMPLS[o])})")
    for m in modes:
        if m not in MODES:
            p.error(f"--modes: unknown mode {m!r} (have {', '.join(MODES)})")
    if a.rounds < 1 or a.block_ms <= 0 or a.max_case_s <= 0:
        p.error("--rounds must be at least 1, --block-ms and --max-case-s positive")
    if a.gap_ms < 0 or a.busy < 0 or a.settle_ms < 0:
        p.error("--gap-ms, --busy and --settle-ms must not be negative")
    sizes = common.GRIDS[a.grid] if a.grid is not None else common.select_sizes("training")
    load = os.getloadavg()
    results = []
    for op in ops:
        for mode in modes:
            for n, d in sizes:
                r = measure(op, a.impl, a.base, mode, n, d, a.device, a.dtype, a.rounds, a.block_ms / 1e3,
                            fresh=not a.same_inputs, max_case_s=a.max_case_s, gap_s=a.gap_ms / 1e3, busy=a.busy,
                            settle_s=a.settle_ms / 1e3)
                results.append(r)
                if "skipped" in r:
                    print(f"{op:20s} {mode:16s} N={n:5d} D={d:6d} skipped: {r['skipped']}", flush=True)
                else:
                    print(f"{op:20s} {mode:16s} N={n:5d} D={d:6d} {a.impl} {_fmt_s(r['impl_s']):>10s} "
                          f"{a.base} {_fmt_s(r['base_s']):>10s} {r['speedup']:6.2f}x "
                          f"[{r['p10']:.2f}-{r['p90']:.2f}]", flush=True)
    meta = dict(command="python -m benchmarks.paired " + " ".join(sys.argv[1:] if argv is None else argv),
                impl=a.impl, base=a.base, dtype=a.dtype, rounds=a.rounds, block_ms=a.block_ms,
                max_case_s=a.max_case_s, fresh=not a.same_inputs, gap_ms=a.gap_ms, busy=a.busy,
                settle_ms=a.settle_ms if a.busy else None,
                threads=torch.get_num_threads(), torch=torch.__version__, build=rkd_ext.build_info(),
                hardware=_hardware(a.device), commit=_commit(), load=load, load_end=os.getloadavg(),
                date=time.strftime("%Y-%m-%d %H:%M", time.gmtime()))
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=1)
        os.replace(a.json + ".tmp", a.json)
    if a.md:
        with open(a.md + ".tmp", "w") as f:
            f.write(markdown(results, meta) + "\n")
        os.replace(a.md + ".tmp", a.md)
    low = [r for r in results if "speedup" in r and a.min_speedup is not None and r["speedup"] < a.min_speedup]
    for r in low:
        print(f"below {a.min_speedup:g}x: {r['op']} {r['mode']} N={r['n']} D={r['d']}: {r['speedup']:.2f}x",
              file=sys.stderr)
    return 1 if low else 0


def _hardware(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name()
    name = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical CPUs"


if __name__ == "__main__":
    sys.exit(main())
