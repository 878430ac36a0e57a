"""CSPNeXt blocks and the input normalisation: shapes, parameter counts by formula, the forward maths
against a step-by-step computation, and mmdetection's state-dict names."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.modules.cspnext import (
    ChannelAttention,
    CSPLayer,
    CSPNeXtBlock,
    CSPNeXtStem,
    DepthwiseSeparableConv,
    SPPBottleneck,
)
from rtdet.nn.modules.preprocess import InputNormalize


def conv_params(c1, c2, k, groups=1):
    """Conv (no bias) + BatchNorm weight and bias."""
    return c2 * (c1 // groups) * k * k + 2 * c2


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def randomise_bn(module: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so eval-mode maths is really checked."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def test_cspnext_block_counts_and_residual():
    block = CSPNeXtBlock(24, 24, expansion=1.0, add_identity=True).eval()
    assert n_params(block) == conv_params(24, 24, 3) + conv_params(24, 24, 5, groups=24) + conv_params(24, 24, 1)
    randomise_bn(block)
    x = torch.randn(2, 24, 9, 11)
    with torch.no_grad():
        body = block.conv2.pointwise_conv(block.conv2.depthwise_conv(block.conv1(x)))
        assert torch.allclose(block(x), body + x, atol=1e-6)
    assert block.conv2.depthwise_conv.conv.kernel_size == (5, 5) and block.conv2.depthwise_conv.conv.groups == 24
    # no residual when asked, or when the widths differ
    assert not CSPNeXtBlock(24, 24, add_identity=False).add_identity
    assert not CSPNeXtBlock(16, 24, add_identity=True).add_identity
    assert CSPNeXtBlock(16, 24)(torch.randn(1, 16, 8, 8)).shape == (1, 24, 8, 8)


def test_channel_attention_is_hardsigmoid_of_a_pooled_linear_map():
    att = ChannelAttention(8)
    assert torch.count_nonzero(att.fc.bias) == 0  # mmdetection's Kaiming init zeroes conv biases
    nn.init.normal_(att.fc.bias)
    x = torch.randn(2, 8, 5, 7)
    mean = x.mean((2, 3))  # [2, 8]
    gate = F.hardsigmoid(mean @ att.fc.weight[:, :, 0, 0].T + att.fc.bias)
    assert torch.allclose(att(x), x * gate[:, :, None, None], atol=1e-6)
    assert n_params(att) == 8 * 8 + 8


def test_csp_layer_concatenates_main_then_short_and_counts():
    layer = CSPLayer(48, 48, n=2, add_identity=True, channel_attention=True).eval()
    mid = 24
    block = conv_params(mid, mid, 3) + conv_params(mid, mid, 5, groups=mid) + conv_params(mid, mid, 1)
    expected = 2 * conv_params(48, mid, 1) + conv_params(2 * mid, 48, 1) + 2 * block + (2 * mid) ** 2 + 2 * mid
    assert n_params(layer) == expected
    randomise_bn(layer)
    x = torch.randn(1, 48, 8, 8)
    with torch.no_grad():
        y = torch.cat([layer.blocks(layer.main_conv(x)), layer.short_conv(x)], 1)
        assert torch.allclose(layer(x), layer.final_conv(layer.attention(y)), atol=1e-6)
    neck = CSPLayer(192, 96, n=1, add_identity=False, channel_attention=False)
    assert not hasattr(neck, "attention") and not neck.blocks[0].add_identity
    assert neck(torch.randn(1, 192, 4, 4)).shape == (1, 96, 4, 4)


def test_csp_layer_keys_are_mmdetections():
    keys = list(CSPLayer(32, 32, n=1, channel_attention=True).state_dict())
    stems = [k.rsplit(".", 1)[0] for k in keys if k.endswith(".weight")]
    assert stems == ["main_conv.conv", "main_conv.bn", "short_conv.conv", "short_conv.bn", "final_conv.conv",
                     "final_conv.bn", "blocks.0.conv1.conv", "blocks.0.conv1.bn",
                     "blocks.0.conv2.depthwise_conv.conv", "blocks.0.conv2.depthwise_conv.bn",
                     "blocks.0.conv2.pointwise_conv.conv", "blocks.0.conv2.pointwise_conv.bn", "attention.fc"]


def test_spp_bottleneck_pools_in_parallel():
    spp = SPPBottleneck(16, 32).eval()
    assert n_params(spp) == conv_params(16, 8, 1) + conv_params(32, 32, 1)
    randomise_bn(spp)
    x = torch.randn(1, 16, 13, 13)
    with torch.no_grad():
        h = spp.conv1(x)
        pools = [F.max_pool2d(h, k, 1, k // 2) for k in (5, 9, 13)]
        assert torch.allclose(spp(x), spp.conv2(torch.cat([h, *pools], 1)), atol=1e-6)
    assert [k for k in spp.state_dict() if k.endswith("conv.weight")] == ["conv1.conv.weight", "conv2.conv.weight"]


def test_stem_and_depthwise_separable_conv():
    stem = CSPNeXtStem(3, 12, 24)
    assert n_params(stem) == conv_params(3, 12, 3) + conv_params(12, 12, 3) + conv_params(12, 24, 3)
    assert stem(torch.randn(1, 3, 64, 48)).shape == (1, 24, 32, 24)
    assert list(stem.state_dict())[0] == "0.conv.weight"  # mmdetection: backbone.stem.0.conv.weight
    dw = DepthwiseSeparableConv(8, 16, 5, 2)
    assert dw(torch.randn(1, 8, 10, 10)).shape == (1, 16, 5, 5)


def test_input_normalize_matches_the_reference_preprocessing():
    mean, std = [103.53, 116.28, 123.675], [57.375, 57.12, 58.395]
    norm = InputNormalize(3, mean, std, "bgr")
    rgb = torch.randint(0, 256, (2, 3, 4, 5)).float()
    x = rgb / 255  # what rtdet's loader gives every family
    bgr = rgb[:, [2, 1, 0]]  # what mmdetection's loader gives RTMDet
    expected = (bgr - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(norm(x), expected, atol=1e-5)
    assert list(norm.state_dict()) == []  # constants live in the YAML row, not in checkpoints
    assert torch.allclose(InputNormalize(3, [0, 0, 0], [1, 1, 1], "rgb", 1.0)(x), x)
    with pytest.raises(ValueError, match="one value per input channel"):
        InputNormalize(3, [1, 2], [1, 1, 1])
    with pytest.raises(ValueError, match="order"):
        InputNormalize(3, mean, std, "yuv")
    with pytest.raises(ValueError, match="std"):
        InputNormalize(3, mean, [1, 0, 1])
