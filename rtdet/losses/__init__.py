"""Family losses and the element-wise classification losses they share."""

from rtdet.losses.common import quality_focal_loss, sigmoid_focal_loss, varifocal_loss
from rtdet.losses.detr import HungarianMatcher, PaddedTargets, RTDETRCriterion, pad_targets

__all__ = [
    "quality_focal_loss",
    "sigmoid_focal_loss",
    "varifocal_loss",
    "HungarianMatcher",
    "PaddedTargets",
    "RTDETRCriterion",
    "pad_targets",
]
