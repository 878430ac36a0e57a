"""One way to get a model: from a model YAML, an rtdet checkpoint or a foreign checkpoint.

    loaded = load_model("rtdetr-l.yaml", nc=3)           # built from the YAML
    loaded = load_model("runs/train/train/weights/best.pt")  # an rtdet checkpoint (EMA weights when present)
    loaded = load_model("rtdetr-l.pt")                   # an Ultralytics checkpoint, converted in memory
    loaded = load_model("rtdetr-l.pt", nc=3)             # ... with a new 3-class head, backbone and neck kept
    loaded.model, loaded.names, loaded.args, loaded.ema, loaded.report

Every entry point (``build_model``, ``Detector``, the CLI, trainer, validator and
predictor) goes through :func:`load_model`. What a source is follows from its name and content:

* a ``DetectionModel`` is used as is; a dict is a model YAML dict, or an rtdet checkpoint dict;
* ``*.yaml`` / ``*.yml``, and names that are no file (``rtdetr-l.yaml``, ``yolov9c``), are model YAMLs;
* ``*.onnx`` is refused here: an export is an ONNX Runtime model, loaded by the engine
  (:func:`rtdet.engine.setup.load_inference_model`, which is ``rtdet.load_model``);
* any other file is a checkpoint: an rtdet one loads with ``torch.load(weights_only=True)``; anything else
  is read by the restricted reader (:mod:`rtdet.io.safe_pickle`) and converted by the registered format
  that recognises it (:mod:`rtdet.io.formats`), with a one-line notice.

``convert_file`` writes the result of a conversion as a plain rtdet checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rtdet.io.formats import ConvertContext, find_format
from rtdet.io.rows import load_row_weights
from rtdet.io.rules import ConversionReport, WeightLoadError
from rtdet.io.safe_pickle import read_torch_file
from rtdet.nn.model import DetectionModel
from rtdet.utils.checkpoint import CheckpointError, is_rtdet_checkpoint, save_checkpoint
from rtdet.utils.class_names import class_names
from rtdet.utils.logging import LOGGER

__all__ = ["LoadedModel", "build_model", "load_model", "convert_file", "transfer_weights", "is_checkpoint",
           "is_rtdet_checkpoint",
           "model_entry", "INHERITED_KEYS", "YAML_SUFFIXES"]

YAML_SUFFIXES = (".yaml", ".yml")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Training settings that val / predict inherit from a checkpoint unless the user sets them: the input size
# and the transforms the model was trained with decide how an image must be prepared for it.
INHERITED_KEYS = ("imgsz", "train_pipeline", "val_pipeline")


@dataclass
class LoadedModel:
    """A model and what its source said about it."""

    model: DetectionModel
    source: str  # what was asked for (a path, a YAML name, "<dict>", "<model>")
    format: str  # "yaml", "dict", "module", "rtdet", or a foreign format name ("ultralytics", "convnextv2", ...)
    names: dict[int, str]
    args: dict = field(default_factory=dict)  # the source's training settings (plain types)
    ema: bool = False  # the weights are an exponential moving average
    path: Path | None = None  # the file read, for files
    report: ConversionReport | None = None  # how a foreign file's tensors were mapped
    description: str = ""  # "Ultralytics RT-DETR (rtdetr-l)", "rtdet checkpoint", "model YAML"
    reinitialised: list[str] = field(default_factory=list)  # head tensors left new by a change of nc

    @property
    def is_checkpoint(self) -> bool:
        """The weights came from a file (rtdet or foreign), not from a fresh build."""
        return self.path is not None

    @property
    def foreign(self) -> bool:
        return self.is_checkpoint and self.format not in ("rtdet", "onnx")

    @property
    def inherited(self) -> dict:
        """The :data:`INHERITED_KEYS` of the source's training settings ({} for a YAML). A foreign file's
        settings name other programs' transforms: only its integer input size carries over."""
        if self.foreign:
            return {"imgsz": self.args["imgsz"]} if isinstance(self.args.get("imgsz"), int) else {}
        return {k: self.args[k] for k in INHERITED_KEYS if self.args.get(k) is not None}


# ------------------------------------------------------------------------------------------ what a source is
def is_checkpoint(spec: Any) -> bool:
    """A name that points at a checkpoint file rather than a model YAML (decided by the name alone)."""
    if not isinstance(spec, str | Path) or not str(spec):
        return False
    p = Path(spec)
    if p.suffix.lower() in YAML_SUFFIXES or p.suffix.lower() == ".onnx":
        return False
    return p.suffix.lower() in CHECKPOINT_SUFFIXES or p.is_file()


