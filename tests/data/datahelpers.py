"""Helpers for the data tests: tiny YOLO datasets written to tmp_path, samples with solid coloured
rectangles, and a check that boxes still frame the pixels of their colour after a transform."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

# one unique BGR colour per class, far from black (background) and 114 grey (padding)
COLOURS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
                    (255, 255, 255), (0, 128, 255)], np.float32)


def write_image(path: Path, h: int = 48, w: int = 64, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), value, np.uint8)
    img[h // 4: h // 2, w // 4: w // 2] = (0, 0, 255)
    assert cv2.imwrite(str(path), img)
    return path


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_yolo_dataset(root: Path, labels: dict[str, str | None], names=("a", "b", "c"), h: int = 48, w: int = 64
                      ) -> Path:
    """images/train/<stem>.jpg with labels/train/<stem>.txt holding the given text (None = no file)."""
    for stem, text in labels.items():
        write_image(root / "images" / "train" / f"{stem}.jpg", h, w)
        if text is not None:
            lp = root / "labels" / "train" / f"{stem}.txt"
            lp.parent.mkdir(parents=True, exist_ok=True)
            lp.write_text(text)
    return write_yaml(root / "data.yaml", {"path": ".", "train": "images/train", "val": "images/train",
                                           "names": list(names)})


def rect_sample(h: int, w: int, rects: list[tuple[int, int, int, int, int]], im_file: str = "mem.jpg") -> dict:
    """A sample: black image with solid rectangles (x1, y1, x2, y2, class) in their class colour."""
    img = np.zeros((h, w, 3), np.uint8)
    for x1, y1, x2, y2, c in rects:
        img[y1:y2, x1:x2] = COLOURS[c]
    return {"img": img, "cls": np.array([r[4] for r in rects], np.int64),
            "bboxes": np.array([r[:4] for r in rects], np.float32).reshape(-1, 4), "im_file": im_file,
            "ori_shape": (h, w), "ratio_pad": ((1.0, 1.0), (0.0, 0.0))}


def colour_mask(img: np.ndarray, c: int, scale: float = 1.0, tol: float = 40) -> np.ndarray:
    return (np.abs(img.astype(np.float32) - COLOURS[c] * scale) <= tol).all(-1)


def assert_boxes_frame_colours(sample: dict, scale: float = 1.0, tight_tol: float = 2.5, coverage: bool = True,
                               only: np.ndarray | None = None) -> None:
    """Every box lies in the image and is tight around pixels of its class colour; with ``coverage`` every
    pixel of a class colour lies inside some box of that class."""
    img, boxes, cls = sample["img"], sample["bboxes"], sample["cls"]
    h, w = img.shape[:2]
    assert boxes.shape == (len(cls), 4) and boxes.dtype == np.float32
    if len(boxes):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    sel = np.arange(len(cls)) if only is None else only
    for c in np.unique(cls[sel]) if len(sel) else []:
        mask = colour_mask(img, int(c), scale)
        inside_any = np.zeros_like(mask)
        for b in boxes[cls == c]:
            x1, y1 = max(int(np.floor(b[0])) - 1, 0), max(int(np.floor(b[1])) - 1, 0)
            x2, y2 = min(int(np.ceil(b[2])) + 1, w), min(int(np.ceil(b[3])) + 1, h)
            inside_any[y1:y2, x1:x2] = True
        for k in sel[cls[sel] == c]:
            b = boxes[k]
            if min(b[2] - b[0], b[3] - b[1]) < 6:
                continue  # too small for a colour to survive interpolation
            x1, y1 = max(int(np.floor(b[0])) - 1, 0), max(int(np.floor(b[1])) - 1, 0)
            x2, y2 = min(int(np.ceil(b[2])) + 1, w), min(int(np.ceil(b[3])) + 1, h)
            ys, xs = np.nonzero(mask[y1:y2, x1:x2])
            assert len(xs), f"box {b} of class {c} holds no pixel of its colour"
            ext = np.array([xs.min() + x1, ys.min() + y1, xs.max() + 1 + x1, ys.max() + 1 + y1], np.float32)
            assert np.abs(ext - b).max() <= tight_tol, f"box {b} of class {c} does not frame its pixels {ext}"
        if coverage:
            stray = mask & ~inside_any
            assert stray.sum() <= 2, f"{stray.sum()} pixels of class {c} lie outside its boxes"


class ListDataset:
    """The two things mixing transforms need from a dataset: len() and load_sample(i)."""

    def __init__(self, samples: list[dict]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def load_sample(self, i: int) -> dict:
        s = self.samples[i]
        return {**s, "img": s["img"].copy(), "cls": s["cls"].copy(), "bboxes": s["bboxes"].copy()}
