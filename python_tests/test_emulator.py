"""The host emulator's detectors, each shown catching a planted bug (python_tests/emulator_planted.cpp).

Every detector of csrc/cuda/standalone/emulate_rt.cpp (racecheck in shared and
global memory, within a block and between blocks; replicated stores;
synccheck; initcheck; memcheck; launch limits) gets a kernel with its bug
planted and must name the check, the kernel, the array and the threads; the
same kernel without the bug must give no finding and the right numbers. The
other builds are shown to do what they claim: AddressSanitizer and
UndefinedBehaviorSanitizer stop a planted overflow, the contraction build
fuses a multiply-add, and the block orders change the result of a kernel
whose blocks race (which is what the bitwise comparison of orders relies
on).
"""
import ctypes
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, load_script, needs_host_cuda

PLANTED = os.path.join(ROOT, "python_tests", "emulator_planted.cpp")

pytestmark = needs_host_cuda


E = load_script("scripts/emulate_cuda.py")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The planted kernels' library for a build variant, built once per module."""
    out, libs = tmp_path_factory.mktemp("planted"), {}

    def get(variant):
        if variant not in libs:  # the asan build loads only where its runtime is preloaded: its path
            libs[variant] = E.build(str(out), variant, PLANTED, load=variant != "asan")
        return libs[variant]
    return get


class Emu:
    """The detect build of the planted kernels: device memory registered, findings taken."""

    def __init__(self, lib):
        self.lib = lib
        lib.rkd_emu_take_findings.restype = ctypes.c_int64
        self.tracked = []

    def track(self, t, name, uninitialised=False):
        self.lib.rkd_emu_track(ctypes.c_void_p(t.data_ptr()), ctypes.c_int64(t.numel() * t.element_size()),
                               name.encode(), int(uninitialised))
        self.tracked.append(t)
        return ctypes.c_void_p(t.data_ptr())

    def findings(self):
        found = E.text_of(self.lib.rkd_emu_take_findings).splitlines()
        for t in self.tracked:
            self.lib.rkd_emu_untrack(ctypes.c_void_p(t.data_ptr()))
        self.tracked = []
        return found


@pytest.fixture
def emu(built):
    e = Emu(built("detect"))
    e.findings()  # nothing left over from another test
    e.lib.rkd_emu_set_block_order(0, ctypes.c_uint64(0))
    e.lib.rkd_emu_skip_barrier(b"")
    return e


def one_finding(found, check, *words):
    """A finding of this check naming each of words (a planted bug may trip other checks too: a read that
    races with a write is also uninitialised when the reader runs first)."""
    match = [f for f in found if f.startswith(check + ": ") and all(w in f for w in words)]
    assert match, (check, words, found)
    return match[0]


