"""The arithmetic of the distance family's O(N^2 D) products: a process-wide setting.

Like ``torch.backends.cuda.matmul.allow_tf32``, one setting for the whole
process, stored in the compiled extension and read by every op call when it
starts (so it also holds inside compiled graphs). It concerns the Gram
product behind the squared distances and the ``W x X`` product of the
gradient of ``pairwise_distance``, ``normalized_distance``,
``rkd_distance_loss`` and ``rkd_loss`` with ``angle_weight=0``, for
float32/float16/bfloat16 features (float64 features always get float64
products):

``"auto"`` (the default)
    On a GPU, float32 products when the device's float64 rate is at most
    1/8 of its float32 rate (``cudaDevAttrSingleToDoublePrecisionPerfRatio``
    >= 8: consumer GPUs, whose float64 runs at 1/64), float64 on GPUs with
    fast float64 (A100, H100, H200: ratio 2). On the CPU, float32 products
    for centred features within [1e-10, 1e10] in magnitude, float64 otherwise.
``"float32"``
    float32 products wherever the features are not float64 (the CPU still
    takes float64 outside its float32 range).
``"float64"``
    float64 products everywhere.

Accuracy, what float32 mode keeps (centring, near pairs recomputed in float64,
fixed-order sums, no TF32) and why the angle family stays float64:
docs/numerics.md.
"""
import contextlib

from . import _ext

__all__ = ["MODES", "get_product_precision", "product_precision", "set_product_precision"]

# rkd::ProductPrecision's codes (csrc/core/product_precision.h).
MODES = ("auto", "float64", "float32")
_fallback_mode = "auto"  # without the compiled extension the setting has no effect


def set_product_precision(mode):
    """Set the product precision of the distance family: "auto", "float64" or "float32"."""
    global _fallback_mode
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"set_product_precision: mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    if _ext.available:
        _ext.C._set_product_precision(MODES.index(mode))
    else:
        _fallback_mode = mode


def get_product_precision():
    """The current product precision: "auto", "float64" or "float32"."""
    return MODES[_ext.C._product_precision()] if _ext.available else _fallback_mode


@contextlib.contextmanager
def product_precision(mode):
    """Within the block, set_product_precision(mode); the previous setting after it.

    Process-wide, not per thread: other threads' op calls see the setting too.
    """
    previous = get_product_precision()
    set_product_precision(mode)
    try:
        yield
    finally:
        set_product_precision(previous)
