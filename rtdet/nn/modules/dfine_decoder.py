"""Layers of the D-FINE decoder (Peng et al. 2024): deformable cross-attention without value / output
projections and with a point count per level, the gate that replaces RT-DETR's residual + norm, the
Location Quality Estimator (LQE), the decoder layer, and the layer stack that runs Fine-grained
Distribution Refinement (:mod:`rtdet.ops.fdr`).

Parameter names, shapes and creation order follow the official code (``src/zoo/dfine/dfine_decoder.py``),
so that an official state dict maps key for key, e.g. ``layers.0.cross_attn.num_points_scale``,
``layers.0.gateway.gate.weight`` or ``lqe_layers.2.reg_conf.layers.1.bias``. The head that owns these
layers is :class:`rtdet.nn.heads.dfine.DFINEDecoder`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.modules.transformer import MLP, inverse_sigmoid
from rtdet.ops.fdr import distances_to_boxes, distribution_integral

__all__ = ["DFineDecoderLayer", "DFineDeformableAttention", "DFineDecoderOutput", "DFineHeads",
           "DFineTransformerDecoder", "Gate", "LQE", "deformable_sample"]

ActFactory = Callable[[], nn.Module]
FFN_CLAMP = 65504.0  # the fp16 range: the official decoder clamps the FFN residual before norm3


def deformable_sample(value: torch.Tensor, shapes: Sequence[tuple[int, int]], locations: torch.Tensor,
                      weights: torch.Tensor, points: Sequence[int]) -> torch.Tensor:
    """The deformable-attention core with a point count per level, one bilinear ``grid_sample`` per level.

    value [B * nH, Dh, Lv] (levels concatenated in ``shapes`` order, each row-major), locations
    [B, Lq, nH, P, 2] as (x, y) in [0, 1] with P = sum(points) (level l's points consecutive), weights
    [B, Lq, nH, P] (already normalised). Samples outside a map read zeros (align_corners False).
    Returns [B, Lq, nH * Dh], head-major channels.
    """
    bh, head_dim, _ = value.shape
    b, n_q, n_heads, n_points, _ = locations.shape
    grids = (2.0 * locations - 1.0).transpose(1, 2).reshape(bh, n_q, n_points, 2)
    sampled, start, first = [], 0, 0
    for (h, w), n in zip(shapes, points):
        level = value[:, :, start:start + h * w].reshape(bh, head_dim, h, w)
        sampled.append(F.grid_sample(level, grids[:, :, first:first + n], mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # [B*nH, Dh, Lq, n]
        start, first = start + h * w, first + n
    weights = weights.transpose(1, 2).reshape(bh, 1, n_q, n_points)
    out = (torch.cat(sampled, -1) * weights).sum(-1)  # [B*nH, Dh, Lq]
    return out.reshape(b, n_heads * head_dim, n_q).transpose(1, 2)


class DFineDeformableAttention(nn.Module):
    """D-FINE's multi-scale deformable attention: the memory itself is sampled (no value projection) and the
    heads are concatenated (no output projection); level l has ``num_points[l]`` points per head.

    forward(query [B, Lq, C], reference [B, Lq, 4] boxes cx cy w h in [0, 1], value [B * nH, C / nH, Lv]
    (see :meth:`DFineTransformerDecoder.split_heads`), shapes [(H, W)] per level) -> [B, Lq, C]. A point's
    location is ``ref_xy + offset / num_points[l] * ref_wh * offset_scale``; the attention weights are a
    softmax over all points of all levels jointly.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_points: Sequence[int] = (4, 4, 4),
                 offset_scale: float = 0.5):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim, self.num_heads, self.offset_scale = embed_dim, num_heads, offset_scale
        self.num_points = [int(n) for n in num_points]
        scale = [1.0 / n for n in self.num_points for _ in range(n)]
        self.register_buffer("num_points_scale", torch.tensor(scale, dtype=torch.float32))  # [P], in the state dict
        total = num_heads * sum(self.num_points)
        self.sampling_offsets = nn.Linear(embed_dim, total * 2)
        self.attention_weights = nn.Linear(embed_dim, total)
        self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        # Head k starts along the angle 2 pi k / nH (scaled so that the larger coordinate is 1); a level's
        # points sit 1 .. n steps out along it; uniform attention.
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        ring = torch.stack([theta.cos(), theta.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True).values
        steps = torch.cat([torch.arange(1, n + 1, dtype=torch.float32) for n in self.num_points])
        self.sampling_offsets.bias.copy_((ring[:, None, :] * steps[None, :, None]).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, value: torch.Tensor,
                shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        b, n_q = query.shape[:2]
        n_points = sum(self.num_points)
        offsets = self.sampling_offsets(query).reshape(b, n_q, self.num_heads, n_points, 2)
        weights = self.attention_weights(query).reshape(b, n_q, self.num_heads, n_points).softmax(-1)
        ref = reference[:, :, None, None, :]  # [B, Lq, 1, 1, 4]
        scale = self.num_points_scale.to(query.dtype)[:, None]  # [P, 1]
        locations = ref[..., :2] + offsets * scale * ref[..., 2:] * self.offset_scale
        return deformable_sample(value, shapes, locations, weights, self.num_points)


class Gate(nn.Module):
    """Gated fusion of the query and its cross-attention result: [g1, g2] = sigmoid(Linear(cat[x, y])),
    out = LayerNorm(g1 * x + g2 * y). Starts at g1 = g2 = 0.5. [B, Q, C] x 2 -> [B, Q, C]."""

    def __init__(self, d_model: int):
        super().__init__()
        self.gate = nn.Linear(2 * d_model, 2 * d_model)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)  # logit of 0.5
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g1, g2 = torch.sigmoid(self.gate(torch.cat([x, y], -1))).chunk(2, -1)
        return self.norm(g1 * x + g2 * y)


class LQE(nn.Module):
    """Location Quality Estimator: from each edge's distribution (softmax of its ``reg_max + 1`` corner
    logits), the top-``k`` probabilities and their mean feed ``reg_conf`` (MLP(4 (k + 1), hidden, 1)), whose
    one output per query is added to all of that query's class logits.
    forward(scores [B, Q, nc], corners [B, Q, 4 (R + 1)]) -> [B, Q, nc]."""

    def __init__(self, k: int = 4, hidden_dim: int = 64, num_layers: int = 2, reg_max: int = 32,
                 act: ActFactory = nn.ReLU):
        super().__init__()
        self.k, self.reg_max = k, reg_max
        self.reg_conf = MLP(4 * (k + 1), hidden_dim, 1, num_layers, act=act)
        nn.init.zeros_(self.reg_conf.layers[-1].weight)
        nn.init.zeros_(self.reg_conf.layers[-1].bias)

    def quality(self, corners: torch.Tensor) -> torch.Tensor:
        """[B, Q, 4 (R + 1)] corner logits -> [B, Q, 1] the term added to every class logit."""
        b, q, _ = corners.shape
        prob = F.softmax(corners.reshape(b, q, 4, self.reg_max + 1), dim=-1)
        top = prob.topk(self.k, dim=-1).values
        stat = torch.cat([top, top.mean(-1, keepdim=True)], -1)  # [B, Q, 4, k + 1]
        return self.reg_conf(stat.reshape(b, q, -1))

    def forward(self, scores: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
        return scores + self.quality(corners)


class DFineDecoderLayer(nn.Module):
    """One D-FINE decoder layer on queries [B, Q, C]: self-attention (query_pos added to q and k; bool
    ``attn_mask``, True = blocked) -> add & norm1 -> deformable cross-attention around each query's box ->
    :class:`Gate` (in place of residual + norm2) -> FFN -> add, clamp to the fp16 range, norm3."""

    def __init__(self, d_model: int = 256, n_head: int = 8, dim_feedforward: int = 1024,
                 num_points: Sequence[int] = (4, 4, 4), act: ActFactory = nn.ReLU):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_head, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = DFineDeformableAttention(d_model, n_head, num_points)
        self.gateway = Gate(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = act()
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm3 = nn.LayerNorm(d_model)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, target: torch.Tensor, reference: torch.Tensor, value: torch.Tensor,
                shapes: Sequence[tuple[int, int]], attn_mask: torch.Tensor | None = None,
                query_pos: torch.Tensor | None = None) -> torch.Tensor:
        """target [B, Q, C], reference [B, Q, 4] (cx cy w h), value [B * nH, Dh, Lv] -> [B, Q, C]."""
        qk = target if query_pos is None else target + query_pos
        attn = self.self_attn(qk, qk, target, attn_mask=attn_mask, need_weights=False)[0]
        target = self.norm1(target + attn)
        q = target if query_pos is None else target + query_pos
        target = self.gateway(target, self.cross_attn(q, reference, value, shapes))
        ffn = self.linear2(self.activation(self.linear1(target)))
        return self.norm3((target + ffn).clamp(-FFN_CLAMP, FFN_CLAMP))


class DFineHeads(NamedTuple):
    """The head-owned modules the decoder loop reads (they live on the head, as in the official layout)."""

    query_pos_head: nn.Module  # MLP(4, 2d, d, 2): reference box -> query position embedding
    pre_bbox_head: nn.Module  # MLP(d, d, 4, 3): the first layer's box, refining the encoder proposal
    dec_bbox_head: nn.ModuleList  # per layer MLP(d, d, 4 (R + 1), 3): corner logits
    dec_score_head: nn.ModuleList  # per layer Linear(d, nc)


class DFineDecoderOutput(NamedTuple):
    """Per-layer outputs of :class:`DFineTransformerDecoder` (eval: the eval_idx layer only, L = 1)."""

    boxes: torch.Tensor  # [L, B, Q, 4] cx cy w h
    logits: torch.Tensor  # [L, B, Q, nc], the LQE term included
    corners: torch.Tensor  # [L, B, Q, 4 (R + 1)]
    ref_init: torch.Tensor  # [B, Q, 4] the detached first-layer box every layer's edges are measured from
    pre_boxes: torch.Tensor  # [B, Q, 4] the first layer's box
    pre_logits: torch.Tensor | None  # [B, Q, nc] the first layer's logits without LQE (training only)


class DFineTransformerDecoder(nn.Module):
    """The stack of decoder layers and their LQEs, running Fine-grained Distribution Refinement.

    Layer i (output h_i) predicts corner logits C_i = dec_bbox_head[i](h_i + h_{i-1}.detach()) + C_{i-1};
    its box is the integral of C_i over the bins W(n) applied to the fixed reference ``ref_init`` (the
    detached first-layer box, ``pre_bbox_head`` on h_0 around the encoder proposal); the next layer reads
    that box, detached, as its reference. Training returns every layer; evaluation stops at ``eval_idx``.
    """

    def __init__(self, layer: DFineDecoderLayer, num_layers: int, reg_max: int = 32, eval_idx: int = -1,
                 act: ActFactory = nn.ReLU):
        super().__init__()
        self.num_layers, self.reg_max = num_layers, reg_max
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx
        if not 0 <= self.eval_idx < num_layers:
            raise ValueError(f"eval_idx {eval_idx} is outside the {num_layers} decoder layers")
        self.num_heads = layer.cross_attn.num_heads
        # Deep copies: every layer starts from the same weights, as in the reference.
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.lqe_layers = nn.ModuleList(LQE(4, 64, 2, reg_max, act=act) for _ in range(num_layers))

    def split_heads(self, memory: torch.Tensor) -> torch.Tensor:
        """[B, Lv, C] memory -> [B * nH, C / nH, Lv], the value every layer's cross-attention samples."""
        b, n_v, c = memory.shape
        return memory.reshape(b, n_v, self.num_heads, c // self.num_heads).permute(0, 2, 3, 1).reshape(
            b * self.num_heads, c // self.num_heads, n_v)

    def forward(self, target: torch.Tensor, ref_logits: torch.Tensor, memory: torch.Tensor,
                shapes: Sequence[tuple[int, int]], heads: DFineHeads, project: torch.Tensor,
                reg_scale: torch.Tensor, attn_mask: torch.Tensor | None = None) -> DFineDecoderOutput:
        """target [B, Q, C] content queries, ref_logits [B, Q, 4] box logits, memory [B, Lv, C],
        project [R + 1] the bin positions W(n), reg_scale the edge unit divisor."""
        value = self.split_heads(memory)
        ref = ref_logits.sigmoid()
        output, previous, corners_prev = target, None, None
        boxes, logits, corners_all = [], [], []
        ref_init = pre_boxes = pre_logits = None
        for i, layer in enumerate(self.layers):
            query_pos = heads.query_pos_head(ref).clamp(-10.0, 10.0)
            output = layer(output, ref, value, shapes, attn_mask, query_pos)
            if i == 0:
                pre_boxes = torch.sigmoid(heads.pre_bbox_head(output) + inverse_sigmoid(ref))
                pre_logits = heads.dec_score_head[0](output) if self.training else None
                ref_init = pre_boxes.detach()
            head_in = output if previous is None else output + previous
            corners = heads.dec_bbox_head[i](head_in)
            corners = corners if corners_prev is None else corners + corners_prev  # the sum stays undetached
            box = distances_to_boxes(ref_init, distribution_integral(corners, project), reg_scale)
            if self.training or i == self.eval_idx:
                logits.append(self.lqe_layers[i](heads.dec_score_head[i](output), corners))
                boxes.append(box)
                corners_all.append(corners)
                if not self.training:
                    break
            corners_prev, ref, previous = corners, box.detach(), output.detach()
        return DFineDecoderOutput(torch.stack(boxes), torch.stack(logits), torch.stack(corners_all), ref_init,
                                  pre_boxes, pre_logits)
