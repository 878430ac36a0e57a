"""What an rtdet export carries besides its graph: the input name, the output layouts, and the metadata
(``metadata_props``, JSON values) that lets the ONNX Runtime model stand in for the PyTorch one.

    meta = build_metadata(fused_model, "dense", (640, 640), batch=1, dynamic=False, half=False, opset=17,
                          nms=None)
    set_metadata(proto, meta); meta = read_metadata("best.onnx")
    check_metadata(meta, "best.onnx")          # types and forms; ExportError naming the key otherwise
    check_graph(meta, session, "best.onnx")    # the metadata against the graph ONNX Runtime loaded

Output layouts (``outputs``): ``final`` (DETR heads: boxes [B, k, 4], scores [B, k], labels [B, k]),
``dense`` (NMS heads: boxes [B, N, 4], scores [B, N, C]) and ``nms`` (NMS in the graph: boxes [K, 4],
scores [K], labels [K], batch_index [K]). The ranges of the values a user could also give as settings
(input size, batch, NMS thresholds, stored transforms) are checked by the engine, which owns the settings
schema (:func:`rtdet.engine.onnx_checks.check_export_settings`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from rtdet.deploy.errors import ExportError
from rtdet.nn.model import count_parameters
from rtdet.version import __version__

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "NMSConfig", "bad_metadata", "build_metadata", "check_graph",
           "check_metadata", "read_metadata", "set_metadata"]

INPUT_NAME = "images"
OUTPUT_NAMES = {"final": ["boxes", "scores", "labels"], "dense": ["boxes", "scores"],
                "nms": ["boxes", "scores", "labels", "batch_index"]}


@dataclass(frozen=True)
class NMSConfig:
    """The NMS settings fixed in an ``nms=True`` graph (and recorded in its metadata)."""

    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    multi_label: bool = False


def build_metadata(model: nn.Module, layout: str, shape: tuple[int, int], batch: int, dynamic: bool, half: bool,
                   opset: int, nms: NMSConfig | None, extra: dict | None = None, count_flops: bool = True) -> dict:
    """The metadata of an export of ``model`` (its deploy form: parameters are counted after fusing)."""
    head = model.head
    meta = {
        "rtdet_version": __version__,
        "name": getattr(model, "name", "model"),
        "family": head.family,
        "needs_nms": bool(head.needs_nms),
        "outputs": layout,
        "names": {str(k): v for k, v in model.names.items()},
        "nc": int(model.nc),
        "stride": [int(s) for s in model.strides],
        "imgsz": [int(shape[0]), int(shape[1])],
        "batch": None if dynamic else int(batch),
        "dynamic": bool(dynamic),
        "half": bool(half),
        "opset": int(opset),
        "input": INPUT_NAME,
        "params_deploy": int(count_parameters(model)),
        "gflops": float(model.float().flops(tuple(shape))) if count_flops else None,
        "nms": None if nms is None else {"conf": nms.conf, "iou": nms.iou, "max_det": nms.max_det,
                                         "multi_label": nms.multi_label},
    }
    meta.update(extra or {})
    return meta


def set_metadata(proto, meta: dict) -> None:
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    proto.doc_string = f"rtdet {meta.get('rtdet_version')} export of {meta.get('name')} ({meta.get('family')})"


def read_metadata(path_or_proto) -> dict:
    """The metadata of an rtdet ONNX file (JSON-decoded); ExportError when it is not one."""
    if isinstance(path_or_proto, str | Path):
        import onnx  # optional: rtdet[export]

        path = Path(path_or_proto)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX file not found")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise ExportError(f"{path}: cannot be read as an ONNX model ({type(e).__name__}: {e})") from None
        where = str(path)
    else:
        proto, where = path_or_proto, "<model>"
    meta = {}
    for entry in proto.metadata_props:
        try:
            meta[entry.key] = json.loads(entry.value)
        except json.JSONDecodeError:
            meta[entry.key] = entry.value
    missing = [k for k in ("rtdet_version", "outputs", "names", "stride", "imgsz") if k not in meta]
    if missing:
        raise ExportError(f"{where}: not an rtdet export (metadata lacks {missing}); export the model with "
                          f"`rtdet export model=...` so its names, strides and output layout travel with it")
    return meta


def bad_metadata(path: Path | str, key: str, value: Any, expected: str) -> ExportError:
    """The error for a metadata value that is not what rtdet wrote."""
    return ExportError(f"{path}: its metadata {key}={value!r} {expected}; the file was edited or not written by "
                       f"`rtdet export` -- export the model again")


def check_metadata(meta: dict, path: Path | str) -> None:
    """The types and forms of the metadata rtdet reads (output kind, names, class count, strides, input size,
    NMS settings, flags); ExportError naming the first key that is wrong."""
    layout = meta.get("outputs")
    if layout not in OUTPUT_NAMES:
        raise bad_metadata(path, "outputs", layout, f"is not an output kind ({', '.join(OUTPUT_NAMES)})")
    names = meta.get("names")
    if not isinstance(names, dict) or not names or not all(isinstance(v, str) for v in names.values()):
        raise bad_metadata(path, "names", _short(names), "is not a non-empty mapping of class index to name")
    nc = meta.get("nc", len(names))
    if not isinstance(nc, int) or isinstance(nc, bool) or nc != len(names):
        raise bad_metadata(path, "nc", nc, f"does not match its {len(names)} class names")
    stride = meta.get("stride")
    if not (isinstance(stride, list) and stride and all(isinstance(s, int) and 1 <= s <= 1024 for s in stride)):
        raise bad_metadata(path, "stride", stride, "is not a list of strides (integers 1..1024)")
    imgsz = meta.get("imgsz")
    if not (isinstance(imgsz, list) and len(imgsz) == 2):
        raise bad_metadata(path, "imgsz", imgsz, "is not [height, width]")
    nms = meta.get("nms")
    if nms is not None and (not isinstance(nms, dict) or not {"conf", "iou", "max_det", "multi_label"} <= set(nms)):
        raise bad_metadata(path, "nms", nms, "is not {conf, iou, max_det, multi_label}")
    for key in ("dynamic", "half"):
        if not isinstance(meta.get(key, False), bool):
            raise bad_metadata(path, key, meta.get(key), "is not true or false")
    if not isinstance(meta.get("args") or {}, dict):
        raise bad_metadata(path, "args", _short(meta.get("args")), "is not a mapping of settings")


def _short(value: Any, n: int = 60) -> Any:
    text = repr(value)
    return value if len(text) <= n else text[: n - 3] + "..."


def _dim(value: Any) -> int | None:
    """A fixed dimension of the graph, None for a named (dynamic) one."""
    return value if isinstance(value, int) and value > 0 else None


def check_graph(meta: dict, session: Any, path: Path | str) -> None:
    """The metadata against the graph ONNX Runtime loaded: the input (one, 3 channels, the exported size
    when static), the outputs (the names of the metadata's output kind), the class count (the width of a
    dense export's scores) and the strides (a dense export's boxes, one per grid cell of every stride)."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        shown = [(i.name, i.shape) for i in inputs]
        raise ExportError(f"{path}: the graph takes {shown}, not one image batch [B, 3, H, W]; not an rtdet export")
    b, c, h, w = (_dim(v) for v in inputs[0].shape)
    if c is not None and c != 3:
        raise ExportError(f"{path}: the graph takes {c}-channel images; rtdet exports take 3 (RGB)")
    ih, iw = meta["imgsz"]
    if not meta.get("dynamic"):
        if h is None or w is None:
            raise bad_metadata(path, "dynamic", False,
                               f"says static, but the graph's input size is free ({inputs[0].shape})")
        if (h, w) != (ih, iw):
            raise bad_metadata(path, "imgsz", [ih, iw], f"does not match the graph's input size {h}x{w}")
        if meta.get("batch") is not None and b is not None and b != meta["batch"]:
            raise bad_metadata(path, "batch", meta["batch"], f"does not match the graph's input batch {b}")
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    layout = meta["outputs"]
    if names != OUTPUT_NAMES[layout]:
        kind = next((k for k, v in OUTPUT_NAMES.items() if v == names), None)
        graph = f"the graph's outputs are {names}" + (f" (output kind {kind!r})" if kind else "")
        raise bad_metadata(path, "outputs", layout, f"expects outputs {OUTPUT_NAMES[layout]}, but {graph}")
    if layout == "dense":
        _check_dense(meta, {o.name: o.shape for o in outputs}, (h, w), path)


