"""YOLOv9 blocks: shapes, parameter counts and names as in the official repository, and their maths."""

import pytest
import torch
import torch.nn.functional as F

from rtdet import ModelConfigError, build_model
from rtdet.nn.model import count_parameters
from rtdet.nn.modules.yolov9 import (
    DFL,
    ELAN1,
    SPPELAN,
    AConv,
    ADown,
    CBFuse,
    CBLinear,
    RepConvN,
    RepNBottleneck,
    RepNCSP,
    RepNCSPELAN4,
    Silence,
)


def conv_params(c1: int, c2: int, k: int, g: int = 1) -> int:
    """Conv (no bias) + BatchNorm2d."""
    return c2 * (c1 // g) * k * k + 2 * c2


def randomise_batchnorm(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine terms, so fusing them is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)


def test_silence_is_the_identity():
    x = torch.randn(1, 3, 8, 8)
    assert Silence()(x) is x


def test_repconvn_has_no_identity_branch_and_fuses_exactly():
    m = RepConvN(16, 16)  # c1 == c2, stride 1: a RepVGG block would add an identity BN here, RepConvN does not
    assert m.bn is None
    assert count_parameters(m) == conv_params(16, 16, 3) + conv_params(16, 16, 1)
    assert [k for k, _ in m.named_parameters()][:2] == ["conv1.conv.weight", "conv1.bn.weight"]
    randomise_batchnorm(m)
    m.eval()
    x = torch.randn(2, 16, 10, 12)
    with torch.no_grad():
        y = m(x)
        m.fuse_()
        y_fused = m(x)
    assert not hasattr(m, "conv1") and m.conv.kernel_size == (3, 3)
    torch.testing.assert_close(y_fused, y, rtol=1e-4, atol=1e-5)


def test_repnbottleneck_adds_the_input_only_when_shapes_allow():
    assert RepNBottleneck(8, 8).add and not RepNBottleneck(8, 16).add and not RepNBottleneck(8, 8, False).add
    m = RepNBottleneck(8, 8).eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x + m.cv2(m.cv1(x)))


def test_repncsp_structure_and_count():
    m = RepNCSP(32, 64, n=2)
    c_ = 32
    bottleneck = conv_params(c_, c_, 3) + conv_params(c_, c_, 1) + conv_params(c_, c_, 3)
    assert count_parameters(m) == 2 * conv_params(32, c_, 1) + conv_params(2 * c_, 64, 1) + 2 * bottleneck
    assert m(torch.randn(1, 32, 8, 8)).shape == (1, 64, 8, 8)


