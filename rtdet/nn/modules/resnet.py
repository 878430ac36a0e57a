"""ResNet layers as Ultralytics' RT-DETR-R50/R101 YAMLs use them (a plain ResNet-B bottleneck, not the
official RT-DETR's ResNet-vd)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.modules.common import Conv
from rtdet.nn.registry import RowContext, register

__all__ = ["ResNetBlock", "ResNetLayer"]


class ResNetBlock(nn.Module):
    """Bottleneck: 1x1 -> 3x3 (stride s) -> 1x1 to e*c2, plus a projection shortcut when the shape
    changes; ReLU after the sum.  [B, c1, H, W] -> [B, e*c2, H/s, W/s]."""

    def __init__(self, c1: int, c2: int, s: int = 1, e: int = 4):
        super().__init__()
        c3 = e * c2
        self.cv1 = Conv(c1, c2, k=1, s=1, act=True)
        self.cv2 = Conv(c2, c2, k=3, s=s, p=1, act=True)
        self.cv3 = Conv(c2, c3, k=1, act=False)
        self.shortcut = nn.Sequential(Conv(c1, c3, k=1, s=s, act=False)) if s != 1 or c1 != c3 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.cv3(self.cv2(self.cv1(x))) + self.shortcut(x))


def _resnet_channels(args: list, row: RowContext) -> tuple[list, int, int]:
    """ResNetLayer rows are written in full ([c1, c2, s, is_first, n, e]); out = c2 (stem) or e*c2."""
    if len(args) < 2:
        raise ValueError("expects [c1, c2, s, is_first, n]")
    if args[0] != row.c1:
        raise ValueError(f"declares {args[0]} input channels but its input has {row.c1}")
    is_first = bool(args[3]) if len(args) > 3 else False
    e = args[5] if len(args) > 5 else 4
    return list(args), args[1] if is_first else args[1] * e, row.n


@register(channels=_resnet_channels)
class ResNetLayer(nn.Module):
    """A ResNet stage: the 7x7/2 conv + 3x3/2 max-pool stem when ``is_first``, else n bottleneck blocks
    (the first with stride s)."""

    def __init__(self, c1: int, c2: int, s: int = 1, is_first: bool = False, n: int = 1, e: int = 4):
        super().__init__()
        self.is_first = is_first
        if is_first:
            self.layer = nn.Sequential(
                Conv(c1, c2, k=7, s=2, p=3, act=True), nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            )
        else:
            blocks = [ResNetBlock(c1, c2, s, e=e)]
            blocks.extend(ResNetBlock(e * c2, c2, 1, e=e) for _ in range(n - 1))
            self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)
