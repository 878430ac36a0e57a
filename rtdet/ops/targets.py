"""Ground truth of a batch regrouped per image and padded: what every family's assigner and RT-DETR's
denoising queries read.

:func:`batch_targets` regroups the Batch arrays (``batch_idx``, ``cls``, ``bboxes``) into
:class:`PaddedTargets` and checks them. The trainer does it once per step and stores the result in
``batch["targets"]``; the head's denoising queries, the Hungarian matcher, the task-aligned assigner and
the dynamic soft-label assigner then all read that one tensor set (called on a batch without it, they build
it themselves). It lives in ``ops`` because heads (``nn``) and losses both read it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rtdet.ops.boxes import cxcywh_to_xyxy

__all__ = ["PaddedTargets", "pad_targets", "batch_targets"]


class PaddedTargets(NamedTuple):
    """Ground truth regrouped per image and padded to M = the largest count in the batch.

    cls [B, M] int64, bboxes [B, M, 4] normalised cxcywh, counts [B] int64, rows [B, M] int64 -- the row of
    each box in the Batch arrays (-1 for padding). Image b's boxes fill slots 0..counts[b]-1 in the order
    they appear in the Batch; "local GT index j of image b" means slot j.
    """

    cls: torch.Tensor
    bboxes: torch.Tensor
    counts: torch.Tensor
    rows: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """[B, M] bool: True for real boxes, False for padding."""
        return self.rows >= 0

    def xyxy(self, img_shape: tuple[int, int]) -> torch.Tensor:
        """Boxes as xyxy in pixels of an (h, w) network input, [B, M, 4] (padding stays zero-sized)."""
        h, w = img_shape
        return cxcywh_to_xyxy(self.bboxes) * self.bboxes.new_tensor([w, h, w, h])


def pad_targets(batch_idx: torch.Tensor, cls: torch.Tensor, bboxes: torch.Tensor,
                batch_size: int) -> PaddedTargets:
    """Batch arrays (batch_idx [N], cls [N], bboxes [N, 4]) -> PaddedTargets, without a loop over boxes."""
    device = bboxes.device
    n = batch_idx.shape[0]
    counts = torch.bincount(batch_idx, minlength=batch_size) if n else batch_idx.new_zeros(batch_size)
    m = int(counts.max()) if n else 0
    order = torch.argsort(batch_idx, stable=True)
    img = batch_idx[order]
    slot = torch.arange(n, device=device) - (counts.cumsum(0) - counts)[img]
    rows = torch.full((batch_size, m), -1, dtype=torch.int64, device=device)
    rows[img, slot] = order
    out_cls = torch.zeros((batch_size, m), dtype=torch.int64, device=device)
    out_cls[img, slot] = cls[order]
    out_boxes = torch.zeros((batch_size, m, 4), dtype=bboxes.dtype, device=device)
    out_boxes[img, slot] = bboxes[order]
    return PaddedTargets(out_cls, out_boxes, counts, rows)


def batch_targets(batch: dict, n_img: int, nc: int) -> PaddedTargets:
    """The batch's :class:`PaddedTargets` for ``n_img`` images and ``nc`` classes: ``batch["targets"]``
    when the trainer already built it for this step, else built and checked now (and not stored).

    Checks: ``batch_idx`` [N], ``cls`` [N] (or Ultralytics' [N, 1]), ``bboxes`` [N, 4]; class ids in
    [0, nc); image indices in [0, n_img). Each failure is a ValueError naming the key and the bad value.
    """
    cached = batch.get("targets")
    if isinstance(cached, PaddedTargets) and cached.counts.shape[0] == n_img:
        return cached
    missing = [k for k in ("batch_idx", "cls", "bboxes") if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}; a Batch has batch_idx [N], cls [N], bboxes [N, 4]")
    device = batch["bboxes"].device
    batch_idx = batch["batch_idx"].to(device=device, dtype=torch.int64).reshape(-1)
    cls = batch["cls"].to(device=device, dtype=torch.int64).reshape(-1)
    bboxes = batch["bboxes"].to(device=device, dtype=torch.float32)
    n = batch_idx.shape[0]
    if cls.shape[0] != n or bboxes.shape != (n, 4):
        raise ValueError(f"batch has batch_idx [{n}], cls {tuple(batch['cls'].shape)}, bboxes "
                         f"{tuple(batch['bboxes'].shape)}; expected [N], [N], [N, 4]")
    if n:  # one host read for the four bounds (each read waits for the GPU)
        lo, hi, first, last = torch.stack([cls.min(), cls.max(), batch_idx.min(), batch_idx.max()]).tolist()
        if lo < 0 or hi >= nc:
            raise ValueError(f"class id {lo if lo < 0 else hi} in batch['cls'] is outside [0, {nc - 1}] "
                             f"(nc={nc}); check the dataset's names / nc")
        if first < 0 or last >= n_img:
            raise ValueError(f"batch['batch_idx'] must lie in [0, {n_img - 1}] for the {n_img} images of the "
                             f"batch, got [{first}, {last}]")
    return pad_targets(batch_idx, cls, bboxes, n_img)
