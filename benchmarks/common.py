"""Shared pieces of the benchmark suites: sizes, inputs, correctness gates, memory.

Peak memory "above the inputs" is measured on CUDA with the allocator's peak
counter, and on CPU with the process's peak resident set (VmHWM), reset before
each measured call through /proc/self/clear_refs (Linux). The CPU figure counts
pages actually touched, so it is the memory a run really needs; it is reported
as None where the kernel does not support the reset.
"""
import ctypes
import gc
import os

import torch

QUICK = os.environ.get("RKD_BENCH_QUICK", "0") == "1"


def sizes(full, quick):
    return quick if QUICK else full


def features(n, d, device, dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
    return x.requires_grad_(requires_grad)


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


def check_close(actual, expected, rtol, what):
    """Correctness gate run before a case is timed."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    err = float((a - e).abs().max() / e.abs().max().clamp_min(1e-30))
    if not err <= rtol:
        raise AssertionError(f"{what}: relative error {err:.3e} > {rtol:.1e}; refusing to time a wrong result")


def loss_step(loss_fn, student, teacher, mode, device):
    """A callable running loss_fn once, forward only ("forward", no autograd
    graph) or forward and backward ("forward_backward"), then synchronising."""
    def run():
        if mode == "forward":
            with torch.no_grad():
                loss_fn(student, teacher)
        else:
            student.grad = None
            loss_fn(student, teacher).backward()
        sync(device)
    return run


def record(benchmark, run, device, rounds, **info):
    """Warm up, record the peak memory above the inputs, then time run()."""
    run()
    benchmark.extra_info.update(device=device, peak_mb=peak_memory_mb(run, device), **info)
    benchmark.group = " ".join(f"{k}={v}" for k, v in info.items() if k != "impl") + f" {device}"
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
