"""Two builds of rkd_ext against each other at training sizes: for showing that a change to the bindings or the
build left the speed where it was.

    python -m benchmarks.builds --a TREE_A --b TREE_B [--rounds 5] [--block-ms 50] [--cases REGEX] [--sizes NxD,...]
                                [--json OUT.json]

TREE_A and TREE_B are source trees with their extension built in place (``python setup.py build_ext --inplace``
or an editable install), e.g. a worktree of the old commit and this one. Each round runs one worker process per
build, in alternating order (A B, then B A, ...); a worker imports rkd_ext from its tree and times every case of the
training grid (benchmarks/common.py's TRAINING, float32, each op of the suites, forward and forward + backward) as
the median of a block of calls of about --block-ms. A case's figure is the median over rounds of B's time / A's
time, with the rounds' 10th and 90th percentiles: below 1, B is faster. Processes alternate because both builds
register the same operators and cannot share one.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = ("pairwise_distance", "normalized_distance", "distance_loss", "angle_tensor", "angle_loss", "rkd_loss")


def worker(block_s, tree, pattern="", sizes=None):
    """Time every case (matching pattern) with the rkd_ext of tree (imported already); print {case: seconds}."""
    import re
    import time

    import torch

    import rkd_ext
    from rkd_ext.testing import make_features

    from benchmarks import common
    from benchmarks.impls import FORWARD_BACKWARD, IMPLS, KIND, MODES

    assert rkd_ext.build_info()["extension_loaded"]
    assert os.path.abspath(rkd_ext.__file__).startswith(tree + os.sep), rkd_ext.__file__
    out = {}
    for op in OPS:
        for mode in MODES:
            for n, d in sizes or common.TRAINING:
                name = f"{op} {mode} N={n} D={d}"
                if not re.search(pattern, name):
                    continue
                batch = dict(dtype=torch.float32, device="cpu", draw_dtype=torch.float32)
                x = make_features(n, d, seed=1, requires_grad=(mode == FORWARD_BACKWARD), **batch)
                inputs = (x, make_features(n, d, seed=2, **batch)) if KIND[op] == "loss" else (x,)
                grad_out = (common.relation_grad(op, n, "cpu", torch.float32)
                            if KIND[op] == "tensor" and mode == FORWARD_BACKWARD else None)
                run = common.step(IMPLS[op]["ours"], inputs, grad_out, mode, "cpu")
                start = time.perf_counter()
                run()
                calls = max(3, min(1000, int(block_s / max(time.perf_counter() - start, 1e-9))))
                times = []
                for _ in range(calls):
                    start = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - start)
                out[name] = statistics.median(times)
    print(json.dumps(out))


def run_worker(tree, block_s, pattern, sizes):
    # rkd_ext from the tree, then this repository's benchmarks (the same harness for both builds).
    code = (f"import sys; sys.path.insert(0, {os.path.abspath(tree)!r}); import rkd_ext; "
            f"sys.path.insert(0, {ROOT!r}); from benchmarks.builds import worker; worker({block_s!r}, "
            f"{os.path.abspath(tree)!r}, {pattern!r}, {sizes!r})")
    env = dict(os.environ, RKD_EXT_REQUIRE_EXT="1", PYTHONPATH="")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tree,
                         timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"worker for {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def tree_commit(tree):
    """The commit a tree is checked out at (12 hex digits, "+changes" when its tracked files differ from it), or
    "unknown" outside git: what the saved run names each build by, not where it lay."""
    def git(*args):
        out = subprocess.run(["git", "-C", tree, *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    if commit is None:
        return "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def _percentile(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="the first tree (the baseline)")
    p.add_argument("--b", required=True, help="the second tree")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--block-ms", type=float, default=50.0)
    p.add_argument("--cases", default="", help="only the cases whose name matches this regular expression")
    p.add_argument("--sizes", default="", help="N x D sizes instead of the training grid, e.g. 4x4 (the calls' "
                   "own overhead) or 16x512,128x2048")
    p.add_argument("--json", help="write every round's times and the ratios here")
    a = p.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")] if a.sizes else None
    times = {"a": [], "b": []}
    for r in range(a.rounds):
        for which in (("a", "b") if r % 2 == 0 else ("b", "a")):
            times[which].append(run_worker(getattr(a, which), a.block_ms / 1e3, a.cases, sizes))
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    rows = []
    for case in times["a"][0]:
        ratios = [tb[case] / ta[case] for ta, tb in zip(times["a"], times["b"])]
        rows.append(dict(case=case, a_s=statistics.median(t[case] for t in times["a"]),
                         b_s=statistics.median(t[case] for t in times["b"]), ratio=statistics.median(ratios),
                         p10=_percentile(ratios, 0.1), p90=_percentile(ratios, 0.9)))
    for row in rows:
        print(f"{row['case']:<48} A {row['a_s'] * 1e3:9.3f} ms  B {row['b_s'] * 1e3:9.3f} ms  "
              f"B/A {row['ratio']:.3f} [{row['p10']:.3f}-{row['p90']:.3f}]")
    ratios = [row["ratio"] for row in rows]
    if not ratios:
        raise SystemExit("no case matched --cases and --sizes")
    print(f"{len(rows)} cases, {a.rounds} rounds: B/A median {statistics.median(ratios):.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(a=tree_commit(a.a), b=tree_commit(a.b), rounds=a.rounds, rows=rows, times=times), f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
