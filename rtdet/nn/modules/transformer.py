"""Transformer blocks of RT-DETR: the AIFI encoder layer, multi-scale deformable attention and the
deformable decoder with iterative box refinement.

Parameter names, shapes and registration order follow Ultralytics 8.4 (``ultralytics/nn/modules/
transformer.py``) so that a reference checkpoint's state dict loads one to one, e.g.
``layers.0.self_attn.in_proj_weight`` or ``layers.0.cross_attn.sampling_offsets.weight``.
Attention runs through ``nn.MultiheadAttention`` with ``need_weights=False``, which dispatches to
``F.scaled_dot_product_attention`` while keeping the reference parameter layout.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.registry import register

__all__ = [
    "is_tracing",
    "inverse_sigmoid",
    "sincos_pos_embed_2d",
    "multi_scale_deformable_attn",
    "TransformerEncoderLayer",
    "AIFI",
    "MLP",
    "MSDeformAttn",
    "DeformableTransformerDecoderLayer",
    "DeformableTransformerDecoder",
]


def is_tracing() -> bool:
    """True while the model is being traced, compiled or exported: caches must not be read or written
    then (the graph must compute shape-dependent constants itself)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both terms floored at eps (finite at 0 and 1)."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def sincos_pos_embed_2d(
    h: int,
    w: int,
    dim: int,
    temperature: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding of an h x w map, tokens in row-major order.

    Token ``y * w + x`` gets ``[sin(y*omega), cos(y*omega), sin(x*omega), cos(x*omega)]`` with
    ``omega_k = temperature ** (-k / (dim / 4))``. Returns [1, h*w, dim]. For square maps this equals
    Ultralytics' AIFI embedding exactly; unlike it, rows and columns stay correct when h != w.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs a channel count divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter)
    # row and column of each token; meshgrid (not repeat_interleave) so traced sizes stay in an export
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    out_y = ys[:, None] * omega[None]
    out_x = xs[:, None] * omega[None]
    emb = torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)
    return emb[None].to(dtype)


