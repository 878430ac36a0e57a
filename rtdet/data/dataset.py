"""DetectionDataset: the validated labels of one split, image loading, and the augmentation pipeline of
the current epoch.

``dataset[(epoch, i)]`` (what :func:`rtdet.data.loader.build_dataloader`'s sampler asks for) or
``dataset[i]`` (after ``set_epoch``) returns a transformed sample (see :mod:`rtdet.data.transforms`).
Randomness comes from a generator seeded by (seed, epoch, i), so a sample does not depend on which
worker process produced it (cached transforms aside: their caches are per process).
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from rtdet.data import cache as label_cache
from rtdet.data.formats import (
    ACTIONS,
    DataConfig,
    DataConfigError,
    LabelSet,
    Problem,
    Source,
    _label_candidates,
    coco_image_files,
    list_source_images,
    load_coco_json,
    load_data_config,
    read_coco_source,
    read_image,
    read_yolo_source,
)
from rtdet.data.pipelines import PipelineSchedule, PipelineSpec, build_batch_schedule, load_pipeline_spec
from rtdet.data.transforms import SKIP_KEY

__all__ = ["DetectionDataset", "build_dataset", "open_split", "summarize"]

log = logging.getLogger("rtdet.data")
_SKIP_ACTIONS = {ACTIONS[k] for k in ("image_missing", "image_unreadable", "image_too_small", "image_format",
                                      "label_unreadable")}


# ----------------------------------------------------------------------------------- reading a split
def read_source(source: Source, names: list[str], cache_dir: str | Path | None | bool
                ) -> tuple[LabelSet, bool | None]:
    """Labels of one source, from the cache when it is still valid. Returns (labels, cache hit), the hit
    None when caching is off."""
    nc = len(names)
    use_cache = cache_dir is not False
    cdir = label_cache.default_cache_dir() if cache_dir in (None, True) else cache_dir
    cpath = label_cache.cache_path(cdir, source.path, nc) if use_cache else None
    if source.kind == "coco":
        extra = f"coco|{nc}|{source.images}|{'|'.join(names)}"
        if use_cache:
            got = label_cache.read_cache(cpath)
            if got is not None and got[0] == label_cache.fingerprint([str(source.path)] + got[1], extra):
                return got[2], True
        d = load_coco_json(source.path)
        files = coco_image_files(source, d)
        labels = read_coco_source(source, names, d)
        if not use_cache:
            return labels, None
        label_cache.save_cache(cpath, labels, label_cache.fingerprint([str(source.path)] + files, extra), files)
        return labels, False
    files, list_problems = list_source_images(source)
    watched = files + [c for f in files for c in _label_candidates(f)]
    if source.kind == "list":
        watched.append(str(source.path))
    key = label_cache.fingerprint(watched, f"yolo|{nc}")
    if use_cache:
        hit = label_cache.load_cache(cpath, key)
        if hit is not None:
            return hit, True
    labels = read_yolo_source(source, nc, files)
    labels.problems = list_problems + labels.problems
    if not use_cache:
        return labels, None
    label_cache.save_cache(cpath, labels, key, watched)
    return labels, False


def summarize(labels: LabelSet, nc: int) -> dict[str, Any]:
    """Counts for the summary line and the health report."""
    kinds = Counter(p.kind for p in labels.problems)
    per_class = np.bincount(labels.cls, minlength=nc)[:nc] if len(labels.cls) else np.zeros(nc, np.int64)
    return {
        "images": len(labels),
        "instances": int(len(labels.cls)),
        "background": int(labels.facts.get("background", 0)),
        "no_label_file": int(labels.facts.get("no_label_file", 0)),
        "skipped": sum(1 for p in labels.problems if p.action in _SKIP_ACTIONS),
        "problems": dict(sorted(kinds.items())),
        "facts": dict(sorted(labels.facts.items())),
        "per_class": per_class.tolist(),
    }


def _summary_line(split: str, s: dict, hits: list[bool | None]) -> str:
    parts = [f"{split}: {s['images']} images, {s['instances']} boxes, {s['background']} background "
             f"({s['no_label_file']} without a label file), {s['skipped']} skipped"]
    if s["problems"]:
        parts.append("problems: " + ", ".join(f"{k} {v}" for k, v in s["problems"].items()))
    extra = {k: v for k, v in s["facts"].items() if k not in ("background", "no_label_file")}
    if extra:
        parts.append("notes: " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    if hits and all(h is True for h in hits):
        parts.append("labels from cache")
    elif any(h is not None for h in hits):
        parts.append("labels read and cached")
    return "; ".join(p for p in parts if p)


def _once_per_file(labels: LabelSet) -> LabelSet:
    """A split made of several sources holds each real image file once (two sources may overlap, e.g. a
    folder and one of its subfolders); later copies are dropped and reported."""
    first: dict[str, int] = {}
    keep, problems = [], []
    for i, f in enumerate(labels.im_files):
        real = os.path.realpath(f)
        if real in first:
            problems.append(Problem("image_duplicate", f, f"is the same file as {labels.im_files[first[real]]} "
                                    f"(another source of this split)", ACTIONS["image_duplicate"]))
            continue
        first[real] = i
        keep.append(i)
    if not problems:
        return labels
    out = labels.select(keep)
    out.problems = labels.problems + problems
    return out


def open_split(config: DataConfig, split: str, cache_dir: str | Path | None | bool = None,
               allow_empty: bool = False, verbose: bool = True) -> LabelSet:
    """Read (or load from cache) every source of a split, report each problem once and a summary."""
    if split not in config.splits:
        where = config.file or "<dict>"
        raise DataConfigError(f"{where}: no '{split}' split (the YAML defines {sorted(config.splits)})")
    parts, hits = [], []
    for src in config.splits[split]:
        labels, hit = read_source(src, config.names, cache_dir)
        parts.append(labels)
        hits.append(hit)
    labels = _once_per_file(LabelSet.concat(parts)) if len(parts) > 1 else parts[0]
    s = summarize(labels, config.nc)
    if verbose:
        for p in labels.problems:
            log.warning("%s: %s", split, p)
        if len(labels) and s["no_label_file"] == len(labels):
            log.warning("%s: none of the %d images has a label file (expected e.g. %s); all are used as "
                        "background images", split, len(labels), " or ".join(_label_candidates(labels.im_files[0])))
        log.info("%s", _summary_line(split, s, hits))
    if not len(labels) and not allow_empty:
        srcs = ", ".join(str(s_.path) for s_ in config.splits[split])
        why = f"all {s['skipped']} images were skipped (see the warnings above)" if s["skipped"] else \
            "no image files found (extensions: .bmp .jpeg .jpg .png .tif .tiff .webp)"
        raise DataConfigError(f"{config.file or '<dict>'}: split '{split}' ({srcs}) has no usable images: {why}")
    return labels


# ------------------------------------------------------------------------------------------ dataset
def _read_image(path: str, reduce: int = 1) -> np.ndarray | None:
    """BGR uint8 HWC, EXIF orientation applied, grayscale/RGBA/16-bit converted; None when unreadable.
    The same decoder as the label check (:func:`rtdet.data.formats.read_image`)."""
    return read_image(path, reduce)


class DetectionDataset(Dataset):
    """One split of a dataset YAML with its augmentation pipeline.

    Args:
        data: dataset YAML path, a dict, or a :class:`DataConfig`.
        split: ``train`` | ``val`` | ``test``.
        imgsz: network input side.
        pipeline: pipeline spec (built-in name, YAML path, dict, list; see :mod:`rtdet.data.pipelines`).
        augment: use the spec's training stages (default: split == "train") or its val transforms.
        epochs: run length, to place the training stages (close mosaic, stage 2).
        seed: base of every random draw.
        cache_dir: label cache folder (None = default, False = no cache).
        cache_images: keep decoded (load-resized) images in memory, read before workers fork.
        fraction: use only the first ``fraction`` of the images.
    """

    def __init__(self, data: str | Path | dict | DataConfig, split: str = "train", imgsz: int = 640,
                 pipeline: str | Path | dict | list | PipelineSpec | None = None, *, augment: bool | None = None,
                 epochs: int = 1, seed: int = 0, cache_dir: str | Path | None | bool = None,
                 cache_images: bool = False, fraction: float = 1.0, allow_empty: bool = False,
                 verbose: bool = True):
        self.config = data if isinstance(data, DataConfig) else load_data_config(data)
        self.split, self.imgsz, self.seed, self.epochs = split, int(imgsz), int(seed), int(epochs)
        self.names = self.config.names
        self.augment = (split == "train") if augment is None else bool(augment)
        self.labels = open_split(self.config, split, cache_dir, allow_empty=allow_empty, verbose=verbose)
        if fraction < 1.0:
            n = max(1, round(len(self.labels) * fraction))
            if verbose:
                log.info("%s: fraction=%g uses the first %d of %d images", split, fraction, n, len(self.labels))
            self.labels = _head(self.labels, n)
        self.spec = load_pipeline_spec(pipeline)
        self.load_size = self.imgsz if (self.augment and self.spec.load_size) else None
        self.schedule = PipelineSchedule.from_spec(self.spec, self.imgsz, self.epochs, self.augment).bind(self)
        # batch transforms (DEIM's MixUp) run in the loader's collate; validation never mixes
        self.batch_schedule = build_batch_schedule(self.spec, self.epochs, self.seed) if self.augment else None
        self.epoch, self.rank = 0, 0
        self._worker_epoch: int | None = None
        self._bad_files: set[str] = set()
        self._images: list[np.ndarray | None] | None = None
        if cache_images:
            self.cache_images()

    # ------------------------------------------------------------------ bookkeeping
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nc(self) -> int:
        return len(self.names)

    @property
    def im_files(self) -> list[str]:
        return self.labels.im_files

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indexing (the loader's sampler passes it explicitly)."""
        self.epoch = int(epoch)

    def pipeline(self, epoch: int | None = None):
        """The Compose active at ``epoch`` (default: the current one)."""
        return self.schedule.for_epoch(self.epoch if epoch is None else epoch)

    def ground_truth(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(cls [n], boxes [n, 4] xyxy in original image pixels) of image ``i`` (for evaluation)."""
        cls_, b = self.labels.labels(i)
        h, w = self.labels.shapes[i]
        xyxy = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1) * np.array([w, h, w, h])
        return cls_.copy(), xyxy.astype(np.float32)

    # ------------------------------------------------------------------ images
    def _load_image(self, i: int) -> tuple[np.ndarray | None, tuple[int, int]]:
        """(image at load size, original (h, w)); None when the file cannot be decoded now."""
        if self._images is not None and self._images[i] is not None:
            img = self._images[i]
            return img, tuple(int(v) for v in self.labels.shapes[i])
        h0, w0 = (int(v) for v in self.labels.shapes[i])
        reduce = 1
        if self.load_size is not None:  # largest power-of-two reduction that still leaves >= load_size
            while reduce < 8 and max(h0, w0) >= 2 * reduce * self.load_size:
                reduce *= 2
        img = _read_image(self.labels.im_files[i], reduce)
        if img is None:
            return None, (0, 0)
        if reduce == 1:
            h0, w0 = img.shape[:2]
        if self.load_size is not None:
            r = self.load_size / max(h0, w0)
            if r != 1:
                nw, nh = min(int(np.ceil(w0 * r)), self.load_size), min(int(np.ceil(h0 * r)), self.load_size)
                img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR if self.augment or r > 1
                                 else cv2.INTER_AREA)
        return img, (h0, w0)

    def cache_images(self) -> None:
        """Decode every image once (threaded) and keep it in memory."""
        with ThreadPoolExecutor(8) as pool:
            loaded = list(pool.map(lambda i: self._load_image(i)[0], range(len(self))))
        self._images = loaded
        mb = sum(im.nbytes for im in loaded if im is not None) / 2**20
        log.info("%s: %d images cached in memory (%.0f MB)", self.split, len(loaded), mb)

    def load_sample(self, i: int) -> dict:
        """The untransformed sample of image ``i``: BGR image (at load size), class ids and xyxy pixel boxes.

        An image that became unreadable after its labels were checked (deleted or overwritten since) is
        reported once. In training it is replaced by the next readable one, so an epoch never stops halfway;
        evaluation never substitutes an image: the sample comes back grey, without boxes and with
        ``unreadable=True``, and the validator leaves it out of the metrics, naming it."""
        n = len(self)
        for k in range(n if self.augment else 1):
            j = (i + k) % n
            img, (h0, w0) = self._load_image(j)
            if img is not None:
                break
            self._report_unreadable(self.labels.im_files[j])
        else:
            if not self.augment:
                return self._unreadable_sample(i)
            raise DataConfigError(f"{self.split}: no image of the dataset can be decoded any more")
        cls_, b = self.labels.labels(j)
        h, w = img.shape[:2]
        boxes = np.empty((len(b), 4), np.float32)
        boxes[:, 0] = (b[:, 0] - b[:, 2] / 2) * w
        boxes[:, 1] = (b[:, 1] - b[:, 3] / 2) * h
        boxes[:, 2] = (b[:, 0] + b[:, 2] / 2) * w
        boxes[:, 3] = (b[:, 1] + b[:, 3] / 2) * h
        return {"img": img, "cls": cls_.copy(), "bboxes": boxes, "im_file": self.labels.im_files[j],
                "ori_shape": (h0, w0), "ratio_pad": ((h / h0, w / w0), (0.0, 0.0)), "index": j}

    def _report_unreadable(self, f: str) -> None:
        if f not in self._bad_files:
            self._bad_files.add(f)
            instead = "using another image in its place" if self.augment else "left out of the evaluation"
            log.warning("%s: %s cannot be decoded any more (changed since its labels were checked); %s",
                        self.split, f, instead)

    def _unreadable_sample(self, i: int) -> dict:
        """A grey stand-in of image i's original size, marked unreadable (evaluation skips it)."""
        h0, w0 = (int(v) for v in self.labels.shapes[i])
        return {"img": np.full((h0, w0, 3), 114, np.uint8), "cls": np.zeros(0, np.int64),
                "bboxes": np.zeros((0, 4), np.float32), "im_file": self.labels.im_files[i], "ori_shape": (h0, w0),
                "ratio_pad": ((1.0, 1.0), (0.0, 0.0)), "index": i, "unreadable": True}

    # ------------------------------------------------------------------ the sample
    def _enter_epoch(self, epoch: int) -> None:
        """On the first sample of an epoch in this process: reseed global generators from (seed, epoch,
        rank, worker) for any third-party code that uses them."""
        if self._worker_epoch == epoch:
            return
        self._worker_epoch = epoch
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        if info is not None:
            s = np.random.SeedSequence([self.seed, epoch, self.rank, wid]).generate_state(2)
            random.seed(int(s[0]))
            np.random.seed(int(s[1]) & 0xFFFFFFFF)
            torch.manual_seed(int(s[0]) ^ int(s[1]))

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        if isinstance(item, tuple):
            epoch, i = int(item[0]), int(item[1])
        else:
            epoch, i = self.epoch, int(item)
        self._enter_epoch(epoch)
        pipe = self.schedule.for_epoch(epoch)
        pipe.reseed(np.random.default_rng([self.seed, epoch, i]))
        sample = pipe(self.load_sample(i))
        sample.pop("mosaic_border", None)
        sample.pop(SKIP_KEY, None)
        sample["epoch"] = epoch  # the loader's batch transforms follow the stage of the samples' epoch
        return sample

    def __repr__(self) -> str:
        return (f"DetectionDataset(split={self.split!r}, images={len(self)}, nc={self.nc}, imgsz={self.imgsz}, "
                f"augment={self.augment}, pipeline={self.spec.name!r}, {self.schedule!r})")


def _head(labels: LabelSet, n: int) -> LabelSet:
    return labels.select(list(range(n)))


def build_dataset(data: str | Path | dict | DataConfig, split: str = "train", imgsz: int = 640,
                  pipeline: str | Path | dict | list | PipelineSpec | None = None, **kwargs) -> DetectionDataset:
    """Shorthand for :class:`DetectionDataset` (training pipeline for ``train``, val transforms otherwise)."""
    return DetectionDataset(data, split, imgsz, pipeline, **kwargs)
