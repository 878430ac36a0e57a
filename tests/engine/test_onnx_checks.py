"""ONNX files that lie: metadata that contradicts the graph, out-of-range metadata, and graphs ONNX Runtime
refuses -- each one ExportError line naming the file and the cause. The files are built here with the onnx
helper API: a dense export's interface (images [1, 3, 64, 64] -> boxes [1, N, 4], scores [1, N, nc])."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from rtdet.deploy.errors import ExportError
from rtdet.deploy.metadata import set_metadata
from rtdet.engine.setup import load_inference_model


def load_onnx_model(path):
    """The file as the engine loads it: the deploy layer's checks of its forms and graph, then the ranges of
    its stored settings."""
    return load_inference_model(path).model

GOOD_META = {"rtdet_version": "0", "name": "toy", "family": "yolov9", "needs_nms": True, "outputs": "dense",
             "names": {"0": "a", "1": "b"}, "nc": 2, "stride": [8, 16, 32], "imgsz": [64, 64], "batch": 1,
             "dynamic": False, "half": False, "opset": 17, "input": "images", "nms": None}
CELLS = 8 * 8 + 4 * 4 + 2 * 2  # strides 8, 16, 32 at 64x64


def dense_file(path, *, meta=None, side=64, cells=CELLS, nc=2, outputs=("boxes", "scores"), op="Identity",
               external: str | None = None):
    """An .onnx whose outputs are constants of the dense layout's shapes (boxes from a small computation on
    the input so the graph uses it); ``op`` replaces the identity on boxes, ``external`` stores the scores
    constant as external data at that location."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, side, side])
    boxes = numpy_helper.from_array(np.zeros((1, cells, 4), np.float32), "box_init")
    scores = numpy_helper.from_array(np.full((1, cells, nc), 0.5, np.float32), "score_init")
    if external:
        scores.ClearField("raw_data")
        scores.data_location = TensorProto.EXTERNAL
        entry = scores.external_data.add()
        entry.key, entry.value = "location", external
    nodes = [helper.make_node(op, ["box_init"], [outputs[0]]), helper.make_node("Identity", ["score_init"],
                                                                                   [outputs[1]])]
    outs = [helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, [1, cells, 4]),
            helper.make_tensor_value_info(outputs[1], TensorProto.FLOAT, [1, cells, nc])]
    graph = helper.make_graph(nodes, "toy", [x], outs, initializer=[boxes, scores])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    set_metadata(proto, {**GOOD_META, **(meta or {})})
    onnx.save(proto, str(path))
    return path


def test_a_consistent_file_loads(tmp_path):
    model = load_onnx_model(dense_file(tmp_path / "good.onnx"))
    assert model.nc == 2 and model.imgsz == (64, 64)
    boxes, scores = model(torch.zeros(1, 3, 64, 64))
    assert boxes.shape == (1, CELLS, 4) and scores.shape == (1, CELLS, 2)


LIES = {  # name: (dense_file arguments, text the one line must hold)
    "input size": ({"meta": {"imgsz": [32, 32]}}, "imgsz=[32, 32] does not match the graph's input size 64x64"),
    "output kind": ({"meta": {"outputs": "final"}},
                    "outputs='final' expects outputs ['boxes', 'scores', 'labels'], but the graph's outputs are "
                    "['boxes', 'scores'] (output kind 'dense')"),
    "class names": ({"meta": {"names": {"0": "a", "1": "b", "2": "c"}, "nc": 3}}, "has 2 class columns"),
    "stride": ({"meta": {"stride": [16, 32]}}, "stride=[16, 32] gives 20 grid cells at 64x64, but the graph outputs "
                                               "84 boxes"),
    "static flag": ({"meta": {"batch": 4}}, "batch=4 does not match the graph's input batch 1"),
    "nc vs names": ({"meta": {"nc": 5}}, "nc=5 does not match its 2 class names"),
    "imgsz range": ({"meta": {"imgsz": [99999, 64], "dynamic": True}},
                    "imgsz=99999 is outside what the setting imgsz= allows"),
    "nms range": ({"meta": {"nms": {"conf": 7, "iou": 0.5, "max_det": 10, "multi_label": False}}},
                  "nms.conf=7 is outside what the setting conf= allows"),
    "unknown op": ({"op": "FooBar"}, "it uses the operation FooBar, which ONNX Runtime does not implement"),
    "invalid graph": ({"outputs": ("boxes", "boxes")}, "ONNX Runtime cannot load it"),
    "external data outside": ({"external": "../secret.bin"}, "its external data lies outside the model's folder"),
}


@pytest.mark.parametrize("case", list(LIES))
def test_a_file_that_lies_is_one_line_naming_the_file_and_the_cause(tmp_path, case):
    kwargs, text = LIES[case]
    (tmp_path / "secret.bin").write_bytes(np.ones(CELLS * 2, np.float32).tobytes())
    (tmp_path / "m").mkdir()
    path = dense_file(tmp_path / "m" / "lie.onnx", **kwargs)
    with pytest.raises(ExportError) as err:
        load_onnx_model(path)
    message = str(err.value)
    assert str(path) in message and text in message, message
    assert "\n" not in message
