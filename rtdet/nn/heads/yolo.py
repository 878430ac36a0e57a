"""YOLOv9 detection heads: DDetect and DualDDetect (official WongKinYiu/yolov9 ``models/yolo.py``) and the
Ultralytics port's Detect (ultralytics 8.3 layout).

All three are anchor-free and decoupled: per level, a box branch predicts for each of the four sides
(left, top, right, bottom) a distribution over ``reg_max`` = 16 bins, a class branch predicts ``nc``
logits. A box side is the expectation of its distribution (:class:`~rtdet.nn.modules.yolov9.DFL`), in
stride units, measured from the cell centre (anchors at offset 0.5).

Outputs follow the rtdet contract:

* train: :class:`YOLOTrainOutput` ``(main, aux)``, the raw per-level maps [B, 4*reg_max + nc, H, W]
  (box distributions first) of the main branch and, for DualDDetect, of the PGI auxiliary branch;
* eval: the decoded dense predictions [B, 4 + nc, N] = (cx, cy, w, h) in input pixels and sigmoid class
  scores, N = anchors over all levels (the references' inference tensor); DualDDetect returns
  ``(main, aux)`` of those and predicts with the main one. Only :meth:`decode` reads them.

Parameter names and order follow the references (``cv2`` box, ``cv3`` class, ``dfl``; DualDDetect adds
``cv4`` / ``cv5`` / ``dfl2`` for the main branch), so their state dicts load one to one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn as nn

from rtdet.nn.heads.base import Decoded, DetectionHead
from rtdet.nn.modules.common import Conv, DWConv
from rtdet.nn.modules.transformer import is_tracing
from rtdet.nn.modules.yolov9 import DFL
from rtdet.nn.registry import make_divisible, register
from rtdet.ops.anchors import anchor_points
from rtdet.ops.boxes import cxcywh_to_xyxy, ltrb_to_xyxy, xyxy_to_cxcywh

__all__ = ["YOLOTrainOutput", "DDetect", "DualDDetect", "Detect"]


class YOLOTrainOutput(NamedTuple):
    """What a YOLO head returns in training (read by :class:`~rtdet.losses.yolov9.YOLOCriterion`).

    Each entry is a list of per-level maps [B, 4*reg_max + nc, H_l, W_l]: the four sides' bin logits
    (side-major, bins contiguous), then the class logits.
    """

    main: list[torch.Tensor]
    aux: list[torch.Tensor] | None = None  # PGI auxiliary branch (DualDDetect), None for single heads


class _DFLHead(DetectionHead):
    """What the three heads share: per-level branch evaluation, anchors, DFL decoding, bias priors,
    the criterion and :meth:`decode`. Subclasses build ``cv2`` (box) / ``cv3`` (class) branches."""

    family = "yolov9"
    needs_nms = True
    dynamic = False  # True: rebuild the anchors on every call (dynamic-shape export)

    def __init__(self, nc: int, ch: Sequence[int], reg_max: int = 16):
        super().__init__()
        self.nc = int(nc)
        self.ch = [int(c) for c in ch]
        self.nl = len(self.ch)
        self.reg_max = int(reg_max)
        self.no = self.nc + 4 * self.reg_max  # outputs per anchor
        self.strides = []
        self._anchor_cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ set-up
    def setup(self, strides: list[int]) -> None:
        """Receive the input strides and set the official bias priors (they depend on the strides)."""
        super().setup(strides)
        if len(self.strides) != self.nl:
            raise ValueError(f"{type(self).__name__} reads {self.nl} maps but got {len(self.strides)} strides")
        self.bias_init()

    def branch_pairs(self) -> Iterator[tuple[nn.ModuleList, nn.ModuleList]]:
        """(box branches, class branches) of every prediction branch of this head."""
        yield self.cv2, self.cv3

    @torch.no_grad()
    def bias_init(self) -> None:
        """Box bins start at 1.0; class logits at log(5 / nc / (640 / stride)^2), i.e. a prior of about
        5 objects per 640x640 image spread over nc classes (the references' initialisation)."""
        for box, cls in self.branch_pairs():
            for b, c, s in zip(box, cls, self.strides):
                b[-1].bias.fill_(1.0)
                c[-1].bias[: self.nc] = math.log(5 / self.nc / (640 / s) ** 2)

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _maps(x: Sequence[torch.Tensor], box: nn.ModuleList, cls: nn.ModuleList) -> list[torch.Tensor]:
        return [torch.cat((b(f), c(f)), 1) for f, b, c in zip(x, box, cls)]

    def anchors(self, shapes: Sequence[tuple[int, int]], device: torch.device,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchor points [N, 2] (grid units) and strides [N, 1], cached per shapes outside tracing."""
        if self.dynamic or is_tracing():  # shapes may be traced values: no cache, no int()
            return anchor_points(shapes, self.strides, device, dtype)
        key = (tuple(tuple(int(v) for v in s) for s in shapes), device, dtype)
        if self._anchor_cache is None or self._anchor_cache[0] != key:
            self._anchor_cache = (key, *anchor_points(key[0], self.strides, device, dtype))
        return self._anchor_cache[1], self._anchor_cache[2]

    def _dense(self, maps: list[torch.Tensor], dfl: DFL) -> torch.Tensor:
        """Per-level maps -> [B, 4 + nc, N]: (cx, cy, w, h) in input pixels, then sigmoid scores."""
        if not self.strides:
            raise RuntimeError(f"{type(self).__name__} has no strides yet: call setup(strides) first "
                               f"(DetectionModel does when it is built)")
        b = maps[0].shape[0]
        points, strides = self.anchors([m.shape[2:] for m in maps], maps[0].device, maps[0].dtype)
        box, cls = torch.cat([m.reshape(b, self.no, -1) for m in maps], 2).split((4 * self.reg_max, self.nc), 1)
        ltrb = dfl(box).transpose(1, 2)  # [B, N, 4], stride units
        xywh = xyxy_to_cxcywh(ltrb_to_xyxy(points, ltrb)) * strides
        return torch.cat((xywh.transpose(1, 2), cls.sigmoid()), 1)

    def _check_inputs(self, x: Sequence[torch.Tensor]) -> None:
        if len(x) != self.nl:
            raise ValueError(f"{type(self).__name__} was built for {self.nl} input maps, got {len(x)}")

    # ------------------------------------------------------------------ forward
    def forward(self, x: list[torch.Tensor], targets: dict | None = None):
        """x: the head's input maps [B, ch_i, H_i, W_i]; targets are not needed (assignment is in the loss)."""
        self._check_inputs(x)
        maps = self._maps(x, self.cv2, self.cv3)
        if self.training:
            return YOLOTrainOutput(maps)
        return self._dense(maps, self.dfl)

    # ------------------------------------------------------------------ interface
    def decode(self, outputs: torch.Tensor | tuple, img_shape: tuple[int, int]) -> Decoded:
        """Eval output -> dense Decoded: boxes [B, N, 4] xyxy in input pixels (not clipped: NMS sees the
        boxes the references give it) and class probabilities [B, N, nc]."""
        dense = outputs[0] if isinstance(outputs, tuple | list) else outputs
        if not (isinstance(dense, torch.Tensor) and dense.ndim == 3 and dense.shape[1] == 4 + self.nc):
            got = tuple(dense.shape) if isinstance(dense, torch.Tensor) else type(dense).__name__
            raise TypeError(f"{type(self).__name__}.decode expects the eval output [B, 4 + nc, N] = "
                            f"[B, {4 + self.nc}, N], got {got}; run the model in eval mode")
        dense = dense.transpose(1, 2)
        return Decoded(cxcywh_to_xyxy(dense[..., :4]), dense[..., 4:])


def _ddetect_widths(c_first: int, nc: int, reg_max: int) -> tuple[int, int]:
    """(box, class) branch widths of DDetect from the first input's channels (official formula)."""
    return make_divisible(max(c_first // 4, reg_max * 4, 16), 4), max(c_first, min(nc * 2, 128))


def _ddetect_box(c: int, c2: int, reg_max: int) -> nn.Sequential:
    """Box branch of DDetect: 3x3 Conv, grouped (4) 3x3 Conv, grouped 1x1 conv to 4 x reg_max bins."""
    return nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3, g=4), nn.Conv2d(c2, 4 * reg_max, 1, groups=4))


def _plain_cls(c: int, c3: int, nc: int) -> nn.Sequential:
    """Class branch of DDetect (and of Ultralytics' legacy Detect): two 3x3 Convs, a 1x1 conv to nc logits."""
    return nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1))


