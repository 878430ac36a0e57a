"""The engine's only contact with the data layer: datasets and loaders from settings, and batches on a
device. Keeping it in one place lets the trainer, validator and predictor stay short."""

from __future__ import annotations

from pathlib import Path

import torch

from rtdet.data import DataConfig, DetectionDataLoader, DetectionDataset, build_dataloader, load_data_config

__all__ = ["load_data", "set_epoch", "to_device", "train_loader", "val_loader"]

_TENSOR_KEYS = ("img", "batch_idx", "cls", "bboxes")


def load_data(data: str | Path | dict | DataConfig) -> DataConfig:
    """A parsed, checked dataset YAML (names, splits)."""
    return data if isinstance(data, DataConfig) else load_data_config(data)


def _pipeline(args: dict, key: str):
    return args.get(key) or args.get("train_pipeline") or None


def train_loader(data: DataConfig, args: dict, batch_size: int, rank: int = 0, world: int = 1) -> DetectionDataLoader:
    """Shuffled, augmented loader of the train split; each DDP rank reads its own share."""
    dataset = DetectionDataset(data, "train", int(args["imgsz"]), _pipeline(args, "train_pipeline"), augment=True,
                               epochs=int(args.get("epochs") or 1), seed=int(args.get("seed") or 0),
                               cache_images=bool(args.get("cache")), fraction=float(args.get("fraction") or 1.0),
                               verbose=rank == 0 and bool(args.get("verbose", True)))
    return build_dataloader(dataset, batch_size, int(args.get("workers") or 0), shuffle=True,
                            seed=int(args.get("seed") or 0), rank=rank, world_size=world)


def val_loader(data: DataConfig, args: dict, batch_size: int, split: str = "val") -> DetectionDataLoader:
    """In-order loader of the val split through the pipeline's deterministic val transforms."""
    dataset = DetectionDataset(data, split, int(args["imgsz"]), _pipeline(args, "val_pipeline"), augment=False,
                               seed=int(args.get("seed") or 0), cache_images=bool(args.get("cache")),
                               verbose=bool(args.get("verbose", True)))
    return build_dataloader(dataset, batch_size, int(args.get("workers") or 0), shuffle=False,
                            seed=int(args.get("seed") or 0), persistent_workers=False)


def set_epoch(loader, epoch: int, epochs: int | None = None) -> None:
    """Reshuffle and switch the pipeline stage (close mosaic, stage 2) for ``epoch``."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch with its tensors on ``device`` (lists of files / shapes stay as they are)."""
    out = dict(batch)
    non_blocking = device.type == "cuda"
    for k in _TENSOR_KEYS:
        if k in out and isinstance(out[k], torch.Tensor):
            out[k] = out[k].to(device, non_blocking=non_blocking)
    return out
