"""Tracking: the detections of every frame linked into tracks with ids.

    rtdet track model=best.pt source=clip.mp4 tracker=bytetrack     # runs/track/track/clip.mp4, mot/clip.txt
    for r in Detector("best.pt").track("clip.mp4"):                  # one Results per frame
        r.ids, r.boxes, r.labels                                     # [n] track ids, [n, 4] xyxy, [n]

Detections come from the Predictor (so every family and ``.onnx`` models track the same way); association
is a maintained library's: Roboflow's ``trackers`` (Apache-2.0; ``pip install rtdet[track]``), which offers
ByteTrack, SORT and OC-SORT (``tracker=``). A result holds the tracked boxes only (a detection that no
track has confirmed yet is left out, as the tracker reports it with id -1).
The detection threshold ``conf`` is low by default (``verbs`` of ``conf`` in default.yaml: 0.1), because
ByteTrack and OC-SORT use the low-score detections of a frame to keep existing tracks alive (their own
thresholds start new tracks).

Each video or stream is one sequence with its own tracker; the still images of a source, in order, form
one more (``images``: a folder of MOT-style frames). With ``save`` (on in the CLI) the run folder gets, per
sequence, ``<stem>.mp4`` (boxes labelled ``#id class score``, coloured by track, and a trail of the last
``track_trail`` centres; still images are saved one by one under their ids) and ``mot/<stem>.txt`` with
one MOT row per tracked box: ``frame,id,x,y,w,h,conf,-1,-1,-1`` (frame numbers from 1, pixels).
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import IO

import cv2
import numpy as np
import torch

from rtdet.engine.predictor import Predictor, picture_name
from rtdet.engine.results import Results
from rtdet.engine.settings import SettingsError
from rtdet.engine.sources import Frame
from rtdet.utils.plotting import class_color, draw_detections

__all__ = ["TRACKERS", "Tracker", "make_tracker", "mot_rows"]

# tracker= -> the class of the `trackers` package
TRACKERS = {"bytetrack": "ByteTrackTracker", "sort": "SORTTracker", "ocsort": "OCSORTTracker"}
STILLS = "images"  # the sequence that the still images of a source form


def make_tracker(name: str, fps: float = 30.0):
    """A fresh tracker of the `trackers` package (``name`` one of TRACKERS) for a video of ``fps``."""
    try:
        import trackers
    except ImportError:
        raise SettingsError(f"tracker={name} needs the optional package 'trackers' (Roboflow, Apache-2.0): "
                            f"pip install 'rtdet[track]'") from None
    return getattr(trackers, TRACKERS[name])(frame_rate=float(fps))


def track_frame(tracker, r: Results) -> Results:
    """``r`` with only the boxes the tracker confirmed, and their ids (``Results.ids``, from 1 as in MOT files;
    the library counts from 0)."""
    import supervision as sv

    dets = sv.Detections(xyxy=r.boxes.numpy().astype(np.float32).reshape(-1, 4),
                         confidence=r.scores.numpy().astype(np.float32), class_id=r.labels.numpy().astype(int))
    out = tracker.update(dets)
    keep = np.asarray(out.tracker_id, dtype=np.int64) >= 0
    xyxy = np.asarray(out.xyxy, np.float32).reshape(-1, 4)[keep]
    return Results(r.orig_img, r.path, torch.from_numpy(xyxy), torch.from_numpy(np.asarray(out.confidence,
                   np.float32)[keep]), torch.from_numpy(np.asarray(out.class_id, np.int64)[keep]), r.names, r.frame,
                   r.speed_ms, uid=r.uid, ids=torch.from_numpy(np.asarray(out.tracker_id, np.int64)[keep] + 1))


def mot_rows(r: Results, frame: int) -> list[str]:
    """MOT rows 'frame,id,x,y,w,h,conf,-1,-1,-1' (top-left corner, width, height in pixels)."""
    b = r.boxes.tolist()
    return [f"{frame},{int(i)},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{float(s):.4f},-1,-1,-1"
            for (x1, y1, x2, y2), i, s in zip(b, r.ids.tolist(), r.scores.tolist())]


def draw_tracks(r: Results, trails: dict[int, deque], line_width: int | None = None) -> np.ndarray:
    """The frame with each tracked box labelled '#id class score' in its track's colour, and its trail."""
    ids = r.ids.numpy()
    names = {int(i): f"#{int(i)} {r.names.get(int(c), str(int(c)))}" for i, c in zip(ids, r.labels.tolist())}
    out = draw_detections(r.orig_img, r.boxes.numpy(), r.scores.numpy(), ids, names, line_width)
    lw = max(int(line_width or 2), 1)
    for i, pts in trails.items():
        if len(pts) > 1:
            cv2.polylines(out, [np.array(pts, np.int32).reshape(-1, 1, 2)], False, class_color(i), lw, cv2.LINE_AA)
    return out


