"""The set-up every inference verb shares: load a model, settle its settings, pick the device.

    loaded = load_inference_model("best.onnx")          # a checkpoint, YAML or ONNX export (rtdet.load_model)
    ready = prepare("best.pt", {"conf": 0.3}, verb="predict")
    ready.model, ready.args["conf"], ready.device        # DetectionModel (or ONNX Runtime model), 0.3, cpu

The steps, in the order every verb runs them, each able to stop the run with one clear error before any
run folder exists:

1. load the model (a YAML builds a fresh one, a checkpoint or ``.onnx`` its trained one);
2. the settings stored in the model file (its input size and transforms), checked like the command line's;
3. ``check``: what the verb itself demands of the model (the classes of ``data=``, a PyTorch model);
4. resolve the settings for the model's family and the verb: default.yaml < the family's loss defaults <
   its recipe < the file's settings < the user's, an empty value taking the verb's default
   (default.yaml's ``verbs``: ``conf`` is 0.001 for ``val``, 0.25 for ``predict``);
5. round ``imgsz`` up to the model's largest stride;
6. select the device, and refuse ``half=true`` off CUDA (:func:`device_for`).

What a verb does with the model next (fuse, fp16, the data loader, the run folder) stays in the verb.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from rtdet.deploy.runtime import OnnxDetectionModel, is_onnx, load_onnx_model
from rtdet.engine.onnx_checks import check_export_settings
from rtdet.engine.settings import check_half, check_imgsz, file_settings, resolve_settings
from rtdet.io.load import LoadedModel, load_model
from rtdet.nn.model import InferenceModel
from rtdet.utils.checkpoint import CheckpointError
from rtdet.utils.class_names import class_names
from rtdet.utils.torch_utils import select_device

__all__ = ["Prepared", "device_for", "load_inference_model", "prepare"]


def load_inference_model(source: Any, nc: int | None = None, names: list | dict | None = None,
                         **kwargs: Any) -> LoadedModel:
    """A model to run: an rtdet ONNX export (a path or one already loaded) as an ONNX Runtime model, its
    stored settings checked like the command line's; anything else through :func:`rtdet.io.load.load_model`
    (``kwargs``: its options, e.g. ``scale``, ``prefer_ema``)."""
    if not (isinstance(source, OnnxDetectionModel) or is_onnx(source)):
        return load_model(source, nc=nc, names=names, **kwargs)
    if not isinstance(source, OnnxDetectionModel) and not Path(source).is_file():
        raise CheckpointError(f"{source}: ONNX file not found")
    model = source if isinstance(source, OnnxDetectionModel) else load_onnx_model(source)
    check_export_settings(model.meta, model.path)
    if nc is not None and int(nc) != model.nc:
        raise CheckpointError(f"{model.path} predicts {model.nc} classes ({', '.join(list(model.names.values())[:5])}"
                              f"...) but {nc} were asked for; an export cannot change its class count: use the data "
                              f"it was trained on, or export a checkpoint trained for {nc} classes")
    if names is not None:
        model.names = class_names(names)
    return LoadedModel(model, str(model.path), "onnx", dict(model.names), args=model.inherited_settings(),
                       path=model.path, description="rtdet ONNX export (ONNX Runtime)")


class Prepared(NamedTuple):
    """A model ready for a verb: the model (``loaded.model``), what loading it reported, the resolved
    settings (every key of default.yaml and the family's loss keys) and the device to run on."""

    model: InferenceModel  # DetectionModel, or the ONNX Runtime model that stands in for one
    loaded: LoadedModel
    args: dict
    device: torch.device


def device_for(args: dict) -> torch.device:
    """The device of ``args["device"]``; ``half=true`` off CUDA is refused here (a bad setting)."""
    device = select_device(args["device"])
    check_half(args, device)
    return device


def prepare(spec: Any, user: dict, verb: str, *, nc: int | None = None, names: list[str] | None = None,
            scale: str | None = None, check: Callable[[Any], None] | None = None) -> Prepared:
    """Load ``spec`` (a model YAML, checkpoint, ``.onnx`` or a DetectionModel) and settle the settings
    ``verb`` runs with (the steps of the module docstring). ``user`` holds the settings the user gave,
    already checked (they override the file's); ``nc`` / ``names`` / ``scale`` shape a model built from a
    YAML; ``check(model)`` raises the verb's own error for a model it cannot use."""
    loaded = load_inference_model(spec, nc=nc, names=names, scale=scale)
    model, inherited = loaded.model, file_settings(loaded, user)  # checked like the command line's
    if check is not None:
        check(model)
    args = resolve_settings({**inherited, **user}, family=model.head.family, verb=verb)
    check_imgsz(args, model)
    return Prepared(model, loaded, args, device_for(args))

