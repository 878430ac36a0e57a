"""ONNX export: PyTorch and ONNX Runtime give the same detections for every plug-in module, static and
dynamic shapes, NMS in the graph; metadata round trip; clear errors for what cannot be exported."""

import onnx
import pytest
import torch
import torch.nn as nn

from rtdet import build_model, register
from rtdet.deploy.errors import ExportError
from rtdet.deploy.graph import deploy_form, export_onnx
from rtdet.deploy.metadata import read_metadata
from rtdet.deploy.parity import check_export, check_image, compare_detections
from rtdet.engine.exporter import Exporter
from rtdet.nn.heads.base import Detections, finalize
from rtdet.nn.registry import unregister
from tests.engine.export_helpers import TOY_DENSE_YAML, ToyDenseHead, plugin_yaml, sample_image

pytestmark = pytest.mark.filterwarnings("ignore")


def _export_and_check(model, path, shape=(64, 64), batch=1, **kw):
    file = export_onnx(model, path, imgsz=shape, batch=batch, count_flops=False, **kw)
    return file, check_export(file, model, check_image(sample_image(), shape, batch), conf=0.01)


def test_tiny_rtdetr_export_matches_pytorch(tiny_yaml, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_yaml)
    file, report = _export_and_check(model, tmp_path / "tiny.onnx")
    assert report.ok and report.matched == report.n_torch == report.n_onnx > 0
    assert report.max_box_diff < 1e-3 and report.max_score_diff < 1e-5  # pixels, probabilities
    graph = onnx.load(str(file)).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["boxes", "scores", "labels"]
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]
    assert onnx.load(str(file)).opset_import[0].version == 17


@pytest.mark.parametrize("key, size", [("hgnet", 64), ("aifi-msdeformattn", 64), ("dysample", 64), ("shsa", 64),
                                       ("convnextv2", 64), ("shvit", 128)])
def test_plugin_modules_export(key, size, tmp_path):
    torch.manual_seed(0)
    model = build_model(plugin_yaml(tmp_path, key))
    _, report = _export_and_check(model, tmp_path / f"{key}.onnx", (size, size))
    assert report.ok and report.matched == report.n_torch > 0
    assert report.max_box_diff < 1e-2 and report.max_score_diff < 1e-4


def test_dynamic_batch_and_size(tmp_path):
    torch.manual_seed(0)
    model = build_model(plugin_yaml(tmp_path, "dysample"))
    file = export_onnx(model, tmp_path / "dyn.onnx", imgsz=64, batch=2, dynamic=True, count_flops=False)
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(file)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    for batch, shape in ((1, (64, 64)), (3, (64, 64)), (3, (96, 160))):
        report = check_export(file, model, check_image(sample_image(), shape, batch), conf=0.01)
        assert report.ok and report.matched == report.n_torch == 20 * batch  # every query, every image


def test_static_non_square_export(tiny_yaml, tmp_path):
    torch.manual_seed(0)
    _, report = _export_and_check(build_model(tiny_yaml), tmp_path / "wide.onnx", (64, 96), batch=2)
    assert report.ok and report.matched == report.n_torch > 0


def test_metadata_round_trip(tiny_yaml, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_yaml, names=["cat", "dog"])
    file = export_onnx(model, tmp_path / "m.onnx", imgsz=(64, 96), batch=2, opset=18,
                       extra_metadata={"args": {"val_pipeline": "plain"}})
    meta = read_metadata(file)
    from rtdet import __version__
    from rtdet.nn.model import count_parameters

    assert meta["rtdet_version"] == __version__ and meta["family"] == "rtdetr" and meta["outputs"] == "final"
    assert meta["names"] == {"0": "cat", "1": "dog"} and meta["nc"] == 2
    assert meta["stride"] == model.strides == [8, 16]
    assert meta["imgsz"] == [64, 96] and meta["batch"] == 2 and meta["dynamic"] is False
    assert meta["opset"] == 18 and meta["needs_nms"] is False and meta["nms"] is None
    assert meta["params"] == count_parameters(model)
    assert meta["gflops"] == pytest.approx(model.flops((64, 96)), rel=1e-3)
    assert meta["args"] == {"val_pipeline": "plain"}


def test_not_an_rtdet_export_is_named(tmp_path):
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(nn.Conv2d(3, 4, 1), (torch.zeros(1, 3, 8, 8),), str(plain), dynamo=False)
    with pytest.raises(ExportError, match=r"plain.onnx: not an rtdet export .*rtdet export model="):
        read_metadata(plain)


BAD_YAML = """
nc: 2
backbone:
  - [-1, 1, Conv, [8, 3, 2]]
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [-1, 1, InverseErf, []]
head:
  - [[2, 4], 1, RTDETRDecoder, [nc, 32, 20, 2, 2, 1, 64]]
"""


