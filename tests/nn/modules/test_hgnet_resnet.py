"""HGStem / HGBlock / ResNetLayer: per-row parameter counts of the reference models and shapes."""

import pytest
import torch
import torch.nn.functional as F

from rtdet.nn.modules.hgnet import HGBlock, HGStem, max_pool_2x2_stride1
from rtdet.nn.modules.resnet import ResNetLayer


def count(m) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    ("module", "params"),
    [
        (lambda: HGStem(3, 32, 48), 25_248),
        (lambda: HGStem(3, 32, 64), 25_792),
        (lambda: HGBlock(48, 48, 128, 3, 6), 155_072),
        (lambda: HGBlock(128, 96, 512, 3, 6), 839_296),
        (lambda: HGBlock(512, 192, 1024, 5, 6, True, False), 1_695_360),
        (lambda: HGBlock(1024, 192, 1024, 5, 6, True, True), 2_055_808),
        (lambda: HGBlock(1024, 384, 2048, 5, 6, True, False), 6_708_480),
        (lambda: ResNetLayer(3, 64, 1, True, 1), 9_536),
        (lambda: ResNetLayer(64, 64, 1, False, 3), 215_808),
        (lambda: ResNetLayer(256, 128, 2, False, 4), 1_219_584),
        (lambda: ResNetLayer(512, 256, 2, False, 6), 7_098_368),
        (lambda: ResNetLayer(1024, 512, 2, False, 3), 14_964_736),
    ],
)
def test_counts_match_the_reference_rows(module, params):
    assert count(module()) == params


def test_stem_is_stride_4_for_odd_sizes_too():
    stem = HGStem(3, 16, 32).eval()
    assert stem(torch.zeros(1, 3, 64, 96)).shape == (1, 32, 16, 24)
    assert stem(torch.zeros(1, 3, 65, 97)).shape == (1, 32, 17, 25)


def test_hgblock_residual_only_when_shapes_allow():
    assert HGBlock(32, 16, 32, shortcut=True).add
    assert not HGBlock(16, 16, 32, shortcut=True).add
    assert HGBlock(16, 8, 32, n=3)(torch.zeros(2, 16, 10, 12)).shape == (2, 32, 10, 12)


def test_resnet_layer_shapes():
    assert ResNetLayer(3, 64, 1, True)(torch.zeros(1, 3, 64, 64)).shape == (1, 64, 16, 16)
    assert ResNetLayer(64, 32, 2, False, 2)(torch.zeros(1, 64, 16, 16)).shape == (1, 128, 8, 8)


LAYOUTS = [torch.contiguous_format, torch.channels_last]  # NCHW (eval, export) and NHWC (training, predict)


@pytest.mark.parametrize("layout", LAYOUTS, ids=["NCHW", "NHWC"])
def test_shifted_max_equals_max_pool_2x2_stride_1(layout):
    x = torch.randn(2, 3, 9, 14).contiguous(memory_format=layout)
    assert torch.equal(max_pool_2x2_stride1(x), F.max_pool2d(x, 2, 1))


@pytest.mark.parametrize("layout", LAYOUTS, ids=["NCHW", "NHWC"])
def test_shifted_max_gradient_is_max_pool_2x2_stride_1s_even_on_ties(layout):
    # Small integers after a ReLU: many windows hold tied maxima, where torch.maximum alone would split the
    # gradient and max_pool2d gives all of it to the first maximum in scan order.
    x = torch.randint(-2, 3, (2, 3, 9, 14)).float().relu().contiguous(memory_format=layout)
    grad = torch.randint(-9, 10, (2, 3, 8, 13)).float()  # integers: sums exact in any order
    ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    max_pool_2x2_stride1(ours).backward(grad)
    F.max_pool2d(ref, 2, 1).backward(grad)
    assert torch.equal(max_pool_2x2_stride1(ours), F.max_pool2d(ref, 2, 1))
    assert torch.equal(ours.grad, ref.grad)
