"""The blocks of D-FINE's hybrid encoder (Peng et al. 2024, ``HybridEncoder`` of the D-FINE code), with
the official module and state-dict names (``cv2.0.bottlenecks.0.conv1.norm.running_mean``).

* :class:`ConvNormLayer` -- conv (no bias) -> BatchNorm -> activation (none by default): the encoder's
  input projections (1x1 + BN) and lateral convs (1x1 + BN, no activation, unlike RT-DETR's SiLU);
* :class:`VGGBlock` -- RepVGG without identity branch: act(BN(conv3x3 x) + BN(conv1x1 x)), folded by
  ``fuse_`` into one 3x3 conv with bias;
* :class:`DFineCSPLayer` -- D-FINE's ``CSPLayer``: bottlenecks(conv1 x) **+** conv2 x (YOLO's CSP blocks
  concatenate), then conv3 (1x1) only when the hidden width differs from the output's;
* :class:`DFineELAN` -- D-FINE's ``RepNCSPELAN4``: YOLOv9's GELAN wiring (cv1 split in halves, cv2 and
  cv3 chained on the second, cv4 fusing all four) with DFineCSPLayer + 3x3 conv in cv2 / cv3; named apart
  from YOLOv9's :class:`~rtdet.nn.modules.yolov9.RepNCSPELAN4`, whose inner block differs;
* :class:`SCDown` -- 1x1 ConvBN then depthwise k x k stride-s ConvBN, neither with activation.

The encoder's attention layer is rtdet's :class:`~rtdet.nn.modules.transformer.AIFI`: D-FINE's
``TransformerEncoderLayer`` computes the same function (post-norm, q = k = x + pos, v = x, GELU FFN,
dropout 0, 2-D sin-cos embedding with temperature 10000) with parameters in the same order (attention,
FFN linear 1 and 2, norm 1 and 2); only their names differ (``self_attn`` / ``linear1`` there, ``ma`` /
``fc1`` here). The two embeddings agree on square maps, the only ones D-FINE feeds it (640 x 640 and
square multi-scale sizes); on an h != w map D-FINE's (meshgrid over (w, h)) pairs token y*w + x with the
row and column of a w x h grid, rtdet's with (y, x).

The encoder itself is written as YAML rows (``cfg/models/dfine/``), in the official data flow.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.modules.common import fuse_children, fuse_conv_bn
from rtdet.nn.registry import register, scaled

__all__ = ["ConvNormLayer", "VGGBlock", "DFineCSPLayer", "DFineELAN", "SCDown"]


def _act(act: nn.Module | bool | None) -> nn.Module:
    """An activation argument as a module: a module as given, True = SiLU, None / False = none."""
    if isinstance(act, nn.Module):
        return act
    return nn.SiLU() if act is True else nn.Identity()


@register
class ConvNormLayer(nn.Module):
    """Conv2d(k, s, groups g, padding (k-1)//2, no bias) -> BatchNorm2d -> act (none by default; True means
    SiLU).  [B, c1, H, W] -> [B, c2, H', W'], H' = (H + 2 ((k-1)//2) - k) // s + 1.

    YAML ``ConvNormLayer [256]`` is a 1x1 projection without activation (D-FINE's input_proj and
    lateral_convs)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: nn.Module | bool | None = None):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, padding=(k - 1) // 2, groups=g, bias=False)
        self.norm = nn.BatchNorm2d(c2)
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))

    def fuse_(self) -> None:
        """Fold the BatchNorm into the convolution (inference only)."""
        if isinstance(self.norm, nn.BatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.norm)
            self.norm = nn.Identity()


@register
class VGGBlock(nn.Module):
    """RepVGG block without identity branch: act(BN(conv3x3(x)) + BN(conv1x1(x))).
    [B, c1, H, W] -> [B, c2, H, W]. ``fuse_`` replaces both branches by one 3x3 conv with bias, ``conv``
    (the official deploy form's name)."""

    def __init__(self, c1: int, c2: int, act: nn.Module | bool | None = True):
        super().__init__()
        self.conv1 = ConvNormLayer(c1, c2, 3, 1)
        self.conv2 = ConvNormLayer(c1, c2, 1, 1)
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):  # fused
            return self.act(self.conv(x))
        return self.act(self.conv1(x) + self.conv2(x))

    @torch.no_grad()
    def fuse_(self) -> None:
        """Fold both BatchNorms into their convs and the 1x1 kernel into the centre of the 3x3 one."""
        if hasattr(self, "conv"):
            return
        k3 = fuse_conv_bn(self.conv1.conv, self.conv1.norm)
        k1 = fuse_conv_bn(self.conv2.conv, self.conv2.norm)
        fused = nn.Conv2d(k3.in_channels, k3.out_channels, 3, 1, padding=1, bias=True).to(k3.weight.device)
        fused.weight.copy_(k3.weight + F.pad(k1.weight, [1, 1, 1, 1]))
        fused.bias.copy_(k3.bias + k1.bias)
        self.conv = fused
        del self.conv1, self.conv2


