"""The set-up every inference verb shares: load, the family's and the verb's settings, imgsz, device."""

import pytest

from rtdet.engine.settings import SettingsError, resolve_settings
from rtdet.engine.setup import device_for, prepare


@pytest.mark.parametrize("model_yaml", ["tiny_yaml", "tiny_yolo_yaml", "rtmdet_yaml"])
def test_prepare_settles_the_settings_of_the_models_family_and_the_verb(model_yaml, request):
    spec = request.getfixturevalue(model_yaml)
    ready = prepare(spec, {"imgsz": 70}, "val", nc=2)
    family = ready.model.head.family
    stride = max(ready.model.strides)
    assert ready.loaded.model is ready.model and ready.model.nc == 2 and ready.device.type == "cpu"
    assert ready.args["imgsz"] == -(-70 // stride) * stride  # rounded up to the largest stride
    recipe = resolve_settings({}, family=family)
    assert (ready.args["lr0"], ready.args["iou"]) == (recipe["lr0"], recipe["iou"])  # the family's recipe
    assert (ready.args["conf"], ready.args["multi_label"]) == (0.001, True)  # val's defaults (default.yaml)
    predict = prepare(spec, {}, "predict", nc=2).args
    assert (predict["conf"], predict["multi_label"]) == (0.25, False)
    assert prepare(spec, {"conf": 0.5}, "track", nc=2).args["conf"] == 0.5  # the user's value wins


def test_the_verbs_own_check_stops_it_before_any_settings(tiny_yaml):
    def refuse(model) -> None:
        raise SettingsError(f"the model predicts {model.nc} classes")

    with pytest.raises(SettingsError, match="predicts 2 classes"):
        prepare(tiny_yaml, {}, "val", nc=2, check=refuse)
    with pytest.raises(SettingsError, match="imgsz"):  # a bad setting is checked too
        prepare(tiny_yaml, {"imgsz": "big"}, "val", nc=2)


def test_half_needs_cuda():
    assert device_for({"device": "cpu", "half": False}).type == "cpu"
    with pytest.raises(SettingsError, match="fp16 inference needs a CUDA GPU"):
        device_for({"device": "cpu", "half": True})


def test_predict_and_track_take_their_score_threshold_from_the_schema(tiny_yaml, tmp_path):
    from rtdet.engine.predictor import Predictor
    from rtdet.engine.settings import verb_defaults

    settings = {"model": str(tiny_yaml), "project": str(tmp_path)}
    predictor = Predictor(settings)
    predictor.setup()
    assert predictor.conf == verb_defaults("predict")["conf"] == 0.25
    assert not predictor.args["multi_label"]
    pytest.importorskip("trackers")
    from rtdet.engine.tracker import Tracker

    tracker = Tracker(settings)
    tracker.setup()
    assert tracker.conf == verb_defaults("track")["conf"] == 0.1  # low: ByteTrack keeps tracks alive with them
    tracker = Tracker({**settings, "conf": 0.4})
    tracker.setup()
    assert tracker.conf == 0.4
    assert not any(tmp_path.iterdir())  # set-up alone makes no run folder