def model_entry(ckpt: dict, source: str, prefer_ema: bool = True) -> dict:
    """The model dict inside an rtdet checkpoint: the EMA weights when present (what was validated), else 'model'."""
    entry = ckpt.get("ema") if prefer_ema else None
    entry = entry or ckpt.get("model")
    if not isinstance(entry, dict):
        raise CheckpointError(f"{source}: holds no 'model' entry; is it an rtdet checkpoint?")
    return entry


# ------------------------------------------------------------------------------------------ the loader
def load_model(source: str | Path | dict | DetectionModel, nc: int | None = None, names: list | dict | None = None,
               scale: str | None = None, *, prefer_ema: bool = True, format: str = "auto", strict: bool = True,
               verbose: bool = False, notice: bool = True, name: str | None = None) -> LoadedModel:
    """A model from any source (see the module docstring).

    Args:
        source: model YAML (path, built-in name, dict), rtdet or foreign checkpoint, or a DetectionModel.
        nc: number of classes. For a YAML it sizes the head; for a checkpoint with another class count the
            model is rebuilt with ``nc`` classes and every tensor whose name and shape still match is kept
            (backbone and neck); the re-initialised head tensors are listed (``reinitialised``) and logged.
        names: class names to attach (e.g. the dataset's).
        scale: scale letter of a multi-scale YAML.
        prefer_ema: take a checkpoint's EMA weights when it has both.
        format: "auto", "rtdet", or a foreign format name (``rtdet.io.formats.formats()``).
        strict: a foreign checkpoint whose tensors do not all fit is an error (else: load what fits).
        verbose: print the per-row table while building from a YAML.
        notice: log a one-line notice when a foreign checkpoint is converted in memory.
        name: what messages call a dict source (e.g. the file it was read from).
    """
    if isinstance(source, str | Path) and str(source).lower().endswith(".onnx"):
        raise CheckpointError(f"{source}: an ONNX export runs in ONNX Runtime, not as a PyTorch model; load it with "
                              f"rtdet.load_model / rtdet.Detector (or give it to rtdet predict / val / benchmark)")
    if isinstance(source, DetectionModel):
        loaded = LoadedModel(source, "<model>", "module", dict(source.names), description="model object")
    elif isinstance(source, dict):
        loaded = _from_dict(source, nc, scale, names, prefer_ema, verbose, name)
    elif isinstance(source, bool) or not isinstance(source, str | Path) or str(source) == "":
        raise TypeError(f"no model given: a model is a model YAML (a path or a built-in name such as "
                        f"'rtdetr-l.yaml'), a checkpoint, a dict of a YAML's contents or a DetectionModel; got "
                        f"{type(source).__name__} {source!r}")
    else:
        path = Path(source)
        if path.suffix.lower() in YAML_SUFFIXES or not path.exists():
            if path.suffix.lower() in CHECKPOINT_SUFFIXES:
                raise CheckpointError(f"{source}: checkpoint file not found")
            model = DetectionModel(source, nc=nc, scale=scale, names=names, verbose=verbose)
            load_row_weights(model)
            loaded = LoadedModel(model, str(source), "yaml", dict(model.names), description="model YAML")
        else:
            loaded = _from_file(path, prefer_ema, format, strict, notice)
    return _adapt(loaded, nc, names)


def build_model(cfg: str | Path | dict, nc: int | None = None, scale: str | None = None,
                names: list[str] | dict | None = None, verbose: bool = False) -> DetectionModel:
    """A model from a YAML path, a built-in name (``rtdetr-l.yaml``) or a dict -- or from any checkpoint the
    loader reads (``nc`` then re-sizes the head, keeping backbone and neck): ``load_model(...).model``."""
    return load_model(cfg, nc=nc, names=names, scale=scale, verbose=verbose).model


def _from_dict(d: dict, nc, scale, names, prefer_ema: bool, verbose: bool, name: str | None) -> LoadedModel:
    if is_rtdet_checkpoint(d):
        return _from_rtdet(d, name or "<checkpoint dict>", prefer_ema)
    if "yaml" in d and "state_dict" in d:  # a bare model entry (DetectionModel.to_checkpoint())
        return _from_rtdet({"model": d}, name or "<model dict>", prefer_ema)
    model = DetectionModel(d, nc=nc, scale=scale, names=names, verbose=verbose)
    load_row_weights(model)
    return LoadedModel(model, name or "<dict>", "dict", dict(model.names), description="model YAML dict")


def _from_rtdet(ckpt: dict, source: str, prefer_ema: bool, path: Path | None = None) -> LoadedModel:
    entry = model_entry(ckpt, source, prefer_ema)
    model = DetectionModel.from_checkpoint(entry, source=source)
    args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    return LoadedModel(model, source, "rtdet", dict(model.names), args=dict(args), ema=entry is ckpt.get("ema"),
                       path=path, description="rtdet checkpoint")


