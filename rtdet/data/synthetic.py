"""A synthetic detection dataset for demos and tests: coloured shapes on textured, noisy backgrounds.

Each class has its own shape AND colour (circle/red, square/green, triangle/blue, star/yellow,
cross/magenta, ring/cyan, diamond/orange, hexagon/white). An image holds ``min_objects``..``max_objects``
shapes whose bounding-box side is ``size_range`` x the image side, with a random aspect ratio and
rotation. Shapes may overlap: a new shape may cover at most ``max_occlusion`` of the box area of any shape
already drawn (shapes of one class never overlap: same colour), and a label box is the **full extent of
the shape** (amodal, as COCO annotates occluded objects), measured from the drawn pixels. Everything is
drawn from ``numpy`` generators seeded by (seed, split, image index): the same arguments give
byte-identical label files and identical pixels.

The defaults are easy enough for a small detector to learn in minutes on a CPU; raise ``noise``,
``color_jitter``, ``distractors``, ``max_occlusion`` or lower ``size_range`` to make it harder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import yaml

from rtdet.utils.checkpoint import atomic_write_text

__all__ = ["SHAPES", "make_synthetic_dataset", "render_image"]

# (name, BGR colour); a class is a shape and a colour
SHAPES: list[tuple[str, tuple[int, int, int]]] = [
    ("circle", (40, 40, 220)),
    ("square", (40, 190, 40)),
    ("triangle", (220, 80, 30)),
    ("star", (30, 220, 235)),
    ("cross", (200, 40, 200)),
    ("ring", (220, 210, 40)),
    ("diamond", (20, 130, 250)),
    ("hexagon", (240, 240, 240)),
]


def _polygon(name: str) -> np.ndarray:
    """Unit polygon (points in [-1, 1]) of a shape; empty for the elliptic ones."""
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    if name == "triangle":
        a = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(a), np.sin(a)], 1)
    if name == "star":
        a = np.deg2rad(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if name == "cross":
        t = 0.34
        return np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t],
                         [-1, -t], [-t, -t]], np.float64)
    if name == "diamond":
        return np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], np.float64)
    if name == "hexagon":
        a = np.deg2rad(np.arange(6) * 60)
        return np.stack([np.cos(a), np.sin(a)], 1)
    return np.zeros((0, 2))


def _shape_mask(name: str, w: int, h: int, angle: float) -> np.ndarray:
    """float32 [h, w] coverage (anti-aliased) of a shape filling a w x h box, rotated by ``angle`` deg."""
    ss = 4  # supersampling for smooth edges
    m = np.zeros((h * ss, w * ss), np.uint8)
    cx, cy = w * ss / 2, h * ss / 2
    if name in ("circle", "ring"):
        cv2.ellipse(m, (round(cx), round(cy)), (max(round(cx) - 1, 1), max(round(cy) - 1, 1)), angle, 0, 360, 255, -1)
        if name == "ring":
            cv2.ellipse(m, (round(cx), round(cy)), (max(round(cx * 0.55), 1), max(round(cy * 0.55), 1)), angle, 0,
                        360, 0, -1)
    else:
        p = _polygon(name)
        a = np.deg2rad(angle)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        p = p @ rot.T
        p = p / np.abs(p).max(0)  # rotated shape still spans the whole box
        pts = np.stack([cx + p[:, 0] * (cx - 1), cy + p[:, 1] * (cy - 1)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 255)
    return cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _background(g: np.random.Generator, size: int, noise: float, texture: float) -> np.ndarray:
    """Low-saturation colour blotches and random thin lines (pixel noise is added after the shapes)."""
    base = g.uniform(60, 190)
    grid = base + g.uniform(-texture, texture, (6, 6, 1)) + g.uniform(-12, 12, (6, 6, 3))
    img = cv2.resize(grid.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(g.uniform(-texture / 3, texture / 3, (size // 8, size // 8)).astype(np.float32), (size, size),
                      interpolation=cv2.INTER_LINEAR)
    img += fine[..., None]
    for _ in range(int(g.integers(3, 9))):
        p1, p2 = g.integers(0, size, 2), g.integers(0, size, 2)
        shade = float(g.uniform(40, 220))
        col = tuple(float(shade + d) for d in g.uniform(-10, 10, 3))
        cv2.line(img, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), col, int(g.integers(1, 3)), cv2.LINE_AA)
    return img


def render_image(g: np.random.Generator, imgsz: int = 320, n_classes: int = 6, min_objects: int = 1,
                 max_objects: int = 8, size_range: tuple[float, float] = (0.05, 0.5), max_occlusion: float = 0.4,
                 noise: float = 8.0, texture: float = 40.0, color_jitter: float = 20.0, rotation: float = 30.0,
                 aspect_range: tuple[float, float] = (0.75, 1.33), distractors: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: (BGR uint8 [imgsz, imgsz, 3], cls [n] int64, boxes [n, 4] xyxy pixels)."""
    img = _background(g, imgsz, noise, texture)
    for _ in range(distractors):  # grey blobs that are not a class
        w, h = (int(v) for v in g.uniform(size_range[0], size_range[1], 2) * imgsz)
        x, y = (int(v) for v in g.integers(0, imgsz - max(w, h) + 1, 2))
        shade = float(g.uniform(50, 200))
        cv2.ellipse(img, (x + w // 2, y + h // 2), (max(w // 2, 1), max(h // 2, 1)), float(g.uniform(0, 180)), 0,
                    360, (shade, shade, shade), -1, cv2.LINE_AA)
    target = int(g.integers(min_objects, max_objects + 1))
    boxes: list[tuple[int, int, int, int]] = []
    classes: list[int] = []
    for _ in range(target):
        c = int(g.integers(n_classes))
        side = g.uniform(*size_range) * imgsz
        ar = math.exp(g.uniform(math.log(aspect_range[0]), math.log(aspect_range[1])))
        w = int(np.clip(side * math.sqrt(ar), 4, imgsz))
        h = int(np.clip(side / math.sqrt(ar), 4, imgsz))
        angle = float(g.uniform(-rotation, rotation))
        for _try in range(20):
            x, y = int(g.integers(0, imgsz - w + 1)), int(g.integers(0, imgsz - h + 1))
            ok = True
            for (bx1, by1, bx2, by2), bc in zip(boxes, classes):
                ix = max(0, min(x + w, bx2) - max(x, bx1))
                iy = max(0, min(y + h, by2) - max(y, by1))
                # same-class shapes never touch (same colour: their outline would vanish)
                if ix * iy > (0 if bc == c else max_occlusion) * (bx2 - bx1) * (by2 - by1):
                    ok = False
                    break
            if ok:
                break
        else:
            continue
        cov = _shape_mask(SHAPES[c][0], w, h, angle)
        ys, xs = np.nonzero(cov > 0.25)
        if not len(xs):
            continue
        colour = np.clip(np.array(SHAPES[c][1], np.float32) + g.uniform(-color_jitter, color_jitter, 3), 0, 255)
        shade = g.uniform(0.85, 1.1) * np.linspace(1.08, 0.92, h, dtype=np.float32)[:, None, None]
        patch = img[y:y + h, x:x + w]
        a = cov[..., None]
        patch[:] = patch * (1 - a) + np.clip(colour * shade, 0, 255) * a
        boxes.append((x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1))
        classes.append(c)
    if noise > 0:  # uniform per-pixel noise with standard deviation `noise` (5x cheaper to draw than normal)
        img += (g.random(img.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(noise * math.sqrt(12))
    out = np.clip(img, 0, 255).round().astype(np.uint8)
    return out, np.array(classes, np.int64), np.array(boxes, np.float32).reshape(-1, 4)


def make_synthetic_dataset(root: str | Path, n_train: int = 400, n_val: int = 100, imgsz: int = 320, seed: int = 0,
                           n_classes: int = 6, overwrite: bool = False, jpeg_quality: int = 92, **kwargs) -> Path:
    """Write a YOLO-format synthetic dataset under ``root`` and return the path of its data.yaml.

    Layout: ``images/{train,val}/NNNNNN.jpg``, ``labels/{train,val}/NNNNNN.txt``, ``data.yaml``.
    ``kwargs`` go to :func:`render_image` (min_objects, max_objects, size_range, max_occlusion, noise,
    texture, color_jitter, rotation, aspect_range, distractors). When ``root`` already holds a set made with
    the same arguments it is reused unless ``overwrite``.
    """
    if not 1 <= n_classes <= len(SHAPES):
        raise ValueError(f"n_classes must be in 1..{len(SHAPES)}, got {n_classes}")
    root = Path(root)
    params = {"n_train": n_train, "n_val": n_val, "imgsz": imgsz, "seed": seed, "n_classes": n_classes,
              "jpeg_quality": jpeg_quality, **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}
    yaml_path = root / "data.yaml"
    if yaml_path.is_file() and not overwrite:
        try:
            old = yaml.safe_load(yaml_path.read_text())
        except yaml.YAMLError:
            old = None
        if isinstance(old, dict) and json.dumps(old.get("synthetic"), sort_keys=True) == json.dumps(
                params, sort_keys=True) and all(len(list((root / "labels" / s).glob("*.txt"))) == n
                                                for s, n in (("train", n_train), ("val", n_val))):
            return yaml_path
    for split_id, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            g = np.random.default_rng([seed, split_id, i])
            img, cls_, boxes = render_image(g, imgsz, n_classes, **kwargs)
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            if not ok:
                raise RuntimeError("OpenCV could not encode a JPEG")
            (root / "images" / split / f"{i:06d}.jpg").write_bytes(buf.tobytes())
            cxcywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / imgsz
            rows = [f"{c} {b[0]:.6f} {b[1]:.6f} {b[2]:.6f} {b[3]:.6f}" for c, b in zip(cls_.tolist(), cxcywh)]
            (root / "labels" / split / f"{i:06d}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
    data = {"path": ".", "train": "images/train", "val": "images/val",
            "names": [SHAPES[c][0] for c in range(n_classes)], "synthetic": params}
    header = "# Synthetic shapes dataset written by rtdet.data.synthetic.make_synthetic_dataset\n"
    atomic_write_text(yaml_path, header + yaml.safe_dump(data, sort_keys=False))
    return yaml_path
