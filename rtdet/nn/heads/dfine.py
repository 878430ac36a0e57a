"""D-FINE (Peng et al. 2024): an RT-DETR-style decoder whose boxes are distributions over edge offsets,
refined layer by layer (Fine-grained Distribution Refinement, :mod:`rtdet.ops.fdr`)."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["DFineTrainOutput"]


class DFineTrainOutput(NamedTuple):
    """What the D-FINE decoder returns in training (read by the D-FINE criterion).

    Q = num_dn + nq queries, denoising queries first (split by ``dn_meta``); L decoder layers, the last one
    the teacher of the others; boxes are sigmoid cx cy w h (normalised); R = reg_max.
    """

    dec_bboxes: torch.Tensor  # [L, B, Q, 4] every decoder layer's boxes
    dec_scores: torch.Tensor  # [L, B, Q, nc] every decoder layer's class logits (the LQE term included)
    dec_corners: torch.Tensor  # [L, B, Q, 4 * (R + 1)] every decoder layer's edge-offset logits
    ref_points: torch.Tensor  # [B, Q, 4] the fixed reference of every layer's edges (the detached pre box)
    pre_bboxes: torch.Tensor  # [B, Q, 4] the first layer's box before refinement
    pre_scores: torch.Tensor  # [B, Q, nc] the first layer's class logits without the LQE term
    enc_bboxes: torch.Tensor  # [B, nq, 4] the encoder's top-k proposals
    enc_scores: torch.Tensor  # [B, nq, nc] their logits
    project: torch.Tensor  # [R + 1] W(n), the bin positions (rtdet.ops.fdr.weighting_function)
    reg_scale: torch.Tensor  # [] the edge unit divisor c
    dn_meta: dict | None  # denoising layout, as RT-DETR's (None without ground truth)
