"""Box formats, IoU family and coordinate mapping.

Formats (last dimension of size 4):
  * ``xyxy``   corners (x1, y1, x2, y2)
  * ``cxcywh`` centre and size (cx, cy, w, h) — the Batch contract and DETR heads use it, normalised
  * ``xywh``   top-left corner and size (x, y, w, h) — COCO json

Conversions and scale/clip helpers accept torch tensors or NumPy arrays of any leading shape and return
the same kind; IoU functions are torch only. Boxes with x2 < x1 are not repaired: IoU treats a negative
extent as empty overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "xyxy_to_cxcywh",
    "cxcywh_to_xyxy",
    "xyxy_to_xywh",
    "xywh_to_xyxy",
    "box_area",
    "elementwise_iou",
    "pairwise_iou",
    "scale_boxes",
    "normalize_boxes",
    "denormalize_boxes",
    "clip_boxes",
    "boxes_to_original",
    "boxes_to_input",
    "ltrb_to_xyxy",
    "xyxy_to_ltrb",
]

IOU_KINDS = ("iou", "giou", "diou", "ciou")


def _stack(parts: Sequence, like):
    return torch.stack(list(parts), -1) if isinstance(like, torch.Tensor) else np.stack(parts, -1)


def _check4(boxes, fn: str) -> None:
    if boxes.shape[-1] != 4:
        raise ValueError(f"{fn}: boxes must have 4 values in the last dimension, got shape {tuple(boxes.shape)}")


def xyxy_to_cxcywh(boxes):
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    _check4(boxes, "xyxy_to_cxcywh")
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return _stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], boxes)


def cxcywh_to_xyxy(boxes):
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    _check4(boxes, "cxcywh_to_xyxy")
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return _stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], boxes)


def xyxy_to_xywh(boxes):
    """(x1, y1, x2, y2) -> COCO (x, y, w, h) with (x, y) the top-left corner."""
    _check4(boxes, "xyxy_to_xywh")
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return _stack([x1, y1, x2 - x1, y2 - y1], boxes)


def xywh_to_xyxy(boxes):
    """COCO (x, y, w, h) -> (x1, y1, x2, y2)."""
    _check4(boxes, "xywh_to_xyxy")
    x, y, w, h = (boxes[..., i] for i in range(4))
    return _stack([x, y, x + w, y + h], boxes)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of xyxy boxes, [..., 4] -> [...]."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def elementwise_iou(a: torch.Tensor, b: torch.Tensor, kind: str = "iou", eps: float = 1e-7) -> torch.Tensor:
    """IoU-family overlap of xyxy boxes paired element by element (shapes broadcast), [..., 4] -> [...].

    kind: ``iou``; ``giou`` (minus the empty share of the enclosing box, Rezatofighi et al. 2019);
    ``diou`` (minus centre distance² / enclosing diagonal², Zheng et al. 2020); ``ciou`` (DIoU minus an
    aspect-ratio term α·v, with the trade-off α held constant for the gradient as in the paper).
    ``eps`` keeps the divisions finite for degenerate boxes.
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"elementwise_iou: kind must be one of {IOU_KINDS}, got {kind!r}")
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    wa, ha, wb, hb = ax2 - ax1, ay2 - ay1, bx2 - bx1, by2 - by1
    inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0) * (
        torch.minimum(ay2, by2) - torch.maximum(ay1, by1)
    ).clamp(min=0)
    union = wa * ha + wb * hb - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou
    # enclosing box
    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    if kind == "giou":
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    diag2 = cw.pow(2) + ch.pow(2) + eps
    centre2 = ((bx1 + bx2 - ax1 - ax2).pow(2) + (by1 + by2 - ay1 - ay2).pow(2)) / 4
    if kind == "diou":
        return iou - centre2 / diag2
    v = (4 / math.pi**2) * (torch.atan(wb / (hb + eps)) - torch.atan(wa / (ha + eps))).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (centre2 / diag2 + v * alpha)


def pairwise_iou(a: torch.Tensor, b: torch.Tensor, kind: str = "iou", eps: float = 1e-7) -> torch.Tensor:
    """IoU-family overlap of every box in ``a`` with every box in ``b``: [..., N, 4] x [..., M, 4] -> [..., N, M].

    Leading dimensions broadcast (a batch of images at once). Same ``kind`` options as elementwise_iou.
    """
    return elementwise_iou(a.unsqueeze(-2), b.unsqueeze(-3), kind=kind, eps=eps)


def scale_boxes(boxes, sx: float, sy: float):
    """Multiply x coordinates by ``sx`` and y coordinates by ``sy`` (any of the three formats)."""
    _check4(boxes, "scale_boxes")
    return boxes * _scale_vector(boxes, (sx, sy, sx, sy))


