"""Tracking: ids stay with their objects, the MOT file parses, every family and ONNX track the same way."""

import sys

import cv2
import numpy as np
import pytest
import torch

from rtdet.data.synthetic_tracks import render_track_clip, write_mot, write_video
from rtdet.engine.results import Results
from rtdet.engine.tracker import TRACKERS, Tracker, make_tracker, mot_rows, track_frame
from rtdet.io.load import build_model
from rtdet.nn.heads.base import Detections

trackers = pytest.importorskip("trackers", reason="tracking needs the optional package: pip install 'rtdet[track]'")
from trackers.eval import evaluate_mot_sequence  # noqa: E402


def _read_mot(path) -> np.ndarray:
    """A MOT result file as an array; every row has the 10 fields frame,id,x,y,w,h,conf,-1,-1,-1."""
    rows = [line.split(",") for line in path.read_text().splitlines()]
    assert rows and all(len(r) == 10 and r[7:] == ["-1", "-1", "-1"] for r in rows), rows[:3]
    return np.array(rows, np.float64)


@pytest.mark.parametrize("name", sorted(TRACKERS))
def test_a_near_perfect_detector_keeps_every_identity(name, tmp_path):
    """Ground-truth boxes with 1.5 px noise, through the tracker: (almost) no identity switch, and the library's
    own evaluation reads our MOT rows."""
    frames, gt = render_track_clip(n_frames=50, n_objects=5, imgsz=256, seed=0)
    write_mot(tmp_path / "gt.txt", gt)
    noise = np.random.default_rng(1)
    tracker, rows = make_tracker(name, fps=15), []
    for t, img in enumerate(frames, 1):
        here = gt[gt[:, 0] == t]
        boxes = torch.tensor(here[:, 3:7] + noise.normal(0, 1.5, (len(here), 4)), dtype=torch.float32)
        r = Results(img, "clip", boxes, torch.full((len(here),), 0.9), torch.tensor(here[:, 2]).long(), {}, t - 1)
        rows += mot_rows(track_frame(tracker, r), t)
    (tmp_path / "ours.txt").write_text("".join(f"{row}\n" for row in rows))
    assert _read_mot(tmp_path / "ours.txt").shape[1] == 10
    result = evaluate_mot_sequence(tmp_path / "gt.txt", tmp_path / "ours.txt", metrics=["CLEAR", "Identity"])
    assert result.CLEAR.IDSW <= 1 and result.CLEAR.MOTA > 0.9 and result.Identity.IDF1 > 0.9


def _fixed_postprocess(head):
    """The head's postprocess replaced by one box that moves 2 px a frame (the network itself still runs):
    the same answer for every family, through the head interface the engine uses."""
    calls = []

    def postprocess(outputs, img_shape, conf, iou, max_det, multi_label=False):
        k = len(calls)
        calls.append(k)
        box = torch.tensor([[8.0 + 2 * k, 10.0, 30.0 + 2 * k, 34.0]])
        return [Detections(box, torch.tensor([0.9]), torch.tensor([1]))]

    head.postprocess = postprocess


@pytest.fixture
def clip(tmp_path):
    frames, _ = render_track_clip(n_frames=8, n_objects=2, imgsz=64, seed=0, size_range=(0.3, 0.4))
    return write_video(tmp_path / "clip.avi", frames, fps=10)


@pytest.mark.parametrize("family", ["rtdetr", "yolov9", "rtmdet"])
def test_every_family_tracks_into_a_video_and_a_mot_file(family, clip, tmp_path, tiny_yaml, tiny_yolo_yaml,
                                                         rtmdet_yaml):
    yaml = {"rtdetr": tiny_yaml, "yolov9": tiny_yolo_yaml, "rtmdet": rtmdet_yaml}[family]
    model = build_model(str(yaml), nc=2, names=["a", "b"]).eval()
    _fixed_postprocess(model.head)
    tracker = Tracker({"imgsz": 64, "batch": 1, "fuse": False, "save": True, "project": str(tmp_path / "runs"),
                       "verbose": False}, model=model)
    results = list(tracker.stream(str(clip)))
    assert len(results) == 8 and all(r.ids is not None and len(r.ids) == len(r) for r in results)
    out = tracker.save_dir
    assert out.name == "track" and out.parent.name == "track"
    mot = _read_mot(out / "mot" / "clip.txt")
    assert set(mot[:, 1]) == {1.0} and mot[:, 0].tolist() == list(range(9 - len(mot), 9))  # one id, to the end
    assert len(mot) >= 6 and np.diff(mot[:, 2]) == pytest.approx(2.0, abs=0.1)  # x moves 2 px a frame
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    cap.release()


