"""YOLO heads: the references' widths, parameter names and bias priors, anchors at cell centres, DFL decoding
checked by hand and against the official inference maths, PGI's dual head and its inference form."""

import math

import pytest
import torch

from rtdet.nn.heads.base import Decoded
from rtdet.nn.heads.yolo import DDetect, Detect, DualDDetect, YOLOTrainOutput
from rtdet.nn.model import count_parameters
from rtdet.ops.anchors import anchor_points


def conv_params(c1: int, c2: int, k: int, g: int = 1) -> int:
    return c2 * (c1 // g) * k * k + 2 * c2


def built(head, strides):
    head.setup(strides)
    return head


def test_ddetect_widths_and_count_follow_the_official_formula():
    head = DDetect(80, [256, 512, 512])
    c2, c3 = 64, 256  # make_divisible(max(256 // 4, 64, 16), 4), max(256, min(160, 128))
    assert head.cv2[0][0].conv.out_channels == c2 and head.cv3[0][0].conv.out_channels == c3
    per_level = [conv_params(c, c2, 3) + conv_params(c2, c2, 3, g=4) + (c2 // 4 * 64 + 64)
                 + conv_params(c, c3, 3) + conv_params(c3, c3, 3) + (c3 * 80 + 80) for c in (256, 512, 512)]
    assert count_parameters(head) == sum(per_level) + 16  # + the DFL bins
    small = DDetect(80, [64, 96, 128])  # GELAN-T: the class branch is min(2 nc, 128) = 128 wide
    assert small.cv3[0][0].conv.out_channels == 128


def test_detect_port_widths_and_class_branch_layouts():
    legacy, yolo11 = Detect(80, [64, 96, 128]), Detect(80, [64, 96, 128], legacy=False)
    assert legacy.cv2[0][0].conv.out_channels == 64 and legacy.cv3[0][0].conv.out_channels == 80  # min(nc, 100)
    cls_legacy = sum(conv_params(c, 80, 3) + conv_params(80, 80, 3) + 80 * 80 + 80 for c in (64, 96, 128))
    cls_dw = sum(conv_params(c, c, 3, g=c) + conv_params(c, 80, 1) + conv_params(80, 80, 3, g=80)
                 + conv_params(80, 80, 1) + 80 * 80 + 80 for c in (64, 96, 128))
    assert count_parameters(legacy.cv3) == cls_legacy and count_parameters(yolo11.cv3) == cls_dw
    assert count_parameters(legacy) - count_parameters(yolo11) == cls_legacy - cls_dw


def test_dual_head_parameter_names_and_order_match_the_official_state_dict():
    head = DualDDetect(80, [512, 512, 512, 256, 512, 512])
    keys = list(head.state_dict())
    prefixes = [k.split(".")[0] for k in keys]
    assert list(dict.fromkeys(prefixes)) == ["cv2", "cv3", "cv4", "cv5", "dfl", "dfl2"]
    assert keys[:3] == ["cv2.0.0.conv.weight", "cv2.0.0.bn.weight", "cv2.0.0.bn.bias"]
    assert "cv4.2.2.bias" in keys and keys[-1] == "dfl2.conv.weight"
    # each half sized from its own first input: auxiliary c2=128, c3=512; main c4=64, c5=256 (yolov9-c)
    assert head.cv2[0][0].conv.out_channels == 128 and head.cv3[0][0].conv.out_channels == 512
    assert head.cv4[0][0].conv.out_channels == 64 and head.cv5[0][0].conv.out_channels == 256


def test_bias_priors_are_set_from_the_strides():
    head = built(DualDDetect(80, [32, 32, 32, 32]), [8, 16, 8, 16])
    for box, cls in ((head.cv2, head.cv3), (head.cv4, head.cv5)):
        for b, c, s in zip(box, cls, (8, 16)):
            assert torch.all(b[-1].bias == 1.0)
            torch.testing.assert_close(c[-1].bias, torch.full((80,), math.log(5 / 80 / (640 / s) ** 2)))


def _fixed_head(nc: int = 3) -> DDetect:
    """A DDetect whose predictions do not depend on the input: every anchor puts all of its box mass in bins
    (1, 2, 3, 4) for (left, top, right, bottom) and scores logit 0 / 2 / -2 for the three classes."""
    head = built(DDetect(nc, [8, 8]), [8, 16]).eval()
    with torch.no_grad():
        for box, cls in zip(head.cv2, head.cv3):
            box[-1].weight.zero_()
            box[-1].bias.fill_(-30.0)
            for side, peak in enumerate((1, 2, 3, 4)):
                box[-1].bias[side * 16 + peak] = 30.0
            cls[-1].weight.zero_()
            cls[-1].bias.copy_(torch.tensor([0.0, 2.0, -2.0]))
    return head


def test_decode_by_hand():
    head = _fixed_head()
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]  # a 32x32 input: 16 + 4 anchors
    with torch.no_grad():
        out = head(feats)
    assert out.shape == (2, 4 + 3, 20)
    decoded = head.decode(out, (32, 32))
    assert isinstance(decoded, Decoded) and decoded.labels is None
    assert decoded.boxes.shape == (2, 20, 4) and decoded.scores.shape == (2, 20, 3)
    # level 0, cell (x=1, y=2): centre (12, 20) px; sides 1, 2, 3, 4 strides of 8 px
    torch.testing.assert_close(decoded.boxes[0, 2 * 4 + 1], torch.tensor([12 - 8, 20 - 16, 12 + 24, 20 + 32.0]))
    # level 1, cell (x=1, y=0): centre (24, 8) px, strides of 16 px
    torch.testing.assert_close(decoded.boxes[1, 16 + 1], torch.tensor([24 - 16, 8 - 32, 24 + 48, 8 + 64.0]))
    torch.testing.assert_close(decoded.scores[0, 0], torch.sigmoid(torch.tensor([0.0, 2.0, -2.0])))
    dets = head.postprocess(out, (32, 32), conf=0.5, iou=0.7, max_det=5)
    assert len(dets) == 2 and all(d.labels.eq(1).all() and 0 < len(d) <= 5 for d in dets)


def test_eval_output_is_the_official_inference_tensor():
    """[B, 4 + nc, N] = xywh * stride of dist2bbox(DFL(box), anchors), then sigmoid scores (official DDetect)."""
    torch.manual_seed(0)
    head = built(DDetect(5, [16, 32, 32]), [8, 16, 32]).eval()
    feats = [torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4), torch.randn(1, 32, 2, 2)]
    with torch.no_grad():
        ours = head(feats)
        maps = [torch.cat((head.cv2[i](f), head.cv3[i](f)), 1) for i, f in enumerate(feats)]
        box, cls = torch.cat([m.view(1, 64 + 5, -1) for m in maps], 2).split((64, 5), 1)
        points, strides = anchor_points([m.shape[2:] for m in maps], [8, 16, 32])
        lt, rb = head.dfl(box).chunk(2, 1)
        x1y1, x2y2 = points.T[None] - lt, points.T[None] + rb
        ref = torch.cat((torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides.T, cls.sigmoid()), 1)
    torch.testing.assert_close(ours, ref)


