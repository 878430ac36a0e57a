"""``rtdet export``: load a model and its settings, export its deploy form to ONNX, check the file against
the model in ONNX Runtime, and optionally quantise it to int8 with its mAP and latency measured.

    Exporter({"model": "best.pt", "imgsz": 640})()     # <project>/export/<name>/best.onnx, checked
    Exporter({"model": "best.pt", "data": "coco.yaml", "int8": True})()

The graph, its metadata, the ONNX Runtime model, the parity check and the quantisation are the deploy layer
(:mod:`rtdet.deploy`); this module is the verb: settings, run folder, the check image and the int8 report.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn

from rtdet.data import load_data_config
from rtdet.data.dataset import open_split
from rtdet.deploy.graph import export_onnx, export_shape
from rtdet.deploy.int8 import quantize_export
from rtdet.deploy.parity import ParityReport, check_export, check_image
from rtdet.deploy.runtime import load_onnx_model
from rtdet.engine import loaders
from rtdet.engine.rundir import RunFolder
from rtdet.engine.settings import SettingsError
from rtdet.engine.setup import prepare
from rtdet.engine.validator import Validator
from rtdet.nn.model import DetectionModel
from rtdet.utils.logging import LOGGER, set_verbosity

__all__ = ["Exporter", "Int8Report", "calibration_batches", "check_source", "int8_report"]


# ---------------------------------------------------------------------------------- `rtdet export`
class Exporter:
    """``rtdet export model=<yaml|pt> format=onnx [imgsz= batch= dynamic= half= opset= nms= simplify=]``.

    Loads the model (a YAML builds a fresh one, a checkpoint its trained weights), exports it to
    ``<project>/export/<name>/<model>.onnx``, checks it against ONNX Runtime on an image (``source=`` if
    given, else a val image of ``data=``, else a synthetic picture) and prints the differences."""

    task = "export"

    def __init__(self, overrides: dict | None = None):
        self.overrides = dict(overrides or {})
        self.file: Path | None = None
        self.report: ParityReport | None = None

    def __call__(self, model=None) -> Path:
        user = {k: v for k, v in self.overrides.items() if k != "model"}
        spec = model if model is not None else self.overrides.get("model")
        if spec is None:
            raise SettingsError("export needs model=<model YAML or checkpoint .pt>, e.g. model=rtdetr-l.yaml")

        def pytorch_only(m) -> None:
            if not isinstance(m, DetectionModel):
                raise SettingsError(f"export needs a PyTorch model (YAML or .pt); {spec} is already an export")

        names = _data_names(user.get("data"))
        loaded, _, args, device = prepare(spec, user, self.task, nc=user.get("nc") or (len(names) if names else None),
                                          names=names, scale=user.get("scale"), check=pytorch_only)
        set_verbosity(bool(args["verbose"]))
        fmt = str(args.get("format") or "onnx").lower()
        if fmt != "onnx":
            raise SettingsError(f"format={fmt}: rtdet exports format=onnx")
        shape = export_shape(args["imgsz"])  # already rounded up to the stride by prepare
        batch = int(user.get("batch") or 1)  # the training default (16) is not an export default
        if args.get("int8") and not args.get("data"):
            raise SettingsError("int8=true calibrates on real images: give data=<dataset YAML> (its val split)")
        if args.get("int8") and args["half"]:
            raise SettingsError("int8=true quantises the fp32 export; drop half=true")
        # Everything above is checked before the folder exists; a failure below removes it again.
        with RunFolder(args["project"], self.task, args.get("name"), bool(args["exist_ok"])) as folder:
            source = str(spec) if isinstance(spec, str | Path) else loaded.name
            self.file = folder.path / f"{Path(source).stem if isinstance(spec, str | Path) else source}.onnx"
            self._export(loaded, args, user, shape, batch, device, source)
        LOGGER.info(f"Export done: {self.file}\n  try: rtdet predict model={self.file} source=...   "
                    f"rtdet val model={self.file} data=...")
        return self.file

    def _export(self, loaded: nn.Module, args: dict, user: dict, shape: tuple[int, int], batch: int,
                device: torch.device, source: str) -> None:
        """Write ``self.file``, check it with ONNX Runtime, and quantise it when ``int8=true``."""
        conf, multi_label = float(args["conf"]), bool(args["multi_label"])  # export's defaults: the schema
        inherited_args = {k: args.get(k) for k in ("train_pipeline", "val_pipeline") if args.get(k)}
        export_onnx(loaded, self.file, imgsz=shape, batch=batch, dynamic=bool(args["dynamic"]),
                    half=bool(args["half"]), opset=int(args["opset"]), nms=bool(args["nms"]), conf=conf,
                    iou=float(args["iou"]), max_det=int(args["max_det"]), multi_label=multi_label,
                    simplify=bool(args["simplify"]), device=device,
                    extra_metadata={"args": inherited_args, "source": source})
        if bool(args.get("check", True)) and not args["half"]:
            x = check_image(check_source(user.get("source"), args.get("data")), shape, batch)
            self.report = check_export(self.file, loaded, x, conf=conf, iou=float(args["iou"]),
                                       max_det=int(args["max_det"]), multi_label=multi_label)
            LOGGER.info(f"ONNX Runtime check: {self.report}")
        if args.get("int8"):
            self.int8_file, self.int8_report = self._int8(args, batch)

    def _int8(self, args: dict, batch: int) -> tuple[Path, Int8Report]:
        """``int8=true``: the statically quantised copy, calibrated on ``data=``'s val images, and what it
        changes: mAP on the val split and latency, both against the fp32 export."""
        data = loaders.load_data(args["data"])
        val_args = {**args, "imgsz": int(args["imgsz"]), "verbose": False}
        calib = calibration_batches(loaders.val_loader(data, val_args, batch), int(args["calib_images"]), batch)
        dst = self.file.with_name(f"{self.file.stem}-int8.onnx")
        threads = int(args.get("threads") or 0) or None
        quantized = quantize_export(self.file, dst, calib, threads)
        report = int8_report(self.file, dst, data, val_args, batch, threads)
        LOGGER.info(f"int8: {dst}\n  {quantized}\n  {report}")
        return dst, report


# ---------------------------------------------------------------------------------- int8
@dataclass
class Int8Report:
    """What static int8 quantisation changed: val mAP and latency (ms per batch, median) vs fp32."""

    map_fp32: float | None  # None: mAP not available (the val images have no labelled box)
    map_int8: float | None
    ms_fp32: float
    ms_int8: float

    def __str__(self) -> str:
        maps = ("mAP50-95 n/a (no labelled boxes in the val split)" if self.map_fp32 is None or self.map_int8 is None
                else f"mAP50-95 {self.map_fp32:.4f} (fp32) -> {self.map_int8:.4f} (int8), "
                     f"{self.map_int8 - self.map_fp32:+.4f}")
        return (f"{maps}; latency {self.ms_fp32:.1f} -> {self.ms_int8:.1f} ms "
                f"({self.ms_fp32 / max(self.ms_int8, 1e-9):.2f}x faster)")


def calibration_batches(loader, n_images: int, batch: int) -> list[np.ndarray]:
    """Up to ``n_images`` letterboxed val images as float32 batches of the export's batch size."""
    images = []
    for b in loader:
        images.extend(b["img"].float().numpy())
        if len(images) >= n_images:
            break
    images = images[:n_images]
    n = max(len(images) // batch, 1) * batch
    images = (images * batch)[:n] if len(images) < batch else images[:n]  # a tiny val split: repeat it
    return [np.stack(images[i:i + batch]) for i in range(0, n, batch)]


def int8_report(fp32: Path, int8: Path, data, args: dict, batch: int, threads: int | None, runs: int = 10
                ) -> Int8Report:
    """Val mAP50-95 of both files through the ONNX Runtime backend, and their latency on one val batch
    (interleaved runs, median)."""
    models = [load_onnx_model(p, threads=threads) for p in (fp32, int8)]
    maps = [Validator(args=args).run(m, loaders.val_loader(data, args, batch))["mAP50-95"] for m in models]  # or None
    x = next(iter(loaders.val_loader(data, args, batch)))["img"].float()
    x = x[:batch] if len(x) >= batch else x.repeat(batch, 1, 1, 1)[:batch]
    times: list[list[float]] = [[], []]
    for m in models:
        m(x)  # warm-up
    for _ in range(runs):
        for k, m in enumerate(models):
            t0 = time.perf_counter()
            m(x)
            times[k].append(1000 * (time.perf_counter() - t0))
    return Int8Report(maps[0], maps[1], statistics.median(times[0]), statistics.median(times[1]))


def _data_names(data) -> list[str] | None:
    if not data:
        return None
    return list(load_data_config(data).names)


def check_source(source, data) -> np.ndarray | None:
    """The picture the export is checked on: ``source`` (an image file), else the first val image of
    ``data``, else None (a synthetic picture)."""
    path = None
    if source:
        path = Path(str(source))
    elif data:
        cfg = load_data_config(data)
        split = "val" if "val" in cfg.splits else next(iter(cfg.splits))
        path = Path(open_split(cfg, split, verbose=False).im_files[0])
    if path is None:
        return None
    img = cv2.imread(str(path))
    if img is None:
        raise FileNotFoundError(f"source '{path}': not a readable image for the export check")
    return img