def test_still_images_form_one_sequence(tmp_path, tiny_yaml):
    frames, _ = render_track_clip(n_frames=5, n_objects=1, imgsz=64, seed=0)
    (tmp_path / "seq").mkdir()
    for k, img in enumerate(frames):
        cv2.imwrite(str(tmp_path / "seq" / f"{k:06d}.jpg"), img)
    model = build_model(str(tiny_yaml), nc=2, names=["a", "b"]).eval()
    _fixed_postprocess(model.head)
    tracker = Tracker({"imgsz": 64, "batch": 1, "fuse": False, "save": True, "project": str(tmp_path / "runs"),
                       "verbose": False}, model=model)
    results = list(tracker.stream(str(tmp_path / "seq")))
    assert [len(r) for r in results][-3:] == [1, 1, 1] and {int(i) for r in results for i in r.ids} == {1}
    mot = _read_mot(tracker.save_dir / "mot" / "images.txt")
    assert mot[:, 0].tolist() == list(range(6 - len(mot), 6))  # frame numbers 1..5 along the sequence
    assert sorted(p.name for p in tracker.save_dir.glob("*.jpg")) == [f"{k:06d}.jpg" for k in range(5)]


def test_tracking_an_onnx_model(clip, tmp_path, tiny_yaml):
    pytest.importorskip("onnxruntime")
    from rtdet.engine.exporter import Exporter

    onnx = Exporter({"model": str(tiny_yaml), "imgsz": 64, "project": str(tmp_path / "export"), "verbose": False})()
    tracker = Tracker({"batch": 1, "save": True, "project": str(tmp_path / "runs"), "verbose": False},
                      model=str(onnx))
    tracker.setup()
    assert type(tracker.model).__name__ != "DetectionModel"  # ONNX Runtime runs the network
    _fixed_postprocess(tracker.model.head)
    results = list(tracker.stream(str(clip)))
    assert len(results) == 8 and [len(r) for r in results][-6:] == [1] * 6
    mot = _read_mot(tracker.save_dir / "mot" / "clip.txt")
    assert set(mot[:, 1]) == {1.0} and len(mot) >= 6


def test_rtdet_track_on_the_command_line(clip, tmp_path, tiny_yaml, capsys):
    from rtdet.cli import main

    assert main(["track", f"model={tiny_yaml}", f"source={clip}", "imgsz=64", "conf=0.0", "max_det=3",
                 "tracker=sort", f"project={tmp_path / 'runs'}", "verbose=false"]) == 0
    assert "8 frame(s) tracked" in capsys.readouterr().out
    out = tmp_path / "runs" / "track" / "track"
    assert (out / "clip.mp4").is_file() and (out / "mot" / "clip.txt").is_file()
    assert main(["track", f"model={tiny_yaml}", f"source={clip}", "tracker=deepsort"]) == 2  # a bad setting
    err = capsys.readouterr().err
    assert "tracker" in err and "bytetrack" in err and len(err.strip().splitlines()) == 1
    assert main(["track", f"model={tiny_yaml}", f"source={clip}", "save_txt=true", "name=refused",
                 f"project={tmp_path / 'runs'}"]) == 2  # MOT files, not YOLO labels: said, before any folder
    assert "mot/<stem>.txt" in capsys.readouterr().err and not (tmp_path / "runs" / "track" / "refused").exists()


def test_without_the_tracking_package_the_message_says_what_to_install(monkeypatch):
    from rtdet.engine.settings import SettingsError

    monkeypatch.setitem(sys.modules, "trackers", None)  # as if not installed: import raises ImportError
    with pytest.raises(SettingsError, match=r"pip install 'rtdet\[track\]'"):
        make_tracker("ocsort")
