"""Python API: Detector builds, trains, reloads, validates and predicts."""

import numpy as np
import pytest
import torch

from rtdet.api import Detector
from rtdet.engine.results import Results
from rtdet.nn.model import DetectionModel
from tests.tiny_models import tiny_rtdetr_yaml

TINY = tiny_rtdetr_yaml(nc=2, queries=10, denoising=10)


pytestmark = pytest.mark.usefixtures("single_thread")


def test_build_and_info(capsys):
    det = Detector("rtdetr-demo.yaml", nc=5)
    assert isinstance(det.model, DetectionModel) and det.model.nc == 5
    assert det.model.head.family == "rtdetr"
    summary = det.info(imgsz=64, verbose=False)
    assert summary.startswith("rtdetr-demo summary:") and "parameters" in summary
    assert repr(det) == "Detector(rtdetr-demo, nc=5, family=rtdetr)"


def test_train_reload_val_predict(tmp_path):
    from rtdet.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, imgsz=64, n_classes=2,
                                  size_range=(0.3, 0.6), max_objects=2)
    yaml_path = tmp_path / "tiny.yaml"
    yaml_path.write_text(TINY)
    det = Detector(str(yaml_path))
    metrics = det.train(data=str(data), epochs=1, imgsz=64, batch=2, workers=0, project=str(tmp_path / "runs"),
                        verbose=False, plots=False, train_pipeline="plain")
    assert "mAP50" in metrics
    best = det.trainer.save_dir / "weights" / "best.pt"
    assert det.checkpoint == best  # the Detector now holds the trained (EMA) weights
    assert det.names == {0: "circle", 1: "square"}

    again = Detector(str(best))
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, det.model.state_dict()[k])
    assert again.val(data=str(data), workers=0, project=str(tmp_path / "runs"), verbose=False)["mAP50"] >= 0.0
    assert again.validator.args["imgsz"] == 64  # the size it was trained at

    image = np.full((50, 70, 3), 127, np.uint8)
    results = again.predict(image, conf=0.0, max_det=3)
    assert len(results) == 1 and isinstance(results[0], Results)
    r = results[0]
    assert r.boxes.shape == (3, 4) and r.scores.shape == (3,) and r.labels.dtype == torch.int64
    assert (r.boxes[:, [0, 2]] <= 70).all() and (r.boxes[:, [1, 3]] <= 50).all()  # original pixels
    assert again.predictor.save_dir is None  # the API saves nothing unless asked
    stream = again.predict([image, image], stream=True, conf=0.0)
    assert sum(1 for _ in stream) == 2


def test_the_api_checks_every_value_before_any_work(tmp_path):
    """The Python API refuses bad values as the command line does, before building, loading or writing."""
    from rtdet.engine.settings import SettingsError

    with pytest.raises(SettingsError, match="nc=0: expected an integer >= 1"):
        Detector("rtdetr-demo.yaml", nc=0)
    with pytest.raises(TypeError, match="Detector\\(model\\): expected a model YAML"):
        Detector(None)
    det = Detector("rtdetr-demo.yaml", nc=2)
    runs = tmp_path / "runs"
    cases = ((det.train, {"epochs": -1}), (det.train, {"exist_ok": "maybe"}), (det.train, {"lr0": float("nan")}),
             (det.val, {"batch": 0}), (det.predict, {"conf": 2.0}))
    for call, bad in cases:
        with pytest.raises(SettingsError, match=next(iter(bad))):
            if call == det.predict:
                call(np.zeros((32, 32, 3), np.uint8), project=str(runs), **bad)
            else:
                call(data="coco128.yaml", project=str(runs), **bad)
    assert not runs.exists()
