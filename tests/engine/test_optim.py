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


def test_build_optimizer_takes_adams_second_moment_decay(tiny_yaml):
    model = build_model(str(tiny_yaml), nc=2)
    opt = build_optimizer(model, "AdamW", lr0=0.01, momentum=0.9, weight_decay=1e-4, beta2=0.975)
    assert {g["betas"] for g in opt.param_groups} == {(0.9, 0.975)}
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


def _schedule_before(kind: str, total: int, warmup: int, lrf: float, flat: float, step: int) -> float:
    """The lr of the weight group (lr_scale 1, lr0 1) as LRSchedule computed it before warmup_shape and
    cosine_end existed: the reference the defaults must reproduce bit for bit."""
    p = min(max(step / total, 0.0), 1.0)
    if kind == "constant":
        f = 1.0
    elif kind == "linear":
        f = 1.0 - (1.0 - lrf) * p
    else:
        if kind == "flat-cosine":
            if p <= flat:
                return 1.0 * ((step + 1) / warmup if step < warmup else 1.0)
            p = (p - flat) / max(1.0 - flat, 1e-9)
        f = lrf + (1.0 - lrf) * 0.5 * (1.0 + math.cos(math.pi * p))
    return f * ((step + 1) / warmup if step < warmup else 1.0)


@pytest.mark.parametrize("kind", ["linear", "cosine", "flat-cosine", "constant"])
def test_default_warmup_shape_and_cosine_end_are_the_schedules_of_before(kind):
    for flat in (0.0, 0.37, 1.0):
        s, opt = _schedule(kind, total=97, warmup=11, lrf=0.05, flat_fraction=flat)
        for step in range(110):
            s.step()
            assert opt.param_groups[0]["lr"] == _schedule_before(kind, 97, 11, 0.05, flat, step), (flat, step)


def _deim_flat_cosine(it: int, base: float, total: int, warmup: int, flat: int, no_aug: int, gamma: float) -> float:
    """DEIM's flat_cosine_schedule (engine/optim/lr_scheduler.py, as research section 7.2 states it) at global
    iteration ``it``: quadratic warmup, flat to flat_iter, cosine to base x gamma at total - no_aug, then flat."""
    if it <= warmup:
        return base * (it / warmup) ** 2
    if it <= flat:
        return base
    if it >= total - no_aug:
        return base * gamma
    t = (it - flat) / (total - flat - no_aug)
    return base * gamma + (base - base * gamma) * 0.5 * (1 + math.cos(math.pi * t))


def test_deim_s_schedule_is_the_official_formula_at_chosen_steps():
    """deim.yaml's settings at 100 iterations per epoch: 132 epochs, warmup 2000 (quadratic), flat to epoch 64,
    cosine to lr0 x 0.5 at epoch 120 and flat after; both parameter groups follow their own base lr."""
    ipe, epochs = 100, 132
    total = ipe * epochs
    s, opt = _schedule("flat-cosine", total=total, warmup=2000, lrf=0.5, flat_fraction=64 / 132,
                       warmup_shape="quadratic", cosine_end=120 / 132)
    steps = [0, 1, 7, 500, 1000, 1999, 2000, 2001, 5000, 6400, 6401, 8000, 9200, 11999, 12000, 12001, 12500, total - 1]
    for step in steps:
        s.step(step)
        for g in opt.param_groups:
            official = _deim_flat_cosine(step, g["lr_scale"], total, 2000, 64 * ipe, 12 * ipe, 0.5)
            assert g["lr"] == pytest.approx(official, rel=1e-12, abs=1e-15), (step, g["lr_scale"])
    s.step(500)
    assert opt.param_groups[0]["lr"] == (500 / 2000) ** 2  # exactly lr0 x (it / W)^2
    s.step(120 * ipe)
    assert opt.param_groups[0]["lr"] == 0.5  # at epoch 120 of 132: lr0 x lrf (0.537 x lr0 before cosine_end)


def test_cosine_end_on_plain_cosine_and_before_the_flat_end():
    cos, _ = _schedule("cosine", cosine_end=0.5)
    assert cos.factor(25) == pytest.approx(0.1 + 0.9 * 0.5) and cos.factor(50) == pytest.approx(0.1)
    assert cos.factor(75) == cos.factor(100) == pytest.approx(0.1)
    late, _ = _schedule("flat-cosine", flat_fraction=0.6, cosine_end=0.5)  # DEIM: flat epochs past no-aug start
    assert late.factor(60) == 1.0 and late.factor(61) == pytest.approx(0.1)
    n, _ = _schedule("flat-cosine", lrf=1.0, flat_fraction=1.0, cosine_end=0.925)  # DEIM-N: constant lr
    assert {n.factor(k) for k in range(101)} == {1.0}
    with pytest.raises(ValueError, match="cosine_end=0"):
        _schedule("cosine", cosine_end=0)
    with pytest.raises(ValueError, match="warmup_shape='cubic'"):
        _schedule("cosine", warmup_shape="cubic")
