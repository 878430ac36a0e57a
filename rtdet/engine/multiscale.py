"""Multi-scale training: each batch resized to a size drawn from a range around ``imgsz``.

    scales = MultiScale.from_settings({"multi_scale": [0.75, 1.25], "imgsz": 640, "seed": 0, ...}, stride=32)
    scales.sizes                      # [480, 512, ..., 800]: multiples of the model's largest stride
    batch = scales(batch, epoch, i)   # batch["img"] [B, 3, 640, 640] -> [B, 3, s, s]; boxes stay normalised

The size of batch ``i`` of ``epoch`` is a function of (seed, epoch, i) alone: every DDP rank draws the same
size for the same step without talking to the others, the global random state is untouched (the data order
and augmentation do not change when multi-scale is switched on), and a resumed run sees the sizes the
uninterrupted run saw. As in the references (YOLOv5 / YOLOv9 ``--multi-scale``, RT-DETR's batch resize) the
batch is resized as a whole, bilinearly (``multi_scale_interpolation=nearest``: as D-FINE's collate); its
labels are normalised to the image, so they are unchanged.
From epoch round(``multi_scale_stop`` x epochs) on, batches keep ``imgsz`` (a fraction of the run, as pipeline
stages count; RT-DETRv2 stops at epoch 71 of 72: 0.986).

``multi_scale_repeat=R`` (R >= 1) lists ``imgsz`` R times among the other sizes' once, as D-FINE's collate
function does with ``base_size_repeat`` (D-FINE src/data/dataloader.py generate_scales: 480-608, 640 x R,
672-800, each entry equally likely): with 0.75-1.25 x 640 and R = 20, 640 has probability 20 / 30.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MultiScale", "parse_multi_scale", "weighted_sizes"]

INTERPOLATIONS = ("bilinear", "nearest")
YOLO_RANGE = (0.5, 1.5)  # what `multi_scale=true` means: YOLOv5 / YOLOv9's --multi-scale
_RANGE_TEXT = re.compile(r"^\s*([0-9.]+)\s*[-,:]\s*([0-9.]+)\s*$")


def parse_multi_scale(value: Any) -> list[float] | None:
    """The ``multi_scale`` setting as [low, high] factors of imgsz, or None (off). Accepts false / empty (off),
    true (0.5-1.5), ``"0.5-1.5"`` or ``[0.5, 1.5]``; raises ValueError (one line) for anything else."""
    if value is None or value is False:
        return None
    if value is True:
        return list(YOLO_RANGE)
    if isinstance(value, str):
        m = _RANGE_TEXT.match(value)
        if not m:
            raise ValueError("expected a range of factors of imgsz such as 0.5-1.5 or [0.5, 1.5], true "
                             "(0.5-1.5) or false")
        value = [m.group(1), m.group(2)]
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError("expected two factors of imgsz, [low, high], e.g. [0.5, 1.5]")
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError("expected two numbers, [low, high], e.g. [0.5, 1.5]") from None
    if not (0 < low <= high <= 4):
        raise ValueError(f"expected 0 < low <= high <= 4 (factors of imgsz), got [{low:g}, {high:g}]")
    return [low, high]


def candidate_sizes(imgsz: int, low: float, high: float, stride: int) -> list[int]:
    """Every multiple of ``stride`` in [low * imgsz, high * imgsz] (at least one stride); at least one size:
    the multiple nearest to imgsz when the range holds none."""
    first = max(math.ceil(low * imgsz / stride), 1)
    last = max(math.floor(high * imgsz / stride), first - 1)
    sizes = [k * stride for k in range(first, last + 1)]
    return sizes or [max(round(imgsz / stride), 1) * stride]


def weighted_sizes(sizes: list[int], imgsz: int, repeat: int) -> list[int]:
    """``sizes`` with ``imgsz`` listed ``repeat`` times in its place (inserted in order when the range lacks it),
    so that a uniform draw from the list takes imgsz with weight ``repeat`` (D-FINE's base_size_repeat);
    ``repeat`` 0: ``sizes`` unchanged."""
    if repeat <= 0:
        return list(sizes)
    others = [s for s in sizes if s != imgsz]
    at = sum(s < imgsz for s in others)
    return others[:at] + [imgsz] * repeat + others[at:]


class MultiScale:
    """Draws the size of each training batch and resizes the batch to it (see the module docstring)."""

    def __init__(self, imgsz: int, sizes: list[int], stride: int, seed: int, stop_epoch: int,
                 interpolation: str = "bilinear"):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={interpolation!r}: choose one of {', '.join(INTERPOLATIONS)}")
        self.imgsz, self.sizes, self.stride = int(imgsz), list(sizes), int(stride)
        self.seed, self.stop_epoch, self.interpolation = int(seed), int(stop_epoch), interpolation

    @classmethod
    def from_settings(cls, args: dict, stride: int) -> MultiScale | None:
        """From ``multi_scale`` / ``multi_scale_repeat`` / ``multi_scale_stop`` / ``imgsz`` / ``seed`` /
        ``epochs``; None when off."""
        factors = parse_multi_scale(args.get("multi_scale"))
        if factors is None:
            return None
        imgsz, epochs = int(args["imgsz"]), int(args.get("epochs") or 1)
        stop = float(args.get("multi_scale_stop") if args.get("multi_scale_stop") is not None else 1.0)
        sizes = weighted_sizes(candidate_sizes(imgsz, *factors, stride=int(stride)), imgsz,
                               int(args.get("multi_scale_repeat") or 0))
        return cls(imgsz, sizes, stride, int(args.get("seed") or 0), stop_epoch=round(stop * epochs),
                   interpolation=str(args.get("multi_scale_interpolation") or "bilinear"))

    def size(self, epoch: int, i: int) -> int:
        """The side of batch ``i`` of ``epoch``: the same on every rank and in every run with this seed."""
        if epoch >= self.stop_epoch:
            return self.imgsz
        rng = np.random.default_rng([self.seed, int(epoch), int(i)])  # its own stream, from these three alone
        return self.sizes[int(rng.integers(len(self.sizes)))]

    def resize(self, img: torch.Tensor, size: int) -> torch.Tensor:
        """``img`` [B, C, H, W] scaled so that its longer side is ``size``, each side a multiple of the stride
        (a square batch becomes size x size); the same tensor when nothing changes."""
        h, w = img.shape[-2:]
        scale = size / max(h, w)
        shape = [max(math.ceil(d * scale / self.stride), 1) * self.stride for d in (h, w)]
        if shape == [h, w]:
            return img
        if self.interpolation == "nearest":  # D-FINE's collate: F.interpolate's default mode
            return F.interpolate(img, size=shape, mode="nearest")
        return F.interpolate(img, size=shape, mode="bilinear", align_corners=False)

    def __call__(self, batch: dict, epoch: int, i: int) -> dict:
        """The batch with ``img`` resized to this step's size; labels (normalised xywh) are unchanged."""
        return {**batch, "img": self.resize(batch["img"], self.size(epoch, i))}