def _check_dense(meta: dict, shapes: dict, size: tuple[int | None, int | None], path: Path | str) -> None:
    """boxes [B, N, 4] and scores [B, N, nc]; N = the grid cells of every stride when the size is fixed."""
    boxes, scores = shapes["boxes"], shapes["scores"]
    if len(boxes) != 3 or len(scores) != 3 or _dim(boxes[2]) not in (4, None):
        raise ExportError(f"{path}: dense outputs boxes {boxes} and scores {scores}, expected [B, N, 4] and "
                          f"[B, N, classes]; not an rtdet export")
    width = _dim(scores[2])
    if width is not None and width != len(meta["names"]):
        raise bad_metadata(path, "names", f"<{len(meta['names'])} class names>",
                   f"does not match the graph's scores output, which has {width} class columns")
    n, (h, w) = _dim(boxes[1]) or _dim(scores[1]), size
    if n is not None and h is not None and w is not None:
        # a dual head (YOLOv9's training graph) lists its levels twice; its deploy form outputs one branch
        cells = sum(-(-h // s) * -(-w // s) for s in set(meta["stride"]))
        if cells != n:
            raise bad_metadata(path, "stride", meta["stride"],
                               f"gives {cells} grid cells at {h}x{w}, but the graph outputs {n} boxes")
