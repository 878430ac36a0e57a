"""YOLOv9 checkpoints -> rtdet: the official repository (WongKinYiu/yolov9) and the Ultralytics port.

**Official files** (the save code of ``train.py`` / ``train_dual.py``, ``strip_optimizer`` in
``utils/general.py``, ``tools/reparameterization``) are a dict

    {"model": <models.yolo.DetectionModel>, "ema": <models.yolo.DetectionModel> or None,
     "updates": int or None, "optimizer": a state dict or None, "opt": vars(the argparse options), with
     "imgsz" and "hyp" (the hyperparameter dict), "git": {...} or None, "date": str or None,
     "epoch": int (-1 once stripped), "best_fitness": ...}

* a training checkpoint (``last.pt`` / ``best.pt``) holds the raw model and ModelEMA's copy, both fp16;
* a released or finished one (``yolov9-c.pt``, ``gelan-c.pt``) went through ``strip_optimizer``: the EMA
  copied into "model"; "ema", "optimizer", "updates", "best_fitness" None; epoch -1; fp16;
* ``yolov9-c-converted.pt`` / ``yolov9-e-converted.pt`` (``tools/reparameterization``) is a model built from
  gelan-c.yaml / gelan-e.yaml (DDetect head) that holds yolov9-c's / -e's main branch, with "opt" None.

The model object carries ``.yaml`` (its model dict, with the official ``anchors`` and ``ch`` keys),
``.yaml_file`` when it was built from a file, ``.names`` (a dict, or the default list of "0", "1", ...),
``.nc``, ``.hyp``, ``.stride`` and ``.model``: an ``nn.Sequential`` with one ``models.common`` /
``models.yolo`` module per YAML row, so tensor keys are ``model.<row>.<attribute path>``.

**Ultralytics port** files (``yolov9t/s/m/c/e.pt``, a ``best.pt`` of ``yolo train model=yolov9c.pt``) are
Ultralytics checkpoints (:mod:`rtdet.io.ultralytics`) whose last row is Ultralytics' ``Detect``; this module
registers that head with its key table. The stored YAML does not say which class branch Ultralytics built
(the ``legacy`` branch its parse_model keeps for YOLOv9, or the YOLO11 depthwise one that some 8.3
versions gave every Detect): the tensors do, and the Detect row is built to match them.

rtdet's YOLOv9 modules keep the official attribute names (which the Ultralytics port shares: its
``RepCSP`` / ``RepBottleneck`` / ``RepConv`` hold RepNCSP's tensors under the same names) and one module
per row, so both tables are one rule. A training-graph file (yolov9-* with the PGI auxiliary branch and
DualDDetect) loads whole, as the training graph: ``model.fuse()`` and ``rtdet export`` drop the auxiliary
branch and keep DualDDetect's main half as a DDetect -- what the official re-parameterisation does.
"""

from __future__ import annotations

import copy
from typing import Any

from rtdet.io.foreign import attribute, model_record, module_state_dict, plain, stored_names, stored_yaml, to_float32
from rtdet.io.formats import ConvertContext, Converted, ForeignFormat, register_format
from rtdet.io.rules import KeyTable, load_into, looks_fused, rename
from rtdet.io.ultralytics import register_head
from rtdet.nn.model import DetectionModel
from rtdet.utils.checkpoint import CheckpointError

__all__ = ["OFFICIAL_YOLOV9_KEYS", "ULTRALYTICS_YOLOV9_KEYS", "OFFICIAL_HEADS", "is_official_yolov9_checkpoint",
           "convert_official_yolov9", "detect_class_branch"]

OFFICIAL_YOLOV9_KEYS = KeyTable("official YOLOv9", [
    rename(r"^model\.(\d+)\.", r"model.\1.",
           "one module per YAML row, keyed by row number as in models/yolo.py; rtdet keeps the official attribute "
           "names: Conv.conv/bn, RepNCSPELAN4.cv1-cv4 (cv2/cv3 = RepNCSP + Conv), RepNCSP.cv1-cv3/m, "
           "RepNBottleneck.cv1/cv2, RepConvN.conv1/conv2, ELAN1.cv1-cv4, AConv.cv1, ADown.cv1/cv2, SPPELAN.cv1/cv5, "
           "CBLinear.conv, DDetect.cv2/cv3/dfl, DualDDetect.cv2/cv3/dfl (auxiliary) + cv4/cv5/dfl2 (main)"),
])

ULTRALYTICS_YOLOV9_KEYS = KeyTable("Ultralytics YOLOv9", [
    rename(r"^model\.(\d+)\.", r"model.\1.",
           "one module per YAML row as in Ultralytics; its RepNCSPELAN4 / RepCSP / RepBottleneck / RepConv / ELAN1 / "
           "AConv / ADown / SPPELAN / CBLinear hold the official tensors under the official names, Detect.cv2/cv3/dfl "
           "are rtdet's Detect's"),
])

