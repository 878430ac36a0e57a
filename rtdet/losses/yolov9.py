"""The YOLOv9 loss: task-aligned assignment (TOOD, Feng et al. 2021), BCE classification, CIoU and
distribution focal loss (GFL, Li et al. 2020) on the boxes, and PGI's auxiliary branch weighted in.

Follows the official ``utils/loss_tal_dual.py`` / ``utils/tal/assigner.py`` (and the Ultralytics port's
``v8DetectionLoss``, which computes the same thing):

* assignment, per image and branch, on detached predictions in input pixels: a GT's candidates are the
  anchors whose cell centre lies inside it; their alignment is ``score(gt class)^alpha * CIoU^beta``
  (CIoU clamped at 0); each GT takes its ``topk`` best-aligned candidates; an anchor taken by several
  GTs keeps the one it overlaps most (highest CIoU); the target score of a positive is its alignment
  normalised per GT so that the GT's best anchor gets that anchor's CIoU;
* cls: BCE with logits against those soft scores, summed, / max(sum of target scores, 1);
* box: (1 - CIoU) of each positive weighted by its target score, same normaliser; dfl: the two-bin
  cross entropy of each side's distribution at the target distance (stride units, clamped to
  reg_max - 1.01), mean over the four sides, weighted and normalised the same way;
* branches: the main branch counts fully, the auxiliary branch (DualDDetect) ``aux_weight`` = 0.25;
  each branch is assigned on its own and normalised by its own target-score sum;
* total = (box * 7.5 + cls * 0.5 + dfl * 1.5) * batch size: the loss is a sum over images
  (:attr:`YOLOCriterion.reduction` = "sum"), so the official SGD learning rate transfers.

Everything runs as whole-batch tensor code (both branches at once): no Python loop over images, GTs or
anchors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from rtdet.losses.assigners.tal import Assignment, TaskAlignedAssigner
from rtdet.losses.base import Criterion
from rtdet.ops.anchors import anchor_points
from rtdet.ops.boxes import elementwise_iou, ltrb_to_xyxy, xyxy_to_ltrb
from rtdet.ops.targets import batch_targets
from rtdet.utils.schema import Setting

__all__ = ["dfl_loss", "YOLOCriterion"]


def dfl_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss: logits [P, 4, R] over bins 0..R-1, target distances [P, 4] in [0, R-1).

    The target t falls between bins floor(t) and floor(t) + 1; the loss is the cross entropy at each of
    them weighted by the linear-interpolation weights, summed, then averaged over the four sides -> [P].
    """
    left = target.long()
    w_left = (left + 1).to(target.dtype) - target
    flat = logits.reshape(-1, logits.shape[-1])
    ce_left = F.cross_entropy(flat, left.reshape(-1), reduction="none").view(left.shape)
    ce_right = F.cross_entropy(flat, (left + 1).reshape(-1), reduction="none").view(left.shape)
    return (ce_left * w_left + ce_right * (1 - w_left)).mean(-1)


