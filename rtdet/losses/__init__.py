"""Family losses, the padded targets they share, and the element-wise classification losses."""

from rtdet.losses.common import (
    PaddedTargets,
    batch_targets,
    pad_targets,
    quality_focal_loss,
    sigmoid_focal_loss,
    varifocal_loss,
)
from rtdet.losses.detr import HungarianMatcher, RTDETRCriterion

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
