"""Predictor: detections on images, folders, globs, videos and numpy arrays.

    results = Predictor({"model": "best.pt", "conf": 0.3})("images/")     # list[Results]
    for r in Predictor({"model": "best.pt"}).stream("video.mp4"): ...    # one Results per frame

Images are prepared with the same deterministic transforms validation uses (the val part of the pipeline
the model was trained with: letterbox or stretch to ``imgsz``), the model runs in eval mode, the head's
``postprocess`` gives boxes in network-input pixels, and ``ratio_pad`` maps them back to the image.
Annotated images / videos go to ``runs/predict/<name>`` (``save``), with optional YOLO txt labels
(``save_txt``) and a COCO ``predictions.json`` (``save_json``).
"""

from __future__ import annotations

import contextlib
import copy
import glob
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from rtdet.data import build_pipeline, collate, load_pipeline_spec
from rtdet.engine.errors import SourceError
from rtdet.engine.results import Results
from rtdet.engine.rundir import run_dir
from rtdet.engine.settings import SettingsError, check_imgsz, check_settings, file_settings, resolve_settings
from rtdet.engine.validator import image_id_of, input_spec
from rtdet.io.load import load_model
from rtdet.nn.model import DetectionModel
from rtdet.ops.boxes import boxes_to_original
from rtdet.ops.metrics import coco_predictions, save_predictions_json
from rtdet.utils.checkpoint import atomic_write_bytes, atomic_write_text
from rtdet.utils.logging import LOGGER, set_verbosity
from rtdet.utils.torch_utils import select_device

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "Predictor", "iter_source"]

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpeg", ".mpg", ".wmv", ".webm")
PREDICT_CONF = 0.25


# ---------------------------------------------------------------------------------- sources
def _expand(source) -> Iterator[tuple[str, np.ndarray | str]]:
    """(kind, item): ('array', ndarray) | ('image', path) | ('video', path), in a stable order."""
    if isinstance(source, np.ndarray):
        yield "array", source
        return
    if isinstance(source, list | tuple):
        for s in source:
            yield from _expand(s)
        return
    if not isinstance(source, str | Path):
        raise SourceError(f"source: expected a path, a glob, a numpy array (HWC BGR) or a list of them; "
                          f"got {type(source).__name__}")
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"source '{text}': the folder holds no images or videos "
                                    f"({' '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
        for f in files:
            yield from _expand(f)
        return
    if any(ch in text for ch in "*?["):
        files = sorted(p for p in glob.glob(text, recursive=True)
                       if Path(p).suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"source '{text}': the pattern matches no image or video files")
        for f in files:
            yield from _expand(f)
        return
    if not path.is_file():
        raise FileNotFoundError(f"source '{text}': no such file or folder")
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        yield "video", str(path)
    elif suffix in IMAGE_SUFFIXES:
        yield "image", str(path)
    else:
        raise SourceError(f"source '{text}': unknown file type '{suffix}'; images: {' '.join(IMAGE_SUFFIXES)}, "
                          f"videos: {' '.join(VIDEO_SUFFIXES)}")


def iter_source(source) -> Iterator[tuple[np.ndarray, str, int | None, dict | None]]:
    """Every picture of a source as (BGR image, path, frame index or None, video info or None)."""
    n_arrays = 0
    for kind, item in _expand(source):
        if kind == "array":
            img = item
            if img.ndim == 2:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
            if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
                raise SourceError(f"source array {n_arrays}: expected an HWC uint8 BGR image, got shape "
                                  f"{img.shape} dtype {img.dtype}")
            if img.shape[2] == 4:
                img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
            yield img, f"image{n_arrays}.jpg", None, None
            n_arrays += 1
        elif kind == "image":
            yield _read_image(item), item, None, None
        else:
            yield from _read_video(item)


def _read_image(path: str) -> np.ndarray:
    """A BGR image; SourceError naming the file when it cannot be decoded."""
    with opencv_messages() as said:
        img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise SourceError(f"source '{path}': cannot be decoded as an image{_said(said)}; the file may be truncated "
                          f"or not an image")
    return img


def _read_video(path: str) -> Iterator[tuple[np.ndarray, str, int, dict]]:
    """Every frame of a video; SourceError naming the file (and what OpenCV / FFmpeg said) when it cannot be
    opened or holds no frame. Stopping before the frame count its header promises is reported, not hidden."""
    with opencv_messages() as said:
        cap = cv2.VideoCapture(path)
        ok, frame = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        what = "cannot open this video" if not cap.isOpened() else "cannot read a single frame of this video"
        raise SourceError(f"source '{path}': OpenCV {what}{_said(said)}; the file may be truncated, corrupt or in "
                          f"a format this OpenCV build does not decode")
    info = {"fps": cap.get(cv2.CAP_PROP_FPS) or 25.0, "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)}
    k = 0
    try:
        while ok:
            yield frame, path, k, info
            k += 1
            ok, frame = cap.read()
    finally:
        cap.release()
    if 0 < k < info["frames"]:
        LOGGER.warning(f"source '{path}': read {k} of the {info['frames']} frames its header announces; the rest "
                       f"cannot be decoded (truncated file?)")


@contextlib.contextmanager
def opencv_messages() -> Iterator[list[str]]:
    """What OpenCV and FFmpeg print on the process's stderr (C code, not Python warnings) while the block
    runs, as a list of lines filled in on exit; errors can then quote it instead of hiding it."""
    said: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreter): nothing to capture
        yield said
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            said += [line.strip() for line in tmp.read().decode(errors="replace").splitlines() if line.strip()]


def _said(lines: list[str]) -> str:
    """' (OpenCV: moov atom not found)' with the distinct messages, '' when it said nothing."""
    text = "; ".join(dict.fromkeys(re.sub(r"^\[[^]]*\]\s*", "", line) for line in lines))
    return f" (OpenCV: {text[:300]})" if text else ""


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


