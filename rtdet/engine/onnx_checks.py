"""What an ``.onnx`` file says about itself, checked before it is used: its metadata against the settings
schema and against its own graph, and ONNX Runtime's refusals (an invalid graph, an unknown operation,
external data outside the model's folder) in one line.

    meta = read_metadata(path)
    check_metadata(meta, path)                  # types and ranges (imgsz, names, stride, nms ...)
    session = open_session(path, make)          # ONNX Runtime's errors -> ExportError naming the file
    check_graph(meta, session, path)            # input size, output kind, class count, strides

A file whose metadata says one thing and whose graph does another (an edited or foreign file) would
otherwise letterbox to the wrong size, decode the wrong columns as classes or place boxes on the wrong
grid, silently. Every problem is an :class:`~rtdet.engine.exporter.ExportError` naming the file, the
metadata key, its value and what the graph (or the schema) says.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rtdet.engine.exporter import OUTPUT_NAMES, ExportError

__all__ = ["check_metadata", "check_graph", "describe_runtime_error", "open_session"]


def _bad(path: Path | str, key: str, value: Any, expected: str) -> ExportError:
    return ExportError(f"{path}: its metadata {key}={value!r} {expected}; the file was edited or not written by "
                       f"`rtdet export` -- export the model again")


# ------------------------------------------------------------------------------------------ metadata
def check_metadata(meta: dict, path: Path | str) -> None:
    """Types and ranges of the metadata rtdet reads, the ranges being those of the command line's settings."""
    from rtdet.engine.settings import check_stored_settings, schema
    from rtdet.utils.schema import SettingError

    layout = meta.get("outputs")
    if layout not in OUTPUT_NAMES:
        raise _bad(path, "outputs", layout, f"is not an output kind ({', '.join(OUTPUT_NAMES)})")
    names = meta.get("names")
    if not isinstance(names, dict) or not names or not all(isinstance(v, str) for v in names.values()):
        raise _bad(path, "names", _short(names), "is not a non-empty mapping of class index to name")
    nc = meta.get("nc", len(names))
    if not isinstance(nc, int) or isinstance(nc, bool) or nc != len(names):
        raise _bad(path, "nc", nc, f"does not match its {len(names)} class names")
    stride = meta.get("stride")
    if not (isinstance(stride, list) and stride and all(isinstance(s, int) and 1 <= s <= 1024 for s in stride)):
        raise _bad(path, "stride", stride, "is not a list of strides (integers 1..1024)")
    imgsz = meta.get("imgsz")
    if not (isinstance(imgsz, list) and len(imgsz) == 2):
        raise _bad(path, "imgsz", imgsz, "is not [height, width]")
    table = schema()
    checks = [("imgsz", v, "imgsz") for v in imgsz]
    if meta.get("batch") is not None:
        checks.append(("batch", meta["batch"], "batch"))
    nms = meta.get("nms")
    if nms is not None:
        if not isinstance(nms, dict) or not {"conf", "iou", "max_det", "multi_label"} <= set(nms):
            raise _bad(path, "nms", nms, "is not {conf, iou, max_det, multi_label}")
        checks += [(f"nms.{k}", nms[k], k) for k in ("conf", "iou", "max_det", "multi_label")]
    for key, value, setting in checks:
        try:
            table[setting].check(value)
        except SettingError as e:
            allowed = str(e).split(": expected ", 1)[-1].split(" -- ")[0]
            raise _bad(path, key, value, f"is outside what the setting {setting}= allows ({allowed})") from None
    for key in ("dynamic", "half"):
        if not isinstance(meta.get(key, False), bool):
            raise _bad(path, key, meta.get(key), "is not true or false")
    args = meta.get("args") or {}
    if not isinstance(args, dict):
        raise _bad(path, "args", _short(args), "is not a mapping of settings")
    check_stored_settings(args, path)  # the transforms it was trained with, as the command line's


def _short(value: Any, n: int = 60) -> Any:
    text = repr(value)
    return value if len(text) <= n else text[: n - 3] + "..."


# ------------------------------------------------------------------------------------------ the graph
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
            raise _bad(path, "dynamic", False, f"says static, but the graph's input size is free ({inputs[0].shape})")
        if (h, w) != (ih, iw):
            raise _bad(path, "imgsz", [ih, iw], f"does not match the graph's input size {h}x{w}")
        if meta.get("batch") is not None and b is not None and b != meta["batch"]:
            raise _bad(path, "batch", meta["batch"], f"does not match the graph's input batch {b}")
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    layout = meta["outputs"]
    if names != OUTPUT_NAMES[layout]:
        kind = next((k for k, v in OUTPUT_NAMES.items() if v == names), None)
        graph = f"the graph's outputs are {names}" + (f" (output kind {kind!r})" if kind else "")
        raise _bad(path, "outputs", layout, f"expects outputs {OUTPUT_NAMES[layout]}, but {graph}")
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
        raise _bad(path, "names", f"<{len(meta['names'])} class names>",
                   f"does not match the graph's scores output, which has {width} class columns")
    n, (h, w) = _dim(boxes[1]) or _dim(scores[1]), size
    if n is not None and h is not None and w is not None:
        # a dual head (YOLOv9's training graph) lists its levels twice; its deploy form outputs one branch
        cells = sum(-(-h // s) * -(-w // s) for s in set(meta["stride"]))
        if cells != n:
            raise _bad(path, "stride", meta["stride"], f"gives {cells} grid cells at {h}x{w}, but the graph "
                                                       f"outputs {n} boxes")


# ------------------------------------------------------------------------------------------ files, runtime
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*(\w+)\s*:\s*")
_CAUSES = (  # (what ONNX Runtime's message holds, what it means for the user)
    (re.compile(r"No Op registered for (\w+)|Could not find an implementation for (\w+)"),
     "it uses the operation {op}, which ONNX Runtime does not implement (a custom op, or a newer opset than this "
     "onnxruntime supports)"),
    (re.compile(r"External data path"), "its external data lies outside the model's folder ({detail})"),
    (re.compile(r"INVALID_PROTOBUF|Protobuf parsing failed"), "it is not a readable ONNX model (truncated or damaged)"),
)


def describe_runtime_error(error: Exception, path: Path | str) -> str:
    """ONNX Runtime's refusal of a file in one line: the file and the cause."""
    text = " ".join(str(error).split())
    code = (_ORT_PREFIX.match(text).group(1) if _ORT_PREFIX.match(text) else type(error).__name__)
    detail = _ORT_PREFIX.sub("", text)
    detail = re.sub(r"^Load model from \S+ failed:\s*", "", detail)[:300]
    for pattern, meaning in _CAUSES:
        m = pattern.search(text)
        if m:
            op = next((g for g in m.groups() if g), "?") if m.groups() else "?"
            return f"{path}: ONNX Runtime cannot load it: {meaning.format(op=op, detail=detail)}"
    what = "the graph is invalid" if code in ("INVALID_GRAPH", "INVALID_ARGUMENT", "InvalidGraph") else code
    return f"{path}: ONNX Runtime cannot load it: {what}: {detail}"


def open_session(path: Path | str, make: Callable[[], Any]) -> Any:
    """``make()`` (an ONNX Runtime session), with its refusals as ExportError naming the file and the cause."""
    try:
        return make()
    except (OSError, MemoryError, ValueError):  # ValueError: a bad setting (opt_level), said as it is
        raise
    except Exception as e:  # onnxruntime's pybind errors (Fail, InvalidGraph, InvalidArgument, ...)
        raise ExportError(describe_runtime_error(e, path)) from None
