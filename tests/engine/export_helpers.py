"""Small models for the export tests: tiny YAMLs with every plug-in module, and a toy dense (NMS) head.

The toy head is a family-neutral stand-in for the YOLO / RTMDet heads (anchor-free points, distances to
the four sides, sigmoid class scores) so the NMS-in-the-graph path is tested before those families land.
"""

from __future__ import annotations

import textwrap

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.heads.base import Decoded, DetectionHead

# hidden 32, 20 queries, 2 points, 2 heads, 1 decoder layer, FFN 64, 20 denoising queries
DECODER = "RTDETRDecoder, [nc, 32, 20, 2, 2, 1, 64, 0.0, None, -1, 20]"

PLUGIN_YAMLS = {
    # RT-DETR-L's backbone blocks: the HGNet stem (its 2x2 max-pool is a MaxPool node in exports), HG blocks
    # with plain and light convolutions, the depthwise downsampler, RepC3 with RepConv
    "hgnet": f"""
        nc: 3
        backbone:
          - [-1, 1, HGStem, [8, 16]]
          - [-1, 2, HGBlock, [8, 32, 3]]
          - [-1, 1, DWConv, [32, 3, 2, 1, False]]
          - [-1, 2, HGBlock, [16, 32, 5, True, True]]
          - [-1, 1, DWConv, [32, 3, 2, 1, False]]
          - [-1, 1, RepC3, [32]]
        head:
          - [[3, 5], 1, {DECODER}]
    """,
    # MSDeformAttn (the decoder's cross-attention) and AIFI on P4
    "aifi-msdeformattn": f"""
        nc: 3
        backbone:
          - [-1, 1, Conv, [8, 3, 2]]
          - [-1, 1, Conv, [16, 3, 2]]
          - [-1, 1, Conv, [16, 3, 2]]
          - [-1, 1, Conv, [32, 3, 2]]
          - [-1, 1, AIFI, [64, 2]]
        head:
          - [[2, 4], 1, {DECODER}]
    """,
    "dysample": f"""
        nc: 3
        backbone:
          - [-1, 1, Conv, [8, 3, 2]]
          - [-1, 1, Conv, [16, 3, 2]]
          - [-1, 1, Conv, [16, 3, 2]]
          - [-1, 1, Conv, [32, 3, 2]]
        head:
          - [-1, 1, DySample, [2, "lp"]]
          - [[-1, 2], 1, Concat, [1]]
          - [-1, 1, RepC3, [32]]
          - [3, 1, DySample, [2, "pl", 4, True]]
          - [[-1, 2], 1, Concat, [1]]
          - [[6, 8, 3], 1, {DECODER}]
    """,
    "shsa": f"""
        nc: 3
        backbone:
          - [-1, 1, Conv, [8, 3, 2]]
          - [-1, 1, Conv, [16, 3, 2]]
          - [-1, 1, Conv, [16, 3, 2]]
          - [-1, 1, SHSA, []]
          - [-1, 1, Conv, [32, 3, 2]]
        head:
          - [[3, 4], 1, {DECODER}]
    """,
    "convnextv2": f"""
        nc: 3
        backbone:
          - [-1, 1, convnextv2_atto, []]
          - [0, 1, Index, [160, 2]]
          - [0, 1, Index, [320, 3]]
        head:
          - [[1, 2], 1, {DECODER}]
    """,
    "shvit": f"""
        nc: 3
        backbone:
          - [-1, 1, shvit_s1, []]
          - [0, 1, Index, [128, 0]]
          - [0, 1, Index, [224, 1]]
        head:
          - [[1, 2], 1, {DECODER}]
    """,
}


def plugin_yaml(tmp_path, key: str):
    path = tmp_path / f"{key}.yaml"
    path.write_text(textwrap.dedent(PLUGIN_YAMLS[key]))
    return path


class ToyDenseHead(DetectionHead):
    """Anchor-free dense head: per level a 1x1 conv to (l, t, r, b) distances and class logits."""

    family = "toydense"
    needs_nms = True

    def __init__(self, nc: int, ch: list[int]):
        super().__init__()
        self.nc = nc
        self.convs = nn.ModuleList(nn.Conv2d(c, 4 + nc, 1) for c in ch)

    def forward(self, feats, targets=None):
        return [conv(f) for conv, f in zip(self.convs, feats)]

    def decode(self, outputs, img_shape) -> Decoded:
        boxes, scores = [], []
        for out, stride in zip(outputs, self.strides):
            b, _, h, w = out.shape
            ys, xs = torch.meshgrid(torch.arange(h, dtype=out.dtype), torch.arange(w, dtype=out.dtype),
                                    indexing="ij")
            centre = (torch.stack([xs, ys], -1).reshape(1, -1, 2) + 0.5) * stride
            pred = out.flatten(2).transpose(1, 2)  # [B, HW, 4 + nc]
            dist = F.softplus(pred[..., :4]) * stride * 2
            boxes.append(torch.cat([centre - dist[..., :2], centre + dist[..., 2:]], -1))
            scores.append(pred[..., 4:].sigmoid())
        return Decoded(torch.cat(boxes, 1), torch.cat(scores, 1))


TOY_DENSE_YAML = """
nc: 4
backbone:
  - [-1, 1, Conv, [8, 3, 2]]
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
head:
  - [[2, 3], 1, ToyDenseHead, [nc]]
"""


def sample_image() -> np.ndarray:
    """A real COCO picture when the shared subset is present, else a synthetic one (BGR uint8)."""
    from tests.conftest import COCO128

    files = sorted((COCO128 / "images").glob("*.jpg")) if (COCO128 / "images").is_dir() else []
    if files:
        return cv2.imread(str(files[0]))
    from rtdet.data.synthetic import render_image

    return render_image(np.random.default_rng(0), 128)[0]
