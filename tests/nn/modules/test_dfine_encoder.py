"""D-FINE hybrid-encoder blocks: the official module layout and names, VGGBlock / CSP / ELAN folding
parity, SCDown and the projections without activation, and rtdet's AIFI against D-FINE's encoder layer
written out from its definition (post-norm, GELU, sin-cos embedding with temperature 10000)."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet.nn.modules.dfine_encoder import ConvNormLayer, DFineCSPLayer, DFineELAN, SCDown, VGGBlock
from rtdet.nn.modules.transformer import AIFI
from rtdet.nn.modules.yolov9 import RepNCSPELAN4
from rtdet.nn.registry import lookup
from tests.nn.modules.batchnorm import randomise_bn


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_vggblock_is_repvgg_without_identity_and_fuses_to_one_3x3_conv():
    torch.manual_seed(0)
    block = randomise_bn(VGGBlock(8, 8)).eval()
    assert [k for k in block.state_dict() if k.endswith("weight")] == ["conv1.conv.weight", "conv1.norm.weight",
                                                                      "conv2.conv.weight", "conv2.norm.weight"]
    x = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        expected = F.silu(block.conv1(x) + block.conv2(x))  # no identity branch even though c1 == c2
        before = block(x)
        block.fuse_()
        after = block(x)
    assert torch.allclose(before, expected)
    assert not hasattr(block, "conv1") and not hasattr(block, "conv2")
    assert block.conv.kernel_size == (3, 3) and block.conv.bias is not None
    assert torch.allclose(before, after, atol=1e-5)


def test_csp_layer_adds_its_branches_and_fuses():
    torch.manual_seed(0)
    csp = randomise_bn(DFineCSPLayer(16, 8, n=2)).eval()
    assert isinstance(csp.conv3, nn.Identity)  # hidden = int(8 * 1.0) = 8 = out
    assert [name for name, _ in csp.named_children()] == ["conv1", "conv2", "bottlenecks", "conv3"]
    x = torch.randn(1, 16, 7, 7)
    with torch.no_grad():
        assert torch.allclose(csp(x), csp.bottlenecks(csp.conv1(x)) + csp.conv2(x))
        before = csp(x)
        csp.fuse_()
        after = csp(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in csp.modules())
    assert torch.allclose(before, after, atol=1e-5)
    narrow = DFineCSPLayer(16, 8, n=1, expansion=0.5)
    assert isinstance(narrow.conv3, ConvNormLayer) and narrow.conv1.conv.out_channels == 4
    assert narrow(torch.zeros(1, 16, 4, 4)).shape == (1, 8, 4, 4)


def test_elan_layout_names_and_fuse_parity():
    torch.manual_seed(0)
    elan = randomise_bn(DFineELAN(64, 32, 64, 16, 2)).eval()  # D-FINE: c1 = c3 = 2h, c2 = h
    keys = list(elan.state_dict())
    assert keys[0] == "cv1.conv.weight" and keys[-1] == "cv4.norm.num_batches_tracked"
    for key in ("cv2.0.conv1.norm.running_mean", "cv2.0.bottlenecks.1.conv2.conv.weight", "cv2.1.conv.weight",
                "cv3.0.conv2.norm.bias", "cv3.1.norm.weight"):
        assert key in keys
    assert elan.cv2[0].conv1.conv.in_channels == 32 and elan.cv4.conv.in_channels == 64 + 2 * 16
    assert all(isinstance(m.act, nn.SiLU) for m in (elan.cv1, elan.cv2[1], elan.cv4))
    x = torch.randn(1, 64, 10, 10)
    with torch.no_grad():
        before = elan(x)
        elan.fuse_()
        after = elan(x)
    assert before.shape == (1, 32, 10, 10)
    assert torch.allclose(before, after, atol=1e-5)


def test_dfine_elan_is_registered_apart_from_yolov9s():
    assert lookup("DFineELAN").cls is DFineELAN
    assert lookup("RepNCSPELAN4").cls is RepNCSPELAN4
    # same outer wiring, different inner block: D-FINE's CSP adds, YOLOv9's RepNCSP concatenates
    assert count(DFineELAN(64, 32, 64, 16, 1)) != count(RepNCSPELAN4(64, 32, 64, 16, 1))


def test_scdown_is_two_convbn_without_activation():
    torch.manual_seed(0)
    down = randomise_bn(SCDown(8, 8, 3, 2)).eval()
    assert down.cv2.conv.groups == 8 and down.cv2.conv.stride == (2, 2) and down.cv1.conv.kernel_size == (1, 1)
    assert isinstance(down.cv1.act, nn.Identity) and isinstance(down.cv2.act, nn.Identity)
    x = torch.randn(1, 8, 13, 12)
    with torch.no_grad():
        y = down(x)
        # an affine map (no activation): f(x) + f(-x) = 2 f(0)
        assert torch.allclose(y + down(-x), 2 * down(torch.zeros_like(x)), atol=1e-5)
    assert y.shape == (1, 8, math.ceil(13 / 2), math.ceil(12 / 2))


def test_conv_norm_layer_defaults_to_no_activation_and_fuses():
    torch.manual_seed(0)
    proj = randomise_bn(ConvNormLayer(8, 4)).eval()
    assert isinstance(proj.act, nn.Identity) and proj.conv.bias is None
    assert isinstance(ConvNormLayer(8, 4, act=True).act, nn.SiLU)
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        before = proj(x)
        proj.fuse_()
        assert torch.allclose(proj(x), before, atol=1e-5)


def dfine_pos_embed(w: int, h: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """D-FINE's 2-D sin-cos embedding as its encoder defines it: a meshgrid over (w, h), 'ij' indexing,
    flattened; [sin, cos] of the first grid, then of the second, frequencies temperature^(-k / (dim / 4))."""
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                                    indexing="ij")
    out_w = grid_w.flatten()[:, None] * omega[None]
    out_h = grid_h.flatten()[:, None] * omega[None]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


def dfine_encoder_layer(layer: AIFI, src: torch.Tensor, pos: torch.Tensor, heads: int) -> torch.Tensor:
    """D-FINE's TransformerEncoderLayer (post-norm) written out with the weights of ``layer``:
    q = k = src + pos, v = src; src = norm1(src + attn); src = norm2(src + linear2(gelu(linear1(src))))."""
    b, n, c = src.shape
    wq, wk, wv = layer.ma.in_proj_weight.chunk(3)
    bq, bk, bv = layer.ma.in_proj_bias.chunk(3)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, n, heads, c // heads).transpose(1, 2)

    q, k, v = split(F.linear(src + pos, wq, bq)), split(F.linear(src + pos, wk, bk)), split(F.linear(src, wv, bv))
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1) @ v
    attn = layer.ma.out_proj(attn.transpose(1, 2).reshape(b, n, c))
    src = F.layer_norm(src + attn, (c,), layer.norm1.weight, layer.norm1.bias)
    ffn = F.linear(F.gelu(F.linear(src, layer.fc1.weight, layer.fc1.bias)), layer.fc2.weight, layer.fc2.bias)
    return F.layer_norm(src + ffn, (c,), layer.norm2.weight, layer.norm2.bias)


@pytest.mark.parametrize("side", [4, 7])
def test_aifi_computes_dfines_encoder_layer_on_square_maps(side):
    torch.manual_seed(0)
    c, heads = 32, 8
    aifi = AIFI(c, 64, heads).eval()
    with torch.no_grad():  # non-trivial norms so that post- and pre-norm cannot agree by accident
        for norm in (aifi.norm1, aifi.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, c, side, side)
    tokens = x.flatten(2).transpose(1, 2)
    with torch.no_grad():
        expected = dfine_encoder_layer(aifi, tokens, dfine_pos_embed(side, side, c), heads)
        got = aifi(x).flatten(2).transpose(1, 2)
    assert torch.allclose(got, expected, atol=1e-5)
    assert [n for n, _ in aifi.named_parameters()] == [
        "ma.in_proj_weight", "ma.in_proj_bias", "ma.out_proj.weight", "ma.out_proj.bias", "fc1.weight", "fc1.bias",
        "fc2.weight", "fc2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"]  # official order


def test_position_embeddings_agree_on_square_maps_only():
    """D-FINE feeds square maps only (640 x 640, square multi-scale sizes); on an h != w map its grid is
    laid out over (w, h) while the tokens run over (h, w), so the two differ there by design."""
    aifi = AIFI(16, 32, 4)
    square = aifi.pos_embed(5, 5, torch.device("cpu"), torch.float32)
    assert torch.allclose(square, dfine_pos_embed(5, 5, 16), atol=1e-6)
    wide = aifi.pos_embed(2, 3, torch.device("cpu"), torch.float32)  # h = 2, w = 3
    assert not torch.allclose(wide, dfine_pos_embed(3, 2, 16))
