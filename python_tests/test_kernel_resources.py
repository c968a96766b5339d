"""scripts/kernel_resources.py: the spill gate caught on a planted spill, and the occupancy rules.

The gate reads ptxas's own report; a kernel squeezed into 32 registers
(python_tests/kernel_resources_planted.cu) spills, its twin with registers to
spare does not, and the gate must fail on the first unless the baseline
already allows its bytes. The occupancy is checked against values worked out
by hand from the CUDA occupancy calculator's rules.
"""
import os
import shutil
import subprocess

import pytest
from conftest import ROOT, load_script

K = load_script("scripts/kernel_resources.py")

SQUEEZED, ROOMY = "_Z8squeezedILi1024ELi2EEvPKfPf", "_Z8squeezedILi256ELi1EEvPKfPf"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    nvcc = K.nvcc()
    if not shutil.which(nvcc) and not os.path.exists(nvcc):
        pytest.skip("needs nvcc")
    out = tmp_path_factory.mktemp("spill")
    run = subprocess.run([nvcc, *K.NVCC_FLAGS, "-Xptxas", "-v", "-gencode", "arch=compute_90,code=sm_90", "-c",
                          os.path.join(ROOT, "python_tests", "kernel_resources_planted.cu"), "-o", str(out / "k.o")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    kernels = K.parse_ptxas(run.stdout + run.stderr)
    return [dict(arch=90, kernel=name, demangled=name, **k) for name, k in kernels.items()]


def test_ptxas_report_parsed(planted):
    by = {r["kernel"]: r for r in planted}
    assert by[SQUEEZED]["regs"] == 32 and by[SQUEEZED]["spill_stores"] > 0 and by[SQUEEZED]["spill_loads"] > 0
    assert by[ROOMY]["regs"] > 32 and by[ROOMY]["spill_stores"] == by[ROOMY]["spill_loads"] == 0


def test_spill_gate_fails_on_a_new_spill(planted):
    roomy_only = [dict(r, spill_stores=0, spill_loads=0) for r in planted if r["kernel"] == ROOMY]
    problems = K.check(planted, roomy_only, {})
    assert len(problems) == 1 and SQUEEZED in problems[0] and "a kernel not in" in problems[0], problems
    # A kernel the baseline has without spills that spills now.
    problems = K.check(planted, [dict(r, spill_stores=0, spill_loads=0) for r in planted], {})
    assert len(problems) == 1 and SQUEEZED in problems[0] and "was 0 bytes" in problems[0], problems


def test_spill_gate_allows_what_the_baseline_has_and_fails_on_more(planted):
    assert K.check(planted, planted, {}) == []
    less = [dict(r, spill_loads=r["spill_loads"] - 4) if r["kernel"] == SQUEEZED else r for r in planted]
    problems = K.check(planted, less, {})
    assert len(problems) == 1 and SQUEEZED in problems[0], problems


def test_gate_reports_shared_memory_past_the_limit_and_unbuilt_launches(planted):
    rows = [dict(r, smem=K.SMEM_NO_OPT_IN + 8) if r["kernel"] == ROOMY else r for r in planted]
    problems = K.check(rows, planted, {"_Z7missingv": {"block": [32, 1, 1]}})
    assert any(ROOMY in p and "shared memory" in p for p in problems), problems
    assert any("_Z7missingv is launched but not compiled" in p for p in problems), problems


def test_gate_fails_on_a_triplet_kernel_below_16_warps(planted):
    # The roomy planted kernel posing as each triplet kernel: at 129 registers (8 warps) the gate fails, at 128
    # (16 warps) it passes; the named float64 'none'-reduction instantiation is allowed fewer.
    roomy = next(r for r in planted if r["kernel"] == ROOMY)
    for template in K.MIN_WARPS:
        name = f"void {template}<float, rkd::ScalarUpstream<float>>(...)"
        for regs, fails in ((129, True), (128, False)):
            row = dict(roomy, template=template, demangled=name, regs=regs,
                       warps=K.occupancy(90, regs, roomy["smem"], 256))
            problems = K.check([row], [row], {})
            assert bool(problems) == fails and all("resident warps" in p for p in problems), problems
        exempt = dict(roomy, template=template, demangled=name.replace("ScalarUpstream<float>", K.MIN_WARPS_EXEMPT),
                      regs=188, warps=K.occupancy(90, 188, 0, 256))
        assert K.check([exempt], [exempt], {}) == []
        assert K.check([dict(exempt, arch=80)], [dict(exempt, arch=80)], {}) == []


@pytest.mark.parametrize("arch,regs,smem,threads,warps", [
    (90, 255, 0, 256, 8),       # 8160 -> 8192 registers a warp: 8 warps, one block
    (90, 128, 0, 256, 16),      # 4096 a warp: 16 warps, two blocks
    (90, 129, 0, 256, 8),       # 4128 -> 4352 a warp: 15 warps, one block of 8
    (90, 32, 0, 256, 64),       # the 64-warp limit
    (90, 32, 0, 32, 32),        # the 32-block limit
    (90, 32, 49152, 256, 32),   # 48 KiB + 1 KiB reserved: 4 blocks in 228 KiB
    (80, 32, 49152, 256, 24),   # 3 blocks in 164 KiB
    (80, 80, 19200, 256, 24),   # 80 registers: 2560 a warp, 25 warps: 3 blocks
])
def test_occupancy(arch, regs, smem, threads, warps):
    assert K.occupancy(arch, regs, smem, threads) == warps
