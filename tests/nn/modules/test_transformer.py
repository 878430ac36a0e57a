"""RT-DETR transformer blocks: parameter layout and counts of the reference, the maths of each block
checked against an independent slow implementation or PyTorch's own layers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from rtdet.nn.modules.transformer import (
    AIFI,
    MLP,
    DeformableTransformerDecoder,
    DeformableTransformerDecoderLayer,
    MSDeformAttn,
    TransformerEncoderLayer,
    inverse_sigmoid,
    sincos_pos_embed_2d,
)
from rtdet.nn.registry import RowContext, lookup


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------- counts and layout
def test_parameter_counts_match_ultralytics():
    assert n_params(AIFI(256, 1024, 8)) == 789_760
    assert n_params(MSDeformAttn(256, n_levels=3, n_heads=8, n_points=4)) == 205_600


def test_decoder_layer_state_dict_keys_match_reference():
    keys = list(DeformableTransformerDecoderLayer(32, 4, 64, n_levels=3, n_points=4).state_dict())
    assert keys == [
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
        "norm1.weight", "norm1.bias",
        "cross_attn.sampling_offsets.weight", "cross_attn.sampling_offsets.bias",
        "cross_attn.attention_weights.weight", "cross_attn.attention_weights.bias",
        "cross_attn.value_proj.weight", "cross_attn.value_proj.bias",
        "cross_attn.output_proj.weight", "cross_attn.output_proj.bias",
        "norm2.weight", "norm2.bias", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
        "norm3.weight", "norm3.bias",
    ]


def test_aifi_state_dict_keys_and_yaml_rule():
    assert list(AIFI(16, 32, 4).state_dict()) == [
        "ma.in_proj_weight", "ma.in_proj_bias", "ma.out_proj.weight", "ma.out_proj.bias",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
    ]
    row = RowContext(index=10, module="AIFI", c_in=[256], n=1)
    args, c2, n = lookup("AIFI").channels([1024, 8], row)
    assert (args, c2, n) == ([256, 1024, 8], 256, 1)


# ----------------------------------------------------------------------------- AIFI / encoder layer
def test_sincos_pos_embed_is_row_major_for_non_square_maps():
    h, w, dim = 3, 5, 8
    emb = sincos_pos_embed_2d(h, w, dim)
    assert emb.shape == (1, h * w, dim)
    omega = [10000.0 ** (-k / (dim // 4)) for k in range(dim // 4)]
    for y in range(h):
        for x in range(w):
            expected = ([math.sin(y * o) for o in omega] + [math.cos(y * o) for o in omega]
                        + [math.sin(x * o) for o in omega] + [math.cos(x * o) for o in omega])
            torch.testing.assert_close(emb[0, y * w + x], torch.tensor(expected), atol=1e-6, rtol=0)


def test_aifi_pos_embed_is_cached_per_size_device_and_dtype():
    aifi = AIFI(16, 32, 4)
    a = aifi.pos_embed(4, 6, torch.device("cpu"), torch.float32)
    assert aifi.pos_embed(4, 6, torch.device("cpu"), torch.float32) is a
    assert aifi.pos_embed(6, 4, torch.device("cpu"), torch.float32) is not a
    half = aifi.pos_embed(4, 6, torch.device("cpu"), torch.float16)
    assert half.dtype == torch.float16 and half is not a


def test_aifi_is_the_encoder_layer_over_row_major_tokens():
    torch.manual_seed(0)
    aifi = AIFI(16, 32, 4).eval()
    x = torch.randn(2, 16, 3, 5)
    tokens = x.flatten(2).transpose(1, 2)
    expected = TransformerEncoderLayer.forward(aifi, tokens, pos=sincos_pos_embed_2d(3, 5, 16))
    out = aifi(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.flatten(2).transpose(1, 2), expected)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_layer_equals_torch_transformer_layer(pre_norm):
    torch.manual_seed(0)
    ours = TransformerEncoderLayer(16, 32, 4, normalize_before=pre_norm).eval()
    ref = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation="gelu", batch_first=True,
                                     norm_first=pre_norm).eval()
    ref.self_attn.load_state_dict(ours.ma.state_dict())
    for a, b in [(ref.linear1, ours.fc1), (ref.linear2, ours.fc2), (ref.norm1, ours.norm1), (ref.norm2, ours.norm2)]:
        a.load_state_dict(b.state_dict())
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    # the position embedding goes into queries and keys only
    pos = torch.randn(1, 7, 16)
    assert not torch.allclose(ours(x, pos=pos), ours(x))


def test_mlp_layers_and_sigmoid():
    mlp = MLP(4, 8, 2, num_layers=3, sigmoid=True)
    assert [tuple(layer.weight.shape) for layer in mlp.layers] == [(8, 4), (8, 8), (2, 8)]
    y = mlp(torch.randn(5, 4))
    assert y.shape == (5, 2) and ((y > 0) & (y < 1)).all()


def test_inverse_sigmoid_is_finite_at_the_ends():
    x = torch.tensor([0.0, 0.25, 1.0])
    y = inverse_sigmoid(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[1], torch.tensor(math.log(0.25 / 0.75)))


# ----------------------------------------------------------------------------- MSDeformAttn
def test_msdeformattn_initial_offsets_form_a_ring():
    m = MSDeformAttn(256, n_levels=3, n_heads=8, n_points=4)
    assert (m.sampling_offsets.weight == 0).all() and (m.attention_weights.weight == 0).all()
    assert (m.attention_weights.bias == 0).all()
    bias = m.sampling_offsets.bias.view(8, 3, 4, 2)
    directions = {0: (1.0, 0.0), 1: (1.0, 1.0), 2: (0.0, 1.0), 3: (-1.0, 1.0), 4: (-1.0, 0.0), 5: (-1.0, -1.0)}
    for head, (dx, dy) in directions.items():
        for p in range(4):
            expected = torch.tensor([dx * (p + 1), dy * (p + 1)]).expand(3, 2)
            torch.testing.assert_close(bias[head, :, p], expected, atol=1e-5, rtol=0)


def _bilinear_zero_pad(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample img [C, H, W] at normalised (x, y) with align_corners=False and zero padding."""
    c, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(c, dtype=img.dtype)
    for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= xi < w and 0 <= yi < h:
                out += wx * wy * img[:, yi, xi]
    return out


