"""YOLOv9 (Wang et al. 2024): the anchor-free DFL heads (single and dual-branch), task-aligned assignment."""

from rtdet.families.record import CFG, Family, register_family
from rtdet.losses.yolov9 import YOLOCriterion
from rtdet.nn.heads.base import DetectionHead
from rtdet.nn.heads.yolo import DDetect, Detect, DualDDetect


def yolo_criterion_args(head: DetectionHead) -> dict:
    """The DFL loss decodes with the head's strides and distribution size."""
    return {"nc": head.nc, "strides": head.strides, "reg_max": head.reg_max}


YOLOV9 = register_family(Family(
    name="yolov9",
    heads=(DDetect, DualDDetect, Detect),
    criterion=YOLOCriterion,
    criterion_args=yolo_criterion_args,
    recipe=CFG / "recipes" / "yolov9.yaml",
    demo=CFG / "demo" / "yolov9.yaml",
    pipelines=(CFG / "pipelines" / "yolov9.yaml", CFG / "pipelines" / "ultralytics.yaml"),
    converters=("rtdet.io.ultralytics", "rtdet.io.yolov9"),  # the Ultralytics port and the official repo
))
