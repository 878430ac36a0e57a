"""The built-in RTMDet models: parameter counts to the digit (whole model, backbone, neck, head), GFLOPs
within 3% of the references, BatchNorm settings, forward shapes, and the one-to-one correspondence of
their state-dict keys with mmdetection's."""

import pytest
import torch
import torch.nn as nn

from rtdet import build_model

# ../shared/reference/targets.md: mmdetection 3.3 configs, nc=80, shared head convs counted once.
# (total, backbone, neck, head), and GFLOPs at 640 = 2 x the paper's MACs.
REFERENCE = {
    "tiny": ((4_896_168, 2_348_700, 2_188_944, 358_524), 16.2),
    "s": ((8_886_924, 4_378_320, 3_883_200, 625_404), 29.6),
    "m": ((24_709_188, 12_279_432, 11_049_408, 1_380_348), 78.5),
    "l": ((52_315_804, 26_138_912, 23_746_688, 2_430_204), 160.5),
    "x": ((94_855_572, 47_569_560, 43_511_040, 3_774_972), 283.3),
}
WIDEN = {"tiny": 0.375, "s": 0.5, "m": 0.75, "l": 1.0, "x": 1.25}
DEEPEN = {"tiny": 0.167, "s": 0.33, "m": 0.67, "l": 1.0, "x": 1.33}
BACKBONE_ROWS, NECK_ROWS, HEAD_ROW = range(0, 11), range(11, 28), 28


def params(modules) -> int:
    """Parameters of several modules, each tensor once (a shared conv is one tensor)."""
    return sum(p.numel() for p in {id(p): p for m in modules for p in m.parameters()}.values())


def on_meta(name: str, **kw):
    """Build without allocating or initialising weights: the counts are the same, and fast."""
    with torch.device("meta"):
        return build_model(name, **kw)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("rtmdet-tiny.yaml")


@pytest.mark.parametrize("scale", list(REFERENCE))
def test_counts_to_the_digit_and_gflops(scale):
    (total, backbone, neck, head), gflops = REFERENCE[scale]
    model = on_meta(f"rtmdet-{scale}.yaml")
    layers = list(model.model)
    assert params(layers) == total
    assert params(layers[r] for r in BACKBONE_ROWS) == backbone
    assert params(layers[r] for r in NECK_ROWS) == neck
    assert params([layers[HEAD_ROW]]) == head
    assert len(model.yaml["backbone"]) == len(BACKBONE_ROWS)  # the backbone section is the CSPNeXt backbone
    assert model.flops(640) == pytest.approx(gflops, rel=0.03)
    assert model.head.exp_on_reg == (scale in ("l", "x"))
    assert model.yaml["train_pipeline"] == {"tiny": "rtmdet-tiny", "s": "rtmdet-s"}.get(scale, "rtmdet")


def test_batchnorm_as_mmdetection_builds_it(tiny):
    bns = [m for m in tiny.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-5 and m.momentum == 0.1 for m in bns)


