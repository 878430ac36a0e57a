"""SHViT: single-head vision transformer (Yun & Ro, CVPR 2024, ysj9909/SHViT) -- backbones and blocks.

* ``SHSA``: single-head self-attention on the first ``pdim`` channels (GroupNorm pre-norm, one Conv-BN for
  q, k, v), the other channels passed through untouched, then ReLU + Conv-BN projection of all channels.
* ``SHViTBlock``: residual 3x3 depthwise Conv-BN, residual SHSA (type 's') and residual FFN.
* ``SHViT``: 16x16 overlapping patchify stem, three stages at strides 16 / 32 / 64 joined by
  PatchMerging downsamplers; registered as ``shvit_s1`` ... ``shvit_s4`` (multi-output backbones).

Parameter names follow the official ``model/shvit.py`` (``patch_embed.*``, ``blocks1.*``, ``blocks2.*``,
``blocks3.*``; ``.c`` / ``.bn`` in every Conv-BN; ``mixer.m.qkv`` ...), so an official checkpoint loads by
key once its classifier (``head.*``, ``head_dist.*``) is dropped. ``fuse_()`` folds every Conv-BN, and a
residual depthwise Conv-BN together with its identity, into single convolutions for inference.

SHViT has no stride-8 map; for a P3-P5 detector upsample the stride-16 map (e.g. with DySample), see
``docs/modules.md``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.modules.common import fuse_children, fuse_conv_bn
from rtdet.nn.registry import register

__all__ = [
    "Conv2dBN",
    "Residual",
    "FFN",
    "SHSA",
    "SHViTBlock",
    "PatchMerging",
    "SqueezeExcite",
    "SHViT",
    "SHVIT_VARIANTS",
    "SHVIT_MODELS",
    "SHViTS1",
    "SHViTS2",
    "SHViTS3",
    "SHViTS4",
]

# name: (embed_dim, partial_dim, depth, types) of the official model/build.py configurations.
SHVIT_VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[str, ...]]] = {
    "s1": ((128, 224, 320), (32, 48, 68), (2, 4, 5), ("i", "s", "s")),
    "s2": ((128, 308, 448), (32, 66, 96), (2, 4, 5), ("i", "s", "s")),
    "s3": ((192, 352, 448), (48, 75, 96), (3, 5, 5), ("i", "s", "s")),
    "s4": ((224, 336, 448), (48, 72, 96), (4, 7, 6), ("i", "s", "s")),
}


class Conv2dBN(nn.Sequential):
    """Conv2d (no bias) followed by BatchNorm2d, children named ``c`` and ``bn`` as in the official code.
    ``bn_weight_init`` = 0 makes the block output zero at initialisation (used on residual branches)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int = 0, d: int = 1, g: int = 1,
                 bn_weight_init: float = 1.0):
        super().__init__()
        self.add_module("c", nn.Conv2d(c1, c2, k, s, p, d, g, bias=False))
        self.add_module("bn", nn.BatchNorm2d(c2))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    @torch.no_grad()
    def fuse_(self) -> None:
        """Fold the BatchNorm (running statistics) into the convolution, in place (inference)."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.c = fuse_conv_bn(self.c, self.bn)
            self.bn = nn.Identity()


class Residual(nn.Module):
    """x + m(x).  ``fuse_()`` turns a residual depthwise Conv-BN into a single depthwise convolution by
    folding the BatchNorm and adding the identity at the kernel centre."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m
        self.identity_folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity_folded:
            return self.m(x)
        return x + self.m(x)

    @torch.no_grad()
    def fuse_(self) -> None:
        if self.identity_folded:
            return
        conv = self.m.c if isinstance(self.m, Conv2dBN) else None
        if conv is not None and _is_same_size_depthwise(conv):
            self.m.fuse_()
            fused = self.m.c
            k = fused.kernel_size
            fused.weight[:, 0, k[0] // 2, k[1] // 2] += 1.0  # y = conv(x) + x: identity is a centre tap
            self.m = fused
            self.identity_folded = True
        elif hasattr(self.m, "fuse_"):
            self.m.fuse_()
        else:
            fuse_children(self.m)


def _is_same_size_depthwise(conv: nn.Conv2d) -> bool:
    """A depthwise, stride-1, 'same'-padded convolution with an odd kernel (identity = centre tap)."""
    k, p = conv.kernel_size, conv.padding
    return (
        conv.groups == conv.in_channels == conv.out_channels
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and all(ki % 2 == 1 and pi == ki // 2 for ki, pi in zip(k, p))
    )


class FFN(nn.Module):
    """1x1 Conv-BN -> ReLU -> 1x1 Conv-BN (zero-initialised BN).  [B, C, H, W] -> same."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.pw1 = Conv2dBN(dim, hidden)
        self.act = nn.ReLU()
        self.pw2 = Conv2dBN(hidden, dim, bn_weight_init=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))


@register(channels="same")
class SHSA(nn.Module):
    """Single-head self-attention on a partial set of channels.  [B, C, H, W] -> same.

    The first ``pdim`` channels are GroupNorm-ed and projected to q, k (``qk_dim`` each) and v (``pdim``);
    softmax(q^T k / sqrt(qk_dim)) over all H*W positions mixes v; the result and the untouched remaining
    channels go through ReLU and a zero-initialised 1x1 Conv-BN over all C channels.

    Args:
        dim: C, input and output channels.
        qk_dim: query / key channels (16 in SHViT).
        pdim: attended channels (default C // 4; SHViT uses ~C / 4.67).
        residual: add the input back (x + SHSA(x)), as SHViT's blocks do. On by default for use as a YAML
            layer: the projection starts at zero, so without it the layer would output zeros at init.
            SHViT's own blocks use ``residual=False`` inside a ``Residual`` wrapper (official key names).
    """

    def __init__(self, dim: int, qk_dim: int = 16, pdim: int | None = None, residual: bool = True):
        super().__init__()
        pdim = dim // 4 if pdim is None else int(pdim)
        if not 0 < pdim <= dim:
            raise ValueError(f"SHSA pdim must be in 1..{dim} (the input channels), got {pdim}")
        if qk_dim < 1:
            raise ValueError(f"SHSA qk_dim must be positive, got {qk_dim}")
        self.dim, self.qk_dim, self.pdim, self.residual = dim, int(qk_dim), pdim, bool(residual)
        self.scale = self.qk_dim**-0.5
        self.pre_norm = nn.GroupNorm(1, pdim)
        self.qkv = Conv2dBN(pdim, 2 * self.qk_dim + pdim)
        self.proj = nn.Sequential(nn.ReLU(), Conv2dBN(dim, dim, bn_weight_init=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x1, x2 = x.split([self.pdim, self.dim - self.pdim], dim=1)
        q, k, v = self.qkv(self.pre_norm(x1)).flatten(2).split([self.qk_dim, self.qk_dim, self.pdim], dim=1)
        # Tokens along the sequence axis: (B, 1 head, N, ch). Same maths as softmax(q^T k * scale) with
        # v @ attn^T, but never materialises the N x N matrix when a fused kernel is available.
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2).unsqueeze(1), k.transpose(1, 2).unsqueeze(1), v.transpose(1, 2).unsqueeze(1),
            scale=self.scale,
        )
        x1 = attn.squeeze(1).transpose(1, 2).reshape(b, self.pdim, h, w)
        y = self.proj(torch.cat([x1, x2], dim=1))
        return x + y if self.residual else y

    def fuse_(self) -> None:
        fuse_children(self)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, qk_dim={self.qk_dim}, pdim={self.pdim}, residual={self.residual}"


@register(channels="same")
class SHViTBlock(nn.Module):
    """SHViT basic block: residual 3x3 depthwise Conv-BN, residual SHSA (``type='s'``; none for 'i'),
    residual FFN with hidden 2C. Every branch is zero at init.  [B, C, H, W] -> same.

    Args mirror :class:`SHSA`: ``(dim, qk_dim=16, pdim=dim // 4, type='s')``.
    """

    def __init__(self, dim: int, qk_dim: int = 16, pdim: int | None = None, type: str = "s"):
        super().__init__()
        if type not in ("s", "i"):
            raise ValueError(f"SHViTBlock type must be 's' (with attention) or 'i' (without), got {type!r}")
        self.conv = Residual(Conv2dBN(dim, dim, 3, 1, 1, g=dim, bn_weight_init=0))
        self.mixer = Residual(SHSA(dim, qk_dim, pdim, residual=False)) if type == "s" else nn.Identity()
        self.ffn = Residual(FFN(dim, 2 * dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.mixer(self.conv(x)))

    def fuse_(self) -> None:
        fuse_children(self)


class SqueezeExcite(nn.Module):
    """timm's SEModule as SHViT uses it: x * sigmoid(fc2(ReLU(fc1(mean_hw(x))))), 1x1 convs with bias,
    reduced width = ``rd_ratio`` * C rounded to the nearest multiple of 8 (timm make_divisible, no
    round-up limit)."""

    def __init__(self, channels: int, rd_ratio: float = 0.25, divisor: int = 8):
        super().__init__()
        rd = max(divisor, int(channels * rd_ratio + divisor / 2) // divisor * divisor)
        self.fc1 = nn.Conv2d(channels, rd, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(rd, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * s.sigmoid()


class PatchMerging(nn.Module):
    """Stride-2 downsampler: 1x1 Conv-BN to 4C, ReLU, 3x3/2 depthwise Conv-BN, ReLU, SE, 1x1 Conv-BN."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        hidden = 4 * dim
        self.conv1 = Conv2dBN(dim, hidden)
        self.act = nn.ReLU()
        self.conv2 = Conv2dBN(hidden, hidden, 3, 2, 1, g=hidden)
        self.se = SqueezeExcite(hidden, 0.25)
        self.conv3 = Conv2dBN(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.se(self.act(self.conv2(self.act(self.conv1(x))))))


def _conv_ffn(dim: int) -> nn.Sequential:
    """The residual depthwise conv + residual FFN pair around each PatchMerging."""
    return nn.Sequential(Residual(Conv2dBN(dim, dim, 3, 1, 1, g=dim)), Residual(FFN(dim, 2 * dim)))


@register(channels="backbone")
class SHViT(nn.Module):
    """SHViT feature extractor.  [B, c1, H, W] -> 3 maps [B, embed_dim[i], H/2^(i+4), W/2^(i+4)].

    Args:
        c1: input channels.
        embed_dim, partial_dim, depth, types: per-stage channels, attended channels, blocks, and block
            type ('s' with SHSA, 'i' without).
        qk_dim: query / key channels of every SHSA.
    """

    # official checkpoints were trained with BatchNorm eps 1e-5: DetectionModel leaves it as is
    own_batchnorm_settings = True

    def __init__(self, c1: int = 3, embed_dim=(128, 256, 384), partial_dim=(32, 64, 96), depth=(1, 2, 3),
                 types=("s", "s", "s"), qk_dim: int = 16):
        super().__init__()
        embed_dim, partial_dim, depth, types = tuple(embed_dim), tuple(partial_dim), tuple(depth), tuple(types)
        if not len(embed_dim) == len(partial_dim) == len(depth) == len(types) == 3:
            raise ValueError(
                f"SHViT needs three stages: embed_dim={embed_dim}, partial_dim={partial_dim}, depth={depth}, "
                f"types={types}"
            )
        if embed_dim[0] % 8:
            raise ValueError(f"SHViT embed_dim[0] must be divisible by 8 (the stem halves it 3 times): {embed_dim[0]}")
        self.out_channels = list(embed_dim)
        self.strides = [16, 32, 64]
        e0 = embed_dim[0]
        self.patch_embed = nn.Sequential(
            Conv2dBN(c1, e0 // 8, 3, 2, 1), nn.ReLU(),
            Conv2dBN(e0 // 8, e0 // 4, 3, 2, 1), nn.ReLU(),
            Conv2dBN(e0 // 4, e0 // 2, 3, 2, 1), nn.ReLU(),
            Conv2dBN(e0 // 2, e0, 3, 2, 1),
        )  # fmt: skip
        stages: list[list[nn.Module]] = [[], [], []]
        for i in range(3):
            if i > 0:  # downsampling prefix of stages 2 and 3 (official indices 0, 1, 2)
                stages[i] += [_conv_ffn(embed_dim[i - 1]), PatchMerging(embed_dim[i - 1], embed_dim[i]),
                              _conv_ffn(embed_dim[i])]
            stages[i] += [SHViTBlock(embed_dim[i], qk_dim, partial_dim[i], types[i]) for _ in range(depth[i])]
        self.blocks1, self.blocks2, self.blocks3 = (nn.Sequential(*s) for s in stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x1 = self.blocks1(self.patch_embed(x))
        x2 = self.blocks2(x1)
        return [x1, x2, self.blocks3(x2)]

    def fuse_(self) -> None:
        fuse_children(self)


# One registered class per official configuration: YAML rows name them, e.g. [-1, 1, shvit_s4, []].
@register(channels="backbone", name="shvit_s1")
class SHViTS1(SHViT):
    """SHViT-S1: embed (128, 224, 320), partial (32, 48, 68), depth (2, 4, 5)."""

    def __init__(self, c1: int = 3):
        super().__init__(c1, *SHVIT_VARIANTS["s1"])


@register(channels="backbone", name="shvit_s2")
class SHViTS2(SHViT):
    """SHViT-S2: embed (128, 308, 448), partial (32, 66, 96), depth (2, 4, 5)."""

    def __init__(self, c1: int = 3):
        super().__init__(c1, *SHVIT_VARIANTS["s2"])


@register(channels="backbone", name="shvit_s3")
class SHViTS3(SHViT):
    """SHViT-S3: embed (192, 352, 448), partial (48, 75, 96), depth (3, 5, 5)."""

    def __init__(self, c1: int = 3):
        super().__init__(c1, *SHVIT_VARIANTS["s3"])


@register(channels="backbone", name="shvit_s4")
class SHViTS4(SHViT):
    """SHViT-S4: embed (224, 336, 448), partial (48, 72, 96), depth (4, 7, 6)."""

    def __init__(self, c1: int = 3):
        super().__init__(c1, *SHVIT_VARIANTS["s4"])


SHVIT_MODELS: dict[str, type[SHViT]] = {
    "shvit_s1": SHViTS1, "shvit_s2": SHViTS2, "shvit_s3": SHViTS3, "shvit_s4": SHViTS4,
}  # fmt: skip
