"""`rtdet demo`: the whole loop on synthetic data, and that it really learns (slow)."""

import math
import re

import pytest
import torch
import yaml

from rtdet import build_model
from rtdet.demo import DEMO_DATA, family_demo_settings, run_demo
from rtdet.engine.settings import SettingsError, check_settings
from rtdet.nn.builder import MODELS_DIR
from rtdet.nn.model import count_parameters


@pytest.mark.slow
def test_demo_reaches_map50_of_one_half(tmp_path):
    """The default demo (minutes on 2 CPU cores) must reach mAP50 >= 0.5 on the synthetic val split."""
    torch.set_num_threads(2)
    out = run_demo(project=str(tmp_path / "demo"), verbose=False)
    assert out["metrics"]["mAP50"] >= 0.5, out["metrics"]
    assert (out["train_dir"] / "weights" / "best.pt").is_file() and (out["train_dir"] / "results.png").is_file()
    assert len(list(out["predict_dir"].glob("*.jpg"))) == 8


@pytest.mark.slow
def test_yolo_demo_reaches_map50_of_one_half(tmp_path):
    """`rtdet demo model=yolov9-demo.yaml`: the small GELAN with its family's demo settings, same bar."""
    torch.set_num_threads(2)
    out = run_demo(model="yolov9-demo.yaml", project=str(tmp_path / "demo"), verbose=False)
    assert out["metrics"]["mAP50"] >= 0.5, out["metrics"]
    args = out["train_dir"] / "args.yaml"
    assert "optimizer: SGD" in args.read_text()  # the YOLOv9 recipe, with cfg/demo/yolov9.yaml on top
    assert family_demo_settings("yolov9")["nbs"] == 0 and family_demo_settings("nonexistent") == {}


@pytest.mark.slow
def test_rtmdet_demo_reaches_map50_of_one_half(tmp_path):
    """`rtdet demo model=rtmdet-tiny.yaml`: the RTMDet recipe with cfg/demo/rtmdet.yaml on top, same bar."""
    torch.set_num_threads(2)
    out = run_demo(model="rtmdet-tiny.yaml", project=str(tmp_path / "demo"), verbose=False)
    assert out["metrics"]["mAP50"] >= 0.5, out["metrics"]
    assert "optimizer: AdamW" in (out["train_dir"] / "args.yaml").read_text()
    assert family_demo_settings("rtmdet")["lr_batch"] == 0  # this run's own lr, not scaled from batch 256


def test_demo_rejects_unknown_settings(tmp_path):
    with pytest.raises(SettingsError, match="epochs"):
        run_demo(epoch=1, project=str(tmp_path))


def test_dfine_demo_settings_resolve():
    """cfg/demo/dfine.yaml: every key a known train setting of the D-FINE family (its loss keys included)
    with a valid value, and what the short run changes from the D-FINE recipe really differs from it."""
    demo = family_demo_settings("dfine")
    checked = check_settings(demo, "train", family="dfine")  # raises on an unknown key or a bad value
    assert checked.keys() == demo.keys() and checked["multi_scale"] is None  # false: one size, as checked
    assert demo["scheduler"] == "cosine" and demo["train_pipeline"] == "plain"
    assert demo["lr0"] > 2.0e-4 and demo["backbone_lr_ratio"] == 1.0  # recipe: 2e-4, backbone at 0.5


def test_dfine_demo_header_counts():
    """dfine-demo.yaml's header gives its parameters (4 classes) to the digit and its GFLOPs at 256."""
    text = (MODELS_DIR / "dfine" / "dfine-demo.yaml").read_text()
    params, gflops = re.search(r"([\d,]+) parameters for 4 classes, ([\d.]+) GFLOPs at 256", text).groups()
    model = build_model("dfine-demo.yaml", nc=4)
    assert count_parameters(model) == int(params.replace(",", ""))
    assert f"{model.flops(256):.2f}" == gflops


def test_dfine_demo_runs_one_step(tmp_path, monkeypatch):
    """`rtdet demo model=dfine-demo.yaml` end to end, tiny: one training step of 8 images at 64 px through the
    demo path (D-FINE recipe + cfg/demo/dfine.yaml), then predict. The slow figures: docs/benchmarks.md."""
    torch.set_num_threads(1)
    monkeypatch.setitem(DEMO_DATA, "n_train", 8)
    monkeypatch.setitem(DEMO_DATA, "n_val", 8)
    out = run_demo(model="dfine-demo.yaml", project=str(tmp_path / "demo"), epochs=1, imgsz=64, val=False,
                   plots=False, verbose=False)
    args = yaml.safe_load((out["train_dir"] / "args.yaml").read_text())
    assert args["optimizer"] == "AdamW" and args["clip_grad"] == 1.0 and args["lr0"] == 1.0e-3  # recipe + demo
    assert args["loss"] == "mal" and args["loss_fgl"] == 0.5  # the demo trains with DEIM's loss
    row = (out["train_dir"] / "results.csv").read_text().splitlines()
    losses = dict(zip(row[0].split(","), row[1].split(","), strict=True))
    assert all(math.isfinite(float(losses[k])) and float(losses[k]) > 0 for k in ("train/mal", "train/fgl", "train/dn"))
    assert (out["train_dir"] / "weights" / "last.pt").is_file() and len(list(out["predict_dir"].glob("*.jpg"))) == 8
