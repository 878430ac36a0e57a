"""The assigners that pair predictions with ground truth, one per family's loss: Hungarian matching
(RT-DETR), task-aligned assignment (YOLOv9) and dynamic soft-label assignment (RTMDet)."""

from rtdet.losses.assigners.dsl import DSLAssignment, DynamicSoftLabelAssigner
from rtdet.losses.assigners.hungarian import HungarianMatcher
from rtdet.losses.assigners.tal import Assignment, TaskAlignedAssigner

__all__ = ["Assignment", "DSLAssignment", "DynamicSoftLabelAssigner", "HungarianMatcher", "TaskAlignedAssigner"]
