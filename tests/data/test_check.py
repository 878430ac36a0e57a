"""`rtdet data check`: a report with counts and problems, a chart of the labels and a grid of augmented
samples, all written as files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from rtdet.data.check import run_check
from rtdet.data.synthetic import make_synthetic_dataset
from tests.data.datahelpers import make_yolo_dataset


def test_check_reports_problems_and_writes_pictures(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDET_CACHE_DIR", str(tmp_path / "cache"))
    y = make_yolo_dataset(tmp_path / "ds", {"a": "0 0.5 0.5 0.5 0.5\n1 0.5 0.5 0.5\n", "b": "0 0.2 0.2 0.2 0.2\n",
                                            "c": None})
    report = run_check(str(y), str(tmp_path / "out"), imgsz=64, n_samples=4)
    train = report["splits"]["train"]
    assert train["images"] == 3 and train["instances"] == 2 and train["background"] == 1
    assert train["per_class"] == {"a": 2, "b": 0, "c": 0} and train["empty_classes"] == ["b", "c"]
    assert train["problems"] == {"row_fields": 1}
    p = train["problem_list"][0]
    assert p["file"].endswith("a.txt") and p["line"] == 2 and p["action"] == "row dropped"
    assert report["ok"] is False
    for key in ("labels_train", "labels_val", "train_samples"):
        img = cv2.imread(report["files"][key])
        assert img is not None and img.shape[0] > 100
    assert json.loads((tmp_path / "out" / "report.json").read_text())["splits"]["train"]["images"] == 3


def test_check_on_a_clean_set_with_another_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDET_CACHE_DIR", str(tmp_path / "cache"))
    y = make_synthetic_dataset(tmp_path / "shapes", n_train=8, n_val=2, imgsz=64)
    report = run_check(str(y), str(tmp_path / "out"), imgsz=64, n_samples=9, recipe_pipeline="rtmdet")
    assert report["ok"] is True and report["pipeline"]["name"] == "rtmdet"
    grid = cv2.imread(report["files"]["train_samples"])
    assert grid.shape[0] == grid.shape[1] == 3 * 384


def test_verdict_count_and_exit_status_agree(tmp_path, monkeypatch, capsys):
    """A set where no image has a label is not OK; a problem count of 0 is always OK (issue 8)."""
    from rtdet.cli import main

    monkeypatch.setenv("RTDET_CACHE_DIR", str(tmp_path / "cache"))
    y = make_yolo_dataset(tmp_path / "bare", {"a": None, "b": None})
    report = run_check(str(y), str(tmp_path / "out"), imgsz=32, n_samples=1)
    assert report["ok"] is False and report["n_problems"] == 2  # train and val: no labelled box
    assert all("has a labelled box" in issue for issue in report["issues"])
    assert main(["data", "check", f"data={y}", "imgsz=32", "n_samples=1", f"project={tmp_path / 'r'}"]) == 1
    assert "data check: 2 problems found" in capsys.readouterr().out
    clean = make_synthetic_dataset(tmp_path / "shapes", n_train=4, n_val=2, imgsz=64)
    assert main(["data", "check", f"data={clean}", "imgsz=64", "n_samples=1", f"project={tmp_path / 'r'}"]) == 0
    out = capsys.readouterr().out
    assert "data check: OK" in out and "0 problems" in out and "problems found" not in out


def test_check_train_and_val_treat_a_truncated_jpeg_alike(tmp_path, monkeypatch, caplog):
    """One decoder everywhere: the check keeps a truncated JPEG, and training and validation read it too,
    without 'cannot be decoded any more' and without substituting another image."""
    from rtdet.data.dataset import DetectionDataset

    monkeypatch.setenv("RTDET_CACHE_DIR", str(tmp_path / "cache"))
    y = make_yolo_dataset(tmp_path / "ds", {"a": "0 0.5 0.5 0.5 0.5\n", "b": "1 0.3 0.3 0.2 0.2\n"}, h=240, w=320)
    jpg = tmp_path / "ds" / "images" / "train" / "a.jpg"
    cv2.imwrite(str(jpg), (np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8))
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 3])  # cut two thirds off
    report = run_check(str(y), str(tmp_path / "out"), imgsz=64, n_samples=2)
    kinds = {p["kind"]: p["action"] for p in report["splits"]["train"]["problem_list"]}
    assert kinds == {"image_truncated": "kept, decoded as far as the data goes"}
    assert report["splits"]["train"]["images"] == 2
    for augment in (True, False):  # training reads it at a reduced size, validation in full
        ds = DetectionDataset(y, "train", 64, "plain", augment=augment, verbose=False)
        i = ds.im_files.index(str(jpg))
        s = ds[i]
        assert s["im_file"] == str(jpg) and not s.get("unreadable") and len(s["cls"]) == 1
    assert "cannot be decoded any more" not in caplog.text


def test_a_folder_symlink_back_up_is_read_once(tmp_path, monkeypatch):
    """images/selfdir -> . used to turn 16 images into 574: each real folder and file is read once, and the
    repeat is reported."""
    import os

    monkeypatch.setenv("RTDET_CACHE_DIR", str(tmp_path / "cache"))
    y = make_yolo_dataset(tmp_path / "ds", {f"im{k}": "0 0.5 0.5 0.2 0.2\n" for k in range(16)})
    images = tmp_path / "ds" / "images" / "train"
    os.symlink(".", images / "selfdir")
    os.symlink(str(images / "im3.jpg"), images / "again.jpg")  # one file under a second name
    report = run_check(str(y), str(tmp_path / "out"), imgsz=32, n_samples=1)
    train = report["splits"]["train"]
    assert train["images"] == 16 and train["instances"] == 16  # im3 keeps its own labels
    assert train["problems"] == {"folder_repeat": 1, "image_duplicate": 1}
    dup = next(p for p in train["problem_list"] if p["kind"] == "image_duplicate")
    assert dup["file"].endswith("again.jpg") and "im3.jpg" in dup["message"]


def test_two_sources_of_a_split_that_overlap_hold_each_image_once(tmp_path, monkeypatch):
    from rtdet.data.dataset import DetectionDataset

    monkeypatch.setenv("RTDET_CACHE_DIR", str(tmp_path / "cache"))
    make_yolo_dataset(tmp_path / "ds", {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.4 0.4\n"})
    y = tmp_path / "ds" / "two.yaml"
    y.write_text("path: .\ntrain: [images/train, images/train/b.jpg]\nval: images/train\nnames: [a, b, c]\n")
    ds = DetectionDataset(y, "train", 64, "plain", verbose=False)
    assert sorted(Path(f).name for f in ds.im_files) == ["a.jpg", "b.jpg"]
    assert [p.kind for p in ds.labels.problems] == ["image_duplicate"]
    assert [ds.labels.labels(i)[0].tolist() for i in range(2)] == [[0], [1]]  # labels follow their images