def values(n, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- racecheck: shared memory -------------------------------------------------------

@pytest.mark.parametrize("blocks", [1, 3])
def test_shared_read_after_write(emu, blocks):
    v, out = values(64 * blocks), torch.zeros(blocks, dtype=torch.float64)
    emu.lib.planted_block_total(0, emu.track(v, "v"), emu.track(out, "out"), blocks)
    one_finding(emu.findings(), "racecheck", "block_total<false>", "__shared__ planted::block_total<false>::red",
                "read by thread (0, 0, 0)", "same barrier interval")
    emu.lib.planted_block_total(1, emu.track(v, "v"), emu.track(out, "out"), blocks)
    assert emu.findings() == []
    assert torch.allclose(out, v.view(blocks, 64).sum(1), rtol=1e-15, atol=0)


def test_shared_write_after_read(emu):
    v, out = values(64), torch.zeros(2, dtype=torch.float64)
    emu.lib.planted_reuse(0, emu.track(v, "v"), emu.track(out, "out"))
    one_finding(emu.findings(), "racecheck", "reuse<false>::red", "read by thread (0, 0, 0)", "written by thread (63, ")
    emu.lib.planted_reuse(1, emu.track(v, "v"), emu.track(out, "out"))
    assert emu.findings() == []
    assert out.tolist() == [v[63].item(), 2 * v[63].item()]


def test_shared_write_after_write(emu):
    out = torch.zeros(1, dtype=torch.float64)
    emu.lib.planted_same_slot(emu.track(out, "out"))
    one_finding(emu.findings(), "racecheck", "write after write", "same_slot::red")


# ---- racecheck: global memory ------------------------------------------------------

def test_global_race_within_a_block(emu):
    buf = torch.zeros(33, dtype=torch.float64)
    emu.lib.planted_global_in_block(0, emu.track(buf, "buf"))
    one_finding(emu.findings(), "racecheck", "read after write", "global_in_block<false>", "buf at byte 0",
                "written by thread (0, 0, 0) of block (0, 0, 0)")
    emu.lib.planted_global_in_block(1, emu.track(buf, "buf"))
    assert emu.findings() == [] and bool((buf == 1).all())


def test_blocks_writing_one_address(emu):
    out = torch.zeros(1, dtype=torch.float64)
    emu.lib.planted_last_block_wins(emu.track(out, "out"))
    one_finding(emu.findings(), "racecheck (between blocks)", "write after write", "last_block_wins", "out",
                "of block (0, 0, 0)", "of block (1, 0, 0)", "of the same launch")


def test_block_reading_what_another_writes(emu):
    out = torch.zeros(4, dtype=torch.float64)
    emu.lib.planted_chain(emu.track(out, "out"))
    one_finding(emu.findings(), "racecheck (between blocks)", "read after write", "chain", "out")


def test_replicated_stores(emu):
    v, total, out = values(32), torch.zeros(1, dtype=torch.float64), torch.zeros(128, dtype=torch.float64)
    args = lambda: (emu.track(v, "v"), emu.track(total, "total"), emu.track(out, "out"))  # noqa: E731
    emu.lib.planted_replicated(0, *args())
    assert emu.findings() == []  # equal bits, each block reads what it stored
    assert out.tolist() == [sum(v.tolist())] * 128  # the kernel's order of additions
    emu.lib.planted_replicated(1, *args())
    one_finding(emu.findings(), "racecheck (between blocks)", "replicated stores differ", "replicated<1>", "total")
    emu.lib.planted_replicated(2, *args())
    one_finding(emu.findings(), "racecheck (between blocks)", "read after write", "replicated<2>", "total",
                "read by thread (0, 0, 0) of block (1, 0, 0)")


# ---- synccheck ---------------------------------------------------------------------------

def test_divergent_barriers(emu):
    out = torch.zeros(32, dtype=torch.float64)
    emu.lib.planted_divergent(emu.track(out, "out"))
    f = one_finding(emu.findings(), "synccheck", "divergent barriers", "divergent", "16 at ", "emulator_planted.cpp")
    assert f.count("emulator_planted.cpp:") == 2


def test_barrier_with_exited_threads(emu):
    out = torch.zeros(32, dtype=torch.float64)
    emu.lib.planted_early_exit(emu.track(out, "out"))
    one_finding(emu.findings(), "synccheck", "barrier with exited threads", "early_exit", "31 at ",
                "1 threads have returned")


# ---- initcheck ---------------------------------------------------------------------------

def test_uninitialised_shared_read(emu):
    out = torch.zeros(32, dtype=torch.float64)
    emu.lib.planted_uninit_shared(emu.track(out, "out"))
    one_finding(emu.findings(), "initcheck", "uninitialised __shared__ read", "uninit_shared::red",
                "at byte 248", "read by thread (31, 0, 0)")


def test_uninitialised_scratch_read(emu):
    scratch, out = torch.empty(40, dtype=torch.float64), torch.zeros(40, dtype=torch.float64)
    emu.lib.planted_scratch(0, emu.track(scratch, "scratch", uninitialised=True), emu.track(out, "out"),
                            ctypes.c_int64(40))
    one_finding(emu.findings(), "initcheck", "uninitialised global read", "copy", "scratch")
    emu.lib.planted_scratch(1, emu.track(scratch, "scratch", uninitialised=True), emu.track(out, "out"),
                            ctypes.c_int64(40))
    assert emu.findings() == [] and bool((out == 3).all())


# ---- memcheck ------------------------------------------------------------------------------

def test_read_past_the_end(emu):
    x, out = values(5), torch.zeros(1, dtype=torch.float64)
    emu.lib.planted_past_the_end(emu.track(x, "x"), ctypes.c_int64(5), emu.track(out, "out"))
    one_finding(emu.findings(), "memcheck", "read of 8 bytes", "past_the_end", "outside every allocation",
                "0 bytes past the end of x")
    emu.lib.planted_past_the_end(emu.track(x, "x"), ctypes.c_int64(4), emu.track(out, "out"))
    assert emu.findings() == [] and out.item() == x.sum().item()


def test_read_past_a_shared_array(emu):
    out = torch.zeros(1, dtype=torch.float64)
    emu.lib.planted_past_shared(emu.track(out, "out"), 5)
    one_finding(emu.findings(), "memcheck", "read of 2 bytes", "past_shared", "outside every allocation")
    emu.lib.planted_past_shared(emu.track(out, "out"), 2)
    assert emu.findings() == [] and out.item() == 1.0


def test_host_code_reading_device_memory(emu):
    device, out = values(3), torch.zeros(1, dtype=torch.float64)
    emu.lib.planted_host_reads(emu.track(device, "device"), ctypes.c_void_p(out.data_ptr()))
    one_finding(emu.findings(), "memcheck", "host code dereferences device memory", "device")


# ---- launch limits ------------------------------------------------------------------------

@pytest.mark.parametrize("grid,block,what", [
    ((2 ** 31, 1), (32, 1), "grid.x 2147483648"),
    ((1, 65536), (32, 1), "grid.y or grid.z above 65,535"),
    ((1, 1), (1024, 2), "2048 threads per block"),
    ((1, 1), (2048, 1), "block dimension above"),
])
def test_invalid_launch(emu, grid, block, what):
    out = torch.zeros(1, dtype=torch.float64)
    emu.lib.planted_launch(*grid, *block, emu.track(out, "out"))
    one_finding(emu.findings(), "launch", "invalid launch of planted::nothing", what)
    assert out.item() == 0.0  # not run


def test_valid_launch_at_the_limits(emu):
    out = torch.zeros(1, dtype=torch.float64)
    emu.lib.planted_launch(1, 1, 1024, 1, emu.track(out, "out"))
    assert emu.findings() == [] and out.item() == 1.0


def test_shared_memory_past_the_limit(emu):
    out = torch.zeros(1, dtype=torch.float64)
    emu.lib.planted_big_shared(1, emu.track(out, "out"))
    one_finding(emu.findings(), "launch", "big_shared<36>", "73728 bytes of __shared__ memory", "49,152")
    emu.lib.planted_big_shared(0, emu.track(out, "out"))
    assert emu.findings() == [] and out.item() == 3.0


# ---- the mechanisms the sweeps and comparisons rely on ------------------------------------

def test_removed_barrier_is_reported(emu):
    v, out = values(64), torch.zeros(1, dtype=torch.float64)
    with open(PLANTED) as f:
        line = next(n for n, text in enumerate(f, 1) if "if (kBarrier) __syncthreads();" in text)
    emu.lib.rkd_emu_skip_barrier(f"emulator_planted.cpp:{line}".encode())
    emu.lib.planted_block_total(1, emu.track(v, "v"), emu.track(out, "out"), 1)
    emu.lib.rkd_emu_skip_barrier(b"")
    one_finding(emu.findings(), "racecheck", "block_total<true>::red", "same barrier interval")


def test_block_orders(emu):
    def run(order, fn, blocks):
        out = torch.zeros(blocks, dtype=torch.float64)
        emu.lib.rkd_emu_set_block_order(order, ctypes.c_uint64(5))
        fn(emu.track(out, "out"), *([blocks] if fn is emu.lib.planted_map_blocks else []))
        emu.findings()
        return out
    # A kernel whose blocks race gives a different result when they run in another order ...
    assert [run(order, emu.lib.planted_last_block_wins, 1).item() for order in (0, 1)] == [3.0, 0.0]
    # ... one without races the same bits, in every order.
    outs = [run(order, emu.lib.planted_map_blocks, 9) for order in (0, 1, 2)]
    assert all(torch.equal(o, outs[0]) for o in outs) and outs[0].tolist() == [b + 1.0 for b in range(9)]


def test_contraction_build_fuses_multiply_add(built):
    eps = 2.0 ** -30
    a = torch.tensor([1 + eps], dtype=torch.float64)
    b = torch.tensor([1 - eps], dtype=torch.float64)
    c = torch.tensor([-1.0], dtype=torch.float64)
    got = {}
    for variant in ("plain", "contract"):
        out = torch.zeros(1, dtype=torch.float64)
        built(variant).planted_mul_add(*(ctypes.c_void_p(t.data_ptr()) for t in (a, b, c, out)), 1)
        got[variant] = out.item()
    # (1 + e)(1 - e) - 1 = -e^2 exactly; rounding the product first loses it.
    assert got == {"plain": 0.0, "contract": -eps * eps}


_SANITIZED_RUN = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
what, n = sys.argv[2], int(sys.argv[3])
if what == "overflow":
    x = (ctypes.c_int * 4)(n, n, n, n)
    out = (ctypes.c_int * 4)()
    lib.planted_overflow(x, out)
else:
    x, out = libc.malloc(5 * 8), libc.malloc(8)
    ctypes.memset(x, 0, 5 * 8)
    lib.planted_past_the_end(ctypes.c_void_p(x), ctypes.c_int64(n), ctypes.c_void_p(out))
print("ran to the end")
"""


@pytest.mark.parametrize("what,bad,good,message", [
    ("past_the_end", 5, 4, "heap-buffer-overflow"),
    ("overflow", 2, 0, "signed integer overflow"),
])
def test_address_and_undefined_behavior_sanitizers(built, what, bad, good, message):
    lib = built("asan")
    env = dict(os.environ, LD_PRELOAD=E.sanitizer_preload(), ASAN_OPTIONS="detect_leaks=0",
               UBSAN_OPTIONS="halt_on_error=1")
    runs = {n: subprocess.run([sys.executable, "-c", _SANITIZED_RUN, lib, what, str(n)], capture_output=True,
                              text=True, env=env, timeout=120) for n in (bad, good)}
    assert runs[bad].returncode != 0 and message in runs[bad].stderr, runs[bad].stderr[-2000:]
    assert runs[good].returncode == 0 and "ran to the end" in runs[good].stdout, runs[good].stderr[-2000:]