def _msdeformattn_loop(m: MSDeformAttn, query, refer, value, shapes) -> torch.Tensor:
    """Slow reference: every batch item, query, head, level and point one at a time."""
    b, n_q, _ = query.shape
    nh, nl, npt, dh = m.n_heads, m.n_levels, m.n_points, m.d_model // m.n_heads
    v = m.value_proj(value)
    offsets = m.sampling_offsets(query).view(b, n_q, nh, nl, npt, 2)
    logits = m.attention_weights(query).view(b, n_q, nh, nl * npt)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, n_q, m.d_model)
    for bi in range(b):
        for qi in range(n_q):
            for hi in range(nh):
                attn = torch.softmax(logits[bi, qi, hi], 0).view(nl, npt)
                acc = torch.zeros(dh)
                for li, (h, w) in enumerate(shapes):
                    img = v[bi, starts[li]:starts[li + 1], hi * dh:(hi + 1) * dh].T.reshape(dh, h, w)
                    r = refer[bi, qi, 0]
                    for pi in range(npt):
                        ox, oy = offsets[bi, qi, hi, li, pi].tolist()
                        if refer.shape[-1] == 4:
                            x = r[0].item() + ox / npt * r[2].item() * 0.5
                            y = r[1].item() + oy / npt * r[3].item() * 0.5
                        else:
                            x, y = r[0].item() + ox / w, r[1].item() + oy / h
                        acc += attn[li, pi] * _bilinear_zero_pad(img, x, y)
                out[bi, qi, hi * dh:(hi + 1) * dh] = acc
    return m.output_proj(out)


