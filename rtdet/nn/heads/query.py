"""What every DETR-style head shares: the encoder's maps as tokens, the encoder anchors of query selection,
the top-k over queries x classes and the decoding of that final output into input pixels.

    class MyDecoder(QueryHead):                  # sets nl, input_proj, nc, num_queries, _anchor_cache = None,
        clip_boxes = False                       # enc_output, enc_score_head, enc_bbox_head
    memory, shapes = head.flatten_levels(feats)  # [B, sum H_l W_l, d], [(H_l, W_l)]
    anchors, valid = head.anchors(shapes, device, dtype)
    content, box_logits, boxes, scores = head.select_queries(memory, shapes)   # the encoder's top k
    final = head.top_queries(boxes, logits)      # [B, k, 6]: cx cy w h (normalised), score, class
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn as nn

from rtdet.nn.heads.base import Decoded, DetectionHead
from rtdet.nn.heads.denoising import build_denoising_queries
from rtdet.nn.modules.transformer import is_tracing
from rtdet.ops.anchors import query_anchors
from rtdet.ops.boxes import cxcywh_to_xyxy

__all__ = ["QueryHead"]


class QueryHead(DetectionHead):
    """A head whose queries are final detections (``needs_nms = False``). Subclasses set ``nl`` (input maps),
    ``input_proj`` (one module per map), ``nc``, ``num_queries``, ``_anchor_cache = None`` and, for
    :meth:`select_queries`, the encoder heads ``enc_output``, ``enc_score_head`` and ``enc_bbox_head``."""

    needs_nms = False  # one query per object: the top-k is final
    clip_boxes: ClassVar[bool] = True  # decode clips boxes to the input
    denoising_flavour: ClassVar[str] = "reference"  # build_denoising_queries' flavour (Ultralytics' RT-DETR differs)

    def flatten_levels(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Maps [B, c_l, H_l, W_l] -> memory [B, sum H_l W_l, hidden] (after ``input_proj``) and each (H, W)."""
        if len(feats) != self.nl:
            raise ValueError(f"{type(self).__name__} was built for {self.nl} input maps, got {len(feats)}")
        tokens, shapes = [], []
        traced = self.dynamic and is_tracing()  # sizes stay graph values in a dynamic-shape export
        for proj, f in zip(self.input_proj, feats):
            f = proj(f)
            shapes.append(tuple(f.shape[2:4]) if traced else (int(f.shape[2]), int(f.shape[3])))
            tokens.append(f.flatten(2).transpose(1, 2))
        return torch.cat(tokens, 1), shapes

    def anchors(self, shapes: Sequence[tuple[int, int]], device: torch.device,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchors [1, L, 4] (logits, +inf where invalid) and valid mask [1, L, 1], cached per shapes."""
        if self.dynamic or is_tracing():
            return query_anchors(shapes, device=device, dtype=dtype)
        key = (tuple(tuple(s) for s in shapes), device, dtype)
        if self._anchor_cache is None or self._anchor_cache[0] != key:
            anchors, valid = query_anchors(key[0], device=device, dtype=dtype)
            self._anchor_cache = (key, anchors, valid)
        return self._anchor_cache[1], self._anchor_cache[2]

    def select_queries(self, memory: torch.Tensor, shapes: list[tuple[int, int]],
                       learned_content: nn.Embedding | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder query selection: memory [B, L, d] -> content [B, k, d], box logits [B, k, 4], their sigmoid
        boxes and class logits [B, k, nc] of the k = num_queries tokens with the highest class logit.

        The box head runs on the k selected tokens only; RT-DETR(v2)'s code runs it on every token and gathers
        k, which gives the same numbers. ``learned_content``: the decoder's content comes from this embedding
        (RT-DETR's learnt_init_query) instead of the selected tokens' features."""
        b, n_tokens, hd = memory.shape
        anchors, valid = self.anchors(shapes, memory.device, memory.dtype)
        features = self.enc_output(valid.to(memory.dtype) * memory)
        scores = self.enc_score_head(features)  # [B, L, nc]
        k = min(self.num_queries, n_tokens)
        idx = scores.max(-1).values.topk(k, dim=1).indices.unsqueeze(-1)  # [B, k, 1]
        top_features = features.gather(1, idx.expand(-1, -1, hd))
        top_anchors = anchors.expand(b, -1, -1).gather(1, idx.expand(-1, -1, 4))
        box_logits = self.enc_bbox_head(top_features) + top_anchors
        enc_scores = scores.gather(1, idx.expand(-1, -1, scores.shape[-1]))
        content = top_features if learned_content is None else learned_content.weight[None, :k].expand(b, -1, -1)
        return content, box_logits, box_logits.sigmoid(), enc_scores

    def add_denoising(self, content: torch.Tensor, box_logits: torch.Tensor, targets: dict | None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict | None]:
        """Training queries: content [B, Q, d] and box logits [B, Q, 4] with the denoising queries built from
        ``targets`` in front, their attention mask and meta (None, None without targets or denoising). Uses
        ``denoising_class_embed`` (None: no denoising), ``num_denoising``, ``label_noise_ratio`` and
        ``box_noise_scale``."""
        table = self.denoising_class_embed
        dn = None
        if targets is not None and table is not None:
            dn = build_denoising_queries(targets, table.weight[:self.nc], content.shape[1], content.shape[0],
                                         self.num_denoising, self.label_noise_ratio, self.box_noise_scale,
                                         flavour=self.denoising_flavour)
        if dn is None:
            if table is not None:  # keep the embedding in the graph so DDP finds a gradient for it every step
                content = content + 0.0 * table.weight.sum()
            return content, box_logits, None, None
        return (torch.cat([dn.embed.to(content.dtype), content], 1),
                torch.cat([dn.bbox.to(box_logits.dtype), box_logits], 1), dn.attn_mask, dn.meta)

    def top_queries(self, boxes: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """[B, Q, 4] boxes and [B, Q, nc] logits -> [B, k, 6] top-k over queries x classes (k = num_queries)."""
        scores = logits.sigmoid().flatten(1)
        k = min(self.num_queries, scores.shape[1])
        top, index = scores.topk(k, dim=1)
        query = torch.div(index, self.nc, rounding_mode="floor")
        picked = boxes.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
        return torch.cat([picked, top.unsqueeze(-1), (index % self.nc).unsqueeze(-1).to(picked.dtype)], -1)

    def decode(self, outputs: torch.Tensor, img_shape: tuple[int, int]) -> Decoded:
        """Eval output [B, k, 6] -> final Decoded: xyxy boxes in input pixels (clipped to the image when
        ``clip_boxes``), sigmoid scores and class labels. No NMS follows."""
        if not (isinstance(outputs, torch.Tensor) and outputs.ndim == 3 and outputs.shape[-1] == 6):
            got = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
            raise TypeError(f"{type(self).__name__}.decode expects the eval output [B, k, 6], got {got}; "
                            f"run the model in eval mode")
        h, w = img_shape
        if isinstance(h, torch.Tensor):  # traced sizes (dynamic-shape export): keep them in the graph
            scale = torch.stack([w, h, w, h]).to(outputs.dtype)
        else:
            scale = outputs.new_tensor([w, h, w, h])
        boxes = cxcywh_to_xyxy(outputs[..., :4])
        boxes = torch.minimum(boxes.clamp(min=0) * scale, scale) if self.clip_boxes else boxes * scale
        return Decoded(boxes, outputs[..., 4], outputs[..., 5].round().long())