def test_repncspelan4_count_names_and_shape():
    c1, c2, c3, c4, n = 128, 256, 128, 64, 1
    m = RepNCSPELAN4(c1, c2, c3, c4, n)
    csp_a, csp_b = count_parameters(RepNCSP(c3 // 2, c4, n)), count_parameters(RepNCSP(c4, c4, n))
    expected = (conv_params(c1, c3, 1) + csp_a + conv_params(c4, c4, 3) + csp_b + conv_params(c4, c4, 3)
                + conv_params(c3 + 2 * c4, c2, 1))
    assert count_parameters(m) == expected
    names = [k for k, _ in m.named_parameters()]
    # the official / Ultralytics state-dict layout
    for key in ("cv1.conv.weight", "cv2.0.cv1.conv.weight", "cv2.0.m.0.cv1.conv1.conv.weight",
                "cv2.0.m.0.cv1.conv2.bn.bias", "cv2.0.m.0.cv2.conv.weight", "cv2.1.conv.weight",
                "cv3.0.cv3.bn.weight", "cv4.conv.weight"):
        assert key in names, key
    assert m(torch.randn(2, c1, 16, 20)).shape == (2, c2, 16, 20)


def test_elan1_concatenates_halves_and_two_convs():
    m = ELAN1(32, 32, 32, 16).eval()
    assert count_parameters(m) == (conv_params(32, 32, 1) + conv_params(16, 16, 3) + conv_params(16, 16, 3)
                                   + conv_params(64, 32, 1))
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        a, b = m.cv1(x).chunk(2, 1)
        b1 = m.cv2(b)
        torch.testing.assert_close(m(x), m.cv4(torch.cat([a, b, b1, m.cv3(b1)], 1)))


def test_aconv_and_adown_by_hand():
    x = torch.randn(1, 16, 20, 24)
    aconv = AConv(16, 32).eval()
    adown = ADown(16, 32).eval()
    with torch.no_grad():
        pooled = F.avg_pool2d(x, 2, 1, 0)  # 2x2 mean, stride 1: one pixel smaller
        torch.testing.assert_close(aconv(x), aconv.cv1(pooled))
        x1, x2 = pooled[:, :8], pooled[:, 8:]
        want = torch.cat([adown.cv1(x1), adown.cv2(F.max_pool2d(x2, 3, 2, 1))], 1)
        torch.testing.assert_close(adown(x), want)
    assert aconv(x).shape == adown(x).shape == (1, 32, 10, 12)
    assert count_parameters(adown) == conv_params(8, 16, 3) + conv_params(8, 16, 1)


def test_sppelan_pools_three_times_in_a_chain():
    m = SPPELAN(64, 64, 32).eval()
    x = torch.randn(1, 64, 12, 12)
    with torch.no_grad():
        y1 = m.cv1(x)
        pools = [y1]
        for _ in range(3):
            pools.append(F.max_pool2d(pools[-1], 5, 1, 2))
        torch.testing.assert_close(m(x), m.cv5(torch.cat(pools, 1)))
    assert count_parameters(m) == conv_params(64, 32, 1) + conv_params(128, 64, 1)


def test_cblinear_splits_one_biased_conv_and_cbfuse_sums_resized_maps():
    lin = CBLinear(8, [4, 6])
    assert count_parameters(lin) == 8 * 10 + 10  # one plain conv with bias, no BN
    a, b = lin(torch.randn(1, 8, 4, 4))
    assert a.shape == (1, 4, 4, 4) and b.shape == (1, 6, 4, 4)
    small = (torch.zeros(1, 2, 2, 2), torch.arange(8.0).view(1, 2, 2, 2))
    target = torch.ones(1, 2, 4, 4)
    out = CBFuse([1])([small, target])
    want = 1 + small[1].repeat_interleave(2, 2).repeat_interleave(2, 3)  # nearest x2, then the sum
    torch.testing.assert_close(out, want)


def test_dfl_is_the_expectation_of_the_bin_softmax():
    dfl = DFL(16)
    assert count_parameters(dfl) == 16 and not dfl.conv.weight.requires_grad
    logits = torch.full((1, 4, 16, 3), -1e4)
    for side, peak in enumerate((0, 3, 9, 15)):
        logits[0, side, peak] = 0.0  # all mass in one bin -> that bin's value
    logits[..., 2] = 0.0  # anchor 2: uniform over 0..15 -> 7.5
    out = dfl(logits.view(1, 64, 3))
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.0, 3.0, 9.0, 15.0]))
    torch.testing.assert_close(out[0, :, 2], torch.full((4,), 7.5))


YAML_HEAD = """
nc: 2
backbone:
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
head:
"""


@pytest.mark.parametrize("row, message", [
    ("  - [[0, 1, -1], 1, CBFuse, [[0, 0]]]", "every input but the last must be a CBLinear row"),
    ("  - [1, 1, CBLinear, [64]]", "list of output widths"),
])
def test_bad_cblinear_cbfuse_rows_are_clear_errors(tmp_path, row, message):
    path = tmp_path / "bad.yaml"
    path.write_text(YAML_HEAD + row + "\n  - [[2], 1, DDetect, [nc]]\n")
    with pytest.raises(ModelConfigError, match=message):
        build_model(path)


def test_cbfuse_checks_channels_at_build(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(YAML_HEAD + "  - [1, 1, CBLinear, [[16]]]\n  - [[3, 2], 1, CBFuse, [[0]]]\n"
                                "  - [[4], 1, DDetect, [nc]]\n")
    with pytest.raises(ModelConfigError, match="16 channels but the target map has 32"):
        build_model(path)


def test_conv_rows_keep_the_official_width_rule():
    """Only c2 of a block is width-scaled (make_divisible(c2 * width, 8)); inner widths are built as written."""
    model = build_model({"nc": 1, "width_multiple": 0.5, "backbone": [[-1, 1, "Conv", [64, 3, 2]]],
                         "head": [[-1, 1, "RepNCSPELAN4", [64, 64, 32, 1]], [[1], 1, "DDetect", ["nc"]]]})
    block = model.model[1]
    assert block.cv1.conv.out_channels == 64 and block.cv4.conv.out_channels == 32
