"""Task-aligned assignment (TOOD, Feng et al. 2021) as YOLOv9 uses it (official ``utils/tal/assigner.py``;
the Ultralytics port computes the same thing), for a whole batch at once.

On detached predictions in input pixels: a GT's candidates are the anchors whose cell centre lies inside
it; their alignment is ``score(gt class)^alpha * CIoU^beta`` (CIoU clamped at 0); each GT takes its
``topk`` best-aligned candidates; an anchor taken by several GTs keeps the one it overlaps most (highest
CIoU); the target score of a positive is its alignment normalised per GT so that the GT's best anchor
gets that anchor's CIoU. No Python loop over images, GTs or anchors.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from rtdet.ops.boxes import elementwise_iou, xyxy_to_ltrb

__all__ = ["Assignment", "TaskAlignedAssigner"]


class Assignment(NamedTuple):
    """Per-anchor targets of a batch (B images, N anchors, C classes)."""

    fg: torch.Tensor  # [B, N] bool: the anchor is a positive
    gt_index: torch.Tensor  # [B, N] int64: slot of its GT in the padded targets (0 for negatives)
    boxes: torch.Tensor  # [B, N, 4] xyxy (pixels) of its GT (the slot-0 box for negatives)
    scores: torch.Tensor  # [B, N, C] soft class targets: normalised alignment on the GT's class, else 0


class TaskAlignedAssigner:
    """Task-aligned assignment of GTs to anchor points, for a whole batch at once.

    Args: topk candidates per GT, alpha (classification exponent), beta (localisation exponent), eps
    (the references' 1e-9 for "strictly inside" and the normalisation).
    """

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9):
        self.topk, self.alpha, self.beta, self.eps = int(topk), float(alpha), float(beta), float(eps)

    @torch.no_grad()
    def __call__(self, scores: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor, gt_cls: torch.Tensor,
                 gt_boxes: torch.Tensor, gt_mask: torch.Tensor) -> Assignment:
        """scores [B, N, C] probabilities, boxes [B, N, 4] xyxy predicted, points [N, 2] anchor centres (same
        units as the boxes), gt_cls [B, M] int, gt_boxes [B, M, 4] xyxy, gt_mask [B, M] bool (real GTs)."""
        b, n, c = scores.shape
        m = gt_boxes.shape[1]
        if m == 0:
            return Assignment(torch.zeros(b, n, dtype=torch.bool, device=scores.device),
                              torch.zeros(b, n, dtype=torch.int64, device=scores.device),
                              torch.zeros_like(boxes), torch.zeros_like(scores))
        candidate = self.candidates(points, gt_boxes) & gt_mask[..., None]  # [B, M, N]
        overlaps, align = self.alignment(scores, boxes, gt_cls, gt_boxes, candidate)
        k = min(self.topk, n)
        top = torch.zeros_like(candidate).scatter_(-1, align.topk(k, dim=-1).indices, True)
        claims = top & candidate  # GT m takes anchor a
        claims = self.one_gt_per_anchor(claims, overlaps)
        fg = claims.any(1)
        gt_index = claims.to(torch.int8).argmax(1)  # [B, N]

        labels = gt_cls.gather(1, gt_index)
        target_boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))
        # normalise per GT: its best anchor's target is that anchor's IoU, the others scale with alignment
        align = align * claims
        best_align = align.amax(-1, keepdim=True)  # [B, M, 1]
        best_overlap = (overlaps * claims).amax(-1, keepdim=True)
        quality = (align * best_overlap / (best_align + self.eps)).amax(1)  # [B, N]
        target_scores = F.one_hot(labels, c).to(scores.dtype) * (quality * fg)[..., None]
        return Assignment(fg, gt_index, target_boxes, target_scores)

    def candidates(self, points: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        """[B, M, N] bool: anchor centre strictly inside the GT box (every side's distance > eps)."""
        return xyxy_to_ltrb(points[None, None], gt_boxes[:, :, None]).amin(-1) > self.eps

    def alignment(self, scores: torch.Tensor, boxes: torch.Tensor, gt_cls: torch.Tensor, gt_boxes: torch.Tensor,
                  candidate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CIoU (clamped >= 0) and alignment score^alpha * CIoU^beta of every candidate pair, 0 elsewhere
        ([B, M, N] each); only candidate pairs are computed."""
        ib, im, ia = candidate.nonzero(as_tuple=True)
        overlaps = torch.zeros(candidate.shape, dtype=boxes.dtype, device=boxes.device)
        align = torch.zeros_like(overlaps)
        iou = elementwise_iou(gt_boxes[ib, im], boxes[ib, ia], kind="ciou").clamp(min=0).to(boxes.dtype)
        overlaps[ib, im, ia] = iou
        align[ib, im, ia] = scores[ib, ia, gt_cls[ib, im]].to(boxes.dtype).pow(self.alpha) * iou.pow(self.beta)
        return overlaps, align

    @staticmethod
    def one_gt_per_anchor(claims: torch.Tensor, overlaps: torch.Tensor) -> torch.Tensor:
        """An anchor claimed by several GTs keeps only the claiming GT it overlaps most ([B, M, N] bool)."""
        contested = claims.sum(1) > 1  # [B, N]
        if not bool(contested.any()):
            return claims
        best = overlaps.masked_fill(~claims, -1.0).argmax(1)  # [B, N]
        keep = torch.zeros_like(claims).scatter_(1, best[:, None], True)
        return torch.where(contested[:, None], keep, claims)
