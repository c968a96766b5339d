"""Runs the CUDA build's ops on the host and checks them against the CPU ops.

The op layer (csrc/core) on the GPU backend (csrc/cuda/gpu_backend.cuh), with
the torch-free kernels of csrc/cuda compiled as plain C++ by
csrc/cuda/standalone/emulate.h (each CUDA thread a fiber, __syncthreads() a
switch; csrc/cuda/standalone/emulate_rt.cpp), is built into a small library of
whole ops (csrc/cuda/standalone/entry_points.h): the same sequence of steps,
dtype choices and kernels the CUDA bindings run. This script allocates their
outputs as the bindings do, calls them, and compares every op's outputs and
gradients with torch.ops.rkd_ext on the CPU, for every dtype, on odd sizes and
degenerate data. It needs g++, the CUDA headers and an installed rkd_ext; no
GPU.

The float32 products (rkd_ext.set_product_precision("float32"); on a GPU
also "auto" where float64 is slow) are checked too: with the mode forced
through rkd_set_product_precision, the distance family on random, offset,
near and dup batches against the CPU ops in float64, within
PRODUCT32_RTOL; the angle family bitwise unchanged.

--build detect (the default) runs the detectors of emulate_rt.cpp on every
access of the kernels (racecheck, synccheck, initcheck, memcheck, launch
limits: docs/gpu.md); any finding fails the run. plain, asan and contract are
the other builds (BUILDS). --orders runs the case list once per order of the
blocks and fails unless the outputs agree bitwise. --device runs the same case
list through the compiled extension instead (cuda: on a GPU, as
scripts/gpu_run.sh does under compute-sanitizer; cpu: a rehearsal).

Usage: python scripts/emulate_cuda.py [--quick] [--build B] [--orders O,...] [--device D]
(exit status 1 on a mismatch or a finding; --help for the rest)
"""
import argparse
import ctypes
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

import rkd_ext  # registers torch.ops.rkd_ext
from rkd_ext.testing import EMULATION_NOISE as NOISE
from rkd_ext.testing import KERNEL_FLOOR as FLOOR
from rkd_ext.testing import KERNEL_RTOL as TOL
from rkd_ext.testing import TINY
from rkd_ext.testing import make_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# rkd::Dtype and rkd::Reduction (csrc/core/params.h).
DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
RED_CODE = {"none": 0, "mean": 1, "sum": 2}
KIND_CODE = {"sq": 0, "sq_clamped": 1, "dist": 2}
# rkd::ProductPrecision (csrc/core/product_precision.h).
PRODUCT_CODE = {"auto": 0, "float64": 1, "float32": 2}
CPU = torch.ops.rkd_ext
LOSS_STATS = 4  # csrc/core/distance_op.h's kLossStats
# The distance family with float32 products, relative to the largest element
# of the float64 result: a Gram entry kept from float32 products is within
# ~1e-6 (n_i + n_j) of exact at these sizes (float32 centred operands,
# partial sums of 128 products), and pairs kept by gram_near are at least
# 1e-2 (n_i + n_j), so a kept s is within ~1e-4 of itself relative; the
# gradient's float32 W x X is within ~1e-6 of its largest term. Measured
# over the full case list: the float64 pair matrices within 1.5e-7 of the
# float64 products' (relative to their largest element).
PRODUCT32_RTOL = 3e-5
# Gradients on near batches: a pair 1e-3 apart (relative to the spread) has
# a weight W_ij ~ 1 / d_ij, 1e3 times the others', and its terms
# W_ij xc_i - W_ij xc_j cancel to 1e-3 of themselves, so the float32
# product's rounding of each grows 1e3-fold relative to the result (the
# CPU's float32 product, and the reference's, have the same cancellation).
# Measured worst: about 1e-4.
PRODUCT32_NEAR_GRAD_RTOL = 1e-3


# How the emulator is built. "detect": the kernels instrumented for the
# detectors of csrc/cuda/standalone/emulate_rt.cpp (racecheck, synccheck,
# initcheck, memcheck, launch limits); "plain": not instrumented (no
# detectors, faster); "asan": AddressSanitizer and UndefinedBehaviorSanitizer
# on kernels and runtime (the process must preload their runtimes: main()
# restarts itself so); "contract": floating-point contraction on, with FMA
# instructions, as nvcc compiles device code (-fmad=true).
BUILDS = ("detect", "plain", "asan", "contract")
SANITIZER_RUNTIMES = ("libasan.so", "libubsan.so")


def build(out_dir, variant="detect", source=None, load=True):
    """The emulator library of `variant` (BUILDS) in out_dir, loaded (else its path): the op layer's entry points,
    or the kernels of `source` (a C++ file that includes emulate.h). The asan build loads only into a process
    that preloads the sanitizers' runtimes (main() restarts itself so)."""
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    cxx = os.environ.get("CXX", "g++")
    here = os.path.join(ROOT, "csrc", "cuda", "standalone")
    source = source or os.path.join(here, "emulate.cpp")
    stem = os.path.splitext(os.path.basename(source))[0]
    lib = os.path.join(out_dir, f"{stem}_{variant}.so")
    common = [cxx, "-std=c++17", "-O2", "-fPIC", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas",
              "-Wno-clobbered", f"-I{cuda_home}/include"]
    kernels, runtime, link = [], [], []
    if variant == "detect":
        kernels = ["-fsanitize=thread", "--param", "tsan-instrument-func-entry-exit=0"]
    elif variant == "asan":
        runtime = kernels = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
        link = runtime
    elif variant == "contract":
        kernels = ["-mfma", "-ffp-contract=fast"]
    elif variant != "plain":
        raise ValueError(f"build: variant must be one of {BUILDS}, got {variant!r}")
    objs = [os.path.join(out_dir, f"{name}_{variant}.o") for name in (stem, "emulate_rt")]
    jobs = [subprocess.Popen(common + flags + ["-c", src, "-o", obj])
            for src, flags, obj in ((source, kernels, objs[0]), (os.path.join(here, "emulate_rt.cpp"), runtime, objs[1]))]
    if any(job.wait() != 0 for job in jobs):
        raise RuntimeError(f"build: compiling the {variant} emulator failed")
    subprocess.run([cxx, "-shared", "-Wl,-z,defs", *link, *objs, "-o", lib, "-ldl"], check=True)
    return ctypes.CDLL(lib) if load else lib