# Official heads rtdet builds with the official parameters: DDetect (gelan-*, *-converted) and DualDDetect
# (yolov9-*). The repository's other heads (Detect with its own class-branch width, DualDetect, Triple*,
# the segmentation and panoptic heads) have no rtdet counterpart.
OFFICIAL_HEADS = ("DDetect", "DualDDetect")


# ------------------------------------------------------------------------------------------ official
def is_official_yolov9_checkpoint(obj: Any) -> bool:
    """A dict whose 'model' / 'ema' is a pickled ``models.yolo.*`` model carrying its YAML dict (the layout
    the official YOLOv9 repository inherited from YOLOv5; which head it has is checked when converting)."""
    record, _ = model_record(obj, True)
    return record is not None and record.cls_name.startswith("models.yolo.") and isinstance(
        attribute(record, "yaml"), dict)


def _head_of(d: dict) -> str:
    return str((list(d.get("backbone") or []) + list(d.get("head") or []))[-1][2])


def convert_official_yolov9(obj: Any, ctx: ConvertContext) -> Converted:
    """An official YOLOv9 checkpoint as an rtdet model built from the YAML dict stored on its model."""
    record, entry = model_record(obj, ctx.prefer_ema)
    if record is None:
        raise CheckpointError(f"{ctx.source}: neither 'ema' nor 'model' holds a model")
    d = stored_yaml(record, ctx.source)
    head = _head_of(d)
    if head not in OFFICIAL_HEADS:
        raise CheckpointError(
            f"{ctx.source}: a {record.cls_name} whose head is {head}; rtdet converts official YOLOv9 detection "
            f"models with a {' or '.join(OFFICIAL_HEADS)} head (yolov9-*, gelan-*, *-converted). YOLOv5 / YOLOv7 "
            f"files share this layout but not the modules.")
    sd, cast = to_float32(module_state_dict(record, where=ctx.source))
    mapped, dropped = OFFICIAL_YOLOV9_KEYS.apply(sd)
    model = DetectionModel(d)  # the YAML's own nc; the names come from the checkpoint
    names = stored_names(record)
    if names is not None and len(names) == model.nc:
        model.names = names
    report = load_into(model, mapped, OFFICIAL_YOLOV9_KEYS.name, dropped=dropped, strict=ctx.strict,
                       what=f"{ctx.source}: weights", source=ctx.source, hint=_hint(mapped, model))
    report.cast = cast
    graph = ", training graph with the PGI auxiliary branch" if head == "DualDDetect" else ""
    options = plain(obj.get("opt"))
    return Converted(model=model, report=report, description=f"official YOLOv9 ({d['name']}{graph})",
                     weights=entry, names=model.names, args=options if isinstance(options, dict) else {},
                     ema=entry == "ema")


def _hint(mapped: dict, model) -> str:
    """Why a YOLOv9 checkpoint might not fit the model built from its own YAML."""
    if looks_fused(mapped, model):
        return ("The checkpoint looks fused (Conv+BN folded into biased convolutions and RepConvN merged, as "
                "model.fuse() leaves it); save the unfused weights instead (rtdet fuses them itself for export).")
    return ("The YAML stored in the checkpoint names modules whose parameters differ from rtdet's: a modified "
            "models/common.py, or a YOLOv9 variant rtdet does not implement.")


register_format(ForeignFormat(
    "yolov9", "official YOLOv9 (WongKinYiu/yolov9: yolov9-t/s/m/c/e with the auxiliary branch, gelan-*, *-converted)",
    detect=is_official_yolov9_checkpoint, convert=convert_official_yolov9,
))


# ------------------------------------------------------------------------------------------ Ultralytics port
def detect_class_branch(d: dict, tensors: dict) -> dict:
    """The Ultralytics YAML with its Detect row set to the class branch the tensors have.

    Ultralytics' parse_model decides the branch outside the YAML (``legacy``: the plain
    Conv-Conv-Conv2d branch for models without C3k2 rows, i.e. YOLOv9; some 8.3 versions built the YOLO11
    depthwise-separable branch for every Detect). Its keys tell them apart: the depthwise branch nests one
    level deeper (``cv3.0.0.0.conv.weight``). rtdet's ``Detect`` takes the choice as its second argument."""
    rows = list(d.get("backbone") or []) + list(d.get("head") or [])
    prefix = f"model.{len(rows) - 1}.cv3.0."
    if f"{prefix}0.0.conv.weight" not in tensors:
        return d  # the legacy branch: rtdet's Detect default
    section = "head" if d.get("head") else "backbone"
    f, n, m, args = d[section][-1]
    args = list(args or [])
    if len(args) != 1:
        raise CheckpointError(f"{d.get('yaml_file', 'checkpoint')}: the Detect row has arguments {args}; "
                              f"Ultralytics writes [nc]")
    d = copy.deepcopy(d)
    d[section][-1] = [f, n, m, [args[0], False]]  # Detect(nc, ch, legacy=False): the YOLO11 class branch
    return d


register_head("Detect", ULTRALYTICS_YOLOV9_KEYS, "YOLOv9", adjust=detect_class_branch)
