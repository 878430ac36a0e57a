"""Batches for every family: :func:`collate` and :func:`build_dataloader`.

A batch is a dict::

    img        float32 [B, 3, H, W] RGB in [0, 1]
    batch_idx  int64 [N]     image index of each box
    cls        int64 [N]
    bboxes     float32 [N, 4] cx, cy, w, h normalised to the input (H, W)
    im_file    list[str]
    ori_shape  list[(h0, w0)]
    ratio_pad  list[((ry, rx), (pad_x, pad_y)) | None]   x_in = x0 * rx + pad_x (None after flip/affine/mosaic/mixup)
    unreadable list[bool]    only when an evaluation image could not be decoded (a grey stand-in, left out of mAP)

The sampler yields ``(epoch, index)`` pairs, so worker processes (persistent or not) always know the
epoch: ``loader.set_epoch(e)`` switches the pipeline stage and reshuffles, with no worker restart. A
pipeline's batch transforms (``batch:``, :mod:`rtdet.data.batching`) run in the collate function, on the
stacked batch of the samples' epoch (:class:`BatchCollate`).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from functools import partial

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from rtdet.data.batching import BatchSchedule

__all__ = ["BatchCollate", "DetectionDataLoader", "EpochSampler", "build_dataloader", "collate", "unletterbox"]

PAD_VALUE = 114


def collate(samples: list[dict], normalize: bool = True) -> dict:
    """Stack transformed samples into a batch (BGR -> RGB, HWC -> CHW, /255, boxes to normalised cxcywh).
    Images of different sizes are padded at the bottom-right to the largest (grey 114), which leaves every
    box and ratio_pad valid. ``normalize=False`` keeps ``img`` uint8 (what workers send: 4x less data to
    move between processes; :class:`DetectionDataLoader` converts it in the main process)."""
    B = len(samples)
    H = max(s["img"].shape[0] for s in samples)
    W = max(s["img"].shape[1] for s in samples)
    same = all(s["img"].shape[:2] == (H, W) for s in samples)
    imgs = np.empty((B, 3, H, W), np.uint8) if same else np.full((B, 3, H, W), PAD_VALUE, np.uint8)
    for i, s in enumerate(samples):
        h, w = s["img"].shape[:2]
        b, g, r = cv2.split(s["img"])  # channel planes: far faster than a strided HWC -> CHW copy
        imgs[i, 0, :h, :w], imgs[i, 1, :h, :w], imgs[i, 2, :h, :w] = r, g, b
    counts = [len(s["cls"]) for s in samples]
    boxes = np.concatenate([s["bboxes"] for s in samples]).reshape(-1, 4).astype(np.float32)
    xywh = np.empty_like(boxes)
    xywh[:, 0] = (boxes[:, 0] + boxes[:, 2]) / (2 * W)
    xywh[:, 1] = (boxes[:, 1] + boxes[:, 3]) / (2 * H)
    xywh[:, 2] = (boxes[:, 2] - boxes[:, 0]) / W
    xywh[:, 3] = (boxes[:, 3] - boxes[:, 1]) / H
    batch = {
        "img": torch.from_numpy(_to_unit_float(imgs) if normalize else imgs),
        "batch_idx": torch.repeat_interleave(torch.arange(B), torch.tensor(counts, dtype=torch.int64)),
        "cls": torch.from_numpy(np.concatenate([s["cls"] for s in samples]).astype(np.int64)),
        "bboxes": torch.from_numpy(xywh),
        "im_file": [s["im_file"] for s in samples],
        "ori_shape": [tuple(s["ori_shape"]) for s in samples],
        "ratio_pad": [s.get("ratio_pad") for s in samples],
    }
    if any(s.get("unreadable") for s in samples):
        batch["unreadable"] = [bool(s.get("unreadable", False)) for s in samples]
    return batch


class BatchCollate:
    """:func:`collate`, then the batch transforms a pipeline declares (``batch:``, e.g. DEIM's MixUp) for the
    samples' epoch. Picklable and free of the dataset, so workers receive only the small schedule."""

    def __init__(self, schedule: BatchSchedule, normalize: bool = True):
        self.schedule, self.normalize = schedule, normalize

    def __call__(self, samples: list[dict]) -> dict:
        return self.schedule(collate(samples, self.normalize), samples)


def _to_unit_float(imgs: np.ndarray) -> np.ndarray:
    return np.multiply(imgs, np.float32(1 / 255), dtype=np.float32)  # one pass, no uint8 -> float copy first


def unletterbox(boxes: torch.Tensor | np.ndarray, ratio_pad) -> torch.Tensor | np.ndarray:
    """Map xyxy boxes in network-input pixels back to original image pixels: x0 = (x - pad_x) / rx."""
    (ry, rx), (px, py) = ratio_pad
    if isinstance(boxes, torch.Tensor):
        scale = boxes.new_tensor([rx, ry, rx, ry])
        shift = boxes.new_tensor([px, py, px, py])
    else:
        scale = np.array([rx, ry, rx, ry], dtype=boxes.dtype)
        shift = np.array([px, py, px, py], dtype=boxes.dtype)
    return (boxes - shift) / scale


class EpochSampler(Sampler):
    """Yields ``(epoch, index)``: shuffled by (seed, epoch) or in order; with ``world_size > 1`` a
    :class:`DistributedSampler` gives this rank its share (every rank the same count)."""

    def __init__(self, dataset, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False):
        self.n, self.shuffle, self.seed, self.epoch = len(dataset), shuffle, int(seed), 0
        self.dist = (DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                        drop_last=drop_last) if world_size > 1 else None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.dist is not None:
            self.dist.set_epoch(self.epoch)

    def _indices(self) -> list[int]:
        if self.dist is not None:
            return list(self.dist)
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        e = self.epoch
        return iter([(e, i) for i in self._indices()])

    def __len__(self) -> int:
        return len(self.dist) if self.dist is not None else self.n


class DetectionDataLoader(DataLoader):
    """A DataLoader whose ``set_epoch(epoch)`` reshuffles and switches the dataset's pipeline stage. Batches
    travel from the workers as uint8 and become float32 in [0, 1] here."""

    def __iter__(self):
        for batch in super().__iter__():
            if batch["img"].dtype == torch.uint8:
                batch["img"] = torch.from_numpy(_to_unit_float(batch["img"].numpy()))
            yield batch

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)


