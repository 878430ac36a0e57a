"""The small interface every family head offers to the family-agnostic engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn as nn

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
    """Base of family heads. ``family`` names the recipe file ``cfg/recipes/<family>.yaml``.

    forward(feats, targets=None): training output (raw, for the criterion) in train mode, inference
    output in eval mode. ``targets`` is the batch dict (``batch_idx`` [N], ``cls`` [N], ``bboxes`` [N, 4]
    normalised cx cy w h) and is only read by heads that need it in training (RT-DETR denoising).
    """

    family: str = ""

    @abstractmethod
    def build_criterion(self, hyp: dict) -> nn.Module:
        """The loss for this head: ``criterion(outputs, batch) -> (total, {name: detached value})``."""

    @abstractmethod
    def postprocess(self, outputs, img_shape: tuple[int, int], conf: float = 0.25, iou: float = 0.7,
                    max_det: int = 300) -> list[Detections]:
        """Inference outputs -> per-image Detections in input pixels (NMS where the family needs it)."""
