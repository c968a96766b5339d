"""Turn a pytest-benchmark JSON of the suites into a markdown report and a log-log plot.

    python -m benchmarks.report RESULTS.json [--out DIR] [--mode M] [--dtype T] [--d D]
    python -m benchmarks.report RESULTS.json --speedups     (the speed-up table only, printed)

Writes RESULTS.md beside the JSON (or in --out): for each device, op, dtype and
mode, a table of median times with the speed-up over the reference, and a table
of peak memory above the inputs with the memory ratio to the reference. Beside
it, RESULTS.png (RESULTS-<device>.png when several devices ran): time and
memory against N for each implementation, one row per op, at one mode, dtype
and D. The plot needs matplotlib (the `bench` extra); without it the markdown
is still written, and says why there is no plot.
"""
import argparse
import json
import os
import sys

OPS = ("pairwise_distance", "normalized_distance", "distance_loss", "angle_tensor", "angle_loss", "rkd_loss")
IMPLS = ("ours", "ours_materialised", "ours_separate", "reference", "reference_compiled", "cdist", "law_of_cosines")
BASE = "reference"
MODE_NAMES = {"forward": "forward", "forward_backward": "forward+backward"}
SKIP_CELL = {"memory": "skip: memory", "time": "skip: time", "unsupported": "unsupported"}


def load(path):
    with open(path) as f:
        raw = json.load(f)
    rows = []
    for b in raw["benchmarks"]:
        info = b["extra_info"]
        if "op" not in info:
            continue
        rows.append(dict(info, median_s=b["stats"]["median"], rounds=b["stats"]["rounds"]))
    return raw, rows, raw.get("rkd_ext", {}).get("skipped", [])


def _ordered(values, order):
    return sorted(set(values), key=lambda v: (order.index(v) if v in order else len(order), v))


def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_mib(mb):
    if mb is None:
        return "n/a"
    return f"{mb / 1024:.3g} GiB" if mb >= 1024 else f"{mb:.3g} MiB"


def fmt_ratio(r):
    return f"{r:.0f}×" if r >= 100 else f"{r:.2g}×"


def _ratio(base, value, floor=0.0):
    """base / value, or None when either is missing or below floor (too small to divide meaningfully)."""
    if base is None or value is None or base <= floor or value <= floor:
        return None
    return base / value


# Memory below this (MiB) is page-granularity noise on CPU: no ratio is shown.
_MEM_FLOOR = 0.05


def _header(raw):
    meta = raw.get("rkd_ext", {})
    machine = raw.get("machine_info", {})
    cpu = machine.get("cpu", {})
    commit = raw.get("commit_info", {})
    build = meta.get("build", {})
    env = " ".join(f"{k}={v}" for k, v in sorted(meta.get("env", {}).items()))
    hardware = f"{cpu.get('brand_raw', machine.get('processor', '?'))}, {cpu.get('count', '?')} cores, " \
               f"{meta.get('threads', '?')} torch threads"
    if meta.get("gpu"):
        hardware += f"; {meta['gpu']}"
    load = meta.get("loadavg") or {}
    if load.get("start") and load.get("end"):
        hardware += f"; load average {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end"
    cuda = f", CUDA {build['cuda_version']}" if build.get("with_cuda") else ", CPU-only build"
    mode = "quick (few sizes and rounds: a smoke test, not a measurement)" if meta.get("quick") else "full"
    lines = [
        "| | |", "|---|---|",
        f"| date | {raw.get('datetime', '?')[:16].replace('T', ' ')} UTC |",
        f"| command | `{(env + ' ') if env else ''}{meta.get('command', '?')}` |",
        f"| mode | {mode} |",
        f"| hardware | {hardware} |",
        f"| software | torch {meta.get('torch', '?')}{cuda}; Python {machine.get('python_version', '?')} |",
        f"| commit | {commit.get('id', '?')[:12]}{' (uncommitted changes)' if commit.get('dirty') else ''} |",
    ]
    if meta.get("gpu"):
        lines.append(f"| TF32 matmuls | {'on' if meta.get('cuda_matmul_tf32') else 'off'} |")
    return lines