@pytest.mark.parametrize("ref_dim", [4, 2])
def test_msdeformattn_matches_slow_loop_reference(ref_dim):
    torch.manual_seed(0)
    shapes = [(5, 7), (3, 4)]
    m = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=3)
    with torch.no_grad():  # non-trivial offsets (some land outside the map) and attention weights
        m.sampling_offsets.weight.normal_(0, 1.0)
        m.attention_weights.weight.normal_(0, 1.0)
        m.attention_weights.bias.normal_(0, 1.0)
    query = torch.randn(2, 4, 8)
    refer = torch.rand(2, 4, 1, ref_dim) * 0.8 + 0.1
    value = torch.randn(2, sum(h * w for h, w in shapes), 8)
    with torch.no_grad():
        fast = m(query, refer, value, shapes)
        slow = _msdeformattn_loop(m, query, refer, value, shapes)
    assert fast.shape == (2, 4, 8)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_msdeformattn_rejects_wrong_shapes():
    m = MSDeformAttn(8, 2, 2, 2)
    with pytest.raises(ValueError, match="value_shapes"):
        m(torch.randn(1, 3, 8), torch.rand(1, 3, 1, 4), torch.randn(1, 10, 8), [(2, 2), (2, 2)])


# ----------------------------------------------------------------------------- decoder
def _decoder_parts(num_layers=3, eval_idx=-1, nc=5, d=16):
    torch.manual_seed(0)
    layer = DeformableTransformerDecoderLayer(d, 2, 32, 0.0, nn.ReLU(), n_levels=2, n_points=2)
    decoder = DeformableTransformerDecoder(d, layer, num_layers, eval_idx)
    bbox_head = nn.ModuleList(MLP(d, d, 4, 3) for _ in range(num_layers))  # random last layers: real refinement
    score_head = nn.ModuleList(nn.Linear(d, nc) for _ in range(num_layers))
    pos_mlp = MLP(4, 2 * d, d, 2)
    shapes = [(4, 5), (2, 3)]
    embed = torch.randn(2, 6, d)
    refer = torch.randn(2, 6, 4)
    feats = torch.randn(2, 26, d)
    return decoder, (embed, refer, feats, shapes, bbox_head, score_head, pos_mlp)


def test_decoder_layers_are_identical_copies_at_init():
    decoder, _ = _decoder_parts()
    a, b = decoder.layers[0].state_dict(), decoder.layers[2].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert decoder.layers[0].cross_attn is not decoder.layers[1].cross_attn


@pytest.mark.parametrize("eval_idx", [-1, 1])
def test_decoder_eval_returns_the_eval_idx_layer(eval_idx):
    decoder, args = _decoder_parts(eval_idx=eval_idx)
    with torch.no_grad():
        boxes_t, logits_t = decoder.train()(*args)
        boxes_e, logits_e = decoder.eval()(*args)
    assert boxes_t.shape == (3, 2, 6, 4) and logits_t.shape == (3, 2, 6, 5)
    assert boxes_e.shape == (1, 2, 6, 4) and logits_e.shape == (1, 2, 6, 5)
    torch.testing.assert_close(boxes_e[0], boxes_t[eval_idx], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits_e[0], logits_t[eval_idx], atol=1e-6, rtol=1e-5)
    # refinement changes the boxes from layer to layer
    assert not torch.allclose(boxes_t[0], boxes_t[1])


def test_decoder_looks_forward_twice_and_detaches_references():
    decoder, args = _decoder_parts()
    bbox_head = args[4]
    decoder.train()
    boxes, logits = decoder(*args)
    # layer 1's boxes are built on layer 0's un-detached refinement ...
    boxes[1].sum().backward(retain_graph=True)
    assert bbox_head[0].layers[-1].weight.grad.abs().sum() > 0
    bbox_head.zero_grad(set_to_none=True)
    # ... but layer 1 itself reads a detached reference: its logits do not depend on bbox_head[0]
    logits[1].sum().backward()
    assert bbox_head[0].layers[-1].weight.grad is None
