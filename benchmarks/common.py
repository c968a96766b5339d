"""The machinery every benchmark case goes through: sizes, inputs, skips, the correctness gate, memory, timing.

A case is one (op, implementation, device, dtype, mode, N, D). In order, it

1. is skipped, with the estimate as the reason, when its estimated memory does
   not fit the budget or (on CPU) one call is estimated to take too long;
2. is checked against a float64 oracle (value, and the gradient in
   forward+backward mode) before anything is timed;
3. is warmed up (the gate's call), then its peak memory above the inputs is
   measured: on CUDA with the allocator's peak counter, on CPU with the
   process's peak resident set (VmHWM), reset before the measured call through
   /proc/self/clear_refs (Linux; None where the kernel does not support the
   reset), so the figure counts the pages a run really touches;
4. is timed over rounds of one call each; every call ends with a CUDA
   synchronise, so host timing measures the finished work.

Environment:
  RKD_BENCH_QUICK=1        few sizes and rounds (CI)
  RKD_BENCH_DEVICES        comma list, default "cpu" plus "cuda" when present
  RKD_BENCH_GRID           training (N 16-128, D 512-25,088), global (N 256-4096, D 128-2048) or all (default)
  RKD_BENCH_N, RKD_BENCH_D, RKD_BENCH_DTYPES   comma lists overriding the sizes (every N with every D)
                           and dtypes
  RKD_BENCH_IMPLS          comma list of the implementations to run (default: all of an op's)
  RKD_BENCH_MEM_GB         memory budget per case (default: half the device's memory)
  RKD_BENCH_MAX_CPU_S      longest estimated CPU call still run (default 20 s)
"""
import ctypes
import gc
import os
import time

import pytest
import torch

import rkd_ext
from rkd_ext.testing import make_features, max_rel_err

from . import costs, oracle
from .impls import FORWARD, FORWARD_BACKWARD, IMPLS, KIND, MODES

QUICK = os.environ.get("RKD_BENCH_QUICK", "0") == "1"


def _env_list(name, default, cast=str):
    raw = os.environ.get(name)
    return [cast(v) for v in raw.split(",") if v.strip()] if raw else default


# Two regimes: the per-GPU batches people train with (mmrazor: 32; CIFAR
# recipes: 16-64) on pooled features or torchdistill's flattened layer4
# (512 x 7 x 7 = 25,088), and relations over the global batch of a DDP job.
TRAINING = [(n, d) for n in (16, 32, 64, 128) for d in (512, 2048, 25088)]
GLOBAL = [(n, d) for n in (256, 1024, 4096) for d in (128, 512, 2048)]
GRIDS = {"training": TRAINING, "global": GLOBAL, "all": TRAINING + GLOBAL}


def select_sizes(default_grid="all"):
    """The (N, D) cases the environment asks for: RKD_BENCH_QUICK's few, else RKD_BENCH_N x RKD_BENCH_D
    (each defaulting to the grid's values), else the grid RKD_BENCH_GRID (default: default_grid)."""
    grid = os.environ.get("RKD_BENCH_GRID", default_grid)
    if grid not in GRIDS:
        raise ValueError(f"RKD_BENCH_GRID must be one of {', '.join(GRIDS)}, got {grid!r}")
    if os.environ.get("RKD_BENCH_QUICK", "0") == "1":
        return [(n, d) for n in (32, 64) for d in (128,)]
    if "RKD_BENCH_N" in os.environ or "RKD_BENCH_D" in os.environ:
        return [(n, d) for n in _env_list("RKD_BENCH_N", sorted({n for n, _ in GRIDS[grid]}), int)
                for d in _env_list("RKD_BENCH_D", sorted({d for _, d in GRIDS[grid]}), int)]
    return GRIDS[grid]