@register(channels="head")
class DDetect(_DFLHead):
    """YOLOv9 / GELAN head (official). ``[[P3, P4, P5], 1, DDetect, [nc]]``.

    Per level: box branch ``cv2`` = Conv(c, c2, 3) -> Conv(c2, c2, 3, groups 4) -> Conv2d(c2, 64, 1,
    groups 4); class branch ``cv3`` = Conv(c, c3, 3) -> Conv(c3, c3, 3) -> Conv2d(c3, nc, 1); with
    c2 = make_divisible(max(ch[0] / 4, 64, 16), 4) and c3 = max(ch[0], min(2 nc, 128)).
    """

    def __init__(self, nc: int = 80, ch: Sequence[int] = (256, 512, 512)):
        super().__init__(nc, ch)
        c2, c3 = _ddetect_widths(self.ch[0], self.nc, self.reg_max)
        self.cv2 = nn.ModuleList(_ddetect_box(c, c2, self.reg_max) for c in self.ch)
        self.cv3 = nn.ModuleList(_plain_cls(c, c3, self.nc) for c in self.ch)
        self.dfl = DFL(self.reg_max)

    @classmethod
    def from_branches(cls, nc: int, ch: Sequence[int], box: nn.ModuleList, classes: nn.ModuleList,
                      dfl: DFL) -> DDetect:
        """A DDetect made of existing branches (shared, not copied); strides and biases are left to the caller."""
        head = cls.__new__(cls)
        _DFLHead.__init__(head, nc, ch)
        head.cv2, head.cv3, head.dfl = box, classes, dfl
        return head


