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
priors; ``tests/losses/test_rtmdet.py`` checks the assigner against the reference's per-image loop.
"""

from __future__ import annotations

from typing import Any

import torch

from rtdet.losses.assigners.dsl import DynamicSoftLabelAssigner
from rtdet.losses.base import Criterion
from rtdet.losses.common import quality_focal_loss
from rtdet.ops.boxes import elementwise_iou, ltrb_to_xyxy
from rtdet.ops.targets import batch_targets
from rtdet.utils.schema import Setting

__all__ = ["RTMDetCriterion"]

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
