"""RTMDetSepBNHead: RTMDet's detection head (mmdetection 3.x ``RTMDetSepBNHead``, same parameter names).

For every pyramid level l, a classification tower and a regression tower of ``stacked_convs`` 3x3 Convs
(conv -> BatchNorm -> SiLU) whose **convolution weights are shared by all levels** while each level keeps
its own BatchNorm; then per-level 1x1 predictors ``rtm_cls[l]`` (nc logits) and ``rtm_reg[l]`` (4
distances). A prior is a point on the grid **corners** of its level (offset 0: (x * s, y * s), not cell
centres); the box is ``(px - l, py - t, px + r, py + b)`` with ``(l, t, r, b) = reg * s`` (``exp(reg) * s``
with ``exp_on_reg``, RTMDet-l/x).

Outputs (N = priors of all levels, level by level, row-major inside a level):

* train: :class:`RTMDetTrainOutput` ``(cls_logits [B, N, C], ltrb [B, N, 4] distances in input pixels,
  points [N, 2] prior points, strides [N])``, read by :class:`~rtdet.losses.rtmdet.RTMDetCriterion`;
* eval: :class:`RTMDetPredictions` ``(boxes [B, N, 4] xyxy input pixels, scores [B, N, C] sigmoid)``,
  read only by :meth:`RTMDetSepBNHead.decode`.

State-dict keys match mmdetection's ``bbox_head.*`` (``cls_convs.{l}.{i}.conv/bn``, ``reg_convs...``,
``rtm_cls.{l}``, ``rtm_reg.{l}``), shared weights appearing under every level's name as there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn

from rtdet.nn.heads.base import Decoded, DetectionHead
from rtdet.nn.modules.common import Conv
from rtdet.nn.registry import register
from rtdet.ops.anchors import grid_priors
from rtdet.ops.boxes import ltrb_to_xyxy

__all__ = ["RTMDetPredictions", "RTMDetSepBNHead", "RTMDetTrainOutput"]

PRIOR_PROB = 0.01  # initial foreground probability of every class logit


class RTMDetTrainOutput(NamedTuple):
    """Training output of :class:`RTMDetSepBNHead` (levels flattened and concatenated)."""

    cls_logits: torch.Tensor  # [B, N, C]
    ltrb: torch.Tensor  # [B, N, 4] distances from the prior point to the box sides, input pixels
    points: torch.Tensor  # [N, 2] prior points (x, y), input pixels
    strides: torch.Tensor  # [N] stride of each prior's level


class RTMDetPredictions(NamedTuple):
    """Eval output of :class:`RTMDetSepBNHead`: every prior's box and class probabilities."""

    boxes: torch.Tensor  # [B, N, 4] xyxy, input pixels (not clipped)
    scores: torch.Tensor  # [B, N, C]


