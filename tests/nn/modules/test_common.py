"""Conv, DWConv, LightConv, RepConv, RepC3, Concat, Index: shapes, counts and fusion equivalence."""

import pytest
import torch
import torch.nn as nn

from rtdet.nn.modules.common import Concat, Conv, DWConv, Index, LightConv, RepC3, RepConv


def randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics so fusion is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return module


def count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_conv_shapes_and_counts():
    conv = Conv(16, 32, 3, 2)
    assert conv(torch.zeros(1, 16, 20, 30)).shape == (1, 32, 10, 15)
    assert count(conv) == 16 * 32 * 9 + 2 * 32
    assert count(DWConv(128, 128, 3, 2, 1, False)) == 1408  # RT-DETR-L row 2
    assert isinstance(DWConv(8, 8, 3, act=False).act, nn.Identity)


@pytest.mark.parametrize("module", [Conv(8, 16, 3, 2), DWConv(16, 16, 5), LightConv(8, 16, 3), RepC3(16, 16, 2)])
def test_fuse_keeps_outputs(module):
    randomise_bn(module).eval()
    x = torch.randn(2, _in_channels(module), 12, 14)
    before = module(x)
    for m in list(module.modules()):
        if hasattr(m, "fuse_"):
            m.fuse_()
    after = module(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def _in_channels(module: nn.Module) -> int:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d)).in_channels


@pytest.mark.parametrize(
    ("c1", "c2", "bn", "g"), [(8, 8, False, 1), (8, 8, True, 1), (8, 16, True, 1), (8, 8, True, 2)]
)
def test_repconv_reparameterised_equals_three_branches(c1, c2, bn, g):
    rep = randomise_bn(RepConv(c1, c2, g=g, bn=bn)).eval()
    assert (rep.bn is not None) == (bn and c1 == c2)
    x = torch.randn(2, c1, 9, 11)
    expected = rep.act(rep.conv1(x) + rep.conv2(x) + (rep.bn(x) if rep.bn is not None else 0))
    rep.fuse_()
    assert not hasattr(rep, "conv1") and isinstance(rep.conv, nn.Conv2d)
    torch.testing.assert_close(rep(x), expected, rtol=1e-4, atol=1e-5)


def test_repc3_count_matches_rtdetr_l():
    assert count(RepC3(512, 256, 3)) == 2_232_320
    assert isinstance(RepC3(64, 64, 1).cv3, nn.Identity)
    assert isinstance(RepC3(64, 64, 1, e=0.5).cv3, Conv)


def test_concat_and_index():
    a, b = torch.zeros(1, 2, 4, 4), torch.ones(1, 3, 4, 4)
    assert Concat(1)([a, b]).shape == (1, 5, 4, 4)
    assert Index(1)([a, b]) is b
