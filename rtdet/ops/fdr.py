"""Fine-grained Distribution Refinement (D-FINE, Peng et al. 2024): boxes as distributions over edge offsets.

    w = weighting_function(reg_max=32, up=0.5, reg_scale=4.0)        # W(n), [33], non-uniform bin positions
    d = distribution_integral(corner_logits, w)                     # [..., 4 * 33] -> [..., 4] edge offsets
    boxes = distances_to_boxes(ref_cxcywh, d, reg_scale=4.0)          # [..., 4] cxcywh, as the head predicts
    d = boxes_to_distances(ref_cxcywh, gt_xyxy, reg_scale=4.0)        # the FGL target of the same edges
    index, w_right, w_left = distance_bins(d, w)                    # its two neighbouring bins and weights

Each edge of a box is a distance from the reference box (the decoder's first-layer prediction), in units of
the reference's size divided by ``reg_scale``: 0 leaves the edge where ``0.5 reg_scale`` units put it (the
reference's own edge). The bins sit at W(n) (:func:`weighting_function`): dense near 0, where small
corrections are made, sparse at the ends; the end bins reach ``+-2 up reg_scale``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["boxes_to_distances", "distance_bins", "distances_to_boxes", "distribution_integral",
           "weighting_function"]

EDGE_INDEX_MARGIN = 0.1  # the largest bin index is reg_max - 0.1, so floor(index) + 1 is still a bin


def weighting_function(reg_max: int, up: torch.Tensor | float, reg_scale: torch.Tensor | float) -> torch.Tensor:
    """W(n) for n = 0..reg_max: [reg_max + 1] bin positions, symmetric about W(reg_max / 2) = 0.

    With a = |up|, c = |reg_scale| and step = (a c + 1)^(2 / (reg_max - 2)): W(0) = -2 a c,
    W(n) = 1 - step^(reg_max / 2 - n) below the centre, step^(n - reg_max / 2) - 1 above it, W(reg_max) =
    2 a c. Differentiable in ``up`` and ``reg_scale`` when they are tensors (the head's parameters)."""
    up = torch.as_tensor(up, dtype=torch.float32).abs().reshape(-1)[0]
    scale = torch.as_tensor(reg_scale, dtype=up.dtype, device=up.device).abs().reshape(-1)[0]
    bound = up * scale
    step = (bound + 1) ** (2.0 / (reg_max - 2))
    half = reg_max // 2
    left = [1 - step ** i for i in range(half - 1, 0, -1)]
    right = [step ** i - 1 for i in range(1, half)]
    zero = torch.zeros_like(bound)
    return torch.stack([-2 * bound, *left, zero, *right, 2 * bound])


def distribution_integral(corner_logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Expected offset of each edge: [..., 4 * (reg_max + 1)] logits -> [..., 4], sum_n softmax(p)_n W(n)."""
    bins = weights.numel()
    probs = F.softmax(corner_logits.reshape(*corner_logits.shape[:-1], 4, bins), dim=-1)
    return probs @ weights.to(probs)


def distances_to_boxes(reference: torch.Tensor, distances: torch.Tensor, reg_scale: float | torch.Tensor
                       ) -> torch.Tensor:
    """[..., 4] reference boxes (cx, cy, w, h) and edge distances (left, top, right, bottom) -> [..., 4]
    cxcywh boxes. Not clamped: a box may leave [0, 1], as the reference's does."""
    c = torch.as_tensor(reg_scale, dtype=reference.dtype, device=reference.device).abs()
    cx, cy, w, h = reference.unbind(-1)
    left, top, right, bottom = distances.unbind(-1)
    x1, y1 = cx - (0.5 * c + left) * (w / c), cy - (0.5 * c + top) * (h / c)
    x2, y2 = cx + (0.5 * c + right) * (w / c), cy + (0.5 * c + bottom) * (h / c)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def boxes_to_distances(reference: torch.Tensor, target_xyxy: torch.Tensor, reg_scale: float | torch.Tensor
                       ) -> torch.Tensor:
    """The inverse of :func:`distances_to_boxes` for a target box given as xyxy: [..., 4] each -> [..., 4]
    edge distances in bin units (unclamped)."""
    c = torch.as_tensor(reg_scale, dtype=reference.dtype, device=reference.device).abs()
    cx, cy, w, h = reference.unbind(-1)
    x1, y1, x2, y2 = target_xyxy.unbind(-1)
    unit_w, unit_h = w / c + 1e-16, h / c + 1e-16  # 1e-16: a zero-size reference must not divide by zero
    return torch.stack([(cx - x1) / unit_w, (cy - y1) / unit_h, (x2 - cx) / unit_w, (y2 - cy) / unit_h], -1) - 0.5 * c


def distance_bins(distances: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each distance falls between the bins: (index, weight_right, weight_left), each shaped like
    ``distances``. ``floor(index)`` is the bin at or below the distance and ``floor(index) + 1`` the one above;
    the weights interpolate linearly between their positions. Below W(0): bin 0 with weight_left 1; at or
    beyond W(reg_max): index reg_max - 0.1 with weight_right 1 (the top bin takes it all)."""
    reg_max = weights.numel() - 1
    weights = weights.to(distances)
    left = (weights <= distances.unsqueeze(-1)).sum(-1) - 1  # the last bin position not above the distance
    inside = (left >= 0) & (left < reg_max)
    k = left.clamp(0, reg_max - 1)
    w_lo, w_hi = weights[k], weights[k + 1]
    to_left, to_right = (distances - w_lo).abs(), (w_hi - distances).abs()
    weight_right = torch.where(inside, to_left / (to_left + to_right), torch.zeros_like(distances))
    weight_right = torch.where(left >= reg_max, torch.ones_like(distances), weight_right)
    weight_left = torch.where(inside, 1.0 - weight_right, torch.zeros_like(distances))
    weight_left = torch.where(left < 0, torch.ones_like(distances), weight_left)
    index = torch.where(left >= reg_max, torch.full_like(distances, reg_max - EDGE_INDEX_MARGIN),
                        left.clamp(min=0).to(distances))
    return index.clamp(0, reg_max - EDGE_INDEX_MARGIN), weight_right, weight_left
