"""HGNetv2, the backbone of D-FINE and DEIM (Peng et al. 2024; PP-HGNetV2 as the D-FINE code builds it).

The pieces, with the official module and state-dict names (``stem.stem1.conv.weight``,
``stages.2.blocks.0.layers.1.conv2.lab.scale``, ``stages.3.blocks.0.aggregation.1.bn.running_var``):

* :class:`ConvBNAct` -- conv (no bias, padding (k-1)//2) -> BatchNorm -> ReLU -> :class:`LearnableAffineBlock`
  (ReLU and the affine block only when ``use_act``; the affine block only with ``use_lab`` too);
* :class:`LightConvBNAct` -- 1x1 ConvBNAct without activation, then a depthwise k x k ConvBNAct with it;
* :class:`HGNetv2Stem` -- the official ``StemBlock``: stride 4 by a 3x3/2 conv, a max-pool branch next to a
  2x2-conv branch, a 3x3/2 conv and a 1x1 conv;
* :class:`HGNetv2Block` -- the official ``HG_Block`` with the "se" aggregation every HGNetv2 variant
  gets (``aggregation.0``: 1x1 to out/2, ``aggregation.1``: 1x1 to out; no ESE attention runs);
* :class:`HGNetv2Stage` -- the official ``HG_Stage``: an optional depthwise 3x3/2 downsampling
  ConvBNAct without activation, then the blocks (residual from the second on).

``freeze_norm`` builds every BatchNorm of a module as :class:`FrozenBatchNorm2d`, whose affine terms and
statistics are buffers: what D-FINE-L/X do to their whole backbone (``freeze_norm: True``), and why their
backbones count fewer parameters than DEIM-L/X's, which train those BatchNorms.

YAML rows are written as the official ``stem_channels`` and ``stage_config`` rows, input channels
included (checked against the row's input) -- see ``cfg/models/dfine/``::

    - [-1, 1, HGNetv2Stem, [3, 16, 16, use_lab, freeze_norm]]                   # in, mid, out
    - [-1, 1, HGNetv2Stage, [16, 16, 64, 1, False, False, 3, 3, use_lab, freeze_norm]]
      # in, mid, out, blocks, downsample, light_block, kernel_size, layer_num
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.modules.common import fuse_conv_bn
from rtdet.nn.modules.hgnet import max_pool_2x2_stride1
from rtdet.nn.registry import RowContext, register

__all__ = ["FrozenBatchNorm2d", "LearnableAffineBlock", "ConvBNAct", "LightConvBNAct", "HGNetv2Stem",
           "HGNetv2Block", "HGNetv2Stage", "batch_norm"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine terms, all four held as buffers (so not parameters,
    never trained, but saved and loaded).  [B, C, H, W] -> [B, C, H, W], y = (x - mean) / sqrt(var + eps)
    * weight + bias in train and eval mode alike."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A trainable BatchNorm's state (DEIM's unfrozen backbone) also carries a step counter; frozen
        # statistics have none, so it is dropped rather than reported as unexpected.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def batch_norm(channels: int, freeze_norm: bool = False) -> nn.Module:
    """A trainable BatchNorm2d, or a :class:`FrozenBatchNorm2d` (buffers only) with ``freeze_norm``."""
    return FrozenBatchNorm2d(channels) if freeze_norm else nn.BatchNorm2d(channels)


class LearnableAffineBlock(nn.Module):
    """y = scale * x + bias with two learnable scalars (shape [1], init 1 and 0), registered in that order."""

    def __init__(self, scale_value: float = 1.0, bias_value: float = 0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale_value]))
        self.bias = nn.Parameter(torch.tensor([bias_value]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x + self.bias


class ConvBNAct(nn.Module):
    """Conv2d(k, s, groups g, padding (k-1)//2, no bias) -> BatchNorm -> ReLU -> LearnableAffineBlock.
    [B, c1, H, W] -> [B, c2, H', W'] with H' = (H + 2 ((k-1)//2) - k) // s + 1.

    Without ``use_act`` both the ReLU and the affine block are Identity (the official code adds the
    affine block only after an activation)."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, g: int = 1, use_act: bool = True,
                 use_lab: bool = False, freeze_norm: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, padding=(k - 1) // 2, groups=g, bias=False)
        self.bn = batch_norm(c2, freeze_norm)
        self.act = nn.ReLU() if use_act else nn.Identity()
        self.lab = LearnableAffineBlock() if use_act and use_lab else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lab(self.act(self.bn(self.conv(x))))

    def fuse_(self) -> None:
        """Fold the (trainable or frozen) BatchNorm into the convolution (inference only)."""
        if isinstance(self.bn, nn.BatchNorm2d | FrozenBatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()


class LightConvBNAct(nn.Module):
    """1x1 ConvBNAct without activation (so without affine block), then a depthwise k x k ConvBNAct with
    activation.  [B, c1, H, W] -> [B, c2, H, W]."""

    def __init__(self, c1: int, c2: int, k: int, use_lab: bool = False, freeze_norm: bool = False):
        super().__init__()
        self.conv1 = ConvBNAct(c1, c2, 1, use_act=False, use_lab=use_lab, freeze_norm=freeze_norm)
        self.conv2 = ConvBNAct(c2, c2, k, g=c2, use_lab=use_lab, freeze_norm=freeze_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


def _full_row(what: str, out_at: int):
    """Channel rule of rows written in full, as the official config (input channels first): the input
    channels are checked against the row's input, the output channels are ``args[out_at]``; no width
    scaling (each D-FINE size names its own HGNetv2 variant)."""

    def rule(args: list, row: RowContext) -> tuple[list, int, int]:
        if len(args) <= out_at:
            raise ValueError(f"expects {what}")
        if args[0] != row.c1:
            raise ValueError(f"declares {args[0]} input channels but its input has {row.c1}")
        if row.n != 1:
            raise ValueError(f"repeats must be 1 (got {row.n}); the arguments say how many blocks it has")
        return list(args), args[out_at], 1

    return rule


@register(channels=_full_row("[in, mid, out, use_lab, freeze_norm]", 2))
class HGNetv2Stem(nn.Module):
    """HGNetv2's stem (official ``StemBlock``), stride 4.  [B, c1, H, W] -> [B, c2, ceil(H/4), ceil(W/4)]
    (stem1 gives ceil(H/2); the 2x2 ops on the right/bottom-padded map keep that size; stem3 gives
    ceil(ceil(H/2)/2) = ceil(H/4)).

    stem1 3x3/2 (c1 -> cm); padded by one column and row; branch a: stem2a 2x2 (cm -> cm/2), padded again,
    stem2b 2x2 (cm/2 -> cm); branch b: 2x2 stride-1 max-pool; cat (2 cm) -> stem3 3x3/2 (cm) -> stem4 1x1 (c2).
    """

    def __init__(self, c1: int, cm: int, c2: int, use_lab: bool = False, freeze_norm: bool = False):
        super().__init__()
        kw = {"use_lab": use_lab, "freeze_norm": freeze_norm}
        self.stem1 = ConvBNAct(c1, cm, 3, 2, **kw)
        self.stem2a = ConvBNAct(cm, cm // 2, 2, 1, **kw)
        self.stem2b = ConvBNAct(cm // 2, cm, 2, 1, **kw)
        self.stem3 = ConvBNAct(cm * 2, cm, 3, 2, **kw)
        self.stem4 = ConvBNAct(cm, c2, 1, 1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(self.stem1(x), [0, 1, 0, 1])  # a 2x2 kernel on the padded map keeps the size
        branch = self.stem2b(F.pad(self.stem2a(x), [0, 1, 0, 1]))
        x = torch.cat([max_pool_2x2_stride1(x), branch], dim=1)
        return self.stem4(self.stem3(x))


class HGNetv2Block(nn.Module):
    """The official ``HG_Block`` with "se" aggregation.  [B, c1, H, W] -> [B, c2, H, W].

    ``layer_num`` k x k convs in sequence (ConvBNAct, or LightConvBNAct with ``light_block``), the first
    from c1, the others from cm; cat[x, y1, ..., yn] (c1 + n cm channels) -> aggregation.0 (1x1 -> c2/2)
    -> aggregation.1 (1x1 -> c2), both with activation; + x when ``residual``."""

    def __init__(self, c1: int, cm: int, c2: int, layer_num: int, k: int = 3, residual: bool = False,
                 light_block: bool = False, use_lab: bool = False, freeze_norm: bool = False):
        super().__init__()
        kw = {"use_lab": use_lab, "freeze_norm": freeze_norm}
        self.residual = residual
        self.layers = nn.ModuleList(
            LightConvBNAct(c1 if i == 0 else cm, cm, k, **kw) if light_block
            else ConvBNAct(c1 if i == 0 else cm, cm, k, **kw)
            for i in range(layer_num)
        )
        total = c1 + layer_num * cm
        self.aggregation = nn.Sequential(ConvBNAct(total, c2 // 2, 1, **kw), ConvBNAct(c2 // 2, c2, 1, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [x]
        for layer in self.layers:
            ys.append(layer(ys[-1]))
        y = self.aggregation(torch.cat(ys, dim=1))
        return y + x if self.residual else y


@register(channels=_full_row(
    "[in, mid, out, blocks, downsample, light_block, kernel_size, layer_num, use_lab, freeze_norm]", 2))
class HGNetv2Stage(nn.Module):
    """The official ``HG_Stage``.  [B, c1, H, W] -> [B, c2, H', W'], H' = ceil(H/2) with ``downsample``
    (a depthwise 3x3/2 ConvBNAct without activation, hence without affine block), else H.

    Then ``block_num`` :class:`HGNetv2Block` (c1 -> c2 for the first, c2 -> c2 with a residual for the
    others), each of ``layer_num`` k x k convs of cm channels. The arguments follow the official
    ``stage_config`` rows (``HG_Stage``'s own signature puts layer_num fourth)."""

    def __init__(self, c1: int, cm: int, c2: int, block_num: int, downsample: bool = True,
                 light_block: bool = False, k: int = 3, layer_num: int = 6, use_lab: bool = False,
                 freeze_norm: bool = False):
        super().__init__()
        kw = {"use_lab": use_lab, "freeze_norm": freeze_norm}
        self.downsample = ConvBNAct(c1, c1, 3, 2, g=c1, use_act=False, **kw) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*(
            HGNetv2Block(c1 if i == 0 else c2, cm, c2, layer_num, k, residual=i > 0, light_block=light_block, **kw)
            for i in range(block_num)
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))
