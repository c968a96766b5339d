"""Runs the CUDA kernels on the host and checks them against the CPU ops.

The torch-free kernels of csrc/cuda are compiled as plain C++ with
csrc/cuda/standalone/emulate.h (each CUDA thread a fiber, __syncthreads() a
switch) into a small library. This script drives it the way the bindings
(csrc/cuda/*_cuda.cu) drive the real kernels, then compares every op's
outputs and gradients with torch.ops.rkd_ext on the CPU, for every dtype, on
odd sizes and degenerate data. It needs g++, the CUDA headers and an
installed rkd_ext; no GPU.

Usage: python scripts/emulate_cuda.py [--quick]   (exit status 1 on a mismatch)
"""
import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time

import torch

import rkd_ext  # noqa: F401  (registers torch.ops.rkd_ext)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
RED_CODE = {"none": 0, "mean": 1, "sum": 2}
SQ, SQ_CLAMPED, DIST = 0, 1, 2
CPU = torch.ops.rkd_ext


def build(out_dir):
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    lib = os.path.join(out_dir, "rkd_emulate.so")
    cmd = [os.environ.get("CXX", "g++"), "-std=c++17", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror",
           "-Wno-unknown-pragmas", "-Wno-clobbered", f"-I{cuda_home}/include",
           os.path.join(ROOT, "csrc", "cuda", "standalone", "emulate.cpp"), "-o", lib]
    subprocess.run(cmd, check=True)
    return ctypes.CDLL(lib)


