"""YOLOv9 building blocks (Wang, Yeh, Liao 2024; official WongKinYiu/yolov9 ``models/common.py``).

GELAN (generalised efficient layer aggregation) is built from RepNCSPELAN4 blocks, ELAN1 in the tiny
and small stems, AConv / ADown between stages and SPPELAN at the top. PGI's auxiliary branch adds a
second backbone that re-reads the image (``Silence`` makes the image an addressable row) and CBLinear /
CBFuse that feed it projections of the main backbone.

Parameter names and their order follow the official repository, which the Ultralytics port shares
(``RepCSP`` / ``RepBottleneck`` / ``RepConv`` there hold the same tensors under the same names), so a
state dict of either maps one to one. Channel rules (how YAML arguments become constructor arguments)
are declared at registration and follow the official ``parse_model``: only the first argument (c2) of
the blocks is width-scaled, inner widths are written as they are built.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.modules.common import Conv, RepConv, autopad
from rtdet.nn.registry import RowContext, register, scaled

__all__ = [
    "Silence",
    "RepConvN",
    "RepNBottleneck",
    "RepNCSP",
    "RepNCSPELAN4",
    "ELAN1",
    "AConv",
    "ADown",
    "SPPELAN",
    "CBLinear",
    "CBFuse",
    "DFL",
]


@register(channels="passthrough")
class Silence(nn.Module):
    """Identity. As row 0 of a dual-branch YAML it makes the input image an addressable layer output
    (index 0, 3 channels) that the auxiliary backbone reads again (``[0, 1, Conv, ...]``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@register
class RepConvN(RepConv):
    """RepVGG-style 3x3 block without the identity branch: act(BN(conv3x3(x)) + BN(conv1x1(x))).

    ``fuse_()`` merges both branches into one 3x3 convolution with bias (the official ``fuse_convs``).
    Parameters ``conv1.*`` (3x3) and ``conv2.*`` (1x1), as in the official RepConvN.
    """

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, p: int = 1, g: int = 1, d: int = 1,
                 act: bool | nn.Module = True):
        super().__init__(c1, c2, k, s, p, g, d, act, bn=False)


