"""Batch transforms: augmentations that need the whole batch (DEIM's MixUp of each image with its
neighbour), declared by a pipeline YAML under ``batch:`` and staged like its training transforms::

    batch:                       # from the first epoch (optional; default: none)
      - {name: BatchMixUp, p: 0.5}
    stages:
      - at: 29
        drop: [BatchMixUp]       # a stage's drop removes batch transforms too; `batch: [...]` replaces them

The loader's collate function applies the active ones (:class:`BatchSchedule`) to the batch it has just
stacked, in the worker process, before the trainer resizes the batch (multi-scale), as DEIM's collate
function does. A batch transform takes the batch dict of :func:`rtdet.data.loader.collate` (``img``
[B, 3, H, W] uint8 or float, ``batch_idx`` / ``cls`` / ``bboxes`` [N] / [N, 4] normalised cxcywh, per-image
lists) and a ``numpy.random.Generator`` seeded by (seed, epoch, the batch's sample indices), so a batch is
the same whichever worker makes it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from rtdet.data.transforms import PipelineConfigError, build_registered

__all__ = ["BATCH_TRANSFORMS", "BatchMixUp", "BatchSchedule", "BatchTransform", "build_batch_transform",
           "register_batch_transform"]

BATCH_TRANSFORMS: dict[str, type] = {}
_BATCH_STREAM = 0xBA7C  # keeps the batch draws apart from the per-sample stream of (seed, epoch, index)


def register_batch_transform(cls: type) -> type:
    """Class decorator: make a batch transform available to a pipeline's ``batch:`` list by its class name."""
    BATCH_TRANSFORMS[cls.__name__] = cls
    return cls


def build_batch_transform(spec: dict[str, Any]) -> BatchTransform:
    """Build ``{name: BatchMixUp, **kwargs}`` by registered name (no eval)."""
    return build_registered(spec, BATCH_TRANSFORMS, "batch transform",
                            "(per-sample transforms belong under train:)")


class BatchTransform(ABC):
    """Base class of the batch transforms."""

    @abstractmethod
    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        """Transform a collated batch (see the module docstring) and return it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


@register_batch_transform
class BatchMixUp(BatchTransform):
    """DEIM's batch MixUp (DEIM engine/data/dataloader.py, BatchImageCollateFunction.apply_mixup): with
    probability ``p`` per batch, beta ~ U(beta_range) (rounded to 6 decimals) and every image becomes
    beta * itself + (1 - beta) * the previous image of the batch (the batch rolled by one, the first image
    taking the last); each image keeps its own boxes and gains its neighbour's. Boxes are normalised to the
    batch canvas, which both images share, so they stay valid. A uint8 batch is blended in float and rounded
    back (at most 0.5 / 255 from DEIM's float blend). A batch of one image is left alone (DEIM would blend
    the image with itself and list each box twice). ``ratio_pad`` becomes None: a blend has no single map
    back to one original image."""

    def __init__(self, p: float = 0.5, beta_range: tuple[float, float] | list[float] = (0.45, 0.55)):
        if not 0 <= p <= 1 or not 0 <= beta_range[0] <= beta_range[1] <= 1:
            raise ValueError(f"need 0 <= p <= 1 and 0 <= beta_range[0] <= beta_range[1] <= 1, got {p}, {beta_range}")
        self.p, self.beta_range = float(p), (float(beta_range[0]), float(beta_range[1]))

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        img = batch["img"]
        n = img.shape[0]
        if n < 2 or self.p <= 0 or rng.random() >= self.p:
            return batch
        beta = round(float(rng.uniform(*self.beta_range)), 6)
        mixed = img.float() * beta + img.roll(1, 0).float() * (1.0 - beta)
        mixed = mixed.round().clamp_(0, 255).to(torch.uint8) if img.dtype == torch.uint8 else mixed.to(img.dtype)
        # each box once more, in the next image of the batch; a stable sort by image keeps own boxes first
        idx = batch["batch_idx"]
        all_idx = torch.cat([idx, (idx + 1) % n])
        order = torch.sort(all_idx, stable=True).indices
        out = dict(batch)
        out["img"] = mixed
        out["batch_idx"] = all_idx[order]
        out["cls"] = torch.cat([batch["cls"], batch["cls"]])[order]
        out["bboxes"] = torch.cat([batch["bboxes"], batch["bboxes"]])[order]
        out["ratio_pad"] = [None] * n
        return out


class BatchSchedule:
    """The batch transforms of each training stage: ``[(first epoch, [BatchTransform])]``, sorted, the first
    at epoch 0. Small and free of dataset references, so it travels cheaply to the loader's workers."""

    def __init__(self, stages: list[tuple[int, list[BatchTransform]]], seed: int = 0):
        if not stages or stages[0][0] != 0:
            raise PipelineConfigError("the first batch-transform stage must start at epoch 0")
        self.stages, self.seed = stages, int(seed)

    @property
    def empty(self) -> bool:
        """True when no stage has a batch transform (the loader then collates as before)."""
        return not any(ts for _, ts in self.stages)

    def for_epoch(self, epoch: int) -> list[BatchTransform]:
        starts = np.array([s for s, _ in self.stages])
        return self.stages[int(np.searchsorted(starts, epoch, side="right")) - 1][1]

    def __call__(self, batch: dict, samples: list[dict]) -> dict:
        """Apply the transforms of the samples' epoch (stamped by the dataset) to ``batch``."""
        epoch = samples[0].get("epoch") if samples else None
        if epoch is None:
            return batch
        transforms = self.for_epoch(int(epoch))
        if not transforms:
            return batch
        indices = [int(s.get("index", 0)) for s in samples]
        rng = np.random.default_rng([self.seed, int(epoch), _BATCH_STREAM, *indices])
        for t in transforms:
            batch = t(batch, rng)
        return batch

    def __repr__(self) -> str:
        return "BatchSchedule(" + ", ".join(f"epoch {s}+: {[type(t).__name__ for t in ts]}"
                                            for s, ts in self.stages) + ")"