ERFINV_SPELLINGS = {  # how a module may call the operation the exporter names aten::erfinv
    "torch.erfinv": lambda x: torch.erfinv(x),
    "in place": lambda x: x.clone().erfinv_(),  # traced as aten::erfinv_
    "torch.special alias": lambda x: torch.ops.aten.special_erfinv(x),
}


@pytest.fixture(params=list(ERFINV_SPELLINGS))
def erfinv_module(request):
    call = ERFINV_SPELLINGS[request.param]

    @register(channels="same")
    class InverseErf(nn.Module):
        def __init__(self, c1: int):
            super().__init__()

        def forward(self, x):
            return call(x.tanh() * 0.5)

    yield InverseErf
    unregister("InverseErf")


def test_unexportable_module_error_names_row_and_op(tmp_path, erfinv_module):
    yaml = tmp_path / "bad.yaml"
    yaml.write_text(BAD_YAML)
    model = build_model(yaml)
    with pytest.raises(ExportError, match=r"aten::erfinv in row 4 \(InverseErf\)"):
        export_onnx(model, tmp_path / "bad.onnx", imgsz=64, count_flops=False)
    assert not (tmp_path / "bad.onnx").exists()


def test_bad_export_arguments(tiny_yaml, tmp_path):
    model = build_model(tiny_yaml)
    with pytest.raises(ExportError, match="opset=16: rtdet exports opsets 17..20"):
        export_onnx(model, tmp_path / "a.onnx", imgsz=64, opset=16)
    with pytest.raises(ExportError, match="half=true .* GPUs"):
        export_onnx(model, tmp_path / "a.onnx", imgsz=64, half=True)
    with pytest.raises(ExportError, match="not a multiple of the model's largest stride 16; use a size such as"):
        export_onnx(model, tmp_path / "a.onnx", imgsz=(64, 72))


# ---------------------------------------------------------------------------------- NMS heads
@pytest.fixture
def dense_model(tmp_path):
    register(channels="head")(ToyDenseHead)
    yaml = tmp_path / "dense.yaml"
    yaml.write_text(TOY_DENSE_YAML)
    torch.manual_seed(0)
    model = build_model(yaml)
    with torch.no_grad():  # spread the class scores so that NMS has work at conf 0.3
        for conv in model.head.convs:
            conv.bias[4:].uniform_(-2, 2)
    yield model
    unregister("ToyDenseHead")


@pytest.mark.parametrize("multi_label", [False, True])
def test_nms_in_graph_matches_dense_nms(dense_model, tmp_path, multi_label):
    x = check_image(sample_image(), (64, 64), 3)
    file = export_onnx(dense_model, tmp_path / "nms.onnx", imgsz=64, batch=3, dynamic=True, nms=True, conf=0.3,
                       iou=0.5, max_det=7, multi_label=multi_label, count_flops=False)
    graph = onnx.load(str(file)).graph
    assert "NonMaxSuppression" in {n.op_type for n in graph.node}
    assert [o.name for o in graph.output] == ["boxes", "scores", "labels", "batch_index"]
    assert read_metadata(file)["nms"] == {"conf": 0.3, "iou": 0.5, "max_det": 7, "multi_label": multi_label}
    report = check_export(file, dense_model, x)  # the export's own conf / iou / max_det
    assert report.ok and report.matched == report.n_torch == report.n_onnx
    assert 3 < report.n_torch <= 21  # NMS removed boxes and max_det capped each image at 7


def test_dense_export_without_nms_gives_decoded_outputs(dense_model, tmp_path):
    file, report = _export_and_check(dense_model, tmp_path / "dense.onnx", batch=2)
    assert [o.name for o in onnx.load(str(file)).graph.output] == ["boxes", "scores"]
    assert read_metadata(file)["outputs"] == "dense"
    assert report.ok and report.matched == report.n_torch > 0


# ---------------------------------------------------------------------------------- matching
def test_compare_detections_counts_and_differences():
    a = [Detections(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([0.9, 0.5]),
                    torch.tensor([1, 2]))]
    b = [Detections(torch.tensor([[20.1, 20, 30, 30], [0, 0, 10, 10.2]]), torch.tensor([0.5, 0.8995]),
                    torch.tensor([2, 1]))]
    report = compare_detections(a, b, conf=0.25, box_tol=0.5, score_tol=1e-3)
    assert report.ok and report.matched == 2
    assert report.max_box_diff == pytest.approx(0.2, abs=1e-6)
    assert report.max_score_diff == pytest.approx(0.0005, abs=1e-6)
    b[0].labels[0] = 0  # a label change leaves one detection without a partner
    assert compare_detections(a, b, conf=0.25).unmatched == 2


