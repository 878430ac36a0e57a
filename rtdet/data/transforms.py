"""Image + box transforms for detection, built by name from recipe YAML.

A *sample* is a dict::

    img        HWC uint8 BGR (as OpenCV reads it; collate converts to RGB)
    cls        [n] int64
    bboxes     [n, 4] float32 xyxy in pixels of ``img`` (pixel i spans [i, i+1))
    im_file    str
    ori_shape  (h0, w0) of the file as displayed
    ratio_pad  ((ry, rx), (pad_x, pad_y)) mapping original pixels to ``img`` pixels
               (x = x0 * rx + pad_x), or None after a transform no such map describes (flip, affine, mosaic)

Each transform is a small class whose ``__call__(sample) -> sample`` returns new arrays (the input image is
never modified in place, so cached samples stay intact). Random transforms draw from ``self.rng``, a
``numpy.random.Generator`` the pipeline assigns (reseeded per sample from (seed, epoch, index)); global
random state is never used. Transforms that need more images (Mosaic, MixUp) are bound to the dataset by
:meth:`Compose.bind`. ``register_transform`` adds a class to the registry that recipe YAMLs name.
"""

from __future__ import annotations

import difflib
import inspect
from abc import ABC, abstractmethod
from typing import Any

import cv2
import numpy as np

__all__ = [
    "TRANSFORMS",
    "Compose",
    "FilterBoxes",
    "IoUCrop",
    "LetterBox",
    "Pad",
    "PhotometricDistort",
    "PipelineConfigError",
    "RandomAffine",
    "RandomCrop",
    "RandomFlip",
    "RandomHSV",
    "RandomResize",
    "Resize",
    "SKIP_KEY",
    "Transform",
    "YOLOXHSVRandomAug",
    "ZoomOut",
    "box_candidates",
    "warp_boxes",
    "build_transform",
    "register_transform",
]

TRANSFORMS: dict[str, type] = {}
# Sample key holding the names of transforms a Compose skips for that sample (set by DEIMMosaic; the dataset
# removes it before the sample leaves the pipeline).
SKIP_KEY = "skip_transforms"
_INTERP = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST,
           "cubic": cv2.INTER_CUBIC}


class PipelineConfigError(ValueError):
    """A transform list that cannot be built: unknown name, bad argument, bad stage."""


def register_transform(cls: type) -> type:
    """Class decorator: make a transform available to pipeline YAMLs under its class name."""
    TRANSFORMS[cls.__name__] = cls
    return cls


def build_registered(spec: dict[str, Any], table: dict[str, type], what: str, how: str,
                     defaults: dict[str, Any] | None = None) -> Any:
    """Build ``{name: <registered class>, **kwargs}`` from ``table`` (no eval: the name must be registered).
    ``what`` names the kind in errors ("transform"), ``how`` says how to add one; ``defaults`` fill the
    arguments a class takes and the spec does not give."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise PipelineConfigError(f"a {what} must be a mapping with a 'name' key, got {spec!r}")
    kwargs = dict(spec)
    name = kwargs.pop("name")
    cls = table.get(name)
    if cls is None:
        close = difflib.get_close_matches(str(name), table, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise PipelineConfigError(f"unknown {what} '{name}'.{hint} Known: {', '.join(sorted(table))}. {how}")
    params = inspect.signature(cls).parameters
    kwargs = {**{k: v for k, v in (defaults or {}).items() if k in params and k not in kwargs}, **kwargs}
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise PipelineConfigError(f"{name}: unknown argument(s) {unknown}; it takes {list(params)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise PipelineConfigError(f"{name}({kwargs}): {e}") from None


def build_transform(spec: dict[str, Any], imgsz: int) -> Transform:
    """Build ``{name: LetterBox, **kwargs}``. ``imgsz`` is passed to transforms that take it and were not
    given one. No eval: the name must be registered."""
    if isinstance(spec, dict) and "imgsz" in spec:
        _check_explicit_size(spec.get("name"), spec["imgsz"], imgsz)
    return build_registered(spec, TRANSFORMS, "transform", "A new one is a class decorated with "
                            "rtdet.data.transforms.register_transform.", {"imgsz": imgsz})


def _check_explicit_size(name: str, size: Any, imgsz: int) -> None:
    """A size a transform names itself may not exceed the run's ``imgsz``: the network's input is imgsz, and
    a pipeline (one stored in a model file, too) letterboxing to 8000 px used 4.5 GB for one small image."""
    sides = size if isinstance(size, list | tuple) else [size]
    if not (1 <= len(sides) <= 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sides)):
        raise PipelineConfigError(f"{name}: imgsz={size!r}: expected a side or [height, width] in pixels")
    if max(sides) > int(imgsz):
        raise PipelineConfigError(f"{name}: imgsz={size!r} is larger than the run's imgsz={imgsz}; a transform "
                                  f"takes the run's imgsz when it names none (remove its imgsz), or set imgsz=")


# ------------------------------------------------------------------------------------------- helpers
def _size2(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(h, w) from an int or an (h, w) pair."""
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def _keep(sample: dict, keep: np.ndarray) -> dict:
    sample["cls"] = sample["cls"][keep]
    sample["bboxes"] = sample["bboxes"][keep]
    return sample