def _signatures():
    """Each C function of entry_points.h: its parameters' names, and which are outputs (non-const pointers)."""
    with open(os.path.join(ROOT, "csrc", "cuda", "standalone", "entry_points.h")) as f:
        text = f.read()
    sigs = {}
    for m in re.finditer(r"^void (rkd_\w+)\(([^)]*)\)\s*\{", text, re.M):
        params = [" ".join(p.split()) for p in m.group(2).split(",") if p.strip()]
        sigs[m.group(1)] = [(re.split(r"[\s*]+", p)[-1], "*" in p and not p.startswith("const ")) for p in params]
    return sigs


# Bytes of the tensors whose pointers _p handed out, by address.
_SIZES = {}


class Findings(Exception):
    """What the detectors found in one call (stop_on_findings)."""


class _Tracked:
    """The library, each op call framed for the detectors: its tensor arguments registered as device memory
    (named after the parameters of entry_points.h; outputs uninitialised), the findings taken after it, and a
    digest of every argument's bytes after the call kept (the bitwise comparison of block orders)."""

    def __init__(self, lib, owner):
        self._lib, self._owner, self._sigs = lib, owner, _signatures()
        for fn in ("rkd_emu_finding_count", "rkd_emu_take_findings", "rkd_emu_barrier_sites", "rkd_emu_launched"):
            getattr(lib, fn).restype = ctypes.c_int64
        lib.rkd_emu_detecting.restype = ctypes.c_int

    def __getattr__(self, name):
        fn = getattr(self._lib, name)
        if name not in self._sigs:
            return fn
        sig, owner, lib = self._sigs[name], self._owner, self._lib

        def call(*args):
            tracked = []
            for (param, output), a in zip(sig, args):
                if isinstance(a, ctypes.c_void_p) and a.value and a.value in _SIZES:
                    lib.rkd_emu_track(a, ctypes.c_int64(_SIZES[a.value]), f"argument {param} of {name}".encode(),
                                      int(output))
                    tracked.append(a)
            try:
                fn(*args)
            finally:
                for a in tracked:
                    lib.rkd_emu_untrack(a)
            for a in tracked:
                owner.digest.update(ctypes.string_at(a.value, _SIZES[a.value]))
            owner.take_findings(name)
        return call


def text_of(fn):
    """The text an emulator function fn(buf, cap) writes: asked its length first (cap 0), then taken."""
    need = fn(None, 0)
    buf = ctypes.create_string_buffer(need + 1)
    fn(buf, need + 1)
    return buf.value.decode()


def sanitizer_preload():
    """LD_PRELOAD for a process that loads the asan build: the sanitizers' runtimes of the compiler."""
    cxx = os.environ.get("CXX", "g++")
    return ":".join(subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True,
                                   check=True).stdout.strip() for name in SANITIZER_RUNTIMES)


def _p(t):
    if t is None or not t.numel():
        return ctypes.c_void_p(0)
    _SIZES[t.data_ptr()] = t.numel() * t.element_size()
    return ctypes.c_void_p(t.data_ptr())




def _i(n):
    return ctypes.c_int64(n)


def _f(v):
    return ctypes.c_double(v)


def _loss_dtype(*xs):
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


