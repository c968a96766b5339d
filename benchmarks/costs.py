"""Memory and CPU-time estimates from N and D, to skip a case before running it.

Memory: bytes above the inputs, from the peak resident memory measured on CPU
(float32) with terms in N^2 D, N^3 and N^2, rounded up. They hold on CUDA too:
the allocator's peak follows the same tensors. bfloat16 cases are estimated as
float32: most of their temporaries halve, but smooth-L1's upcast and our
float64 N x N buffers do not (bfloat16 measured at most 10% above float32,
within the rounding up).

Time: nanoseconds per unit of work on one CPU core, measured on a busy 2-core
x86 machine and rounded up, so they err towards skipping. They decide skips,
not predictions.
"""
import torch

from .impls import FORWARD as FWD, FORWARD_BACKWARD as FWD_BWD, KIND

# bytes per unit, float32: {(op family, impl, mode): (N^2 D, N^3, N^2)}
_ANGLE_MEMORY = {
    # Forward: the output alone, written straight into its dtype (no N^3 staging buffer; measured 4.04 bytes
    # per N^3 at N=512). The CPU backward adds a float64 copy of the upstream gradient and its (j, k)-symmetrised
    # sum; the CUDA one needs less.
    ("angle_tensor", "ours", FWD): (0, 4, 32),
    ("angle_tensor", "ours", FWD_BWD): (0, 20, 32),
    ("angle_tensor", "reference", FWD): (8, 4, 0),  # two N x N x D difference tensors, the output
    ("angle_tensor", "reference", FWD_BWD): (24, 4, 0),
    ("angle_tensor", "law_of_cosines", FWD): (0, 12, 32),
    ("angle_tensor", "law_of_cosines", FWD_BWD): (0, 28, 32),
    ("angle_loss", "ours", FWD): (0, 0, 64),  # a few float64 N x N matrices
    ("angle_loss", "ours", FWD_BWD): (0, 0, 64),
    ("angle_loss", "ours_materialised", FWD): (0, 20, 32),
    ("angle_loss", "ours_materialised", FWD_BWD): (0, 24, 32),
    ("angle_loss", "reference", FWD): (8, 12, 0),
    ("angle_loss", "reference", FWD_BWD): (24, 12, 0),
    ("angle_loss", "law_of_cosines", FWD): (0, 16, 32),
    ("angle_loss", "law_of_cosines", FWD_BWD): (0, 28, 32),
}
# Distance ops of every implementation: a handful of N x N matrices.
_DISTANCE_MEMORY = {FWD: 32, FWD_BWD: 80}
# Per-row buffers: gradients, upcast copies of bfloat16 input, norms.
_ROW_BYTES = 16
# Whatever the size: allocator arenas, per-thread buffers, library workspaces.
_FIXED_BYTES = 32 * 2**20

# ns per unit on one core: {(op family, impl, mode): (N^3 D, N^3, N^2 D, N^2)}
_ANGLE_NS = {
    ("angle_tensor", "ours", FWD): (0, 15, 0.5, 0),
    ("angle_tensor", "ours", FWD_BWD): (0, 50, 1, 0),
    ("angle_tensor", "reference", FWD): (0.1, 5, 5, 0),
    ("angle_tensor", "reference", FWD_BWD): (0.3, 10, 10, 0),
    ("angle_tensor", "law_of_cosines", FWD): (0, 30, 0.5, 0),
    ("angle_tensor", "law_of_cosines", FWD_BWD): (0, 80, 1, 0),
    ("angle_loss", "ours", FWD): (0, 4, 0.5, 0),
    ("angle_loss", "ours", FWD_BWD): (0, 20, 1, 0),
    ("angle_loss", "ours_materialised", FWD): (0, 35, 0.5, 0),
    ("angle_loss", "ours_materialised", FWD_BWD): (0, 100, 1, 0),
    ("angle_loss", "reference", FWD): (0.15, 10, 5, 0),
    ("angle_loss", "reference", FWD_BWD): (0.4, 20, 10, 0),
    ("angle_loss", "law_of_cosines", FWD): (0, 40, 0.5, 0),
    ("angle_loss", "law_of_cosines", FWD_BWD): (0, 120, 1, 0),
}
_DISTANCE_NS = {FWD: (0, 0, 0.1, 10), FWD_BWD: (0, 0, 0.4, 20)}


def _family(impl):
    # The compiled reference allocates and computes no more than the eager one (measured); our two
    # losses called separately cost what each costs.
    # ours_serial, ours_parallel: our ops with the CPU's serial threshold forced (benchmarks.serial_threshold).
    return {"reference_compiled": "reference", "ours_separate": "ours", "ours_serial": "ours",
            "ours_parallel": "ours"}.get(impl, impl)


def memory_bytes(op, impl, mode, n, d):
    """Estimated peak bytes above the inputs."""
    if op == "rkd_loss":  # both terms: at most the two losses' (ours computes them together)
        return sum(memory_bytes(term, impl, mode, n, d) for term in ("distance_loss", "angle_loss"))
    rows = _ROW_BYTES * n * d + _FIXED_BYTES
    if op.startswith("angle"):
        n2d, n3, n2 = _ANGLE_MEMORY[(op, _family(impl), mode)]
        return n2d * n * n * d + n3 * n**3 + n2 * n * n + rows
    return _DISTANCE_MEMORY[mode] * n * n + rows


def input_bytes(op, mode, n, d, dtype):
    """Bytes of the inputs a case holds: features (and the teacher's), the upstream gradient of a tensor op."""
    elem = torch.empty((), dtype=dtype).element_size()
    held = elem * n * d * (2 if KIND[op] == "loss" else 1)
    if mode == FWD_BWD and KIND[op] == "tensor":
        held += elem * (n**3 if op == "angle_tensor" else n * n)
    return held


def cpu_seconds(op, impl, mode, n, d, threads):
    """Estimated seconds for one call on `threads` CPU cores."""
    if op == "rkd_loss":
        return sum(cpu_seconds(term, impl, mode, n, d, threads) for term in ("distance_loss", "angle_loss"))
    if op.startswith("angle"):
        k = _ANGLE_NS[(op, _family(impl), mode)]
    else:
        k = _DISTANCE_NS[mode]
    ns = k[0] * n**3 * d + k[1] * n**3 + k[2] * n * n * d + k[3] * n * n
    return ns * 1e-9 / max(1, threads)
