"""The pytest side of the test vocabulary: devices, and helpers only the tests use.

Every op test is parametrised over ``DEVICES`` (CUDA cases skip cleanly when no
GPU is visible). Feature batches, dtypes, tolerances and comparisons come from
rkd_ext.testing, shared with the benchmarks and scripts, so that a change of
policy happens in one place.
"""
import contextlib
import importlib.util
import os
import shutil
import signal
import time

import pytest
import torch

# Benchmarks and CI must not pass silently on the pure-PyTorch fallback.
os.environ.setdefault("RKD_EXT_REQUIRE_EXT", "1")

from rkd_ext import _ext  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
CUDA_KERNELS = HAS_CUDA and bool(_ext.build_info().get("with_cuda"))

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"),
    ]),
]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The host emulator and the launch plan compile the CUDA sources as host C++: they need g++ and the CUDA
# headers, no GPU.
CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")
needs_host_cuda = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None or
    not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime.h")),
    reason="needs g++ and the CUDA headers (the CUDA sources compile as host C++)")


def load_script(path):
    """The module of a script of the repository (a path relative to its root, e.g. "scripts/launch_plan.py")."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def _cpu_setting(name, value):
    """The process-wide CPU setting read by torch.ops.rkd_ext._<name> and written by _set_<name> set to `value`,
    and put back on the way out."""
    ops = torch.ops.rkd_ext
    get, put = getattr(ops, "_" + name), getattr(ops, "_set_" + name)
    before = get()
    put(value)
    try:
        yield
    finally:
        put(before)


def cpu_serial_work(work):
    """The CPU's serial threshold (csrc/core/serial_work.h) set to `work` element operations: 0 makes every call
    open its parallel regions, inf runs every call on the calling thread."""
    return _cpu_setting("cpu_serial_work", work)


@contextlib.contextmanager
def cpu_contention_hold(seconds):
    """The CPU's contention hold (csrc/core/serial_work.h) set to `seconds`; 0 turns the guard off. Any hold
    in force is ended on the way in and out, so that no test inherits another's."""
    ops = torch.ops.rkd_ext
    before = ops._cpu_contention_hold()
    ops._set_cpu_contention_hold(0.0)
    ops._set_cpu_contention_hold(seconds)
    try:
        yield
    finally:
        ops._set_cpu_contention_hold(0.0)
        ops._set_cpu_contention_hold(before)


def cpu_region_chunks(chunks):
    """The chunks per thread a CPU parallel region hands out (csrc/core/serial_work.h) set to `chunks`."""
    return _cpu_setting("cpu_region_chunks", chunks)


def cpu_pool(kind):
    """The threads that run the CPU's parallel regions (csrc/cpu/cpu_pool.h): 0 torch's intra-op pool, 1 the
    kernels' own."""
    return _cpu_setting("cpu_pool", kind)


# (intra-op threads, chunks per thread or None for the default, pool or None for the default) of
# run_with_threads: one thread, two threads twice, two threads in one equal share each (at::parallel_for's own
# split), three threads in many small chunks (the own pool grows to two workers and shrinks back after), two
# threads on torch's pool.
THREAD_RUNS = ((1, None, None), (2, None, None), (2, None, None), (2, 1, None), (3, 64, None), (2, None, 0))


def in_forked_child(fn, timeout):
    """Forks; the child runs fn() and leaves without any cleanup, with exit status 0 if fn() returned true, 3 if
    false, 1 if it raised. The parent waits up to `timeout` seconds: the child's exit status, or None if it hung
    (then it is killed)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if fn() else 3
        finally:
            os._exit(code)
    deadline, status = time.monotonic() + timeout, None
    while status is None and time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        status = st if done else None
        time.sleep(0.01)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1


def run_with_threads(fn, runs=THREAD_RUNS):
    """fn() under each (intra-op threads, region chunks, pool) in turn, every call through its parallel regions
    (the serial threshold at 0), then once on the calling thread alone (the threshold above any call); the list
    of its results."""
    before = torch.get_num_threads()
    try:
        out = []
        with cpu_serial_work(0.0):
            for n, chunks, pool in runs:
                torch.set_num_threads(n)
                with contextlib.ExitStack() as settings:
                    if chunks is not None:
                        settings.enter_context(cpu_region_chunks(chunks))
                    if pool is not None:
                        settings.enter_context(cpu_pool(pool))
                    out.append(fn())
        with cpu_serial_work(float("inf")):
            out.append(fn())
        return out
    finally:
        torch.set_num_threads(before)


def assert_bitwise_equal_runs(results):
    """Every run's tensors equal the first run's, bit for bit."""
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))


@pytest.fixture
def distill_torch_state():
    """For the main job's tests: one torch thread, and deterministic algorithms restored afterwards.

    main() switches deterministic algorithms on for --deterministic, as a CLI may; that must not leak into other
    tests. One thread: the models are tiny, and on a busy machine more threads only wait for each other.
    """
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


# What a run of the main job measures of the moment rather than computes: an epoch's wall time, the RKD loss's
# measured cost. assert_identical skips them.
MEASURED = ("seconds", "loss_cost")


def assert_identical(a, b, where):
    """``a`` and ``b`` (checkpoints, results of the main job) are equal bit for bit, measurements of the moment aside."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k not in MEASURED:
                assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def interrupt_step(monkeypatch, at):
    """Make the main job's ``at``-th training step from now raise KeyboardInterrupt, as Ctrl-C there would."""
    from rkd_ext.distill import train

    real_step, calls = train._Step.__call__, [0]

    def step(self, x, labels):
        calls[0] += 1
        if calls[0] == at:
            raise KeyboardInterrupt
        return real_step(self, x, labels)
    monkeypatch.setattr(train._Step, "__call__", step)

