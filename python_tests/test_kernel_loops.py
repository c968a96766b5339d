"""scripts/kernel_loops.py: the triplet and product loops found in a SASS listing and counted, and its gate caught
on a planted dearer loop.

The listings are written here in cuobjdump's format: a staging loop (global loads, shared stores) that must not
count, and a triplet loop of one loss triplet (two cosines: two F2F.F32.F64) whose instructions are known; a
product's main loop (staging, a barrier, vector shared loads, multiply-adds) beside a smaller loop with fewer.
"""
from conftest import load_script

L = load_script("scripts/kernel_loops.py")

LOSS = "void rkd::gpu::angle_loss_sum_kernel<float>(...)"
RAW = "void rkd::gpu::angle_passes_kernel<float, rkd::CubeUpstream<float, false> >(...)"


def listing(extra=()):
    body = ["LDS.128 R4, [R2]", "DADD R8, R4, R6", "DADD R8, -R10, R8", "F2F.F32.F64 R12, R8",
            "DADD R14, R4, R16", "DADD R14, -R18, R14", "F2F.F32.F64 R13, R14", "FMUL R12, R12, R20",
            "FFMA R21, R13, R22, -R12", *extra, "ISETP.NE.AND P0, PT, R3, RZ, PT", "@P0 BRA 0x{top:04x}"]
    code = ["MOV R1, c[0x0][0x28]",
            "LDG.E.64 R4, desc[UR4][R2.64]", "STS.64 [R3], R4", "@P1 BRA 0x0010",  # the staging loop
            *body, "EXIT"]
    top = 0x10 * 4
    lines = [f"        /*{0x10 * i:04x}*/                   {c.format(top=top)} ;   /* 0x000000000000 */"
             for i, c in enumerate(code)]
    return "\n".join(lines)


def test_one_triplet_loop_counted():
    rows = L.loops_of(listing(), LOSS)
    assert len(rows) == 1, rows
    r = rows[0]
    assert r["unit"] == "triplet" and r["units"] == 1 and r["instructions"] == 11 and r["per_unit"] == 11
    assert r["classes"] == {"convert": 2, "float32": 2, "float64": 4, "integer": 1, "other": 1, "shared load": 1}
    assert r["shared_wavefronts"] == 2  # one LDS.128 of 16 distinct words: two clocks of the shared-memory pipe


def test_cosines_per_triplet():
    # The angle tensor's backward has one cosine per triplet: the same loop is two triplets.
    assert L.loops_of(listing(), RAW)[0]["units"] == 2


def test_gate_fails_on_a_dearer_or_missing_loop():
    base = L.loops_of(listing(), LOSS)
    assert L.check(base, base) == []
    dearer = L.loops_of(listing(["FMUL R23, R21, R24", "FMUL R25, R23, R24"]), LOSS)
    problems = L.check(dearer, base)
    assert len(problems) == 1 and "13.00 instructions per triplet, was 11.00" in problems[0], problems
    assert L.check(L.loops_of(listing(["FMUL R23, R21, R24"]), LOSS), dearer) == []  # cheaper passes
    problems = L.check([], base)
    assert len(problems) == 1 and "not found" in problems[0], problems


def test_one_architecture_of_a_library():
    # A library's listing holds each architecture's code: only the asked one's loops count.
    both = f"\narch = sm_80\n{listing(['FMUL R23, R21, R24'])}\narch = sm_90\n{listing()}\n"
    assert L.loops_of(L.arch_section(both, 90), LOSS)[0]["instructions"] == 11
    assert L.loops_of(L.arch_section(both, 80), LOSS)[0]["instructions"] == 12
    assert L.arch_section(both, 75) == ""


PRODUCT = "void rkd::gpu::gram_partial32_kernel<float>(...)"


def product_listing():
    small = ["LDS R4, [R2]", "FFMA R5, R4, R4, R5", "@P0 BRA 0x{a:04x}"]
    main = ["LDG.E R6, desc[UR4][R8.64]", "STS [R3], R6", "BAR.SYNC.DEFER_BLOCKING 0x0", "LDS.128 R12, [R2]",
            "LDS.64 R16, [R3]", *["FFMA R20, R12, R16, R20"] * 8, "IADD3 R9, R9, 0x1, RZ", "@P1 BRA 0x{b:04x}"]
    code = ["MOV R1, c[0x0][0x28]", *small, *main, "EXIT"]
    a, b = 0x10, 0x10 * (1 + len(small))
    return "\n".join(f"        /*{0x10 * i:04x}*/                   {c.format(a=a, b=b)} ;   /* 0x000000000000 */"
                     for i, c in enumerate(code))


def test_product_loop_counted():
    # The loop with the most multiply-adds is the product's, staging included; its unit is one multiply-add.
    rows = L.loops_of(product_listing(), PRODUCT)
    assert len(rows) == 1, rows
    r = rows[0]
    assert r["unit"] == "multiply-add" and r["units"] == 8 and r["instructions"] == 15
    assert r["classes"]["float32"] == 1 and r["classes"]["shared load"] == 0.25
    assert r["shared_wavefronts"] == (2 + 1) / 8  # LDS.128: two clocks, LDS.64: one