def _from_file(path: Path, prefer_ema: bool, format: str, strict: bool, notice: bool) -> LoadedModel:
    obj, _ = read_torch_file(path)
    if format in ("auto", "rtdet") and is_rtdet_checkpoint(obj):
        return _from_rtdet(obj, str(path), prefer_ema, path)
    if format == "rtdet":
        raise CheckpointError(f"{path}: not an rtdet checkpoint (format=rtdet); try format=auto")
    fmt = find_format(obj, str(path), format)
    converted = fmt.convert(obj, ConvertContext(str(path), prefer_ema=prefer_ema, strict=strict))
    if notice:
        LOGGER.info(f"{path.name}: {converted.description}, {converted.weights} weights, converted in memory "
                    f"({converted.report.summary()}); `rtdet convert source={path}` saves it as an rtdet checkpoint")
    model = converted.model
    return LoadedModel(model, str(path), fmt.name, dict(model.names), args=dict(converted.args), ema=converted.ema,
                       path=path, report=converted.report, description=converted.description)


def _adapt(loaded: LoadedModel, nc: int | None, names: list | dict | None) -> LoadedModel:
    """A loaded model with the class count and names asked for (new head, same trunk, when nc differs)."""
    model = loaded.model
    has_head = model.head_index is not None
    if has_head and nc is not None and int(nc) != model.nc and loaded.format not in ("yaml", "dict"):
        # a checkpoint (or a model object) for another class count: a new head on the same trunk
        new = DetectionModel(model.yaml, nc=int(nc), names=names)
        kept, reinit = transfer_weights(new, model.state_dict(), verbose=False)
        head = f"model.{new.head_index}."
        outside = [k for k in reinit if not k.startswith(head)]
        which = "head tensors" if not outside else f"tensors ({len(outside)} outside the head, whose YAML rows use nc)"
        LOGGER.info(f"{Path(loaded.source).name}: {model.nc} -> {new.nc} classes: kept {kept}/{len(new.state_dict())} "
                    f"tensors; re-initialised {len(reinit)} {which} that depend on the class count: {_listing(reinit)}")
        loaded.model, loaded.reinitialised = new, reinit
        model = new
    if names is not None:
        model.names = class_names(names)
    loaded.names = dict(model.names)
    return loaded


def transfer_weights(model: torch.nn.Module, state_dict: dict, source: str = "weights",
                     verbose: bool = True) -> tuple[int, list[str]]:
    """Copy every tensor whose name and shape match (transfer learning). Returns (how many were copied, the
    model keys left at their initial values). No match at all is an error."""
    own = model.state_dict()
    matched = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise WeightLoadError(f"{source}: none of its {len(state_dict)} tensors match this model's names and shapes")
    model.load_state_dict(matched, strict=False)
    left = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    if verbose:
        LOGGER.info(f"Transferred {len(matched)}/{len(own)} tensors from {source}"
                    + (f"; kept the model's own values for {_listing(left)}" if left else ""))
    return len(matched), left


def _listing(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


# ------------------------------------------------------------------------------------------ convert
def default_output(source: Path) -> Path:
    """Where `rtdet convert` writes by default: ``<stem>-rtdet.pt`` next to the source."""
    return source.with_name(f"{source.stem}-rtdet.pt")


def convert_file(source: str | Path, to: str | Path | None = None, format: str = "auto",
                 prefer_ema: bool = True) -> tuple[Path, LoadedModel]:
    """Convert a foreign checkpoint into a plain rtdet checkpoint (tensors and plain types; loads with
    ``torch.load(weights_only=True)``), written atomically. Returns (written path, the loaded model)."""
    source = Path(source)
    loaded = load_model(source, prefer_ema=prefer_ema, format=format, notice=False)
    if not loaded.foreign:
        raise CheckpointError(f"{source}: already an rtdet checkpoint (or not a checkpoint); nothing to convert")
    out = Path(to) if to else default_output(source)
    if out.resolve() == source.resolve():
        raise CheckpointError(f"{out}: would overwrite the source; choose another to=")
    ckpt = {
        "model": loaded.model.to_checkpoint(),
        "args": {k: loaded.args[k] for k in ("imgsz",) if isinstance(loaded.args.get(k), int)},
        "converted_from": {
            "file": source.name,
            "format": loaded.format,
            "description": loaded.description,
            "weights": "ema" if loaded.ema else "model",
            "report": loaded.report.summary() if loaded.report else "",
            "train_args": loaded.args,
        },
    }
    return save_checkpoint(ckpt, out), loaded
