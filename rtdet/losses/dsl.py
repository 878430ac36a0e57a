"""RTMDet's training loss: dynamic soft-label assignment, quality focal loss and IoU-weighted GIoU
(mmdetection 3.x ``DynamicSoftLabelAssigner`` + ``RTMDetHead.loss_by_feat``), for a whole batch at once.

Assignment, for every image b, prior n (a point p with stride s) and ground-truth box g:

* candidates: the priors whose point lies strictly inside at least one GT box of the image ("valid");
* cost(n, g) = soft classification cost + IoU cost + soft centre prior, with
  - soft cls = sum over classes of BCE(logit, y) * |y - sigmoid(logit)|^2, y = IoU(pred_n, g) on g's class
    and 0 elsewhere,
  - IoU cost = -log(IoU(pred_n, g) + 1e-7) * iou_weight (3),
  - centre prior = 10^(|p - centre(g)| / s - soft_center_radius) (radius 3);
* dynamic k(g) = max(1, floor(sum of the topk (13) largest IoUs of g with valid priors));
  g takes its k lowest-cost valid priors;
* a prior taken by several boxes keeps the one of lowest cost (over all the image's boxes).

Losses: QFL with soft target = the matched IoU on the matched class (0 elsewhere), GIoU between the
decoded box and its GT weighted by the matched IoU; both divided by the sum of matched IoUs (averaged over
DDP processes, at least 1). Predictions are detached for the assignment, as in the reference.

Shapes: B images, N priors, M padded GT slots per image, C classes. Nothing loops over images, boxes or
priors; ``tests/losses/test_dsl.py`` checks it against the reference's per-image loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.losses.base import Criterion
from rtdet.losses.common import quality_focal_loss
from rtdet.ops.boxes import elementwise_iou, ltrb_to_xyxy, pairwise_iou
from rtdet.ops.targets import batch_targets
from rtdet.utils.schema import Setting

__all__ = ["DSLAssignment", "DynamicSoftLabelAssigner", "RTMDetCriterion"]

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


class RTMDetCriterion(Criterion):
    """RTMDet loss: ``criterion(outputs, batch) -> (total, {"qfl": ..., "giou": ...})``.

    outputs: the head's :class:`~rtdet.nn.heads.rtmdet.RTMDetTrainOutput` (cls_logits [B, N, C], ltrb
    [B, N, 4] pixels, points [N, 2], strides [N]); batch: the Batch dict (``img`` gives the input size,
    ``targets`` the padded GT when the trainer built them). Settings: :attr:`SETTINGS` (defaults = the
    mmdetection RTMDet configs).
    """

    SETTINGS: tuple[Setting, ...] = (
        Setting("qfl_weight", 1.0, float, "quality focal (classification) loss weight", low=0.0),
        Setting("qfl_beta", 2.0, float, "quality focal loss exponent beta", low=0.0),
        Setting("giou_weight", 2.0, float, "GIoU box loss weight", low=0.0),
        Setting("dsl_topk", 13, int, "dynamic soft-label assigner: top IoUs summed for each box's dynamic k", low=1),
        Setting("dsl_center_radius", 3.0, float, "dynamic soft-label assigner: soft centre prior radius (strides)",
                low=0.0),
        Setting("dsl_iou_weight", 3.0, float, "dynamic soft-label assigner: weight of the -log(IoU) cost", low=0.0),
    )

    def __init__(self, nc: int, **hyp: Any):
        super().__init__(nc, **hyp)
        h = self.hyp
        self.assigner = DynamicSoftLabelAssigner(h["dsl_topk"], h["dsl_center_radius"], h["dsl_iou_weight"])

    def forward(self, outputs, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cls_logits, ltrb, points, strides = self._unpack(outputs)
        self._check_classes(cls_logits)
        device = cls_logits.device
        with torch.autocast(device.type, enabled=False):
            cls_logits, ltrb, points, strides = cls_logits.float(), ltrb.float(), points.float(), strides.float()
            b = cls_logits.shape[0]
            targets = batch_targets(batch, b, self.nc)
            gt_boxes = targets.xyxy(self._input_shape(batch, points, strides)).to(device)
            boxes = ltrb_to_xyxy(points, ltrb)  # [B, N, 4] xyxy
            a = self.assigner(cls_logits.detach(), boxes.detach(), points, strides, targets.cls.to(device), gt_boxes,
                              targets.mask.to(device))
            norm = self.normaliser(a.iou.sum())
            img, prior = a.fg.nonzero(as_tuple=True)  # the positives
            pos_iou = a.iou[img, prior]
            score = torch.zeros_like(cls_logits)  # soft target: the matched IoU on the matched class
            score[img, prior, a.labels[img, prior]] = pos_iou
            qfl = quality_focal_loss(cls_logits, score, self.hyp["qfl_beta"]).sum()
            giou = elementwise_iou(boxes[img, prior], gt_boxes[img, a.gt_index[img, prior]], kind="giou")
            box = ((1 - giou) * pos_iou).sum() + 0.0 * ltrb.sum()  # the zero keeps ltrb in the graph
            logs = {"qfl": self.hyp["qfl_weight"] * qfl / norm, "giou": self.hyp["giou_weight"] * box / norm}
        total = logs["qfl"] + logs["giou"]
        return total, {k: v.detach() for k, v in logs.items()}

    @staticmethod
    def _unpack(outputs) -> tuple[torch.Tensor, ...]:
        if not isinstance(outputs, tuple | list) or len(outputs) != 4:
            raise ValueError("RTMDetCriterion: outputs must be the head's training tuple (cls_logits, ltrb, points, "
                             f"strides); got {type(outputs).__name__}. Is the head in eval mode?")
        cls_logits, ltrb, points, strides = outputs
        if cls_logits.dim() != 3 or ltrb.shape != (*cls_logits.shape[:2], 4) or points.shape != (ltrb.shape[1], 2):
            raise ValueError(f"RTMDetCriterion: expected cls_logits [B, N, C], ltrb [B, N, 4], points [N, 2]; got "
                             f"{tuple(cls_logits.shape)}, {tuple(ltrb.shape)}, {tuple(points.shape)}")
        return cls_logits, ltrb, points, strides

    def _check_classes(self, cls_logits: torch.Tensor) -> None:
        if cls_logits.shape[-1] != self.nc:
            raise ValueError(f"RTMDetCriterion: built for nc={self.nc} but the head predicts {cls_logits.shape[-1]} "
                             f"classes; build the criterion with the model's nc")

    def _input_shape(self, batch: dict, points: torch.Tensor, strides: torch.Tensor) -> tuple[int, int]:
        """(h, w) of the network input: the batch's image tensor, else the first level's grid x stride."""

        def from_priors() -> tuple[int, int]:  # the first level's last corner + one stride
            s = float(strides[0])
            first = strides == strides[0]
            return int(round(float(points[first, 1].max()) + s)), int(round(float(points[first, 0].max()) + s))

        return self.input_size(batch, from_priors)