@register(channels="head")
class DualDDetect(_DFLHead):
    """YOLOv9 head with PGI (official). ``[[A3, A4, A5, P3, P4, P5], 1, DualDDetect, [nc]]``.

    Two DDetect-style heads: ``cv2`` / ``cv3`` / ``dfl`` on the auxiliary maps (first half of the
    inputs, trained only) and ``cv4`` / ``cv5`` / ``dfl2`` on the main maps, each sized from its own
    first input. Predictions come from the main branch; :meth:`deploy_head` is the plain DDetect that
    inference needs (what the official re-parameterisation converts yolov9-* into).
    """

    def __init__(self, nc: int = 80, ch: Sequence[int] = (512, 512, 512, 256, 512, 512)):
        if len(ch) % 2:
            raise ValueError(f"DualDDetect reads an auxiliary and a main triple of maps (an even number), got "
                             f"{len(ch)} inputs")
        super().__init__(nc, ch)
        self.nl = len(self.ch) // 2  # levels per branch
        aux, main = self.ch[: self.nl], self.ch[self.nl:]
        c2, c3 = _ddetect_widths(aux[0], self.nc, self.reg_max)
        c4, c5 = _ddetect_widths(main[0], self.nc, self.reg_max)
        self.cv2 = nn.ModuleList(_ddetect_box(c, c2, self.reg_max) for c in aux)
        self.cv3 = nn.ModuleList(_plain_cls(c, c3, self.nc) for c in aux)
        self.cv4 = nn.ModuleList(_ddetect_box(c, c4, self.reg_max) for c in main)
        self.cv5 = nn.ModuleList(_plain_cls(c, c5, self.nc) for c in main)
        self.dfl = DFL(self.reg_max)
        self.dfl2 = DFL(self.reg_max)

    def setup(self, strides: list[int]) -> None:
        """Both branches must see the same strides level by level (they share one anchor grid)."""
        strides = [int(s) for s in strides]
        aux, main = strides[: self.nl], strides[self.nl:]
        if aux != main:
            raise ValueError(f"DualDDetect: the auxiliary maps have strides {aux} but the main maps {main}; "
                             f"both triples must be P3, P4, P5 of the same image")
        super().setup(main)

    def branch_pairs(self) -> Iterator[tuple[nn.ModuleList, nn.ModuleList]]:
        yield self.cv2, self.cv3
        yield self.cv4, self.cv5

    def _check_inputs(self, x: Sequence[torch.Tensor]) -> None:
        if len(x) != 2 * self.nl:
            raise ValueError(f"DualDDetect was built for {2 * self.nl} input maps, got {len(x)}")
        for a, m in zip(x[: self.nl], x[self.nl:]):
            if a.shape[2:] != m.shape[2:]:
                raise ValueError(f"DualDDetect: an auxiliary map of size {tuple(a.shape[2:])} pairs with a main map "
                                 f"of size {tuple(m.shape[2:])}; use an input size that is a multiple of the largest "
                                 f"stride ({max(self.strides or [32])})")

    def forward(self, x: list[torch.Tensor], targets: dict | None = None):
        self._check_inputs(x)
        aux = self._maps(x[: self.nl], self.cv2, self.cv3)
        main = self._maps(x[self.nl:], self.cv4, self.cv5)
        if self.training:
            return YOLOTrainOutput(main, aux)
        return self._dense(main, self.dfl2), self._dense(aux, self.dfl)

    # ------------------------------------------------------------------ deployment
    def deploy_inputs(self) -> list[int]:
        """Inference reads only the main maps (the second half of the inputs)."""
        return list(range(self.nl, 2 * self.nl))

    def deploy_head(self) -> DDetect:
        """A DDetect made of this head's main branch (``cv4`` -> ``cv2``, ``cv5`` -> ``cv3``, ``dfl2`` ->
        ``dfl``): the same predictions without the auxiliary half. The modules are shared, not copied."""
        head = DDetect.from_branches(self.nc, self.ch[self.nl:], self.cv4, self.cv5, self.dfl2)
        head.strides = list(self.strides)
        head.dynamic = self.dynamic
        head.train(self.training)
        return head