@register(channels="head")
class RTMDetSepBNHead(DetectionHead):
    """RTMDet head with convolutions shared across levels and BatchNorm per level.

    Args: nc classes, ch input channels of each level (all equal when convs are shared), feat_channels
    tower width, stacked_convs convs per tower, exp_on_reg (distances = exp(reg) * stride, RTMDet-l/x),
    share_conv (False: every level its own convs), pred_kernel_size of the predictors.
    YAML: ``[[p3, p4, p5], 1, RTMDetSepBNHead, [nc, feat_channels, stacked_convs, exp_on_reg]]``.
    """

    family = "rtmdet"
    needs_nms = True
    ddp_find_unused_parameters = False  # every parameter takes part in every step

    def __init__(self, nc: int = 80, ch: Sequence[int] = (256, 256, 256), feat_channels: int = 256,
                 stacked_convs: int = 2, exp_on_reg: bool = False, share_conv: bool = True, pred_kernel_size: int = 1):
        super().__init__()
        if share_conv and len(set(ch)) > 1:
            raise ValueError(f"RTMDetSepBNHead shares its convolutions across levels, so every input needs the "
                             f"same channels; got {list(ch)} (make the neck's output convs equal, or share_conv=False)")
        if stacked_convs < 1:
            raise ValueError(f"RTMDetSepBNHead: stacked_convs must be >= 1, got {stacked_convs}")
        self.nc, self.nl = int(nc), len(ch)
        self.feat_channels, self.stacked_convs = int(feat_channels), int(stacked_convs)
        self.exp_on_reg, self.share_conv = bool(exp_on_reg), bool(share_conv)
        self.strides = [8 * 2**i for i in range(self.nl)]  # replaced by setup() with the measured strides

        def tower(c_in: int) -> nn.ModuleList:
            return nn.ModuleList(Conv(c_in if i == 0 else self.feat_channels, self.feat_channels, 3)
                                 for i in range(self.stacked_convs))

        pad = pred_kernel_size // 2
        self.cls_convs = nn.ModuleList(tower(c) for c in ch)
        self.reg_convs = nn.ModuleList(tower(c) for c in ch)
        self.rtm_cls = nn.ModuleList(nn.Conv2d(self.feat_channels, self.nc, pred_kernel_size, padding=pad)
                                     for _ in ch)
        self.rtm_reg = nn.ModuleList(nn.Conv2d(self.feat_channels, 4, pred_kernel_size, padding=pad) for _ in ch)
        if self.share_conv:  # one conv module (one weight tensor) per tower position; BN stays per level
            for level in range(1, self.nl):
                for i in range(self.stacked_convs):
                    self.cls_convs[level][i].conv = self.cls_convs[0][i].conv
                    self.reg_convs[level][i].conv = self.reg_convs[0][i].conv
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """mmdetection's init: every conv N(0, 0.01) with zero bias, norms weight 1 / bias 0, class
        biases at the prior probability 0.01."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for conv in self.rtm_cls:
            nn.init.constant_(conv.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))

    def extra_repr(self) -> str:
        return (f"nc={self.nc}, levels={self.nl}, feat_channels={self.feat_channels}, "
                f"stacked_convs={self.stacked_convs}, exp_on_reg={self.exp_on_reg}, share_conv={self.share_conv}")

    # ------------------------------------------------------------------ family interface
    def forward(self, feats: list[torch.Tensor], targets: dict | None = None):
        """feats: one map per level [B, ch, H_l, W_l] -> RTMDetTrainOutput (train) / RTMDetPredictions (eval)."""
        if len(feats) != self.nl:
            raise ValueError(f"RTMDetSepBNHead was built for {self.nl} levels, got {len(feats)} maps")
        cls_out, reg_out = [], []
        for level, x in enumerate(feats):
            cls_feat, reg_feat = x, x
            for conv in self.cls_convs[level]:
                cls_feat = conv(cls_feat)
            for conv in self.reg_convs[level]:
                reg_feat = conv(reg_feat)
            reg = self.rtm_reg[level](reg_feat)
            reg = reg.float().exp() if self.exp_on_reg else reg  # fp32: exp overflows fp16 from 11 on
            cls_out.append(self.rtm_cls[level](cls_feat).flatten(2))
            reg_out.append((reg * self.strides[level]).flatten(2))
        cls_logits = torch.cat(cls_out, 2).transpose(1, 2)  # [B, N, C]
        ltrb = torch.cat(reg_out, 2).transpose(1, 2)  # [B, N, 4]
        # float32 points whatever the autocast dtype: fp16 cannot hold every pixel coordinate of a large input
        points, strides = grid_priors([tuple(f.shape[2:]) for f in feats], self.strides, ltrb.device)
        if self.training:
            return RTMDetTrainOutput(cls_logits, ltrb, points, strides)
        return RTMDetPredictions(ltrb_to_xyxy(points, ltrb), cls_logits.sigmoid())

    def decode(self, outputs: RTMDetPredictions, img_shape: tuple[int, int]) -> Decoded:
        """Boxes clipped to the (h, w) input, as mmdetection's decoder clips them to the image; a box left
        with no width or height scores 0 (mmdet drops it before NMS: ``min_bbox_size=0``)."""
        boxes, scores = outputs
        h, w = img_shape
        x = boxes[..., 0::2].clamp(0, w)
        y = boxes[..., 1::2].clamp(0, h)
        boxes = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)
        keep = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        return Decoded(boxes, scores * keep.unsqueeze(-1).to(scores.dtype))
