"""Transforms that combine several images: Mosaic and MixUp (Ultralytics; partners loaded from the
dataset), CachedMosaic / CachedMixUp (RTMDet; partners drawn from a small cache of recent samples, so
no extra disk reads) and DEIMMosaic (DEIM's dense one-to-one mosaic). These are the only per-sample
transforms that can increase the number of boxes (DEIM's batch MixUp is in :mod:`rtdet.data.batching`)."""

from __future__ import annotations

import cv2
import numpy as np

from rtdet.data.transforms import (
    SKIP_KEY,
    Compose,
    Transform,
    canvas,
    clip_to_image,
    letterbox_to,
    nonnegative_area,
    register_transform,
    warp_boxes,
)

__all__ = ["CachedMixUp", "CachedMosaic", "DEIMMosaic", "MixUp", "Mosaic", "deim_affine_matrix", "mosaic4",
           "shorter_side_to"]


def _copy(sample: dict) -> dict:
    out = dict(sample)
    out["img"], out["cls"], out["bboxes"] = sample["img"].copy(), sample["cls"].copy(), sample["bboxes"].copy()
    return out


def mosaic4(samples: list[dict], s: int, xc: int, yc: int, pad_value=114) -> dict:
    """Tile four samples around the centre (xc, yc) of a 2s x 2s canvas: top-left, top-right, bottom-left,
    bottom-right. Each image is first scaled to fit s x s (a no-op for images loaded at long side s).
    Boxes are shifted with their tile, clipped to the canvas, and dropped when nothing is left."""
    board = canvas(2 * s, 2 * s, pad_value)
    cls_all, box_all = [], []
    for i, smp in enumerate(samples):
        img, b = smp["img"], smp["bboxes"]
        h, w = img.shape[:2]
        f = min(s / h, s / w)
        if abs(f - 1) > 1e-9:
            nw, nh = max(int(w * f), 1), max(int(h * f), 1)
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
            b = b * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
            h, w = nh, nw
        if i == 0:  # top-left: bottom-right corner of the image at the centre
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b = w - (x2a - x1a), h - (y2a - y1a)
        elif i == 1:  # top-right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
            x1b, y1b = 0, h - (y2a - y1a)
        elif i == 2:  # bottom-left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
            x1b, y1b = w - (x2a - x1a), 0
        else:  # bottom-right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
            x1b, y1b = 0, 0
        board[y1a:y2a, x1a:x2a] = img[y1b:y1b + (y2a - y1a), x1b:x1b + (x2a - x1a)]
        dx, dy = x1a - x1b, y1a - y1b
        cls_all.append(smp["cls"])
        box_all.append(b + np.array([dx, dy, dx, dy], np.float32))
    boxes = clip_to_image(np.concatenate(box_all).reshape(-1, 4), 2 * s, 2 * s)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    first = samples[0]
    return {**{k: v for k, v in first.items() if k not in ("img", "cls", "bboxes")}, "img": board,
            "cls": np.concatenate(cls_all)[keep], "bboxes": boxes[keep].astype(np.float32), "ratio_pad": None}


class _DatasetMix(Transform):
    """Base of transforms that read partner images from the bound dataset."""

    dataset = None
    pre: Compose | None = None

    def bind(self, dataset, pre: Compose) -> None:
        self.dataset, self.pre = dataset, pre

    def _partner(self) -> dict:
        if self.dataset is None:
            raise RuntimeError(f"{type(self).__name__} needs a dataset: build it through a dataset pipeline "
                               f"or call Compose.bind(dataset)")
        return self.dataset.load_sample(int(self.rng.integers(len(self.dataset))))


