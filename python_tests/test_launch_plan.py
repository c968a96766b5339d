"""scripts/launch_plan.py: its launch records against facts known without it.

The plan dry-runs the GPU backend's op sequences (no GPU needed, only g++ and
the CUDA headers). The facts: the op layer's sequences, which launches they
are made of and how composed ops add up; each kernel's grid from the sizes;
the flops of a product from its shape; the time model from its formula, and
the loop model on a planted loop.
"""
import pytest
from conftest import load_script, needs_host_cuda

pytestmark = needs_host_cuda


@pytest.fixture(scope="module")
def lp():
    return load_script("scripts/launch_plan.py")


@pytest.fixture(scope="module")
def rec(lp):
    return lp.Recorder(lp.build(), lp.loop_costs())


def kernels(launches):
    return [l.kernel.split("<")[0] for l in launches]


def test_pairwise_distance_sequence(rec):
    # Forward: centring, the Gram product's K slices, their finish into
    # distances, the float32 copy of the float64 distances. Backward: the
    # upstream gradient to float64, the weights, the W x X product (which
    # centres its own features).
    assert kernels(rec.run("pairwise_distance", 40, 100)) == [
        "centre_columns", "gram_partial", "gram_finish", "convert",
        "convert", "weights", "grad_gemm"]


def test_loss_sequences(rec):
    # Both sides in each launch of the pair matrices; at N <= 64 the forward's
    # reductions (two inverse means, then the loss and both sides' mean terms)
    # in one launch. The backward runs none: it reads the forward's stats.
    assert kernels(rec.run("rkd_distance_loss", 32, 512)) == [
        "centre_columns", "gram_partial", "gram_finish", "reduce_seq", "weights", "grad_gemm"]
    # Beyond, a launch per group of reductions that read nothing of each
    # other (the two inverse means; the loss and the mean terms) and a finish.
    assert kernels(rec.run("rkd_distance_loss", 65, 512)) == [
        "centre_columns", "gram_partial", "gram_finish", "group_row_sums", "group_row_sums", "finish_group",
        "weights", "grad_gemm"]
    # normalized_distance's backward: its inverse mean and mean term in one
    # group, their fins in one block.
    assert kernels(rec.run("normalized_distance", 65, 512))[-5:] == [
        "convert", "group_row_sums", "finish_group", "weights", "grad_gemm"]
    # The angle loss: u of both sides with s in the forward, in one map in the
    # backward; the backward's vertex and opposite passes in one launch.
    assert kernels(rec.run("rkd_angle_loss", 32, 512)) == [
        "centre_columns", "gram_partial", "gram_finish", "angle_loss_sum", "finish",
        "map", "angle_passes", "weights", "grad_gemm"]


def test_group_launches(rec):
    # A group of k reductions: k blocks per row in one launch.
    launches = rec.run("rkd_distance_loss", 100, 30)
    groups = [l for l in launches if l.kernel.startswith("group_row_sums")]
    assert [l.grid for l in groups] == [(200, 1, 1), (300, 1, 1)]


def test_rkd_loss_fuses_both_terms(rec):
    # The two losses called one after the other: their plans concatenated. RKDLoss, the fused op:
    # one pair-matrix sequence for both inputs, the distance term's reductions in one sequence, and one
    # gradient product for the student, so fewer launches than the two losses.
    for n, d in ((16, 512), (130, 70)):
        both = rec.run("rkd_distance_loss", n, d) + rec.run("rkd_angle_loss", n, d)
        assert rec.run("separate_losses", n, d) == both
        fused = kernels(rec.run("RKDLoss", n, d))
        assert fused.count("gram_partial") == 1 and fused.count("grad_gemm") == 1
        assert len(fused) < len(both)
    assert kernels(rec.run("RKDLoss", 32, 512)) == [
        "centre_columns", "gram_partial", "gram_finish", "reduce_seq", "angle_loss_sum", "finish",
        "map", "angle_passes", "weights", "grad_gemm"]


def test_gram_split_k(rec):
    # N = 130: 3 x 3 tiles of 64, of which the 6 on or above the diagonal work.
    # D = 300 in 64-feature splits: 5 of them (the most D allows, as 6 tiles
    # are far from a few hundred blocks).
    n, d = 130, 300
    gram = [l for l in rec.run("pairwise_distance", n, d) if l.kernel.startswith("gram_partial")]
    assert len(gram) == 1
    g = gram[0]
    assert g.grid == (6 * 5, 1, 1) and g.block == (16, 16, 1)
    assert g.flops64 == 6 * 64 * 64 * 2 * d
    assert g.flops32 == 0
    # xc read, 5 slices of the N x N Gram matrix written.
    assert g.bytes == 8 * (n * d + 5 * n * n)
    # N = 32, D = 25088: one tile, split until the grid has a few hundred blocks.
    g = [l for l in rec.run("pairwise_distance", 32, 25088) if l.kernel.startswith("gram_partial")][0]
    assert 132 <= g.blocks <= 25088 / 64


