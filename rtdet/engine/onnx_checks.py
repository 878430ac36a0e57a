"""The values an ``.onnx`` file stores that a user could also give as settings, checked with the settings
schema before the file is used: its input size and batch, its in-graph NMS settings and the transforms it was
trained with.

    model = load_onnx_model(path)               # rtdet.deploy.runtime: the metadata's forms, against its graph
    check_export_settings(model.meta, path)     # and here the ranges, exactly as the command line's

The deploy layer checks what the file is (output kind, names, strides, graph); the ranges belong to the
settings schema, which lives here in the engine. Every problem is an ExportError naming the file, the key,
its value and what the setting allows.
"""

from __future__ import annotations

from pathlib import Path

from rtdet.deploy.metadata import bad_metadata
from rtdet.engine.settings import check_stored_settings, schema
from rtdet.utils.schema import SettingError

__all__ = ["check_export_settings"]


def check_export_settings(meta: dict, path: Path | str) -> None:
    """The ranges of ``meta``'s imgsz, batch and nms values (those of the settings of the same names), and
    its stored transforms; ``meta`` has passed :func:`rtdet.deploy.metadata.check_metadata`."""
    table = schema()
    checks = [("imgsz", v, "imgsz") for v in meta["imgsz"]]
    if meta.get("batch") is not None:
        checks.append(("batch", meta["batch"], "batch"))
    nms = meta.get("nms")
    if nms is not None:
        checks += [(f"nms.{k}", nms[k], k) for k in ("conf", "iou", "max_det", "multi_label")]
    for key, value, setting in checks:
        try:
            table[setting].check(value)
        except SettingError as e:
            allowed = str(e).split(": expected ", 1)[-1].split(" -- ")[0]
            raise bad_metadata(path, key, value, f"is outside what the setting {setting}= allows ({allowed})") from None
    check_stored_settings(meta.get("args") or {}, path)  # the transforms it was trained with, as the command line's
