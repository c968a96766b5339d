"""``python -m benchmarks.accuracy_products``: the GPU's float32 products, emulated, against float64 truth.

benchmarks.accuracy's table for the GPU backend with float32 products
(rkd_ext.set_product_precision("float32"), what "auto" picks on GPUs with
slow float64), run on the host by scripts/emulate_cuda.py's emulator (needs
g++ and the CUDA headers; no GPU): the largest relative error of the loss
value and of the student gradient on float32 inputs, beside the GPU's
float64 products and the reference implementation in float32, all against
the float64 truth.

The angle rows answer whether the angle family could take float32 products
too: its loss value from squared distances built with float32 products (the
matrix rkd_loss computes without its angle term) through the angle loss's
row op, against the same truth.
"""
import argparse
import importlib.util
import os
import tempfile

import torch

from rkd_ext import reference as R
from rkd_ext.testing import float64_truth, max_rel_err

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 1e-12


def _emulator(tmp):
    """The emulator's plain build: the same arithmetic as the build instrumented for the detectors (the same
    numbers to the bit), which this table does not need and which makes the runs 60 times slower."""
    spec = importlib.util.spec_from_file_location("emulate_cuda", os.path.join(ROOT, "scripts", "emulate_cuda.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Emulated(mod.build(tmp, "plain"))


def _distance(emu, s, t):
    loss, ds, dt, stats = emu.rkd_distance_loss(s, t, 1.0, EPS, "mean", False, 0.0)
    gs, _ = emu.rkd_distance_loss_backward(torch.ones(()), s, t, ds, dt, stats, 1.0, EPS, "mean", False, 0.0, True,
                                           False)
    return loss, gs


def _angle(emu, s, t):
    loss, qs, qt = emu.rkd_angle_loss(s, t, 1.0, EPS, "mean", True)
    gs, _ = emu.rkd_angle_loss_backward(torch.ones(()), s, t, qs, qt, 1.0, EPS, "mean", True, True, False)
    return loss, gs


def _angle_from_float32_products(emu, s, t):
    """The angle loss value from squared distances made with float32 products."""
    n = s.shape[0]
    _, qs, qt, _ = emu.rkd_loss(s, t, 1.0, 0.0, 1.0, EPS, EPS, "mean", False, 0.0, True)
    return emu.angle_loss_rows(qs, qt, 0, n, 1.0, EPS, True, True) / n**3


LOSSES = {"distance": (_distance, R.distance_loss), "angle": (_angle, R.angle_loss)}


def errors(emu, loss, kind, n, d):
    """[(value error, gradient error)] of `loss` on a `kind` batch: float32 products, float64 products, the
    reference in float32."""
    ours, ref = LOSSES[loss]
    s64, t64, truth, truth_grad = float64_truth(ref, kind, (0, 1), n, d)
    s, t = s64.float(), t64.float()
    row = []
    for mode in ("float32", "float64"):
        emu.set_product_precision(mode)
        val, grad = ours(emu, s, t)
        row.append((max_rel_err(val, truth), max_rel_err(grad, truth_grad)))
    emu.set_product_precision("auto")
    sr = s.clone().requires_grad_(True)
    rv = ref(sr, t)
    (rg,) = torch.autograd.grad(rv, sr)
    row.append((max_rel_err(rv, truth), max_rel_err(rg, truth_grad)))
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--d", type=int, default=256)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"float32 inputs: relative error vs float64 truth, N={args.n}, D={args.d} (GPU emulated on the host)\n")
    print("| loss | batch | value: float32 products | value: float64 products | value: reference | "
          "gradient: float32 products | gradient: float64 products | gradient: reference |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        emu = _emulator(tmp)
        for name in LOSSES:
            for kind in ("random", "offset", "near"):
                row = errors(emu, name, kind, args.n, args.d)
                print(f"| {name} | {kind} | " + " | ".join(f"{v:.1e}" for v, _ in row) + " | " +
                      " | ".join(f"{g:.1e}" for _, g in row) + " |")
        print("\nThe angle loss value with float32 products for its squared distances (not what rkd_ext runs):\n")
        print("| batch | value: float32 products | value: reference |")
        print("|---|---|---|")
        for kind in ("random", "offset", "near"):
            s64, t64, truth, _ = float64_truth(R.angle_loss, kind, (0, 1), args.n, args.d)
            s, t = s64.float(), t64.float()
            emu.set_product_precision("float32")
            val = _angle_from_float32_products(emu, s, t)
            emu.set_product_precision("auto")
            print(f"| {kind} | {max_rel_err(val, truth):.1e} | {max_rel_err(R.angle_loss(s, t), truth):.1e} |")


if __name__ == "__main__":
    main()
