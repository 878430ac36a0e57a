"""Predictor: detections on images, folders, globs, videos, streams and numpy arrays.

    results = Predictor({"model": "best.pt", "conf": 0.3})("images/")     # list[Results]
    for r in Predictor({"model": "best.pt"}).stream("video.mp4"): ...    # one Results per frame

Images are prepared with the same deterministic transforms validation uses (the val part of the pipeline
the model was trained with: letterbox or stretch to ``imgsz``), the model runs in eval mode, the head's
``postprocess`` gives boxes in network-input pixels, and ``ratio_pad`` maps them back to the image.
Annotated images / videos go to ``runs/predict/<name>`` (``save``), with optional YOLO txt labels
(``save_txt``) and a COCO ``predictions.json`` (``save_json``). Every output is keyed by the unique id of
its item (rtdet/engine/sources.py): ``a/img.jpg`` and ``b/img.jpg``, or ``x.jpg`` and ``x.png``, never share
a file or an image id.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from rtdet.data import build_pipeline, collate, load_pipeline_spec
from rtdet.engine.errors import SourceError
from rtdet.engine.results import Results
from rtdet.engine.rundir import RunFolder
from rtdet.engine.settings import SettingsError, check_settings
from rtdet.engine.setup import prepare
from rtdet.engine.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Frame, iter_source, opencv_messages
from rtdet.engine.validator import input_spec
from rtdet.nn.model import DetectionModel
from rtdet.ops.boxes import boxes_to_original
from rtdet.ops.metrics import coco_predictions, save_predictions_json
from rtdet.utils.checkpoint import atomic_write_bytes, atomic_write_text
from rtdet.utils.logging import LOGGER, set_verbosity

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "Predictor", "iter_source", "opencv_messages"]


def prepare_for_inference(model: DetectionModel, fuse: bool, channels_last: bool) -> DetectionModel:
    """A copy of the model folded for inference (Conv+BN, RepConv) and/or in NHWC layout; the caller's
    model (perhaps still being trained through the Detector API) is left untouched."""
    if not (fuse or channels_last):
        return model
    model = copy.deepcopy(model)
    if fuse:
        model.fuse()
    if channels_last:  # oneDNN runs (depthwise) convolutions faster on NHWC tensors
        model.to(memory_format=torch.channels_last)
    return model


def _chunks(it: Iterable, n: int) -> Iterator[list]:
    chunk = []
    for x in it:
        chunk.append(x)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def picture_name(f: Frame) -> str:
    """Where a still picture's annotated copy goes: its id, with .jpg when the id has no image suffix."""
    uid = f.item.uid
    return uid if Path(uid).suffix.lower() in IMAGE_SUFFIXES else f"{uid}.jpg"


def frame_stem(f: Frame) -> str:
    """The unique stem of one picture's outputs: the item's stem, plus _<frame> for a video or stream frame."""
    return f.item.stem if f.frame is None else f"{f.item.stem}_{f.frame}"


