"""`rtdet data check`: a report with counts and problems, a chart of the labels and a grid of augmented
samples, all written as files."""

from __future__ import annotations

import json

import cv2

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
