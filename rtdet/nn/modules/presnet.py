"""PResNet, the ResNet-vd backbone of RT-DETR / RT-DETRv2 and of DEIM's RT-DETRv2 models (He et al. 2019,
"Bag of Tricks": variant d), with the official module and state-dict names (``conv1_1.conv.weight``,
``blocks.0.short.conv.norm.running_var``, ``blocks.2.branch2c.norm.weight``).

* :class:`PResNetStem` -- the official ``conv1``: three 3x3 ConvNorm+ReLU (3 -> 32 stride 2, 32 -> 32,
  32 -> 64), then the 3x3 stride-2 max-pool the official ``PResNet.forward`` applies: stride 4;
* :class:`BasicBlock` (R18 / R34) -- 3x3 ConvNorm+ReLU -> 3x3 ConvNorm, + shortcut, ReLU;
* :class:`BottleNeck` (R50 / R101) -- 1x1 -> 3x3 (stride here: variant d) -> 1x1 to 4x the width,
  + shortcut, ReLU;
* :class:`PResNetStage` -- the official ``Blocks`` (``res_layers.i``): ``count`` blocks, the first one
  strided (except in stage 2, which follows the max-pool) and with a projection shortcut; variant d
  projects a strided shortcut by a 2x2 average pool then a 1x1 ConvNorm (``short.pool``, ``short.conv``).

Every convolution is the encoder's :class:`~rtdet.nn.modules.dfine_encoder.ConvNormLayer` (conv without
bias, norm, activation; the same ``conv`` / ``norm`` names). ``freeze_norm`` builds its norms as
:class:`~rtdet.nn.modules.hgnetv2.FrozenBatchNorm2d` (statistics and affine terms as buffers): the official
RT-DETRv2 R50 / R101 configs freeze them (``freeze_norm: True``), R18 / R34 and every DEIM config train them,
which is all that separates the two backbone counts. The official ``freeze_at: 0`` (the stem's weights not
trained) is a training setting here (``freeze=0``), not a model property.

YAML rows, with the input channels written (checked against the row's input)::

    - [-1, 1, PResNetStem, [3, 64, freeze_norm]]                            # in, out
    - [-1, 1, PResNetStage, [64, 64, 2, 2, basic, freeze_norm]]             # in, width, blocks, stage, block
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.modules.dfine_encoder import ConvNormLayer
from rtdet.nn.modules.hgnetv2 import FrozenBatchNorm2d
from rtdet.nn.registry import RowContext, register

__all__ = ["conv_norm", "PResNetStem", "BasicBlock", "BottleNeck", "PResNetStage", "BLOCKS"]


def conv_norm(c1: int, c2: int, k: int, s: int = 1, act: bool = False, freeze_norm: bool = False) -> ConvNormLayer:
    """Conv2d(k, s, padding (k-1)//2, no bias) -> BatchNorm2d (FrozenBatchNorm2d with ``freeze_norm``) ->
    ReLU when ``act``.  [B, c1, H, W] -> [B, c2, H', W']."""
    layer = ConvNormLayer(c1, c2, k, s, act=nn.ReLU() if act else None)
    if freeze_norm:
        layer.norm = FrozenBatchNorm2d(c2)
    return layer


def _shortcut(c1: int, c2: int, stride: int, freeze_norm: bool) -> nn.Module:
    """Variant d's projection shortcut: 2x2 average pool (ceil mode) then 1x1 ConvNorm when strided, else a
    1x1 ConvNorm. [B, c1, H, W] -> [B, c2, ceil(H/s), ceil(W/s)]."""
    if stride == 2:
        return nn.Sequential(OrderedDict(pool=nn.AvgPool2d(2, 2, 0, ceil_mode=True),
                                         conv=conv_norm(c1, c2, 1, 1, freeze_norm=freeze_norm)))
    return conv_norm(c1, c2, 1, stride, freeze_norm=freeze_norm)


class BasicBlock(nn.Module):
    """ResNet basic block (R18 / R34).  [B, c1, H, W] -> [B, c2, H/s, W/s]:
    relu(branch2b(branch2a(x)) + short(x)), ``short`` the identity when ``shortcut``. The official code
    creates ``short`` first, so its parameters come first in the state dict."""

    expansion = 1

    def __init__(self, c1: int, c2: int, stride: int = 1, shortcut: bool = True, freeze_norm: bool = False):
        super().__init__()
        self.shortcut = shortcut
        if not shortcut:
            self.short = _shortcut(c1, c2, stride, freeze_norm)
        self.branch2a = conv_norm(c1, c2, 3, stride, act=True, freeze_norm=freeze_norm)
        self.branch2b = conv_norm(c2, c2, 3, 1, freeze_norm=freeze_norm)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x if self.shortcut else self.short(x)
        return self.act(self.branch2b(self.branch2a(x)) + short)


class BottleNeck(nn.Module):
    """ResNet bottleneck, variant d (R50 / R101).  [B, c1, H, W] -> [B, 4 width, H/s, W/s]:
    relu(branch2c(branch2b(branch2a(x))) + short(x)); branch2a 1x1 (c1 -> width), branch2b 3x3 with the
    stride (variant d strides the 3x3, not the 1x1), branch2c 1x1 (width -> 4 width, no activation)."""

    expansion = 4

    def __init__(self, c1: int, width: int, stride: int = 1, shortcut: bool = True, freeze_norm: bool = False):
        super().__init__()
        c2 = width * self.expansion
        self.branch2a = conv_norm(c1, width, 1, 1, act=True, freeze_norm=freeze_norm)
        self.branch2b = conv_norm(width, width, 3, stride, act=True, freeze_norm=freeze_norm)
        self.branch2c = conv_norm(width, c2, 1, 1, freeze_norm=freeze_norm)
        self.shortcut = shortcut
        if not shortcut:
            self.short = _shortcut(c1, c2, stride, freeze_norm)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x if self.shortcut else self.short(x)
        return self.act(self.branch2c(self.branch2b(self.branch2a(x))) + short)


BLOCKS: dict[str, type[BasicBlock] | type[BottleNeck]] = {"basic": BasicBlock, "bottleneck": BottleNeck}


def _stem_rule(args: list, row: RowContext) -> tuple[list, int, int]:
    """``PResNetStem [in, out, freeze_norm]``: input channels checked, output ``out``."""
    if len(args) < 2:
        raise ValueError("expects [in, out, freeze_norm]")
    if args[0] != row.c1:
        raise ValueError(f"declares {args[0]} input channels but its input has {row.c1}")
    if row.n != 1:
        raise ValueError(f"repeats must be 1 (got {row.n})")
    return list(args), args[1], 1


@register(channels=_stem_rule)
class PResNetStem(nn.Module):
    """The ResNet-vd stem (official ``conv1``), stride 4.  [B, c1, H, W] -> [B, c2, H/4, W/4] (ceil at each
    halving): conv1_1 3x3/2 (c1 -> c2/2), conv1_2 3x3 (c2/2), conv1_3 3x3 (c2/2 -> c2), each ConvNorm+ReLU,
    then max-pool 3x3/2 padding 1."""

    def __init__(self, c1: int = 3, c2: int = 64, freeze_norm: bool = False):
        super().__init__()
        self.conv1_1 = conv_norm(c1, c2 // 2, 3, 2, act=True, freeze_norm=freeze_norm)
        self.conv1_2 = conv_norm(c2 // 2, c2 // 2, 3, 1, act=True, freeze_norm=freeze_norm)
        self.conv1_3 = conv_norm(c2 // 2, c2, 3, 1, act=True, freeze_norm=freeze_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1_3(self.conv1_2(self.conv1_1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def _stage_rule(args: list, row: RowContext) -> tuple[list, int, int]:
    """``PResNetStage [in, width, blocks, stage_num, basic|bottleneck, freeze_norm]``: input channels
    checked; output width x the block's expansion (1 basic, 4 bottleneck)."""
    if len(args) < 5:
        raise ValueError("expects [in, width, blocks, stage_num, basic|bottleneck, freeze_norm]")
    if args[0] != row.c1:
        raise ValueError(f"declares {args[0]} input channels but its input has {row.c1}")
    if args[4] not in BLOCKS:
        raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {args[4]!r}")
    if row.n != 1:
        raise ValueError(f"repeats must be 1 (got {row.n}); the arguments say how many blocks it has")
    return list(args), args[1] * BLOCKS[args[4]].expansion, 1


@register(channels=_stage_rule)
class PResNetStage(nn.Module):
    """One ResNet-vd stage (official ``Blocks``, ``res_layers.<stage_num - 2>``).
    [B, c1, H, W] -> [B, width x expansion, H', W'], H' = ceil(H/2) except in stage 2 (H' = H).

    ``count`` blocks of ``block`` ("basic" or "bottleneck"); the first has stride 2 (stage_num > 2) and a
    projection shortcut, the others stride 1 and the identity."""

    def __init__(self, c1: int, width: int, count: int, stage_num: int, block: str = "basic",
                 freeze_norm: bool = False):
        super().__init__()
        cls = BLOCKS[block]
        c2 = width * cls.expansion
        self.blocks = nn.ModuleList(
            cls(c1 if i == 0 else c2, width, stride=2 if i == 0 and stage_num != 2 else 1, shortcut=i > 0,
                freeze_norm=freeze_norm)
            for i in range(count)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x
