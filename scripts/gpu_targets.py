"""Measures the CUDA performance targets of rkd_ext and writes them as JSON.

Each case is checked against a float64 oracle before it is timed. Times are
forward + backward (the student requires grad, the teacher does not), float32,
the median of repeated calls that each end with a CUDA synchronise; memory is
the allocator's peak above what is allocated before the call.

Targets (H200):
  angle loss    N=1024 D=512: <= 2 ms and >= 30x faster than the reference
  angle loss    N=4096 D=512: <= 150 ms, < 2 GiB above the inputs
  distance loss N=1024 D=512: >= 2x faster than the reference

Usage: python scripts/gpu_targets.py OUT.json
"""
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import rkd_ext
from rkd_ext import reference as R
from rkd_ext.testing import make_features, max_rel_err


def step(fn, s, t):
    def run():
        s.grad = None
        fn(s, t).backward()
        torch.cuda.synchronize()
    return run


def median_seconds(run, min_calls=5, budget_s=3.0):
    run()
    run()
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < budget_s and len(times) < 200):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_bytes(run):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    return torch.cuda.max_memory_allocated() - base


def with_grad(loss_fn):
    """A float64 oracle: (loss, d loss / d student) by autograd through loss_fn."""
    def truth(s, t):
        s = s.detach().clone().requires_grad_(True)
        value = loss_fn(s, t)
        (grad,) = torch.autograd.grad(value, s)
        return value.detach(), grad
    return truth


def chunked_angle_truth(s, t, chunk=32):
    """(angle loss, its student gradient) in float64, a few vertices at a time: the
    reference's O(N^2 D) tensors do not fit at N=4096."""
    n = s.shape[0]
    s = s.detach().clone().requires_grad_(True)
    total = s.new_zeros(())
    for i0 in range(0, n, chunk):
        es = F.normalize(s.unsqueeze(0) - s[i0:i0 + chunk].unsqueeze(1), dim=2)
        with torch.no_grad():
            et = F.normalize(t.unsqueeze(0) - t[i0:i0 + chunk].unsqueeze(1), dim=2)
            at = torch.bmm(et, et.transpose(1, 2))
            del et
        part = F.smooth_l1_loss(torch.bmm(es, es.transpose(1, 2)), at, reduction="sum") / n**3
        part.backward()
        total += part.detach()
    return total, s.grad


def gate(ours, truth_fn, s, t, rtol=1e-4):
    """Value and student-gradient errors of `ours` against the float64 oracle truth_fn."""
    truth, truth_grad = truth_fn(s.detach().double(), t.double())
    s1 = s.detach().clone().requires_grad_(True)
    value = ours(s1, t)
    (grad,) = torch.autograd.grad(value, s1)
    errs = {"value_err": max_rel_err(value, truth), "grad_err": max_rel_err(grad, truth_grad)}
    if not max(errs.values()) <= rtol:
        raise AssertionError(f"{errs} > {rtol}: refusing to time a wrong result")
    return errs


def main(out_path):
    if not (torch.cuda.is_available() and rkd_ext.build_info().get("with_cuda")):
        print("needs a GPU and rkd_ext built with its CUDA kernels: no target measured")
        return 2
    results = []

    def case(name, fn, n, d, truth, reference=None, limits=None):
        # float32 draws, as in the CPU benchmarks.
        batch = dict(dtype=torch.float32, device="cuda", draw_dtype=torch.float32)
        s, t = make_features(n, d, seed=1, requires_grad=True, **batch), make_features(n, d, seed=2, **batch)
        row = dict(case=name, n=n, d=d, **gate(fn, truth, s, t))
        run = step(fn, s, t)
        row["ours_ms"] = median_seconds(run) * 1e3
        row["ours_peak_mib"] = peak_bytes(run) / 2**20
        if reference is not None:
            ref = step(reference, s, t)
            row["reference_ms"] = median_seconds(ref, min_calls=3, budget_s=5.0) * 1e3
            row["reference_peak_mib"] = peak_bytes(ref) / 2**20
            row["speedup"] = row["reference_ms"] / row["ours_ms"]
            del ref
        checks = []
        for key, bound, better in limits or []:
            ok = row[key] <= bound if better == "max" else row[key] >= bound
            checks.append(dict(metric=key, bound=bound, kind=better, value=row[key], ok=bool(ok)))
        row["targets"] = checks
        results.append(row)
        print(json.dumps(row), flush=True)
        del s, t, run
        torch.cuda.empty_cache()

    case("angle_loss", rkd_ext.rkd_angle_loss, 1024, 512, with_grad(R.angle_loss), R.angle_loss,
         [("ours_ms", 2.0, "max"), ("speedup", 30.0, "min")])
    case("angle_loss", rkd_ext.rkd_angle_loss, 4096, 512, chunked_angle_truth, None,
         [("ours_ms", 150.0, "max"), ("ours_peak_mib", 2048.0, "max")])
    case("distance_loss", rkd_ext.rkd_distance_loss, 1024, 512, with_grad(R.distance_loss), R.distance_loss,
         [("speedup", 2.0, "min")])
    # Context for the targets: scaling in N.
    case("angle_loss", rkd_ext.rkd_angle_loss, 2048, 512, chunked_angle_truth)
    case("distance_loss", rkd_ext.rkd_distance_loss, 4096, 512, with_grad(R.distance_loss), R.distance_loss)

    with open(out_path, "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": results}, f, indent=1)
    failed = [c for r in results for c in r["targets"] if not c["ok"]]
    print(f"{sum(len(r['targets']) for r in results) - len(failed)} of "
          f"{sum(len(r['targets']) for r in results)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
