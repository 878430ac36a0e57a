"""Ultralytics checkpoints (``rtdetr-l.pt``, the ``best.pt`` / ``last.pt`` of ``yolo train``) -> rtdet.

File layout (ultralytics ``engine/trainer.py`` ``save_model`` and ``utils/torch_utils.py``
``strip_optimizer``): a dict

    {"model": <RTDETRDetectionModel> or None, "ema": <RTDETRDetectionModel> or None, "train_args": {...},
     "epoch": int, "best_fitness": float, "optimizer": ..., "updates": int, "version": "8.x", "date": ..., ...}

A training checkpoint holds the EMA under "ema" (recent versions leave "model" None); a finished one
(strip_optimizer) copies the EMA into "model" and clears "ema". The model object, read here as a
record, carries ``.yaml`` (the model dict it was built from), ``.names``, ``.args`` and ``.model``, an
``nn.Sequential`` with one module per YAML row (tensor keys ``model.<row>.<...>``), in fp16.

rtdet builds the model from that YAML and loads the tensors by name. Which key table applies is chosen
by the head module of the YAML's last row (:data:`HEAD_TABLES`); RT-DETR is the first. The community
variants (DySample upsamplers, ConvNeXt V2 backbones -- published Ultralytics forks keep the package
name and the checkpoint layout) use the same table.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from rtdet.io.foreign import attribute, class_name, is_module, module_state_dict, plain, to_float32
from rtdet.io.formats import ConvertContext, Converted, ForeignFormat, register_format
from rtdet.io.rules import KeyTable, drop, load_into, rename
from rtdet.io.safe_pickle import ForeignObject
from rtdet.utils.checkpoint import CheckpointError

__all__ = ["RTDETR_KEYS", "HEAD_TABLES", "register_head", "is_ultralytics_checkpoint", "convert_ultralytics"]

RTDETR_KEYS = KeyTable("Ultralytics RT-DETR", [
    drop(r"^model\.0\.(norm|head)\.",
         "the ImageNet classifier (final LayerNorm + Linear) the community ConvNeXt V2 backbone module carries; "
         "a detector never runs it"),
    rename(r"^model\.(\d+)\.", r"model.\1.",
           "one module per YAML row, keyed by row number as in Ultralytics; rtdet's modules keep Ultralytics' "
           "attribute names (HGStem.stem1, HGBlock.m/sc/ec, RepC3.cv1-3, AIFI.ma/fc1/fc2, RTDETRDecoder.input_proj, "
           "decoder.layers.i.cross_attn, dec_bbox_head ...; DySample.offset/init_pos; ConvNeXt V2 downsample_layers, "
           "stages)"),
])

# YAML name of the head module (last row) -> the key table for that family, and the family's name.
HEAD_TABLES: dict[str, KeyTable] = {}
_FAMILY: dict[str, str] = {}


def register_head(head: str, table: KeyTable, family: str) -> None:
    """Convert Ultralytics models whose last row is ``head`` with ``table`` (the YOLOv9 port's Detect head
    joins this way: a module with its key table and ``register_head("Detect", YOLO_KEYS, "YOLO")``, listed
    in ``rtdet.io.formats.FORMAT_MODULES``)."""
    HEAD_TABLES[head], _FAMILY[head] = table, family


register_head("RTDETRDecoder", RTDETR_KEYS, "RT-DETR")


def _model_record(obj: Any, prefer_ema: bool) -> tuple[ForeignObject | None, str]:
    if not isinstance(obj, dict):
        return None, ""
    order = ("ema", "model") if prefer_ema else ("model", "ema")
    for key in order:
        value = obj.get(key)
        if is_module(value):
            return value, key
    return None, ""


def is_ultralytics_checkpoint(obj: Any) -> bool:
    """A dict whose 'model' / 'ema' is a pickled ``ultralytics.*`` model carrying its YAML."""
    record, _ = _model_record(obj, True)
    return record is not None and record.cls_name.startswith("ultralytics.") and isinstance(
        attribute(record, "yaml"), dict)


def _yaml_of(record: ForeignObject, source: str) -> dict:
    d = copy.deepcopy(plain(attribute(record, "yaml")))
    rows = list(d.get("backbone") or []) + list(d.get("head") or [])
    if not rows:
        raise CheckpointError(f"{source}: the model YAML stored in the checkpoint has no rows")
    d["name"] = Path(str(d.get("yaml_file") or "model")).stem or "model"
    d["yaml_file"] = f"{source} (model YAML stored in the checkpoint)"
    return d


def _names(record: ForeignObject) -> dict[int, str] | None:
    names = plain(attribute(record, "names"))
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, list):
        return dict(enumerate(map(str, names)))
    return None


def _train_args(obj: dict, record: ForeignObject) -> dict:
    args = plain(obj.get("train_args"))
    if not isinstance(args, dict):
        args = plain(attribute(record, "args"))
    return args if isinstance(args, dict) else {}


def convert_ultralytics(obj: Any, ctx: ConvertContext) -> Converted:
    """An Ultralytics checkpoint as an rtdet model built from the checkpoint's own YAML."""
    from rtdet.nn.model import DetectionModel

    record, entry = _model_record(obj, ctx.prefer_ema)
    if record is None:
        raise CheckpointError(f"{ctx.source}: neither 'ema' nor 'model' holds a model")
    d = _yaml_of(record, ctx.source)
    head = str((list(d.get("backbone") or []) + list(d.get("head") or []))[-1][2])
    table = HEAD_TABLES.get(head)
    if table is None:
        raise CheckpointError(
            f"{ctx.source}: an Ultralytics {class_name(record).rsplit('.', 1)[-1]} whose head is {head}; rtdet "
            f"converts Ultralytics models with a {', '.join(HEAD_TABLES)} head so far (YOLO heads come with the "
            f"YOLOv9 family)"
        )
    sd, cast = to_float32(module_state_dict(record, where=ctx.source))
    mapped, dropped = table.apply(sd)
    model = DetectionModel(d, load_weights=False)  # the YAML's own nc; the names come from the checkpoint
    names = _names(record)
    if names is not None and len(names) == model.nc:
        model.names = names
    report = load_into(model, mapped, table.name, dropped=dropped, dropped_why=[table.why_dropped(k) for k in dropped],
                       strict=ctx.strict, what=f"{ctx.source}: weights", source=ctx.source, hint=_hint(mapped, model))
    report.cast = cast
    family = _FAMILY.get(head, head)
    return Converted(model=model, report=report, description=f"Ultralytics {family} ({d['name']})",
                     weights=entry, names=model.names, args=_train_args(obj, record), ema=entry == "ema")


def _hint(mapped: dict, model) -> str:
    """Why an Ultralytics checkpoint might not fit the model built from its own YAML."""
    own = model.state_dict()
    if any(k.endswith(".conv.bias") and k not in own for k in mapped):
        return ("The checkpoint looks fused (Conv+BN folded into biased convolutions, as model.fuse() leaves "
                "it); export the unfused weights from Ultralytics instead.")
    return ("The YAML stored in the checkpoint names rtdet modules whose parameters differ from the ones that "
            "wrote it: a community module with other parameter names, or a modified Ultralytics.")


register_format(ForeignFormat(
    "ultralytics", "Ultralytics RT-DETR (rtdetr-l/x/resnet50/resnet101 and community variants)",
    detect=is_ultralytics_checkpoint, convert=convert_ultralytics,
))
