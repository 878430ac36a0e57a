"""The family-head contract: the generic head channel rule, strides at build time, one head row,
per-family loss settings, named training outputs."""

import pytest
import torch
import torch.nn as nn

from rtdet import ModelConfigError, build_model
from rtdet.engine.settings import SettingsError, check_keys, resolve_settings
from rtdet.families import Family, register_family, unregister_family
from rtdet.losses.base import Criterion
from rtdet.nn.heads.base import Decoded, DetectionHead, finalize
from rtdet.nn.modules.common import Conv
from rtdet.nn.registry import lookup, register, unregister
from rtdet.utils.schema import Setting


class ToyCriterion(Criterion):
    SETTINGS = (Setting("toy_gain", 2.0, float, "weight of the toy loss", low=0.0),)

    def __init__(self, nc: int, **hyp):
        super().__init__(nc, **hyp)
        self.gain = self.hyp["toy_gain"]

    def forward(self, outputs, batch):
        loss = self.gain * outputs.mean()
        return loss, {"toy": loss.detach()}


class ToyHead(DetectionHead):
    """1x1 conv per level; records what the model told it."""

    family = "toyfam"

    def __init__(self, nc: int, ch: list[int]):
        super().__init__()
        self.nc, self.ch = nc, ch
        self.convs = nn.ModuleList(nn.Conv2d(c, nc, 1) for c in ch)

    def setup(self, strides):
        super().setup(strides)
        self.setup_calls = getattr(self, "setup_calls", 0) + 1

    def forward(self, feats, targets=None):
        return torch.cat([c(f).flatten(2) for c, f in zip(self.convs, feats)], 2)

    def decode(self, outputs, img_shape):
        scores = outputs.sigmoid().transpose(1, 2)  # [B, N, nc]
        boxes = torch.tensor([0.0, 0.0, 8.0, 8.0]).expand(*scores.shape[:2], 4)
        return Decoded(boxes, scores)


YAML = {
    "nc": 3,
    "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [24, 3, 2]]],
    "head": [[[1, 2], 1, "ToyHead", ["nc"]]],
}


@pytest.fixture
def toy_head():
    register(channels="head")(ToyHead)
    register_family(Family(name="toyfam", heads=(ToyHead,), criterion=ToyCriterion))
    yield ToyHead
    unregister_family("toyfam")
    unregister("ToyHead")


def test_head_rule_passes_nc_and_input_channels(toy_head):
    model = build_model(YAML, nc=5)
    assert lookup("ToyHead").is_head and model.head_index == 3
    assert model.head.nc == 5 and model.head.ch == [16, 24]


def test_strides_are_learnt_once_at_build_and_handed_to_the_head(toy_head, monkeypatch):
    model = build_model(YAML)
    assert model.strides == [4, 8] and model.head.strides == [4, 8] and model.head.setup_calls == 1
    monkeypatch.setattr(type(model), "forward", lambda *a, **k: pytest.fail("strides must not run the model"))
    assert model.strides == [4, 8]  # a plain attribute: reading it runs nothing


def test_the_stride_probe_does_not_run_the_head(toy_head, monkeypatch):
    monkeypatch.setattr(ToyHead, "forward", lambda *a, **k: pytest.fail("the probe stops before the head"))
    assert build_model(YAML).strides == [4, 8]


def test_a_head_must_be_the_last_row(toy_head):
    bad = {**YAML, "head": [[[1, 2], 1, "ToyHead", ["nc"]], [-1, 1, "nn.Identity", []]]}
    with pytest.raises(ModelConfigError, match=r"one head, in its last row; head modules found in rows 3 \(ToyHead\)"):
        build_model(bad)


def test_head_rule_rejects_a_bad_class_count(toy_head):
    with pytest.raises(ModelConfigError, match=r"row 3 \(ToyHead\): the number of classes must be a positive"):
        build_model({**YAML, "head": [[[1, 2], 1, "ToyHead", [0]]]})
    with pytest.raises(ModelConfigError, match=r"nc \(the number of classes\) must be a positive integer"):
        build_model(YAML, nc=0)


