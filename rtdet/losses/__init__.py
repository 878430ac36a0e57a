"""Family losses (one module per family, each criterion a :class:`~rtdet.losses.base.Criterion`), their
assigners, the padded targets they share, and the element-wise classification losses."""

from rtdet.losses.assigners import (
    Assignment,
    DSLAssignment,
    DynamicSoftLabelAssigner,
    HungarianMatcher,
    TaskAlignedAssigner,
)
from rtdet.losses.base import Criterion
from rtdet.losses.common import matchability_aware_loss, quality_focal_loss, sigmoid_focal_loss, varifocal_loss
from rtdet.losses.dfine import DFineCriterion
from rtdet.losses.rtdetr import RTDETRCriterion
from rtdet.losses.rtmdet import RTMDetCriterion
from rtdet.losses.yolov9 import YOLOCriterion, dfl_loss
from rtdet.ops.targets import PaddedTargets, batch_targets, pad_targets

__all__ = [
    "PaddedTargets",
    "batch_targets",
    "pad_targets",
    "quality_focal_loss",
    "sigmoid_focal_loss",
    "varifocal_loss",
    "matchability_aware_loss",
    "Criterion",
    "Assignment",
    "DSLAssignment",
    "DynamicSoftLabelAssigner",
    "HungarianMatcher",
    "TaskAlignedAssigner",
    "DFineCriterion",
    "RTDETRCriterion",
    "RTMDetCriterion",
    "YOLOCriterion",
    "dfl_loss",
]