@pytest.mark.parametrize("n, d, rows, cols", [(70, 200, 32, 16), (1100, 2048, 64, 64)])
def test_grad_gemm_covers_the_gradient(rec, n, d, rows, cols):
    # Few square tiles (8 at N = 70, D = 200): slim 32 x 16 tiles; 18 x 32 square tiles: square.
    gemm = [l for l in rec.run("normalized_distance", n, d) if l.kernel.startswith("grad_gemm")]
    assert len(gemm) == 1
    gx, gy, _ = gemm[0].grid
    assert gx * cols >= d > (gx - 1) * cols and gy * rows >= n > (gy - 1) * rows
    assert ("Micro<2, 1" in gemm[0].kernel) == (rows == 32)
    assert gemm[0].units == rows * cols * gx * gy * -(-n // 16) * 16  # multiply-adds, K padded to 16


def test_angle_loss_float32_triplets(rec):
    # A float32 loss runs its triplet arithmetic in float32; the numerators
    # of the cosines stay float64.
    launches = rec.run("rkd_angle_loss", 64, 32)
    tri = [l for l in launches if l.kernel.startswith(("angle_loss_sum", "angle_passes"))]
    assert kernels(tri) == ["angle_loss_sum", "angle_passes"]
    assert all(l.flops32 > 0 and l.flops64 > 0 for l in tri)


def test_time_model(lp):
    p = lp.PROFILES["h200"]
    # 1 GB over the whole machine: bandwidth-bound.
    l = lp.Launch("k", (1000, 1, 1), (256, 1, 1), 1e9, 0.0, 1e6, 1000)
    assert l.time(p) == pytest.approx(p.launch + 1e9 / p.bandwidth)
    # One block: 1/132 of the machine's arithmetic.
    l = lp.Launch("k", (1, 1, 1), (256, 1, 1), 0.0, 67e6, 34e6, 1)
    assert l.work(p) == pytest.approx((67e6 / p.fp32 + 34e6 / p.fp64) * p.sms)
    assert l.flagged(p)  # about 264 us of work on one block
    assert not lp.Launch("k", (132, 1, 1), (256, 1, 1), 0.0, 0.0, 34e6 * 132, 132).flagged(p)
    # Flagged when the idle SMs' share of the work exceeds 5 us: 8 blocks for 8 us is (7.5 us idle), 128 blocks
    # for 20 us is not (0.6 us), nor is 8 blocks for 5 us.
    def launch(blocks, us):
        return lp.Launch("k", (blocks, 1, 1), (256, 1, 1), us * 1e-6 * p.bandwidth, 0.0, 0.0, blocks)
    assert launch(8, 8).flagged(p) and not launch(128, 20).flagged(p) and not launch(8, 5).flagged(p)


def test_loop_model(lp):
    # A planted loop: per unit 2 float64 operations, 1 conversion, 6 instructions in all, 1 shared wavefront.
    p = lp.PROFILES["h200"]
    loop = lp.LoopCost("triplet", 6.0, {"float64": 2.0, "convert": 1.0, "other": 3.0}, 1.0, 64)
    # Clocks per unit per SM: issue 6/128, float64 2/64, conversions 1/16, shared 1/32: the conversions bound it.
    assert loop.clocks(p) == (pytest.approx(1 / 16), "convert")
    slow = lp.PROFILES["slow-fp64"]
    assert loop.clocks(slow) == (pytest.approx(1.0), "float64")  # 2 float64 operations at 2 per clock
    # 264 blocks of 256 threads on 132 SMs: 16 warps resident, latency hidden.
    units = 1e9
    assert loop.seconds(units, 264, 256, p) == pytest.approx(units / 132 / 16 / p.clock)
    # 132 blocks: 8 warps each SM, half the issue rate; 66 blocks: half the SMs as well.
    assert loop.seconds(units, 132, 256, p) == pytest.approx(2 * units / 132 / 16 / p.clock)
    assert loop.seconds(units, 66, 256, p) == pytest.approx(4 * units / 132 / 16 / p.clock)
    # A kernel whose registers allow 8 warps stays at half rate however many blocks it has.
    few = lp.LoopCost("triplet", 6.0, {"convert": 1.0}, 1.0, 8)
    assert few.seconds(units, 1000, 256, p) == pytest.approx(2 * units / 132 / 16 / p.clock)
    # A launch with units and a loop is priced by the loop (and the memory bound), not by its flops.
    l = lp.Launch("k", (264, 1, 1), (16, 16, 1), 0.0, 1e15, 1e15, 264, units, loop)
    assert l.work(p) == pytest.approx(units / 132 / 16 / p.clock) and l.bound(p) == "convert"
    assert lp.Launch("k", (264, 1, 1), (16, 16, 1), 1e12, 0.0, 0.0, 264, units, loop).bound(p) == "memory"


def test_priced_kernels_have_counted_loops(rec):
    # Every triplet kernel and product of the training ops' float32 plans is priced from its counted loop.
    for op in ("rkd_distance_loss", "rkd_angle_loss", "RKDLoss"):
        for products in ("float64", "float32"):
            for l in rec.run(op, 128, 512, products):
                if l.kernel.startswith(("angle_loss_sum", "angle_passes", "gram_partial", "grad_gemm")):
                    assert l.loop is not None and l.units > 0, (op, products, l.kernel)


def test_check_targets(lp):
    one = lp.Launch("k", (1, 1, 1), (256, 1, 1), 0.0, 0.0, 0.0, 1)
    ok = [("rkd_distance_loss", 32, 512, [one] * lp.TARGETS["rkd_distance_loss"])]
    assert lp.violations(ok) == []
    over = [("rkd_distance_loss", 32, 512, [one] * (lp.TARGETS["rkd_distance_loss"] + 1))]
    assert len(lp.violations(over)) == 1
    # Above N = 256 the count targets do not apply.
    assert lp.violations([("rkd_distance_loss", 1024, 512, [one] * 100)]) == []


def test_report_says_estimate(lp, capsys):
    assert lp.main(["--ops", "pairwise_distance", "--sizes", "typical"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATES FROM A MODEL" in out and "| pairwise_distance | 32 | 25088 |" in out


def test_grad_split(rec):
    # N = 512, D = 512: 8 x 8 output tiles of the W x X product, at most half
    # an H200, so its 512 samples are split in two (at least 256 each) and a
    # finish launch sums the halves; at N = 1024 its 128 tiles go unsplit.
    grad = [l for l in rec.run("pairwise_distance", 512, 512) if l.kernel.startswith("grad_")]
    assert [(l.kernel.split("<")[0], l.grid) for l in grad] == [("grad_gemm", (8, 8, 2)), ("grad_finish", (1024, 1, 1))]
    # At N = 1024 its 128 tiles go unsplit, square (more than half an H200: slim tiles would not pay).
    grad = [l for l in rec.run("pairwise_distance", 1024, 512) if l.kernel.startswith("grad_")]
    assert [(l.kernel.split("<")[0], l.grid) for l in grad] == [("grad_gemm", (8, 16, 1))]


def test_slow_fp64_reductions_leave_one_block_sooner(rec):
    # On a GPU with slow float64 (ratio 64) the reductions run in one block only up to N = 16; an
    # H200 (ratio 2) keeps one block up to N = 64.
    fast = kernels(rec.run("rkd_distance_loss", 32, 512, fp64_ratio=2))
    slow = kernels(rec.run("rkd_distance_loss", 32, 512, fp64_ratio=64))
    assert "reduce_seq" in fast and "group_row_sums" not in fast
    assert "reduce_seq" not in slow and slow.count("group_row_sums") == 2
    assert "reduce_seq" in kernels(rec.run("rkd_distance_loss", 16, 512, fp64_ratio=64))


def test_sharded_rows_split_k(rec):
    # Rank 0 of 8 holding N = 1024 rows' pair rows: 128 rows, all 16 column tiles of both row tiles, K = 512
    # in 8 splits of 64 features (the most D allows; 32 tiles are far from a few hundred blocks). The
    # norms of all N rows come from the first row tile's blocks. The backward: the weights, the W x X product
    # (16 output tiles: its sum over the 1024 samples split, then finished).
    n, d, rows = 1024, 512, 128
    launches = rec.run("pair_matrix_rows/8", n, d)
    assert kernels(launches) == ["centre_columns", "gram_partial", "gram_finish", "weights", "grad_gemm",
                                 "grad_finish"]
    g = launches[1]
    assert g.grid == (2 * 16 * 8, 1, 1)
    assert g.flops64 == 2 * 16 * 64 * 64 * 2 * d + 2 * n * d
    # xc read; 8 slices of the 128 x N rows and of the N norms written.
    assert g.bytes == 8 * (n * d + 8 * rows * n + 8 * n)
    assert launches[2].grid == (rows, 1, 1)