class _Sequence:
    """One video, stream or run of still images being tracked: its tracker, trails and MOT file (written to a
    hidden temporary name, renamed into place when the sequence ends)."""

    def __init__(self, fps: float, tracker_name: str, trail: int, mot_path: Path | None):
        self.tracker = make_tracker(tracker_name, fps)
        self.trails: dict[int, deque] = {}
        self.trail = trail
        self.n = 0
        self.mot_path = mot_path
        self.tmp: Path | None = None
        self.fh: IO[str] | None = None
        if mot_path is not None:
            mot_path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = mot_path.with_name(f".{mot_path.name}.tmp")
            self.fh = self.tmp.open("w")

    def add(self, r: Results) -> Results:
        self.n += 1
        tracked = track_frame(self.tracker, r)
        for i, (x1, y1, x2, y2) in zip(tracked.ids.tolist(), tracked.boxes.tolist()):
            self.trails.setdefault(i, deque(maxlen=max(self.trail, 1))).append((round((x1 + x2) / 2),
                                                                               round((y1 + y2) / 2)))
        if self.fh is not None:
            frame = r.frame + 1 if r.frame is not None else self.n
            self.fh.write("".join(f"{row}\n" for row in mot_rows(tracked, frame)))
            self.fh.flush()
        return tracked

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            os.replace(self.tmp, self.mot_path)
            self.fh = None


class Tracker(Predictor):
    """The Predictor's detections, frame after frame, through a tracker (see the module docstring)."""

    task = "track"

    def __init__(self, overrides: dict | None = None, model=None):
        super().__init__(overrides, model)
        self._seq: _Sequence | None = None
        self._seq_key: str | None = None

    def setup(self) -> None:
        super().setup()
        if self.args["save_txt"] or self.args["save_json"]:
            raise SettingsError("save_txt / save_json are predict settings: track writes one MOT file per video or "
                                "stream (mot/<stem>.txt) with save=true")
        make_tracker(self.args["tracker"])  # a missing package fails here, before any run folder
        self.saves = bool(self.args["save"])

    def on_result(self, r: Results, f: Frame, predictions: list[dict]) -> Results:
        key = f.item.uid if f.frame is not None else STILLS
        if key != self._seq_key:
            self._end_sequence()
            stem = f.item.stem if f.frame is not None else STILLS
            mot = self._make_save_dir() / "mot" / f"{stem}.txt" if self.saves else None
            fps = f.video["fps"] if f.video else 30.0
            self._seq = _Sequence(fps, self.args["tracker"], int(self.args["track_trail"]), mot)
            self._seq_key = key
        tracked = self._seq.add(r)
        if self.saves:
            trails = self._seq.trails if self.args["track_trail"] else {}
            annotated = draw_tracks(tracked, {i: trails[i] for i in tracked.ids.tolist() if i in trails},
                                    self.args.get("line_width"))
            if f.video is None:
                self._write_picture(self.save_dir / picture_name(f), annotated)
            else:
                self._video_writer(f, annotated.shape[:2]).write(annotated)
        return tracked

    def _end_sequence(self) -> None:
        if self._seq is not None:
            self._seq.close()
        self._seq, self._seq_key = None, None

    def _close_videos(self) -> None:
        self._end_sequence()
        super()._close_videos()
