"""Layers of the RT-DETRv2 decoder (Lv et al. 2024, ``rtdetrv2_decoder.py`` of lyuwenyu/RT-DETR), also the
decoder of DEIM's RT-DETRv2 models:

* :class:`RTDETRv2DeformableAttention` -- multi-scale deformable attention with value and output
  projections (as Deformable DETR) and a point count per level (as D-FINE): level l has ``num_points[l]``
  points per head, a point's offset is scaled by 1 / num_points[l] x the reference box's size x
  ``offset_scale`` (0.5); the attention weights are a softmax over all points of all levels jointly; the
  ``default`` sampling method (bilinear ``grid_sample``, zeros outside). The official ``discrete`` method
  (nearest sampling, frozen offsets) is not used by any shipped RT-DETRv2 or DEIM config;
* :class:`RTDETRv2DecoderLayer` -- self-attention, add & norm1, that cross-attention, add & norm2, FFN,
  add & norm3 (RT-DETR's layer; DEIM sets the FFN activation to SiLU).

The layer stack with iterative box refinement is RT-DETR's
:class:`~rtdet.nn.modules.transformer.DeformableTransformerDecoder` (the same maths: box_i =
sigmoid(bbox_head_i(h_i) + logit(ref_i)), the next layer reads it detached, aux boxes of layer i > 0 are
built on the previous layer's undetached box). The head that owns these layers is
:class:`rtdet.nn.heads.rtdetrv2.RTDETRv2Decoder`.

Parameter names, shapes and creation order follow the official code, e.g. ``layers.0.cross_attn.
num_points_scale`` (a buffer), ``layers.0.cross_attn.value_proj.weight``, ``layers.0.norm2.bias``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from rtdet.nn.modules.dfine_decoder import DFineDeformableAttention

__all__ = ["RTDETRv2DeformableAttention", "RTDETRv2DecoderLayer", "split_heads"]

ActFactory = Callable[[], nn.Module]


def split_heads(value: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, Lv, C] -> [B * nH, C / nH, Lv]: the layout the per-level ``grid_sample`` reads."""
    b, n_v, c = value.shape
    return value.reshape(b, n_v, num_heads, c // num_heads).permute(0, 2, 3, 1).reshape(b * num_heads,
                                                                                        c // num_heads, n_v)


class RTDETRv2DeformableAttention(DFineDeformableAttention):
    """RT-DETRv2's multi-scale deformable attention: D-FINE's sampling (points per level, offsets scaled by
    1 / points of the level) between a value projection and an output projection.

    forward(query [B, Lq, C], reference [B, Lq, 4] boxes cx cy w h in [0, 1], value [B, Lv, C] (the levels
    concatenated, each row-major), shapes [(H, W)] per level, value_mask [B, Lv] True = padding or None)
    -> [B, Lq, C]. Parameters in the official order: sampling_offsets, attention_weights, value_proj,
    output_proj (after the ``num_points_scale`` buffer).
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_points: Sequence[int] = (4, 4, 4),
                 offset_scale: float = 0.5):
        super().__init__(embed_dim, num_heads, num_points, offset_scale)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        with torch.no_grad():
            for proj in (self.value_proj, self.output_proj):
                nn.init.xavier_uniform_(proj.weight)
                nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, value: torch.Tensor,
                shapes: Sequence[tuple[int, int]], value_mask: torch.Tensor | None = None) -> torch.Tensor:
        value = self.value_proj(value)
        if value_mask is not None:
            value = value.masked_fill(value_mask[..., None], 0.0)
        sampled = super().forward(query, reference, split_heads(value, self.num_heads), shapes)
        return self.output_proj(sampled)


class RTDETRv2DecoderLayer(nn.Module):
    """One RT-DETRv2 decoder layer on queries [B, Q, C]: self-attention (query_pos added to q and k; bool
    ``attn_mask``, True = blocked) -> add & norm1 -> deformable cross-attention around each query's box ->
    add & norm2 -> FFN (linear1, act, linear2) -> add & norm3. Dropout 0 in every official config.

    forward(embed [B, Q, C], refer_bbox [B, Q, 4] sigmoid boxes, feats [B, Lv, C], shapes, padding_mask,
    attn_mask, query_pos [B, Q, C]) -> [B, Q, C]: the signature
    :class:`~rtdet.nn.modules.transformer.DeformableTransformerDecoder` calls.
    """

    def __init__(self, d_model: int = 256, n_head: int = 8, dim_feedforward: int = 1024,
                 num_points: Sequence[int] = (4, 4, 4), act: ActFactory = nn.ReLU, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = RTDETRv2DeformableAttention(d_model, n_head, num_points)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = act()
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)
        with torch.no_grad():
            nn.init.xavier_uniform_(self.linear1.weight)
            nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, embed: torch.Tensor, refer_bbox: torch.Tensor, feats: torch.Tensor,
                shapes: Sequence[tuple[int, int]], padding_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, query_pos: torch.Tensor | None = None) -> torch.Tensor:
        qk = embed if query_pos is None else embed + query_pos
        attn = self.self_attn(qk, qk, embed, attn_mask=attn_mask, need_weights=False)[0]
        embed = self.norm1(embed + self.dropout1(attn))
        q = embed if query_pos is None else embed + query_pos
        attn = self.cross_attn(q, refer_bbox, feats, shapes, padding_mask)
        embed = self.norm2(embed + self.dropout2(attn))
        ffn = self.linear2(self.dropout3(self.activation(self.linear1(embed))))
        return self.norm3(embed + self.dropout4(ffn))
