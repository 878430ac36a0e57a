"""DySample: learning to upsample by point sampling (Liu et al., ICCV 2023, tiny-smart/dysample).

DySample upsamples a map by ``scale`` by predicting, for every output pixel, a small offset to where it
should read the input, and resampling the input there bilinearly (``grid_sample``). With zero offsets it
is exactly bilinear upsampling (``align_corners=False``); the offsets are a 1x1 linear layer of the
input, shared by the channels of each of ``groups`` channel groups.

Parameters, buffer and initialisation match the official ``dysample.py`` (after commit efcf8ae, whose
scope layer has no bias), so an official state dict loads by key (``offset.*``, ``scope.weight``,
``init_pos``). The forward pass is rearranged for speed without changing the maths:

* the 1x1 offset layer (and the scope layer) runs as one batched matrix product on the input viewed as
  (B, C, H*W); for ``pl`` the pixel-shuffle before the layer is absorbed into the view (each sub-pixel
  position becomes a column block), so the input is never copied, and both styles then share one path;
* the offset scale (0.25, or 0.5 with the dynamic scope) and the normalisation of pixel units to
  ``grid_sample``'s [-1, 1] range are folded into the layer's weights (a few thousand numbers);
* the pixel grid plus the bilinear initial positions is a constant per input size: it is cached per
  (H, W, device, dtype) in eager mode and built from the input's shape with tensor ops while tracing or
  compiling, so an exported graph follows the input size;
* one permute-and-add turns the offsets into the (B*groups, sH, sW, 2) sampling grid, then one
  ``grid_sample`` call does the upsampling.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.registry import register

__all__ = ["DySample"]

STYLES = ("lp", "pl")
_CACHE_SIZE = 8  # distinct input sizes kept (multi-scale training visits a handful)


def _tracing() -> bool:
    """True while a graph is being recorded (jit trace, ONNX export, dynamo / torch.export)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