# ---------------------------------------------------------------------------------- predictor
class Predictor:
    """Detections for every picture of a source (see the module docstring)."""

    task = "predict"

    def __init__(self, overrides: dict | None = None, model: DetectionModel | None = None):
        self.overrides = check_settings(overrides, "predict")  # bad values stop here, before any work
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
        loaded = load_model(self.model_spec)
        model, inherited = loaded.model, file_settings(loaded, user)  # checked like the command line's
        args = resolve_settings({**inherited, **user}, family=model.head.family, verb="predict")
        check_imgsz(args, model)
        set_verbosity(bool(args["verbose"]))
        self.args = args
        self.device = select_device(args["device"])
        self.model = prepare_for_inference(model.to(self.device).eval(), bool(args["fuse"]),
                                           bool(args["channels_last"]) and self.device.type == "cpu")
        if args["half"] and self.device.type == "cuda":
            self.model = self.model.half()
        spec = load_pipeline_spec(args.get("val_pipeline") or args.get("train_pipeline") or None)
        self.preprocess_pipeline = build_pipeline(spec.val, int(args["imgsz"]))
        self.conf = PREDICT_CONF if args.get("conf") is None else float(args["conf"])
        self.saves = bool(args["save"] or args["save_txt"] or args["save_json"])

    def __call__(self, source=None) -> list[Results]:
        """All results in a list (for a long video prefer :meth:`stream`, which keeps no frames)."""
        return list(self.stream(source))

    def stream(self, source=None) -> Iterator[Results]:
        if self.model is None:
            self.setup()
        source = source if source is not None else self.overrides.get("source")
        if source is None:
            raise SettingsError("predict needs a source: an image, a folder, a glob, a video or a numpy array")
        predictions: list[dict] = []
        n = 0
        try:
            for chunk in _chunks(iter_source(source), max(int(self.args["batch"]), 1)):
                for r, info in zip(self._predict_chunk(chunk), (c[3] for c in chunk)):
                    self._save(r, info, predictions)
                    n += 1
                    yield r
        finally:
            self._close_videos()
        if self.save_dir is not None:
            if self.args["save_json"]:
                save_predictions_json(self.save_dir / "predictions.json", predictions)
            LOGGER.info(f"{n} picture(s) predicted; results saved to {self.save_dir}")

    @torch.no_grad()
    def _predict_chunk(self, chunk: list[tuple]) -> list[Results]:
        samples = []
        for img, path, _, _ in chunk:
            h, w = img.shape[:2]
            sample = {"img": img, "cls": np.zeros(0, np.int64), "bboxes": np.zeros((0, 4), np.float32),
                      "im_file": path, "ori_shape": (h, w), "ratio_pad": ((1.0, 1.0), (0.0, 0.0))}
            samples.append(self.preprocess_pipeline(sample))
        batch = collate(samples)
        x = batch["img"].to(self.device)
        x = x.to(input_spec(self.model)[1])  # fp16 when the model was converted with half=true
        t0 = time.perf_counter()
        out = self.model(x)
        dets = self.model.head.postprocess(out, tuple(x.shape[2:]), conf=self.conf, iou=float(self.args["iou"]),
                                           max_det=int(self.args["max_det"]),
                                           multi_label=bool(self.args.get("multi_label") or False))
        ms = 1000 * (time.perf_counter() - t0) / len(chunk)
        results = []
        for (img, path, frame, _), det, rp in zip(chunk, dets, batch["ratio_pad"]):
            boxes = boxes_to_original(det.boxes.float().cpu(), rp, img.shape[:2])
            results.append(Results(img, path, boxes, det.scores.float().cpu(), det.labels.long().cpu(),
                                   dict(self.model.names), frame, ms))
        return results

    # ------------------------------------------------------------------ saving
    def _stem(self, r: Results) -> str:
        stem = Path(r.path).stem
        return f"{stem}_{r.frame}" if r.frame is not None else stem

    def _save(self, r: Results, video: dict | None, predictions: list[dict]) -> None:
        if not self.saves:
            return
        if self.save_dir is None:  # made with the first result: a source that fails at once leaves no folder
            args = self.args
            self.save_dir = run_dir(args["project"], self.task, args.get("name"), bool(args["exist_ok"]))
        args = self.args
        if args["save"]:
            annotated = r.plot(line_width=args.get("line_width"))
            if video is None:
                name = Path(r.path).name if Path(r.path).suffix else f"{Path(r.path).stem}.jpg"
                ok, buf = cv2.imencode(Path(name).suffix or ".jpg", annotated)
                if not ok:
                    raise SourceError(f"cannot encode the annotated picture of {r.path} as {Path(name).suffix}")
                atomic_write_bytes(self.save_dir / name, buf.tobytes())
            else:
                self._video_writer(r, video).write(annotated)
        if args["save_txt"]:
            atomic_write_text(self.save_dir / "labels" / f"{self._stem(r)}.txt",
                              "".join(f"{line}\n" for line in r.yolo_lines()))
        if args["save_json"]:
            predictions += coco_predictions(image_id_of(self._stem(r), len(predictions)), r.boxes, r.scores, r.labels)

    def _video_writer(self, r: Results, video: dict) -> cv2.VideoWriter:
        """The writer of an annotated video. It writes to a hidden temporary file (an .mp4 too: OpenCV picks
        the container by the extension) that is renamed into place once the video is complete."""
        key = r.path
        if key not in self._writers:
            h, w = r.orig_shape
            out = self.save_dir / f"{Path(r.path).stem}.mp4"
            tmp = out.with_name(f".{out.stem}.tmp.mp4")
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(video["fps"]), (w, h))
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
