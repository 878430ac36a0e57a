"""Family losses, the padded targets they share, and the element-wise classification losses."""

from rtdet.losses.common import quality_focal_loss, sigmoid_focal_loss, varifocal_loss
from rtdet.losses.detr import HungarianMatcher, RTDETRCriterion
from rtdet.ops.targets import PaddedTargets, batch_targets, pad_targets

__all__ = [
    "PaddedTargets",
    "batch_targets",
    "pad_targets",
    "quality_focal_loss",
    "sigmoid_focal_loss",
    "varifocal_loss",
    "HungarianMatcher",
    "RTDETRCriterion",
]
