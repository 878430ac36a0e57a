"""PResNet (ResNet-vd) of RT-DETR / RT-DETRv2 / DEIM-RTv2: backbone counts to the digit against the official
code (trained and frozen BatchNorms), the official block structure and state-dict names and order, the
variant-d shortcut, strides, the YAML rules, and that fusing keeps the outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.modules.dfine_encoder import ConvNormLayer
from rtdet.nn.modules.hgnetv2 import FrozenBatchNorm2d
from rtdet.nn.modules.presnet import BasicBlock, BottleNeck, PResNetStage, PResNetStem
from rtdet.nn.registry import RowContext, lookup
from tests.nn.modules.batchnorm import randomise_bn

# depth: (blocks per stage, block), official counts of the whole 4-stage backbone (research notes section 1:
# the "backbone" column; trained BN = R18 / R34 and every DEIM config, frozen BN = RT-DETRv2 R50 / R101)
DEPTHS = {18: ([2, 2, 2, 2], "basic"), 34: ([3, 4, 6, 3], "basic"), 50: ([3, 4, 6, 3], "bottleneck"),
          101: ([3, 4, 23, 3], "bottleneck")}
TRAINED = {18: 11_199_968, 34: 21_308_128, 50: 23_527_264, 101: 42_519_392}
FROZEN = {50: 23_474_016, 101: 42_413_920}


def backbone(depth: int, freeze_norm: bool = False) -> nn.Sequential:
    """Stem + four stages as the official ``PResNet(depth, variant='d', num_stages=4)`` builds them."""
    blocks, block = DEPTHS[depth]
    layers, c = [PResNetStem(3, 64, freeze_norm)], 64
    for i, (width, n) in enumerate(zip([64, 128, 256, 512], blocks)):
        layers.append(PResNetStage(c, width, n, i + 2, block, freeze_norm))
        c = width * (4 if block == "bottleneck" else 1)
    return nn.Sequential(*layers)


def count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("depth", list(TRAINED))
def test_backbone_counts_to_the_digit(depth):
    with torch.device("meta"):
        assert count(backbone(depth)) == TRAINED[depth]
        if depth in FROZEN:
            frozen = backbone(depth, freeze_norm=True)
            assert count(frozen) == FROZEN[depth]
            assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())


def test_frozen_norms_are_buffers_in_the_state_dict():
    block = BottleNeck(64, 64, 1, shortcut=False, freeze_norm=True)
    assert isinstance(block.branch2a.norm, FrozenBatchNorm2d)
    keys = list(block.state_dict())
    assert "branch2a.norm.weight" in keys and "branch2a.norm.num_batches_tracked" not in keys
    trained = count(BottleNeck(64, 64, 1, shortcut=False))
    assert trained - count(block) == 2 * (64 + 64 + 256 + 256)  # every BN's weight and bias


def test_basic_block_state_dict_follows_the_official_order():
    """The official BasicBlock creates ``short`` before its branches; BottleNeck after them."""
    keys = [k for k in BasicBlock(64, 128, 2, shortcut=False).state_dict() if k.endswith("weight")]
    assert keys == ["short.conv.conv.weight", "short.conv.norm.weight", "branch2a.conv.weight",
                    "branch2a.norm.weight", "branch2b.conv.weight", "branch2b.norm.weight"]
    keys = [k for k in BottleNeck(256, 128, 2, shortcut=False).state_dict() if k.endswith("conv.weight")]
    assert keys == ["branch2a.conv.weight", "branch2b.conv.weight", "branch2c.conv.weight", "short.conv.conv.weight"]


def test_variant_d_strides_the_3x3_and_pools_the_shortcut():
    block = BottleNeck(256, 128, 2, shortcut=False)
    assert block.branch2a.conv.stride == (1, 1) and block.branch2b.conv.stride == (2, 2)
    assert isinstance(block.short.pool, nn.AvgPool2d) and block.short.pool.ceil_mode
    assert block.short.conv.conv.stride == (1, 1) and block.short.conv.conv.kernel_size == (1, 1)
    unstrided = BottleNeck(64, 64, 1, shortcut=False)  # stage 2's first block: a plain 1x1 projection
    assert isinstance(unstrided.short, ConvNormLayer)
    x = torch.randn(1, 256, 7, 9)
    assert block(x).shape == (1, 512, 4, 5)  # ceil on odd sizes, both paths alike


def test_basic_block_maths_by_hand():
    torch.manual_seed(0)
    block = randomise_bn(BasicBlock(8, 16, 2, shortcut=False)).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        y = block(x)
        a = block.branch2b(block.branch2a(x))
        short = block.short.conv(F.avg_pool2d(x, 2, 2, ceil_mode=True))
    torch.testing.assert_close(y, F.relu(a + short))
    assert isinstance(block.branch2a.act, nn.ReLU) and isinstance(block.branch2b.act, nn.Identity)


def test_stem_and_stage_strides_and_names():
    model = backbone(18).eval()
    x = torch.randn(1, 3, 64, 96)
    shapes = []
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            shapes.append(tuple(x.shape))
    assert shapes == [(1, 64, 16, 24), (1, 64, 16, 24), (1, 128, 8, 12), (1, 256, 4, 6), (1, 512, 2, 3)]
    stem = model[0]
    assert [stem.conv1_1.conv.out_channels, stem.conv1_2.conv.out_channels, stem.conv1_3.conv.out_channels] == \
        [32, 32, 64]
    assert stem.conv1_1.conv.stride == (2, 2) and isinstance(stem.conv1_3.act, nn.ReLU)
    names = list(model[1].state_dict())
    assert names[0] == "blocks.0.short.conv.weight"  # stage 2: projection shortcut without pooling
    assert not hasattr(model[1].blocks[1], "short") and model[1].blocks[1].shortcut


def test_fuse_keeps_outputs():
    torch.manual_seed(0)
    model = randomise_bn(backbone(18)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        for m in model.modules():
            if isinstance(m, ConvNormLayer):
                m.fuse_()
        after = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_yaml_rules():
    row = RowContext(index=0, module="PResNetStem", c_in=[3], n=1)
    assert lookup("PResNetStem").channels([3, 64, False], row) == ([3, 64, False], 64, 1)
    row = RowContext(index=1, module="PResNetStage", c_in=[256], n=1)
    args, c2, n = lookup("PResNetStage").channels([256, 128, 4, 3, "bottleneck", True], row)
    assert args == [256, 128, 4, 3, "bottleneck", True] and c2 == 512 and n == 1
    with pytest.raises(ValueError, match="input channels"):
        lookup("PResNetStage").channels([64, 128, 4, 3, "bottleneck"], row)
    with pytest.raises(ValueError, match="block must be one of"):
        lookup("PResNetStage").channels([256, 128, 4, 3, "basicblock"], row)
    with pytest.raises(ValueError, match="repeats"):
        lookup("PResNetStage").channels([256, 128, 4, 3, "basic"], RowContext(1, "PResNetStage", [256], 2))