def _compose_ratio_pad(rp, ry: float, rx: float, px: float, py: float):
    """ratio_pad after a further x -> x * rx + px, y -> y * ry + py (None stays None)."""
    if rp is None:
        return None
    (ry0, rx0), (px0, py0) = rp
    return (ry0 * ry, rx0 * rx), (px0 * rx + px, py0 * ry + py)


# NumPy box helpers for the transforms; the torch / NumPy box ops of the models are in rtdet.ops.boxes, under
# other names (ops' clip_boxes takes a (h, w) shape), so one name means one thing.
def clip_to_image(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """xyxy boxes [n, 4] clipped to an h x w image; a new array."""
    out = boxes.copy()
    np.clip(out[:, 0::2], 0, w, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, h, out=out[:, 1::2])
    return out


def nonnegative_area(b: np.ndarray) -> np.ndarray:
    """Area of xyxy boxes [n, 4] -> [n]; an inverted side (x2 < x1 or y2 < y1) counts as 0, so no area is < 0."""
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_candidates(before: np.ndarray, after: np.ndarray, wh_thr: float = 2.0, ar_thr: float = 100.0,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Boxes worth keeping after a geometric transform: both sides > wh_thr px, aspect ratio < ar_thr and
    area > area_thr of the (equally scaled) box before it. [n, 4] xyxy each; returns a bool mask."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def warp_boxes(boxes: np.ndarray, M: np.ndarray, h: int, w: int, perspective: bool = False) -> np.ndarray:
    """Boxes [n, 4] xyxy mapped through the 3x3 matrix ``M``: each box becomes a convex quadrilateral,
    which is clipped to the (h, w) image; the result is the bounding box of the clipped quadrilateral
    (all zeros where nothing is left). Clipping the quadrilateral, not its bounding box, keeps a rotated
    box that leaves the image tight around what stays visible."""
    n = len(boxes)
    if not n:
        return np.zeros((0, 4), np.float64)
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(n, 4, 2).astype(np.float64)  # clockwise
    xy = np.concatenate([corners, np.ones((n, 4, 1))], 2) @ M.T
    quad = xy[..., :2] / xy[..., 2:3] if perspective else xy[..., :2]  # [n, 4, 2]
    lo, hi = np.zeros(2), np.array([w, h], np.float64)
    eps = 1e-6
    # candidate points: quad vertices inside the image ...
    pts = [quad]
    ok = [((quad >= lo - eps) & (quad <= hi + eps)).all(-1)]
    # ... crossings of quad edges with the four image border lines ...
    a, b = quad, np.roll(quad, -1, axis=1)
    d = b - a
    for axis in (0, 1):
        for bound in (0.0, hi[axis]):
            with np.errstate(divide="ignore", invalid="ignore"):  # edges parallel to the border: no crossing
                t = (bound - a[..., axis]) / d[..., axis]
                p = a + t[..., None] * d
            other = 1 - axis
            pts.append(p)
            ok.append((t >= -eps) & (t <= 1 + eps) & (p[..., other] >= -eps) & (p[..., other] <= hi[other] + eps))
    # ... and image corners inside the quad (convex: same side of every edge)
    img_corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    rel = img_corners[None, :, None, :] - a[:, None, :, :]  # [n, 4 corners, 4 edges, 2]
    cross = d[:, None, :, 0] * rel[..., 1] - d[:, None, :, 1] * rel[..., 0]
    inside = (cross >= -eps).all(-1) | (cross <= eps).all(-1)
    pts.append(np.broadcast_to(img_corners, (n, 4, 2)))
    ok.append(inside)
    P = np.concatenate(pts, 1)
    V = np.concatenate(ok, 1) & np.isfinite(P).all(-1)
    out = np.concatenate([np.where(V[..., None], P, np.inf).min(1), np.where(V[..., None], P, -np.inf).max(1)], 1)
    out[~V.any(1)] = 0.0
    np.clip(out[:, 0::2], 0, w, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, h, out=out[:, 1::2])
    return out


def _resize(img: np.ndarray, w: int, h: int, interpolation: str = "linear") -> np.ndarray:
    if img.shape[1] == w and img.shape[0] == h:
        return img
    if interpolation == "auto":  # area when shrinking (sharper, no aliasing), linear when enlarging
        interp = cv2.INTER_AREA if w < img.shape[1] and h < img.shape[0] else cv2.INTER_LINEAR
    else:
        interp = _INTERP[interpolation]
    return cv2.resize(img, (w, h), interpolation=interp)


def _check_interp(interpolation: str) -> str:
    if interpolation != "auto" and interpolation not in _INTERP:
        raise ValueError(f"interpolation must be auto or one of {list(_INTERP)}, got {interpolation!r}")
    return interpolation


def _pad_value(v: int | float | tuple | list) -> tuple:
    return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (float(v),) * 3


def canvas(h: int, w: int, pad_value: int | float | tuple | list) -> np.ndarray:
    """An (h, w, 3) uint8 image filled with ``pad_value`` (a scalar fill is a fast memset)."""
    pv = _pad_value(pad_value)
    if pv[0] == pv[1] == pv[2]:
        return np.full((h, w, 3), int(pv[0]), np.uint8)
    out = np.empty((h, w, 3), np.uint8)
    for k in range(3):
        out[..., k] = int(pv[k])
    return out


def _resize_sample(sample: dict, nw: int, nh: int, interpolation: str) -> dict:
    """Resize the image to nw x nh (no padding), scale its boxes alike and record the map in ratio_pad."""
    h, w = sample["img"].shape[:2]
    rx, ry = nw / w, nh / h
    b = sample["bboxes"]
    if len(b):
        b = (b * np.array([rx, ry, rx, ry], np.float32)).astype(np.float32)
    sample.update(img=_resize(sample["img"], nw, nh, interpolation), bboxes=b,
                  ratio_pad=_compose_ratio_pad(sample.get("ratio_pad"), ry, rx, 0.0, 0.0))
    return sample


class Transform(ABC):
    """Base class. ``rng`` is the generator random draws come from (a seeded default until the pipeline
    assigns its own)."""

    _rng: np.random.Generator | None = None

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng(0)
        return self._rng

    @rng.setter
    def rng(self, g: np.random.Generator) -> None:
        self._rng = g

    @abstractmethod
    def __call__(self, sample: dict) -> dict:
        """Transform one sample dict (img, cls, bboxes xyxy pixels, bookkeeping) and return it."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_")
                         and k not in ("dataset", "pre"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order. ``reseed`` shares one generator with all of them; ``bind`` gives the
    mixing transforms the dataset and the transforms before them."""

    def __init__(self, transforms: list[Transform]):
        self.transforms = list(transforms)

    def __call__(self, sample: dict) -> dict:
        for t in self.transforms:
            # a transform may name later ones this sample must skip (DEIMMosaic: no ZoomOut / IoUCrop after a
            # mosaic); samples without the key run every transform, as before
            if type(t).__name__ in sample.get(SKIP_KEY, ()):
                continue
            sample = t(sample)
        return sample

    def reseed(self, rng: np.random.Generator | int) -> None:
        g = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.rng = g
        for t in self.transforms:
            if isinstance(t, Compose):
                t.reseed(g)
            else:
                t.rng = g

    def bind(self, dataset) -> Compose:
        for i, t in enumerate(self.transforms):
            if hasattr(t, "bind"):
                t.bind(dataset, Compose(self.transforms[:i]))
        return self

    @property
    def names(self) -> list[str]:
        return [type(t).__name__ for t in self.transforms]

    def __repr__(self) -> str:
        return "Compose([\n" + "".join(f"  {t!r},\n" for t in self.transforms) + "])"


# -------------------------------------------------------------------------------- deterministic resizing
@register_transform
class LetterBox(Transform):
    """Resize keeping the aspect ratio so the image fits ``imgsz``, then pad to exactly ``imgsz``
    (centred, or at the bottom-right when ``center=False``). Boxes and ratio_pad follow exactly."""

    def __init__(self, imgsz: int | tuple[int, int] = 640, center: bool = True, scaleup: bool = True,
                 pad_value: int | tuple = 114, interpolation: str = "linear"):
        self.imgsz = _size2(imgsz)
        self.center, self.scaleup, self.pad_value = center, scaleup, pad_value
        self.interpolation = _check_interp(interpolation)

    def __call__(self, sample: dict) -> dict:
        img = sample["img"]
        h, w = img.shape[:2]
        th, tw = self.imgsz
        r = min(th / h, tw / w)
        if not self.scaleup:
            r = min(r, 1.0)
        nw, nh = min(max(round(w * r), 1), tw), min(max(round(h * r), 1), th)
        left, top = ((tw - nw) // 2, (th - nh) // 2) if self.center else (0, 0)
        out = _resize(img, nw, nh, self.interpolation)
        if (nh, nw) != (th, tw):
            out = cv2.copyMakeBorder(out, top, th - nh - top, left, tw - nw - left, cv2.BORDER_CONSTANT,
                                     value=_pad_value(self.pad_value))
        rx, ry = nw / w, nh / h
        b = sample["bboxes"]
        if len(b):
            b = b * np.array([rx, ry, rx, ry], np.float32) + np.array([left, top, left, top], np.float32)
        sample.update(img=out, bboxes=b.astype(np.float32),
                      ratio_pad=_compose_ratio_pad(sample.get("ratio_pad"), ry, rx, left, top))
        return sample


@register_transform
class Resize(Transform):
    """Stretch to ``imgsz`` x ``imgsz`` (no aspect ratio kept), as RT-DETR's official pipeline does."""

    def __init__(self, imgsz: int | tuple[int, int] = 640, interpolation: str = "linear"):
        self.imgsz = _size2(imgsz)
        self.interpolation = _check_interp(interpolation)

    def __call__(self, sample: dict) -> dict:
        th, tw = self.imgsz
        return _resize_sample(sample, tw, th, self.interpolation)


@register_transform
class Pad(Transform):
    """Pad to at least ``imgsz`` (bottom-right as mmdet's Pad, or centred). Larger images are unchanged."""

    def __init__(self, imgsz: int | tuple[int, int] = 640, pad_value: int | tuple = 114, center: bool = False):
        self.imgsz, self.pad_value, self.center = _size2(imgsz), pad_value, center

    def __call__(self, sample: dict) -> dict:
        img = sample["img"]
        h, w = img.shape[:2]
        ph, pw = max(self.imgsz[0] - h, 0), max(self.imgsz[1] - w, 0)
        if ph == 0 and pw == 0:
            return sample
        top, left = (ph // 2, pw // 2) if self.center else (0, 0)
        sample["img"] = cv2.copyMakeBorder(img, top, ph - top, left, pw - left, cv2.BORDER_CONSTANT,
                                           value=_pad_value(self.pad_value))
        if left or top:
            sample["bboxes"] = (sample["bboxes"] + np.array([left, top, left, top], np.float32)).astype(np.float32)
        sample["ratio_pad"] = _compose_ratio_pad(sample.get("ratio_pad"), 1.0, 1.0, left, top)
        return sample


# ----------------------------------------------------------------------------------- random geometry
@register_transform
class RandomFlip(Transform):
    """Flip left-right (``horizontal``) or up-down (``vertical``) with probability ``p``."""

    def __init__(self, p: float = 0.5, direction: str = "horizontal"):
        if direction not in ("horizontal", "vertical"):
            raise ValueError(f"direction must be horizontal or vertical, got {direction!r}")
        self.p, self.direction = p, direction

    def __call__(self, sample: dict) -> dict:
        if self.p <= 0 or self.rng.random() >= self.p:
            return sample
        img = sample["img"]
        h, w = img.shape[:2]
        b = sample["bboxes"].copy()
        if self.direction == "horizontal":
            sample["img"] = cv2.flip(img, 1)
            b[:, [0, 2]] = w - sample["bboxes"][:, [2, 0]]
        else:
            sample["img"] = cv2.flip(img, 0)
            b[:, [1, 3]] = h - sample["bboxes"][:, [3, 1]]
        sample["bboxes"], sample["ratio_pad"] = b, None
        return sample


@register_transform
class RandomAffine(Transform):
    """Ultralytics' random perspective: rotation ``degrees``, translation ``translate`` (fraction), scale
    gain ``1 +- scale``, ``shear`` (degrees), ``perspective``. After Mosaic (2s x 2s canvas) the output is
    the s x s centre region; otherwise the image is first letterboxed (or stretched) to ``imgsz``. Boxes
    are the bounds of the warped boxes clipped to the output (:func:`warp_boxes`), then filtered by
    :func:`box_candidates` (size, aspect ratio, area kept)."""

    def __init__(self, imgsz: int = 640, degrees: float = 0.0, translate: float = 0.1, scale: float = 0.5,
                 shear: float = 0.0, perspective: float = 0.0, pad_value: int | tuple = 114, stretch: bool = False,
                 wh_thr: float = 2.0, ar_thr: float = 100.0, area_thr: float = 0.1):
        self.imgsz = int(imgsz)
        self.degrees, self.translate, self.scale, self.shear, self.perspective = (
            degrees, translate, scale, shear, perspective)
        self.pad_value, self.stretch = pad_value, stretch
        self.wh_thr, self.ar_thr, self.area_thr = wh_thr, ar_thr, area_thr
        self._pre = Resize(imgsz) if stretch else LetterBox(imgsz)

    def matrix(self, h: int, w: int, out_h: int, out_w: int) -> tuple[np.ndarray, float]:
        """The 3x3 map from input to output continuous pixel coordinates, and its scale gain."""
        g = self.rng
        C = np.eye(3)
        C[0, 2], C[1, 2] = -w / 2, -h / 2
        P = np.eye(3)
        P[2, 0], P[2, 1] = g.uniform(-self.perspective, self.perspective, 2)
        a = g.uniform(-self.degrees, self.degrees)
        s = g.uniform(1 - self.scale, 1 + self.scale)
        R = np.eye(3)
        R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
        S = np.eye(3)
        S[0, 1], S[1, 0] = np.tan(np.deg2rad(g.uniform(-self.shear, self.shear, 2)))
        T = np.eye(3)
        T[0, 2] = g.uniform(0.5 - self.translate, 0.5 + self.translate) * out_w
        T[1, 2] = g.uniform(0.5 - self.translate, 0.5 + self.translate) * out_h
        return T @ S @ R @ P @ C, s

    def __call__(self, sample: dict) -> dict:
        border = sample.pop("mosaic_border", None)
        if border is None:
            sample = self._pre(sample)
            border = (0, 0)
        img = sample["img"]
        h, w = img.shape[:2]
        out_h, out_w = h + 2 * border[0], w + 2 * border[1]
        M, s = self.matrix(h, w, out_h, out_w)
        # OpenCV warps pixel indices (centres at integers); boxes use continuous coordinates (centres at
        # i + 0.5): conjugate by the half-pixel shift so the image and the boxes move together exactly.
        half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
        Mi = np.linalg.inv(half) @ M @ half
        pad = _pad_value(self.pad_value)
        if self.perspective:
            out = cv2.warpPerspective(img, Mi, dsize=(out_w, out_h), borderValue=pad)
        else:
            out = cv2.warpAffine(img, Mi[:2], dsize=(out_w, out_h), borderValue=pad)
        b = sample["bboxes"].astype(np.float64)
        if len(b):
            new = warp_boxes(b, M, out_h, out_w, bool(self.perspective))
            keep = box_candidates(b * s, new, self.wh_thr, self.ar_thr, self.area_thr) & (nonnegative_area(new) > 0)
            sample["cls"], sample["bboxes"] = sample["cls"][keep], new[keep].astype(np.float32)
        sample["img"], sample["ratio_pad"] = out, None
        return sample


@register_transform
class RandomResize(Transform):
    """mmdet RandomResize with keep_ratio (large-scale jitter): the target square side is
    ``scale * imgsz * r`` with r ~ U(ratio_range); the image is rescaled to fit it."""

    def __init__(self, imgsz: int = 640, scale: float = 2.0, ratio_range: tuple[float, float] = (0.1, 2.0),
                 keep_ratio: bool = True, interpolation: str = "linear"):
        self.imgsz, self.scale, self.ratio_range = int(imgsz), float(scale), tuple(ratio_range)
        self.keep_ratio, self.interpolation = keep_ratio, _check_interp(interpolation)

    def __call__(self, sample: dict) -> dict:
        img = sample["img"]
        h, w = img.shape[:2]
        target = self.scale * self.imgsz * self.rng.uniform(*self.ratio_range)
        if self.keep_ratio:
            f = target / max(h, w)
            nw, nh = max(int(w * f + 0.5), 1), max(int(h * f + 0.5), 1)
        else:
            nw = nh = max(int(target + 0.5), 1)
        return _resize_sample(sample, nw, nh, self.interpolation)


@register_transform
class RandomCrop(Transform):
    """Crop an ``imgsz`` window (or the whole side when smaller) at a random position; boxes are clipped
    and those with no area left (or less than ``min_area_ratio`` of their area) are dropped. When the
    input had boxes and a crop keeps none, another position is drawn (up to ``max_tries``) unless
    ``allow_negative_crop`` (mmdet instead re-draws the whole sample)."""

    def __init__(self, imgsz: int | tuple[int, int] = 640, allow_negative_crop: bool = False, max_tries: int = 10,
                 min_area_ratio: float = 0.0):
        self.imgsz, self.allow_negative_crop = _size2(imgsz), allow_negative_crop
        self.max_tries, self.min_area_ratio = max(int(max_tries), 1), min_area_ratio

    def __call__(self, sample: dict) -> dict:
        img, b = sample["img"], sample["bboxes"]
        h, w = img.shape[:2]
        ch, cw = min(self.imgsz[0], h), min(self.imgsz[1], w)
        area0 = nonnegative_area(b)
        for _ in range(self.max_tries):
            y0 = int(self.rng.integers(0, h - ch + 1))
            x0 = int(self.rng.integers(0, w - cw + 1))
            nb = clip_to_image(b - np.array([x0, y0, x0, y0], np.float32), ch, cw)
            area = nonnegative_area(nb)
            keep = (area > 0) & (area >= self.min_area_ratio * area0)
            if keep.any() or not len(b) or self.allow_negative_crop:
                break
        sample["img"] = img[y0:y0 + ch, x0:x0 + cw]
        sample["bboxes"] = nb.astype(np.float32)
        sample["ratio_pad"] = _compose_ratio_pad(sample.get("ratio_pad"), 1.0, 1.0, -x0, -y0)
        return _keep(sample, keep)


@register_transform
class FilterBoxes(Transform):
    """Drop boxes narrower or shorter than ``min_size`` px, or more elongated than ``max_aspect_ratio``
    (torchvision SanitizeBoundingBoxes / mmdet FilterAnnotations)."""

    def __init__(self, min_size: float = 1.0, max_aspect_ratio: float | None = None):
        self.min_size, self.max_aspect_ratio = min_size, max_aspect_ratio

    def __call__(self, sample: dict) -> dict:
        b = sample["bboxes"]
        if not len(b):
            return sample
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        keep = (w >= self.min_size) & (h >= self.min_size)
        if self.max_aspect_ratio is not None:
            keep &= np.maximum(w / np.maximum(h, 1e-9), h / np.maximum(w, 1e-9)) <= self.max_aspect_ratio
        return _keep(sample, keep)


@register_transform
class ZoomOut(Transform):
    """torchvision RandomZoomOut: with probability ``p`` place the image at a random spot of a canvas
    ``r`` times larger (r ~ U(side_range)) filled with ``fill``."""

    def __init__(self, fill: int | tuple = 0, side_range: tuple[float, float] = (1.0, 4.0), p: float = 0.5):
        if side_range[0] < 1.0 or side_range[0] > side_range[1]:
            raise ValueError(f"side_range must satisfy 1 <= min <= max, got {side_range}")
        self.fill, self.side_range, self.p = fill, tuple(side_range), p

    def __call__(self, sample: dict) -> dict:
        if self.rng.random() >= self.p:
            return sample
        img = sample["img"]
        h, w = img.shape[:2]
        r = self.rng.uniform(*self.side_range)
        cw, ch = int(w * r), int(h * r)
        rl, rt = self.rng.random(2)
        left, top = int((cw - w) * rl), int((ch - h) * rt)
        sample["img"] = cv2.copyMakeBorder(img, top, ch - h - top, left, cw - w - left, cv2.BORDER_CONSTANT,
                                           value=_pad_value(self.fill))
        sample["bboxes"] = (sample["bboxes"] + np.array([left, top, left, top], np.float32)).astype(np.float32)
        sample["ratio_pad"] = _compose_ratio_pad(sample.get("ratio_pad"), 1.0, 1.0, left, top)
        return sample


@register_transform
class IoUCrop(Transform):
    """SSD / torchvision RandomIoUCrop as RT-DETR applies it (with probability ``p``): pick a minimum IoU
    from ``sampler_options`` (1.0 = keep the image), then try ``trials`` crops of scale
    U(min_scale, max_scale) per side with an aspect ratio in range whose IoU with some box whose centre it
    contains reaches that minimum. Boxes whose centre falls outside the crop are dropped, others clipped."""

    def __init__(self, min_scale: float = 0.3, max_scale: float = 1.0, min_aspect_ratio: float = 0.5,
                 max_aspect_ratio: float = 2.0,
                 sampler_options: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
                 trials: int = 40, p: float = 0.8, max_rounds: int = 50):
        self.min_scale, self.max_scale = min_scale, max_scale
        self.min_aspect_ratio, self.max_aspect_ratio = min_aspect_ratio, max_aspect_ratio
        self.sampler_options, self.trials, self.p, self.max_rounds = tuple(sampler_options), trials, p, max_rounds

    def _find(self, b: np.ndarray, h: int, w: int):
        g = self.rng
        for _ in range(self.max_rounds):  # torchvision loops until an option succeeds; bound it
            min_iou = self.sampler_options[int(g.integers(len(self.sampler_options)))]
            if min_iou >= 1.0:
                return None
            for _ in range(self.trials):
                sx, sy = self.min_scale + (self.max_scale - self.min_scale) * g.random(2)
                nw, nh = int(w * sx), int(h * sy)
                if nh == 0 or not self.min_aspect_ratio <= nw / nh <= self.max_aspect_ratio:
                    continue
                rl, rt = g.random(2)
                left, top = int((w - nw) * rl), int((h - nh) * rt)
                right, bottom = left + nw, top + nh
                if left == right or top == bottom:
                    continue
                cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
                inside = (left < cx) & (cx < right) & (top < cy) & (cy < bottom)
                if not inside.any():
                    continue
                bi = b[inside]
                ix = np.clip(np.minimum(bi[:, 2], right) - np.maximum(bi[:, 0], left), 0, None)
                iy = np.clip(np.minimum(bi[:, 3], bottom) - np.maximum(bi[:, 1], top), 0, None)
                inter = ix * iy
                iou = inter / (nonnegative_area(bi) + nw * nh - inter)
                if iou.max() < min_iou:
                    continue
                return left, top, nw, nh, inside
        return None

    def __call__(self, sample: dict) -> dict:
        b = sample["bboxes"]
        if not len(b) or self.rng.random() >= self.p:
            return sample
        h, w = sample["img"].shape[:2]
        found = self._find(b, h, w)
        if found is None:
            return sample
        left, top, nw, nh, inside = found
        sample["img"] = sample["img"][top:top + nh, left:left + nw]
        sample["bboxes"] = clip_to_image(b - np.array([left, top, left, top], np.float32), nh, nw).astype(np.float32)
        sample["ratio_pad"] = _compose_ratio_pad(sample.get("ratio_pad"), 1.0, 1.0, -left, -top)
        return _keep(sample, inside)


# ------------------------------------------------------------------------------------------ colour
@register_transform
class RandomHSV(Transform):
    """Ultralytics HSV jitter: hue, saturation and value multiplied by gains U(1 - g, 1 + g) through
    lookup tables (hue wraps at 180, OpenCV's range)."""

    def __init__(self, hgain: float = 0.015, sgain: float = 0.7, vgain: float = 0.4):
        self.hgain, self.sgain, self.vgain = hgain, sgain, vgain

    def __call__(self, sample: dict) -> dict:
        if not (self.hgain or self.sgain or self.vgain):
            return sample
        r = self.rng.uniform(-1, 1, 3) * np.array([self.hgain, self.sgain, self.vgain]) + 1
        x = np.arange(256, dtype=np.float64)
        lut = np.stack([(x * r[0]) % 180, np.clip(x * r[1], 0, 255), np.clip(x * r[2], 0, 255)], 1).astype(np.uint8)
        hsv = cv2.cvtColor(sample["img"], cv2.COLOR_BGR2HSV)
        hsv = cv2.LUT(hsv, lut.reshape(256, 1, 3))
        sample["img"] = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return sample


@register_transform
class YOLOXHSVRandomAug(Transform):
    """mmdet YOLOX HSV: integer offsets U(-delta, delta) added to hue (mod 180), saturation and value
    (clipped); each of the three is switched on or off at random."""

    def __init__(self, hue_delta: int = 5, saturation_delta: int = 30, value_delta: int = 30):
        self.hue_delta, self.saturation_delta, self.value_delta = hue_delta, saturation_delta, value_delta

    def __call__(self, sample: dict) -> dict:
        gains = self.rng.uniform(-1, 1, 3) * np.array([self.hue_delta, self.saturation_delta, self.value_delta])
        gains *= self.rng.integers(0, 2, 3)
        gains = gains.astype(np.int16)
        if not gains.any():
            return sample
        x = np.arange(256, dtype=np.int16)
        lut = np.stack([(x + gains[0]) % 180, np.clip(x + gains[1], 0, 255), np.clip(x + gains[2], 0, 255)], 1)
        hsv = cv2.cvtColor(sample["img"], cv2.COLOR_BGR2HSV)
        hsv = cv2.LUT(hsv, lut.astype(np.uint8).reshape(256, 1, 3))
        sample["img"] = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return sample


@register_transform
class PhotometricDistort(Transform):
    """torchvision RandomPhotometricDistort: brightness, contrast (before or after the rest), saturation,
    hue and a channel permutation, each applied with probability ``p``."""

    def __init__(self, brightness: tuple[float, float] = (0.875, 1.125), contrast: tuple[float, float] = (0.5, 1.5),
                 saturation: tuple[float, float] = (0.5, 1.5), hue: tuple[float, float] = (-0.05, 0.05),
                 p: float = 0.5):
        self.brightness, self.contrast, self.saturation, self.hue = (
            tuple(brightness), tuple(contrast), tuple(saturation), tuple(hue))
        self.p = p

    @staticmethod
    def _gray(img: np.ndarray) -> np.ndarray:
        # ITU-R 601 luma on BGR channel order
        return img[..., 0] * 0.114 + img[..., 1] * 0.587 + img[..., 2] * 0.299

    def __call__(self, sample: dict) -> dict:
        g = self.rng
        draw = g.random(5) < self.p  # brightness, contrast, saturation, hue, channel permutation
        factors = [g.uniform(*rng) for rng in (self.brightness, self.contrast, self.saturation, self.hue)]
        contrast_before = g.random() < 0.5
        perm = g.permutation(3)
        if not draw.any():
            return sample
        img = sample["img"].astype(np.float32)

        def contrast(im):
            return np.clip(im * factors[1] + (1 - factors[1]) * self._gray(im).mean(), 0, 255) if draw[1] else im

        if draw[0]:
            img = np.clip(img * factors[0], 0, 255)
        if contrast_before:
            img = contrast(img)
        if draw[2]:
            img = np.clip(img * factors[2] + (1 - factors[2]) * self._gray(img)[..., None], 0, 255)
        if draw[3] and factors[3] != 0:
            hsv = cv2.cvtColor(img.round().astype(np.uint8), cv2.COLOR_BGR2HSV)
            shift = int(round(factors[3] * 180))
            hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR).astype(np.float32)
        if not contrast_before:
            img = contrast(img)
        if draw[4]:
            img = img[..., perm]
        sample["img"] = np.ascontiguousarray(img.round().astype(np.uint8))
        return sample


def letterbox_to(sample: dict, h: int, w: int, pad_value=114) -> dict:
    """LetterBox ``sample`` to (h, w) (used to make a mix partner match)."""
    return LetterBox((h, w), pad_value=pad_value)(sample)

