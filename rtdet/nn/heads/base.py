"""The small interface every family head offers to the family-agnostic engine.

A head is the last row of a model YAML, registered with ``@register(channels="head")``: it is built as
``Head(nc, [c_in of each input map], *args)``. What the engine may use, and nothing else:

* ``family`` -- names the recipe ``cfg/recipes/<family>.yaml``;
* ``setup(strides)`` -- called once by :class:`~rtdet.nn.model.DetectionModel` when it is built, with the
  stride of every input map (bias priors, anchor grids and assigners read ``self.strides``);
* ``criterion_settings()`` -- the loss settings this family accepts (name, default, type, doc), declared
  once by the criterion class; ``build_criterion(hyp)`` builds the loss from their values;
* ``forward(feats, targets)`` -- in train mode a ``NamedTuple`` with named fields (read only by this
  family's criterion); in eval mode an output that **nothing but this head's own** ``postprocess``
  reads (its layout is the head's business: [B, k, 6] for RT-DETR, decoded dense predictions for the
  NMS families);
* ``postprocess(outputs, img_shape, conf, iou, max_det)`` -- per-image :class:`Detections` in input
  pixels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn as nn

from rtdet.utils.schema import Setting

__all__ = ["Detections", "DetectionHead"]


@dataclass
class Detections:
    """Detections of one image: boxes xyxy in pixels of the network input, scores, integer labels."""

    boxes: torch.Tensor  # [n, 4]
    scores: torch.Tensor  # [n]
    labels: torch.Tensor  # [n]

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class DetectionHead(nn.Module, ABC):
    """Base of family heads (see the module docstring for the contract).

    forward(feats, targets=None): training output (a NamedTuple, for the criterion) in train mode,
    inference output in eval mode. ``targets`` is the batch dict (``batch_idx`` [N], ``cls`` [N],
    ``bboxes`` [N, 4] normalised cx cy w h, and ``targets``: the padded per-image
    :class:`~rtdet.losses.common.PaddedTargets` built once per step) and is only read by heads that
    need it in training (RT-DETR denoising).
    """

    family: str = ""
    strides: list[int]

    def setup(self, strides: list[int]) -> None:
        """Receive the stride of every input map, once, when the model is built (and rebuilt)."""
        self.strides = [int(s) for s in strides]

    @classmethod
    def criterion_settings(cls) -> tuple[Setting, ...]:
        """The settings this family's criterion accepts (its ``SETTINGS``); () when it takes none."""
        return ()

    @abstractmethod
    def build_criterion(self, hyp: dict) -> nn.Module:
        """The loss for this head: ``criterion(outputs, batch) -> (total, {name: detached value})``."""

    @abstractmethod
    def postprocess(self, outputs, img_shape: tuple[int, int], conf: float = 0.25, iou: float = 0.7,
                    max_det: int = 300) -> list[Detections]:
        """Inference outputs -> per-image Detections in input pixels (NMS where the family needs it)."""