class TransformerEncoderLayer(nn.Module):
    """Standard transformer encoder layer on tokens [B, L, C] -> [B, L, C].

    Post-norm by default (``x = LN(x + MHA(x + pos, x + pos, x)); x = LN(x + FFN(x))``); pre-norm with
    ``normalize_before``. The position embedding is added to queries and keys only.
    """

    def __init__(
        self,
        c1: int,
        cm: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.0,
        act: nn.Module | None = None,
        normalize_before: bool = False,
    ):
        super().__init__()
        self.ma = nn.MultiheadAttention(c1, num_heads, dropout=dropout, batch_first=True)
        self.fc1 = nn.Linear(c1, cm)
        self.fc2 = nn.Linear(cm, c1)
        self.norm1 = nn.LayerNorm(c1)
        self.norm2 = nn.LayerNorm(c1)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.act = nn.GELU() if act is None else act
        self.normalize_before = normalize_before

    def _attend(self, x: torch.Tensor, pos: torch.Tensor | None, mask: torch.Tensor | None,
                key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        qk = x if pos is None else x + pos
        return self.ma(qk, qk, x, attn_mask=mask, key_padding_mask=key_padding_mask, need_weights=False)[0]

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.normalize_before:
            src = src + self.dropout1(self._attend(self.norm1(src), pos, src_mask, src_key_padding_mask))
            return src + self.dropout2(self._ffn(self.norm2(src)))
        src = self.norm1(src + self.dropout1(self._attend(src, pos, src_mask, src_key_padding_mask)))
        return self.norm2(src + self.dropout2(self._ffn(src)))


@register(channels="same")
class AIFI(TransformerEncoderLayer):
    """Attention-based Intra-scale Feature Interaction (RT-DETR): one encoder layer over the tokens of a
    single map with a fixed 2-D sin-cos position embedding.  [B, C, H, W] -> [B, C, H, W].

    YAML ``AIFI [1024, 8]`` builds ``AIFI(c1, cm=1024, num_heads=8)``. The embedding is cached per
    (H, W, device, dtype) so a fixed input size computes it once.
    """

    _CACHE_SIZE = 16  # distinct sizes kept (multi-scale training uses about ten)

    def __init__(
        self,
        c1: int,
        cm: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.0,
        act: nn.Module | None = None,
        normalize_before: bool = False,
    ):
        super().__init__(c1, cm, num_heads, dropout, act, normalize_before)
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    def pos_embed(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The [1, h*w, C] position embedding for an h x w map (cached)."""
        c = self.fc1.in_features
        if is_tracing():
            return sincos_pos_embed_2d(h, w, c, device=device, dtype=dtype)
        key = (h, w, device, dtype)
        emb = self._pos_cache.get(key)
        if emb is None:
            if len(self._pos_cache) >= self._CACHE_SIZE:
                self._pos_cache.clear()
            emb = self._pos_cache[key] = sincos_pos_embed_2d(h, w, c, device=device, dtype=dtype)
        return emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B, HW, C], row-major like the embedding
        tokens = super().forward(tokens, pos=self.pos_embed(h, w, x.device, x.dtype))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class MLP(nn.Module):
    """A stack of ``num_layers`` Linear layers with ``act`` between them (DETR's box / position FFN)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 act: type[nn.Module] = nn.ReLU, sigmoid: bool = False):
        super().__init__()
        self.num_layers = num_layers
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.sigmoid = sigmoid
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        x = self.layers[-1](x)
        return x.sigmoid() if self.sigmoid else x


def multi_scale_deformable_attn(
    value: torch.Tensor,
    shapes: Sequence[tuple[int, int]],
    locations: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """The deformable-attention core in pure PyTorch, one bilinear ``grid_sample`` per level.

    value [B, Lv, nH, Dh] (levels concatenated in ``shapes`` order, each row-major), locations
    [B, Lq, nH, nL, nP, 2] as (x, y) in [0, 1] of each level's map, weights [B, Lq, nH, nL, nP].
    Samples outside the map read zeros (align_corners=False convention). Returns [B, Lq, nH * Dh].
    """
    b, _, n_heads, head_dim = value.shape
    _, n_q, _, n_levels, n_points, _ = locations.shape
    # [B*nH, Dh, Lv]: each level becomes a view of one contiguous buffer
    value = value.permute(0, 2, 3, 1).reshape(b * n_heads, head_dim, -1)
    grids = (2.0 * locations - 1.0).transpose(1, 2).reshape(b * n_heads, n_q, n_levels, n_points, 2)
    sampled = []
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        v = value[:, :, start:start + h * w].view(b * n_heads, head_dim, h, w)
        sampled.append(F.grid_sample(v, grids[:, :, lvl], mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # [B*nH, Dh, Lq, nP]
        start += h * w
    weights = weights.transpose(1, 2).reshape(b * n_heads, 1, n_q, n_levels * n_points)
    out = (torch.cat(sampled, dim=-1) * weights).sum(-1)  # [B*nH, Dh, Lq]
    return out.view(b, n_heads * head_dim, n_q).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR): each query attends to ``n_points`` sampled
    locations per head and level around its reference point or box.

    forward(query [B, Lq, C], refer_bbox [B, Lq, nL or 1, 2 | 4] in [0, 1] (x, y[, w, h]),
    value [B, Lv, C], value_shapes [(H, W)] per level, value_mask [B, Lv] True = padding) -> [B, Lq, C].
    With 4-d references the offsets are scaled by half the box size / n_points; with 2-d references
    they are in pixels of each level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        # Offsets start on a ring: head h points along angle 2*pi*h/nH (scaled so the larger
        # coordinate is 1), point p sits p+1 steps out; all levels alike.
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        ring = torch.stack([theta.cos(), theta.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True).values
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = ring.view(self.n_heads, 1, 1, 2) * steps  # [nH, 1, nP, 2]
        self.sampling_offsets.bias.copy_(grid.expand(-1, self.n_levels, -1, -1).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        refer_bbox: torch.Tensor,
        value: torch.Tensor,
        value_shapes: Sequence[tuple[int, int]],
        value_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n_q = query.shape[:2]
        n_v = value.shape[1]
        if not is_tracing() and sum(h * w for h, w in value_shapes) != n_v:
            raise ValueError(f"value has {n_v} tokens but value_shapes {list(value_shapes)} describe "
                             f"{sum(h * w for h, w in value_shapes)}")
        nh, nl, npt = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value)
        if value_mask is not None:
            value = value.masked_fill(value_mask[..., None], 0.0)
        value = value.view(b, n_v, nh, self.d_model // nh)
        offsets = self.sampling_offsets(query).view(b, n_q, nh, nl, npt, 2)
        weights = self.attention_weights(query).view(b, n_q, nh, nl * npt).softmax(-1).view(b, n_q, nh, nl, npt)
        ref = refer_bbox[:, :, None, :, None, :]  # [B, Lq, 1, nL|1, 1, 2|4]
        if refer_bbox.shape[-1] == 2:
            wh = torch.tensor([[w, h] for h, w in value_shapes], dtype=query.dtype, device=query.device)
            locations = ref + offsets / wh[:, None, :]
        elif refer_bbox.shape[-1] == 4:
            locations = ref[..., :2] + offsets / npt * ref[..., 2:] * 0.5
        else:
            raise ValueError(f"refer_bbox must end in 2 (points) or 4 (boxes), got shape {tuple(refer_bbox.shape)}")
        return self.output_proj(multi_scale_deformable_attn(value, value_shapes, locations, weights))


class DeformableTransformerDecoderLayer(nn.Module):
    """One RT-DETR decoder layer on queries [B, Q, C]: self-attention (query_pos on q and k, optional
    boolean ``attn_mask`` with True = blocked) -> add & LN -> deformable cross-attention into the
    multi-scale memory around each query's reference box -> add & LN -> FFN -> add & LN."""

    def __init__(
        self,
        d_model: int = 256,
        n_heads: int = 8,
        d_ffn: int = 1024,
        dropout: float = 0.0,
        act: nn.Module | None = None,
        n_levels: int = 4,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.act = nn.ReLU() if act is None else act
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        embed: torch.Tensor,
        refer_bbox: torch.Tensor,
        feats: torch.Tensor,
        shapes: Sequence[tuple[int, int]],
        padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        qk = embed if query_pos is None else embed + query_pos
        attn = self.self_attn(qk, qk, embed, attn_mask=attn_mask, need_weights=False)[0]
        embed = self.norm1(embed + self.dropout1(attn))
        q = embed if query_pos is None else embed + query_pos
        attn = self.cross_attn(q, refer_bbox.unsqueeze(2), feats, shapes, padding_mask)
        embed = self.norm2(embed + self.dropout2(attn))
        ffn = self.linear2(self.dropout3(self.act(self.linear1(embed))))
        return self.norm3(embed + self.dropout4(ffn))


class DeformableTransformerDecoder(nn.Module):
    """A stack of ``num_layers`` copies of ``decoder_layer`` with iterative box refinement.

    Each layer refines the reference boxes: ``box_i = sigmoid(bbox_head[i](out_i) + logit(ref_i))``.
    Training returns every layer's boxes and logits ("look forward twice", DINO: layer i's boxes are
    built on layer i-1's un-detached refinement, while layer i itself reads the detached boxes).
    Evaluation stops at ``eval_idx`` and returns that layer only.
    Output: boxes [L, B, Q, 4] (sigmoid cx cy w h) and logits [L, B, Q, nc].
    """

    def __init__(self, hidden_dim: int, decoder_layer: nn.Module, num_layers: int, eval_idx: int = -1):
        super().__init__()
        # Deep copies: all layers start from the same initial weights, as in the reference.
        self.layers = nn.ModuleList(copy.deepcopy(decoder_layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx
        if not 0 <= self.eval_idx < num_layers:
            raise ValueError(f"eval_idx {eval_idx} is outside the {num_layers} decoder layers")

    def forward(
        self,
        embed: torch.Tensor,
        refer_bbox: torch.Tensor,
        feats: torch.Tensor,
        shapes: Sequence[tuple[int, int]],
        bbox_head: nn.ModuleList,
        score_head: nn.ModuleList,
        pos_mlp: nn.Module,
        attn_mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """embed [B, Q, C], refer_bbox [B, Q, 4] logits, feats [B, Lv, C] -> (boxes, logits)."""
        output = embed
        boxes: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        last_refined = None
        refer_bbox = refer_bbox.sigmoid()
        for i, layer in enumerate(self.layers):
            output = layer(output, refer_bbox, feats, shapes, padding_mask, attn_mask, pos_mlp(refer_bbox))
            delta = bbox_head[i](output)
            refined = torch.sigmoid(delta + inverse_sigmoid(refer_bbox))
            if self.training:
                logits.append(score_head[i](output))
                boxes.append(refined if i == 0 else torch.sigmoid(delta + inverse_sigmoid(last_refined)))
            elif i == self.eval_idx:
                logits.append(score_head[i](output))
                boxes.append(refined)
                break
            last_refined = refined
            refer_bbox = refined.detach() if self.training else refined
        return torch.stack(boxes), torch.stack(logits)
