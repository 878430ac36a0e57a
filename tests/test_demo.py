"""`rtdet demo`: the whole loop on synthetic data, and that it really learns (slow)."""

import pytest
import torch

from rtdet.demo import family_demo_settings, run_demo
from rtdet.engine.settings import SettingsError


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
