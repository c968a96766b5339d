"""``python -m benchmarks.accuracy``: float32 error against a float64 ground truth, ours vs the reference.

For the distance and angle losses on three kinds of batch (random; offset by 100x the
spread, like post-ReLU features; pairs of near-duplicate rows 1e-3 apart), prints the
largest relative error of the loss value and of the student gradient, for rkd_ext and
for the reference implementation, both run in float32.
"""
import argparse

import torch

import rkd_ext
from rkd_ext import reference as R


def batch(n, d, kind, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if kind == "offset":
        x = x + 100.0
    elif kind == "near":
        half = (n + 1) // 2
        x = torch.cat([x[:half], x[:half] + 1e-3 * torch.randn(half, d, generator=g, dtype=torch.float64)])[:n]
    return x


def errors(fn, truth_fn, s64, t64):
    s = s64.clone().requires_grad_(True)
    truth = truth_fn(s, t64)
    (truth_grad,) = torch.autograd.grad(truth, s)
    s32 = s64.float().requires_grad_(True)
    val = fn(s32, t64.float())
    (grad,) = torch.autograd.grad(val, s32)

    def rel(a, b):
        return float((a.double() - b).abs().max() / b.abs().max())

    return rel(val.detach(), truth.detach()), rel(grad, truth_grad)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--d", type=int, default=256)
    args = p.parse_args(argv)
    losses = {"distance": (rkd_ext.rkd_distance_loss, R.distance_loss),
              "angle": (rkd_ext.rkd_angle_loss, R.angle_loss)}
    print(f"float32 relative error vs float64 truth, N={args.n}, D={args.d}\n")
    print("| loss | batch | value: ours | value: reference | gradient: ours | gradient: reference |")
    print("|---|---|---|---|---|---|")
    for name, (ours, ref) in losses.items():
        for kind in ("random", "offset", "near"):
            s, t = batch(args.n, args.d, kind, 0), batch(args.n, args.d, kind, 1)
            ov, og = errors(ours, ref, s, t)
            rv, rg = errors(ref, ref, s, t)
            print(f"| {name} | {kind} | {ov:.1e} | {rv:.1e} | {og:.1e} | {rg:.1e} |")


if __name__ == "__main__":
    main()
