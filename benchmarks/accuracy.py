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
from rkd_ext.testing import make_features, max_rel_err


def errors(fn, truth_fn, s64, t64):
    s = s64.clone().requires_grad_(True)
    truth = truth_fn(s, t64)
    (truth_grad,) = torch.autograd.grad(truth, s)
    s32 = s64.float().requires_grad_(True)
    val = fn(s32, t64.float())
    (grad,) = torch.autograd.grad(val, s32)
    return max_rel_err(val, truth), max_rel_err(grad, truth_grad)


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
            s, t = make_features(args.n, args.d, seed=0, kind=kind), make_features(args.n, args.d, seed=1, kind=kind)
            ov, og = errors(ours, ref, s, t)
            rv, rg = errors(ref, ref, s, t)
            print(f"| {name} | {kind} | {ov:.1e} | {rv:.1e} | {og:.1e} | {rg:.1e} |")


if __name__ == "__main__":
    main()