@register(channels=scaled(repeat_at=2))
class DFineCSPLayer(nn.Module):
    """D-FINE's CSPLayer.  [B, c1, H, W] -> [B, c2, H, W], with hidden = int(c2 * expansion):
    conv3(bottlenecks(conv1(x)) + conv2(x)); conv1, conv2 1x1 (c1 -> hidden, act), n VGGBlocks (hidden),
    conv3 a 1x1 ConvNormLayer with act when hidden != c2, else Identity."""

    def __init__(self, c1: int, c2: int, n: int = 3, expansion: float = 1.0, act: nn.Module | bool | None = True):
        super().__init__()
        hidden = int(c2 * expansion)
        self.conv1 = ConvNormLayer(c1, hidden, 1, 1, act=_act(act))
        self.conv2 = ConvNormLayer(c1, hidden, 1, 1, act=_act(act))
        self.bottlenecks = nn.Sequential(*(VGGBlock(hidden, hidden, act=_act(act)) for _ in range(n)))
        self.conv3 = ConvNormLayer(hidden, c2, 1, 1, act=_act(act)) if hidden != c2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))

    def fuse_(self) -> None:
        """Fold every conv's BatchNorm and every VGGBlock's branches (inference only)."""
        fuse_children(self)


@register
class DFineELAN(nn.Module):
    """D-FINE's RepNCSPELAN4 (YAML ``DFineELAN [c2, c3, c4, n]``).  [B, c1, H, W] -> [B, c2, H, W].

    cv1 (1x1, c1 -> c3, SiLU) split into halves a, b (c3/2 each); y2 = cv2(b) with cv2 = DFineCSPLayer(c3/2
    -> c4, n VGGBlocks) + 3x3 ConvNormLayer (c4); y3 = cv3(y2) likewise (c4 -> c4); cv4 (1x1) fuses
    cat[a, b, y2, y3] (c3 + 2 c4 channels) to c2. In D-FINE c1 = c3 = 2h, c2 = h,
    c4 = round(expansion * h // 2), n = round(3 * depth_mult)."""

    def __init__(self, c1: int, c2: int, c3: int, c4: int, n: int = 3, act: nn.Module | bool | None = True):
        super().__init__()
        self.c = c3 // 2
        self.cv1 = ConvNormLayer(c1, c3, 1, 1, act=_act(act))
        self.cv2 = nn.Sequential(DFineCSPLayer(self.c, c4, n, 1.0, act), ConvNormLayer(c4, c4, 3, 1, act=_act(act)))
        self.cv3 = nn.Sequential(DFineCSPLayer(c4, c4, n, 1.0, act), ConvNormLayer(c4, c4, 3, 1, act=_act(act)))
        self.cv4 = ConvNormLayer(c3 + 2 * c4, c2, 1, 1, act=_act(act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.append(self.cv2(y[-1]))
        y.append(self.cv3(y[-1]))
        return self.cv4(torch.cat(y, 1))

    def fuse_(self) -> None:
        """Fold every conv's BatchNorm and every VGGBlock's branches (inference only)."""
        fuse_children(self)


@register
class SCDown(nn.Module):
    """Spatial-channel decoupled downsampling (YAML ``SCDown [c2, k, s]``): cv1 1x1 ConvNormLayer
    (c1 -> c2) then cv2 depthwise k x k stride-s ConvNormLayer (groups c2), neither with activation.
    [B, c1, H, W] -> [B, c2, H', W'], H' = (H + 2 ((k-1)//2) - k) // s + 1 (ceil(H/2) for k 3, s 2)."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 2):
        super().__init__()
        self.cv1 = ConvNormLayer(c1, c2, 1, 1)
        self.cv2 = ConvNormLayer(c2, c2, k, s, g=c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(x))
