"""Kept for code written against it: models are loaded by :mod:`rtdet.io.load` (one loader for model YAMLs,
rtdet checkpoints and foreign checkpoints). These wrappers return what they always returned."""

from __future__ import annotations

from pathlib import Path

import torch

from rtdet.io.load import INHERITED_KEYS, is_checkpoint, model_entry, transfer_weights
from rtdet.io.load import load_model as _load
from rtdet.nn.model import DetectionModel

__all__ = ["INHERITED_KEYS", "is_checkpoint", "load_model", "load_model_with_args", "load_weights_into",
           "model_entry"]


def load_model(spec: str | Path | DetectionModel, nc: int | None = None, names: list | dict | None = None,
               scale: str | None = None, prefer_ema: bool = True) -> DetectionModel:
    """``rtdet.io.load_model(...).model``."""
    return _load(spec, nc=nc, names=names, scale=scale, prefer_ema=prefer_ema).model


def load_model_with_args(spec: str | Path | DetectionModel, nc: int | None = None, names: list | dict | None = None,
                         scale: str | None = None, prefer_ema: bool = True) -> tuple[DetectionModel, dict]:
    """(model, the checkpoint's inherited training settings) of ``rtdet.io.load_model``."""
    loaded = _load(spec, nc=nc, names=names, scale=scale, prefer_ema=prefer_ema)
    return loaded.model, loaded.inherited


def load_weights_into(model: torch.nn.Module, state_dict: dict, source: str = "weights", verbose: bool = True) -> int:
    """Copy every tensor whose name and shape match; returns how many were copied."""
    return transfer_weights(model, state_dict, source, verbose)[0]
