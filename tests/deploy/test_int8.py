"""int8 quantization: measured per-layer sensitivity, exclusion until the output is close, and a real export
of a tiny detector of every family whose int8 copy runs in ONNX Runtime with outputs close to fp32."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rtdet.deploy.int8 import (
    Int8Options,
    exclusion_groups,
    float_outputs,
    local_errors,
    quantize_int8,
    relative_errors,
)


def _conv(name: str, src: str, w: np.ndarray) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    return (helper.make_node("Conv", [src, f"{name}.w"], [name], name=name, pads=[1, 1, 1, 1]),
            numpy_helper.from_array(w.astype(np.float32), f"{name}.w"))


def _outlier_graph(path) -> None:
    """x -> a -> b -> c (3x3 convs, 4 channels). ``a`` writes one channel 1000x larger than the others and
    ``b`` reads almost only the small ones: quantizing b's input (one uint8 range per tensor) wipes out
    what b needs, so b is the layer that loses the most -- although a's output carries the outlier."""
    rng = np.random.default_rng(0)
    wa = rng.normal(size=(4, 4, 3, 3)) * 0.3
    wa[0] *= 1000.0
    wb = rng.normal(size=(4, 4, 3, 3)) * 0.3
    wb[:, 0] *= 1e-4
    wc = rng.normal(size=(4, 4, 3, 3)) * 0.3
    nodes, weights = zip(_conv("a", "x", wa), _conv("b", "a", wb), _conv("c", "b", wc))
    graph = helper.make_graph(list(nodes), "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                              [1, 4, 16, 16])], [helper.make_tensor_value_info("c", TensorProto.FLOAT,
                              [1, 4, 16, 16])], list(weights))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="who", value="test")
    onnx.save(model, str(path))


def _batches(n: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, (1, 4, 16, 16)).astype(np.float32) for _ in range(n)]


def test_sensitivity_ranks_the_layer_that_loses_the_most_first(tmp_path):
    _outlier_graph(tmp_path / "f.onnx")
    options = Int8Options(preprocess=False, exclude=False)
    quantize_int8(tmp_path / "f.onnx", tmp_path / "q.onnx", _batches(4), "x", options)
    fp32, q = onnx.load(str(tmp_path / "f.onnx")), onnx.load(str(tmp_path / "q.onnx"))
    ranked = local_errors(fp32, q, [{"x": b} for b in _batches(2, seed=2)], options.op_types)
    assert list(ranked)[0] == "b", ranked
    assert ranked["b"] > 10 * max(ranked["a"], ranked["c"])


def test_worst_layers_stay_fp32_until_the_output_error_is_small(tmp_path):
    _outlier_graph(tmp_path / "f.onnx")
    everything = quantize_int8(tmp_path / "f.onnx", tmp_path / "all.onnx", _batches(4), "x",
                               Int8Options(preprocess=False, exclude=False))
    guarded = quantize_int8(tmp_path / "f.onnx", tmp_path / "q.onnx", _batches(4), "x",
                            Int8Options(preprocess=False, max_error=0.05, max_excluded=1.0))
    assert everything.excluded == [] and everything.output_error > 0.05
    assert guarded.excluded == ["b", "a"] and guarded.output_error <= 0.05  # b, and a that writes its input
    assert guarded.trace == [(0, pytest.approx(everything.output_error)), (1, guarded.output_error)]
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert {m.key: m.value for m in q.metadata_props} == {"who": "test"}  # the export's metadata is kept
    assert any(n.input[0] == "c.w_quantized" for n in q.graph.node if n.op_type == "DequantizeLinear")  # c: int8
    # measured on fresh images, the guarded model is the closer one
    fresh = [{"x": b} for b in _batches(3, seed=7)]
    fp32 = onnx.load(str(tmp_path / "f.onnx"))
    err_all = relative_errors(fp32, onnx.load(str(tmp_path / "all.onnx")), ["c"], fresh)["c"]
    assert relative_errors(fp32, q, ["c"], fresh)["c"] < err_all / 3


def test_float_outputs_and_exclusion_groups(tmp_path):
    _outlier_graph(tmp_path / "f.onnx")
    model = onnx.load(str(tmp_path / "f.onnx"))
    assert float_outputs(model) == ["c"]
    assert exclusion_groups(model, ("Conv",)) == {"a": ["a"], "b": ["b", "a"], "c": ["c", "b"]}


@pytest.fixture(scope="module")
def calib_data(tmp_path_factory):
    from rtdet.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_train=2, n_val=8, imgsz=64, seed=0,
                                  n_classes=2, min_objects=1, max_objects=3, size_range=(0.3, 0.6))


@pytest.mark.parametrize("family", [pytest.param("rtdetr", marks=pytest.mark.slow), "yolov9",
                                    pytest.param("rtmdet", marks=pytest.mark.slow)])
def test_int8_export_of_a_tiny_detector_runs_and_stays_close(family, calib_data, tmp_path):
    from rtdet.deploy.metadata import read_metadata
    from rtdet.engine.exporter import Exporter
    from tests.engine.conftest import RTMDET_TINY_YAML, TINY_YOLO_YAML
    from tests.tiny_models import tiny_rtdetr_yaml

    yaml_path = tmp_path / f"{family}-tiny.yaml"
    yaml_path.write_text({"rtdetr": tiny_rtdetr_yaml(nc=2), "yolov9": TINY_YOLO_YAML,
                          "rtmdet": RTMDET_TINY_YAML}[family])
    exporter = Exporter({"model": str(yaml_path), "data": str(calib_data), "imgsz": 64, "int8": True,
                         "calib_images": 6, "project": str(tmp_path / "runs"), "verbose": False, "seed": 0})
    fp32 = exporter()
    meta = read_metadata(exporter.int8_file)
    assert meta["int8"]["calibration_images"] == 6 and meta["family"] == family
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"images": x})
            for p in (fp32, exporter.int8_file)]
    assert [o.shape for o in outs[0]] == [o.shape for o in outs[1]]
    scores = [o[1] for o in outs]  # scores: [B, k] (DETR top-k) or [B, N, C] (dense)
    assert np.isfinite(scores[1]).all()
    assert abs(float(scores[0].max()) - float(scores[1].max())) < 0.05
    assert np.isfinite(exporter.int8_report.map_int8)


def test_calib_images_is_bounded():
    from rtdet.engine.settings import SettingsError, resolve_settings

    assert resolve_settings({"calib_images": 256})["calib_images"] == 256
    for bad in (0, 5000, 2.5):
        with pytest.raises(SettingsError, match="calib_images"):
            resolve_settings({"calib_images": bad})