class Emulated:
    """The CUDA ops, sequenced as in the bindings, on host tensors."""

    def __init__(self, lib):
        self.lib = lib
        for fn in ("emu_pair_matrix", "emu_grad_from_weights", "emu_normalized_distance",
                   "emu_pairwise_distance_weights", "emu_normalized_distance_weights", "emu_distance_loss",
                   "emu_distance_loss_weights", "emu_angle_tensor", "emu_angle_loss", "emu_angle_loss_weights",
                   "emu_angle_tensor_weights"):
            getattr(lib, fn).restype = None

    @staticmethod
    def _p(t):
        return ctypes.c_void_p(t.data_ptr())

    # ---- per-input steps (pairwise_cuda.cu) ----

    def pair(self, x, kind, eps):
        x = x.contiguous()
        n, d = x.shape
        out = torch.empty(n, n, dtype=torch.float64)
        self.lib.emu_pair_matrix(DTYPE_CODE[x.dtype], self._p(x), ctypes.c_int64(n), ctypes.c_int64(d), kind,
                                 ctypes.c_double(eps), self._p(out))
        return out

    def grad(self, x, W, w):
        x = x.contiguous()
        n, d = x.shape
        dx = torch.empty_like(x)
        self.lib.emu_grad_from_weights(DTYPE_CODE[x.dtype], self._p(x), ctypes.c_int64(n), ctypes.c_int64(d),
                                       self._p(W), self._p(w), self._p(dx))
        return dx

    @staticmethod
    def _weights(n):
        return torch.empty(n, n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)

    # ---- distance_cuda.cu ----

    def pairwise_distance(self, x, eps):
        d = self.pair(x, DIST, eps)
        return d.to(x.dtype), d

    def pairwise_distance_backward(self, grad, x, d, eps):
        g = grad.double().contiguous()
        W, w = self._weights(x.shape[0])
        self.lib.emu_pairwise_distance_weights(self._p(g), self._p(d), ctypes.c_int64(x.shape[0]),
                                               ctypes.c_double(eps), self._p(W), self._p(w))
        return self.grad(x, W, w)

    def normalized_distance(self, x, eps):
        n = x.shape[0]
        d = self.pair(x, DIST, eps)
        if n < 2:
            return torch.zeros(n, n, dtype=x.dtype), d
        psi = torch.empty(n, n, dtype=x.dtype)
        self.lib.emu_normalized_distance(DTYPE_CODE[x.dtype], self._p(d), ctypes.c_int64(n), self._p(psi))
        return psi, d

    def normalized_distance_backward(self, grad, x, d, eps):
        n = x.shape[0]
        if n < 2:
            return torch.zeros_like(x)
        g = grad.double().contiguous()
        W, w = self._weights(n)
        self.lib.emu_normalized_distance_weights(self._p(g), self._p(d), ctypes.c_int64(n), ctypes.c_double(eps),
                                                 self._p(W), self._p(w))
        return self.grad(x, W, w)

    def rkd_distance_loss(self, s, t, beta, eps, reduction, squared, mean_offset):
        n = s.shape[0]
        dtype = torch.float64 if torch.float64 in (s.dtype, t.dtype) else torch.float32
        kind = SQ_CLAMPED if squared else DIST
        ds, dt = self.pair(s, kind, eps), self.pair(t, kind, eps)
        shape = (n, n) if reduction == "none" else ()
        if n < 2:
            return torch.zeros(shape, dtype=dtype), ds, dt
        loss = torch.empty(shape, dtype=dtype)
        self.lib.emu_distance_loss(DTYPE_CODE[dtype], self._p(ds), self._p(dt), ctypes.c_int64(n),
                                   ctypes.c_double(beta), ctypes.c_double(mean_offset), RED_CODE[reduction],
                                   self._p(loss))
        return loss, ds, dt

    def rkd_distance_loss_backward(self, grad, s, t, ds, dt, beta, eps, reduction, squared, mean_offset):
        n = s.shape[0]
        up = grad.double().contiguous()

        def side(x, a, b):
            W, w = self._weights(n)
            self.lib.emu_distance_loss_weights(self._p(a), self._p(b), self._p(up), ctypes.c_int64(n),
                                               ctypes.c_double(beta), ctypes.c_double(eps), RED_CODE[reduction],
                                               int(squared), ctypes.c_double(mean_offset), self._p(W), self._p(w))
            return self.grad(x, W, w)

        if n < 2:
            return torch.zeros_like(s), torch.zeros_like(t)
        return side(s, ds, dt), side(t, dt, ds)

    # ---- angle_cuda.cu ----

    @staticmethod
    def _acc(*xs):
        return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32

    def angle_tensor(self, x, eps, normalize):
        n = x.shape[0]
        sq = self.pair(x, SQ, 0.0)
        out = torch.empty(n, n, n, dtype=x.dtype)
        self.lib.emu_angle_tensor(DTYPE_CODE[self._acc(x)], DTYPE_CODE[x.dtype], self._p(sq), ctypes.c_int64(n),
                                  ctypes.c_double(eps), int(normalize), self._p(out))
        return out, sq

    def angle_tensor_backward(self, grad, x, sq, eps, normalize):
        n = x.shape[0]
        acc = self._acc(x)
        up = grad.to(acc).contiguous()
        W, w = self._weights(n)
        self.lib.emu_angle_tensor_weights(DTYPE_CODE[acc], self._p(sq), self._p(up), ctypes.c_int64(n),
                                          ctypes.c_double(eps), int(normalize), self._p(W), self._p(w))
        return self.grad(x, W, w)

    def rkd_angle_loss(self, s, t, beta, eps, reduction, normalize):
        n = s.shape[0]
        acc = self._acc(s, t)
        sq_s, sq_t = self.pair(s, SQ, 0.0), self.pair(t, SQ, 0.0)
        shape = (n, n, n) if reduction == "none" else ()
        if n < 3:
            return torch.zeros(shape, dtype=acc), sq_s, sq_t
        loss = torch.empty(shape, dtype=acc)
        self.lib.emu_angle_loss(DTYPE_CODE[acc], self._p(sq_s), self._p(sq_t), ctypes.c_int64(n),
                                ctypes.c_double(beta), ctypes.c_double(eps), int(normalize), RED_CODE[reduction],
                                self._p(loss))
        return loss, sq_s, sq_t

    def rkd_angle_loss_backward(self, grad, s, t, sq_s, sq_t, beta, eps, reduction, normalize):
        n = s.shape[0]
        if n < 3:
            return torch.zeros_like(s), torch.zeros_like(t)
        acc = self._acc(s, t)
        up = grad.to(acc if reduction == "none" else torch.float64).contiguous()

        def side(x, a, b):
            W, w = self._weights(n)
            self.lib.emu_angle_loss_weights(DTYPE_CODE[acc], self._p(a), self._p(b), self._p(up),
                                            RED_CODE[reduction], ctypes.c_int64(n), ctypes.c_double(beta),
                                            ctypes.c_double(eps), int(normalize), self._p(W), self._p(w))
            return self.grad(x, W, w)

        return side(s, sq_s, sq_t), side(t, sq_t, sq_s)


# ---- comparisons --------------------------------------------------------------------