def _scale_vector(like, values):
    if isinstance(like, torch.Tensor):
        return torch.tensor(values, dtype=like.dtype if like.is_floating_point() else torch.float32,
                            device=like.device)
    return np.asarray(values, dtype=like.dtype if np.issubdtype(like.dtype, np.floating) else np.float64)


def normalize_boxes(boxes, shape: tuple[int, int]):
    """Pixel boxes -> fractions of an image of ``shape = (h, w)``."""
    h, w = shape
    return scale_boxes(boxes, 1.0 / w, 1.0 / h)


def denormalize_boxes(boxes, shape: tuple[int, int]):
    """Normalised boxes -> pixels of an image of ``shape = (h, w)``."""
    h, w = shape
    return scale_boxes(boxes, w, h)


def clip_boxes(boxes, shape: tuple[int, int]):
    """Clip xyxy boxes to an image of ``shape = (h, w)``; returns a new array/tensor."""
    _check4(boxes, "clip_boxes")
    h, w = shape
    if isinstance(boxes, torch.Tensor):
        lo = torch.zeros(4, dtype=boxes.dtype, device=boxes.device)
        hi = torch.tensor((w, h, w, h), dtype=boxes.dtype, device=boxes.device)
        return torch.maximum(torch.minimum(boxes, hi), lo)
    return np.clip(boxes, 0, np.asarray((w, h, w, h), dtype=boxes.dtype))


def _unpack_ratio_pad(ratio_pad) -> tuple[float, float, float, float]:
    try:
        (ry, rx), (pad_x, pad_y) = ratio_pad
        ry, rx, pad_x, pad_y = float(ry), float(rx), float(pad_x), float(pad_y)
    except (TypeError, ValueError):
        raise ValueError(
            f"ratio_pad must be ((ry, rx), (pad_x, pad_y)) as in the Batch contract, got {ratio_pad!r}"
        ) from None
    if rx <= 0 or ry <= 0:
        raise ValueError(f"ratio_pad: scale ratios must be > 0, got (ry, rx) = ({ry}, {rx})")
    return rx, ry, pad_x, pad_y


def boxes_to_original(boxes, ratio_pad, ori_shape: tuple[int, int] | None = None):
    """xyxy boxes in network-input pixels -> original-image pixels.

    ``ratio_pad = ((ry, rx), (pad_x, pad_y))`` describes the forward map ``x_in = x0*rx + pad_x``,
    ``y_in = y0*ry + pad_y`` (Batch contract); this applies its inverse and, when ``ori_shape = (h0, w0)``
    is given, clips to the original image.
    """
    _check4(boxes, "boxes_to_original")
    rx, ry, pad_x, pad_y = _unpack_ratio_pad(ratio_pad)
    out = scale_boxes(boxes - _scale_vector(boxes, (pad_x, pad_y, pad_x, pad_y)), 1.0 / rx, 1.0 / ry)
    return clip_boxes(out, ori_shape) if ori_shape is not None else out


def boxes_to_input(boxes, ratio_pad):
    """xyxy boxes in original-image pixels -> network-input pixels (the forward map of ``ratio_pad``)."""
    _check4(boxes, "boxes_to_input")
    rx, ry, pad_x, pad_y = _unpack_ratio_pad(ratio_pad)
    return scale_boxes(boxes, rx, ry) + _scale_vector(boxes, (pad_x, pad_y, pad_x, pad_y))


def ltrb_to_xyxy(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """Distances (left, top, right, bottom) from points (x, y) -> xyxy boxes: (x - l, y - t, x + r, y + b).

    points [..., 2], ltrb [..., 4] (broadcast) -> [..., 4]; the anchor-free heads' box coding.
    """
    _check4(ltrb, "ltrb_to_xyxy")
    lt, rb = ltrb.chunk(2, -1)
    return torch.cat((points - lt, points + rb), -1)


def xyxy_to_ltrb(points: torch.Tensor, boxes: torch.Tensor, max_dist: float | None = None) -> torch.Tensor:
    """xyxy boxes -> distances (left, top, right, bottom) of their sides from points, the inverse of
    :func:`ltrb_to_xyxy`; with ``max_dist`` clamped to [0, max_dist] (the DFL bin range)."""
    _check4(boxes, "xyxy_to_ltrb")
    x1y1, x2y2 = boxes.chunk(2, -1)
    ltrb = torch.cat((points - x1y1, x2y2 - points), -1)
    return ltrb if max_dist is None else ltrb.clamp(0, max_dist)