GRID = os.environ.get("RKD_BENCH_GRID", "all")
SIZES = select_sizes()
DTYPES = _env_list("RKD_BENCH_DTYPES", ["float32", "bfloat16"])
ONLY_IMPLS = _env_list("RKD_BENCH_IMPLS", None)
DEVICES = _env_list("RKD_BENCH_DEVICES", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
MAX_CPU_CALL_S = float(os.environ.get("RKD_BENCH_MAX_CPU_S", "20"))
# Rounds: as many as fit in about TARGET_S of timing, within [MIN, MAX].
# A second of rounds even for the fastest cases: a few tens of milliseconds (the old cap of 200
# rounds) catch a shared machine in one state, and the ratio of two such medians moves with it.
TARGET_S, MIN_ROUNDS, MAX_ROUNDS = (0.05, 2, 3) if QUICK else (1.0, 3, 2000)

# Largest relative error (max |error| / max |truth|) of the value and of the
# gradient that the gate accepts, by how the implementation computes.
# Worst cases measured on CPU up to N=4096, D=2048: float32 2e-6; bfloat16 4e-3 for
# ours, 0.13 for the rest (its means and normalisers are taken in bfloat16).
RTOL_FUSED = {"float32": 1e-4, "bfloat16": 1e-2}  # float64 inside; bfloat16 only rounds the output
RTOL_PLAIN = {"float32": 1e-4, "bfloat16": 0.3}
# torch.cdist's expanded form leaves sqrt(rounding error) on the diagonal, where the
# relations are exactly 0: 6e-4 in float32, 6e-2 in bfloat16.
RTOL_CDIST = {"float32": 5e-3, "bfloat16": 0.3}

SKIPPED = []  # skipped cases and why, for the JSON: pytest-benchmark records only what ran


def cases(op):
    """pytest params (dtype, n, d, mode, impl) for op; impl varies fastest so that consecutive cases share an oracle.

    Quick mode compiles the reference once, for the angle loss forward+backward (the largest
    graph): every compile costs seconds, and one keeps that path alive.
    """
    params = []
    for dtype in DTYPES:
        for n, d in SIZES:
            for mode in MODES:
                for impl in IMPLS[op]:
                    if ONLY_IMPLS is not None and impl not in ONLY_IMPLS:
                        continue
                    if (QUICK and impl == "reference_compiled"
                            and (op, dtype, n, mode) != ("angle_loss", DTYPES[0], SIZES[0][0], FORWARD_BACKWARD)):
                        continue
                    params.append(pytest.param(dtype, n, d, mode, impl, id=f"{dtype}-{n}-{d}-{mode}-{impl}"))
    return params


def relation_grad(op, n, device, dtype):
    """The upstream gradient for a tensor op's backward: random, and zero on the degenerate
    entries (j == i or k == i), where the implementations define the gradient differently
    (the reference scales it by 1/eps there)."""
    g = torch.Generator(device=device).manual_seed(3)
    eye = torch.eye(n, dtype=torch.bool, device=device)
    if op == "angle_tensor":
        grad = torch.randn((n, n, n), generator=g, device=device, dtype=dtype)
        return grad.masked_fill_(eye.unsqueeze(2) | eye.unsqueeze(1), 0.0)
    return torch.randn((n, n), generator=g, device=device, dtype=dtype).masked_fill_(eye, 0.0)


def memory_budget(device):
    """Bytes a benchmark case may use: half the device's memory (RKD_BENCH_MEM_GB overrides)."""
    if "RKD_BENCH_MEM_GB" in os.environ:
        return float(os.environ["RKD_BENCH_MEM_GB"]) * 2**30
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_properties(torch.device(device)).total_memory / 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return None


def peak_memory_mb(fn, device):
    """Peak memory (MB) that fn() needs above what is allocated when it starts."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if rkd_ext._ext.available:
        # The scratch rkd_ext keeps between calls (csrc/core/scratch_cache.h) is memory the call needs:
        # freed, so that the call allocates it again and it counts, as it does in a call's first run.
        torch.ops.rkd_ext._cpu_release_scratch()
    try:
        # Return freed heap pages first, so the baseline is what is really in use.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _rss_kib("VmRSS:")
    fn()
    peak = _rss_kib("VmHWM:")
    return None if base is None or peak is None else max(0.0, (peak - base) / 1024)


def step(fn, inputs, grad_out, mode, device):
    """A callable running fn once: forward only (no autograd graph) or forward and backward;
    it synchronises, so a host clock around it times finished work."""
    x = inputs[0]

    def run():
        if mode == FORWARD:
            with torch.no_grad():
                fn(*inputs)
        else:
            x.grad = None
            fn(*inputs).backward(grad_out)
        sync(device)
    return run


_oracle_cache = {}


def _expected(key, op, inputs, grad_out, want_grad):
    if key not in _oracle_cache:
        _oracle_cache.clear()
        _oracle_cache[key] = oracle.expected(op, inputs, grad_out, want_grad)
    return _oracle_cache[key]


def _rtol(impl, dtype):
    if impl == "cdist":
        return RTOL_CDIST[dtype]
    return (RTOL_FUSED if impl == "ours" else RTOL_PLAIN)[dtype]


def gate(case, fn, inputs, grad_out):
    """Compare fn's value (and gradient) with the oracle; raise before a wrong result is timed.
    Returns the errors, which go into extra_info."""
    op, mode = case["op"], case["mode"]
    want_grad = mode == FORWARD_BACKWARD
    key = tuple(case[k] for k in ("op", "device", "dtype", "n", "d", "mode"))
    value, grad = _expected(key, op, inputs, grad_out, want_grad)
    with torch.set_grad_enabled(want_grad):
        out = fn(*inputs)
        if want_grad:
            out.backward(grad_out)
    if op == "angle_tensor":
        out = out[oracle.angle_rows(case["n"]).to(out.device)]
    errs = {"err": max_rel_err(out, value)}
    if want_grad:
        errs["grad_err"] = max_rel_err(inputs[0].grad, grad)
        inputs[0].grad = None
    rtol = _rtol(case["impl"], case["dtype"])
    for what, err in errs.items():
        if not err <= rtol:
            raise AssertionError(f"{describe(case)}: {what} {err:.3e} > {rtol:.1e} against the float64 oracle; "
                                 "refusing to time a wrong result")
    return errs


def describe(case):
    return " ".join(f"{k}={case[k]}" for k in ("op", "impl", "device", "dtype", "mode", "n", "d"))


def skip(case, why, reason):
    """Skip a case; why ("memory", "time", "unsupported") labels its cell in the report."""
    SKIPPED.append(dict(case, why=why, reason=reason))
    pytest.skip(reason)


def _size(b):
    return f"{b / 2**30:.3g} GiB" if b >= 2**30 else f"{b / 2**20:.3g} MiB"


PARAMS = ("dtype", "n", "d", "mode", "impl")


def bench(op):
    """The benchmark test of op over cases(op): a suite assigns it to ``test_<op>``."""
    @pytest.mark.parametrize(PARAMS, cases(op))
    def test(benchmark, device, dtype, n, d, mode, impl):
        run_case(benchmark, op, impl, device, dtype, mode, n, d)

    test.__name__ = test.__qualname__ = f"test_{op}"
    return test


def run_case(benchmark, op, impl, device, dtype, mode, n, d):
    case = dict(op=op, impl=impl, device=device, dtype=dtype, mode=mode, n=n, d=d)
    tdtype = getattr(torch, dtype)
    need = costs.memory_bytes(op, impl, mode, n, d)
    held = costs.input_bytes(op, mode, n, d, tdtype)
    budget = memory_budget(device)
    if need + held > budget:
        skip(case, "memory", f"needs about {_size(need)} above {_size(held)} of inputs (estimated), "
                             f"budget {_size(budget)}")
    if torch.device(device).type == "cpu":
        threads = torch.get_num_threads()
        seconds = costs.cpu_seconds(op, impl, mode, n, d, threads)
        if seconds > MAX_CPU_CALL_S:
            skip(case, "time", f"one call takes about {seconds:.3g} s on {threads} CPU threads (estimated), "
                       f"limit {MAX_CPU_CALL_S:g} s")

    if impl.startswith("ours") and torch.device(device).type == "cuda" and not rkd_ext.build_info().get("with_cuda"):
        skip(case, "unsupported", "rkd_ext was built without CUDA kernels; this would time the pure-PyTorch fallback")

    # Each case compiles afresh: no recompile limit, no cached graph from another shape.
    torch._dynamo.reset()
    fn = IMPLS[op][impl]
    # Drawn in float32: the batches the committed results were measured on.
    batch = dict(dtype=tdtype, device=device, draw_dtype=torch.float32)
    x = make_features(n, d, seed=1, requires_grad=(mode == FORWARD_BACKWARD), **batch)
    inputs = (x, make_features(n, d, seed=2, **batch)) if KIND[op] == "loss" else (x,)
    grad_out = relation_grad(op, n, device, tdtype) if KIND[op] == "tensor" and mode == FORWARD_BACKWARD else None
    try:
        errs = gate(case, fn, inputs, grad_out)
    except (RuntimeError, NotImplementedError) as exc:
        if "not implemented for" not in str(exc):
            raise
        skip(case, "unsupported", f"{impl} does not support {dtype} on {device}: {str(exc).splitlines()[0]}")

    # The gate's call was the warm-up (compiling, for the compiled reference); the memory
    # run is a second one. A third, timed, sets the number of rounds: the memory run follows
    # a trim of the heap and pays for faulting its pages back in (a hundred times an op's time at
    # small sizes), which would cut the rounds, and the time they cover, by as much.
    run = step(fn, inputs, grad_out, mode, device)
    peak_mb = peak_memory_mb(run, device)
    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    rounds = min(MAX_ROUNDS, max(MIN_ROUNDS, int(TARGET_S / max(once, 1e-9))))
    benchmark.extra_info.update(case, peak_mb=peak_mb, est_mb=need / 2**20, **errs)
    benchmark.group = f"{op} {mode} {dtype} n={n} d={d} {device}"
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
