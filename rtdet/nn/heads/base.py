"""The small interface every family head offers to the family-agnostic engine.

A head is the last row of a model YAML, registered with ``@register(channels="head")``: it is built as
``Head(nc, [c_in of each input map], *args)``. What the engine may use, and nothing else:

* ``family`` -- names the family record (:mod:`rtdet.families`: criterion, recipe, demo settings); the
  record binds the head to its loss, so the head never imports one; ``needs_nms``, ``is_head``,
  ``ddp_find_unused_parameters`` and ``dynamic`` -- class attributes with defaults, documented on
  :class:`DetectionHead` (the engine reads them, a head overrides what differs);
* ``setup(strides)`` -- called once by :class:`~rtdet.nn.model.DetectionModel` when it is built, with the
  stride of every input map (bias priors, anchor grids and assigners read ``self.strides``);
* ``forward(feats, targets)`` -- in train mode a ``NamedTuple`` with named fields (read only by this
  family's criterion); in eval mode an output that **nothing but this head's own** ``postprocess``
  reads (its layout is the head's business: [B, k, 6] for RT-DETR, decoded dense predictions for the
  NMS families);
* ``decode(outputs, img_shape)`` -- the eval output as :class:`Decoded` tensors: boxes xyxy in input
  pixels and class probabilities (dense, ``needs_nms = True``: YOLO, RTMDet) or the final top-k with
  labels (``needs_nms = False``: DETR). Tensor code only, so it is traced into ONNX exports;
* ``postprocess(outputs, img_shape, conf, iou, max_det, multi_label)`` -- per-image
  :class:`Detections` in input pixels: ``decode`` then :func:`finalize` (score threshold, NMS where the
  family needs it, ``max_det``). An ONNX Runtime session's decoded outputs go through the same
  ``finalize``, so both backends give the same detections;
* ``deploy_inputs()`` / ``deploy_head()`` -- for a head with training-only inputs (YOLOv9's PGI
  auxiliary branch): which of its inputs inference keeps, and the head that reads only those.
  :meth:`~rtdet.nn.model.DetectionModel.fuse` swaps that head in and drops the rows that fed only the
  other inputs. The defaults (None, the head itself) mean the head is its own inference form.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn

from rtdet.nn.modules.common import fuse_children
from rtdet.nn.registry import declare_head_base
from rtdet.ops.nms import dense_nms

__all__ = ["Decoded", "Detections", "DetectionHead", "finalize"]


@dataclass
class Detections:
    """Detections of one image: boxes xyxy in pixels of the network input, scores, integer labels."""

    boxes: torch.Tensor  # [n, 4]
    scores: torch.Tensor  # [n]
    labels: torch.Tensor  # [n]

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class Decoded(NamedTuple):
    """A head's eval output in a family-neutral form (what ONNX exports output, too).

    dense (``labels`` None): boxes [B, N, 4] xyxy input pixels, scores [B, N, C] probabilities -- NMS
    follows; final (``labels`` given): boxes [B, k, 4], scores [B, k], labels [B, k] -- no NMS.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor | None = None


def finalize(decoded: Decoded, conf: float = 0.25, iou: float = 0.7, max_det: int = 300,
             multi_label: bool = False) -> list[Detections]:
    """Decoded outputs -> per-image Detections, best first: dense outputs through class-aware
    :func:`~rtdet.ops.nms.dense_nms`, final ones through the score threshold (``score >= conf``) and
    ``max_det``."""
    if decoded.labels is None:
        return [Detections(b, s, l) for b, s, l in dense_nms(decoded.boxes, decoded.scores, conf, iou, max_det,
                                                               multi_label)]
    out = []
    for boxes, scores, labels in zip(decoded.boxes, decoded.scores, decoded.labels):
        order = scores.argsort(descending=True, stable=True)
        order = order[scores[order] >= conf][:max_det]
        out.append(Detections(boxes[order], scores[order], labels[order].long()))
    return out


class DetectionHead(nn.Module, ABC):
    """Base of family heads (see the module docstring for the contract).

    forward(feats, targets=None): training output (a NamedTuple, for the criterion) in train mode,
    inference output in eval mode. ``targets`` is the batch dict (``batch_idx`` [N], ``cls`` [N],
    ``bboxes`` [N, 4] normalised cx cy w h, and ``targets``: the padded per-image
    :class:`~rtdet.ops.targets.PaddedTargets` built once per step) and is only read by heads that
    need it in training (RT-DETR denoising).
    """

    #: names the family record (rtdet.families): criterion, recipe, demo settings, pipelines
    family: str = ""
    #: whether decode() gives dense predictions that NMS must thin out
    needs_nms: bool = True
    #: the row of a model that DetectionModel calls with the training targets; the builder stamps every
    #: row's ``is_head`` from its registry entry (``channels="head"``)
    is_head: bool = True
    #: whether DDP must look for parameters that take no part in a step (the trainer passes it as
    #: ``find_unused_parameters``); a head whose every parameter always feeds the loss sets False (faster)
    ddp_find_unused_parameters: bool = True
    #: set by the exporter for a dynamic-shape export: shape-dependent constants (anchor grids) must be
    #: computed from the traced input size instead of cached
    dynamic: bool = False
    strides: list[int]

    def setup(self, strides: list[int]) -> None:
        """Receive the stride of every input map, once, when the model is built (and rebuilt)."""
        self.strides = [int(s) for s in strides]

    @abstractmethod
    def decode(self, outputs, img_shape: tuple[int, int]) -> Decoded:
        """Eval output -> :class:`Decoded` (boxes xyxy in pixels of the (h, w) input). Traceable."""

    def fuse_(self) -> None:
        """Fold this head into its inference form, in place (DetectionModel.fuse calls it and does not look
        further inside). Default: fuse every descendant that knows how (``fuse_``), as the model's own
        search would; a head with layers of its own to fold overrides it."""
        fuse_children(self)

    def deploy_inputs(self) -> list[int] | None:
        """Positions (in this head's inputs) of the maps inference still reads; None: all of them."""
        return None

    def deploy_head(self) -> DetectionHead:
        """The head inference runs, reading only the inputs at :meth:`deploy_inputs` (default: this head)."""
        return self

    def postprocess(self, outputs, img_shape: tuple[int, int], conf: float = 0.25, iou: float = 0.7,
                    max_det: int = 300, multi_label: bool = False) -> list[Detections]:
        """Inference outputs -> per-image Detections in input pixels (NMS where the family needs it)."""
        return finalize(self.decode(outputs, img_shape), conf, iou, max_det, multi_label)


declare_head_base(DetectionHead)
