"""ConvNeXt V2 backbones (Woo et al., CVPR 2023, facebookresearch/ConvNeXt-V2) for detection.

The network is the official ``ConvNeXtV2`` without its classifier (final LayerNorm + Linear head): a
4x4/4 patchify stem, then four stages of blocks separated by LayerNorm + 2x2/2 convolutions, returning
the four stage outputs at strides 4, 8, 16 and 32 with ``dims`` channels.

Parameter names follow the official checkpoints (``downsample_layers.i.*``, ``stages.i.j.dwconv`` /
``norm`` / ``pwconv1`` / ``grn.gamma`` / ``grn.beta`` / ``pwconv2``), so an official ``model`` state dict
loads by key once its ``norm.*`` / ``head.*`` entries are dropped; ``rtdet.io.backbones`` also reads timm's
naming. Registered for YAML use as ``convnextv2_atto`` ... ``convnextv2_huge`` (``[-1, 1, convnextv2_atto,
[]]``; optional argument: the drop-path rate) and as the generic ``ConvNeXtV2 [depths, dims]``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.registry import register

__all__ = [
    "LayerNorm2d",
    "GRN",
    "DropPath",
    "ConvNeXtV2Block",
    "ConvNeXtV2",
    "CONVNEXTV2_VARIANTS",
    "CONVNEXTV2_MODELS",
    "ConvNeXtV2Atto",
    "ConvNeXtV2Femto",
    "ConvNeXtV2Pico",
    "ConvNeXtV2Nano",
    "ConvNeXtV2Tiny",
    "ConvNeXtV2Base",
    "ConvNeXtV2Large",
    "ConvNeXtV2Huge",
]

# name: (depths, dims) of the official factory functions.
CONVNEXTV2_VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map (the official ``channels_first`` LayerNorm):
    (x - mean_c) / sqrt(var_c + eps) * weight + bias, with the biased variance. [B, C, H, W] -> same."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.layer_norm on the channels-last view computes the same statistics in one fused kernel.
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalization on an NHWC map: each channel's spatial L2 norm, divided by its mean
    over channels, rescales the response:  x + gamma * (x * N(x)) + beta.  [B, H, W, C] -> same.

    ``gamma`` and ``beta`` have the official (1, 1, 1, C) shape and start at zero (identity)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        # gamma*(x*nx) + beta + x, rearranged as one fused pass over x
        return torch.addcmul(self.beta, x, self.gamma * nx + 1)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole sample's residual branch with probability ``p`` and
    scale the kept ones by 1/(1-p). Identity in eval mode or with p = 0."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvNeXtV2Block(nn.Module):
    """x + DropPath(pwconv2(GRN(GELU(pwconv1(LN(dwconv7x7(x))))))), the MLP run channels-last.
    [B, C, H, W] -> same. No layer scale (removed in V2)."""

    def __init__(self, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXtV2(nn.Module):
    """ConvNeXt V2 feature extractor.  [B, c1, H, W] -> 4 maps [B, dims[i], H/2^(i+2), W/2^(i+2)].

    Args:
        c1: input channels (3 for RGB).
        depths: blocks per stage.
        dims: channels per stage.
        drop_path_rate: stochastic-depth rate, rising linearly from 0 over all blocks.
    """

    def __init__(self, c1: int = 3, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), drop_path_rate: float = 0.0):
        super().__init__()
        depths, dims = tuple(int(d) for d in depths), tuple(int(d) for d in dims)
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"ConvNeXtV2 needs 4 depths and 4 dims, got depths={depths}, dims={dims}")
        self.depths, self.dims = depths, dims
        self.out_channels = list(dims)
        self.strides = [4, 8, 16, 32]
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(c1, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0]))]
            + [
                nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], kernel_size=2, stride=2))
                for i in range(1, 4)
            ]
        )
        n = sum(depths)
        rates = [drop_path_rate * k / max(n - 1, 1) for k in range(n)]  # linspace(0, rate, n)
        starts = [sum(depths[:i]) for i in range(4)]
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtV2Block(dims[i], rates[starts[i] + j]) for j in range(depths[i])))
            for i in range(4)
        )
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
            outs.append(x)
        return outs


def _init_weights(m: nn.Module) -> None:
    """The official initialisation: truncated normal (std 0.02) weights, zero biases."""
    if isinstance(m, nn.Conv2d | nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


register(channels="backbone")(ConvNeXtV2)


# One registered class per official variant: YAML rows name them, e.g. [-1, 1, convnextv2_atto, []].
@register(channels="backbone", name="convnextv2_atto")
class ConvNeXtV2Atto(ConvNeXtV2):
    """ConvNeXt V2-Atto: depths (2, 2, 6, 2), dims (40, 80, 160, 320)."""

    def __init__(self, c1: int = 3, drop_path_rate: float = 0.0):
        super().__init__(c1, *CONVNEXTV2_VARIANTS["atto"], drop_path_rate)


@register(channels="backbone", name="convnextv2_femto")
class ConvNeXtV2Femto(ConvNeXtV2):
    """ConvNeXt V2-Femto: depths (2, 2, 6, 2), dims (48, 96, 192, 384)."""

    def __init__(self, c1: int = 3, drop_path_rate: float = 0.0):
        super().__init__(c1, *CONVNEXTV2_VARIANTS["femto"], drop_path_rate)


@register(channels="backbone", name="convnextv2_pico")
class ConvNeXtV2Pico(ConvNeXtV2):
    """ConvNeXt V2-Pico: depths (2, 2, 6, 2), dims (64, 128, 256, 512)."""

    def __init__(self, c1: int = 3, drop_path_rate: float = 0.0):
        super().__init__(c1, *CONVNEXTV2_VARIANTS["pico"], drop_path_rate)


@register(channels="backbone", name="convnextv2_nano")
class ConvNeXtV2Nano(ConvNeXtV2):
    """ConvNeXt V2-Nano: depths (2, 2, 8, 2), dims (80, 160, 320, 640)."""

    def __init__(self, c1: int = 3, drop_path_rate: float = 0.0):
        super().__init__(c1, *CONVNEXTV2_VARIANTS["nano"], drop_path_rate)


@register(channels="backbone", name="convnextv2_tiny")
class ConvNeXtV2Tiny(ConvNeXtV2):
    """ConvNeXt V2-Tiny: depths (3, 3, 9, 3), dims (96, 192, 384, 768)."""

    def __init__(self, c1: int = 3, drop_path_rate: float = 0.0):
        super().__init__(c1, *CONVNEXTV2_VARIANTS["tiny"], drop_path_rate)


@register(channels="backbone", name="convnextv2_base")
class ConvNeXtV2Base(ConvNeXtV2):
    """ConvNeXt V2-Base: depths (3, 3, 27, 3), dims (128, 256, 512, 1024)."""

    def __init__(self, c1: int = 3, drop_path_rate: float = 0.0):
        super().__init__(c1, *CONVNEXTV2_VARIANTS["base"], drop_path_rate)


@register(channels="backbone", name="convnextv2_large")
class ConvNeXtV2Large(ConvNeXtV2):
    """ConvNeXt V2-Large: depths (3, 3, 27, 3), dims (192, 384, 768, 1536)."""

    def __init__(self, c1: int = 3, drop_path_rate: float = 0.0):
        super().__init__(c1, *CONVNEXTV2_VARIANTS["large"], drop_path_rate)


@register(channels="backbone", name="convnextv2_huge")
class ConvNeXtV2Huge(ConvNeXtV2):
    """ConvNeXt V2-Huge: depths (3, 3, 27, 3), dims (352, 704, 1408, 2816)."""

    def __init__(self, c1: int = 3, drop_path_rate: float = 0.0):
        super().__init__(c1, *CONVNEXTV2_VARIANTS["huge"], drop_path_rate)


# registered YAML name -> class
CONVNEXTV2_MODELS: dict[str, type[ConvNeXtV2]] = {
    f"convnextv2_{n}": cls
    for n, cls in zip(
        CONVNEXTV2_VARIANTS,
        (ConvNeXtV2Atto, ConvNeXtV2Femto, ConvNeXtV2Pico, ConvNeXtV2Nano, ConvNeXtV2Tiny, ConvNeXtV2Base,
         ConvNeXtV2Large, ConvNeXtV2Huge),
    )
}
