"""CSPNeXt, RTMDet's backbone and neck blocks (Lyu et al. 2022, "RTMDet: An Empirical Study of Designing
Real-Time Object Detectors"), with mmdetection 3.x's parameter names so its checkpoints map one to one.

Every convolution is a :class:`~rtdet.nn.modules.common.Conv` (conv without bias -> BatchNorm -> SiLU),
whose state-dict keys ``conv.weight`` / ``bn.*`` are those of mmcv's ``ConvModule``.

* :class:`CSPNeXtStem` -- three 3x3 convs, the first with stride 2 (mmdet ``backbone.stem``);
* :class:`CSPNeXtBlock` -- a 3x3 conv and a 5x5 depthwise-separable conv, with a residual when asked and
  the widths allow it (the "large-kernel" block);
* :class:`CSPLayer` -- 1x1 main / short branches at ``expand_ratio`` of the output width, the blocks on
  the main branch, concatenation, optional :class:`ChannelAttention`, 1x1 fusion;
* :class:`SPPBottleneck` -- 1x1 to half width, parallel 5/9/13 max-pools, concatenation, 1x1;
* :class:`DepthwiseSeparableConv`, :class:`ChannelAttention` -- the pieces of the two above.

A CSPNeXt stage is two (the last: three) YAML rows: ``Conv [c2, 3, 2]`` (the stage's downsampling),
[``SPPBottleneck [c2]``,] ``CSPLayer [c2, add_identity, channel_attention]``; CSPNeXtPAFPN is written out
as rows too (1x1 reduce, nn.Upsample, Concat, CSPLayer; 3x3 stride-2 Conv, Concat, CSPLayer; 3x3 output
Convs), see ``cfg/models/rtmdet/``. Widths are written as mmdetection computes them
(``int(c * widen_factor)``), so the files need no ``scales``.

Initialisation follows mmdetection: its Kaiming-uniform(a=sqrt(5)) for convolutions is PyTorch's default,
and the only biases (ChannelAttention's) start at zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from rtdet.nn.modules.common import Conv
from rtdet.nn.registry import RowContext, register, scaled

__all__ = ["ChannelAttention", "CSPLayer", "CSPNeXtBlock", "CSPNeXtStem", "DepthwiseSeparableConv",
           "SPPBottleneck"]


@register
class DepthwiseSeparableConv(nn.Module):
    """k x k depthwise Conv (BN, act) then 1x1 pointwise Conv (BN, act), as mmcv's
    DepthwiseSeparableConvModule.  [B, c1, H, W] -> [B, c2, H/s, W/s]."""

    def __init__(self, c1: int, c2: int, k: int = 5, s: int = 1):
        super().__init__()
        self.depthwise_conv = Conv(c1, c1, k, s, g=c1)
        self.pointwise_conv = Conv(c1, c2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


@register(channels="same")
class ChannelAttention(nn.Module):
    """x * hardsigmoid(fc(mean over H, W of x)), fc a 1x1 conv with bias.  [B, C, H, W] -> [B, C, H, W].

    (mmdetection pools under ``autocast(enabled=False)``; average pooling is no autocast op, so that
    changes nothing and is left out.)"""

    def __init__(self, c1: int):
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(c1, c1, 1, 1, 0, bias=True)
        self.act = nn.Hardsigmoid()
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.act(self.fc(self.global_avgpool(x)))


@register
class CSPNeXtBlock(nn.Module):
    """Conv 3x3 (c1 -> c2 * expansion), then a 5x5 depthwise-separable conv (-> c2); plus the input when
    ``add_identity`` and c1 == c2.  [B, c1, H, W] -> [B, c2, H, W]."""

    def __init__(self, c1: int, c2: int, expansion: float = 0.5, add_identity: bool = True, kernel_size: int = 5):
        super().__init__()
        hidden = int(c2 * expansion)
        self.conv1 = Conv(c1, hidden, 3)
        self.conv2 = DepthwiseSeparableConv(hidden, c2, kernel_size)
        self.add_identity = bool(add_identity) and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


@register(channels=scaled(repeat_at=2))
class CSPLayer(nn.Module):
    """Cross-stage-partial layer of CSPNeXt blocks.  [B, c1, H, W] -> [B, c2, H, W].

    main = n CSPNeXtBlocks(main_conv(x)), short = short_conv(x) (both 1x1, width c2 * expand_ratio);
    out = final_conv(attention(cat[main, short])). YAML: ``[-1, n, CSPLayer, [c2, add_identity,
    channel_attention]]`` (n blocks; the backbone's stages use channel attention, the neck's do not).
    """

    def __init__(self, c1: int, c2: int, n: int = 1, add_identity: bool = True, channel_attention: bool = False,
                 expand_ratio: float = 0.5):
        super().__init__()
        mid = int(c2 * expand_ratio)
        # attribute order = mmdetection's, so the parameters come in the same order
        self.main_conv = Conv(c1, mid, 1)
        self.short_conv = Conv(c1, mid, 1)
        self.final_conv = Conv(2 * mid, c2, 1)
        self.blocks = nn.Sequential(*(CSPNeXtBlock(mid, mid, 1.0, add_identity) for _ in range(n)))
        self.channel_attention = bool(channel_attention)
        if self.channel_attention:
            self.attention = ChannelAttention(2 * mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat((self.blocks(self.main_conv(x)), self.short_conv(x)), dim=1)
        if self.channel_attention:
            y = self.attention(y)
        return self.final_conv(y)


@register
class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling: conv1 1x1 (c1 -> c1 // 2), max-pools of each kernel (stride 1, same size)
    in parallel, concatenation with their input, conv2 1x1 (-> c2).  [B, c1, H, W] -> [B, c2, H, W]."""

    def __init__(self, c1: int, c2: int, kernel_sizes: Sequence[int] = (5, 9, 13)):
        super().__init__()
        mid = c1 // 2
        self.conv1 = Conv(c1, mid, 1)
        self.poolings = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes)
        self.conv2 = Conv(mid * (len(kernel_sizes) + 1), c2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x, *(pool(x) for pool in self.poolings)], dim=1))


def _stem_channels(args: list, row: RowContext) -> tuple[list, int, int]:
    """``CSPNeXtStem [c_mid, c2]``: written as mmdetection computes them, never width-scaled (RTMDet-tiny's
    12-channel stem is not a multiple of 8)."""
    if len(args) != 2 or not all(isinstance(a, int) and a > 0 for a in args):
        raise ValueError(f"expects [c_mid, c2] (two positive ints), got {args}")
    return [row.c1, *args], args[1], row.n


@register(channels=_stem_channels)
class CSPNeXtStem(nn.Sequential):
    """Conv 3x3 stride 2 (c1 -> c_mid), Conv 3x3 (c_mid), Conv 3x3 (-> c2).  [B, c1, H, W] -> [B, c2, H/2, W/2].

    Children ``0, 1, 2`` = mmdetection's ``backbone.stem.0/1/2``."""

    def __init__(self, c1: int, c_mid: int, c2: int):
        super().__init__(Conv(c1, c_mid, 3, 2), Conv(c_mid, c_mid, 3, 1), Conv(c_mid, c2, 3, 1))
