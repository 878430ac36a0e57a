"""RTDETRv2Decoder: the RT-DETRv2 detection head (Lv et al. 2024, ``RTDETRTransformerv2``), also the decoder
of DEIM's RT-DETRv2 models (Huang et al. 2025, ``DEIM:engine/deim/rtdetrv2_decoder.py``).

Maps are projected to ``hidden_dim`` channels (conv1x1 + BN, always) and flattened into one memory; every
memory token proposes a box from its anchor (encoder query selection), the ``num_queries`` tokens with the
highest class logit become the decoder's queries, and the decoder layers
(:mod:`rtdet.nn.modules.rtdetrv2`: deformable attention with value / output projections and a point count
per level) refine their boxes one layer after the other. In training, noised copies of the GT boxes
(denoising queries, the reference flavour) are decoded alongside.

DEIM's variant is three constructor arguments, named as in its config (``DEIM:configs/base/rt_deim.yml``):
``activation: silu`` (decoder FFNs), ``mlp_act: silu`` (query_pos_head, enc_bbox_head, dec_bbox_head) and
``query_pos_method: as_reg`` (query_pos_head = MLP(4, d, d, 3 layers) instead of MLP(4, 2d, d, 2)).

Outputs follow RT-DETR's contract, so :class:`~rtdet.losses.rtdetr.RTDETRCriterion` trains it unchanged
(``loss=mal`` for DEIM's matchability-aware loss):
- eval: [B, k, 6] = (cx, cy, w, h normalised, score, class), the top k = num_queries over queries x classes of
  the ``eval_idx`` layer (sigmoid scores, no NMS), decoded without clipping as the reference post-processor;
- train: :class:`~rtdet.nn.heads.rtdetr.RTDETRTrainOutput`, every layer stacked, denoising queries first.

Parameter names, shapes and creation order follow the official module, so an official state dict maps key
for key (``decoder.`` prefix aside). Left out, because they are derived: the ``anchors`` / ``valid_mask``
buffers (computed from the input size and cached).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn

from rtdet.nn.heads.dfine import CLASS_PRIOR, activation_factory
from rtdet.nn.heads.query import QueryHead
from rtdet.nn.heads.rtdetr import RTDETRTrainOutput
from rtdet.nn.modules.common import fuse_conv_bn
from rtdet.nn.modules.rtdetrv2 import RTDETRv2DecoderLayer
from rtdet.nn.modules.transformer import MLP, DeformableTransformerDecoder
from rtdet.nn.registry import register

__all__ = ["RTDETRv2Decoder", "QUERY_POS_METHODS"]

QUERY_POS_METHODS = ("default", "as_reg")  # MLP(4, 2d, d, 2) as RT-DETR; MLP(4, d, d, 3) as the box heads (DEIM)


def _points(num_points: int | Sequence[int], levels: int) -> list[int]:
    """Points per level: an int for every level alike, or one count per level."""
    points = [int(num_points)] * levels if isinstance(num_points, int) else [int(n) for n in num_points]
    if len(points) != levels or min(points) < 1:
        raise ValueError(f"RTDETRv2Decoder: num_points {list(points)} must give one positive count for each of "
                         f"its {levels} input maps")
    return points


@register(channels="head")
class RTDETRv2Decoder(QueryHead):
    """RT-DETRv2 head: input projection, encoder query selection, deformable decoder, denoising.

    YAML ``[[p3, p4, p5], 1, RTDETRv2Decoder, [nc, 256, 300, [4, 4, 4], 6, 1024, 8, -1, 100]]`` builds
    ``RTDETRv2Decoder(nc, [c3, c4, c5], hidden_dim, num_queries, num_points, num_layers, dim_feedforward,
    nhead, eval_idx, num_denoising, activation, mlp_act, query_pos_method, label_noise_ratio,
    box_noise_scale, learn_query_content)`` (the official config names). ``num_points``: sampling points
    per head of each level; ``eval_idx``: the decoder layer inference reads (R50-m: 2 of 6);
    ``activation``: decoder FFNs; ``mlp_act``: the MLP heads; ``query_pos_method``: "default" or "as_reg".
    """

    family = "rtdetr"
    clip_boxes = False  # the reference post-processor (RTDETRPostProcessor) does not clip, as D-FINE's
    dynamic = False  # True (set by the exporter for dynamic=True): anchors follow the traced input size

    def __init__(self, nc: int = 80, ch: Sequence[int] = (256, 256, 256), hidden_dim: int = 256,
                 num_queries: int = 300, num_points: int | Sequence[int] = 4, num_layers: int = 6,
                 dim_feedforward: int = 1024, nhead: int = 8, eval_idx: int = -1, num_denoising: int = 100,
                 activation: str | nn.Module | None = "relu", mlp_act: str | nn.Module | None = "relu",
                 query_pos_method: str = "default", label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0,
                 learn_query_content: bool = False):
        super().__init__()
        if query_pos_method not in QUERY_POS_METHODS:
            raise ValueError(f"RTDETRv2Decoder: query_pos_method must be one of {QUERY_POS_METHODS}, "
                             f"got {query_pos_method!r}")
        self.nc, self.hidden_dim, self.num_queries, self.nl = nc, hidden_dim, num_queries, len(ch)
        self.num_layers = num_layers
        mlp = activation_factory(mlp_act)
        self.input_proj = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(c, hidden_dim, 1, bias=False), norm=nn.BatchNorm2d(hidden_dim)))
            for c in ch)
        layer = RTDETRv2DecoderLayer(hidden_dim, nhead, dim_feedforward, _points(num_points, self.nl),
                                     activation_factory(activation))
        self.decoder = DeformableTransformerDecoder(hidden_dim, layer, num_layers, eval_idx)
        self.eval_idx = self.decoder.eval_idx
        self.num_denoising = num_denoising
        self.label_noise_ratio, self.box_noise_scale = label_noise_ratio, box_noise_scale
        # row nc is the padding class of empty denoising slots (zeros, never trained)
        self.denoising_class_embed = nn.Embedding(nc + 1, hidden_dim, padding_idx=nc) if num_denoising > 0 else None
        self.learn_query_content = learn_query_content
        if learn_query_content:
            self.tgt_embed = nn.Embedding(num_queries, hidden_dim)
        if query_pos_method == "as_reg":
            self.query_pos_head = MLP(4, hidden_dim, hidden_dim, 3, act=mlp)
        else:
            self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, 2, act=mlp)
        self.enc_output = nn.Sequential(OrderedDict(proj=nn.Linear(hidden_dim, hidden_dim),
                                                    norm=nn.LayerNorm(hidden_dim)))
        self.enc_score_head = nn.Linear(hidden_dim, nc)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3, act=mlp)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, nc) for _ in range(num_layers))
        self.dec_bbox_head = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4, 3, act=mlp) for _ in range(num_layers))
        self._anchor_cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        self.deployed = False
        self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        """The reference initialisation: class prior 0.01 (not scaled by nc), zero last box layers, xavier
        for enc_output.proj, the first two query_pos_head layers and the input projections."""
        nn.init.constant_(self.enc_score_head.bias, CLASS_PRIOR)
        for mlp in [self.enc_bbox_head, *self.dec_bbox_head]:
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)
        for lin in self.dec_score_head:
            nn.init.constant_(lin.bias, CLASS_PRIOR)
        nn.init.xavier_uniform_(self.enc_output.proj.weight)
        if self.learn_query_content:
            nn.init.xavier_uniform_(self.tgt_embed.weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj.conv.weight)

    # ------------------------------------------------------------------ pieces

    def _decode(self, content: torch.Tensor, box_logits: torch.Tensor, memory: torch.Tensor,
                shapes: list[tuple[int, int]], attn_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder stack -> boxes [L, B, Q, 4] and logits [L, B, Q, nc] (eval: the eval_idx layer only)."""
        return self.decoder(content, box_logits, memory, shapes, self.dec_bbox_head, self.dec_score_head,
                            self.query_pos_head, attn_mask=attn_mask)

    # ------------------------------------------------------------------ forward
    def forward(self, feats: list[torch.Tensor], targets: dict | None = None):
        """feats: maps [B, ch_l, H_l, W_l]; targets: the batch dict (read in training for denoising).
        Eval -> [B, k, 6]; train -> :class:`RTDETRTrainOutput`."""
        if self.training and self.deployed:
            raise RuntimeError("RTDETRv2Decoder was fused for inference (fuse_ dropped the layers after eval_idx); "
                               "train an unfused copy")
        memory, shapes = self.flatten_levels(feats)
        learned = self.tgt_embed if self.learn_query_content else None
        content, box_logits, enc_bboxes, enc_scores = self.select_queries(memory, shapes, learned)
        if not self.training:
            boxes, logits = self._decode(content, box_logits, memory, shapes)
            return self.top_queries(boxes[-1], logits[-1])
        # Queries start from detached proposals: the encoder learns through enc_bboxes / enc_scores only.
        box_logits = box_logits.detach()
        if not self.learn_query_content:
            content = content.detach()
        content, box_logits, attn_mask, dn_meta = self.add_denoising(content, box_logits, targets)
        boxes, logits = self._decode(content, box_logits, memory, shapes, attn_mask)
        return RTDETRTrainOutput(boxes, logits, enc_bboxes, enc_scores, dn_meta)


    # ------------------------------------------------------------------ interface
    def fuse_(self) -> None:
        """Inference form, in place: fold each input projection's BatchNorm into its conv and drop the decoder
        layers (and their heads) after ``eval_idx``, which inference never runs (R50-m: 3 of 6)."""
        for proj in self.input_proj:
            if isinstance(proj.norm, nn.BatchNorm2d):
                proj.conv = fuse_conv_bn(proj.conv, proj.norm)
                proj.norm = nn.Identity()
        keep = self.eval_idx + 1
        self.decoder.layers = self.decoder.layers[:keep]
        self.dec_bbox_head = self.dec_bbox_head[:keep]
        self.dec_score_head = self.dec_score_head[:keep]
        self.deployed = True
