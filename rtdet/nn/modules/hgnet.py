"""PP-HGNetV2 blocks as used by RT-DETR-L/X: the stem and the HG block (stacked convs aggregated by
concatenation, then squeeze/excitation 1x1 convs)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.modules.common import Conv, LightConv
from rtdet.nn.registry import RowContext, register

__all__ = ["HGStem", "HGBlock", "max_pool_2x2_stride1"]


def _hg_channels(repeat_at: int | None):
    """HGNet rows are written [cm, c2, ...]: c1 is prepended, c2 = args[1], no width scaling (as in the
    reference); HGBlock's YAML repeats are its number of inner convs (inserted at argument ``repeat_at``)."""

    def rule(args: list, row: RowContext) -> tuple[list, int, int]:
        if len(args) < 2:
            raise ValueError("expects at least [cm, c2]")
        args = [row.c1, *args]
        n = row.n
        if repeat_at is not None:
            args.insert(repeat_at, n)
            n = 1
        return args, args[2], n

    return rule


class _MaxPool2x2Stride1(torch.autograd.Function):
    """MaxPool2d(2, stride=1) from four shifted views, with max_pool2d's gradient: each output's gradient
    goes to the first maximum of its window in scan order (top-left, top-right, bottom-left, bottom-right).
    torch.maximum's own backward splits the gradient between tied inputs (every zero after a ReLU ties) and
    is about 30x slower than this one on the CPU, where it was most of the stem's training step."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        views = (x[..., :-1, :-1], x[..., :-1, 1:], x[..., 1:, :-1], x[..., 1:, 1:])
        top, bottom = torch.maximum(views[0], views[1]), torch.maximum(views[2], views[3])
        # Window position of the maximum; a strict ">" keeps the earlier one on ties, as max_pool2d does.
        which_top = (views[1] > views[0]).to(torch.uint8)
        which_bottom = (views[3] > views[2]).to(torch.uint8) + 2
        which = torch.where(bottom > top, which_bottom, which_top)
        ctx.save_for_backward(which)
        ctx.input_shape = x.shape
        return torch.maximum(top, bottom)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (which,) = ctx.saved_tensors
        grad_x = grad.new_zeros(ctx.input_shape)
        for k, (rows, cols) in enumerate([(slice(None, -1), slice(None, -1)), (slice(None, -1), slice(1, None)),
                                          (slice(1, None), slice(None, -1)), (slice(1, None), slice(1, None))]):
            grad_x[..., rows, cols] += grad * (which == k)
        return grad_x


def max_pool_2x2_stride1(x: torch.Tensor) -> torch.Tensor:
    """MaxPool2d(2, stride=1): the same numbers and the same gradient as max_pool2d, by the fastest CPU path
    for the case. [.., H, W] -> [.., H-1, W-1].

    Without a gradient, the maximum of four shifted views (~15x faster than max_pool2d on NCHW tensors, ~3x
    on NHWC). With one, on NCHW tensors :class:`_MaxPool2x2Stride1` (those views, max_pool2d's gradient rule);
    on NHWC tensors (training with ``channels_last``) max_pool2d itself, whose NHWC kernel is then ~3x
    faster than the views. In an export it is one MaxPool node (ONNX Runtime runs that faster than four
    slices and three maxima)."""
    if torch.jit.is_tracing():
        return F.max_pool2d(x, 2, 1)
    if not (torch.is_grad_enabled() and x.requires_grad):
        top = torch.maximum(x[..., :-1, :-1], x[..., :-1, 1:])
        bottom = torch.maximum(x[..., 1:, :-1], x[..., 1:, 1:])
        return torch.maximum(top, bottom)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return F.max_pool2d(x, 2, 1)
    return _MaxPool2x2Stride1.apply(x)


@register(channels=_hg_channels(None))
class HGStem(nn.Module):
    """Stem with a max-pool branch and a 2x2-conv branch, stride 4.  [B, c1, H, W] -> [B, c2, H/4, W/4]."""

    def __init__(self, c1: int, cm: int, c2: int):
        super().__init__()
        self.stem1 = Conv(c1, cm, 3, 2, act=nn.ReLU())
        self.stem2a = Conv(cm, cm // 2, 2, 1, 0, act=nn.ReLU())
        self.stem2b = Conv(cm // 2, cm, 2, 1, 0, act=nn.ReLU())
        self.stem3 = Conv(cm * 2, cm, 3, 2, act=nn.ReLU())
        self.stem4 = Conv(cm, c2, 1, 1, act=nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(self.stem1(x), [0, 1, 0, 1])  # pad right/bottom so the 2x2 ops keep the size
        branch = self.stem2b(F.pad(self.stem2a(x), [0, 1, 0, 1]))
        x = torch.cat([max_pool_2x2_stride1(x), branch], dim=1)
        return self.stem4(self.stem3(x))


@register(channels=_hg_channels(4))
class HGBlock(nn.Module):
    """n convs (k x k, cm channels; light = 1x1 + depthwise) in sequence; the input and all n outputs are
    concatenated, squeezed to c2/2 and excited to c2 by 1x1 convs; residual when shortcut and c1 == c2.
    [B, c1, H, W] -> [B, c2, H, W]."""

    def __init__(self, c1: int, cm: int, c2: int, k: int = 3, n: int = 6, lightconv: bool = False,
                 shortcut: bool = False, act: nn.Module = nn.ReLU()):
        super().__init__()
        block = LightConv if lightconv else Conv
        self.m = nn.ModuleList(block(c1 if i == 0 else cm, cm, k=k, act=act) for i in range(n))
        self.sc = Conv(c1 + n * cm, c2 // 2, 1, 1, act=act)
        self.ec = Conv(c2 // 2, c2, 1, 1, act=act)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [x]
        for m in self.m:
            ys.append(m(ys[-1]))
        y = self.ec(self.sc(torch.cat(ys, 1)))
        return y + x if self.add else y
