"""What a foreign checkpoint's records hold: the module tree's tensors and the plain metadata.

    tree = read_checkpoint("best.pt")["ema"]          # a ForeignObject (an nn.Module's pickled state)
    sd = module_state_dict(tree)                      # {"model.0.stem1.conv.weight": tensor, ...}
    sd, n_cast = to_float32(sd)                       # Ultralytics stores fp16
    names = plain(attribute(tree, "names"))           # {0: "person", ...}

``module_state_dict`` walks ``_parameters``, ``_buffers`` (minus non-persistent ones) and ``_modules``
exactly as ``nn.Module.state_dict`` does, so the keys and their order are those the source program saw.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtdet.io.safe_pickle import ForeignObject, _NumpyArray
from rtdet.utils.checkpoint import CheckpointError
from rtdet.utils.class_names import class_names

__all__ = ["is_module", "module_state_dict", "to_float32", "attribute", "plain", "class_name", "model_record",
           "stored_yaml", "stored_names"]


def class_name(obj: Any) -> str:
    """``ultralytics.nn.tasks.RTDETRDetectionModel`` for a record, the Python type name otherwise."""
    return obj.cls_name if isinstance(obj, ForeignObject) else type(obj).__name__


def is_module(obj: Any) -> bool:
    """A record of a pickled ``nn.Module`` (its state has ``_parameters`` and ``_modules``)."""
    if not isinstance(obj, ForeignObject):
        return False
    attrs = obj.attrs
    return isinstance(attrs.get("_parameters"), dict) and isinstance(attrs.get("_modules"), dict)


def attribute(obj: Any, name: str, default: Any = None) -> Any:
    """An instance attribute of a record (``model.yaml``, ``model.names``); ``default`` when absent."""
    return obj.attrs.get(name, default) if isinstance(obj, ForeignObject) else default


MAX_DEPTH = 64  # nested modules; a real network is a dozen deep (pickles may also hold cycles)


def module_state_dict(obj: ForeignObject, prefix: str = "", where: str = "checkpoint",
                      _depth: int = 0) -> dict[str, torch.Tensor]:
    """The ``state_dict()`` the pickled module had: parameters, then persistent buffers, then children."""
    if _depth > MAX_DEPTH:
        raise CheckpointError(f"{where}: modules nested more than {MAX_DEPTH} deep at {prefix[:80]}...; "
                              f"not a network (a cycle?)")
    if not is_module(obj):
        raise CheckpointError(f"{where}: {prefix or 'the model'} is a {class_name(obj)}, not a pickled nn.Module")
    attrs = obj.attrs
    out: dict[str, torch.Tensor] = {}
    for name, value in attrs["_parameters"].items():
        if value is not None:
            out[prefix + name] = _tensor(value, prefix + name, where)
    skip = attrs.get("_non_persistent_buffers_set") or set()
    for name, value in (attrs.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = _tensor(value, prefix + name, where)
    for name, child in attrs["_modules"].items():
        if child is not None:
            out.update(module_state_dict(child, f"{prefix}{name}.", where, _depth + 1))
    return out


def _tensor(value: Any, key: str, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{where}: {key} is a {class_name(value)}, expected a tensor")
    return value


def to_float32(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """fp16 / bf16 tensors as float32 (rtdet computes in float32); integer buffers are kept. Returns the
    new dict and how many tensors were cast."""
    out, n = {}, 0
    for k, v in sd.items():
        if v.dtype in (torch.float16, torch.bfloat16):
            out[k], n = v.float(), n + 1
        else:
            out[k] = v
    return out, n


def plain(value: Any, depth: int = 0) -> Any:
    """Metadata as plain Python (what an rtdet checkpoint may hold): dicts, lists, str, numbers, None.

    Namespace-like records become dicts of their attributes, numpy arrays and small tensors lists; any
    other object is described by its class name."""
    if depth > 20:
        return "<too deep>"
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {_plain_key(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((plain(v, depth + 1) for v in value), key=str)
    if isinstance(value, _NumpyArray):
        return value.array.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 64 else f"<tensor {tuple(value.shape)}>"
    if isinstance(value, ForeignObject):
        if is_module(value):
            return f"<{value.cls_name}>"
        attrs = value.attrs
        if attrs or value.mapping:
            return plain({**{k: v for k, v in attrs.items() if not str(k).startswith("_")}, **value.mapping},
                         depth + 1)
        return f"<{value.cls_name}>"
    return f"<{type(value).__name__}>"


def _plain_key(key: Any) -> Any:
    return key if isinstance(key, str | int | float | bool) or key is None else str(key)


# ------------------------------------------------------------------------------ YOLO-lineage model records
# Ultralytics and the official YOLOv9 repository (both descended from YOLOv5) save a dict whose 'model' and
# 'ema' entries are pickled DetectionModels carrying their model YAML dict (``.yaml``) and class names.
def model_record(obj: Any, prefer_ema: bool = True) -> tuple[ForeignObject | None, str]:
    """(the pickled model a checkpoint dict holds, the entry it came from): 'ema' before 'model' when
    ``prefer_ema`` (the weights that were validated), else the other way round; (None, "") when neither
    holds a pickled module."""
    if not isinstance(obj, dict):
        return None, ""
    for key in (("ema", "model") if prefer_ema else ("model", "ema")):
        value = obj.get(key)
        if is_module(value):
            return value, key
    return None, ""


def stored_yaml(record: ForeignObject, source: str) -> dict:
    """The model YAML dict a pickled model carries, as plain data, named after the YAML file it was built
    from (``yaml_file``, an attribute of the model or a key of the dict), else after ``source``."""
    d = copy.deepcopy(plain(attribute(record, "yaml")))
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: the model stored in the checkpoint carries no model YAML dict")
    rows = list(d.get("backbone") or []) + list(d.get("head") or [])
    if not rows:
        raise CheckpointError(f"{source}: the model YAML stored in the checkpoint has no rows")
    built_from = d.get("yaml_file") or attribute(record, "yaml_file")
    d["name"] = Path(str(built_from or source)).stem or "model"
    d["yaml_file"] = f"{source} (model YAML stored in the checkpoint)"
    return d


def stored_names(record: ForeignObject) -> dict[int, str] | None:
    """The class names a pickled model carries (a dict or a list), None when it has none."""
    names = plain(attribute(record, "names"))
    return class_names(names) if isinstance(names, dict | list) else None
