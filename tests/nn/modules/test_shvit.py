"""SHViT: parameter counts derived from the official architecture, SHSA maths, Conv-BN / residual fusion,
official key names, official and timm checkpoints, and YAML use of SHSA / SHViTBlock / the backbones."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

from rtdet import build_model
from rtdet.io.backbones import load_shvit_weights
from rtdet.nn.modules.shvit import (
    SHSA,
    SHVIT_MODELS,
    SHVIT_VARIANTS,
    Conv2dBN,
    Residual,
    SHViTBlock,
    SHViTS1,
    SHViTS2,
)


# ---------------------------------------------------------------------------------------------- counts
def conv_bn(a: int, b: int, k: int = 1, groups: int = 1) -> int:
    return a // groups * b * k * k + 2 * b


def analytic_backbone_params(embed, partial, depth, types, qk=16) -> int:
    """Parameter count of the official SHViT without its head, from the layer list of model/shvit.py."""
    ffn = lambda d: conv_bn(d, 2 * d) + conv_bn(2 * d, d)  # noqa: E731
    dw = lambda d: conv_bn(d, d, 3, d)  # noqa: E731
    shsa = lambda d, p: 2 * p + conv_bn(p, 2 * qk + p) + conv_bn(d, d)  # noqa: E731

    def patch_merging(d, o):
        h = 4 * d
        rd = max(8, int(h / 4 + 4) // 8 * 8)  # timm make_divisible(h * 0.25, 8), round_limit 0
        return conv_bn(d, h) + conv_bn(h, h, 3, h) + (h * rd + rd + rd * h + h) + conv_bn(h, o)

    e0 = embed[0]
    n = conv_bn(3, e0 // 8, 3) + conv_bn(e0 // 8, e0 // 4, 3) + conv_bn(e0 // 4, e0 // 2, 3) + conv_bn(e0 // 2, e0, 3)
    for i in range(3):
        if i:
            n += dw(embed[i - 1]) + ffn(embed[i - 1]) + patch_merging(embed[i - 1], embed[i])
            n += dw(embed[i]) + ffn(embed[i])
        n += depth[i] * (dw(embed[i]) + ffn(embed[i]) + (shsa(embed[i], partial[i]) if types[i] == "s" else 0))
    return n


# backbone (no head) and the published classifier sizes (README 6.3M / 11.4M / 14.2M / 16.5M, timm 6.33M / ...)
BACKBONE_PARAMS = {"s1": 6_009_168, "s2": 11_033_176, "s3": 13_795_377, "s4": 16_138_588}
PUBLISHED_M = {"s1": 6.33, "s2": 11.48, "s3": 14.25, "s4": 16.59}


@pytest.mark.parametrize("name", list(SHVIT_VARIANTS))
def test_backbone_parameter_counts(name):
    model = SHVIT_MODELS[f"shvit_{name}"]()
    count = sum(p.numel() for p in model.parameters())
    assert count == analytic_backbone_params(*SHVIT_VARIANTS[name]) == BACKBONE_PARAMS[name]
    c = model.out_channels[-1]
    with_head = count + 2 * c + c * 1000 + 1000  # BN_Linear(c, 1000) classifier
    assert round(with_head / 1e6, 2) == PUBLISHED_M[name]


def test_three_maps_at_strides_16_32_64():
    model = SHViTS1().eval()
    maps = model(torch.randn(2, 3, 128, 192))
    assert [tuple(m.shape) for m in maps] == [(2, 128, 8, 12), (2, 224, 4, 6), (2, 320, 2, 3)]
    assert [tuple(m.shape[-2:]) for m in model(torch.randn(1, 3, 100, 140))] == [(7, 9), (4, 5), (2, 3)]


def test_official_key_names():
    sd = SHViTS2().state_dict()
    expected = {
        "patch_embed.0.c.weight": (16, 3, 3, 3),
        "patch_embed.6.bn.running_var": (128,),
        "blocks1.0.conv.m.c.weight": (128, 1, 3, 3),
        "blocks1.1.ffn.m.pw2.bn.weight": (128,),
        "blocks2.0.0.m.c.weight": (128, 1, 3, 3),
        "blocks2.0.1.m.pw1.c.weight": (256, 128, 1, 1),
        "blocks2.1.conv1.c.weight": (512, 128, 1, 1),
        "blocks2.1.se.fc1.weight": (128, 512, 1, 1),
        "blocks2.2.1.m.pw2.c.weight": (308, 616, 1, 1),
        "blocks2.3.mixer.m.pre_norm.weight": (66,),
        "blocks2.3.mixer.m.qkv.c.weight": (98, 66, 1, 1),
        "blocks3.1.se.fc1.weight": (312, 1232, 1, 1),  # 1232 / 4 = 308 rounds to 312 (timm make_divisible)
        "blocks3.7.mixer.m.proj.1.c.weight": (448, 448, 1, 1),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert "blocks1.0.mixer.m.qkv.c.weight" not in sd  # stage 1 blocks are type 'i' (no attention)
    assert not any(k.startswith("head") for k in sd)


# ---------------------------------------------------------------------------------------------- maths
def random_bn_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights and running statistics everywhere (zero-initialised BNs would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def test_shsa_is_the_official_single_head_attention():
    torch.manual_seed(0)
    m = random_bn_statistics(SHSA(24, qk_dim=8, pdim=6, residual=False))
    x = torch.randn(2, 24, 5, 7)
    b, c, h, w = x.shape
    x1, x2 = torch.split(x, [6, 18], dim=1)
    q, k, v = m.qkv(m.pre_norm(x1)).split([8, 8, 6], dim=1)
    q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)
    attn = ((q.transpose(-2, -1) @ k) * 8**-0.5).softmax(dim=-1)
    x1 = (v @ attn.transpose(-2, -1)).reshape(b, 6, h, w)
    expected = m.proj(torch.cat([x1, x2], dim=1))
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)
    m.residual = True
    torch.testing.assert_close(m(x), x + expected, atol=1e-5, rtol=1e-5)


def test_shsa_defaults_and_validation():
    m = SHSA(64)
    assert (m.qk_dim, m.pdim, m.residual) == (16, 16, True)
    assert tuple(m.qkv.c.weight.shape) == (48, 16, 1, 1)
    with pytest.raises(ValueError, match="pdim"):
        SHSA(32, 16, 40)


def test_blocks_start_as_identity():
    x = torch.randn(2, 32, 6, 6)
    torch.testing.assert_close(SHViTBlock(32).eval()(x), x)
    torch.testing.assert_close(SHViTBlock(32, type="i").train()(x), x)  # zero BN weights: batch stats too
    torch.testing.assert_close(SHSA(32)(x), x)


def test_conv_bn_fuse_is_equivalent_in_eval():
    m = random_bn_statistics(Conv2dBN(8, 12, 3, 2, 1))
    x = torch.randn(2, 8, 9, 7)
    before = m(x)
    m.fuse_()
    assert isinstance(m.bn, nn.Identity) and m.c.bias is not None
    torch.testing.assert_close(m(x), before, atol=1e-5, rtol=1e-5)


def test_residual_depthwise_fuse_folds_identity_into_one_conv():
    m = random_bn_statistics(Residual(Conv2dBN(16, 16, 3, 1, 1, g=16)))
    x = torch.randn(2, 16, 6, 5)
    before = m(x)
    m.fuse_()
    assert isinstance(m.m, nn.Conv2d)  # a single depthwise conv, no separate addition
    assert torch.equal(m(x), m.m(x))
    torch.testing.assert_close(m(x), before, atol=1e-5, rtol=1e-5)


def test_whole_backbone_fuses_to_the_same_outputs():
    model = random_bn_statistics(SHViTS1())
    x = torch.randn(1, 3, 96, 128)
    before = model(x)
    model.fuse_()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for a, b in zip(model(x), before, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- checkpoints
def to_timm_names(sd: dict) -> dict:
    """Official -> timm: blocks{i+1}.0.0/.0.1/.1/.2.0/.2.1 -> stages.i.downsample.0..4, later entries ->
    stages.i.blocks.(j-3); blocks1.j -> stages.0.blocks.j."""
    down = {"0.0": 0, "0.1": 1, "1": 2, "2.0": 3, "2.1": 4}
    out = {}
    for k, v in sd.items():
        m = re.match(r"^blocks(\d)\.(\d+)\.(.*)$", k)
        if m:
            stage, j, rest = int(m[1]) - 1, int(m[2]), m[3]
            if stage == 0:
                k = f"stages.0.blocks.{j}.{rest}"
            elif j == 1:
                k = f"stages.{stage}.downsample.2.{rest}"
            elif j in (0, 2):
                sub, tail = rest.split(".", 1)
                k = f"stages.{stage}.downsample.{down[f'{j}.{sub}']}.{tail}"
            else:
                k = f"stages.{stage}.blocks.{j - 3}.{rest}"
        out[k] = v
    return out


def with_head(sd: dict, c: int) -> dict:
    sd = dict(sd)
    sd.update({"head.bn.weight": torch.ones(c), "head.bn.bias": torch.zeros(c), "head.l.weight": torch.randn(1000, c),
               "head.l.bias": torch.zeros(1000)})  # fmt: skip
    return sd


@pytest.mark.parametrize("layout", ["official", "timm"])
def test_checkpoints_load_and_give_identical_outputs(layout):
    source = random_bn_statistics(SHViTS1(), seed=3)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    sd = with_head(source.state_dict(), 320)
    if layout == "timm":
        sd = to_timm_names(sd)
        assert "stages.1.downsample.2.se.fc1.weight" in sd and "stages.2.blocks.0.mixer.m.qkv.c.weight" in sd
    target = SHViTS1().eval()
    report = load_shvit_weights(target, {"model": sd})
    assert report.layout == layout and report.ok and len(report.dropped) == 4
    x = torch.randn(1, 3, 64, 96)
    for a, b in zip(target(x), source(x), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- YAML
def test_yaml_rows_for_shsa_and_block():
    model = build_model({
        "backbone": [[-1, 1, "Conv", [32, 3, 2]], [-1, 1, "SHSA", []], [-1, 1, "SHSA", [8, 12]],
                     [-1, 2, "SHViTBlock", []], [-1, 1, "SHViTBlock", [16, 8, "i"]]],
        "head": [],
    })  # fmt: skip
    shsa, shsa2 = model.model[1], model.model[2]
    assert (shsa.dim, shsa.qk_dim, shsa.pdim) == (32, 16, 8)
    assert (shsa2.qk_dim, shsa2.pdim) == (8, 12)
    assert isinstance(model.model[3], nn.Sequential) and len(model.model[3]) == 2
    assert isinstance(model.model[4].mixer, nn.Identity)
    assert model(torch.randn(1, 3, 12, 20)).shape == (1, 32, 6, 10)


def test_backbone_in_a_yaml_with_index_rows_and_fuse():
    model = build_model({
        "backbone": [[-1, 1, "shvit_s1", []], [0, 1, "Index", [128, 0]], [-1, 1, "DySample", []],
                     [0, 1, "Index", [320, 2]]],
        "head": [[2, 1, "Conv", [32, 1, 1]]],
    })  # fmt: skip
    random_bn_statistics(model)
    x = torch.randn(1, 3, 128, 64)
    before = model(x)
    assert before.shape == (1, 32, 16, 8)  # stride 16 map upsampled to stride 8
    model.fuse()
    torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-4)