@register_transform
class Mosaic(_DatasetMix):
    """Ultralytics 4-image mosaic with probability ``p``: the sample and three random dataset images on a
    2s x 2s canvas around a centre drawn from ``center_range`` x s. Sets ``mosaic_border`` so the next
    RandomAffine crops back to s x s."""

    def __init__(self, imgsz: int = 640, p: float = 1.0, center_range: tuple[float, float] = (0.5, 1.5),
                 pad_value: int | tuple = 114):
        self.imgsz, self.p, self.center_range, self.pad_value = int(imgsz), p, tuple(center_range), pad_value

    def __call__(self, sample: dict) -> dict:
        if self.p <= 0 or self.rng.random() >= self.p:
            return sample
        s = self.imgsz
        xc, yc = (int(v) for v in self.rng.uniform(self.center_range[0] * s, self.center_range[1] * s, 2))
        out = mosaic4([sample] + [self._partner() for _ in range(3)], s, xc, yc, self.pad_value)
        out["mosaic_border"] = (-(s // 2), -(s // 2))
        return out


@register_transform
class CachedMosaic(Transform):
    """RTMDet's cached mosaic: every sample enters a cache of ``max_cached_images`` (when full, a random
    entry, or the oldest when ``random_pop`` is false, leaves); with probability ``p`` and more than four
    cached, the sample and three cached ones form a 2s x 2s mosaic."""

    def __init__(self, imgsz: int = 640, max_cached_images: int = 40, random_pop: bool = True, p: float = 1.0,
                 center_range: tuple[float, float] = (0.5, 1.5), pad_value: int | tuple = 114):
        if max_cached_images < 4:
            raise ValueError(f"max_cached_images must be >= 4, got {max_cached_images}")
        self.imgsz, self.max_cached_images, self.random_pop, self.p = int(imgsz), max_cached_images, random_pop, p
        self.center_range, self.pad_value = tuple(center_range), pad_value
        self._cache: list[dict] = []

    def __call__(self, sample: dict) -> dict:
        self._cache.append(_copy(sample))
        if len(self._cache) > self.max_cached_images:
            self._cache.pop(int(self.rng.integers(len(self._cache))) if self.random_pop else 0)
        if len(self._cache) <= 4 or self.rng.random() >= self.p:
            return sample
        s = self.imgsz
        partners = [_copy(self._cache[int(i)]) for i in self.rng.integers(0, len(self._cache), 3)]
        xc, yc = (int(v) for v in self.rng.uniform(self.center_range[0] * s, self.center_range[1] * s, 2))
        return mosaic4([sample] + partners, s, xc, yc, self.pad_value)


@register_transform
class MixUp(_DatasetMix):
    """Ultralytics MixUp with probability ``p``: blend with another dataset image that went through the
    transforms listed before this one, weight r ~ Beta(alpha, alpha); boxes of both are kept."""

    def __init__(self, p: float = 0.0, alpha: float = 32.0):
        self.p, self.alpha = p, alpha

    def __call__(self, sample: dict) -> dict:
        if self.p <= 0 or self.rng.random() >= self.p:
            return sample
        other = self._partner()
        if self.pre is not None:
            other = self.pre(other)
        h, w = sample["img"].shape[:2]
        if other["img"].shape[:2] != (h, w):
            other = letterbox_to(other, h, w)
        r = float(self.rng.beta(self.alpha, self.alpha))
        sample["img"] = cv2.addWeighted(sample["img"], r, other["img"], 1 - r, 0)
        sample["cls"] = np.concatenate([sample["cls"], other["cls"]])
        sample["bboxes"] = np.concatenate([sample["bboxes"], other["bboxes"]]).astype(np.float32)
        sample["ratio_pad"] = None
        return sample


@register_transform
class CachedMixUp(Transform):
    """RTMDet's cached MixUp (with probability ``p``): a cached sample (one with boxes, up to ``max_iters``
    draws) is scaled to fit imgsz, jittered by U(ratio_range), maybe flipped, randomly cropped to this
    sample's size and blended 50/50. Its boxes follow, are clipped, and dropped when outside."""

    def __init__(self, imgsz: int = 640, ratio_range: tuple[float, float] = (0.5, 1.5), flip_ratio: float = 0.5,
                 pad_value: int | tuple = 114, max_iters: int = 15, max_cached_images: int = 20,
                 random_pop: bool = True, p: float = 1.0):
        if max_cached_images < 2:
            raise ValueError(f"max_cached_images must be >= 2, got {max_cached_images}")
        self.imgsz, self.ratio_range, self.flip_ratio = int(imgsz), tuple(ratio_range), flip_ratio
        self.pad_value, self.max_iters, self.p = pad_value, max_iters, p
        self.max_cached_images, self.random_pop = max_cached_images, random_pop
        self._cache: list[dict] = []

    def __call__(self, sample: dict) -> dict:
        self._cache.append(_copy(sample))
        if len(self._cache) > self.max_cached_images:
            self._cache.pop(int(self.rng.integers(len(self._cache))) if self.random_pop else 0)
        if len(self._cache) <= 1 or self.rng.random() >= self.p:
            return sample
        for _ in range(self.max_iters):
            other = self._cache[int(self.rng.integers(len(self._cache)))]
            if len(other["cls"]):
                break
        jit = float(self.rng.uniform(*self.ratio_range))
        flip = bool(self.rng.random() < self.flip_ratio)
        img2 = other["img"]
        h2, w2 = img2.shape[:2]
        s = self.imgsz
        f = min(s / h2, s / w2)
        # fit into an s x s pad-filled canvas, then jitter the whole canvas (mmdet's order)
        nw, nh = int(w2 * f), int(h2 * f)
        fitted = canvas(s, s, self.pad_value)
        fitted[:nh, :nw] = cv2.resize(img2, (nw, nh), interpolation=cv2.INTER_LINEAR)
        jw, jh = int(s * jit), int(s * jit)
        fitted = cv2.resize(fitted, (jw, jh), interpolation=cv2.INTER_LINEAR)
        b = other["bboxes"] * np.array([nw / w2 * jw / s, nh / h2 * jh / s] * 2, np.float32)
        if flip:
            fitted = cv2.flip(fitted, 1)
            b = np.stack([jw - b[:, 2], b[:, 1], jw - b[:, 0], b[:, 3]], 1)
        b = clip_to_image(b, jh, jw)
        th, tw = sample["img"].shape[:2]
        padded = canvas(max(jh, th), max(jw, tw), self.pad_value)
        padded[:jh, :jw] = fitted
        y0 = int(self.rng.integers(0, padded.shape[0] - th + 1))
        x0 = int(self.rng.integers(0, padded.shape[1] - tw + 1))
        crop = padded[y0:y0 + th, x0:x0 + tw]
        b = clip_to_image(b - np.array([x0, y0, x0, y0], np.float32), th, tw)
        keep = nonnegative_area(b) > 0
        sample["img"] = cv2.addWeighted(sample["img"], 0.5, crop, 0.5, 0)
        sample["cls"] = np.concatenate([sample["cls"], other["cls"][keep]])
        sample["bboxes"] = np.concatenate([sample["bboxes"], b[keep]]).astype(np.float32)
        sample["ratio_pad"] = None
        return sample


# ------------------------------------------------------------------------------------ DEIM's mosaic
def shorter_side_to(sample: dict, size: int) -> dict:
    """A copy of ``sample`` resized so its shorter side is ``size`` (longer side int(size * long / short), as
    torchvision's Resize(int)); boxes scaled alike. Area interpolation when shrinking stands in for
    torchvision's antialiased resize."""
    img = sample["img"]
    h, w = img.shape[:2]
    if h <= w:
        nh, nw = size, max(int(size * w / h), 1)
    else:
        nw, nh = size, max(int(size * h / w), 1)
    if (nh, nw) != (h, w):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR)
    boxes = sample["bboxes"] * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
    return {**sample, "img": img, "bboxes": boxes.astype(np.float32)}


def deim_affine_matrix(rng: np.random.Generator, h: int, w: int, degrees: float, translate: tuple[float, float],
                       scale: tuple[float, float]) -> np.ndarray:
    """torchvision RandomAffine's draw for an (h, w) image, as a 3x3 map of continuous pixel coordinates:
    rotate by U(-degrees, degrees) and scale by U(scale) about the centre, then shift by a whole number of
    pixels up to ``translate`` x (w, h)."""
    angle = rng.uniform(-degrees, degrees)
    tx = round(rng.uniform(-translate[0] * w, translate[0] * w))
    ty = round(rng.uniform(-translate[1] * h, translate[1] * h))
    s = rng.uniform(*scale)
    to_origin = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1.0]])
    rot = np.eye(3)
    rot[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=s)
    back = np.array([[1, 0, w / 2 + tx], [0, 1, h / 2 + ty], [0, 0, 1.0]])
    return back @ rot @ to_origin


