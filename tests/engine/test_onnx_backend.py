"""The ONNX Runtime backend: an export is a model for predict / val with the same Results and metrics."""

import onnx
import pytest
import torch

from rtdet.deploy.errors import ExportError
from rtdet.deploy.graph import export_onnx
from rtdet.deploy.parity import check_image
from rtdet.deploy.runtime import load_onnx_model
from rtdet.engine.exporter import Exporter
from rtdet.engine.predictor import Predictor
from rtdet.engine.settings import SettingsError
from rtdet.engine.setup import load_inference_model as load_model
from rtdet.engine.trainer import Trainer
from rtdet.engine.validator import Validator
from rtdet.nn.model import InferenceModel
from rtdet.utils.checkpoint import CheckpointError
from tests.engine.export_helpers import sample_image

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_yaml, tiny_data):
    """A tiny RT-DETR trained for two epochs, its checkpoint and a static (batch 2) export of it."""
    root = tmp_path_factory.mktemp("onnx-backend")
    torch.set_num_threads(1)
    settings = {"model": str(tiny_yaml), "data": str(tiny_data), "imgsz": 64, "batch": 4, "epochs": 2, "workers": 0,
                "device": "cpu", "project": str(root / "runs"), "val": False, "plots": False, "verbose": False,
                "train_pipeline": "plain", "lr0": 1e-3, "warmup_iters": 1, "seed": 0}
    trainer = Trainer(settings)
    trainer.train()
    onnx = Exporter({"model": str(trainer.last), "batch": 2, "project": str(root), "verbose": False})()
    return {"pt": trainer.last, "onnx": onnx, "data": tiny_data, "root": root}


def _settings(trained, **kw):
    return {"data": str(trained["data"]), "device": "cpu", "verbose": False, "project": str(trained["root"]),
            "workers": 0, "batch": 3, **kw}


def test_val_on_onnx_gives_the_same_metrics(trained):
    ours = Validator(_settings(trained, name="pt"))(str(trained["pt"]))
    theirs = Validator(_settings(trained, name="onnx"))(str(trained["onnx"]))  # batch 3 -> chunks of 2
    for key in ("mAP50-95", "mAP50", "mAP75"):
        assert theirs[key] == pytest.approx(ours[key], abs=1e-6)


def test_predict_on_onnx_gives_the_same_results(trained, tiny_data):
    images = sorted((tiny_data.parent / "images" / "val").glob("*.jpg"))
    assert images
    kw = {"save": False, "device": "cpu", "verbose": False, "conf": 0.01}
    ours = Predictor(kw, model=str(trained["pt"]))([str(p) for p in images])
    theirs = Predictor(kw, model=str(trained["onnx"]))([str(p) for p in images])
    for a, b in zip(ours, theirs, strict=True):
        assert len(a) == len(b) > 0 and a.path == b.path
        assert torch.equal(a.labels, b.labels)
        assert torch.allclose(a.boxes, b.boxes, atol=1e-2) and torch.allclose(a.scores, b.scores, atol=1e-5)


def test_runtime_model_reads_its_metadata(trained):
    loaded = load_model(str(trained["onnx"]))
    model, inherited = loaded.model, loaded.inherited
    assert loaded.format == "onnx" and loaded.path == trained["onnx"] and not loaded.foreign
    assert model.names == {0: "circle", 1: "square"} and model.nc == 2 and model.strides == [8, 16]
    assert model.head.family == "rtdetr" and not model.head.needs_nms
    pytorch = load_model(str(trained["pt"])).model
    assert isinstance(model, InferenceModel) and isinstance(pytorch, InferenceModel)  # the verbs' one interface
    assert (model.device, model.input_dtype) == (pytorch.device, pytorch.input_dtype) == (torch.device("cpu"),
                                                                                         torch.float32)
    assert inherited["imgsz"] == 64 and inherited["train_pipeline"] == "plain"
    with pytest.raises(CheckpointError, match="predicts 2 classes .* but 3 were asked for"):
        load_model(str(trained["onnx"]), nc=3)


def test_static_export_runs_any_batch(trained):
    model = load_onnx_model(trained["onnx"])
    x = check_image(sample_image(), (64, 64), 1)
    batch = torch.cat([x, x.flip(-1), x.flip(-2)])  # 3 images through a batch-2 graph: 2 + (1 + padding)
    together = model(batch)
    alone = [model(batch[i:i + 1]) for i in range(3)]
    for k in range(3):
        assert torch.equal(together[k], torch.cat([a[k] for a in alone]))
    with pytest.raises(ExportError, match=r"exported for 64x64 inputs \(static shapes\), got 96x96; use imgsz=64"):
        model(torch.zeros(1, 3, 96, 96))