@register
class RepNBottleneck(nn.Module):
    """Residual bottleneck cv2(cv1(x)) [+ x] with a RepConvN first.  [B, c1, H, W] -> [B, c2, H, W].

    cv1 = RepConvN(c1, c2*e, k[0]), cv2 = Conv(c2*e, c2, k[1], groups g); the residual is added when
    ``shortcut`` and c1 == c2.
    """

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, k: tuple[int, int] = (3, 3),
                 e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = RepConvN(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


@register(channels=scaled(repeat_at=2))
class RepNCSP(nn.Module):
    """CSP block of n RepNBottlenecks: cv3(cat(m(cv1(x)), cv2(x))).  [B, c1, H, W] -> [B, c2, H, W].

    cv1, cv2: 1x1 Conv c1 -> c2*e; m: n x RepNBottleneck(c2*e, c2*e, e=1); cv3: 1x1 Conv 2*c2*e -> c2.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(RepNBottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


@register
class RepNCSPELAN4(nn.Module):
    """GELAN block (YAML ``[c2, c3, c4, c5]``).  [B, c1, H, W] -> [B, c2, H, W].

    cv1 (1x1, c1 -> c3) is split into halves y0, y1; y2 = cv2(y1) and y3 = cv3(y2), where cv2 and cv3
    are RepNCSP(n=c5) followed by a 3x3 Conv (widths c4); cv4 (1x1) fuses cat(y0, y1, y2, y3) of
    c3 + 2*c4 channels to c2.
    """

    def __init__(self, c1: int, c2: int, c3: int, c4: int, c5: int = 1):
        super().__init__()
        self.c = c3 // 2
        self.cv1 = Conv(c1, c3, 1, 1)
        self.cv2 = nn.Sequential(RepNCSP(c3 // 2, c4, c5), Conv(c4, c4, 3, 1))
        self.cv3 = nn.Sequential(RepNCSP(c4, c4, c5), Conv(c4, c4, 3, 1))
        self.cv4 = Conv(c3 + 2 * c4, c2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.append(self.cv2(y[-1]))
        y.append(self.cv3(y[-1]))
        return self.cv4(torch.cat(y, 1))


@register
class ELAN1(nn.Module):
    """Plain ELAN block of the tiny / small stems (YAML ``[c2, c3, c4]``).  [B, c1, H, W] -> [B, c2, H, W].

    As RepNCSPELAN4 with cv2 = Conv(c3/2, c4, 3) and cv3 = Conv(c4, c4, 3) instead of the CSP stacks.
    """

    def __init__(self, c1: int, c2: int, c3: int, c4: int):
        super().__init__()
        self.c = c3 // 2
        self.cv1 = Conv(c1, c3, 1, 1)
        self.cv2 = Conv(c3 // 2, c4, 3, 1)
        self.cv3 = Conv(c4, c4, 3, 1)
        self.cv4 = Conv(c3 + 2 * c4, c2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.append(self.cv2(y[-1]))
        y.append(self.cv3(y[-1]))
        return self.cv4(torch.cat(y, 1))


@register
class AConv(nn.Module):
    """Average-pool then strided conv (downsampling of T/S/M).  [B, c1, H, W] -> [B, c2, H/2, W/2].

    avg_pool2d(kernel 2, stride 1, no padding) -> Conv(c1, c2, 3, stride 2, padding 1).
    """

    def __init__(self, c1: int, c2: int):
        super().__init__()
        self.cv1 = Conv(c1, c2, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv1(F.avg_pool2d(x, 2, 1, 0, False, True))


@register
class ADown(nn.Module):
    """Two-path downsampling of C/E.  [B, c1, H, W] -> [B, c2, H/2, W/2].

    avg_pool2d(2, stride 1), then the channel halves go through a 3x3 stride-2 Conv (cv1) and through
    max_pool2d(3, stride 2, padding 1) + 1x1 Conv (cv2), each to c2/2 channels, and are concatenated.
    """

    def __init__(self, c1: int, c2: int):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1 // 2, self.c, 3, 2, 1)
        self.cv2 = Conv(c1 // 2, self.c, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = F.avg_pool2d(x, 2, 1, 0, False, True).chunk(2, 1)
        return torch.cat((self.cv1(x1), self.cv2(F.max_pool2d(x2, 3, 2, 1))), 1)


@register
class SPPELAN(nn.Module):
    """SPP with ELAN aggregation (YAML ``[c2, c3]``).  [B, c1, H, W] -> [B, c2, H, W].

    cv1 (1x1, c1 -> c3), three chained k x k stride-1 max-pools (cv2, cv3, cv4), cv5 (1x1) on the
    concatenation of the four maps (4*c3 -> c2).
    """

    def __init__(self, c1: int, c2: int, c3: int, k: int = 5):
        super().__init__()
        self.c = c3
        self.cv1 = Conv(c1, c3, 1, 1)
        self.cv2 = nn.MaxPool2d(k, 1, k // 2)
        self.cv3 = nn.MaxPool2d(k, 1, k // 2)
        self.cv4 = nn.MaxPool2d(k, 1, k // 2)
        self.cv5 = Conv(4 * c3, c2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for pool in (self.cv2, self.cv3, self.cv4):
            y.append(pool(y[-1]))
        return self.cv5(torch.cat(y, 1))


def _cblinear_rule(args: list, row: RowContext) -> tuple[list, list[int], int]:
    """``CBLinear [[c2a, c2b, ...], k]``: a list of output widths (not width-scaled, as in the official
    parse_model); the layer returns one map per width."""
    if not args or not isinstance(args[0], list | tuple) or not args[0] or not all(
            isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in args[0]):
        raise ValueError(f"expects a list of output widths as its first argument, e.g. [[256, 512]], got {args}")
    c2s = [int(c) for c in args[0]]
    return [row.c1, c2s, *args[1:]], c2s, row.n


@register(channels=_cblinear_rule)
class CBLinear(nn.Module):
    """One plain convolution (bias, no norm, no activation) whose output is split into maps of widths
    ``c2s`` (CBNet-style routing of PGI).  [B, c1, H, W] -> ([B, c2s[0], H, W], [B, c2s[1], H, W], ...)."""

    def __init__(self, c1: int, c2s: list[int], k: int = 1, s: int = 1, p: int | None = None, g: int = 1):
        super().__init__()
        self.c2s = list(c2s)
        self.conv = nn.Conv2d(c1, sum(self.c2s), k, s, autopad(k, p), groups=g, bias=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.conv(x).split(self.c2s, dim=1)


def _cbfuse_rule(args: list, row: RowContext) -> tuple[list, int, int]:
    """``[[cbl_a, cbl_b, ..., target], 1, CBFuse, [[i_a, i_b, ...]]]``: map i_k of each CBLinear row is
    added to the target map, so each must have the target's channels."""
    if len(args) != 1 or not isinstance(args[0], list | tuple):
        raise ValueError(f"expects one argument, the list of map indices (one per CBLinear input), got {args}")
    idx = list(args[0])
    sources, target = row.c_in[:-1], row.c_in[-1]
    if isinstance(target, list):
        raise ValueError("its last input must be a single map (the one the projections are added to)")
    if len(idx) != len(sources):
        raise ValueError(f"has {len(sources)} CBLinear inputs but {len(idx)} indices {idx}")
    for k, (i, c) in enumerate(zip(idx, sources)):
        if not isinstance(c, list):
            raise ValueError(f"input {k} is a single map; every input but the last must be a CBLinear row")
        if not (isinstance(i, int) and 0 <= i < len(c)):
            raise ValueError(f"index {i} of input {k} is out of range for its {len(c)} maps {c}")
        if c[i] != target:
            raise ValueError(f"map {i} of input {k} has {c[i]} channels but the target map has {target}")
    return [idx], target, row.n


@register(channels=_cbfuse_rule)
class CBFuse(nn.Module):
    """Sum of the target map (last input) and the ``idx[k]``-th map of every CBLinear input k,
    nearest-resized to the target's size.  -> [B, C, H, W] of the target."""

    def __init__(self, idx: list[int]):
        super().__init__()
        self.idx = list(idx)

    def forward(self, xs: list) -> torch.Tensor:
        target = xs[-1]
        size = target.shape[2:]
        resized = [F.interpolate(x[self.idx[k]], size=size, mode="nearest") for k, x in enumerate(xs[:-1])]
        return torch.stack([*resized, target]).sum(0)


class DFL(nn.Module):
    """Distribution focal loss integral: the expected value of a softmax over ``c1`` bins 0..c1-1.

    [B, 4*c1, N] (four sides, bins contiguous per side) -> [B, 4, N]. The bin values live in a frozen
    1x1 convolution (``conv.weight`` = 0..c1-1, counted as parameters like the references do).
    """

    def __init__(self, c1: int = 16):
        super().__init__()
        self.c1 = c1
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(c1, dtype=torch.float32).view(1, c1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n = x.shape
        return self.conv(x.view(b, 4, self.c1, n).transpose(2, 1).softmax(1)).view(b, 4, n)