@register_transform
class DEIMMosaic(_DatasetMix):
    """DEIM's mosaic for dense one-to-one matching (DEIM engine/data/transforms/mosaic.py), applied with
    probability ``p`` (DEIM's ``mosaic_prob``): the sample and three dataset images drawn with replacement,
    each resized so its shorter side is ``output_size``, are pasted at the top-left corners of the four
    quadrants of a ``fill`` canvas of (2 max_h, 2 max_w); then a random affine (rotation U(-degrees, degrees),
    translation up to ``translate`` x size, scale U(scale), nearest-neighbour, ``fill`` outside) moves the
    canvas and its boxes. A mosaic sample skips the later transforms named in ``skip`` (DEIM: no ZoomOut /
    IoUCrop after a mosaic). Output: (2 max_h, 2 max_w, 3) uint8; boxes empty after the affine are dropped.
    A box is the bounds of its moved quadrilateral clipped to the canvas (:func:`warp_boxes`): for a rotated
    box that leaves the canvas this is tighter than torchvision's bounds-then-clamp, the same elsewhere."""

    def __init__(self, output_size: int = 320, p: float = 0.5, degrees: float = 10.0,
                 translate: tuple[float, float] = (0.1, 0.1), scale: tuple[float, float] = (0.5, 1.5),
                 fill: int | tuple = 0, skip: tuple[str, ...] | list[str] = ("ZoomOut", "IoUCrop")):
        if int(output_size) < 1 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"need output_size >= 1 and 0 < scale[0] <= scale[1], got {output_size}, {scale}")
        self.output_size, self.p, self.degrees = int(output_size), float(p), float(degrees)
        self.translate, self.scale, self.fill = tuple(translate), tuple(scale), fill
        self.skip = tuple(skip)

    def tile(self, samples: list[dict]) -> dict:
        """The four samples (already resized) on the (2 max_h, 2 max_w) canvas, boxes shifted with them."""
        mh = max(s["img"].shape[0] for s in samples)
        mw = max(s["img"].shape[1] for s in samples)
        board = canvas(2 * mh, 2 * mw, self.fill)
        boxes = []
        for smp, (x0, y0) in zip(samples, ((0, 0), (mw, 0), (0, mh), (mw, mh)), strict=True):
            h, w = smp["img"].shape[:2]
            board[y0:y0 + h, x0:x0 + w] = smp["img"]
            boxes.append(smp["bboxes"].reshape(-1, 4) + np.array([x0, y0, x0, y0], np.float32))
        return {**samples[0], "img": board, "cls": np.concatenate([s["cls"] for s in samples]),
                "bboxes": np.concatenate(boxes).astype(np.float32), "ratio_pad": None}

    def warp(self, sample: dict) -> dict:
        """The random affine on the whole canvas (same size out); boxes follow, empty ones are dropped."""
        img = sample["img"]
        h, w = img.shape[:2]
        M = deim_affine_matrix(self.rng, h, w, self.degrees, self.translate, self.scale)
        # OpenCV maps pixel indices (centres at integers), boxes live in continuous coordinates (centres at
        # i + 0.5): conjugating by the half-pixel shift moves image and boxes together
        half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
        Mi = np.linalg.inv(half) @ M @ half
        fill = tuple(float(v) for v in self.fill) if isinstance(self.fill, list | tuple) else (float(self.fill),) * 3
        out = cv2.warpAffine(img, Mi[:2], dsize=(w, h), flags=cv2.INTER_NEAREST, borderValue=fill)
        boxes = warp_boxes(sample["bboxes"].reshape(-1, 4), M, h, w).astype(np.float32)
        keep = nonnegative_area(boxes) > 0
        return {**sample, "img": out, "cls": sample["cls"][keep], "bboxes": boxes[keep]}

    def __call__(self, sample: dict) -> dict:
        if self.p <= 0 or self.rng.random() >= self.p:
            return sample
        parts = [sample] + [self._partner() for _ in range(3)]
        out = self.warp(self.tile([shorter_side_to(s, self.output_size) for s in parts]))
        out[SKIP_KEY] = tuple(sample.get(SKIP_KEY, ())) + self.skip
        return out