def _table(title, sizes, impls, cell, extra_row=None):
    lines = [f"#### {title}", "", "| N | D | " + " | ".join(impls) + " |",
             "|---:|---:|" + "---|" * len(impls)]
    for n, d in sizes:
        lines.append(f"| {n} | {d} | " + " | ".join(cell(n, d, impl) for impl in impls) + " |")
    if extra_row:
        lines.append(extra_row)
    return lines + [""]


def markdown(raw, rows, skipped, plots, no_plot_reason=None):
    out = ["# rkd_ext benchmarks", ""] + _header(raw) + [""]
    out += [
        "Times are medians over the rounds of one call each (CUDA calls end with a synchronise). "
        "`k×` after a time is the speed-up over the reference (reference median / this median; above 1 is "
        "faster). Memory is the peak above the inputs (CUDA allocator peak; CPU peak resident set); `k×` is "
        "the reference's peak / this peak (above 1 is less memory). Every case was checked against a float64 "
        "oracle before it was timed: the last row gives the largest relative error (value or gradient) of "
        "each implementation in the table. `skip: memory` / `skip: time`: estimated not to fit the memory "
        "budget, or to take too long on CPU (reasons at the end).", ""]
    for path in plots:
        out += [f"![time and memory against N]({os.path.basename(path)})", ""]
    if no_plot_reason:
        out += [f"No plot: {no_plot_reason}.", ""]

    by_case = {}
    for r in rows:
        by_case[(r["device"], r["op"], r["dtype"], r["mode"], r["n"], r["d"], r["impl"])] = r
    skip_of = {(s["device"], s["op"], s["dtype"], s["mode"], s["n"], s["d"], s["impl"]): s for s in skipped}
    everything = list(rows) + list(skipped)
    for device in _ordered((r["device"] for r in everything), ["cpu", "cuda"]):
        out += [f"## {device}", ""]
        on_device = [r for r in everything if r["device"] == device]
        for op in _ordered((r["op"] for r in on_device), OPS):
            out += [f"### {op}", ""]
            of_op = [r for r in on_device if r["op"] == op]
            impls = _ordered((r["impl"] for r in of_op), IMPLS)
            for dtype in _ordered((r["dtype"] for r in of_op), ["float32", "bfloat16"]):
                for mode in _ordered((r["mode"] for r in of_op), list(MODE_NAMES)):
                    sel = [r for r in of_op if r["dtype"] == dtype and r["mode"] == mode]
                    if not sel:
                        continue
                    sizes = sorted({(r["n"], r["d"]) for r in sel})

                    def get(n, d, impl):
                        return by_case.get((device, op, dtype, mode, n, d, impl))

                    def missing(n, d, impl):
                        s = skip_of.get((device, op, dtype, mode, n, d, impl))
                        return SKIP_CELL.get(s["why"], "skipped") if s else "–"

                    def time_cell(n, d, impl):
                        r = get(n, d, impl)
                        if r is None:
                            return missing(n, d, impl)
                        base = get(n, d, BASE)
                        ratio = _ratio(base and base["median_s"], r["median_s"]) if impl != BASE else None
                        return fmt_time(r["median_s"]) + (f" ({fmt_ratio(ratio)})" if ratio else "")

                    def mem_cell(n, d, impl):
                        r = get(n, d, impl)
                        if r is None:
                            return missing(n, d, impl)
                        base = get(n, d, BASE)
                        ratio = (_ratio(base and base["peak_mb"], r["peak_mb"], _MEM_FLOOR)
                                 if impl != BASE else None)
                        return fmt_mib(r["peak_mb"]) + (f" ({fmt_ratio(ratio)})" if ratio else "")

                    def worst(impl):
                        errs = [max(r.get("err", 0.0), r.get("grad_err", 0.0))
                                for r in sel if r["impl"] == impl and "err" in r]
                        return f"{max(errs):.1e}" if errs else "–"

                    errors = "| max error | | " + " | ".join(worst(i) for i in impls) + " |"
                    what = f"{dtype}, {MODE_NAMES.get(mode, mode)}"
                    out += _table(f"{what}: time", sizes, impls, time_cell, errors)
                    out += _table(f"{what}: peak memory above the inputs", sizes, impls, mem_cell)

    low = [r for r in rows if r.get("peak_mb") is not None and r.get("est_mb") is not None
           and r["peak_mb"] > r["est_mb"] + 1]
    if low:
        out += ["## Memory estimates below the measurement", "",
                "The estimates that decide memory skips (benchmarks/costs.py) were too low here; raise them:", ""]
        out += [f"- {r['device']} {r['op']} {r['impl']} {r['dtype']} {r['mode']} N={r['n']} D={r['d']}: "
                f"estimated {fmt_mib(r['est_mb'])}, measured {fmt_mib(r['peak_mb'])}" for r in low]
        out.append("")
    if skipped:
        out += ["## Skipped cases", "", "<details><summary>" + f"{len(skipped)} cases</summary>", ""]
        out += [f"- {s['device']} {s['op']} {s['impl']} {s['dtype']} {s['mode']} N={s['n']} D={s['d']}: "
                f"{s['reason']}" for s in skipped]
        out += ["", "</details>", ""]
    return "\n".join(out)


