"""The README's figure: speed-up and memory against the reference at training sizes.

    python -m benchmarks.figure [--paired PAIRED.json] [--memory RESULTS.json] [--out PNG]

Left: the speed-up of ours over the reference, forward + backward, from an
interleaved run of `benchmarks.paired` (its median round per case). Right:
the reference's peak memory above the inputs over ours, forward + backward,
from a pytest-benchmark run of the suites (`extra_info["peak_mb"]`). For each op
and N, the lowest value over the run's feature sizes D, so every point is a
floor. Needs matplotlib (the `bench` extra).
"""
import argparse
import json
import os
import sys

from . import report

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PAIRED = os.path.join(HERE, "cpu-2core-2026-12-02-paired-training.json")
MEMORY = os.path.join(HERE, "cpu-2core-2026-12-02-training-run3.json")
OUT = os.path.join(HERE, "cpu-2core-training.png")
MODE = "forward_backward"


def lowest_over_d(points):
    """{(op, n): value} from [(op, n, d, value)]: the smallest value over d."""
    out = {}
    for op, n, _, v in points:
        if v is not None and ((op, n) not in out or v < out[(op, n)]):
            out[(op, n)] = v
    return out


def speedups(path):
    with open(path) as f:
        saved = json.load(f)
    return saved["meta"], lowest_over_d(
        (r["op"], r["n"], r["d"], r.get("speedup")) for r in saved["results"] if r["mode"] == MODE)


def memory_ratios(path):
    raw, rows, _ = report.load(path)
    peak = {(r["op"], r["n"], r["d"], r["impl"]): r.get("peak_mb") for r in rows if r["mode"] == MODE}
    points = []
    for (op, n, d, impl), ours in peak.items():
        ref = peak.get((op, n, d, report.BASE))
        if impl == "ours" and ours and ref:
            points.append((op, n, d, ref / ours))
    return raw, lowest_over_d(points)


def draw(speed, memory, caption, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    panels = ((axes[0], speed, "speed-up over the reference (x)"),
              (axes[1], memory, "reference's peak memory / ours (x)"))
    for ax, values, label in panels:
        for op in report.OPS:
            ns = sorted(n for (o, n) in values if o == op)
            if ns:
                ax.plot(ns, [values[(op, n)] for n in ns], marker="o", label=op)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N (samples per batch)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(caption, fontsize=9)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paired", default=PAIRED, help="a benchmarks.paired --json run (speed-ups)")
    p.add_argument("--memory", default=MEMORY, help="a pytest-benchmark JSON of the suites (peak memory)")
    p.add_argument("--out", default=OUT)
    a = p.parse_args(argv)
    meta, speed = speedups(a.paired)
    raw, memory = memory_ratios(a.memory)
    if not speed or not memory:
        sys.exit(f"benchmarks.figure: error: no forward + backward cases in {a.paired if not speed else a.memory}")
    caption = (f"forward + backward, float32, lowest over D; speed: {meta.get('hardware', '?')}, "
               f"commit {meta.get('commit', '?')[:7]}, {meta.get('date', '?')}; memory: commit "
               f"{str(raw.get('commit_info', {}).get('id', '?'))[:7]}, {str(raw.get('datetime', '?'))[:10]}")
    draw(speed, memory, caption, a.out)
    print(f"wrote {a.out}")
    for op in report.OPS:
        ns = sorted(n for (o, n) in speed if o == op)
        print(f"{op:20s} speed-up " + " ".join(f"N={n}:{speed[(op, n)]:.2g}x" for n in ns) + "  memory "
              + " ".join(f"N={n}:{memory.get((op, n), float('nan')):.2g}x" for n in ns))


if __name__ == "__main__":
    main()
