"""Hungarian matching for set-prediction losses (DETR; RT-DETR's ``matcher.py``): every ground-truth box
gets the one query of lowest matching cost, solved per image by ``scipy.optimize.linear_sum_assignment``.

Shapes: S stacked decoder layers, B images, Q queries, C classes, M padded GT slots per image.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from scipy.optimize import linear_sum_assignment

from rtdet.ops.boxes import cxcywh_to_xyxy, pairwise_iou
from rtdet.ops.targets import PaddedTargets

__all__ = ["HungarianMatcher"]

_BIG_COST = 1e6  # replaces NaN / inf costs: such a pair is never preferred, and scipy accepts the matrix


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground-truth boxes minimising

        cost = cost_class · C_cls + cost_bbox · ||b̂ − b||₁ + cost_giou · (−GIoU(b̂, b))

    with the focal class cost ``C_cls = α(1−p)^γ(−log p) − (1−α)p^γ(−log(1−p))`` at the GT class
    (``use_focal``, p = σ(logit)) or ``−softmax(logits)[gt]``. Costs for a whole stack of layers and images
    are one tensor computation in float32 (autocast off); non-finite costs become a large finite value.
    ``scipy.optimize.linear_sum_assignment`` then solves each image's [Q, n_b] block.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0, use_focal: bool = True):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_bbox and cost_giou cannot all be 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma, self.use_focal = alpha, gamma, use_focal

    def extra_repr(self) -> str:
        return (f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
                f"alpha={self.alpha}, gamma={self.gamma}, use_focal={self.use_focal}")

    @torch.no_grad()
    def cost(self, pred_bboxes: torch.Tensor, pred_logits: torch.Tensor, targets: PaddedTargets) -> torch.Tensor:
        """Matching costs [S, B, Q, M] for predictions [S, B, Q, 4] (cxcywh) / [S, B, Q, C] (logits)."""
        with torch.autocast(pred_bboxes.device.type, enabled=False):
            boxes, logits = pred_bboxes.float(), pred_logits.float()
            s, b, q, _ = boxes.shape
            m = targets.cls.shape[1]
            if m == 0:  # no ground truth in the whole batch
                return boxes.new_zeros((s, b, q, 0))
            gt_boxes = targets.bboxes.float()
            cls_idx = targets.cls[None, :, None, :].expand(s, b, q, m)
            if self.use_focal:
                p = logits.gather(-1, cls_idx).sigmoid()  # only the GT classes' probabilities
                pos = self.alpha * (1 - p).pow(self.gamma) * -(p + 1e-8).log()
                neg = (1 - self.alpha) * p.pow(self.gamma) * -(1 - p + 1e-8).log()
                c_cls = pos - neg
            else:
                c_cls = -logits.softmax(-1).gather(-1, cls_idx)
            c_l1 = torch.cdist(boxes.reshape(s * b, q, 4), gt_boxes.repeat(s, 1, 1), p=1).view(s, b, q, m)
            c_giou = -pairwise_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gt_boxes)[None], kind="giou")
            c = self.cost_bbox * c_l1 + self.cost_class * c_cls + self.cost_giou * c_giou
            return torch.where(torch.isfinite(c), c, torch.full_like(c, _BIG_COST))

    @torch.no_grad()
    def match_stack(self, pred_bboxes: torch.Tensor, pred_logits: torch.Tensor,
                    targets: PaddedTargets) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Match every layer of a stack: [S, B, Q, 4] / [S, B, Q, C] -> [S][B] (pred_idx, gt_idx) int64.

        gt_idx is the local index within the image (slot of PaddedTargets); an image without ground truth
        gets two empty tensors.
        """
        cost = self.cost(pred_bboxes, pred_logits, targets).cpu().numpy()  # one device->host copy
        counts = targets.counts.tolist()
        empty = torch.zeros(0, dtype=torch.int64)
        out = []
        for layer in cost:
            per_image = []
            for c, n in zip(layer, counts):
                if n == 0:
                    per_image.append((empty, empty))
                    continue
                pi, gi = linear_sum_assignment(c[:, :n])
                per_image.append((torch.from_numpy(pi).long(), torch.from_numpy(gi).long()))
            out.append(per_image)
        return out

    def forward(self, pred_bboxes: torch.Tensor, pred_logits: torch.Tensor,
                targets: PaddedTargets) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match one layer: pred_bboxes [B, Q, 4] cxcywh, pred_logits [B, Q, C] -> per image (pred_idx,
        gt_idx) int64 tensors of length min(Q, n_b), sorted by pred_idx."""
        return self.match_stack(pred_bboxes[None], pred_logits[None], targets)[0]