def _pick(values, wanted, prefer):
    values = sorted(set(values))
    if wanted is not None:
        if wanted not in values:
            raise SystemExit(f"report: {wanted!r} is not in the results (have {values})")
        return wanted
    for v in prefer:
        if v in values:
            return v
    return values[0]


def plot(rows, device, mode, dtype, d, path):
    """One row per op: time and memory against N, one line per implementation, log-log,
    with N^2 and N^3 guides through the lowest point at the smallest N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    sel = [r for r in rows if (r["device"], r["mode"], r["dtype"], r["d"]) == (device, mode, dtype, d)]
    ops = _ordered((r["op"] for r in sel), OPS)
    colors = {impl: plt.get_cmap("tab10")(i) for i, impl in enumerate(IMPLS)}
    markers = dict(zip(IMPLS, "o^PsDvx"))
    guides = ((2, ":", "∝ N²"), (3, "--", "∝ N³"))
    height = 3.0 * len(ops) + 0.9
    fig, axes = plt.subplots(len(ops), 2, figsize=(11, height), squeeze=False)
    for row, op in enumerate(ops):
        of_op = [r for r in sel if r["op"] == op]
        ns = sorted({r["n"] for r in of_op})
        for col, (key, unit, scale) in enumerate((("median_s", "time (ms)", 1e3), ("peak_mb", "memory (MiB)", 1))):
            ax = axes[row][col]
            lowest = None
            for impl in _ordered((r["impl"] for r in of_op), IMPLS):
                pts = sorted((r["n"], r[key] * scale) for r in of_op
                             if r["impl"] == impl and r[key] is not None and r[key] > 0)
                if pts:
                    ax.plot(*zip(*pts), marker=markers[impl], color=colors[impl], label=impl,
                            linewidth=2.2 if impl == "ours" else 1.3)
                    if pts[0][0] == ns[0]:
                        lowest = pts[0][1] if lowest is None else min(lowest, pts[0][1])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            if lowest is not None and len(ns) > 1:
                # Guides must not stretch the axes: draw them, then restore the data's limits.
                ylim = ax.get_ylim()
                for power, style, label in guides:
                    ax.plot(ns, [lowest * (n / ns[0]) ** power for n in ns], style, color="0.55",
                            linewidth=1, label=label)
                ax.set_ylim(ylim)
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_locator(LogLocator(base=10, subs="auto"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.xaxis.set_minor_locator(LogLocator(base=2, subs=()))
            ax.set_xlim(ns[0] / 1.3, ns[-1] * 1.3)
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(f"{op}: {unit.split()[0]}", fontsize=10)
            ax.set_ylabel(unit)
            if row == len(ops) - 1:
                ax.set_xlabel("N (batch size)")
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    labels = [i for i in IMPLS if i in handles] + [g[2] for g in guides if g[2] in handles]
    fig.suptitle(f"rkd_ext on {device}: {dtype}, {MODE_NAMES.get(mode, mode)}, D={d} "
                 "(log-log; a line ends where its cases were skipped)", y=1 - 0.12 / height, fontsize=11)
    fig.legend([handles[i] for i in labels], labels, loc="upper center", ncol=len(labels), frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.35 / height), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def speedups(rows, skipped, impl="ours"):
    """Markdown: for each device, dtype and mode, impl's speed-up over the reference (reference median /
    impl median) at every (N, D), one column per op; the lowest of each table last."""
    out = []
    med = {(r["device"], r["op"], r["dtype"], r["mode"], r["n"], r["d"], r["impl"]): r["median_s"] for r in rows}
    skip_of = {(s["device"], s["op"], s["dtype"], s["mode"], s["n"], s["d"], s["impl"]): s["why"] for s in skipped}
    everything = list(rows) + list(skipped)
    for device in _ordered((r["device"] for r in everything), ["cpu", "cuda"]):
        on = [r for r in everything if r["device"] == device]
        ops = _ordered((r["op"] for r in on), OPS)
        for dtype in _ordered((r["dtype"] for r in on), ["float32", "bfloat16"]):
            for mode in _ordered((r["mode"] for r in on), list(MODE_NAMES)):
                sel = [r for r in on if r["dtype"] == dtype and r["mode"] == mode]
                sizes = sorted({(r["n"], r["d"]) for r in sel})
                out += [f"{device}, {dtype}, {MODE_NAMES[mode]}: speed-up of {impl} over the reference", "",
                        "| N | D | " + " | ".join(ops) + " |", "|---:|---:|" + "---:|" * len(ops)]
                low = {}
                for n, d in sizes:
                    cells = []
                    for op in ops:
                        key = (device, op, dtype, mode, n, d)
                        r = _ratio(med.get(key + (BASE,)), med.get(key + (impl,)))
                        if r is None:
                            why = skip_of.get(key + (impl,)) or skip_of.get(key + (BASE,))
                            cells.append(SKIP_CELL.get(why, "") if why else "")
                        else:
                            low[op] = min(low.get(op, r), r)
                            cells.append(fmt_ratio(r))
                    out.append(f"| {n} | {d} | " + " | ".join(cells) + " |")
                out += ["| lowest | | " + " | ".join(fmt_ratio(low[op]) if op in low else "" for op in ops) + " |", ""]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="JSON written by pytest --benchmark-json")
    p.add_argument("--out", help="folder for the .md and .png (default: beside the JSON)")
    p.add_argument("--mode", choices=tuple(MODE_NAMES), help="mode plotted (default forward_backward)")
    p.add_argument("--dtype", help="dtype plotted (default float32)")
    p.add_argument("--d", type=int, help="feature size plotted (default 512 when present)")
    p.add_argument("--speedups", action="store_true",
                   help="print only the speed-up of ours over the reference, one column per op (no files)")
    args = p.parse_args(argv)

    raw, rows, skipped = load(args.results)
    if not rows:
        raise SystemExit(f"report: no benchmark cases of these suites in {args.results}")
    if args.speedups:
        return print(speedups(rows, skipped))
    stem = os.path.splitext(os.path.basename(args.results))[0]
    out_dir = args.out or os.path.dirname(os.path.abspath(args.results))
    os.makedirs(out_dir, exist_ok=True)

    devices = _ordered((r["device"] for r in rows), ["cpu", "cuda"])
    plots, no_plot = [], None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        no_plot = "matplotlib was not installed (`pip install matplotlib`, or the `bench` extra)"
        print(f"report: {no_plot}; writing the tables only", file=sys.stderr)
    if no_plot is None:
        for device in devices:
            on = [r for r in rows if r["device"] == device]
            mode = _pick((r["mode"] for r in on), args.mode, ["forward_backward"])
            dtype = _pick((r["dtype"] for r in on), args.dtype, ["float32"])
            d = _pick((r["d"] for r in on), args.d, [512])
            path = os.path.join(out_dir, f"{stem}.png" if len(devices) == 1 else f"{stem}-{device}.png")
            plot(rows, device, mode, dtype, d, path)
            plots.append(path)

    md_path = os.path.join(out_dir, stem + ".md")
    with open(md_path, "w") as f:
        f.write(markdown(raw, rows, skipped, plots, no_plot))
    for path in [md_path] + plots:
        print(f"report: wrote {path}")


if __name__ == "__main__":
    main()
