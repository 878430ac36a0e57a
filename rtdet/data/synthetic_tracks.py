"""A synthetic tracking clip: the demo's shapes moving over a still background, with known identities.

    frames, gt = render_track_clip(n_frames=60, n_objects=4, imgsz=256, seed=0)
    write_video("clip.avi", frames, fps=15); write_mot("gt.txt", gt)

Each object keeps its class (shape and colour, as in rtdet/data/synthetic.py), size and rotation, starts at
a random place and moves at constant speed, bouncing off the borders, so paths cross and objects occlude
each other (a later object is drawn over an earlier one). The ground truth is one MOT row per visible
object and frame, ``frame,id,x,y,w,h,1,1,1`` (frame and id from 1, the drawn extent in pixels; consider
flag, class and visibility 1: MOT evaluators score class 1, the "pedestrian" of MOT Challenge, and count other
classes as distractors, so every shape is written as class 1). Seeded: the same arguments give the same
pixels and rows.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from rtdet.data.synthetic import SHAPES, _background, _shape_mask
from rtdet.utils.checkpoint import atomic_write_text

__all__ = ["render_track_clip", "write_mot", "write_video"]


def _objects(g: np.random.Generator, n: int, imgsz: int, n_classes: int, size_range: tuple[float, float],
             speed: float) -> list[dict]:
    """n objects: class, box size, rotation, position (top-left) and velocity in pixels per frame."""
    objs = []
    for k in range(n):
        side = int(g.uniform(*size_range) * imgsz)
        w, h = side, int(side * g.uniform(0.8, 1.25))
        angle = float(g.uniform(-20, 20))
        direction = g.uniform(0, 2 * np.pi)
        objs.append({"id": k + 1, "cls": int(k % n_classes), "w": w, "h": h,
                     "mask": _shape_mask(SHAPES[k % n_classes][0], w, h, angle),
                     "pos": g.uniform(0, [imgsz - w, imgsz - h]),
                     "vel": speed * np.array([np.cos(direction), np.sin(direction)])})
    return objs


def _move(o: dict, imgsz: int) -> None:
    o["pos"] = o["pos"] + o["vel"]
    for axis, size in ((0, o["w"]), (1, o["h"])):
        if not 0 <= o["pos"][axis] <= imgsz - size:  # bounce off the border
            o["vel"][axis] = -o["vel"][axis]
            o["pos"][axis] = float(np.clip(o["pos"][axis], 0, imgsz - size))


def render_track_clip(n_frames: int = 60, n_objects: int = 4, imgsz: int = 256, seed: int = 0, n_classes: int = 4,
                      size_range: tuple[float, float] = (0.15, 0.3), speed: float = 3.0, noise: float = 6.0
                      ) -> tuple[list[np.ndarray], np.ndarray]:
    """(frames: BGR uint8 [imgsz, imgsz, 3] each, gt: float [m, 7] rows frame, id, cls, x1, y1, x2, y2)."""
    g = np.random.default_rng(seed)
    background = _background(g, imgsz, noise, 40.0)
    objs = _objects(g, n_objects, imgsz, min(n_classes, len(SHAPES)), size_range, speed)
    frames, rows = [], []
    for t in range(1, n_frames + 1):
        img = background.copy()
        for o in objs:
            x, y = (int(round(v)) for v in o["pos"])
            a = o["mask"][..., None]
            patch = img[y:y + o["h"], x:x + o["w"]]
            patch[:] = patch * (1 - a) + np.array(SHAPES[o["cls"]][1], np.float32) * a
            ys, xs = np.nonzero(o["mask"] > 0.25)
            rows.append((t, o["id"], o["cls"], x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1))
            _move(o, imgsz)
        img += (g.random(img.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(noise * np.sqrt(12))
        frames.append(np.clip(img, 0, 255).round().astype(np.uint8))
    return frames, np.array(rows, np.float64).reshape(-1, 7)


def write_mot(path: str | Path, gt: np.ndarray) -> Path:
    """Ground-truth rows (frame, id, cls, x1, y1, x2, y2) as a MOT gt file (see the module docstring)."""
    lines = [f"{int(t)},{int(i)},{x1:g},{y1:g},{x2 - x1:g},{y2 - y1:g},1,1,1\n" for t, i, _, x1, y1, x2, y2 in gt]
    return atomic_write_text(path, "".join(lines))


def write_video(path: str | Path, frames: list[np.ndarray], fps: float = 15.0) -> Path:
    """The frames as a video OpenCV reads back (MJPG in .avi, mp4v in .mp4: the codecs every build has)."""
    path = Path(path)
    h, w = frames[0].shape[:2]
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write this video (codec {'MJPG' if path.suffix == '.avi' else 'mp4v'})")
    for f in frames:
        writer.write(f)
    writer.release()
    return path
