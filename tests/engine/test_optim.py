"""Optimizer groups (backbone LR, no decay on norms / biases / embeddings) and the LR schedules."""

import math

import pytest
import torch
import torch.nn as nn

from rtdet.engine.optim import LRSchedule, build_optimizer, param_groups, warmup_steps
from rtdet.io.load import build_model


def test_groups_split_backbone_and_decay(tiny_yaml):
    model = build_model(str(tiny_yaml), nc=2)
    groups = param_groups(model, weight_decay=0.05, backbone_lr_ratio=0.1)
    n_backbone = len(model.yaml["backbone"])
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert len(by_id) == sum(1 for p in model.parameters() if p.requires_grad)  # every parameter, once
    for name, p in model.named_parameters():
        g = by_id[id(p)]
        row = int(name.split(".")[1])
        assert g["lr_scale"] == (0.1 if row < n_backbone else 1.0), name
        module = model.get_submodule(name.rsplit(".", 1)[0])
        no_decay = p.ndim <= 1 or isinstance(module, nn.BatchNorm2d | nn.LayerNorm | nn.Embedding)
        assert g["weight_decay"] == (0.0 if no_decay else 0.05), name
    embed = model.head.denoising_class_embed.weight  # 2-D, but an embedding: no decay
    assert by_id[id(embed)]["weight_decay"] == 0.0
    conv = model.model[0].conv.weight
    assert by_id[id(conv)]["weight_decay"] == 0.05 and by_id[id(conv)]["lr_scale"] == 0.1


@pytest.mark.parametrize("name", ["AdamW", "adam", "SGD"])
def test_build_optimizer(tiny_yaml, name):
    model = build_model(str(tiny_yaml), nc=2)
    opt = build_optimizer(model, name, lr0=0.01, momentum=0.9, weight_decay=1e-4, backbone_lr_ratio=0.5)
    assert {g["lr"] for g in opt.param_groups} == {0.01, 0.005}
    if name == "SGD":
        assert all(g["nesterov"] for g in opt.param_groups)
    else:
        assert all(g["betas"] == (0.9, 0.999) for g in opt.param_groups)
    with pytest.raises(ValueError, match="optimizer='Lion'"):
        build_optimizer(model, "Lion")


def _schedule(kind, total=100, warmup=0, lrf=0.1, **kw):
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [p], "lr_scale": 1.0}, {"params": [nn.Parameter(torch.zeros(1))],
                           "lr_scale": 0.5, "is_bias": True}], lr=1.0, momentum=0.9)
    return LRSchedule(opt, lr0=1.0, total_steps=total, scheduler=kind, lrf=lrf, warmup=warmup, **kw), opt


def test_schedules_start_at_lr0_and_end_at_lrf():
    for kind in ("linear", "cosine", "flat-cosine"):
        s, _ = _schedule(kind)
        assert s.factor(0) == pytest.approx(1.0) and s.factor(100) == pytest.approx(0.1), kind
    lin, _ = _schedule("linear")
    assert lin.factor(50) == pytest.approx(0.55)
    cos, _ = _schedule("cosine")
    assert cos.factor(50) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cos.factor(25) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    flat, _ = _schedule("flat-cosine", flat_fraction=0.6)
    assert flat.factor(60) == 1.0 and flat.factor(80) == pytest.approx(0.1 + 0.9 * 0.5)
    const, _ = _schedule("constant")
    assert const.factor(99) == 1.0
    with pytest.raises(ValueError, match="step"):
        _schedule("step")


def test_warmup_ramps_lr_bias_lr_and_momentum():
    s, opt = _schedule("constant", warmup=10, warmup_bias_lr=0.2, momentum=0.9, warmup_momentum=0.5)
    s.step()  # the first optimizer step
    w, b = opt.param_groups
    assert w["lr"] == pytest.approx(0.1) and b["lr"] == pytest.approx(0.2 + (0.5 - 0.2) * 0.1)
    assert w["momentum"] == pytest.approx(0.54)
    for _ in range(9):
        s.step()
    assert w["lr"] == pytest.approx(1.0) and b["lr"] == pytest.approx(0.5) and w["momentum"] == pytest.approx(0.9)
    s.step()
    assert w["lr"] == 1.0 and s.state_dict()["step_count"] == 11


def test_warmup_is_capped_on_short_runs():
    assert warmup_steps(2000, 3.0, steps_per_epoch=10, total_steps=300, max_fraction=0.1) == 30
    assert warmup_steps(0, 3.0, steps_per_epoch=10, total_steps=1000, max_fraction=0.1) == 30
    assert warmup_steps(0, 3.0, steps_per_epoch=100, total_steps=1000, max_fraction=0.1) == 100


def test_linear_lr_scaling_by_batch():
    from rtdet.engine.optim import scaled_lr

    assert scaled_lr(0.004, 256, 256) == pytest.approx(0.004)
    assert scaled_lr(0.004, 16, 256) == pytest.approx(0.00025)  # what RTMDet users write for one GPU of 16
    assert scaled_lr(0.004, 16, 0) == 0.004  # lr_batch 0: lr0 as given
    with pytest.raises(ValueError, match="lr_batch"):
        scaled_lr(0.004, 16, -1)


def test_rtmdet_groups_list_shared_convs_once_and_never_decay_norms_or_biases(rtmdet_yaml):
    model = build_model(str(rtmdet_yaml), nc=2)
    groups = param_groups(model, weight_decay=0.05)
    listed = [p for g in groups for p in g["params"]]
    assert len(listed) == len({id(p) for p in listed}) == len(list(model.parameters()))  # no duplicates
    shared = model.head.cls_convs[0][0].conv.weight
    assert shared is model.head.cls_convs[2][0].conv.weight and sum(p is shared for p in listed) == 1
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        is_norm_or_bias = isinstance(module, nn.BatchNorm2d) or name.endswith(".bias")
        assert (id(p) not in decay) == is_norm_or_bias, name
    assert id(model.model[3].attention.fc.weight) in decay  # ChannelAttention's 1x1 conv weight decays
    opt = build_optimizer(model, "AdamW", lr0=0.004, weight_decay=0.05)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(listed)