def test_train_output_is_named_and_raw():
    head = built(DualDDetect(3, [8, 8, 16, 16]), [8, 16, 8, 16]).train()
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2), torch.randn(2, 16, 4, 4), torch.randn(2, 16, 2, 2)]
    out = head(feats)
    assert isinstance(out, YOLOTrainOutput)
    assert [tuple(m.shape) for m in out.main] == [(2, 67, 4, 4), (2, 67, 2, 2)]
    assert [tuple(m.shape) for m in out.aux] == [(2, 67, 4, 4), (2, 67, 2, 2)]
    single = built(DDetect(3, [8, 8]), [8, 16]).train()(feats[:2])
    assert single.aux is None and len(single.main) == 2


def test_dual_head_predicts_with_its_main_branch_and_deploys_to_a_ddetect():
    torch.manual_seed(0)
    head = built(DualDDetect(3, [8, 8, 16, 16]), [8, 16, 8, 16]).eval()
    feats = [torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2), torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2)]
    with torch.no_grad():
        main, aux = head(feats)
        deployed = head.deploy_head()
        alone = deployed(feats[2:])
    assert head.deploy_inputs() == [2, 3]
    assert isinstance(deployed, DDetect) and deployed.cv2 is head.cv4 and deployed.dfl is head.dfl2
    assert deployed.strides == [8, 16] and count_parameters(deployed) < count_parameters(head)
    torch.testing.assert_close(alone, main)
    assert not torch.allclose(aux, main)
    torch.testing.assert_close(head.decode((main, aux), (32, 32)).boxes, head.decode(main, (32, 32)).boxes)


def test_dual_head_rejects_mismatched_branches():
    with pytest.raises(ValueError, match="strides"):
        DualDDetect(3, [8, 8, 16, 16]).setup([8, 16, 16, 32])
    with pytest.raises(ValueError, match="even number"):
        DualDDetect(3, [8, 8, 16])
    head = built(DualDDetect(3, [8, 8, 16, 16]), [8, 16, 8, 16])
    with pytest.raises(ValueError, match="pairs with a main map"):
        head([torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2), torch.randn(1, 16, 5, 4), torch.randn(1, 16, 2, 2)])


def test_decode_rejects_a_training_output():
    head = built(DDetect(3, [8, 8]), [8, 16])
    with pytest.raises(TypeError, match="eval mode"):
        head.decode(head.train()([torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)]), (32, 32))


def test_deployed_model_and_decode_export_to_onnx_with_the_same_outputs(tmp_path):
    """decode is tensor code: a fused dual model traced with it gives ONNX Runtime the same boxes and scores."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from rtdet import build_model

    torch.manual_seed(0)
    model = build_model({"nc": 3, "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]],
                                                 [-1, 1, "ADown", [16]], [-1, 1, "RepNCSPELAN4", [16, 16, 8, 1]],
                                                 [-1, 1, "AConv", [32]]],
                         "head": [[3, 1, "Conv", [16, 3, 1]], [[5, 4, 3, 4], 1, "DualDDetect", ["nc"]]]})
    model = model.eval().fuse()

    class WithDecode(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            d = self.m.head.decode(self.m(x), (x.shape[2], x.shape[3]))
            return d.boxes, d.scores

    x = torch.rand(1, 3, 64, 96)
    path = tmp_path / "m.onnx"
    wrapped = WithDecode(model).eval()
    torch.onnx.export(wrapped, (x,), str(path), opset_version=17, input_names=["images"],
                      output_names=["boxes", "scores"], dynamo=False)
    onnx.checker.check_model(str(path))
    boxes, scores = ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = wrapped(x)
    torch.testing.assert_close(torch.from_numpy(boxes), want[0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(torch.from_numpy(scores), want[1], rtol=1e-4, atol=1e-5)
