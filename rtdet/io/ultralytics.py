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
by the head module of the YAML's last row (:data:`HEAD_TABLES`): RT-DETR here, the YOLOv9 port's Detect in
:mod:`rtdet.io.yolov9`. The community
variants (DySample upsamplers, ConvNeXt V2 backbones -- published Ultralytics forks keep the package
name and the checkpoint layout) use the same table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rtdet.io.foreign import (
    attribute,
    class_name,
    model_record,
    module_state_dict,
    plain,
    stored_names,
    stored_yaml,
    to_float32,
)
from rtdet.io.formats import ConvertContext, Converted, ForeignFormat, register_format
from rtdet.io.rules import KeyTable, drop, load_into, looks_fused, rename
from rtdet.io.safe_pickle import ForeignObject
from rtdet.nn.model import DetectionModel
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

# YAML name of the head module (last row) -> the key table for that family, the family's name, and an
# optional adjustment of the stored YAML to what the tensors show.
HEAD_TABLES: dict[str, KeyTable] = {}
_FAMILY: dict[str, str] = {}
YamlAdjust = Callable[[dict, dict], dict]  # (stored YAML dict, renamed tensors) -> YAML dict to build
_ADJUST: dict[str, YamlAdjust] = {}


def register_head(head: str, table: KeyTable, family: str, adjust: YamlAdjust | None = None) -> None:
    """Convert Ultralytics models whose last row is ``head`` with ``table``. ``adjust(yaml, tensors)``, when
    given, returns the YAML to build: for what the stored YAML leaves to the Ultralytics version that wrote
    it (the YOLOv9 port's Detect class branch, :mod:`rtdet.io.yolov9`)."""
    HEAD_TABLES[head], _FAMILY[head] = table, family
    if adjust is not None:
        _ADJUST[head] = adjust


register_head("RTDETRDecoder", RTDETR_KEYS, "RT-DETR")


def is_ultralytics_checkpoint(obj: Any) -> bool:
    """A dict whose 'model' / 'ema' is a pickled ``ultralytics.*`` model carrying its YAML."""
    record, _ = model_record(obj, True)
    return record is not None and record.cls_name.startswith("ultralytics.") and isinstance(
        attribute(record, "yaml"), dict)


def _train_args(obj: dict, record: ForeignObject) -> dict:
    args = plain(obj.get("train_args"))
    if not isinstance(args, dict):
        args = plain(attribute(record, "args"))
    return args if isinstance(args, dict) else {}


def convert_ultralytics(obj: Any, ctx: ConvertContext) -> Converted:
    """An Ultralytics checkpoint as an rtdet model built from the checkpoint's own YAML."""
    record, entry = model_record(obj, ctx.prefer_ema)
    if record is None:
        raise CheckpointError(f"{ctx.source}: neither 'ema' nor 'model' holds a model")
    d = stored_yaml(record, ctx.source)
    head = str((list(d.get("backbone") or []) + list(d.get("head") or []))[-1][2])
    table = HEAD_TABLES.get(head)
    if table is None:
        raise CheckpointError(
            f"{ctx.source}: an Ultralytics {class_name(record).rsplit('.', 1)[-1]} whose head is {head}; rtdet "
            f"converts Ultralytics models with a {', '.join(HEAD_TABLES)} head (RT-DETR, the YOLOv9 port)"
        )
    sd, cast = to_float32(module_state_dict(record, where=ctx.source))
    mapped, dropped = table.apply(sd)
    if head in _ADJUST:
        d = _ADJUST[head](d, mapped)
    model = DetectionModel(d)  # the YAML's own nc; the names come from the checkpoint
    names = stored_names(record)
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
    if looks_fused(mapped, model):
        return ("The checkpoint looks fused (Conv+BN folded into biased convolutions, as model.fuse() leaves "
                "it); export the unfused weights from Ultralytics instead.")
    return ("The YAML stored in the checkpoint names rtdet modules whose parameters differ from the ones that "
            "wrote it: a community module with other parameter names, or a modified Ultralytics.")


register_format(ForeignFormat(
    "ultralytics", "Ultralytics RT-DETR (rtdetr-l/x/resnet50/resnet101 and community variants) and YOLOv9 port "
                   "(yolov9t/s/m/c/e)",
    detect=is_ultralytics_checkpoint, convert=convert_ultralytics,
))
