"""rkd_ext: Relational Knowledge Distillation losses with hand-written C++/CUDA kernels."""
from . import reference
from ._ext import build_info
from .functional import normalized_distance, pairwise_distance, rkd_distance_loss
from .losses import RKDDistanceLoss

__version__ = "0.1.0"

__all__ = [
    "RKDDistanceLoss",
    "build_info",
    "normalized_distance",
    "pairwise_distance",
    "reference",
    "rkd_distance_loss",
]
