"""rkd_ext: Relational Knowledge Distillation losses with hand-written C++/CUDA kernels."""
from . import reference
from ._ext import build_info
from .functional import (angle_tensor, normalized_distance, pairwise_distance, rkd_angle_loss, rkd_distance_loss,
                         rkd_loss)
from .losses import RKDAngleLoss, RKDDistanceLoss, RKDLoss
from .precision import get_product_precision, product_precision, set_product_precision

__version__ = "0.1.0"

__all__ = [
    "RKDAngleLoss",
    "RKDDistanceLoss",
    "RKDLoss",
    "angle_tensor",
    "build_info",
    "get_product_precision",
    "normalized_distance",
    "pairwise_distance",
    "product_precision",
    "reference",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_loss",
    "set_product_precision",
]
