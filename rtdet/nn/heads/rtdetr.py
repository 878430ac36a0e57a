"""RTDETRDecoder: the RT-DETR detection head (Ultralytics 8.4 layout).

Multi-scale maps are projected to ``hd`` channels and flattened into one memory; every memory token
proposes a box from its anchor (encoder query selection), the ``nq`` tokens with the highest class
logit become the decoder's initial queries, and six deformable decoder layers refine them. In training,
noised copies of the GT boxes (denoising queries) are decoded alongside.

Outputs follow the rtdet contract:
- eval: [B, k, 6] = (cx, cy, w, h normalised, score, class), the top k = nq over queries x classes
  (sigmoid scores, no NMS);
- train: :class:`RTDETRTrainOutput` ``(dec_bboxes [L, B, Q, 4], dec_scores [L, B, Q, nc], enc_bboxes
  [B, nq, 4], enc_scores [B, nq, nc], dn_meta)`` with Q = num_dn + nq, denoising queries first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn

from rtdet.nn.heads.query import QueryHead
from rtdet.nn.modules.common import fuse_conv_bn
from rtdet.nn.modules.transformer import (
    MLP,
    DeformableTransformerDecoder,
    DeformableTransformerDecoderLayer,
)
from rtdet.nn.registry import register

__all__ = ["RTDETRDecoder", "RTDETRTrainOutput"]


class RTDETRTrainOutput(NamedTuple):
    """What the decoder returns in training (read by :class:`~rtdet.losses.rtdetr.RTDETRCriterion`).

    Q = num_dn + nq queries, denoising queries first; boxes are sigmoid cx cy w h (normalised).
    """

    dec_bboxes: torch.Tensor  # [L, B, Q, 4] every decoder layer's boxes
    dec_scores: torch.Tensor  # [L, B, Q, nc] every decoder layer's class logits
    enc_bboxes: torch.Tensor  # [B, nq, 4] the encoder's top-k proposals
    enc_scores: torch.Tensor  # [B, nq, nc] their logits
    dn_meta: dict | None  # denoising layout (None without ground truth)


@register(channels="head")
class RTDETRDecoder(QueryHead):
    """RT-DETR head: input projection, encoder query selection, deformable decoder, denoising.

    Args: nc classes, ch input channels per level, hd hidden dim, nq queries, ndp sampling points,
    nh heads, ndl decoder layers, d_ffn FFN width, dropout, act (decoder FFN), eval_idx (decoder layer
    used at inference), nd denoising queries, label_noise_ratio, box_noise_scale, learnt_init_query
    (learned content queries instead of the selected encoder features).
    """

    family = "rtdetr"
    denoising_flavour = "ultralytics"  # Ultralytics' get_cdn_group (its checkpoints are what this head loads)
    dynamic = False  # True (set by the exporter for dynamic=True): anchors follow the traced input size

    def __init__(
        self,
        nc: int = 80,
        ch: Sequence[int] = (512, 1024, 2048),
        hd: int = 256,
        nq: int = 300,
        ndp: int = 4,
        nh: int = 8,
        ndl: int = 6,
        d_ffn: int = 1024,
        dropout: float = 0.0,
        act: nn.Module | None = None,
        eval_idx: int = -1,
        nd: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
        learnt_init_query: bool = False,
    ):
        super().__init__()
        self.hidden_dim = hd
        self.nhead = nh
        self.nl = len(ch)
        self.nc = nc
        self.num_queries = nq
        self.num_decoder_layers = ndl

        # Plain Conv2d + BN (not Conv) so the reference state-dict keys input_proj.i.{0,1}.* match.
        self.input_proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, hd, 1, bias=False), nn.BatchNorm2d(hd)) for c in ch)
        layer = DeformableTransformerDecoderLayer(hd, nh, d_ffn, dropout, nn.ReLU() if act is None else act,
                                                  self.nl, ndp)
        self.decoder = DeformableTransformerDecoder(hd, layer, ndl, eval_idx)

        self.denoising_class_embed = nn.Embedding(nc, hd)
        self.num_denoising = nd
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale

        self.learnt_init_query = learnt_init_query
        if learnt_init_query:
            self.tgt_embed = nn.Embedding(nq, hd)
        self.query_pos_head = MLP(4, 2 * hd, hd, num_layers=2)

        self.enc_output = nn.Sequential(nn.Linear(hd, hd), nn.LayerNorm(hd))
        self.enc_score_head = nn.Linear(hd, nc)
        self.enc_bbox_head = MLP(hd, hd, 4, num_layers=3)

        self.dec_score_head = nn.ModuleList(nn.Linear(hd, nc) for _ in range(ndl))
        self.dec_bbox_head = nn.ModuleList(MLP(hd, hd, 4, num_layers=3) for _ in range(ndl))

        self._anchor_cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        # Class prior 0.01, scaled by nc / 80 as the reference does.
        bias_cls = -math.log((1 - 0.01) / 0.01) / 80 * self.nc
        nn.init.constant_(self.enc_score_head.bias, bias_cls)
        nn.init.zeros_(self.enc_bbox_head.layers[-1].weight)
        nn.init.zeros_(self.enc_bbox_head.layers[-1].bias)
        for cls_head, box_head in zip(self.dec_score_head, self.dec_bbox_head):
            nn.init.constant_(cls_head.bias, bias_cls)
            nn.init.zeros_(box_head.layers[-1].weight)
            nn.init.zeros_(box_head.layers[-1].bias)
        lin = self.enc_output[0]
        bound = 1 / math.sqrt(lin.weight.shape[0])
        nn.init.uniform_(lin.bias, -bound, bound)
        nn.init.xavier_uniform_(lin.weight)
        if self.learnt_init_query:
            nn.init.xavier_uniform_(self.tgt_embed.weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)

    # ------------------------------------------------------------------ forward
    def forward(self, feats: list[torch.Tensor], targets: dict | None = None):
        """feats: maps [B, ch_i, H_i, W_i]; targets: the batch dict (read in training for denoising)."""
        memory, shapes = self.flatten_levels(feats)
        learned = self.tgt_embed if self.learnt_init_query else None
        embed, refer_bbox, enc_bboxes, enc_scores = self.select_queries(memory, shapes, learned)
        if not self.training:
            dec_bboxes, dec_scores = self.decoder(embed, refer_bbox, memory, shapes, self.dec_bbox_head,
                                                  self.dec_score_head, self.query_pos_head)
            return self.top_queries(dec_bboxes[-1], dec_scores[-1])

        # Training: queries start from detached encoder proposals (gradients reach the encoder
        # through enc_bboxes / enc_scores only).
        refer_bbox = refer_bbox.detach()
        if not self.learnt_init_query:
            embed = embed.detach()
        embed, refer_bbox, attn_mask, dn_meta = self.add_denoising(embed, refer_bbox, targets)
        dec_bboxes, dec_scores = self.decoder(embed, refer_bbox, memory, shapes, self.dec_bbox_head,
                                              self.dec_score_head, self.query_pos_head, attn_mask=attn_mask)
        return RTDETRTrainOutput(dec_bboxes, dec_scores, enc_bboxes, enc_scores, dn_meta)

    # ------------------------------------------------------------------ interface
    def fuse_(self) -> None:
        """Fold each input projection's BatchNorm into its convolution (inference only)."""
        for i, proj in enumerate(self.input_proj):
            if isinstance(proj[1], nn.BatchNorm2d):
                self.input_proj[i] = nn.Sequential(fuse_conv_bn(proj[0], proj[1]), nn.Identity())
