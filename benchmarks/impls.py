"""Every implementation the suites compare, per op.

"tensor" ops map x to a relation tensor; "loss" ops map (student, teacher) to
a scalar; "rkd_loss" is the full objective RKDLoss(25, 50), both terms.
Implementations:

  ours                 the fused rkd_ext op
  ours_materialised    the loss composed from our relation op and F.smooth_l1_loss,
                       so both relation tensors exist in memory at once
  ours_separate        (rkd_loss) our two losses called separately, weighted and added: each builds
                       its own pair matrices and runs its own gradient product
  reference            rkd_ext.reference, the formulation of the authors' code
  reference_compiled   the same under torch.compile, specialised to the shape
                       (the suites reset dynamo before each case, so every case
                       compiles afresh and never hits the recompile limit)
  cdist                torch.cdist (distance ops)
  law_of_cosines       the angle tensor from squared distances in plain PyTorch (angle ops)
"""
import torch
import torch.nn.functional as F

import rkd_ext
from rkd_ext import reference as R

from . import baselines as B

FORWARD, FORWARD_BACKWARD = "forward", "forward_backward"
MODES = (FORWARD, FORWARD_BACKWARD)


def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def _ours_materialised_normalized_distance(x):
    return B.offdiag_mean_normalize(rkd_ext.pairwise_distance(x))


def _ours_materialised_distance_loss(student, teacher):
    return F.smooth_l1_loss(rkd_ext.normalized_distance(student), rkd_ext.normalized_distance(teacher))


def _ours_materialised_angle_loss(student, teacher):
    return F.smooth_l1_loss(rkd_ext.angle_tensor(student), rkd_ext.angle_tensor(teacher))


def _ours_separate_rkd_loss(student, teacher):
    return 25 * rkd_ext.rkd_distance_loss(student, teacher) + 50 * rkd_ext.rkd_angle_loss(student, teacher)


def _reference_rkd_loss(student, teacher):
    return 25 * R.distance_loss(student, teacher) + 50 * R.angle_loss(student, teacher)


KIND = {
    "pairwise_distance": "tensor",
    "normalized_distance": "tensor",
    "distance_loss": "loss",
    "angle_tensor": "tensor",
    "angle_loss": "loss",
    "rkd_loss": "loss",
}

IMPLS = {
    "pairwise_distance": {
        "ours": rkd_ext.pairwise_distance,
        "reference": R.pairwise_distance,
        "reference_compiled": _compiled(R.pairwise_distance),
        "cdist": B.cdist_distance,
    },
    "normalized_distance": {
        "ours": rkd_ext.normalized_distance,
        "ours_materialised": _ours_materialised_normalized_distance,
        "reference": R.normalized_distance,
        "reference_compiled": _compiled(R.normalized_distance),
        "cdist": B.cdist_normalized_distance,
    },
    "distance_loss": {
        "ours": rkd_ext.rkd_distance_loss,
        "ours_materialised": _ours_materialised_distance_loss,
        "reference": R.distance_loss,
        "reference_compiled": _compiled(R.distance_loss),
        "cdist": B.cdist_distance_loss,
    },
    "angle_tensor": {
        "ours": rkd_ext.angle_tensor,
        "reference": R.angle_tensor,
        "reference_compiled": _compiled(R.angle_tensor),
        "law_of_cosines": B.law_of_cosines_angle,
    },
    "angle_loss": {
        "ours": rkd_ext.rkd_angle_loss,
        "ours_materialised": _ours_materialised_angle_loss,
        "reference": R.angle_loss,
        "reference_compiled": _compiled(R.angle_loss),
        "law_of_cosines": B.law_of_cosines_angle_loss,
    },
    "rkd_loss": {
        "ours": rkd_ext.RKDLoss(25.0, 50.0),
        "ours_separate": _ours_separate_rkd_loss,
        "reference": _reference_rkd_loss,
    },
}
