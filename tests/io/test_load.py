"""One loader for every source, and the entry points on top of it: build_model,
Detector, `rtdet convert`, `rtdet val / predict / train model=<foreign file>`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtdet import Detector, build_model
from rtdet.cli import main
from rtdet.engine.settings import SettingsError
from rtdet.engine.trainer import Trainer
from rtdet.io import convert_file, load_model
from rtdet.io.load import default_output
from rtdet.utils.checkpoint import CheckpointError
from tests.io.iohelpers import fp16_exact, same_outputs, save_ultralytics
from tests.tiny_models import tiny_rtdetr_yaml

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = tiny_rtdetr_yaml(nc=3, queries=20, denoising=10)


@pytest.fixture
def foreign(tmp_path):
    """(Ultralytics best.pt of a tiny 3-class RT-DETR, the rtdet model its tensors came from)."""
    yaml_path = tmp_path / "rtdetr-tiny.yaml"
    yaml_path.write_text(TINY)
    source = fp16_exact(build_model(yaml_path)).eval()
    return save_ultralytics(source, tmp_path / "best.pt", str(yaml_path), names={0: "a", 1: "b", 2: "c"}), source


@pytest.fixture
def data(tmp_path):
    from rtdet.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, imgsz=64, n_classes=2, size_range=(0.3, 0.6),
                                  max_objects=2)


def outputs(model, size=64):
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model.eval()(x)


def test_every_kind_of_source(tmp_path, foreign):
    path, source = foreign
    assert load_model("rtdetr-demo.yaml", nc=4).format == "yaml"
    assert load_model(source.yaml).format == "dict"
    assert load_model(source).model is source
    rtdet_ckpt = source.save(tmp_path / "mine.pt")
    mine = load_model(rtdet_ckpt)
    assert mine.format == "rtdet" and mine.is_checkpoint and not mine.foreign
    assert same_outputs(outputs(source), outputs(mine.model))
    assert load_model({"model": source.to_checkpoint()}).format == "rtdet"
    theirs = load_model(path)
    assert theirs.format == "ultralytics" and theirs.foreign and theirs.path == path
    assert same_outputs(outputs(source), outputs(theirs.model))
    assert same_outputs(outputs(source), outputs(build_model(path)))  # build_model takes files too
    with pytest.raises(CheckpointError, match="ONNX"):
        load_model(tmp_path / "model.onnx")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="built-in models"):
        load_model("no-such-model.yaml")
    with pytest.raises(CheckpointError, match="not an rtdet checkpoint"):
        load_model(path, format="rtdet")


def test_foreign_files_are_converted_in_memory_with_a_notice(foreign, caplog):
    path, source = foreign
    caplog.set_level("INFO", logger="rtdet")
    det = Detector(str(path))
    assert det.checkpoint == path and det.names == {0: "a", 1: "b", 2: "c"}
    notices = [r.message for r in caplog.records if "converted in memory" in r.message]
    assert len(notices) == 1 and "Ultralytics RT-DETR (rtdetr-tiny), model weights" in notices[0]
    n = len(source.state_dict())
    assert f"loaded {n}/{n} tensors" in notices[0] and "rtdet convert source=" in notices[0]
    results = det.predict(np.full((48, 64, 3), 90, np.uint8), conf=0.0, max_det=5)
    assert results[0].boxes.shape == (5, 4)
    assert det.predictor.args["imgsz"] == 320  # the training size the file recorded


def test_convert_writes_a_plain_checkpoint_with_the_same_outputs(tmp_path, foreign):
    path, source = foreign
    out, loaded = convert_file(path)
    assert out == default_output(path) == tmp_path / "best-rtdet.pt"
    ckpt = torch.load(out, weights_only=True)  # tensors and plain types only
    assert ckpt["converted_from"]["format"] == "ultralytics" and ckpt["converted_from"]["file"] == "best.pt"
    assert ckpt["converted_from"]["train_args"]["save_dir"] == "runs/detect/train"
    assert ckpt["args"] == {"imgsz": 320}
    again = load_model(out)
    assert again.format == "rtdet" and again.names == {0: "a", 1: "b", 2: "c"} and again.inherited == {"imgsz": 320}
    assert same_outputs(outputs(source), outputs(again.model))
    with pytest.raises(CheckpointError, match="already an rtdet checkpoint"):
        convert_file(out)
    with pytest.raises(CheckpointError, match="overwrite the source"):
        convert_file(path, to=path)


def test_the_convert_verb(tmp_path, foreign, capsys):
    path, source = foreign
    out = tmp_path / "converted.pt"
    assert main(["convert", f"source={path}", f"to={out}"]) == 0
    text, n = capsys.readouterr().out, len(source.state_dict())
    assert f"wrote {out}" in text and f"loaded {n}/{n} tensors" in text and "rtdet train model=" in text
    assert torch.load(out, weights_only=True)["model"]["nc"] == 3
    assert main(["convert", f"source={path}", "too=x.pt"]) == 2
    assert "Did you mean to=?" in capsys.readouterr().err
    assert main(["convert"]) == 2
    assert main(["convert", f"source={out}"]) == 1
    assert "already an rtdet checkpoint" in capsys.readouterr().err
    assert main(["convert", f"source={path}", "format=mmpose"]) == 1
    assert "unknown checkpoint format 'mmpose'" in capsys.readouterr().err
    assert main(["convert", f"source={path}", "format=mmdet"]) == 1
    assert "does not look like a mmdetection RTMDet" in capsys.readouterr().err
    assert main(["convert", "help"]) == 0
    assert "ultralytics" in capsys.readouterr().out


def test_val_and_predict_take_a_foreign_file(tmp_path, foreign, data, capsys):
    path, _ = foreign
    common = [f"project={tmp_path / 'runs'}", "workers=0", "device=cpu", "imgsz=64"]
    # this fixture has 3 classes, the synthetic data 2: val refuses a model for another dataset
    assert main(["val", f"model={path}", f"data={data}", *common]) == 2
    assert "predicts 3 classes" in capsys.readouterr().err
    two = tmp_path / "two.yaml"
    two.write_text(TINY.replace("nc: 3", "nc: 2"))
    two_pt = save_ultralytics(fp16_exact(build_model(two)), tmp_path / "two.pt", str(two), names={0: "x", 1: "y"})
    assert main(["val", f"model={two_pt}", f"data={data}", *common]) == 0
    assert "converted in memory" in capsys.readouterr().out
    assert (tmp_path / "runs" / "val" / "val" / "predictions.json").is_file()
    assert main(["predict", f"model={path}", f"source={data.parent / 'images' / 'val'}", *common]) == 0
    out = capsys.readouterr().out
    assert "converted in memory" in out and "2 image(s) processed" in out


def test_fine_tuning_starts_from_the_converted_weights(tmp_path, foreign, data, caplog):
    path, source = foreign
    converted, _ = convert_file(path)
    caplog.set_level("INFO", logger="rtdet")
    settings = {"model": str(converted), "data": str(data), "imgsz": 64, "batch": 2, "epochs": 1, "workers": 0,
                "device": "cpu", "project": str(tmp_path / "runs"), "val": False, "plots": False, "verbose": True,
                "train_pipeline": "plain"}
    trainer = Trainer(settings)
    trainer.setup()
    model, head = trainer.model, f"model.{trainer.model.head_index}."
    assert model.nc == 2 and "3 -> 2 classes" in caplog.text  # the data's 2 classes: a new head
    start = model.state_dict()
    reinit = [k for k, v in source.state_dict().items() if start[k].shape != v.shape]
    assert reinit and all(k.startswith(head) for k in reinit)
    for k, v in source.state_dict().items():
        if k not in reinit:
            assert torch.equal(start[k], v), k
    direct = Trainer({**settings, "model": str(path), "project": str(tmp_path / "runs2")})  # the foreign file itself
    direct.setup()
    assert all(torch.equal(v, start[k]) for k, v in direct.model.state_dict().items() if k not in reinit)
    # end to end from the command line
    assert main(["train", f"model={converted}", f"data={data}", "epochs=1", "imgsz=64", "batch=2", "workers=0",
                 "device=cpu", f"project={tmp_path / 'cli'}", "val=false", "plots=false", "verbose=false",
                 "train_pipeline=plain"]) == 0
    assert load_model(tmp_path / "cli" / "train" / "train" / "weights" / "best.pt").model.nc == 2


def test_pretrained_takes_a_foreign_file_for_a_yaml_model(tmp_path, foreign, data):
    path, source = foreign
    yaml_path = tmp_path / "rtdetr-tiny.yaml"
    trainer = Trainer({"model": str(yaml_path), "pretrained": str(path), "data": str(data), "imgsz": 64, "batch": 2,
                       "epochs": 1, "workers": 0, "device": "cpu", "project": str(tmp_path / "runs"), "val": False,
                       "plots": False, "verbose": False, "train_pipeline": "plain"})
    trainer.setup()
    start = trainer.model.state_dict()
    same = [k for k, v in source.state_dict().items() if start[k].shape == v.shape]
    assert all(torch.equal(start[k], source.state_dict()[k]) for k in same)
    assert len(same) < len(start)  # the 2-class head keeps its own initialisation
    with pytest.raises(SettingsError, match="expected a checkpoint"):
        Trainer({"model": str(yaml_path), "pretrained": "rtdetr-demo.yaml", "data": str(data), "workers": 0,
                 "project": str(tmp_path / "runs2"), "verbose": False}).setup()
