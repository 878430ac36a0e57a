"""Getting a DetectionModel from what a user names: a model YAML (built) or a checkpoint (reloaded).

    model = load_model("rtdetr-l.yaml", nc=3)          # a fresh model
    model = load_model("runs/train/exp/weights/best.pt")  # trained weights (EMA when present)
"""

from __future__ import annotations

from pathlib import Path

import torch

from rtdet.nn.model import DetectionModel, build_model
from rtdet.utils.checkpoint import CheckpointError, load_checkpoint
from rtdet.utils.logging import LOGGER

__all__ = ["INHERITED_KEYS", "is_checkpoint", "load_model", "load_model_with_args", "load_weights_into",
           "model_entry"]

CHECKPOINT_SUFFIXES = (".pt", ".pth")
# Training settings that val / predict inherit from a checkpoint unless the user sets them: the input size
# and the transforms the model was trained with decide how an image must be prepared for it.
INHERITED_KEYS = ("imgsz", "train_pipeline", "val_pipeline")


def is_checkpoint(spec: str | Path) -> bool:
    return str(spec).lower().endswith(CHECKPOINT_SUFFIXES)


def model_entry(ckpt: dict, source: str, prefer_ema: bool = True) -> dict:
    """The model dict inside a checkpoint: the EMA weights when present (what was validated), else 'model'."""
    entry = ckpt.get("ema") if prefer_ema else None
    entry = entry or ckpt.get("model")
    if not isinstance(entry, dict):
        raise CheckpointError(f"{source}: holds no 'model' entry; is it an rtdet checkpoint?")
    return entry


def load_model(spec: str | Path | DetectionModel, nc: int | None = None, names: list | dict | None = None,
               scale: str | None = None, prefer_ema: bool = True) -> DetectionModel:
    """Build a YAML or reload a checkpoint. For a checkpoint whose class count differs from ``nc`` the
    model is rebuilt with ``nc`` classes and every weight whose name and shape match is copied."""
    return load_model_with_args(spec, nc, names, scale, prefer_ema)[0]


def load_model_with_args(spec: str | Path | DetectionModel, nc: int | None = None, names: list | dict | None = None,
                         scale: str | None = None, prefer_ema: bool = True) -> tuple[DetectionModel, dict]:
    """:func:`load_model` and the :data:`INHERITED_KEYS` of the checkpoint's training settings ({} for a YAML)."""
    if isinstance(spec, DetectionModel):
        if nc is None or int(nc) == spec.nc:
            if names is not None:
                spec.names = _names(names)
            return spec, {}
        model = build_model(spec.yaml, nc=nc, names=names)  # a new class count: new head, same trunk
        load_weights_into(model, spec.state_dict(), source=f"{spec.name} (nc={spec.nc})")
        return model, {}
    if getattr(spec, "is_onnx", False):  # an already loaded ONNX Runtime model (Detector("x.onnx"))
        return _load_onnx(spec, nc, names)
    if spec is None or str(spec) == "":
        raise ValueError("no model given: pass model=<model YAML or checkpoint .pt>, e.g. model=rtdetr-l.yaml")
    if str(spec).lower().endswith(".onnx"):
        return _load_onnx(spec, nc, names)
    if not is_checkpoint(spec):
        return build_model(spec, nc=nc, scale=scale, names=names), {}
    ckpt = load_checkpoint(spec)
    train_args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    inherited = {k: train_args[k] for k in INHERITED_KEYS if train_args.get(k) is not None}
    entry = model_entry(ckpt, str(spec), prefer_ema)
    if nc is None or int(nc) == int(entry.get("nc", -1)):
        model = DetectionModel.from_checkpoint(entry, source=str(spec))
        if names is not None:
            model.names = _names(names)
        return model, inherited
    model = build_model(entry["yaml"], nc=nc, names=names)
    load_weights_into(model, entry["state_dict"], source=str(spec))
    return model, inherited


def _load_onnx(spec: str | Path, nc: int | None, names: list | dict | None):
    """An rtdet ONNX export as a runtime model (ONNX Runtime) and the settings it was exported with."""
    from rtdet.engine.onnx_backend import load_onnx_model
    from rtdet.engine.settings import SettingsError

    model = spec if getattr(spec, "is_onnx", False) else load_onnx_model(spec)
    if nc is not None and int(nc) != model.nc:
        raise SettingsError(f"{spec} predicts {model.nc} classes ({', '.join(list(model.names.values())[:5])}...) but "
                            f"{nc} were asked for; an export cannot change its class count, use a matching data=")
    if names is not None:
        model.names = _names(names)
    return model, model.inherited_settings()


def load_weights_into(model: torch.nn.Module, state_dict: dict, source: str = "weights", verbose: bool = True) -> int:
    """Copy every tensor whose name and shape match; returns how many were copied (transfer learning)."""
    own = model.state_dict()
    matched = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise CheckpointError(f"{source}: none of its {len(state_dict)} weights match this model's names and shapes")
    model.load_state_dict(matched, strict=False)
    if verbose:
        LOGGER.info(f"Transferred {len(matched)}/{len(own)} weights from {source}")
    return len(matched)


def _names(names: list | dict) -> dict[int, str]:
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    return dict(enumerate(map(str, names)))