# ---------------------------------------------------------------------------------- predictor
class Predictor:
    """Detections for every picture of a source (see the module docstring)."""

    task = "predict"

    def __init__(self, overrides: dict | None = None, model: DetectionModel | None = None):
        self.overrides = check_settings(overrides, self.task)  # bad values stop here, before any work
        self.model_spec = model if model is not None else self.overrides.pop("model", None)
        self.overrides.pop("model", None)
        self.model: DetectionModel | None = None
        self.args: dict = {}
        self.save_dir: Path | None = None
        self._writers: dict[str, cv2.VideoWriter] = {}
        self._video_files: dict[str, tuple[Path, Path]] = {}
        self.saves = False

    def setup(self) -> None:
        """Load the model, settle the settings (default < recipe < checkpoint's training size and
        transforms < user), build the preprocessing."""
        if self.model_spec is None:
            raise SettingsError("predict needs model=<checkpoint .pt or model YAML>")
        user = {k: v for k, v in self.overrides.items() if k != "source"}
        model, _, args, self.device = prepare(self.model_spec, user, self.task)  # track: its own conf default
        set_verbosity(bool(args["verbose"]))
        self.args = args
        self.folder = RunFolder(args["project"], self.task, args.get("name"), bool(args["exist_ok"]))
        self.model = prepare_for_inference(model.to(self.device).eval(), bool(args["fuse"]),
                                           bool(args["channels_last"]) and self.device.type == "cpu")
        if args["half"]:
            self.model = self.model.half()
        spec = load_pipeline_spec(args.get("val_pipeline") or args.get("train_pipeline") or None)
        self.preprocess_pipeline = build_pipeline(spec.val, int(args["imgsz"]))
        self.conf = float(args["conf"])
        self.saves = bool(args["save"] or args["save_txt"] or args["save_json"])

    def __call__(self, source=None) -> list[Results]:
        """All results in a list (for a long video prefer :meth:`stream`, which keeps no frames)."""
        return list(self.stream(source))

    def stream(self, source=None) -> Iterator[Results]:
        if self.model is None:
            self.setup()
        source = source if source is not None else self.overrides.get("source")
        if source is None:
            raise SettingsError("predict needs a source: an image, a folder, a glob, a video, a .txt list, a webcam "
                                "index, a stream URL or a numpy array")
        predictions: list[dict] = []
        n = 0
        frames = iter_source(source, bool(self.args["stream_buffer"]), float(self.args["stream_timeout"]))
        try:
            for chunk in _chunks(frames, max(int(self.args["batch"]), 1)):
                for r, f in zip(self._predict_chunk(chunk), chunk):
                    r = self.on_result(r, f, predictions)
                    n += 1
                    yield r
        except BaseException:
            self._close_videos()
            self.folder.discard_if_empty()  # a failed first write leaves no empty run folder
            raise
        finally:
            frames.close()  # a stream's reader thread stops here too (Ctrl-C, a caller that stops early)
            self._close_videos()
        if self.save_dir is not None:
            if self.args["save_json"]:
                save_predictions_json(self.save_dir / "predictions.json", predictions)
            LOGGER.info(f"{n} picture(s) predicted; results saved to {self.save_dir}")

    @torch.no_grad()
    def _predict_chunk(self, chunk: list[Frame]) -> list[Results]:
        samples = []
        for f in chunk:
            h, w = f.img.shape[:2]
            sample = {"img": f.img, "cls": np.zeros(0, np.int64), "bboxes": np.zeros((0, 4), np.float32),
                      "im_file": f.path, "ori_shape": (h, w), "ratio_pad": ((1.0, 1.0), (0.0, 0.0))}
            samples.append(self.preprocess_pipeline(sample))
        batch = collate(samples)
        x = batch["img"].to(self.device)
        x = x.to(input_spec(self.model)[1])  # fp16 when the model was converted with half=true
        t0 = time.perf_counter()
        out = self.model(x)
        dets = self.model.head.postprocess(out, tuple(x.shape[2:]), conf=self.conf, iou=float(self.args["iou"]),
                                           max_det=int(self.args["max_det"]),
                                           multi_label=bool(self.args["multi_label"]))
        ms = 1000 * (time.perf_counter() - t0) / len(chunk)
        results = []
        for f, det, rp in zip(chunk, dets, batch["ratio_pad"]):
            boxes = boxes_to_original(det.boxes.float().cpu(), rp, f.img.shape[:2])
            results.append(Results(f.img, f.path, boxes, det.scores.float().cpu(), det.labels.long().cpu(),
                                   dict(self.model.names), f.frame, ms, uid=f.item.uid))
        return results

    # ------------------------------------------------------------------ saving
    def on_result(self, r: Results, f: Frame, predictions: list[dict]) -> Results:
        """What happens to each result before it is yielded: saved here; a tracker links it to tracks."""
        self._save(r, f, predictions)
        return r

    def _make_save_dir(self) -> Path:
        """The run folder, claimed with the first result: a source that fails at once leaves no folder."""
        if self.save_dir is None:
            self.save_dir = self.folder.path
        return self.save_dir

    def _save(self, r: Results, f: Frame, predictions: list[dict]) -> None:
        """Write what ``save`` / ``save_txt`` / ``save_json`` ask for, under names made from the item's unique
        id: the annotated picture as <id> (a video or stream as <stem>.mp4), labels/<stem>[_<frame>].txt, and
        <stem> (or the number of a numeric name) as the COCO image id."""
        if not self.saves:
            return
        self._make_save_dir()
        args = self.args
        if args["save"]:
            annotated = r.plot(line_width=args.get("line_width"))
            if f.video is None:
                self._write_picture(self.save_dir / picture_name(f), annotated)
            else:
                self._video_writer(f, annotated.shape[:2]).write(annotated)
        if args["save_txt"]:
            atomic_write_text(self.save_dir / "labels" / f"{frame_stem(f)}.txt",
                              "".join(f"{line}\n" for line in r.yolo_lines()))
        if args["save_json"]:
            image_id = f.item.coco_id if f.frame is None else frame_stem(f)
            predictions += coco_predictions(image_id, r.boxes, r.scores, r.labels)

    @staticmethod
    def _write_picture(path: Path, img: np.ndarray) -> None:
        ok, buf = cv2.imencode(path.suffix, img)
        if not ok:
            raise SourceError(f"cannot encode the annotated picture {path.name} as {path.suffix}")
        atomic_write_bytes(path, buf.tobytes())

    def _video_writer(self, f: Frame, shape: tuple[int, int]) -> cv2.VideoWriter:
        """The writer of an annotated video (<stem>.mp4). It writes to a hidden temporary file (an .mp4 too:
        OpenCV picks the container by the extension) that is renamed into place once the video is complete."""
        key = f.item.uid
        if key not in self._writers:
            h, w = shape
            out = self.save_dir / f"{f.item.stem}.mp4"
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.stem}.tmp.mp4")
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(f.video["fps"]), (w, h))
            self._writers[key] = writer
            self._video_files[key] = (tmp, out)
        return self._writers[key]

    def _close_videos(self) -> None:
        for key, writer in self._writers.items():
            writer.release()
            tmp, out = self._video_files.pop(key)
            if tmp.is_file():
                os.replace(tmp, out)
        self._writers.clear()