def test_finalize_of_onnx_outputs_equals_the_head(tiny_yaml, tmp_path):
    """The backend's detections are the head's own finalize of the session's tensors."""
    from rtdet.deploy.runtime import load_onnx_model

    torch.manual_seed(0)
    model = build_model(tiny_yaml).eval()
    file = export_onnx(model, tmp_path / "t.onnx", imgsz=64, count_flops=False)
    x = check_image(sample_image(), (64, 64), 1)
    runtime = load_onnx_model(file)
    boxes, scores, labels = runtime(x)
    with torch.no_grad():
        ref = model.head.decode(model(x), (64, 64))
    assert torch.allclose(scores, ref.scores, atol=1e-5) and torch.equal(labels, ref.labels)
    ours = finalize(ref, 0.01)[0]
    theirs = runtime.head.postprocess((boxes, scores, labels), (64, 64), 0.01)[0]
    assert torch.allclose(ours.boxes, theirs.boxes, atol=1e-3) and torch.equal(ours.labels, theirs.labels)


# ---------------------------------------------------------------------------------- `rtdet export`
def test_exporter_writes_checks_and_reports(tiny_yaml, tiny_data, tmp_path):
    exporter = Exporter({"model": str(tiny_yaml), "data": str(tiny_data), "imgsz": 64, "project": str(tmp_path),
                         "verbose": False, "dynamic": True, "simplify": True})
    file = exporter()
    assert file == tmp_path / "export" / "export" / "rtdetr-tiny.onnx" and file.is_file()
    assert exporter.report.ok and exporter.report.matched > 0
    meta = read_metadata(file)
    assert meta["dynamic"] and meta["names"] == {"0": "circle", "1": "square"} and meta["source"] == str(tiny_yaml)
    assert meta["gflops"] > 0


# ---------------------------------------------------------------------------------- other families
# One model of each NMS family: YOLOv9 (official dual head / Ultralytics port) and RTMDet.
FAMILY_YAMLS = ["yolov9-t.yaml", pytest.param("yolov9t.yaml", marks=pytest.mark.slow), "rtmdet-tiny.yaml"]


@pytest.mark.parametrize("name", FAMILY_YAMLS)
def test_family_export_matches_pytorch(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = check_image(sample_image(), (64, 64), 2)
    file = export_onnx(model, tmp_path / "m.onnx", imgsz=64, batch=2, dynamic=True, count_flops=False)
    from rtdet.deploy.runtime import load_onnx_model

    runtime = load_onnx_model(file)
    fused = deploy_form(model, False)
    with torch.no_grad():
        ref = fused.head.decode(fused(x), (64, 64))
    out = runtime(x)
    assert read_metadata(file)["outputs"] == ("dense" if model.head.needs_nms else "final")
    if model.head.needs_nms:  # dense outputs line up position by position
        assert (out[0] - ref.boxes).abs().max() < 1e-2 and (out[1] - ref.scores).abs().max() < 1e-4
    report = check_export(file, model, x, conf=0.005)
    assert report.ok and report.matched == report.n_torch
    if model.head.needs_nms:
        nms_file = export_onnx(model, tmp_path / "n.onnx", imgsz=64, batch=2, nms=True, conf=0.005,
                               count_flops=False)
        report = check_export(nms_file, model, x)
        assert report.ok and report.matched == report.n_torch == report.n_onnx
    meta = read_metadata(file)
    if name == "yolov9-t.yaml":  # the deploy form of a dual (PGI) model drops its auxiliary branch
        assert meta["params_deploy"] < meta["params"]


def test_exporter_rounds_imgsz_up_to_the_stride_as_every_verb_does(tiny_yaml, tmp_path):
    """One rule for imgsz everywhere (the schema's): a size that is not a multiple of the model's largest stride
    is rounded up, with a warning, not refused after a run folder was made."""
    file = Exporter({"model": str(tiny_yaml), "imgsz": 70, "project": str(tmp_path), "verbose": False,
                     "check": False})()
    assert read_metadata(file)["imgsz"] == [80, 80]


@pytest.mark.parametrize("nms", [False, True])
def test_a_model_whose_scores_tie_passes_the_check(dense_model, tmp_path, nms):
    """Every class score exactly 0.5 and boxes that overlap: which survives NMS is decided by ulps, so the
    check compares the decoded outputs before NMS, and NMS results as sets robust to ties."""
    with torch.no_grad():
        for conv in dense_model.head.convs:
            conv.weight[4:].zero_()
            conv.bias[4:].zero_()  # sigmoid(0) = 0.5 for every class of every box
            conv.weight[:4].mul_(0.01)  # boxes of nearly one size around each point: heavy overlaps
    x = check_image(sample_image(), (64, 64), 2)
    file = export_onnx(dense_model, tmp_path / "tie.onnx", imgsz=64, batch=2, nms=nms, conf=0.3, iou=0.5,
                       max_det=20, count_flops=False)
    report = check_export(file, dense_model, x, conf=0.3, iou=0.5, max_det=20)
    assert report.ok and report.n_torch == 40  # max_det filled from a sea of equal scores, each image
    assert (report.decoded is not None) != nms and (report.decoded is None or report.decoded.ok)