def test_val_with_another_size_than_a_static_export_is_explained(trained):
    with pytest.raises(ExportError, match="re-export with dynamic=true"):
        Validator(_settings(trained, name="bad", imgsz=96))(str(trained["onnx"]))


def test_threads_and_optimisation_level_reach_the_session(trained):
    model = load_onnx_model(trained["onnx"], threads=1, opt_level="basic")
    opts = model.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert str(opts.graph_optimization_level).endswith("ORT_ENABLE_BASIC")
    with pytest.raises(ValueError, match="ort_opt_level='fast': expected one of disable, basic, extended, all"):
        load_onnx_model(trained["onnx"], opt_level="fast")


def test_nms_export_through_the_backend(tmp_path, tiny_data):
    """Flat NMS outputs split back into per-image Detections, images without detections included."""
    from rtdet import build_model, register
    from rtdet.nn.registry import unregister
    from tests.engine.export_helpers import TOY_DENSE_YAML, ToyDenseHead

    register(channels="head")(ToyDenseHead)
    try:
        (tmp_path / "dense.yaml").write_text(TOY_DENSE_YAML)
        torch.manual_seed(0)
        model = build_model(tmp_path / "dense.yaml")
        file = export_onnx(model, tmp_path / "n.onnx", imgsz=64, batch=2, nms=True, conf=0.45, count_flops=False)
        runtime = load_onnx_model(file)
        x = torch.cat([check_image(sample_image(), (64, 64), 1), torch.zeros(2, 3, 64, 64)])
        dets = runtime.head.postprocess(runtime(x), (64, 64), conf=0.45, iou=0.7, max_det=300)
        assert len(dets) == 3
        with torch.no_grad():
            ref = model.eval().head.postprocess(model(x), (64, 64), conf=0.45, iou=0.7, max_det=300)
        assert [len(d) for d in dets] == [len(d) for d in ref]
    finally:
        unregister("ToyDenseHead")


def test_detector_exports_and_loads_an_onnx_file(trained, tmp_path):
    from rtdet import Detector

    det = Detector(str(trained["pt"]))
    file = det.export(project=str(tmp_path), dynamic=True, verbose=False)
    assert file.suffix == ".onnx" and det.exporter.report.ok
    runtime = Detector(str(file))
    assert runtime.names == {0: "circle", 1: "square"} and "rtdetr" in repr(runtime)
    image = sample_image()
    ours = det.predict(image, conf=0.01, imgsz=64)[0]
    theirs = runtime.predict(image, conf=0.01, imgsz=64)[0]
    assert len(ours) == len(theirs) > 0 and torch.equal(ours.labels, theirs.labels)
    assert torch.allclose(ours.boxes, theirs.boxes, atol=0.05)
    metrics = runtime.val(data=str(trained["data"]), workers=0, project=str(tmp_path), verbose=False)
    assert metrics["mAP50-95"] == pytest.approx(det.val(data=str(trained["data"]), workers=0, project=str(tmp_path),
                                                        verbose=False)["mAP50-95"], abs=1e-6)


def test_an_export_cannot_be_trained_or_exported_again(trained, tiny_data, tmp_path):
    from rtdet.cli import main

    common = [f"data={tiny_data}", f"project={tmp_path}", "workers=0", "verbose=false"]
    assert main(["train", f"model={trained['onnx']}", "epochs=1", *common]) == 2
    assert main(["export", f"model={trained['onnx']}", *common]) == 2


def test_int8_export_reports_map_and_speed(trained, tmp_path):
    from rtdet.deploy.metadata import read_metadata

    exporter = Exporter({"model": str(trained["pt"]), "data": str(trained["data"]), "int8": True,
                         "project": str(tmp_path), "verbose": False, "workers": 0})
    exporter()
    meta = read_metadata(exporter.int8_file)
    assert exporter.int8_file.name == "last-int8.onnx" and meta["int8"]["calibration_images"] == 4
    assert meta["names"] == {"0": "circle", "1": "square"}  # still a model for predict / val
    graph_ops = {n.op_type for n in onnx.load(str(exporter.int8_file)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= graph_ops
    report = exporter.int8_report
    fp32 = Validator(_settings(trained, name="fp32", batch=1))(str(exporter.file))["mAP50-95"]
    assert report.map_fp32 == pytest.approx(fp32, abs=1e-6) and 0 <= report.map_int8 <= 1
    assert report.ms_fp32 > 0 and report.ms_int8 > 0 and "faster" in str(report)
    with pytest.raises(SettingsError, match="int8=true calibrates on real images: give data="):
        Exporter({"model": str(trained["pt"]), "int8": True, "project": str(tmp_path), "verbose": False})()
