"""Results: the detections of one image, in the image's own pixels.

    r = Detector("best.pt").predict("bus.jpg")[0]
    r.boxes, r.scores, r.labels      # [n, 4] xyxy pixels, [n], [n] (CPU tensors, best first)
    cv2.imwrite("out.jpg", r.plot())  # annotated BGR copy
    r.to_json()                       # [{"name", "class", "confidence", "box": {x1, y1, x2, y2}}, ...]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from rtdet.utils.plotting import draw_detections

__all__ = ["Results"]


@dataclass
class Results:
    """Detections of one image. ``orig_img`` is the BGR uint8 image they refer to; ``path`` where it came
    from (for a video: the file, with ``frame`` set); ``uid`` the item's unique id within its source;
    ``ids`` the track ids when the detections come from a tracker."""

    orig_img: np.ndarray
    path: str
    boxes: torch.Tensor  # [n, 4] xyxy, original pixels
    scores: torch.Tensor  # [n]
    labels: torch.Tensor  # [n] int64
    names: dict[int, str] = field(default_factory=dict)
    frame: int | None = None
    speed_ms: float = 0.0  # model + postprocess, per image
    uid: str = ""  # the item's unique id within its source (rtdet/engine/sources.py), e.g. 'a/img.jpg'
    ids: torch.Tensor | None = None  # [n] int64 track ids (tracking only)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def orig_shape(self) -> tuple[int, int]:
        return tuple(self.orig_img.shape[:2])

    def plot(self, line_width: int | None = None, scores: bool = True) -> np.ndarray:
        """A copy of the image with boxes, class names and (optionally) scores drawn (BGR uint8)."""
        return draw_detections(self.orig_img, self.boxes.numpy(), self.scores.numpy() if scores else None,
                               self.labels.numpy(), self.names, line_width)

    def to_list(self) -> list[dict]:
        return [
            {"name": self.names.get(int(c), str(int(c))), "class": int(c), "confidence": round(float(s), 5),
             "box": dict(zip(("x1", "y1", "x2", "y2"), (round(float(v), 2) for v in b)))}
            for b, s, c in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist())
        ]

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_list(), indent=indent)

    def yolo_lines(self) -> list[str]:
        """YOLO label rows 'class cx cy w h score', normalised by the image size."""
        h, w = self.orig_shape
        b = self.boxes
        cx, cy = (b[:, 0] + b[:, 2]) / (2 * w), (b[:, 1] + b[:, 3]) / (2 * h)
        bw, bh = (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h
        rows = torch.stack([cx, cy, bw, bh], 1).tolist()
        return [f"{int(c)} {x:.6f} {y:.6f} {ww:.6f} {hh:.6f} {float(s):.5f}"
                for (x, y, ww, hh), s, c in zip(rows, self.scores.tolist(), self.labels.tolist())]

    def __repr__(self) -> str:
        frame = f" frame {self.frame}" if self.frame is not None else ""
        return f"Results({self.path!r}{frame}: {len(self)} detections)"
