"""Dynamic soft-label assignment (mmdetection 3.x ``DynamicSoftLabelAssigner``), as RTMDet uses it, for a
whole batch at once (the rule: :mod:`rtdet.losses.rtmdet`'s docstring).

Shapes: B images, N priors, M padded GT slots per image, C classes. Nothing loops over images, boxes or
priors; ``tests/losses/test_rtmdet.py`` checks it against the reference's per-image loop.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.ops.boxes import pairwise_iou

__all__ = ["DSLAssignment", "DynamicSoftLabelAssigner"]

IOU_EPS = 1e-7  # inside the log of the IoU cost (mmdetection's EPS)
_LARGEST = torch.finfo(torch.float32).max / 4  # a finite cost for valid priors whose centre prior overflowed


class DSLAssignment(NamedTuple):
    """Per prior: whether it is a positive, the local GT slot it matched, that box's class and the IoU of
    the predicted box with it (0 for negatives)."""

    fg: torch.Tensor  # [B, N] bool
    gt_index: torch.Tensor  # [B, N] int64 (0 for negatives)
    labels: torch.Tensor  # [B, N] int64 (0 for negatives)
    iou: torch.Tensor  # [B, N] float32


class DynamicSoftLabelAssigner(nn.Module):
    """Batched dynamic soft-label assignment (see the module docstring for the rule).

    forward(logits [B, N, C], boxes [B, N, 4] xyxy pixels, points [N, 2], strides [N], gt_labels [B, M],
    gt_boxes [B, M, 4] xyxy pixels, gt_mask [B, M] bool) -> :class:`DSLAssignment`. No gradient flows.
    """

    def __init__(self, topk: int = 13, soft_center_radius: float = 3.0, iou_weight: float = 3.0):
        super().__init__()
        self.topk, self.soft_center_radius, self.iou_weight = int(topk), float(soft_center_radius), float(iou_weight)

    def extra_repr(self) -> str:
        return f"topk={self.topk}, soft_center_radius={self.soft_center_radius}, iou_weight={self.iou_weight}"

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor, strides: torch.Tensor,
                gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor) -> DSLAssignment:
        b, n, _ = logits.shape
        m = gt_boxes.shape[1]
        if m == 0 or n == 0:
            zeros = torch.zeros((b, n), dtype=torch.int64, device=logits.device)
            return DSLAssignment(zeros.bool(), zeros, zeros, zeros.float())
        logits, boxes, gt_boxes = logits.float(), boxes.float(), gt_boxes.float()
        inside = _points_inside(points, gt_boxes) & gt_mask[:, None, :]  # [B, N, M]
        valid = inside.any(-1)  # [B, N] candidates: inside some box of their image
        ious = pairwise_iou(boxes, gt_boxes)  # [B, N, M]
        cost = self._cost(logits, ious, points, strides, gt_labels, gt_boxes)
        pair_ok = valid[:, :, None] & gt_mask[:, None, :]
        cost = torch.where(pair_ok, cost.nan_to_num(nan=_LARGEST, posinf=_LARGEST).clamp(max=_LARGEST),
                           torch.full_like(cost, float("inf")))
        matched = self._dynamic_k(cost, torch.where(valid[:, :, None], ious, torch.zeros_like(ious)), gt_mask)
        count = matched.sum(-1)  # [B, N] boxes that took each prior
        fg = (count > 0) & valid
        gt_index = torch.where(count > 1, cost.argmin(-1), matched.to(torch.uint8).argmax(-1))
        gt_index = torch.where(fg, gt_index, torch.zeros_like(gt_index))
        iou = torch.where(fg, ious.gather(2, gt_index[..., None]).squeeze(-1), torch.zeros_like(fg, dtype=torch.float))
        labels = torch.where(fg, gt_labels.gather(1, gt_index), torch.zeros_like(gt_index))
        return DSLAssignment(fg, gt_index, labels, iou)

    def _cost(self, logits: torch.Tensor, ious: torch.Tensor, points: torch.Tensor, strides: torch.Tensor,
              gt_labels: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        """cost [B, N, M] = soft cls + IoU + centre prior, for every prior and GT slot."""
        centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # [B, M, 2]
        dx = points[None, :, None, 0] - centres[:, None, :, 0]  # [B, N, M] (no [B, N, M, 2] temporary)
        dy = points[None, :, None, 1] - centres[:, None, :, 1]
        distance = (dx * dx + dy * dy).sqrt() / strides[None, :, None]
        centre_prior = torch.pow(10.0, distance - self.soft_center_radius)
        iou_cost = -torch.log(ious + IOU_EPS) * self.iou_weight
        # Soft cls cost summed over classes without a [B, N, M, C] tensor: every class but g's has target 0,
        # so sum_c = (sum over all classes of the target-0 term) - (g's class target-0 term) + (g's term).
        prob = logits.sigmoid()
        negative = F.softplus(logits) * prob.pow(2)  # BCE(x, 0) * sigmoid(x)^2
        x_g = logits.gather(2, gt_labels[:, None, :].expand(-1, logits.shape[1], -1))  # [B, N, M]
        p_g = x_g.sigmoid()
        positive = F.binary_cross_entropy_with_logits(x_g, ious, reduction="none") * (ious - p_g).abs().pow(2)
        cls_cost = negative.sum(-1, keepdim=True) - F.softplus(x_g) * p_g.pow(2) + positive
        return cls_cost + iou_cost + centre_prior

    def _dynamic_k(self, cost: torch.Tensor, valid_ious: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
        """[B, N, M] bool: each real GT slot g takes its k(g) lowest-cost priors (k <= topk, so one top-k
        call gives every column's candidates)."""
        n = cost.shape[1]
        kmax = min(self.topk, n)
        k = valid_ious.topk(kmax, dim=1).values.sum(1).int().clamp(min=1)  # [B, M]
        k = torch.where(gt_mask, k, torch.zeros_like(k))
        order = cost.topk(kmax, dim=1, largest=False).indices  # [B, kmax, M]
        take = torch.arange(kmax, device=cost.device)[None, :, None] < k[:, None, :]
        return torch.zeros_like(cost, dtype=torch.bool).scatter_(1, order, take)


def _points_inside(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """[B, N, M] bool: point n strictly inside box m of image b (points [N, 2], boxes [B, M, 4] xyxy)."""
    x, y = points[None, :, None, 0], points[None, :, None, 1]
    x1, y1, x2, y2 = (boxes[:, None, :, i] for i in range(4))
    return (x > x1) & (y > y1) & (x < x2) & (y < y2)  # = min(x - x1, y - y1, x2 - x, y2 - y) > 0
