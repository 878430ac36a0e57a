"""Anchors, grid points and priors of every family, built from one grid of the feature maps.

Each family places its reference points on the same per-level grid; only the offset and unit differ:

* :func:`anchor_points` (YOLOv9): cell centres (offset 0.5) in grid units of their own level, with the
  stride of each point -- ``points * strides`` are the centres in input pixels;
* :func:`grid_priors` (RTMDet, mmdetection's ``MlvlPointGenerator`` with offset 0): grid corners in input
  pixels, with the stride of each point;
* :func:`query_anchors` (RT-DETR's encoder): cell centres normalised to [0, 1] with a box size per level,
  in logit space, and which of them are valid.

Every function takes the per-level map shapes ``[(H_l, W_l), ...]`` (levels in order, rows first inside a
level) and concatenates the levels: N = sum of H_l * W_l.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["anchor_points", "grid_priors", "level_grid", "query_anchors"]


def level_grid(h: int, w: int, offset: float = 0.0, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(xs, ys) [h, w] of one level's grid: xs[y, x] = x + offset, ys[y, x] = y + offset (grid units)."""
    y, x = torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype)
    if offset:  # no add node at offset 0: the exported graph stays as small as before
        y, x = y + offset, x + offset
    ys, xs = torch.meshgrid(y, x, indexing="ij")
    return xs, ys


def anchor_points(shapes: Sequence[tuple[int, int]], strides: Sequence[int], device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32, offset: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres of every level and their strides (the YOLO heads' anchors and their loss).

    Returns points [N, 2] = (x + offset, y + offset) in grid units of their own level and strides [N, 1];
    points * strides are the centres in input pixels.
    """
    points, stride_col = [], []
    for (h, w), s in zip(shapes, strides, strict=True):
        xs, ys = level_grid(h, w, offset, device, dtype)
        points.append(torch.stack((xs, ys), -1).view(-1, 2))
        stride_col.append(torch.full((h * w, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_col)


def grid_priors(shapes: Sequence[tuple[int, int]], strides: Sequence[int], device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Prior points at the grid corners of each level (mmdet MlvlPointGenerator with offset 0).

    Level l of shape (h, w) and stride s gives (x * s, y * s) for y < h, x < w, row-major. Returns points
    [N, 2] in input pixels and strides [N], levels concatenated in order."""
    points, level_strides = [], []
    for (h, w), s in zip(shapes, strides, strict=True):
        xs, ys = level_grid(h, w, 0.0, device, dtype)
        points.append(torch.stack([(xs * s).reshape(-1), (ys * s).reshape(-1)], -1))
        level_strides.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(level_strides)


def query_anchors(shapes: Sequence[tuple[int, int]], grid_size: float = 0.05, eps: float = 1e-2,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor boxes for RT-DETR's flattened encoder memory, as logits, and their validity.

    Level l's token (y, x) of an (H, W) map gets the box (cx, cy, w, h) = ((x+0.5)/W, (y+0.5)/H,
    0.05*2^l, 0.05*2^l). A box is valid when all four numbers lie in (eps, 1 - eps); invalid anchors
    are +inf. Returns anchors [1, L, 4] (logit space, ``dtype``) and valid_mask [1, L, 1] (bool), L = N.
    Computed in float32 whatever ``dtype`` and cast at the end.
    """
    parts = []
    for lvl, (h, w) in enumerate(shapes):
        xs, ys = level_grid(h, w, 0.5, device, torch.float32)
        cx, cy = xs / w, ys / h
        wh = torch.full_like(cx, grid_size * 2.0**lvl).reshape(-1, 1).expand(-1, 2)  # traced sizes stay traced
        parts.append(torch.cat([cx.reshape(-1, 1), cy.reshape(-1, 1), wh], 1))
    boxes = torch.cat(parts)[None]
    valid = ((boxes > eps) & (boxes < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(boxes / (1 - boxes)).masked_fill(~valid, float("inf"))
    return anchors.to(dtype), valid
