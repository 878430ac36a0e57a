"""Input normalisation inside the model, for families whose reference feeds the network something other
than rtdet's RGB image in [0, 1].

RTMDet (mmdetection) is trained on BGR images with pixel values in [0, 255], normalised per channel by
mean (103.53, 116.28, 123.675) and std (57.375, 57.12, 58.395) in its data preprocessor. Written as the
first row of the model YAML, this step travels with the model everywhere: in the checkpoint (through
the YAML), in ``model.info()``, and in ONNX exports (traced like any other layer), so reference weights
give reference outputs from the image tensor rtdet gives every family::

    - [-1, 1, InputNormalize, [[103.53, 116.28, 123.675], [57.375, 57.12, 58.395], bgr]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from rtdet.nn.registry import register

__all__ = ["InputNormalize"]

CHANNEL_ORDERS = ("rgb", "bgr")


@register(channels="same")
class InputNormalize(nn.Module):
    """y = (x[order] * pixel_scale - mean) / std per channel.  [B, C, H, W] -> [B, C, H, W].

    ``x`` is rtdet's input: RGB, values in [0, 1]. ``order="bgr"`` reverses the channels first (the model
    was trained on BGR); ``mean`` and ``std`` are in the model's channel order and in units of
    ``pixel_scale`` (255: uint8 pixel values). The constants are buffers that are not saved in state dicts:
    the YAML row is where they live.
    """

    def __init__(self, c1: int, mean: Sequence[float], std: Sequence[float], order: str = "rgb",
                 pixel_scale: float = 255.0):
        super().__init__()
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != c1 or len(std) != c1:
            raise ValueError(f"InputNormalize: mean and std need one value per input channel ({c1}), got "
                             f"{len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"InputNormalize: std values must be > 0, got {std}")
        if str(order).lower() not in CHANNEL_ORDERS:
            raise ValueError(f"InputNormalize: order must be one of {CHANNEL_ORDERS}, got {order!r}")
        self.order = str(order).lower()
        self.pixel_scale = float(pixel_scale)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return (f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}, order={self.order!r}, "
                f"pixel_scale={self.pixel_scale:g}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == "bgr":
            x = x.flip(1)
        # the reference's arithmetic, (pixel - mean) / std, in that order
        return (x * self.pixel_scale - self.mean.to(x.dtype)) / self.std.to(x.dtype)