@register(channels="same")
class DySample(nn.Module):
    """Dynamic point-sampling upsampler.  [B, C, H, W] -> [B, C, scale*H, scale*W].

    Args:
        in_channels: C, channels of the input (and of the output).
        scale: integer upsampling factor s.
        style: ``'lp'`` (linear layer on the low-res input, then pixel-shuffle of the offsets) or
            ``'pl'`` (pixel-shuffle the input to C/s^2 channels at high resolution, then the linear layer;
            about 1/s^4 of the parameters). Needs C divisible by s^2.
        groups: offsets are shared by the channels of each of ``groups`` contiguous channel blocks.
        dyscope: dynamic offset range, ``0.5 * sigmoid(scope(x))`` per point (DySample+), instead of the
            static factor 0.25.
    """

    def __init__(self, in_channels: int, scale: int = 2, style: str = "lp", groups: int = 4, dyscope: bool = False):
        super().__init__()
        _check_config(in_channels, scale, style, groups)
        self.in_channels, self.scale, self.style, self.groups = in_channels, scale, style, groups
        self.dyscope = bool(dyscope)
        if style == "pl":
            c_in, c_out = in_channels // scale**2, 2 * groups
        else:
            c_in, c_out = in_channels, 2 * groups * scale**2
        self.offset = nn.Conv2d(c_in, c_out, 1)
        self.scope = nn.Conv2d(c_in, c_out, 1, bias=False) if self.dyscope else None
        self.register_buffer("init_pos", self._init_pos())
        self._grid_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: offsets ~ N(0, 0.001) with zero bias, dynamic scope all zero
        (so at init every offset is scaled by sigmoid(0) * 0.5 = 0.25, as in the static variant).
        Call it again after any model-wide re-initialisation."""
        nn.init.normal_(self.offset.weight, 0.0, 0.001)
        nn.init.zeros_(self.offset.bias)
        if self.scope is not None:
            nn.init.zeros_(self.scope.weight)

    def _init_pos(self) -> torch.Tensor:
        """Bilinear initial positions, (1, 2*G*s^2, 1, 1), in input-pixel units.

        Channel index = component*G*s^2 + g*s^2 + a*s + b (component 0 = x, 1 = y; a = sub-pixel row,
        b = sub-pixel column): the x offset is h[b], the y offset h[a], with h the s sub-pixel centres
        (k - (s-1)/2) / s. Adding them to the input pixel centres gives exactly the output pixel centres.
        """
        s, g = self.scale, self.groups
        h = (torch.arange(s, dtype=torch.float32) - (s - 1) / 2) / s
        x = h.view(1, s).expand(s, s)  # varies along b
        y = h.view(s, 1).expand(s, s)  # varies along a
        pos = torch.stack([x, y]).view(2, 1, s * s).expand(2, g, s * s)
        return pos.reshape(1, -1, 1, 1).clone()

    # ------------------------------------------------------------------ sampling grid
    def _grid_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(base, norm): the zero-offset sampling grid (G, H, s, W, s, 2) in grid_sample's [-1, 1]
        coordinates, and the per-component factors (2/W, 2/H) that turn pixel offsets into grid units."""
        h, w = x.shape[-2:]
        # Coordinates in at least fp32: fp16 steps near +-1 are ~0.04 px on a 160-wide map.
        dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        if _tracing():  # sizes are graph values here: build from them, never cache
            return self._make_grid_terms(h, w, dtype, x.device)
        key = (h, w, dtype, x.device, self.init_pos.data_ptr(), self.init_pos._version)
        terms = self._grid_cache.get(key)
        if terms is None:
            if len(self._grid_cache) >= _CACHE_SIZE:
                self._grid_cache.clear()
            terms = self._make_grid_terms(h, w, dtype, x.device)
            self._grid_cache[key] = terms
        return terms

    def _make_grid_terms(self, h, w, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        s, g = self.scale, self.groups
        if isinstance(w, torch.Tensor):  # traced sizes: keep the arithmetic in the graph
            norm = torch.stack([2.0 / w, 2.0 / h]).to(dtype=dtype, device=device)
        else:
            norm = torch.tensor([2.0 / w, 2.0 / h], dtype=dtype, device=device)
        pos = self.init_pos.detach().to(dtype=dtype, device=device).view(2, g, s, s)
        cx = torch.arange(w, dtype=dtype, device=device) + 0.5  # input pixel centres
        cy = torch.arange(h, dtype=dtype, device=device) + 0.5
        gx = (cx.view(1, 1, 1, -1, 1) + pos[0].view(g, 1, s, 1, s)) * norm[0] - 1  # (G, 1, s, W, s)
        gy = (cy.view(1, -1, 1, 1, 1) + pos[1].view(g, 1, s, 1, s)) * norm[1] - 1  # (G, H, s, 1, s)
        gx, gy = torch.broadcast_tensors(gx, gy)
        return torch.stack([gx, gy], dim=-1), norm

    # ------------------------------------------------------------------ forward
    def _offset_weights(self, norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The offset layer (followed by the scope layer, if any) as one (rows, in) matrix and bias, with
        the scope factor and the pixel -> grid normalisation folded into the offset rows (x rows first)."""
        factor = (norm * (0.5 if self.scope is not None else 0.25)).to(self.offset.weight.dtype)  # (2,): x, y
        rows = self.offset.weight.shape[0]
        weight = self.offset.weight.flatten(1) * factor.repeat_interleave(rows // 2).unsqueeze(1)
        bias = self.offset.bias * factor.repeat_interleave(rows // 2)
        if self.scope is not None:
            weight = torch.cat([weight, self.scope.weight.flatten(1)])
            bias = torch.cat([bias, torch.zeros_like(bias)])
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s, g = self.scale, self.groups
        base, norm = self._grid_terms(x)
        weight, bias = self._offset_weights(norm)
        # lp: the layer on x viewed as (B, C, HW). pl: pixel_shuffle(x) channel c' at sub-pixel p = a*s + b
        # is x channel c'*s^2 + p, so the layer on the shuffled map is the same product on x viewed as
        # (B, C/s^2, s^2*HW) -- a view, no copy. Either way the result, read as
        # (B, [offset, scope], component, group, a, b, H, W), is laid out alike: lp has rows
        # (component, group, a, b) over columns (H, W), pl rows (component, group) over columns (a, b, H, W).
        y = torch.baddbmm(bias.view(1, -1, 1), weight.expand(b, -1, -1), x.reshape(b, weight.shape[1], -1))
        parts = y.view(b, -1, 2, g, s, s, h, w).unbind(1)
        parts = [t.permute(0, 2, 5, 3, 6, 4, 1) for t in parts]  # (B, G, H, a, W, b, component)
        if self.scope is not None:
            grid = torch.addcmul(base, parts[0], parts[1].sigmoid())
        else:
            grid = base + parts[0]
        grid = grid.reshape(b * g, s * h, s * w, 2)
        if grid.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            grid = grid.to(x.dtype)  # grid_sample needs one dtype (autocast promotes x to the grid's instead)
        out = F.grid_sample(
            x.reshape(b * g, c // g, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return out.view(b, c, s * h, s * w)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, scale={self.scale}, style={self.style!r}, groups={self.groups}, "
            f"dyscope={self.dyscope}"
        )

    def __getstate__(self) -> dict:  # the grid cache is derived data: do not pickle / deepcopy it
        state = self.__dict__.copy()
        state["_grid_cache"] = {}
        return state


def _check_config(in_channels: int, scale: int, style: str, groups: int) -> None:
    if style not in STYLES:
        raise ValueError(f"DySample style must be one of {STYLES}, got {style!r}")
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"DySample scale must be a positive integer (pixel-shuffle factor), got {scale!r}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"DySample groups must be a positive integer, got {groups!r}")
    if in_channels % groups:
        raise ValueError(
            f"DySample needs in_channels divisible by groups: {in_channels} channels, {groups} groups "
            f"({in_channels} % {groups} = {in_channels % groups}); pick groups dividing {in_channels}"
        )
    if style == "pl" and in_channels % scale**2:
        raise ValueError(
            f"DySample style 'pl' pixel-shuffles the input, so in_channels must be divisible by "
            f"scale**2: {in_channels} channels, scale {scale} (scale**2 = {scale**2}); use style 'lp' "
            f"or a channel count divisible by {scale**2}"
        )