@register(channels="head")
class Detect(_DFLHead):
    """Ultralytics YOLOv8 / YOLOv9-port head (ultralytics 8.3 layout). ``[[P3, P4, P5], 1, Detect, [nc]]``.

    Per level: box branch ``cv2`` = Conv(c, c2, 3) -> Conv(c2, c2, 3) -> Conv2d(c2, 64, 1); class branch
    ``cv3`` = Conv(c, c3, 3) -> Conv(c3, c3, 3) -> Conv2d(c3, nc, 1); with c2 = max(16, ch[0] / 4, 64) and
    c3 = max(ch[0], min(nc, 100)). That is Ultralytics' ``legacy`` class branch, which its parse_model
    keeps for every model without C3k2 rows (v3 / v5 / v8 / v9, so its yolov9t has 2,128,720 parameters).
    ``legacy=False`` (``[nc, False]``) gives the YOLO11 class branch: (DWConv(c, c, 3) -> Conv(c, c3, 1)) ->
    (DWConv(c3, c3, 3) -> Conv(c3, c3, 1)) -> Conv2d(c3, nc, 1).
    """

    def __init__(self, nc: int = 80, ch: Sequence[int] = (64, 96, 128), legacy: bool = True):
        super().__init__(nc, ch)
        self.legacy = bool(legacy)
        c2, c3 = max(16, self.ch[0] // 4, self.reg_max * 4), max(self.ch[0], min(self.nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1)) for c in self.ch)
        self.cv3 = nn.ModuleList(_plain_cls(c, c3, self.nc) if self.legacy else _depthwise_cls(c, c3, self.nc)
                                 for c in self.ch)
        self.dfl = DFL(self.reg_max)


def _depthwise_cls(c: int, c3: int, nc: int) -> nn.Sequential:
    """YOLO11's class branch: two depthwise-separable 3x3 blocks and a 1x1 conv to nc logits."""
    return nn.Sequential(nn.Sequential(DWConv(c, c, 3), Conv(c, c3, 1)),
                         nn.Sequential(DWConv(c3, c3, 3), Conv(c3, c3, 1)),
                         nn.Conv2d(c3, nc, 1))
