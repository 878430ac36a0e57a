"""HGNetv2 (D-FINE's backbone): whole-backbone parameter counts of every variant to the digit against the
official code (plain BN, with learnable affine blocks, with frozen BN), the official module layout and
state-dict names, FrozenBatchNorm2d, BN folding and the stem's shape maths."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet import build_model
from rtdet.nn.builder import ModelConfigError
from rtdet.nn.modules.hgnetv2 import (
    ConvBNAct,
    FrozenBatchNorm2d,
    HGNetv2Block,
    HGNetv2Stage,
    HGNetv2Stem,
    LearnableAffineBlock,
    LightConvBNAct,
)
from tests.nn.modules.batchnorm import randomise_bn

# The official HGNetv2.arch_configs (D-FINE src/nn/backbone/hgnetv2.py): stem [in, mid, out] and stage rows
# [in, mid, out, blocks, downsample, light_block, kernel_size, layer_num].
VARIANTS = {
    "B0": ([3, 16, 16], [[16, 16, 64, 1, False, False, 3, 3], [64, 32, 256, 1, True, False, 3, 3],
                         [256, 64, 512, 2, True, True, 5, 3], [512, 128, 1024, 1, True, True, 5, 3]]),
    "B1": ([3, 24, 32], [[32, 32, 64, 1, False, False, 3, 3], [64, 48, 256, 1, True, False, 3, 3],
                         [256, 96, 512, 2, True, True, 5, 3], [512, 192, 1024, 1, True, True, 5, 3]]),
    "B2": ([3, 24, 32], [[32, 32, 96, 1, False, False, 3, 4], [96, 64, 384, 1, True, False, 3, 4],
                         [384, 128, 768, 3, True, True, 5, 4], [768, 256, 1536, 1, True, True, 5, 4]]),
    "B3": ([3, 24, 32], [[32, 32, 128, 1, False, False, 3, 5], [128, 64, 512, 1, True, False, 3, 5],
                         [512, 128, 1024, 3, True, True, 5, 5], [1024, 256, 2048, 1, True, True, 5, 5]]),
    "B4": ([3, 32, 48], [[48, 48, 128, 1, False, False, 3, 6], [128, 96, 512, 1, True, False, 3, 6],
                         [512, 192, 1024, 3, True, True, 5, 6], [1024, 384, 2048, 1, True, True, 5, 6]]),
    "B5": ([3, 32, 64], [[64, 64, 128, 1, False, False, 3, 6], [128, 128, 512, 2, True, False, 3, 6],
                         [512, 256, 1024, 5, True, True, 5, 6], [1024, 512, 2048, 2, True, True, 5, 6]]),
    "B6": ([3, 48, 96], [[96, 96, 192, 2, False, False, 3, 6], [192, 192, 512, 3, True, False, 3, 6],
                         [512, 384, 1024, 6, True, True, 5, 6], [1024, 768, 2048, 3, True, True, 5, 6]]),
}
# /work/shared/research/dfine_deim.md section 3, measured from the official code: all four stages,
# (BN, BN + learnable affine blocks, FrozenBN without affine blocks).
REFERENCE = {
    "B0": (1_850_336, 1_850_396, 1_838_064),
    "B1": (2_196_944, 2_197_004, 2_182_856),
    "B2": (6_026_544, 6_026_626, 5_999_848),
    "B3": (10_048_816, 10_048_910, 10_014_216),
    "B4": (13_553_376, 13_553_482, 13_507_680),
    "B5": (33_325_760, 33_325_930, 33_231_840),
    "B6": (69_013_472, 69_013_706, 68_847_056),
}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def backbone(variant: str, use_lab: bool = False, freeze_norm: bool = False) -> nn.Sequential:
    stem, stages = VARIANTS[variant]
    return nn.Sequential(HGNetv2Stem(*stem, use_lab, freeze_norm),
                         *(HGNetv2Stage(*row, use_lab, freeze_norm) for row in stages))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_whole_backbone_counts_to_the_digit(variant):
    plain, lab, frozen = REFERENCE[variant]
    with torch.device("meta"):
        assert count(backbone(variant)) == plain
        assert count(backbone(variant, use_lab=True)) == lab
        assert count(backbone(variant, freeze_norm=True)) == frozen


def test_learnable_affine_block_is_two_scalars_scale_then_bias():
    lab = LearnableAffineBlock()
    assert [(k, tuple(p.shape), p.item()) for k, p in lab.named_parameters()] == [("scale", (1,), 1.0),
                                                                                  ("bias", (1,), 0.0)]
    with torch.no_grad():
        lab.scale.fill_(2.0)
        lab.bias.fill_(-1.0)
    assert torch.equal(lab(torch.tensor([0.0, 3.0])), torch.tensor([-1.0, 5.0]))


def test_affine_block_only_after_an_activation():
    assert isinstance(ConvBNAct(4, 8, 3, use_lab=True).lab, LearnableAffineBlock)
    no_act = ConvBNAct(4, 8, 3, use_act=False, use_lab=True)
    assert isinstance(no_act.act, nn.Identity) and isinstance(no_act.lab, nn.Identity)
    light = LightConvBNAct(4, 8, 5, use_lab=True)
    assert isinstance(light.conv1.lab, nn.Identity) and isinstance(light.conv2.lab, LearnableAffineBlock)
    assert light.conv2.conv.groups == 8 and light.conv2.conv.kernel_size == (5, 5)
    stage = HGNetv2Stage(8, 4, 16, 1, True, use_lab=True)
    down = stage.downsample  # depthwise 3x3/2 without activation, so without affine block
    assert down.conv.groups == 8 and down.conv.stride == (2, 2)
    assert isinstance(down.act, nn.Identity) and isinstance(down.lab, nn.Identity)


def test_stage_layout_and_state_dict_names_are_the_official_ones():
    stage = HGNetv2Stage(256, 64, 512, 2, True, True, 5, 3, use_lab=True)  # B0 stage 3
    keys = list(stage.state_dict())
    assert keys[:5] == ["downsample.conv.weight", "downsample.bn.weight", "downsample.bn.bias",
                        "downsample.bn.running_mean", "downsample.bn.running_var"]
    assert "blocks.0.layers.0.conv1.conv.weight" in keys and "blocks.0.layers.2.conv2.lab.scale" in keys
    assert "blocks.0.layers.0.conv1.lab.scale" not in keys
    assert keys[-5:] == ["blocks.1.aggregation.1.bn.running_mean", "blocks.1.aggregation.1.bn.running_var",
                         "blocks.1.aggregation.1.bn.num_batches_tracked", "blocks.1.aggregation.1.lab.scale",
                         "blocks.1.aggregation.1.lab.bias"]
    first, second = stage.blocks
    assert not first.residual and second.residual  # residual from the second block of a stage on
    # "se" aggregation: 1x1 to out/2, then 1x1 to out, both activated; no ESE attention
    assert first.aggregation[0].conv.in_channels == 256 + 3 * 64 and first.aggregation[0].conv.out_channels == 256
    assert second.aggregation[0].conv.in_channels == 512 + 3 * 64
    assert all(isinstance(m.act, nn.ReLU) for m in first.aggregation)
    assert not any(isinstance(m, nn.Sigmoid) for m in stage.modules())
    assert isinstance(HGNetv2Stage(16, 16, 64, 1, False).downsample, nn.Identity)


def test_block_residual_adds_the_input():
    torch.manual_seed(0)
    block = HGNetv2Block(8, 4, 8, 2, residual=True).eval()
    plain = HGNetv2Block(8, 4, 8, 2, residual=False).eval()
    plain.load_state_dict(block.state_dict())
    x = torch.randn(1, 8, 6, 6)
    assert torch.allclose(block(x), plain(x) + x)


@pytest.mark.parametrize("shape", [(640, 640), (64, 96), (65, 97), (33, 18), (4, 4)])
def test_stem_shape_maths(shape):
    """stem1 3x3/2 gives ceil(H/2); the 2x2 convs and the 2x2 stride-1 pool on the right/bottom-padded
    map keep it; stem3 3x3/2 gives ceil(H/4)."""
    h, w = shape
    stem = HGNetv2Stem(3, 16, 24, use_lab=True).eval()
    x = torch.zeros(1, 3, h, w)
    half = stem.stem1(x)
    assert half.shape[-2:] == (math.ceil(h / 2), math.ceil(w / 2))
    padded = F.pad(half, [0, 1, 0, 1])
    assert stem.stem2b(F.pad(stem.stem2a(padded), [0, 1, 0, 1])).shape[-2:] == half.shape[-2:]
    pool = nn.MaxPool2d(2, 1, ceil_mode=True)  # the official branch
    assert pool(padded).shape == half.shape
    assert stem(x).shape == (1, 24, math.ceil(h / 4), math.ceil(w / 4))


def test_stem_max_pool_branch_matches_the_official_pool():
    torch.manual_seed(0)
    stem = HGNetv2Stem(3, 8, 16, use_lab=True).eval()
    with torch.no_grad():  # a negative affine bias makes the pooled map negative: the zero padding must win
        stem.stem1.lab.bias.fill_(-0.5)
        x = torch.randn(2, 3, 18, 22)
        padded = F.pad(stem.stem1(x), [0, 1, 0, 1])
        branch = stem.stem2b(F.pad(stem.stem2a(padded), [0, 1, 0, 1]))
        official = stem.stem4(stem.stem3(torch.cat([nn.MaxPool2d(2, 1, ceil_mode=True)(padded), branch], 1)))
        assert torch.allclose(stem(x), official, atol=1e-6)


def test_frozen_batchnorm_is_buffers_only_and_equals_eval_batchnorm():
    bn = randomise_bn(nn.BatchNorm2d(6, eps=1e-5)).eval()
    frozen = FrozenBatchNorm2d(6)
    assert list(frozen.parameters()) == []
    assert list(frozen.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    frozen.load_state_dict(bn.state_dict())  # a trainable BN's state (with num_batches_tracked) loads
    x = torch.randn(2, 6, 5, 5)
    frozen.train()  # training changes nothing: no batch statistics, no updates
    assert torch.allclose(frozen(x), bn(x), atol=1e-6)
    assert torch.equal(frozen.running_mean, bn.running_mean)


def test_freeze_norm_replaces_every_backbone_batchnorm():
    stage = HGNetv2Stage(32, 16, 64, 2, True, True, 5, 3, freeze_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in stage.modules())
    frozen = [m for m in stage.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(m.eps == 1e-5 for m in frozen)
    convs = sum(m.weight.numel() for m in stage.modules() if isinstance(m, nn.Conv2d))
    assert count(stage) == convs  # only conv weights are trained


@pytest.mark.parametrize("freeze_norm", [False, True])
def test_fuse_folds_bn_and_keeps_the_outputs(freeze_norm):
    torch.manual_seed(0)
    model = randomise_bn(backbone("B0", use_lab=True, freeze_norm=freeze_norm)).eval()
    for m in model.modules():
        if isinstance(m, LearnableAffineBlock):
            with torch.no_grad():
                m.scale.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        for m in model.modules():
            if isinstance(m, ConvBNAct):
                m.fuse_()
        after = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d) for m in model.modules())
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)


def _backbone_yaml(rows: list) -> dict:
    return {"nc": 80, "backbone": rows, "head": []}


def test_yaml_rows_are_the_official_config_rows_and_checked():
    d = _backbone_yaml([[-1, 1, "HGNetv2Stem", [3, 16, 16, True]],
                        [-1, 1, "HGNetv2Stage", [16, 16, 64, 1, False, False, 3, 3, True]]])
    with torch.device("meta"):
        model = build_model(d)
    assert model.head_index is None and [info.c2 for info in model.layers_info] == [16, 64]
    bad = _backbone_yaml([[-1, 1, "HGNetv2Stem", [3, 16, 16]], [-1, 1, "HGNetv2Stage", [32, 16, 64, 1, False]]])
    with pytest.raises(ModelConfigError, match="declares 32 input channels but its input has 16"):
        build_model(bad)
    repeated = _backbone_yaml([[-1, 2, "HGNetv2Stem", [3, 16, 16]]])
    with pytest.raises(ModelConfigError, match="repeats must be 1"):
        build_model(repeated)