class Emulated:
    """The CUDA ops with the signatures of torch.ops.rkd_ext, on host tensors."""

    def __init__(self, lib, stop_on_findings=False):
        self.lib = _Tracked(lib, self)
        self.digest = hashlib.sha256()
        self.findings = []
        self.stop_on_findings = stop_on_findings
        for fn in ("rkd_distance_matrix", "rkd_distance_matrix_backward", "rkd_distance_loss_c",
                   "rkd_distance_loss_backward_c", "rkd_angle_tensor_c", "rkd_angle_tensor_backward_c",
                   "rkd_angle_loss_c", "rkd_angle_loss_backward_c", "rkd_loss_c", "rkd_loss_backward_c",
                   "rkd_pair_matrix_rows_c",
                   "rkd_pair_matrix_rows_backward_c", "rkd_grad_rows_c", "rkd_angle_loss_rows_c",
                   "rkd_angle_grad_rows_c", "rkd_set_product_precision"):
            getattr(lib, fn).restype = None

    def take_findings(self, op):
        """The detectors' findings in the last call, kept in self.findings (raised with stop_on_findings)."""
        lib = self.lib._lib
        if not lib.rkd_emu_finding_count():
            return
        new = [f"{op}: {line}" for line in text_of(lib.rkd_emu_take_findings).splitlines()]
        self.findings += new
        if self.stop_on_findings and new:
            raise Findings("\n".join(new))

    def barrier_sites(self):
        """{"file:line": times executed} of every __syncthreads() call site run so far."""
        text = text_of(self.lib._lib.rkd_emu_barrier_sites)
        return {site: int(n) for site, n in (line.split() for line in text.splitlines())}

    def launched(self):
        """{mangled kernel name: {"block": [x, y, z], "launches": n}} of every kernel launched so far."""
        out = {}
        for line in text_of(self.lib._lib.rkd_emu_launched).splitlines():
            name, x, y, z, n = line.split()
            out[name] = {"block": [int(x), int(y), int(z)], "launches": int(n)}
        return out

    def set_block_order(self, order):
        """"forward", "reverse" or "shuffle:SEED": the order the blocks of every launch run in."""
        mode, _, seed = order.partition(":")
        code = {"forward": 0, "reverse": 1, "shuffle": 2}[mode]
        self.lib._lib.rkd_emu_set_block_order(code, ctypes.c_uint64(int(seed or 0)))

    def skip_barrier(self, site):
        """Make the __syncthreads() at "file:line" a no-op ("" restores it)."""
        self.lib._lib.rkd_emu_skip_barrier(site.encode())

    def set_product_precision(self, mode, fp64_ratio=2):
        """The product precision of the op calls that follow, on an emulated GPU with this float64 ratio."""
        self.lib.rkd_set_product_precision(PRODUCT_CODE[mode], fp64_ratio)

    def _matrix(self, normalized, x, eps):
        x = x.contiguous()
        n, d = x.shape
        out, d64 = torch.empty(n, n, dtype=x.dtype), torch.empty(n, n, dtype=torch.float64)
        self.lib.rkd_distance_matrix(int(normalized), DTYPE_CODE[x.dtype], _p(x), _i(n), _i(d), _f(eps), _p(d64),
                                     _p(out))
        return out, d64

    def _matrix_backward(self, normalized, grad, x, d64, eps):
        x, grad = x.contiguous(), grad.contiguous()
        dx = torch.empty_like(x)
        self.lib.rkd_distance_matrix_backward(int(normalized), DTYPE_CODE[grad.dtype], _p(grad), DTYPE_CODE[x.dtype],
                                              _p(x), _i(x.shape[0]), _i(x.shape[1]), _p(d64), _f(eps), _p(dx))
        return dx

    def pairwise_distance(self, x, eps):
        return self._matrix(False, x, eps)

    def normalized_distance(self, x, eps):
        return self._matrix(True, x, eps)

    def pairwise_distance_backward(self, grad, x, d64, eps):
        return self._matrix_backward(False, grad, x, d64, eps)

    def normalized_distance_backward(self, grad, x, d64, eps):
        return self._matrix_backward(True, grad, x, d64, eps)

    @staticmethod
    def _pair_args(s, t):
        s, t = s.contiguous(), t.contiguous()
        return (s, t), (DTYPE_CODE[s.dtype], _p(s), DTYPE_CODE[t.dtype], _p(t), _i(s.shape[0]), _i(s.shape[1]),
                        _i(t.shape[1]))

    @staticmethod
    def _grads(s, t, student_grad, teacher_grad):
        return (torch.empty_like(s) if student_grad else torch.empty(0, dtype=s.dtype),
                torch.empty_like(t) if teacher_grad else torch.empty(0, dtype=t.dtype))

    def rkd_distance_loss(self, s, t, beta, eps, reduction, squared, mean_offset):
        (s, t), pair = self._pair_args(s, t)
        n = s.shape[0]
        dtype = _loss_dtype(s, t)
        loss = torch.empty((n, n) if reduction == "none" else (), dtype=dtype)
        ds, dt = torch.empty(n, n, dtype=torch.float64), torch.empty(n, n, dtype=torch.float64)
        stats = torch.empty(LOSS_STATS, dtype=torch.float64)
        self.lib.rkd_distance_loss_c(*pair, _f(beta), _f(eps), RED_CODE[reduction], int(squared), _f(mean_offset),
                                     _p(ds), _p(dt), _p(stats), DTYPE_CODE[dtype], _p(loss))
        return loss, ds, dt, stats

    def rkd_distance_loss_backward(self, grad, s, t, ds, dt, stats, beta, eps, reduction, squared, mean_offset,
                                   student_grad, teacher_grad):
        (s, t), pair = self._pair_args(s, t)
        grad = grad.contiguous()
        gs, gt = self._grads(s, t, student_grad, teacher_grad)
        self.lib.rkd_distance_loss_backward_c(DTYPE_CODE[grad.dtype], _p(grad), *pair, _p(ds), _p(dt), _p(stats),
                                              _f(beta),
                                              _f(eps), RED_CODE[reduction], int(squared), _f(mean_offset), _p(gs),
                                              _p(gt))
        return gs, gt

    def angle_tensor(self, x, eps, normalize):
        x = x.contiguous()
        n, d = x.shape
        out, sq = torch.empty(n, n, n, dtype=x.dtype), torch.empty(n, n, dtype=torch.float64)
        self.lib.rkd_angle_tensor_c(DTYPE_CODE[x.dtype], _p(x), _i(n), _i(d), _f(eps), int(normalize), _p(sq),
                                    _p(out))
        return out, sq

    def angle_tensor_backward(self, grad, x, sq, eps, normalize):
        x, grad = x.contiguous(), grad.contiguous()
        dx = torch.empty_like(x)
        self.lib.rkd_angle_tensor_backward_c(DTYPE_CODE[grad.dtype], _p(grad), DTYPE_CODE[x.dtype], _p(x),
                                             _i(x.shape[0]), _i(x.shape[1]), _p(sq), _f(eps), int(normalize), _p(dx))
        return dx

    def rkd_angle_loss(self, s, t, beta, eps, reduction, normalize):
        (s, t), pair = self._pair_args(s, t)
        n = s.shape[0]
        dtype = _loss_dtype(s, t)
        loss = torch.empty((n, n, n) if reduction == "none" else (), dtype=dtype)
        sq_s, sq_t = torch.empty(n, n, dtype=torch.float64), torch.empty(n, n, dtype=torch.float64)
        self.lib.rkd_angle_loss_c(*pair, _f(beta), _f(eps), RED_CODE[reduction], int(normalize), _p(sq_s), _p(sq_t),
                                  DTYPE_CODE[dtype], _p(loss))
        return loss, sq_s, sq_t

    def rkd_angle_loss_backward(self, grad, s, t, sq_s, sq_t, beta, eps, reduction, normalize, student_grad,
                                teacher_grad):
        (s, t), pair = self._pair_args(s, t)
        grad = grad.contiguous()
        gs, gt = self._grads(s, t, student_grad, teacher_grad)
        self.lib.rkd_angle_loss_backward_c(DTYPE_CODE[grad.dtype], _p(grad), *pair, _p(sq_s), _p(sq_t), _f(beta),
                                           _f(eps), RED_CODE[reduction], int(normalize),
                                           DTYPE_CODE[_loss_dtype(s, t)], _p(gs), _p(gt))
        return gs, gt

    def rkd_loss(self, s, t, distance_weight, angle_weight, beta, eps, angle_eps, reduction, squared, mean_offset,
                 normalize):
        (s, t), pair = self._pair_args(s, t)
        n = s.shape[0]
        dtype = _loss_dtype(s, t)
        loss = torch.empty((), dtype=dtype)
        sq_s, sq_t = torch.empty(n, n, dtype=torch.float64), torch.empty(n, n, dtype=torch.float64)
        stats = torch.empty(LOSS_STATS, dtype=torch.float64)
        self.lib.rkd_loss_c(*pair, _f(distance_weight), _f(angle_weight), _f(beta), _f(eps), _f(angle_eps),
                            RED_CODE[reduction], int(squared), _f(mean_offset), int(normalize), _p(sq_s), _p(sq_t),
                            _p(stats), DTYPE_CODE[dtype], _p(loss))
        return loss, sq_s, sq_t, stats

    def rkd_loss_backward(self, grad, s, t, sq_s, sq_t, stats, distance_weight, angle_weight, beta, eps, angle_eps,
                          reduction, squared, mean_offset, normalize, student_grad, teacher_grad):
        (s, t), pair = self._pair_args(s, t)
        grad = grad.contiguous()
        gs, gt = self._grads(s, t, student_grad, teacher_grad)
        self.lib.rkd_loss_backward_c(DTYPE_CODE[grad.dtype], _p(grad), *pair, _p(sq_s), _p(sq_t), _p(stats),
                                     _f(distance_weight), _f(angle_weight), _f(beta), _f(eps), _f(angle_eps),
                                     RED_CODE[reduction], int(squared), _f(mean_offset), int(normalize),
                                     DTYPE_CODE[_loss_dtype(s, t)], _p(gs), _p(gt))
        return gs, gt

    # ---- rows of the global batch ----

    def pair_matrix_rows(self, x, begin, end, kind, eps):
        x = x.contiguous()
        out = torch.empty(end - begin, x.shape[0], dtype=torch.float64)
        self.lib.rkd_pair_matrix_rows_c(DTYPE_CODE[x.dtype], _p(x), _i(x.shape[0]), _i(x.shape[1]), _i(begin), _i(end),
                                        KIND_CODE[kind], _f(eps), _p(out))
        return out

    def pair_matrix_rows_backward(self, grad, x, values, begin, kind, eps):
        x, grad = x.contiguous(), grad.contiguous()
        dx = torch.empty(values.shape[0], x.shape[1], dtype=x.dtype)
        self.lib.rkd_pair_matrix_rows_backward_c(DTYPE_CODE[grad.dtype], _p(grad), DTYPE_CODE[x.dtype], _p(x),
                                                 _i(x.shape[0]), _i(x.shape[1]), _p(values), _i(begin),
                                                 _i(begin + values.shape[0]), KIND_CODE[kind], _f(eps), _p(dx))
        return dx

    def grad_rows(self, x, W, begin):
        x = x.contiguous()
        dx = torch.empty(W.shape[0], x.shape[1], dtype=x.dtype)
        self.lib.rkd_grad_rows_c(DTYPE_CODE[x.dtype], _p(x), _i(x.shape[0]), _i(x.shape[1]), _p(W), _i(begin),
                                 _i(begin + W.shape[0]), _p(dx))
        return dx

    def angle_loss_rows(self, sq_s, sq_t, begin, end, beta, eps, normalize, wide):
        out = torch.empty((), dtype=torch.float64)
        self.lib.rkd_angle_loss_rows_c(_p(sq_s), _p(sq_t), _i(sq_s.shape[0]), _i(begin), _i(end), _f(beta), _f(eps),
                                       int(normalize), int(wide), _p(out))
        return out

    def angle_grad_rows(self, sq_a, sq_b, coef, begin, end, beta, eps, normalize, wide):
        n = sq_a.shape[0]
        V, R = torch.empty(end - begin, n, dtype=torch.float64), torch.empty(n, n, dtype=torch.float64)
        self.lib.rkd_angle_grad_rows_c(_p(sq_a), _p(sq_b), _p(coef), _i(n), _i(begin), _i(end), _f(beta), _f(eps),
                                       int(normalize), int(wide), _p(V), _p(R))
        return V, R