class YOLOCriterion(Criterion):
    """YOLOv9 loss for DDetect / DualDDetect / Detect outputs (see the module docstring).

    ``criterion(outputs, batch) -> (total, {"box", "cls", "dfl"})``: ``outputs`` a
    :class:`~rtdet.nn.heads.yolo.YOLOTrainOutput`, ``batch`` the trainer's batch (its padded targets).
    The logged terms are the gained losses per image (they sum to total / batch size).
    """

    SETTINGS: tuple[Setting, ...] = (
        Setting("box", 7.5, float, "CIoU box loss gain", low=0.0),
        Setting("cls", 0.5, float, "BCE classification loss gain", low=0.0),
        Setting("dfl", 1.5, float, "distribution focal loss gain", low=0.0),
        Setting("tal_topk", 10, int, "task-aligned assigner: candidates kept per GT", low=1),
        Setting("tal_alpha", 0.5, float, "task-aligned assigner: exponent of the class score", low=0.0),
        Setting("tal_beta", 6.0, float, "task-aligned assigner: exponent of the CIoU", low=0.0),
        Setting("aux_weight", 0.25, float, "weight of the PGI auxiliary branch (DualDDetect) in every term",
                low=0.0),
    )
    reduction = "sum"  # the loss is a sum over the batch's images: the trainer sums it over accumulated batches

    def __init__(self, nc: int, strides: Sequence[int], reg_max: int = 16, **hyp: Any):
        super().__init__(nc, **hyp)
        h = self.hyp
        if not strides:
            raise ValueError("YOLOCriterion needs the head's strides (build the model first: head.setup sets them)")
        self.strides, self.reg_max = [int(s) for s in strides], int(reg_max)
        self.gains = {"box": h["box"], "cls": h["cls"], "dfl": h["dfl"]}
        self.aux_weight = h["aux_weight"]
        self.assigner = TaskAlignedAssigner(h["tal_topk"], h["tal_alpha"], h["tal_beta"])
        self.register_buffer("bins", torch.arange(self.reg_max, dtype=torch.float32), persistent=False)

    def repr_fields(self) -> dict[str, Any]:
        return {"strides": self.strides, "reg_max": self.reg_max}

    # ------------------------------------------------------------------ pieces
    def _flatten(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-level maps -> bin logits [B, N, 4, R] and class logits [B, N, C], float32."""
        b = maps[0].shape[0]
        flat = torch.cat([m.float().flatten(2) for m in maps], 2).transpose(1, 2)  # [B, N, 4R + C]
        dist, logits = flat.split((4 * self.reg_max, self.nc), -1)
        return dist.reshape(b, -1, 4, self.reg_max), logits

    def _branches(self, outputs) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
        """The branches' maps (main first) and their weights [K]."""
        main, aux = outputs.main, outputs.aux
        if len(main) != len(self.strides):
            raise ValueError(f"YOLOCriterion was built for {len(self.strides)} levels, got {len(main)} maps")
        branches, weights = [main], [1.0]
        if aux is not None:
            if [a.shape for a in aux] != [m.shape for m in main]:
                raise ValueError(f"auxiliary maps {[tuple(a.shape) for a in aux]} do not match the main maps "
                                 f"{[tuple(m.shape) for m in main]}")
            branches.append(aux)
            weights.append(self.aux_weight)
        return branches, torch.tensor(weights, device=main[0].device)

    # ------------------------------------------------------------------ loss
    def forward(self, outputs, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        branches, weights = self._branches(outputs)
        k = len(branches)
        main = branches[0]
        device, b = main[0].device, main[0].shape[0]
        shapes = [tuple(m.shape[2:]) for m in main]
        with torch.autocast(device.type, enabled=False):
            parts = [self._flatten(br) for br in branches]
            dist = torch.cat([p[0] for p in parts])  # [K*B, N, 4, R], branch-major
            logits = torch.cat([p[1] for p in parts])  # [K*B, N, C]
            points, stride = anchor_points(shapes, self.strides, device, torch.float32)
            img_shape = self.input_size(batch, lambda: (shapes[0][0] * self.strides[0], shapes[0][1] * self.strides[0]))
            targets = batch_targets(batch, b, self.nc)
            gt_boxes = targets.xyxy(img_shape).to(device=device, dtype=torch.float32).repeat(k, 1, 1)
            gt_cls, gt_mask = targets.cls.to(device).repeat(k, 1), targets.mask.to(device).repeat(k, 1)

            ltrb = dist.softmax(-1) @ self.bins  # [K*B, N, 4] stride units
            boxes = ltrb_to_xyxy(points, ltrb)  # grid units of each level
            a = self.assigner(logits.detach().sigmoid(), boxes.detach() * stride, points * stride, gt_cls, gt_boxes,
                              gt_mask)
            norm = a.scores.view(k, -1).sum(-1).clamp(min=1)  # [K] each branch's target-score sum

            cls = F.binary_cross_entropy_with_logits(logits, a.scores, reduction="none").view(k, -1).sum(-1) / norm
            box, dfl = self._box_terms(dist, boxes, points, stride, a, k, b)
            box, dfl = box / norm, dfl / norm
            terms = {"box": (weights * box).sum() * self.gains["box"],
                     "cls": (weights * cls).sum() * self.gains["cls"],
                     "dfl": (weights * dfl).sum() * self.gains["dfl"]}
            total = sum(terms.values()) * b
        return total, {name: v.detach() for name, v in terms.items()}

    def _box_terms(self, dist: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor, stride: torch.Tensor,
                   a: Assignment, k: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised (1 - CIoU) and DFL sums per branch [K], weighted by each positive's target score."""
        row, anchor = a.fg.nonzero(as_tuple=True)
        weight = a.scores[row, anchor].sum(-1)
        target = a.boxes[row, anchor] / stride[anchor]  # grid units, like the predictions
        ciou = elementwise_iou(boxes[row, anchor], target, kind="ciou")
        target_ltrb = xyxy_to_ltrb(points[anchor], target, self.reg_max - 1 - 0.01)
        dfl = dfl_loss(dist[row, anchor], target_ltrb)
        branch = torch.div(row, b, rounding_mode="floor")
        zeros = torch.zeros(k, device=dist.device) + 0.0 * dist.sum()  # keeps the graph when nothing is positive
        return (zeros.index_add(0, branch, (1.0 - ciou) * weight),
                zeros.index_add(0, branch, dfl * weight))