def test_a_module_that_fails_on_real_tensors_is_named_by_row(toy_head):
    class Broken(nn.Module):
        def __init__(self, c1, c2):
            super().__init__()

        def forward(self, x):
            raise RuntimeError("shapes do not fit")

    register(Broken)
    try:
        bad = {**YAML, "backbone": [*YAML["backbone"][:2], [-1, 1, "Broken", [24]]]}
        with pytest.raises(ModelConfigError, match=r"row 2 \(Broken\): its arguments \[\d+, 24\] fail on its input of "
                                                   r"shape \[1, \d+, 32, 32\] .*RuntimeError: shapes do not fit"):
            build_model(bad)
    finally:
        unregister("Broken")


def test_batchnorm_settings_come_from_the_yaml(toy_head):
    bns = [m for m in build_model({**YAML, "batchnorm": {"eps": 1e-5, "momentum": 0.1}}).modules()
           if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-5 and m.momentum == 0.1 for m in bns)
    with pytest.raises(ModelConfigError, match=r"batchnorm.eps must be a number in \(0, 1\), got 'small'"):
        build_model({**YAML, "batchnorm": {"eps": "small"}})


def test_loss_settings_belong_to_their_family(toy_head):
    assert resolve_settings({"toy_gain": 3.0}, family="toyfam")["toy_gain"] == 3.0
    assert resolve_settings({}, family="toyfam")["toy_gain"] == 2.0  # the criterion's declared default
    check_keys({"toy_gain": 1.0, "loss_giou": 1.0})  # family unknown yet: any family's keys
    with pytest.raises(SettingsError, match=r"'loss_giou' is a loss setting of the dfine / rtdetr family, but this "
                                            r"model's head is toyfam; its loss settings are: toy_gain"):
        resolve_settings({"loss_giou": 1.0}, family="toyfam")


def test_rtdetr_training_output_has_named_fields():
    from rtdet.nn.heads.rtdetr import RTDETRTrainOutput

    assert RTDETRTrainOutput._fields == ("dec_bboxes", "dec_scores", "enc_bboxes", "enc_scores", "dn_meta")


def test_finalize_thins_dense_outputs_with_nms_and_keeps_final_ones():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]])
    scores = torch.tensor([[[0.9, 0.1], [0.8, 0.7], [0.05, 0.6]]])
    dense = finalize(Decoded(boxes, scores), conf=0.5, iou=0.5)[0]
    assert dense.scores.tolist() == pytest.approx([0.9, 0.6]) and dense.labels.tolist() == [0, 1]
    multi = finalize(Decoded(boxes, scores), conf=0.5, iou=0.5, multi_label=True)[0]
    assert multi.labels.tolist() == [0, 1, 1]  # box 1's class 1 survives: NMS is per class
    final = finalize(Decoded(boxes, scores[..., 0], torch.tensor([[3, 1, 2]])), conf=0.5, max_det=1)[0]
    assert final.labels.tolist() == [3] and final.boxes.tolist() == [[0.0, 0.0, 10.0, 10.0]]


def test_the_default_postprocess_is_decode_then_finalize(toy_head):
    model = build_model(YAML).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 64))
    dets = model.head.postprocess(out, (64, 64), conf=0.4, iou=0.5)
    assert len(dets) == 2
    for d in dets:  # identical boxes: at most one per class survives class-aware NMS
        assert len(d) in (1, 2, 3) and len(set(d.labels.tolist())) == len(d)


def test_register_refuses_a_head_that_is_not_a_detection_head():
    class NotAHead(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match=r"NotAHead must subclass rtdet\.nn\.heads\.base\.DetectionHead"):
        register(channels="head")(NotAHead)
    with pytest.raises(TypeError, match="must subclass"):
        register(channels=lambda args, row: (args, None, 1), head=True)(NotAHead)
    with pytest.raises(KeyError):
        lookup("NotAHead")  # nothing was registered


def test_the_hooks_the_engine_reads_are_declared_with_defaults(toy_head):
    assert (DetectionHead.is_head, DetectionHead.ddp_find_unused_parameters, DetectionHead.dynamic) == (
        True, True, False)
    model = build_model(YAML)
    assert model.head.is_head and model.model[0].is_head is False  # the builder stamps every row
    model.head.extra = Conv(3, 3)  # a Conv + BN inside a head without a fuse_ of its own...
    model.fuse()
    assert isinstance(model.head.extra.bn, nn.Identity)  # ...is folded by the default fuse_
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
