"""Basic building blocks shared by every family: Conv (+BN+act), depthwise and light convolutions,
RepConv (RepVGG), Concat and Index. Parameter names and order follow Ultralytics so its checkpoints map
one to one."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from rtdet.nn.registry import RowContext, register, scaled

__all__ = ["autopad", "fuse_conv_bn", "fuse_children", "use_activation", "Conv", "DWConv", "LightConv", "RepConv",
           "RepC3", "Concat", "Index"]


def autopad(k: int | list[int], p: int | list[int] | None = None, d: int = 1) -> int | list[int]:
    """'same' padding for kernel k and dilation d, unless p is given."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def fuse_children(module: nn.Module) -> None:
    """Fuse every descendant that knows how (``fuse_``), without descending into those that did: what a
    block or head with nothing of its own to fold does in its ``fuse_``."""
    for child in module.children():
        if hasattr(child, "fuse_"):
            child.fuse_()
        else:
            fuse_children(child)


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A single Conv2d (with bias) equal to bn(conv(x)) with the BN's running statistics."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
    ).to(conv.weight.device)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def _activation(act: bool | nn.Module) -> nn.Module:
    if act is True:
        return Conv.default_act
    return act if isinstance(act, nn.Module) else nn.Identity()


@register
class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation.  [B, c1, H, W] -> [B, c2, H/s, W/s].

    ``default_act`` (SiLU) is what ``act=True`` means; a model YAML's ``activation`` key replaces it in
    every row of that model (:func:`use_activation`), the class attribute itself is never changed.
    """

    default_act: nn.Module = nn.SiLU()

    def __init__(self, c1: int, c2: int, k=1, s=1, p=None, g=1, d=1, act: bool | nn.Module = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse_(self) -> None:
        """Fold the BatchNorm into the convolution (inference only)."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()


@register
class DWConv(Conv):
    """Depthwise convolution: Conv with groups = gcd(c1, c2)."""

    def __init__(self, c1: int, c2: int, k=1, s=1, d=1, act: bool | nn.Module = True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


@register
class LightConv(nn.Module):
    """1x1 Conv without activation followed by a k x k depthwise Conv with activation (PP-HGNetV2)."""

    def __init__(self, c1: int, c2: int, k: int = 1, act: nn.Module = nn.ReLU()):
        super().__init__()
        self.conv1 = Conv(c1, c2, 1, act=False)
        self.conv2 = DWConv(c2, c2, k, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


@register
class RepConv(nn.Module):
    """RepVGG block: act(BN(conv3x3(x)) + BN(conv1x1(x)) [+ BN(x)]), re-parameterisable into one 3x3 conv.

    The identity-BN branch exists only when ``bn`` is set, c1 == c2 and s == 1.
    """

    default_act: nn.Module = nn.SiLU()

    def __init__(self, c1: int, c2: int, k=3, s=1, p=1, g=1, d=1, act: bool | nn.Module = True, bn=False):
        super().__init__()
        assert k == 3 and p == 1, "RepConv is defined for 3x3 kernels with padding 1"
        self.g, self.c1, self.c2 = g, c1, c2
        self.act = self.default_act if act is True else act if isinstance(act, nn.Module) else nn.Identity()
        self.bn = nn.BatchNorm2d(c1) if bn and c2 == c1 and s == 1 else None
        self.conv1 = Conv(c1, c2, k, s, p=p, g=g, act=False)
        self.conv2 = Conv(c1, c2, 1, s, p=(p - k // 2), g=g, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):  # re-parameterised
            return self.act(self.conv(x))
        y = self.conv1(x) + self.conv2(x)
        if self.bn is not None:
            y = y + self.bn(x)
        return self.act(y)

    @torch.no_grad()
    def fuse_(self) -> None:
        """Merge the three branches into a single 3x3 convolution with bias."""
        if hasattr(self, "conv"):
            return
        k3, b3 = self._branch(self.conv1.conv.weight, self.conv1.bn)
        k1, b1 = self._branch(self.conv2.conv.weight, self.conv2.bn)
        kernel = k3 + nn.functional.pad(k1, [1, 1, 1, 1])
        bias = b3 + b1
        if self.bn is not None:
            per_group = self.c1 // self.g
            identity = torch.zeros_like(k3)
            for i in range(self.c1):  # c1 entries, construction only: not a hot path
                identity[i, i % per_group, 1, 1] = 1.0
            ki, bi = self._branch(identity, self.bn)
            kernel, bias = kernel + ki, bias + bi
        c = self.conv1.conv
        self.conv = nn.Conv2d(c.in_channels, c.out_channels, 3, c.stride, c.padding, c.dilation, c.groups, bias=True)
        self.conv.to(kernel.device)
        self.conv.weight.copy_(kernel)
        self.conv.bias.copy_(bias)
        del self.conv1, self.conv2
        self.bn = None

    @staticmethod
    def _branch(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        std = torch.sqrt(bn.running_var + bn.eps)
        return weight * (bn.weight / std).view(-1, 1, 1, 1), bn.bias - bn.running_mean * bn.weight / std


@register(channels="concat")
class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension`` (channels by default)."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


def _index_rule(args: list, row: RowContext) -> tuple[list, int, int]:
    """``Index [c2, i]`` (Ultralytics) or ``Index [i]``: pick map i of a multi-output layer."""
    if len(args) not in (1, 2):
        raise ValueError("expects [c2, index] or [index]")
    index = args[-1]
    source = row.c_in[0]
    if isinstance(source, list):
        if not -len(source) <= index < len(source):
            raise ValueError(f"index {index} is out of range for a layer with {len(source)} outputs {source}")
        actual = source[index]
        if len(args) == 2 and args[0] != actual:
            raise ValueError(f"declares {args[0]} channels but map {index} of its input has {actual}")
        return [index], actual, row.n
    if len(args) == 1:
        raise ValueError("its input is a single map; write [c2, index] to declare the channels")
    return [index], args[0], row.n


@register(channels=_index_rule)
class Index(nn.Module):
    """Select one map from a layer that returns a list of maps."""

    def __init__(self, index: int = 0):
        super().__init__()
        self.index = index

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return x[self.index]


@register(channels=scaled(repeat_at=2))
class RepC3(nn.Module):
    """CSP block of n RepConvs (RT-DETR's CCFM fusion block): cv3(m(cv1(x)) + cv2(x)).
    [B, c1, H, W] -> [B, c2, H, W]; cv3 is a 1x1 Conv when the hidden width c2*e differs from c2."""

    def __init__(self, c1: int, c2: int, n: int = 3, e: float = 1.0):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.m = nn.Sequential(*(RepConv(c_, c_) for _ in range(n)))
        self.cv3 = Conv(c_, c2, 1, 1) if c_ != c2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(self.m(self.cv1(x)) + self.cv2(x))


def use_activation(module: nn.Module, act: nn.Module) -> nn.Module:
    """``module`` with ``act`` wherever a :class:`Conv` or :class:`RepConv` inside it took the default
    activation (``act=True``), in place; explicit activations (``act=nn.ReLU()``, ``act=False``) stay.

    This is how a model YAML's ``activation`` reaches its rows: the builder calls it on each row it
    builds, so no class attribute is swapped while a model builds (two builds in two threads do not see
    each other's activation). Every replaced position gets the same ``act`` instance, as a swapped
    ``default_act`` gave them."""
    defaults = (Conv.default_act, RepConv.default_act)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if any(child is d for d in defaults):
                setattr(parent, name, act)
    return module