class TorchOps:
    """torch.ops.rkd_ext on a device with Emulated's interface: the same case list run by the compiled
    extension (on a GPU: under compute-sanitizer by scripts/gpu_run.sh; on the CPU: a rehearsal of that run).
    Tensor arguments go to the device, results come back to the CPU. The cases' "auto" is an H200's (float64
    products), which a GPU with fast float64 also picks; the CPU's own "auto" takes float32 products, so there
    it is asked for float64."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.findings = []
        self.digest = hashlib.sha256()
        self.set_product_precision("auto")

    def set_product_precision(self, mode, fp64_ratio=2):
        rkd_ext.set_product_precision("float64" if mode == "auto" and self.device.type == "cpu" else mode)

    def __getattr__(self, name):
        op = getattr(torch.ops.rkd_ext, name)

        def call(*args):
            out = op(*(a.to(self.device) if isinstance(a, torch.Tensor) else a for a in args))
            return tuple(o.cpu() for o in out) if isinstance(out, (tuple, list)) else out.cpu()
        return call


# ---- comparisons --------------------------------------------------------------------

def features(n, d, dtype, seed, kind="random"):
    if kind == "far":
        # Mean 1e4 x the spread: only centring keeps the float32 products' digits (without it the W x X
        # product of the gradient is off by ~1e-3 relative; with it, ~1e-7).
        return (make_features(n, d, dtype=torch.float64, seed=seed) + 1e4).to(dtype)
    return make_features(n, d, dtype=dtype, seed=seed, kind=kind)


def upstream(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


# The oracle is the CPU op run in float64 on the same input values (exact
# upcasts) and the same upstream gradients; the bounds (rkd_ext.testing) are
# relative to its largest element.


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


def check_grads(rep, what, wanted, mine, ref, tol, atol_s, atol_t):
    """The gradients a loss backward op was asked for, and empty tensors for the others."""
    for side, want, m, r, atol in (("student", wanted[0], mine[0], ref[0], atol_s),
                                   ("teacher", wanted[1], mine[1], ref[1], atol_t)):
        if want:
            rep.check(f"{what} grad {side}", m, r, tol, atol)
        else:
            rep.check(f"{what} grad {side} (not wanted)", m, torch.empty(0), 0.0)


def run_distance(emu, rep, n, ds, dt, dtype, kind, quick):
    s = features(n, ds, dtype, 1, kind)
    t = features(n, dt, dtype, 2, kind)
    s64, t64 = s.double(), t.double()
    tol = TOL[dtype]
    tag = f"n={n} ds={ds} dt={dt} {str(dtype)[6:]} {kind}"
    eps = 1e-12
    for op in ("pairwise_distance", "normalized_distance"):
        mine = getattr(emu, op)(s, eps)
        ref = getattr(CPU, op)(s64, eps)
        rep.check(f"{op} {tag}", mine[0], ref[0], tol, FLOOR[dtype])
        rep.check(f"{op} dist64 {tag}", mine[1], ref[1], 1e-12)
        g = upstream((n, n), dtype, 3)
        # With N = 2 the normalised distances are 1 whatever x: the exact gradient is 0, and each backend's is
        # its rounding noise (with contraction, as nvcc compiles, not exactly 0).
        atol = NOISE[dtype] if n == 2 and op == "normalized_distance" else FLOOR[dtype]
        rep.check(f"{op}_backward {tag}", getattr(emu, op + "_backward")(g, s, mine[1], eps),
                  getattr(CPU, op + "_backward")(g.double(), s64, ref[1], eps), tol, atol)

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
            gr = CPU.rkd_distance_loss_backward(g.double(), s64, t64, ref[1], ref[2], ref[3], *args, True, True)
            # With N = 2 both normalised distances are 1 (a mean offset aside):
            # the exact gradient is 0, and each backend's is its rounding noise.
            atol = NOISE[dtype] if n == 2 else FLOOR[dtype]
            for wanted in ((True, True), (False, True)) if red == "mean" else ((True, True),):
                gm = emu.rkd_distance_loss_backward(g, s, t, mine[1], mine[2], mine[3], *args, *wanted)
                check_grads(rep, vt, wanted, gm, gr, tol, atol, atol)


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
            gr = CPU.rkd_angle_loss_backward(g.double(), s64, t64, ref[1], ref[2], beta, eps, red, normalize, True,
                                             True)
            for wanted in ((True, True), (True, False)) if red == "mean" else ((True, True),):
                gm = emu.rkd_angle_loss_backward(g, s, t, mine[1], mine[2], beta, eps, red, normalize, *wanted)
                check_grads(rep, vt, wanted, gm, gr, tol, atol_s, atol_t)


# rkd_loss variants: (distance_weight, angle_weight, beta, eps, angle_eps, reduction, squared, mean_offset,
# normalize); a weight of 0 skips a term (and, for the angle term, the float64 products).
RKD_LOSS_VARIANTS = [
    (25.0, 50.0, 1.0, 1e-12, 1e-12, "mean", False, 0.0, True),
    (0.5, 0.5, 0.3, 1e-10, 1e-12, "sum", True, 1e-7, False),
    (25.0, 0.0, 1.0, 1e-12, 1e-12, "mean", False, 0.0, True),
    (0.0, 50.0, 0.2, 1e-12, 1e-12, "sum", False, 0.0, True),
]


def run_rkd_loss(emu, rep, n, ds, dt, dtype, kind, quick):
    """rkd_loss forward and backward, every one-sided gradient included, against the CPU op in float64."""
    s = features(n, ds, dtype, 15, kind)
    t = features(n, dt, dtype, 16, kind)
    s64, t64 = s.double(), t.double()
    tag = f"n={n} ds={ds} dt={dt} {str(dtype)[6:]} {kind}"
    tol = TOL[dtype]
    # As for each term alone: with N = 2 (no triplets; normalised distances 1) or D = 1 (collinear
    # triplets) the exact gradient cancels to 0, and rounding noise is left.
    atol_s = NOISE[dtype] if ds == 1 or n <= 2 else FLOOR[dtype]
    atol_t = NOISE[dtype] if dt == 1 or n <= 2 else FLOOR[dtype]
    for args in RKD_LOSS_VARIANTS[:2] if quick else RKD_LOSS_VARIANTS:
        vt = f"rkd_loss {args} {tag}"
        mine = emu.rkd_loss(s, t, *args)
        ref = CPU.rkd_loss(s64, t64, *args)
        rep.check(vt, mine[0], ref[0], tol, FLOOR[dtype])
        rep.check(vt + " sq", mine[1], ref[1], 1e-12)
        g = upstream((), loss_dtype(dtype), 17)
        gr = CPU.rkd_loss_backward(g.double(), s64, t64, ref[1], ref[2], ref[3], *args, True, True)
        for wanted in ((True, True), (True, False), (False, True)):
            gm = emu.rkd_loss_backward(g, s, t, mine[1], mine[2], mine[3], *args, *wanted)
            check_grads(rep, vt, wanted, gm, gr, tol, atol_s, atol_t)


def run_rows(emu, rep, n, d, dtype, parts):
    """The row-range ops over the blocks `parts` of the rows, against the CPU ops on the same blocks."""
    x = features(n, d, dtype, 11, "random")
    y = features(n, d + 2, dtype, 12, "random")
    eps = 1e-12
    tag = f"n={n} d={d} {str(dtype)[6:]}"
    tol = TOL[dtype]
    wide = dtype == torch.float64
    sq_s = CPU.pair_matrix_rows(x.double(), 0, n, "sq", eps)
    sq_t = CPU.pair_matrix_rows(y.double(), 0, n, "sq", eps)
    coef = torch.tensor(0.37, dtype=torch.float64)
    full = {"dist": emu.pairwise_distance(x, eps)[1], "sq": emu.angle_tensor(x, eps, True)[1]}
    for b, e in parts:
        for kind in ("sq", "sq_clamped", "dist"):
            mine = emu.pair_matrix_rows(x, b, e, kind, eps)
            rep.check(f"pair_matrix_rows {kind} [{b}, {e}) {tag}", mine, CPU.pair_matrix_rows(x.double(), b, e, kind, eps),
                      1e-12)
            if kind in full and (b, e) == (0, n):  # all rows: the whole matrix's launches, its bits
                rep.count += 1
                if not torch.equal(mine, full[kind]):
                    rep.failures += 1
                    print(f"FAIL pair_matrix_rows {kind} [0, {n}) {tag}: not the whole matrix's bits")
            g = upstream(mine.shape, torch.float64, 13)
            rep.check(f"pair_matrix_rows_backward {kind} [{b}, {e}) {tag}",
                      emu.pair_matrix_rows_backward(g, x, mine, b, kind, eps),
                      CPU.pair_matrix_rows_backward(g, x.double(), mine, b, kind, eps), tol, FLOOR[dtype])
        W = upstream((e - b, n), torch.float64, 14)
        rep.check(f"grad_rows [{b}, {e}) {tag}", emu.grad_rows(x, W, b), CPU.grad_rows(x.double(), W, b), tol,
                  FLOOR[dtype])
        for normalize in (True, False):
            vt = f"[{b}, {e}) normalize={normalize} {tag}"
            rep.check(f"angle_loss_rows {vt}", emu.angle_loss_rows(sq_s, sq_t, b, e, 0.7, eps, normalize, wide),
                      CPU.angle_loss_rows(sq_s, sq_t, b, e, 0.7, eps, normalize, True), tol)
            mine = emu.angle_grad_rows(sq_s, sq_t, coef, b, e, 0.7, eps, normalize, wide)
            ref = CPU.angle_grad_rows(sq_s, sq_t, coef, b, e, 0.7, eps, normalize, True)
            rep.check(f"angle_grad_rows V {vt}", mine[0], ref[0], tol, FLOOR[dtype])
            rep.check(f"angle_grad_rows R {vt}", mine[1], ref[1], tol, FLOOR[dtype])


def run_wide(emu, rep, n, d):
    """The pair matrix past one block of columns (gram_finish_kernel's kBlock = 256), near pairs in each."""
    x = features(n, d, torch.float64, 41, "near")
    for op in ("pairwise_distance", "normalized_distance"):
        mine = getattr(emu, op)(x, 1e-12)
        rep.check(f"{op} n={n} d={d} float64 near", mine[1], getattr(CPU, op)(x, 1e-12)[1], 1e-12)


def run_all_near(emu, rep, n, d):
    """Batches with more close pairs per row than gram_finish_kernel recomputes block-wide (kBlockNear = 16:
    the rest each on its own thread): all rows one row (exact duplicates: exactly the clamp), two clusters
    1e-6 wide about two points far apart (n / 2 - 1 close pairs per row, none zero), and NaN in every row."""
    base = features(2, d, torch.float64, 43)
    clusters = base[torch.arange(n) % 2] + 1e-6 * features(n, d, torch.float64, 44)
    nan = features(n, d, torch.float64, 45)
    nan[:, d // 2] = float("nan")
    for tag, x in (("duplicates", base[:1].repeat(n, 1)), ("clusters", clusters + 1e3), ("nan", nan)):
        for dtype in (torch.float64, torch.float32):
            xt = x.to(dtype)
            for op in ("pairwise_distance", "normalized_distance"):
                mine = getattr(emu, op)(xt, 1e-12)[1]
                rep.check(f"{op} n={n} d={d} {dtype} all near: {tag}", mine, getattr(CPU, op)(xt.double(), 1e-12)[1],
                          1e-12 if dtype == torch.float64 else 1e-6)
            if tag == "duplicates":
                off = ~torch.eye(n, dtype=torch.bool)
                d_ = emu.pairwise_distance(xt, 1e-12)[1]
                if not bool((d_[off] == math.sqrt(1e-12)).all()):
                    rep.failures += 1
                    print(f"FAIL all near: duplicates not at sqrt(eps) exactly ({dtype})")


def determinism(emu, rep):
    s, t = features(70, 9, torch.float32, 9), features(70, 5, torch.float32, 10)
    a = emu.rkd_angle_loss(s, t, 1.0, 1e-12, "mean", True)
    b = emu.rkd_angle_loss(s, t, 1.0, 1e-12, "mean", True)
    ga = emu.rkd_angle_loss_backward(torch.tensor(1.0), s, t, a[1], a[2], 1.0, 1e-12, "mean", True, True, True)
    gb = emu.rkd_angle_loss_backward(torch.tensor(1.0), s, t, b[1], b[2], 1.0, 1e-12, "mean", True, True, True)
    rep.count += 1
    if not (torch.equal(a[0], b[0]) and torch.equal(ga[0], gb[0])):
        rep.failures += 1
        print("FAIL determinism: repeated calls differ")


def run_products32(emu, rep, n, ds, dt, dtype, kind):
    """The distance family with float32 products against the CPU ops in float64; exact zeros and symmetry."""
    s = features(n, ds, dtype, 21, kind)
    t = features(n, dt, dtype, 22, kind)
    s64, t64 = s.double(), t.double()
    tag = f"float32 products n={n} ds={ds} dt={dt} {str(dtype)[6:]} {kind}"
    eps = 1e-12
    tol = max(PRODUCT32_RTOL, TOL[dtype])
    gtol = max(PRODUCT32_NEAR_GRAD_RTOL, tol) if kind == "near" else tol
    # Features of width 0 have every distance 0: a loss's exact gradient cancels to 0, rounding noise is left.
    gatol = NOISE[dtype] if min(ds, dt) == 0 else FLOOR[dtype]
    # On an emulated GPU with slow float64 (fp64 at 1/64), where float32 products are chosen: its
    # reductions take one block only up to N = 16 (common.cuh's kSeqMaxNSlowFp64).
    emu.set_product_precision("float32", 64)
    try:
        for op in ("pairwise_distance", "normalized_distance"):
            mine = getattr(emu, op)(s, eps)
            ref = getattr(CPU, op)(s64, eps)
            rep.check(f"{op} {tag}", mine[0], ref[0], tol, FLOOR[dtype])
            d = mine[1]
            rep.check(f"{op} dist64 {tag}", d, ref[1], PRODUCT32_RTOL)
            rep.count += 1
            same = (s.unsqueeze(0) == s.unsqueeze(1)).all(-1) & ~torch.eye(n, dtype=torch.bool)
            if not (torch.equal(d, d.t()) and bool((d[same] == math.sqrt(eps)).all()) and bool((d.diagonal() == 0).all())):
                rep.failures += 1
                print(f"FAIL {op} {tag}: not exactly symmetric, or duplicates not at sqrt(eps), or diagonal not 0")
            g = upstream((n, n), dtype, 23)
            rep.check(f"{op}_backward {tag}", getattr(emu, op + "_backward")(g, s, d, eps),
                      getattr(CPU, op + "_backward")(g.double(), s64, ref[1], eps), gtol, FLOOR[dtype])
        # Rows of the pair matrix (the sharded global batch): the same float32 products for the distance
        # kinds, float64 for the angle family's squared distances; all rows are the whole matrix's bits.
        full = emu.pairwise_distance(s, eps)[1]
        same = (s.unsqueeze(0) == s.unsqueeze(1)).all(-1) & ~torch.eye(n, dtype=torch.bool)
        for b, e in sorted({(0, n), (n // 3, n), (1, max(1, n - 1))}):
            for kind in ("dist", "sq_clamped", "sq"):
                vt = f"pair_matrix_rows {kind} [{b}, {e}) {tag}"
                mine = emu.pair_matrix_rows(s, b, e, kind, eps)
                rep.check(vt, mine, CPU.pair_matrix_rows(s64, b, e, kind, eps), PRODUCT32_RTOL if kind != "sq" else 1e-12)
                rep.count += 1
                rows = torch.arange(e - b)
                zero = mine[rows, rows + b] == 0
                dup = mine[same[b:e]] == (math.sqrt(eps) if kind == "dist" else eps if kind == "sq_clamped" else 0.0)
                if not (bool(zero.all()) and bool(dup.all()) and (kind != "dist" or (b, e) != (0, n) or
                                                                   torch.equal(mine, full))):
                    rep.failures += 1
                    print(f"FAIL {vt}: diagonal not 0, duplicates not exact, or all rows not the whole matrix's bits")
                g = upstream(mine.shape, torch.float64, 26)
                rep.check(f"pair_matrix_rows_backward {kind} [{b}, {e}) {tag}",
                          emu.pair_matrix_rows_backward(g, s, mine, b, kind, eps),
                          CPU.pair_matrix_rows_backward(g, s64, mine.clone(), b, kind, eps), gtol, FLOOR[dtype])
        for squared in (False, True):
            args = (1.0, eps, "mean", squared, 0.0)
            mine = emu.rkd_distance_loss(s, t, *args)
            ref = CPU.rkd_distance_loss(s64, t64, *args)
            vt = f"distance_loss squared={squared} {tag}"
            rep.check(vt, mine[0], ref[0], tol, FLOOR[dtype])
            g = upstream((), loss_dtype(dtype), 24)
            gr = CPU.rkd_distance_loss_backward(g.double(), s64, t64, ref[1], ref[2], ref[3], *args, True, True)
            gm = emu.rkd_distance_loss_backward(g, s, t, mine[1], mine[2], mine[3], *args, True, True)
            check_grads(rep, vt, (True, True), gm, gr, gtol, gatol, gatol)
        # rkd_loss without its angle term takes the float32 products; with it, float64 (bitwise as in
        # float64 mode: the float32 triplet arithmetic is judged by the cases above).
        for args in ((25.0, 0.0, 1.0, eps, eps, "mean", False, 0.0, True), RKD_LOSS_VARIANTS[0]):
            vt = f"rkd_loss {args[:2]} {tag}"
            mine = emu.rkd_loss(s, t, *args)
            g = upstream((), loss_dtype(dtype), 25)
            gm = emu.rkd_loss_backward(g, s, t, mine[1], mine[2], mine[3], *args, True, True)
            if args[1] == 0.0:
                ref = CPU.rkd_loss(s64, t64, *args)
                rep.check(vt, mine[0], ref[0], tol, FLOOR[dtype])
                gr = CPU.rkd_loss_backward(g.double(), s64, t64, ref[1], ref[2], ref[3], *args, True, True)
                check_grads(rep, vt, (True, True), gm, gr, gtol, gatol, gatol)
            elif n >= 3:  # below, rkd_loss has no angle term
                emu.set_product_precision("float64")
                base = emu.rkd_loss(s, t, *args)
                gb = emu.rkd_loss_backward(g, s, t, base[1], base[2], base[3], *args, True, True)
                emu.set_product_precision("float32")
                rep.count += 1
                if not (torch.equal(mine[0], base[0]) and torch.equal(gm[0], gb[0]) and torch.equal(gm[1], gb[1])):
                    rep.failures += 1
                    print(f"FAIL {vt}: the angle term's float64 products changed with the mode")
        # Bitwise reproducible.
        a = emu.rkd_distance_loss(s, t, 1.0, eps, "mean", False, 0.0)
        b = emu.rkd_distance_loss(s, t, 1.0, eps, "mean", False, 0.0)
        one = torch.ones((), dtype=loss_dtype(dtype))
        ga = emu.rkd_distance_loss_backward(one, s, t, a[1], a[2], a[3], 1.0, eps, "mean", False, 0.0, True, True)
        gb = emu.rkd_distance_loss_backward(one, s, t, b[1], b[2], b[3], 1.0, eps, "mean", False, 0.0, True, True)
        rep.count += 1
        if not (torch.equal(a[1], b[1]) and torch.equal(ga[0], gb[0])):
            rep.failures += 1
            print(f"FAIL determinism {tag}: repeated calls differ")
    finally:
        emu.set_product_precision("auto")


def product_modes(emu, rep):
    """"auto" follows the emulated GPU's float64 ratio; float64 features never take float32 products."""
    s, t = features(40, 300, torch.float32, 31), features(40, 70, torch.float32, 32)
    args = (1.0, 1e-12, "mean", False, 0.0)
    results = {}
    for mode, ratio in (("float64", 2), ("auto", 2), ("float32", 2), ("auto", 64), ("auto", 8), ("auto", 4)):
        emu.set_product_precision(mode, ratio)
        results[(mode, ratio)] = emu.rkd_distance_loss(s, t, *args)[1]
    emu.set_product_precision("float32")
    f64_in = emu.rkd_distance_loss(s.double(), t.double(), *args)[1]
    emu.set_product_precision("float64")
    f64_ref = emu.rkd_distance_loss(s.double(), t.double(), *args)[1]
    emu.set_product_precision("auto")
    eq = torch.equal
    expect = [eq(results[("auto", 2)], results[("float64", 2)]), eq(results[("auto", 4)], results[("float64", 2)]),
              eq(results[("auto", 64)], results[("float32", 2)]), eq(results[("auto", 8)], results[("float32", 2)]),
              not eq(results[("float32", 2)], results[("float64", 2)]), eq(f64_in, f64_ref)]
    rep.count += 1
    if not all(expect):
        rep.failures += 1
        print(f"FAIL product modes: {expect}")


def cases(quick, emulated=True):
    """The case list: (label, run(emu, rep)) for every op against the CPU ops (fewer sizes and variants with
    quick; without the emulator-only check of "auto" against emulated float64 rates unless emulated)."""
    items = []

    def add(label, fn, *args):
        items.append((label, lambda emu, rep: fn(emu, rep, *args)))

    # Sizes below, at and past the tiles (32 x 64 triplet tiles, 64 x 64 GEMM
    # tiles, 8-row stages), odd everywhere; D = 1 and D = 0; different D for
    # student and teacher.
    dist_cases = [(2, 1, 1), (3, 4, 7), (31, 5, 3), (67, 1, 9), (4, 0, 3), (1, 3, 2), (130, 70, 17)]
    angle_cases = [(3, 1, 4), (5, 3, 3), (31, 7, 2), (6, 0, 2), (1, 2, 3), (2, 3, 1), (70, 65, 9), (130, 5, 8)]
    if quick:
        dist_cases, angle_cases = dist_cases[:5], angle_cases[:4]
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    for i, (n, ds, dt) in enumerate(dist_cases):
        for dtype in dtypes:
            add(f"distance n={n} {dtype}", run_distance, n, ds, dt, dtype, "random", quick)
        add(f"distance n={n} float64", run_distance, n, ds, dt, torch.float64, ("offset", "near", "dup")[i % 3],
            quick)
    if not quick:  # past N = 512 the W x X product splits its reduction over the samples
        add("distance n=520", run_distance, 520, 3, 2, torch.float32, "offset", quick)
    for i, (n, ds, dt) in enumerate(angle_cases):
        for dtype in dtypes if n <= 31 else (torch.float64, torch.float32):
            add(f"angle n={n} {dtype}", run_angle, n, ds, dt, dtype, "random", quick)
        if n > 2:
            add(f"angle n={n} float64", run_angle, n, ds, dt, torch.float64, ("offset", "near", "dup")[i % 3], quick)
    loss_cases = [(2, 1, 3), (3, 4, 7), (31, 5, 3), (6, 0, 2), (1, 2, 3), (70, 65, 9)]
    if quick:
        loss_cases = loss_cases[:4]
    for i, (n, ds, dt) in enumerate(loss_cases):
        for dtype in dtypes if n <= 31 else (torch.float64, torch.float32):
            add(f"rkd_loss n={n} {dtype}", run_rkd_loss, n, ds, dt, dtype, "random", quick)
        if n > 2:
            add(f"rkd_loss n={n} float64", run_rkd_loss, n, ds, dt, torch.float64, ("offset", "near", "dup")[i % 3],
                quick)
    # Blocks of rows: empty, one row, across and within the 64-row GEMM and 32-row triplet tiles.
    add("rows n=7", run_rows, 7, 5, torch.float64, [(0, 7), (2, 3), (4, 4)])
    add("rows n=70", run_rows, 70, 9, torch.float32, [(0, 70), (5, 69)] if quick else [(0, 70), (5, 69), (33, 70)])
    if not quick:
        add("rows n=130", run_rows, 130, 3, torch.float64, [(1, 129), (64, 130)])
    add("wide n=260", run_wide, 260, 3)
    add("all near n=40", run_all_near, 40, 24)
    add("determinism", determinism)
    # Float32 products: below, at and past a 64 x 64 tile, K split into slices (D > 128), odd sizes, D = 0.
    p32_cases = [(3, 5, 2), (4, 0, 3), (31, 40, 33), (70, 300, 129)] if quick else \
        [(2, 1, 3), (3, 5, 2), (4, 0, 3), (31, 40, 33), (70, 300, 129), (130, 17, 260)]
    for n, ds, dt in p32_cases:
        for kind in ("random", "offset", "far", "near", "dup"):
            add(f"float32 products n={n} {kind}", run_products32, n, ds, dt, torch.float32, kind)
    for dtype in (torch.float16, torch.bfloat16):
        add(f"float32 products n=31 {dtype}", run_products32, 31, 40, 33, dtype, "random")
    if not quick:  # past N = 512 the W x X product splits its reduction over the samples
        add("float32 products n=520", run_products32, 520, 3, 2, torch.float32, "offset")
    if emulated:
        add("product modes", product_modes)
    return items


def run_on_device(device, quick):
    """The case list through the compiled extension on `device`; exit status 1 on a mismatch."""
    if device.startswith("cuda") and not (torch.cuda.is_available() and rkd_ext.build_info()["with_cuda"]):
        print(f"--device {device}: needs a GPU and rkd_ext built with its CUDA kernels")
        return 2
    start, rep, ops = time.time(), Report(), TorchOps(device)
    try:
        for _, run in cases(quick, emulated=False):
            run(ops, rep)
    finally:
        rkd_ext.set_product_precision("auto")
    print(f"CUDA ops on {device} vs CPU ops: {rep.count - rep.failures}/{rep.count} checks passed "
          f"({time.time() - start:.0f} s)")
    return 1 if rep.failures else 0


def _preload_sanitizers():
    """Restart this script with the sanitizer runtimes preloaded (an instrumented library cannot load without)."""
    env = dict(os.environ, LD_PRELOAD=sanitizer_preload(), RKD_EMULATE_PRELOADED="1",
               # Python and torch allocate for the process's life; only the kernels are under test.
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    return subprocess.run([sys.executable] + sys.argv, env=env).returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and variants")
    ap.add_argument("--build", choices=BUILDS, default="detect",
                    help="detect: with the detectors (default); plain: without; asan: AddressSanitizer and "
                         "UndefinedBehaviorSanitizer; contract: floating-point contraction with FMAs, as nvcc")
    ap.add_argument("--orders", default="forward",
                    help="comma-separated block orders (forward, reverse, shuffle:SEED), one run of the cases "
                         "each; every run after the first must reproduce the first's outputs bitwise "
                         "(a repeated order checks run-to-run reproducibility)")
    ap.add_argument("--skip-barrier", default="", metavar="FILE:LINE",
                    help="make this __syncthreads() call site a no-op (scripts/barrier_sweep.py)")
    ap.add_argument("--stop-on-findings", action="store_true",
                    help="stop at the first call in which a detector finds something (exit status 3)")
    ap.add_argument("--sites", metavar="JSON",
                    help="write every __syncthreads() call site run: how often, and the first case that runs it")
    ap.add_argument("--kernels", metavar="JSON",
                    help="write every kernel launched: its mangled name, block shape and number of launches")
    ap.add_argument("--start-at", type=int, default=0, metavar="K",
                    help="run the cases from the K-th (0-based) on, then the ones before it")
    ap.add_argument("--lib", help="an emulator library built before (by build()) instead of building one")
    ap.add_argument("--device", help="run the cases through torch.ops.rkd_ext on this device (cuda, or cpu to "
                                     "rehearse) instead of the emulator")
    args = ap.parse_args()
    if args.device:
        return run_on_device(args.device, args.quick)
    if args.build == "asan" and os.environ.get("RKD_EMULATE_PRELOADED") != "1":
        return _preload_sanitizers()
    torch.set_num_threads(1)
    start = time.time()
    orders = args.orders.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        lib = ctypes.CDLL(args.lib) if args.lib else build(tmp, args.build)
        emu = Emulated(lib, stop_on_findings=args.stop_on_findings)
        built = time.time()
        emu.skip_barrier(args.skip_barrier)
        rep = Report()
        digests = []
        items = cases(args.quick)
        items = items[args.start_at:] + items[:args.start_at]
        first = {}  # call site -> the first case that ran it
        try:
            for order in orders:
                emu.set_block_order(order)
                emu.digest = hashlib.sha256()
                for k, (label, run) in enumerate(items):
                    run(emu, rep)
                    if args.sites:
                        for site in emu.barrier_sites():
                            first.setdefault(site, ((k + args.start_at) % len(items), label))
                digests.append(emu.digest.hexdigest())
        except Findings as found:
            print(f"stopped at the first findings of the detectors:\n{found}")
            return 3
        finally:
            if args.sites:
                counts = emu.barrier_sites()
                with open(args.sites, "w") as f:
                    json.dump({site: {"count": n, "first_case": first[site][0], "first_label": first[site][1]}
                               for site, n in counts.items() if site in first}, f, indent=1, sort_keys=True)
        if args.kernels:
            with open(args.kernels, "w") as f:
                json.dump(emu.launched(), f, indent=1, sort_keys=True)
        detectors = bool(emu.lib.rkd_emu_detecting())
    for order, digest in zip(orders[1:], digests[1:]):
        rep.count += 1
        if digest != digests[0]:
            rep.failures += 1
            print(f"FAIL block order {order}: outputs differ bitwise from block order {orders[0]}")
    for finding in emu.findings:
        print(f"FAIL {finding}")
    if args.build == "detect" and not detectors:
        print("FAIL the detect build ran without its instrumentation")
        rep.failures += 1
    print(f"emulated CUDA ops vs CPU ops ({args.build} build, block orders {', '.join(orders)}): "
          f"{rep.count - rep.failures}/{rep.count} checks passed, {len(emu.findings)} findings of the detectors "
          f"(build {built - start:.0f} s, checks {time.time() - built:.0f} s); outputs digest {digests[0][:16]}")
    return 1 if rep.failures or emu.findings else 0


if __name__ == "__main__":
    sys.exit(main())