def _worker_init(worker_id: int) -> None:
    # one OpenCV / torch thread per worker: the workers are the parallelism
    cv2.setNumThreads(0)
    torch.set_num_threads(1)
    # Ctrl-C and SIGTERM sent to the process group are the main process's to handle (it stops the workers
    # after saving); a worker that died of them, or ran the trainer's handler, would lose the run.
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


def build_dataloader(dataset, batch_size: int = 16, workers: int = 0, shuffle: bool = True, seed: int = 0,
                     rank: int = 0, world_size: int = 1, drop_last: bool = False, pin_memory: bool | None = None,
                     persistent_workers: bool = True, prefetch_factor: int = 2) -> DetectionDataLoader:
    """A loader over a :class:`~rtdet.data.dataset.DetectionDataset` yielding the batch dict above.

    ``batch_size`` is per process. With ``world_size > 1`` each rank reads its own share (DistributedSampler).
    Worker global seeds derive from (seed, epoch, rank, worker id); augmentation draws from (seed, epoch,
    index). Call ``loader.set_epoch(epoch)`` before each epoch."""
    cpus = os.cpu_count() or 1
    if int(workers) > cpus:
        logging.getLogger("rtdet.data").info("workers=%d: this machine has %d CPUs; using %d loader workers",
                                             int(workers), cpus, cpus)
    workers = max(0, min(int(workers), cpus))
    if hasattr(dataset, "rank"):
        dataset.rank = rank
    sampler = EpochSampler(dataset, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                           drop_last=drop_last)
    extra = {"persistent_workers": persistent_workers, "prefetch_factor": prefetch_factor} if workers else {}
    batch_schedule = getattr(dataset, "batch_schedule", None)
    if batch_schedule is not None and not batch_schedule.empty:
        collate_fn = BatchCollate(batch_schedule, normalize=False)
    else:
        collate_fn = partial(collate, normalize=False)
    return DetectionDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )

