"""Contrastive denoising queries for RT-DETR training (DN-DETR / DINO, as in Ultralytics 8.4's
``get_cdn_group``).

Every ground-truth box is copied into ``num_group`` positive and ``num_group`` negative queries. Labels
are flipped to a random class with probability ``label_noise_ratio / 2``; box corners (xyxy) move by
``u * (w/2, h/2) * box_noise_scale`` with a random sign, ``u`` in [0, 1) for positives (they must
reconstruct their box) and in [1, 2) for negatives (they must be rejected).

Query layout per image (``m`` = max GTs per image, capped at ``num_dn``): copy ``c`` in
``0 .. 2*num_group-1`` holds the image's GTs in slots ``[c*m, c*m + n_i)``; copies ``c < num_group`` are
the positives, the rest negatives; empty slots hold zeros. The attention mask splits the denoising part
into ``num_group`` blocks of ``2m`` consecutive slots that cannot see each other, and the matching
queries that follow cannot see any denoising query. Images with more than ``num_dn`` GTs use a fresh
random subset of ``num_dn`` of them on each call.

``flavour="reference"`` follows the RT-DETR / D-FINE reference code instead (``get_contrastive_denoising_
training_group``) where it differs from Ultralytics: copy ``2g`` is group g's positive and copy ``2g + 1``
its negative (so every attention block pairs a positive with a negative copy), a noised box whose
corners crossed keeps its size as |w|, |h| (Ultralytics clamps it to zero), logits are floored at 1e-5
(not 1e-6), empty slots hold the logit of an all-zero box (not 0), and an image with more than ``num_dn``
GTs keeps every one of them in a single group (``num_dn // max_gt`` floored at 1, as the reference) rather
than a random subset: the queries then outnumber ``num_dn``, which the reference accepts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from rtdet.ops.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from rtdet.ops.targets import batch_targets

__all__ = ["DenoisingQueries", "build_denoising_queries", "denoising_attn_mask"]


@dataclass
class DenoisingQueries:
    """What the decoder needs for denoising: query content and boxes, the self-attention mask, and
    the meta data the criterion uses to pair denoising queries with their GTs."""

    embed: torch.Tensor  # [B, num_dn, hd]   class embeddings (zeros in empty slots)
    bbox: torch.Tensor  # [B, num_dn, 4]    noised boxes as logits of cx cy w h
    attn_mask: torch.Tensor  # [num_dn + nq, num_dn + nq] bool, True = blocked
    meta: dict[str, Any]


def denoising_attn_mask(num_dn: int, group_size: int, num_queries: int, device=None) -> torch.Tensor:
    """Bool mask [num_dn + nq]^2 (True = may not attend): matching queries cannot see denoising
    queries, and each block of ``group_size`` denoising queries sees only itself and the matching ones."""
    size = num_dn + num_queries
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    mask[num_dn:, :num_dn] = True
    group = torch.arange(num_dn, device=device) // group_size
    mask[:num_dn, :num_dn] = group[:, None] != group[None, :]
    return mask


def _ranks(batch_idx: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Position of each entry among the entries of its image, for entries already grouped by image."""
    starts = counts.cumsum(0) - counts
    return torch.arange(batch_idx.numel(), device=batch_idx.device) - starts[batch_idx]


@dataclass
class _Kept:
    """The GTs that get denoising copies, grouped by image: their batch indices ``keep`` [T], images ``b``
    [T], rank within the image ``rank`` [T], per-image counts, slots per copy ``m`` and ``num_group``."""

    keep: torch.Tensor
    b: torch.Tensor
    rank: torch.Tensor
    counts: list[int]
    m: int
    num_group: int


def _kept_targets(batch_idx: torch.Tensor, counts: torch.Tensor, num_dn: int, keep_all: bool = False) -> _Kept:
    """At most ``num_dn`` GTs per image (a fresh random subset of a crowded image's; every GT with
    ``keep_all``), grouped by image in batch order; ``m`` slots per copy, ``num_dn // m`` groups (at least 1)."""
    n, device = batch_idx.numel(), batch_idx.device
    counts_list = counts.tolist()  # one host sync: the counts decide the query shapes
    max_gt = max(counts_list)
    m = max_gt if keep_all else min(max_gt, num_dn)
    keep = torch.arange(n, device=device)
    if max_gt > m:
        order = torch.sort(batch_idx + torch.rand(n, device=device) * 0.5).indices
        keep = order[_ranks(batch_idx[order], counts) < m].sort().values
    kept_counts = [min(c, m) for c in counts_list]
    keep = keep[torch.sort(batch_idx[keep], stable=True).indices]  # by image, batch order within one
    b = batch_idx[keep]
    rank = _ranks(b, torch.as_tensor(kept_counts, device=device))
    return _Kept(keep, b, rank, kept_counts, m, max(num_dn // m, 1))


def _noised(cls: torch.Tensor, boxes: torch.Tensor, negative: torch.Tensor, nc: int, label_noise_ratio: float,
            box_noise_scale: float, reference: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies' labels [C] flipped with probability ``label_noise_ratio / 2``; boxes [C, 4] (cx cy w h) with
    corners moved by u * half size (u in [0, 1) for positives, [1, 2) for ``negative``), clipped to [0, 1]."""
    if label_noise_ratio > 0:
        flip = torch.rand(cls.shape, device=cls.device) < label_noise_ratio * 0.5
        cls = torch.where(flip, torch.randint_like(cls, 0, nc), cls)
    if box_noise_scale > 0:
        xyxy = cxcywh_to_xyxy(boxes)
        half_wh = (boxes[:, 2:] * 0.5).repeat(1, 2) * box_noise_scale
        sign = torch.randint_like(boxes, 0, 2) * 2.0 - 1.0
        magnitude = torch.rand_like(boxes) + negative.to(boxes.dtype)[:, None]
        boxes = xyxy_to_cxcywh((xyxy + sign * magnitude * half_wh).clamp(0.0, 1.0))
        if reference:  # crossed corners keep their size (the reference); Ultralytics' clamp makes it 0
            boxes = boxes.abs()
    return cls, boxes


def build_denoising_queries(
    targets: dict,
    class_embed: torch.Tensor,
    num_queries: int,
    batch_size: int,
    num_dn: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    flavour: str = "ultralytics",
) -> DenoisingQueries | None:
    """Denoising queries for a batch, or None when there is nothing to denoise.

    targets: the batch dict, ``batch_idx`` [N], ``cls`` [N] (or [N, 1]), ``bboxes`` [N, 4] normalised cx cy w
    h; checked by :func:`~rtdet.ops.targets.batch_targets` (its ``targets`` entry when the trainer built it).
    class_embed: [nc, hd] embedding table (gradients flow into the rows used).
    meta: ``dn_pos_idx`` (per image, slots of its positive queries, group-major), ``dn_gt_idx`` (per
    image, the batch indices of the GTs those queries reconstruct, in the same order within a group),
    ``dn_num_group`` and ``dn_num_split = [num_dn_total, num_queries]``.
    flavour: ``"ultralytics"`` or ``"reference"`` (RT-DETR / D-FINE's code; see the module docstring).
    """
    if flavour not in ("ultralytics", "reference"):
        raise ValueError(f"denoising flavour {flavour!r}: expected 'ultralytics' or 'reference'")
    reference = flavour == "reference"
    eps = 1e-5 if reference else 1e-6
    if num_dn <= 0:
        return None
    nc, device = class_embed.shape[0], class_embed.device
    padded = batch_targets(targets, batch_size, nc)  # checked once per step, shared with the criterion
    bboxes = targets["bboxes"].reshape(-1, 4).to(device=device, dtype=torch.float32)
    if bboxes.shape[0] == 0:
        return None
    batch_idx = targets["batch_idx"].reshape(-1).to(device=device, dtype=torch.long)
    cls = targets["cls"].reshape(-1).to(device=device, dtype=torch.long)
    kept = _kept_targets(batch_idx, padded.counts.to(device), num_dn, keep_all=reference)
    m, num_group, total = kept.m, kept.num_group, kept.keep.numel()

    copies = 2 * num_group
    copy_id = torch.arange(copies, device=device).repeat_interleave(total)
    negative = copy_id % 2 == 1 if reference else copy_id >= num_group
    dn_b = kept.b.repeat(copies)
    dn_slot = kept.rank.repeat(copies) + m * copy_id
    dn_cls, dn_box = _noised(cls[kept.keep].repeat(copies), bboxes[kept.keep].repeat(copies, 1), negative, nc,
                             label_noise_ratio, box_noise_scale, reference)

    num_dn_total = m * copies
    embed = class_embed.new_zeros(batch_size, num_dn_total, class_embed.shape[1])
    embed[dn_b, dn_slot] = class_embed[dn_cls]
    bbox = bboxes.new_full((batch_size, num_dn_total, 4), math.log(eps) if reference else 0.0)
    bbox[dn_b, dn_slot] = torch.logit(dn_box, eps=eps)

    pos_copy = torch.arange(num_group, device=device) * (2 if reference else 1)  # each group's positive copy
    pos_idx = (kept.rank[None] + m * pos_copy[:, None]).cpu()  # [num_group, total]
    meta = {
        "dn_pos_idx": [p.reshape(-1) for p in pos_idx.split(kept.counts, dim=1)],
        "dn_gt_idx": list(kept.keep.cpu().split(kept.counts)),
        "dn_num_group": num_group,
        "dn_num_split": [num_dn_total, num_queries],
    }
    mask = denoising_attn_mask(num_dn_total, 2 * m, num_queries, device=device)
    return DenoisingQueries(embed, bbox, mask, meta)
