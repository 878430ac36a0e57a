"""Box operations, NMS and COCO metrics."""

from rtdet.ops.boxes import (
    box_area,
    boxes_to_input,
    boxes_to_original,
    clip_boxes,
    cxcywh_to_xyxy,
    denormalize_boxes,
    elementwise_iou,
    normalize_boxes,
    pairwise_iou,
    scale_boxes,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)
from rtdet.ops.metrics import (
    COCOEvaluator,
    COCOMetrics,
    coco_predictions,
    evaluate_coco,
    load_predictions_json,
    save_predictions_json,
)
from rtdet.ops.nms import batched_nms, batched_nms_torch, dense_nms, nms, nms_torch

__all__ = [
    "box_area",
    "boxes_to_input",
    "boxes_to_original",
    "clip_boxes",
    "cxcywh_to_xyxy",
    "denormalize_boxes",
    "elementwise_iou",
    "normalize_boxes",
    "pairwise_iou",
    "scale_boxes",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
    "COCOEvaluator",
    "COCOMetrics",
    "coco_predictions",
    "evaluate_coco",
    "load_predictions_json",
    "save_predictions_json",
    "batched_nms",
    "batched_nms_torch",
    "dense_nms",
    "nms",
    "nms_torch",
]