@pytest.mark.parametrize("shape", [(64, 64), (64, 96)])
def test_forward_shapes(tiny, shape):
    h, w = shape
    n = sum((h // s) * (w // s) for s in (8, 16, 32))
    assert tiny.strides == [8, 16, 32]
    tiny.eval()
    with torch.no_grad():
        pred = tiny(torch.rand(2, 3, h, w))
    assert pred.boxes.shape == (2, n, 4) and pred.scores.shape == (2, n, 80)
    tiny.train()
    out = tiny(torch.rand(2, 3, h, w))
    assert out.cls_logits.shape == (2, n, 80) and out.ltrb.shape == (2, n, 4) and out.points.shape == (n, 2)
    tiny.eval()


def test_nc_changes_only_the_class_predictors():
    base = params(on_meta("rtmdet-tiny.yaml").model)
    assert params(on_meta("rtmdet-tiny.yaml", nc=1).model) == base - 79 * 3 * (96 + 1)


# --------------------------------------------------------------------------- mmdetection key correspondence
# mmdetection module prefix -> our row (docs/families.md lists the same table for checkpoint converters).
MMDET_ROW = {
    "backbone.stem": 1,
    **{f"backbone.stage{i + 1}.{j}": 2 + 2 * i + j for i in range(3) for j in range(2)},
    "backbone.stage4.0": 8, "backbone.stage4.1": 9, "backbone.stage4.2": 10,
    "neck.reduce_layers.0": 11, "neck.top_down_blocks.0": 14, "neck.reduce_layers.1": 15,
    "neck.top_down_blocks.1": 18, "neck.downsamples.0": 19, "neck.bottom_up_blocks.0": 21,
    "neck.downsamples.1": 22, "neck.bottom_up_blocks.1": 24,
    "neck.out_convs.0": 25, "neck.out_convs.1": 26, "neck.out_convs.2": 27,
    "bbox_head": 28,
}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def conv_module(prefix: str) -> list[str]:
    """mmcv ConvModule with BN: conv (no bias), bn."""
    return [f"{prefix}.conv.weight", *(f"{prefix}.bn.{k}" for k in BN)]


def csp_layer(prefix: str, blocks: int, attention: bool) -> list[str]:
    keys = [k for part in ("main_conv", "short_conv", "final_conv") for k in conv_module(f"{prefix}.{part}")]
    for j in range(blocks):
        b = f"{prefix}.blocks.{j}"
        keys += conv_module(f"{b}.conv1") + conv_module(f"{b}.conv2.depthwise_conv")
        keys += conv_module(f"{b}.conv2.pointwise_conv")
    return keys + ([f"{prefix}.attention.fc.weight", f"{prefix}.attention.fc.bias"] if attention else [])


def mmdet_keys(scale: str) -> list[str]:
    """mmdetection's RTMDet state-dict keys in its order, from its module tree (cspnext.py, csp_layer.py,
    cspnext_pafpn.py, rtmdet_head.py) and the config's deepen factor."""
    stage_blocks = [max(round(n * DEEPEN[scale]), 1) for n in (3, 6, 6, 3)]
    neck_blocks = max(round(3 * DEEPEN[scale]), 1)
    keys = [k for i in range(3) for k in conv_module(f"backbone.stem.{i}")]
    for i, n in enumerate(stage_blocks):
        s = f"backbone.stage{i + 1}"
        keys += conv_module(f"{s}.0")
        if i == 3:
            keys += conv_module(f"{s}.1.conv1") + conv_module(f"{s}.1.conv2") + csp_layer(f"{s}.2", n, True)
        else:
            keys += csp_layer(f"{s}.1", n, True)
    keys += conv_module("neck.reduce_layers.0") + conv_module("neck.reduce_layers.1")
    keys += csp_layer("neck.top_down_blocks.0", neck_blocks, False) + csp_layer("neck.top_down_blocks.1", neck_blocks,
                                                                                 False)
    keys += conv_module("neck.downsamples.0") + conv_module("neck.downsamples.1")
    keys += csp_layer("neck.bottom_up_blocks.0", neck_blocks, False)
    keys += csp_layer("neck.bottom_up_blocks.1", neck_blocks, False)
    keys += [k for i in range(3) for k in conv_module(f"neck.out_convs.{i}")]
    for tower in ("cls_convs", "reg_convs"):
        keys += [k for level in range(3) for i in range(2) for k in conv_module(f"bbox_head.{tower}.{level}.{i}")]
    for pred in ("rtm_cls", "rtm_reg"):
        keys += [f"bbox_head.{pred}.{level}.{p}" for level in range(3) for p in ("weight", "bias")]
    return keys


def to_ours(key: str) -> str:
    prefix = max((p for p in MMDET_ROW if key.startswith(p + ".")), key=len)
    return f"model.{MMDET_ROW[prefix]}.{key[len(prefix) + 1:]}"


@pytest.mark.parametrize("scale", ["tiny", "m", "x"])
def test_state_dict_maps_one_to_one_onto_mmdetection(scale):
    model = on_meta(f"rtmdet-{scale}.yaml")
    ours = model.state_dict()
    theirs = mmdet_keys(scale)
    mapped = [to_ours(k) for k in theirs]
    assert len(set(mapped)) == len(theirs) and set(mapped) == set(ours)  # a bijection
    # backbone and head in mmdetection's order; the neck's rows follow the data flow instead (a row can only
    # read earlier rows), its keys inside each module in mmdetection's order
    order = {k: i for i, k in enumerate(ours)}
    positions = [order[k] for k in mapped]
    backbone = [p for k, p in zip(theirs, positions) if k.startswith("backbone.")]
    head = [p for k, p in zip(theirs, positions) if k.startswith("bbox_head.")]
    assert backbone == sorted(backbone) and head == sorted(head)
    for module in (p for p in MMDET_ROW if p.startswith("neck.")):
        inside = [p for k, p in zip(theirs, positions) if k.startswith(module + ".")]
        assert inside == sorted(inside), module
    # widths as mmdetection computes them: int(c * widen)
    w = WIDEN[scale]
    stem = ours[to_ours("backbone.stem.0.conv.weight")]
    assert stem.shape == (int(64 * w // 2), 3, 3, 3)
    main = ours[to_ours("backbone.stage2.1.main_conv.conv.weight")]
    assert main.shape == (int(int(256 * w) * 0.5), int(256 * w), 1, 1)
    assert ours[to_ours("bbox_head.rtm_cls.2.weight")].shape == (80, int(256 * w), 1, 1)


@pytest.mark.slow
def test_onnx_export_carries_the_input_normalisation_and_decodes_alike(tmp_path):
    """An ONNX export of model + decode takes rtdet's RGB [0, 1] image, like the PyTorch model: the BGR
    mean / std step is inside the graph, and ONNX Runtime gives the same boxes and scores."""
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnxruntime as ort

    from tests.engine.conftest import RTMDET_TINY_YAML

    path = tmp_path / "micro.yaml"
    path.write_text(RTMDET_TINY_YAML)
    torch.manual_seed(0)
    model = build_model(str(path)).eval()

    class WithDecode(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            boxes, scores, _ = self.m.head.decode(self.m(x), tuple(x.shape[2:]))
            return boxes, scores

    x = torch.rand(1, 3, 64, 96)
    onnx_file = tmp_path / "micro.onnx"
    exported = WithDecode(model).eval()
    torch.onnx.export(exported, (x,), str(onnx_file), opset_version=17, dynamo=False,
                      input_names=["images"], output_names=["boxes", "scores"])
    boxes, scores = ort.InferenceSession(str(onnx_file)).run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref_boxes, ref_scores = exported(x)
    assert np.abs(boxes - ref_boxes.numpy()).max() < 1e-3 and np.abs(scores - ref_scores.numpy()).max() < 1e-5