def features(n, d, dtype, seed, kind="random"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if kind == "offset":
        x = x + 100.0
    elif kind == "near":
        half = (n + 1) // 2
        x = torch.cat([x[:half], x[:half] + 1e-3 * torch.randn(half, d, generator=g, dtype=torch.float64)])[:n]
    elif kind == "dup":
        x[n // 2:] = x[: n - n // 2].clone()
    return x.to(dtype)


def upstream(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


# The oracle is the CPU op run in float64 on the same input values (exact
# upcasts) and the same upstream gradients. Error bounds, relative to its
# largest element: the kernels compute in float64, or with float32 triplet
# arithmetic on float64 squared distances and cosine numerators (within
# ~3e-7 of float64, near-duplicates included); half results add the rounding
# of the output.
TOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# With D = 1 every triplet is collinear, and with N = 2 every cosine is a
# constant 0 or 1: the exact angle gradient is 0, and what is left of the
# cancelling terms is rounding noise (at these small N).
NOISE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 1e-3}
# Every comparison's absolute floor: a quantity that is exactly 0 on the CPU
# (a loss at N = 2, where both normalised distances are 1; a gradient through
# coincident points) may be a rounding error squared here; and float16 rounds
# subnormal results (below 6e-5) to multiples of 2^-24.
TINY = 1e-20
FLOOR = {torch.float64: TINY, torch.float32: TINY, torch.float16: 2.0**-24, torch.bfloat16: TINY}


class Report:
    def __init__(self):
        self.failures = 0
        self.count = 0

    def check(self, what, actual, expected, rtol, atol=TINY):
        """max |actual - expected| <= rtol max |expected| + atol, NaN where expected has NaN."""
        self.count += 1
        a, e = actual.double(), expected.double()
        if a.shape != e.shape:
            self.failures += 1
            print(f"FAIL {what}: shape {tuple(a.shape)} != {tuple(e.shape)}")
            return
        nan_a, nan_e = torch.isnan(a), torch.isnan(e)
        if not torch.equal(nan_a, nan_e):
            self.failures += 1
            print(f"FAIL {what}: NaN pattern differs")
            return
        a, e = a.masked_fill(nan_a, 0), e.masked_fill(nan_e, 0)
        if e.numel() == 0:
            return
        scale = float(e.abs().max())
        err = float((a - e).abs().max())
        if not err <= rtol * scale + atol:
            self.failures += 1
            print(f"FAIL {what}: max error {err:.3e}, largest element {scale:.3e} (rtol {rtol:.0e}, atol {atol:.0e})")


def loss_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def run_distance(emu, rep, n, ds, dt, dtype, kind, quick):
    s = features(n, ds, dtype, 1, kind)
    t = features(n, dt, dtype, 2, kind)
    s64, t64 = s.double(), t.double()
    tol = TOL[dtype]
    tag = f"n={n} ds={ds} dt={dt} {str(dtype)[6:]} {kind}"
    eps = 1e-12
    truth = ((s64[:, None, :] - s64[None, :, :]) ** 2).sum(-1)
    rep.check(f"pair sq {tag}", emu.pair(s, SQ, 0.0), truth, 1e-12)

    for op in ("pairwise_distance", "normalized_distance"):
        mine = getattr(emu, op)(s, eps)
        ref = getattr(CPU, op)(s64, eps)
        rep.check(f"{op} {tag}", mine[0], ref[0], tol, FLOOR[dtype])
        rep.check(f"{op} dist64 {tag}", mine[1], ref[1], 1e-12)
        g = upstream((n, n), dtype, 3)
        rep.check(f"{op}_backward {tag}", getattr(emu, op + "_backward")(g, s, mine[1], eps),
                  getattr(CPU, op + "_backward")(g.double(), s64, ref[1], eps), tol, FLOOR[dtype])

    variants = [dict(beta=1.0, squared=False, mean_offset=0.0), dict(beta=0.3, squared=True, mean_offset=0.5)]
    if not quick:
        variants.append(dict(beta=0.0, squared=False, mean_offset=1e-7))
    for v in variants:
        for red in ("mean", "sum", "none"):
            args = (v["beta"], eps, red, v["squared"], v["mean_offset"])
            mine = emu.rkd_distance_loss(s, t, *args)
            ref = CPU.rkd_distance_loss(s64, t64, *args)
            vt = f"distance_loss {red} {v} {tag}"
            rep.check(vt, mine[0], ref[0], tol, FLOOR[dtype])
            g = upstream(ref[0].shape, loss_dtype(dtype), 4)
            gm = emu.rkd_distance_loss_backward(g, s, t, mine[1], mine[2], *args)
            gr = CPU.rkd_distance_loss_backward(g.double(), s64, t64, ref[1], ref[2], *args, True, True)
            rep.check(vt + " grad student", gm[0], gr[0], tol, FLOOR[dtype])
            rep.check(vt + " grad teacher", gm[1], gr[1], tol, FLOOR[dtype])


def run_angle(emu, rep, n, ds, dt, dtype, kind, quick):
    s = features(n, ds, dtype, 5, kind)
    t = features(n, dt, dtype, 6, kind)
    s64, t64 = s.double(), t.double()
    tag = f"n={n} ds={ds} dt={dt} {str(dtype)[6:]} {kind}"
    eps = 1e-12
    tol = TOL[dtype]
    atol_s = NOISE[dtype] if ds == 1 or n <= 2 else FLOOR[dtype]
    atol_t = NOISE[dtype] if dt == 1 or n <= 2 else FLOOR[dtype]
    for normalize in (True, False) if not quick else (True,):
        mine = emu.angle_tensor(s, eps, normalize)
        ref = CPU.angle_tensor(s64, eps, normalize)
        vt = f"angle_tensor normalize={normalize} {tag}"
        rep.check(vt, mine[0], ref[0], tol, FLOOR[dtype])
        rep.check(vt + " sq", mine[1], ref[1], 1e-12)
        g = upstream((n, n, n), dtype, 7)
        rep.check(vt + " backward", emu.angle_tensor_backward(g, s, mine[1], eps, normalize),
                  CPU.angle_tensor_backward(g.double(), s64, ref[1], eps, normalize), tol, atol_s)
        for beta, red in ((1.0, "mean"), (0.2, "sum"), (1.0, "none")) if not quick else ((1.0, "mean"),):
            mine = emu.rkd_angle_loss(s, t, beta, eps, red, normalize)
            ref = CPU.rkd_angle_loss(s64, t64, beta, eps, red, normalize)
            vt = f"angle_loss {red} beta={beta} normalize={normalize} {tag}"
            rep.check(vt, mine[0], ref[0], tol, FLOOR[dtype])
            g = upstream(ref[0].shape, loss_dtype(dtype), 8)
            gm = emu.rkd_angle_loss_backward(g, s, t, mine[1], mine[2], beta, eps, red, normalize)
            gr = CPU.rkd_angle_loss_backward(g.double(), s64, t64, ref[1], ref[2], beta, eps, red, normalize, True,
                                             True)
            rep.check(vt + " grad student", gm[0], gr[0], tol, atol_s)
            rep.check(vt + " grad teacher", gm[1], gr[1], tol, atol_t)


def determinism(emu, rep):
    s, t = features(70, 9, torch.float32, 9), features(70, 5, torch.float32, 10)
    a = emu.rkd_angle_loss(s, t, 1.0, 1e-12, "mean", True)
    b = emu.rkd_angle_loss(s, t, 1.0, 1e-12, "mean", True)
    ga = emu.rkd_angle_loss_backward(torch.tensor(1.0), s, t, a[1], a[2], 1.0, 1e-12, "mean", True)
    gb = emu.rkd_angle_loss_backward(torch.tensor(1.0), s, t, b[1], b[2], 1.0, 1e-12, "mean", True)
    rep.count += 1
    if not (torch.equal(a[0], b[0]) and torch.equal(ga[0], gb[0])):
        rep.failures += 1
        print("FAIL determinism: repeated calls differ")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and variants")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        emu = Emulated(build(tmp))
        built = time.time()
        rep = Report()
        # Sizes below, at and past the tiles (32 x 64 triplet tiles, 64 x 64 GEMM
        # tiles, 8-row stages), odd everywhere; D = 1 and D = 0; different D for
        # student and teacher.
        dist_cases = [(2, 1, 1), (3, 4, 7), (31, 5, 3), (67, 1, 9), (4, 0, 3), (1, 3, 2), (130, 70, 17)]
        angle_cases = [(3, 1, 4), (5, 3, 3), (31, 7, 2), (6, 0, 2), (1, 2, 3), (2, 3, 1), (70, 65, 9), (130, 5, 8)]
        if args.quick:
            dist_cases, angle_cases = dist_cases[:5], angle_cases[:4]
        dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
        for i, (n, ds, dt) in enumerate(dist_cases):
            for dtype in dtypes:
                run_distance(emu, rep, n, ds, dt, dtype, "random", args.quick)
            run_distance(emu, rep, n, ds, dt, torch.float64, ("offset", "near", "dup")[i % 3], args.quick)
        for i, (n, ds, dt) in enumerate(angle_cases):
            for dtype in dtypes if n <= 31 else (torch.float64, torch.float32):
                run_angle(emu, rep, n, ds, dt, dtype, "random", args.quick)
            if n > 2:
                run_angle(emu, rep, n, ds, dt, torch.float64, ("offset", "near", "dup")[i % 3], args.quick)
        determinism(emu, rep)
    print(f"emulated CUDA kernels vs CPU ops: {rep.count - rep.failures}/{rep.count} checks passed "
          f"(build {built - start:.0f} s, checks {time.time() - built:.0f} s)")
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
