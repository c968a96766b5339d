"""``python -m benchmarks.distributed``: per-rank cost of the global-batch RKD loss, gathered vs sharded.

    python -m benchmarks.distributed [--world 1 2] [--n 512 1024 2048] [--d 512] [--terms angle distance]
                                     [--rounds 3] [--json OUT.json]

For each world size W it starts W processes (gloo on the CPU, one torch thread
each), splits a global batch of N float32 samples evenly over them, and for
each loss term and mode (``gathered``: ``gather_distributed=True``;
``sharded``: ``gather_distributed=True, shard=True``):

1. checks, on every rank, the loss value and the gradient of the rank's own
   student rows against a float64 oracle: the fused single-process loss on
   the whole global batch (tested against the reference in python_tests), and
   refuses to time a wrong result;
2. measures each rank's peak memory above what it holds before the step
   (the process's peak resident set, as benchmarks.common does);
3. times forward + backward: every round starts at a barrier; a rank's time
   is the median of its rounds, and the table shows the slowest rank's;
4. counts the bytes the step communicates, from the tensors the collectives
   of rkd_ext.distributed are given: per rank, what a ring algorithm sends
   (and receives): (W - 1) / W of an all-gather's output or a
   reduce-scatter's input, 2 (W - 1) / W of an all-reduce's tensor.

The teacher does not require grad (the common case). With W = 1 both modes
compute the plain loss, which is the baseline. Prints a markdown table and
writes the measurements to --json.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .report import fmt_mib, fmt_time

TERMS = {"angle": (0.0, 1.0), "distance": (1.0, 0.0), "full": (25.0, 50.0)}
MODES = ("gathered", "sharded")
RTOL = 1e-4  # float32 features, float64 arithmetic inside: measured errors are ~1e-7


def _criterion(term, mode):
    import rkd_ext

    distance_weight, angle_weight = TERMS[term]
    return rkd_ext.RKDLoss(distance_weight, angle_weight, gather_distributed=True, shard=mode == "sharded")


def _oracle(term, s, t):
    """Value and student gradient of the loss on the whole batch, in float64."""
    import rkd_ext

    distance_weight, angle_weight = TERMS[term]
    s = s.double().requires_grad_()
    loss = rkd_ext.RKDLoss(distance_weight, angle_weight)(s, t.double())
    loss.backward()
    return loss.detach(), s.grad


class _Traffic:
    """Counts the bytes the collectives of rkd_ext.distributed move per rank (ring algorithms)."""

    NAMES = ("_all_gather_single", "_reduce_scatter_single", "_all_reduce")

    def __init__(self, world):
        from rkd_ext import distributed

        self.module, self.world, self.bytes, self.calls = distributed, world, 0, 0
        self.originals = {name: getattr(distributed, name) for name in self.NAMES}

    def __enter__(self):
        share = (self.world - 1) / self.world

        def counted(name, factor, which):
            original = self.originals[name]

            def call(*args):
                tensor = args[which]
                self.bytes += factor * share * tensor.numel() * tensor.element_size()
                self.calls += 1
                return original(*args)
            return call

        self.module._all_gather_single = counted("_all_gather_single", 1, 0)      # (out, x, group)
        self.module._reduce_scatter_single = counted("_reduce_scatter_single", 1, 1)  # (out, x, group)
        self.module._all_reduce = counted("_all_reduce", 2, 0)                    # (x, group)
        return self

    def __exit__(self, *exc):
        for name, fn in self.originals.items():
            setattr(self.module, name, fn)


def _max_over_ranks(value):
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _worker(rank, init_file, world, args, out_file):
    torch.set_num_threads(1)
    os.environ.setdefault("RKD_EXT_REQUIRE_EXT", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=1800))
    from rkd_ext.testing import make_features, max_rel_err

    from .common import peak_memory_mb

    rows = []
    try:
        for n in args.n:
            if n % world:
                raise SystemExit(f"--n {n} does not split evenly over {world} processes")
            s_all = make_features(n, args.d, seed=0, draw_dtype=torch.float32, dtype=torch.float32)
            t_all = make_features(n, args.d, seed=1, draw_dtype=torch.float32, dtype=torch.float32)
            mine = slice(rank * (n // world), (rank + 1) * (n // world))
            for term in args.terms:
                value, grad = _oracle(term, s_all, t_all)
                for mode in MODES:
                    criterion = _criterion(term, mode)
                    s = s_all[mine].clone().requires_grad_()
                    t = t_all[mine].clone()

                    def step():
                        s.grad = None
                        loss = criterion(s, t)
                        loss.backward()
                        return loss

                    with _Traffic(world) as traffic:
                        loss = step()
                    errs = {"value": max_rel_err(loss, value),
                            "grad": max_rel_err(s.grad / world, grad[mine])}
                    for what, err in errs.items():
                        if not err <= RTOL:
                            raise AssertionError(f"rank {rank} N={n} {term} {mode}: {what} error {err:.2e} > "
                                                 f"{RTOL:g} against the float64 oracle; refusing to time it")
                    dist.barrier()
                    peak = peak_memory_mb(step, "cpu")
                    times = []
                    for _ in range(args.rounds):
                        dist.barrier()
                        start = time.perf_counter()
                        step()
                        times.append(time.perf_counter() - start)
                    row = dict(world=world, n=n, d=args.d, term=term, mode=mode, rounds=args.rounds,
                               median_s=_max_over_ranks(statistics.median(times)),
                               peak_mb=_max_over_ranks(peak if peak is not None else float("nan")),
                               bytes_per_rank=_max_over_ranks(traffic.bytes), collectives=traffic.calls,
                               value_err=_max_over_ranks(errs["value"]), grad_err=_max_over_ranks(errs["grad"]))
                    rows.append(row)
                    if rank == 0:
                        print(f"W={world} N={n} {term:8s} {mode:8s} {row['median_s'] * 1e3:9.1f} ms "
                              f"{row['peak_mb']:8.1f} MB {row['bytes_per_rank'] / 2**20:8.2f} MiB sent",
                              flush=True)
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(rows, f)
    finally:
        dist.destroy_process_group()


def run(world, args):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        mp.start_processes(_worker, args=(os.path.join(tmp, "store"), world, args, out), nprocs=world,
                           start_method="spawn")
        with open(out) as f:
            return json.load(f)


def _fmt_bytes(b):
    return "0" if b == 0 else fmt_mib(b / 2**20)


def table(rows):
    """Markdown: per term, N and W, each mode's time, memory and traffic, and sharded / gathered time."""
    lines = ["| term | N | W | gathered: time | sharded: time | sharded / gathered | gathered: peak memory "
             "| sharded: peak memory | gathered: sent per rank | sharded: sent per rank |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cells = {(r["term"], r["n"], r["world"], r["mode"]): r for r in rows}
    for term in dict.fromkeys(r["term"] for r in rows):
        for n in sorted({r["n"] for r in rows}):
            for world in sorted({r["world"] for r in rows}):
                g, s = cells.get((term, n, world, "gathered")), cells.get((term, n, world, "sharded"))
                if g is None or s is None:
                    continue
                lines.append(f"| {term} | {n} | {world} | {fmt_time(g['median_s'])} | {fmt_time(s['median_s'])} "
                             f"| {s['median_s'] / g['median_s']:.2f} | {fmt_mib(g['peak_mb'])} "
                             f"| {fmt_mib(s['peak_mb'])} | {_fmt_bytes(g['bytes_per_rank'])} "
                             f"| {_fmt_bytes(s['bytes_per_rank'])} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip("`: "))
    p.add_argument("--world", type=int, nargs="+", default=[1, 2])
    p.add_argument("--n", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--terms", nargs="+", choices=sorted(TERMS), default=["angle", "distance"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="write the measurements here")
    args = p.parse_args(argv)
    if not (dist.is_available() and dist.is_gloo_available()):
        raise SystemExit("benchmarks.distributed needs torch.distributed with the gloo backend")
    rows = []
    for world in args.world:
        rows += run(world, args)
    import rkd_ext

    info = dict(command="python -m benchmarks.distributed " + " ".join(sys.argv[1:] if argv is None else argv),
                torch=torch.__version__, rkd_ext=rkd_ext.__version__, cpus=os.cpu_count(),
                load_average=os.getloadavg(), threads_per_process=1)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(info=info, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
