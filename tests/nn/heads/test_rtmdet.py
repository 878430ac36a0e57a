"""RTMDetSepBNHead: convolutions shared across levels with BatchNorm per level, priors at grid corners,
distances x stride (exp on l/x), mmdetection's init, decoding, and mmdetection's state-dict keys."""

import copy
import math

import pytest
import torch
import torch.nn as nn

from rtdet.nn.heads.rtmdet import RTMDetPredictions, RTMDetSepBNHead, RTMDetTrainOutput
from rtdet.ops.anchors import grid_priors


def make_head(nc=3, c=16, exp_on_reg=False, **kw) -> RTMDetSepBNHead:
    torch.manual_seed(0)
    head = RTMDetSepBNHead(nc, [c, c, c], c, 2, exp_on_reg, **kw)
    head.setup([8, 16, 32])
    return head


def feats(c=16, b=2, size=(64, 96)):
    h, w = size
    return [torch.randn(b, c, h // s, w // s) for s in (8, 16, 32)]


def test_shared_convs_are_one_tensor_with_a_batchnorm_per_level():
    head = make_head()
    for tower in (head.cls_convs, head.reg_convs):
        for i in range(2):
            convs = {id(tower[level][i].conv.weight) for level in range(3)}
            bns = {id(tower[level][i].bn) for level in range(3)}
            assert len(convs) == 1 and len(bns) == 3
    # counted once: 2 towers x 2 shared convs, 2 towers x 2 convs x 3 levels of BN, 3 levels of predictors
    c, nc = 16, 3
    expected = 2 * 2 * c * c * 9 + 2 * 2 * 3 * 2 * c + 3 * (c * nc + nc) + 3 * (c * 4 + 4)
    assert sum(p.numel() for p in head.parameters()) == expected
    # the state dict repeats the shared weight under every level, exactly as mmdetection's does
    sd = head.state_dict()
    assert {"cls_convs.2.1.conv.weight", "reg_convs.1.0.conv.weight", "rtm_cls.2.bias", "rtm_reg.0.weight"} <= set(sd)
    assert sd["cls_convs.0.0.conv.weight"].data_ptr() == sd["cls_convs.2.0.conv.weight"].data_ptr()
    unshared = make_head(share_conv=False)
    assert sum(p.numel() for p in unshared.parameters()) == expected + 2 * 2 * 2 * c * c * 9


def test_every_level_trains_the_one_shared_weight():
    head = make_head().train()
    out = head(feats())  # priors per level at 64x96: 96, 24, 6
    w = head.cls_convs[0][0].conv.weight
    levels = (out.cls_logits[:, :96], out.cls_logits[:, 96:120], out.cls_logits[:, 120:])
    grads = [torch.autograd.grad(lv.sum(), w, retain_graph=True)[0] for lv in levels]
    assert all(g.abs().sum() > 0 for g in grads)
    assert not torch.allclose(grads[0], grads[2])


@pytest.mark.parametrize("exp_on_reg", [False, True])
def test_boxes_are_distances_times_stride_around_the_prior(exp_on_reg):
    head = make_head(exp_on_reg=exp_on_reg).eval()
    distance = (1.0, 2.0, 3.0, 4.0)  # l, t, r, b in strides
    for conv in head.rtm_reg:
        nn.init.zeros_(conv.weight)
        bias = torch.tensor(distance).log() if exp_on_reg else torch.tensor(distance)
        conv.bias.data.copy_(bias)
    with torch.no_grad():
        pred = head(feats(b=1))
    assert isinstance(pred, RTMDetPredictions)
    points, strides = grid_priors([(8, 12), (4, 6), (2, 3)], [8, 16, 32])
    d = torch.tensor(distance) * strides[:, None]
    expected = torch.cat([points - d[:, :2], points + d[:, 2:]], 1)
    assert torch.allclose(pred.boxes[0], expected, atol=1e-4)
    assert pred.scores.shape == (1, 96 + 24 + 6, 3) and 0 <= pred.scores.min() <= pred.scores.max() <= 1


def test_init_follows_mmdetection():
    head = make_head(c=64)
    prior_bias = -math.log((1 - 0.01) / 0.01)
    for conv in head.rtm_cls:
        assert torch.allclose(conv.bias, torch.full_like(conv.bias, prior_bias))
    for conv in head.rtm_reg:
        assert torch.count_nonzero(conv.bias) == 0
    w = head.cls_convs[0][0].conv.weight
    assert abs(float(w.detach().std()) - 0.01) < 0.001 and abs(float(w.detach().mean())) < 0.001
    for m in head.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_train_output_and_decode():
    head = make_head().train()
    out = head(feats())
    assert isinstance(out, RTMDetTrainOutput)
    n = 96 + 24 + 6
    assert out.cls_logits.shape == (2, n, 3) and out.ltrb.shape == (2, n, 4)
    assert out.points.shape == (n, 2) and out.strides.shape == (n,)
    # decode clips to the input and silences boxes left without area (mmdet: min_bbox_size 0)
    boxes = torch.tensor([[[-5.0, 2.0, 20.0, 70.0], [100.0, 10.0, 120.0, 30.0]]])
    scores = torch.full((1, 2, 3), 0.5)
    dec = head.decode(RTMDetPredictions(boxes, scores), (64, 96))
    assert dec.boxes[0, 0].tolist() == [0.0, 2.0, 20.0, 64.0]
    assert dec.boxes[0, 1].tolist() == [96.0, 10.0, 96.0, 30.0] and torch.all(dec.scores[0, 1] == 0)
    assert torch.all(dec.scores[0, 0] == 0.5) and dec.labels is None


def test_fused_head_gives_the_same_predictions():
    head = make_head()
    for m in head.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    head.eval()
    x = feats(b=1)
    fused = copy.deepcopy(head)
    for m in list(fused.modules()):
        if hasattr(m, "fuse_"):
            m.fuse_()
    with torch.no_grad():
        a, b = head(x), fused(x)
    assert torch.allclose(a.boxes, b.boxes, atol=1e-4) and torch.allclose(a.scores, b.scores, atol=1e-6)


def test_bad_inputs_are_reported():
    with pytest.raises(ValueError, match="same channels"):
        RTMDetSepBNHead(3, [16, 32, 64], 16)
    head = make_head()
    with pytest.raises(ValueError, match="3 levels"):
        head(feats()[:2])
