"""RTDETRv2Decoder: parameter counts of the official RT-DETRv2 and DEIM-RTv2 decoders to the digit, the
official state-dict layout and initialisation, DEIM's options (SiLU, as_reg), the v2 deformable attention
(equal to RT-DETR's when every level has the same points), training / eval outputs through RT-DETR's
contract and criterion (MAL), the fused form, decode, the YAML rule, and an ONNX export of a tiny model.
Small hidden sizes keep the running tests fast; the count tests build the real configurations on the meta
device without running them."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import yaml

from rtdet.losses.rtdetr import RTDETRCriterion
from rtdet.nn.heads.rtdetr import RTDETRTrainOutput
from rtdet.nn.heads.rtdetrv2 import RTDETRv2Decoder
from rtdet.nn.modules.rtdetrv2 import RTDETRv2DecoderLayer, RTDETRv2DeformableAttention
from rtdet.nn.modules.transformer import DeformableTransformerDecoderLayer, MSDeformAttn
from rtdet.nn.registry import RowContext, lookup
from tests.contract_models import TINY_RTV2_YAML
from tests.nn.heads import detr_inputs
from tests.nn.heads.detr_inputs import targets

CH = (8, 16, 16)
SHAPES = [(8, 8), (4, 4), (2, 2)]
DEIM = dict(activation="silu", mlp_act="silu", query_pos_method="as_reg")

# Official decoder configurations (DEIM configs/deim_rtdetrv2/*.yml) and their "decoder" counts (research
# notes section 1, nc = 80); the plain RT-DETRv2 baselines' decoders are the whole-model totals minus the same
# backbone / encoder counts (tests/nn/test_rtdetrv2_models.py checks those totals).
OFFICIAL = {
    "deim-r18": (dict(num_layers=3, **DEIM), 4_018_352),
    "deim-r34": (dict(num_layers=4, **DEIM), 5_167_396),
    "deim-r50m": (dict(num_layers=3, eval_idx=2, **DEIM), 4_018_352),
    "deim-r50": (dict(num_layers=6, **DEIM), 7_465_484),
    "deim-r101": (dict(ch=[384] * 3, num_layers=6, **DEIM), 7_563_788),
    "r18": (dict(num_layers=3), 4_019_376),
    "r34": (dict(num_layers=4), 5_168_420),
    "r50m": (dict(num_layers=6, eval_idx=2), 7_466_508),
    "r50": (dict(num_layers=6), 7_466_508),
    "r101": (dict(ch=[384] * 3, num_layers=6), 7_564_812),
}
SCORE_HEAD = 80 * 256 + 80  # one dec_score_head
DN_EMBED = 81 * 256  # denoising_class_embed


def maps(shapes=SHAPES, b=2, ch=CH) -> list[torch.Tensor]:
    return detr_inputs.maps(shapes, ch, b)


def count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def small_head(nc=5, nq=20, nd=12, layers=3, **kw) -> RTDETRv2Decoder:
    torch.manual_seed(0)
    kw.setdefault("num_points", [2, 3, 2])
    return RTDETRv2Decoder(nc, CH, hidden_dim=32, num_queries=nq, num_layers=layers, dim_feedforward=64, nhead=4,
                           num_denoising=nd, **kw)


def trained_like(head: nn.Module) -> nn.Module:
    """Noise on every weight (the zero-initialised box heads and attention start to matter) and random
    BatchNorm statistics, in eval mode."""
    head = copy.deepcopy(head).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        for m in head.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return head


# ----------------------------------------------------------------------------- counts and layout
@pytest.mark.parametrize("name", list(OFFICIAL))
def test_parameter_counts_match_the_official_decoders(name):
    kwargs, expected = OFFICIAL[name]
    kwargs = {"ch": [256] * 3, "num_points": [4, 4, 4], **kwargs}
    with torch.device("meta"):
        head = RTDETRv2Decoder(80, **kwargs)
    assert count(head) == expected


def test_unused_in_eval_and_the_fused_form_count_as_the_official_code():
    """Research notes section 1: DEIM-RTv2-S leaves 61,856 parameters unused in eval (two score heads and the
    denoising embedding); RT-DETRv2 R50-m (6 layers, eval_idx 2) 3,508,988, of which fuse_ drops the three
    layers after eval_idx with their heads."""
    assert 2 * SCORE_HEAD + DN_EMBED == 61_856
    with torch.device("meta"):
        head = RTDETRv2Decoder(80, [256] * 3, num_points=[4, 4, 4], num_layers=6, eval_idx=2)
    per_layer = count(head.decoder.layers[0]) + count(head.dec_bbox_head[0]) + SCORE_HEAD
    assert 3 * per_layer + 2 * SCORE_HEAD + DN_EMBED == 3_508_988
    built = count(head)
    head.fuse_()
    folded = 3 * (256 + 256 - 256)  # each input projection: BN weight and bias out, a conv bias in
    assert built - count(head) == 3 * per_layer + folded
    assert len(head.decoder.layers) == len(head.dec_bbox_head) == len(head.dec_score_head) == 3


def test_state_dict_layout_follows_the_official_order():
    head = RTDETRv2Decoder(80, [384] * 3, num_points=[4, 4, 4], num_layers=3, **DEIM)
    assert [n for n, _ in head.named_children()] == [
        "input_proj", "decoder", "denoising_class_embed", "query_pos_head", "enc_output", "enc_score_head",
        "enc_bbox_head", "dec_score_head", "dec_bbox_head"]
    keys = list(head.state_dict())
    # official (research notes section 10): decoder.input_proj.0.conv.weight ... decoder.dec_bbox_head.2.layers.2.bias
    # with 132 keys, of which anchors and valid_mask are derived here
    assert len(keys) == 130 and keys[0] == "input_proj.0.conv.weight" and keys[-1] == "dec_bbox_head.2.layers.2.bias"
    layer = [k.split(".", 3)[-1] for k in keys if k.startswith("decoder.layers.0.")]
    assert layer == [
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
        "norm1.weight", "norm1.bias", "cross_attn.num_points_scale", "cross_attn.sampling_offsets.weight",
        "cross_attn.sampling_offsets.bias", "cross_attn.attention_weights.weight", "cross_attn.attention_weights.bias",
        "cross_attn.value_proj.weight", "cross_attn.value_proj.bias", "cross_attn.output_proj.weight",
        "cross_attn.output_proj.bias", "norm2.weight", "norm2.bias", "linear1.weight", "linear1.bias",
        "linear2.weight", "linear2.bias", "norm3.weight", "norm3.bias"]
    sd = head.state_dict()
    for key, shape in {
        "input_proj.2.conv.weight": (256, 384, 1, 1), "input_proj.2.norm.running_var": (256,),
        "decoder.layers.2.cross_attn.num_points_scale": (12,),
        "decoder.layers.0.cross_attn.sampling_offsets.weight": (8 * 12 * 2, 256),
        "denoising_class_embed.weight": (81, 256),
        "query_pos_head.layers.0.weight": (256, 4), "query_pos_head.layers.2.weight": (256, 256),
        "enc_output.proj.weight": (256, 256), "enc_output.norm.bias": (256,),
        "enc_score_head.weight": (80, 256), "enc_bbox_head.layers.2.weight": (4, 256),
        "dec_score_head.2.weight": (80, 256), "dec_bbox_head.2.layers.2.weight": (4, 256),
    }.items():
        assert tuple(sd[key].shape) == shape, key
    torch.testing.assert_close(sd["decoder.layers.0.cross_attn.num_points_scale"], torch.full((12,), 0.25))
    plain = RTDETRv2Decoder(80, [256] * 3, num_layers=1)  # query_pos_method default: MLP(4, 2d, d, 2)
    assert [tuple(m.weight.shape) for m in plain.query_pos_head.layers] == [(512, 4), (256, 512)]
    assert isinstance(plain.input_proj[0].norm, nn.BatchNorm2d)  # conv + BN even at 256 -> 256


def test_deim_options_reach_every_ffn_and_mlp():
    kinds = lambda head: {type(m) for m in head.modules() if isinstance(m, nn.ReLU | nn.SiLU)}  # noqa: E731
    assert kinds(small_head(**DEIM)) == {nn.SiLU}
    assert kinds(small_head()) == {nn.ReLU}
    mixed = small_head(activation="silu")  # FFNs only
    assert isinstance(mixed.decoder.layers[0].activation, nn.SiLU) and isinstance(mixed.enc_bbox_head.act, nn.ReLU)
    with pytest.raises(ValueError, match="query_pos_method"):
        small_head(query_pos_method="as_box")


def test_init_follows_the_reference():
    head = small_head(nc=5)
    prior = -math.log(99)  # bias_init_with_prob(0.01), not scaled by nc
    for lin in [head.enc_score_head, *head.dec_score_head]:
        torch.testing.assert_close(lin.bias, torch.full((5,), prior))
    for mlp in [head.enc_bbox_head, *head.dec_bbox_head]:
        assert not mlp.layers[-1].weight.any() and not mlp.layers[-1].bias.any()
    attn = head.decoder.layers[0].cross_attn
    assert not attn.sampling_offsets.weight.any() and not attn.attention_weights.weight.any()
    assert not attn.value_proj.bias.any() and not attn.output_proj.bias.any() and attn.value_proj.weight.std() > 0
    bias = attn.sampling_offsets.bias.view(4, 7, 2)
    steps = torch.tensor([1, 2, 1, 2, 3, 1, 2.0])
    torch.testing.assert_close(bias[0], torch.stack([steps, torch.zeros(7)], -1))  # head 0 along +x, 1..n per level
    embed = head.denoising_class_embed
    assert embed.padding_idx == 5 and not embed.weight[5].any() and embed.weight[:5].std() > 0.5
    torch.testing.assert_close(head.decoder.layers[0].linear1.weight, head.decoder.layers[2].linear1.weight)


# ----------------------------------------------------------------------------- layers
def test_v2_attention_equals_rtdetrs_with_equal_point_counts():
    """With the same points on every level, the v2 attention computes RT-DETR's MSDeformAttn (same parameter
    layout): the official state dict minus the num_points_scale buffer loads into it one to one."""
    torch.manual_seed(0)
    v2 = trained_like(RTDETRv2DeformableAttention(32, 4, [3, 3]))
    v1 = MSDeformAttn(32, 2, 4, 3)
    v1.load_state_dict({k: v for k, v in v2.state_dict().items() if k != "num_points_scale"})
    q, value = torch.randn(2, 5, 32), torch.randn(2, 6 * 5 + 3 * 3, 32)
    ref = torch.rand(2, 5, 4) * 0.5 + 0.25
    mask = torch.zeros(2, 39, dtype=torch.bool)
    mask[1, :4] = True
    with torch.no_grad():
        torch.testing.assert_close(v2(q, ref, value, [(6, 5), (3, 3)], mask),
                                   v1(q, ref[:, :, None], value, [(6, 5), (3, 3)], mask))


def test_v2_layer_equals_rtdetrs_layer_with_equal_point_counts():
    torch.manual_seed(0)
    v2 = trained_like(RTDETRv2DecoderLayer(32, 4, 64, [2, 2, 2]))
    v1 = DeformableTransformerDecoderLayer(32, 4, 64, 0.0, nn.ReLU(), 3, 2)
    v1.load_state_dict({k: v for k, v in v2.state_dict().items() if not k.endswith("num_points_scale")})
    args = (torch.randn(2, 6, 32), torch.rand(2, 6, 4) * 0.5 + 0.25, torch.randn(2, 16 + 4 + 1, 32),
            [(4, 4), (2, 2), (1, 1)], None, None, torch.randn(2, 6, 32))
    with torch.no_grad():
        torch.testing.assert_close(v2(*args), v1(*args))


# ----------------------------------------------------------------------------- training
def test_train_output_shapes_with_reference_denoising_first():
    head = small_head(nd=12, **DEIM).train()
    out = head(maps(b=3), targets([2, 0, 3]))
    assert isinstance(out, RTDETRTrainOutput)
    # max 3 GTs -> 12 // 3 = 4 groups of (positive + negative) copies -> 24 denoising queries + 20
    assert out.dn_meta["dn_num_group"] == 4 and out.dn_meta["dn_num_split"] == [24, 20]
    assert out.dn_meta["dn_pos_idx"][0].tolist() == [0, 1, 6, 7, 12, 13, 18, 19]  # reference flavour: pairs
    assert out.dec_bboxes.shape == (3, 3, 44, 4) and out.dec_scores.shape == (3, 3, 44, 5)
    assert out.enc_bboxes.shape == (3, 20, 4) and out.enc_scores.shape == (3, 20, 5)
    sum(t.sum() for t in out[:4]).backward()
    assert not [n for n, p in head.named_parameters() if p.grad is None]


def test_train_without_boxes_keeps_the_denoising_embedding_in_the_graph():
    head = small_head().train()
    out = head(maps(), {"batch_idx": torch.zeros(0, dtype=torch.long), "cls": torch.zeros(0, dtype=torch.long),
                        "bboxes": torch.zeros(0, 4)})
    assert out.dn_meta is None and out.dec_bboxes.shape == (3, 2, 20, 4)
    out.dec_scores.sum().backward()
    assert head.denoising_class_embed.weight.grad is not None


def test_rtdetr_criterion_trains_it_with_mal():
    head = small_head(**DEIM).train()
    batch = targets([2, 1])
    out = head(maps(), batch)
    for loss in ("vfl", "mal"):
        total, logs = RTDETRCriterion(5, loss=loss, mal_gamma=1.5)(tuple(out), batch)
        assert total.isfinite() and loss in logs and logs["dn"] > 0
    total.backward()
    assert head.enc_score_head.weight.grad.abs().sum() > 0 and head.input_proj[0].conv.weight.grad is not None


# ----------------------------------------------------------------------------- inference
def test_eval_is_the_topk_of_the_eval_layer():
    head = trained_like(small_head(layers=4, eval_idx=1))
    feats = maps()
    train = copy.deepcopy(head).train()
    for m in train.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        out = train(feats)
        y = head(feats)
    assert y.shape == (2, 20, 6)
    top, index = out.dec_scores[1].sigmoid().flatten(1).topk(20)
    torch.testing.assert_close(y[..., 4], top)
    torch.testing.assert_close(y[..., 5], (index % 5).float())
    query = index // 5
    # eval reads the detached chain: layer 1's box on layer 0's box (equal in value to training's)
    torch.testing.assert_close(y[..., :4], torch.stack([out.dec_bboxes[1][b, query[b]] for b in range(2)]))


@pytest.mark.parametrize("eval_idx", [-1, 1])
def test_fuse_keeps_eval_outputs_and_drops_what_eval_never_reads(eval_idx):
    head = trained_like(small_head(eval_idx=eval_idx, **DEIM))
    feats = maps()
    with torch.no_grad():
        before = head(feats)
        head.fuse_()
        after = head(feats)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert len(head.decoder.layers) == head.eval_idx + 1
    assert not any(isinstance(m, nn.BatchNorm2d) for m in head.modules())
    with pytest.raises(RuntimeError, match="fused"):
        head.train()(feats)


def test_decode_by_hand_without_clipping():
    """As the official RTDETRPostProcessor: cxcywh -> xyxy times the image size, no clipping."""
    head = small_head()
    out = torch.tensor([[[0.5, 0.5, 0.2, 0.4, 0.9, 3.0], [0.05, 0.2, 0.4, 0.2, 0.6, 1.0]]])
    dec = head.decode(out, (480, 640))
    torch.testing.assert_close(dec.boxes[0], torch.tensor([[256.0, 144.0, 384.0, 336.0], [-96.0, 48.0, 160.0, 144.0]]))
    assert dec.labels.tolist() == [[3, 1]] and dec.labels.dtype == torch.long
    assert [len(d) for d in head.postprocess(out, (480, 640), conf=0.7)] == [1]


def test_maps_with_fewer_tokens_than_queries():
    head = small_head(nq=30)
    feats = maps([(2, 2), (1, 1), (1, 1)])  # 6 tokens -> 6 queries
    out = head.train()(feats, targets([1, 1]))
    assert out.enc_bboxes.shape == (2, 6, 4) and out.dn_meta["dn_num_split"] == [24, 6]
    with torch.no_grad():
        assert head.eval()(feats).shape == (2, 30, 6)


def test_learn_query_content_trains_and_predicts():
    head = small_head(learn_query_content=True)
    assert tuple(head.tgt_embed.weight.shape) == (20, 32)
    out = head.train()(maps(), targets([1, 2]))
    out.dec_scores.sum().backward()
    assert head.tgt_embed.weight.grad is not None
    with torch.no_grad():
        assert head.eval()(maps()).shape == (2, 20, 6)


# ----------------------------------------------------------------------------- YAML and export
def test_yaml_rule_and_argument_checks():
    row = RowContext(index=23, module="RTDETRv2Decoder", c_in=[256, 256, 256], n=1)
    args, c2, n = lookup("RTDETRv2Decoder").channels([80, 256, 300, [4, 4, 4], 3], row)
    assert args == [80, [256, 256, 256], 256, 300, [4, 4, 4], 3] and c2 is None and n == 1
    assert lookup("RTDETRv2Decoder").is_head and RTDETRv2Decoder.family == "rtdetr" and not RTDETRv2Decoder.needs_nms
    with pytest.raises(ValueError, match="num_points"):
        RTDETRv2Decoder(80, [256, 256], num_points=[4, 4, 4])
    with pytest.raises(ValueError, match="eval_idx"):
        RTDETRv2Decoder(80, [256] * 3, num_layers=3, eval_idx=3)


def test_tiny_yaml_model_trains_predicts_and_fuses():
    from rtdet.io import build_model

    torch.manual_seed(0)
    model = build_model(yaml.safe_load(TINY_RTV2_YAML))
    img = torch.rand(2, 3, 64, 48)
    out = model.train()(img, targets([1, 2], nc=3))
    assert out.dec_bboxes.shape == (3, 2, 5 * 2 * 2 + 20, 4)  # max 2 GTs: 10 // 2 = 5 groups of 2 x 2 copies
    model.eval()
    with torch.no_grad():
        y = model(img)
        fused = copy.deepcopy(model).fuse()
        torch.testing.assert_close(fused(img), y, rtol=1e-4, atol=1e-5)
    assert y.shape == (2, 20, 6)


@pytest.mark.parametrize("dynamic", [False, True])
def test_onnx_export_matches_pytorch(tmp_path, dynamic):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from rtdet.deploy.graph import export_onnx
    from rtdet.deploy.parity import check_export
    from rtdet.io import build_model

    torch.manual_seed(0)
    model = build_model(yaml.safe_load(TINY_RTV2_YAML))
    file = export_onnx(model, tmp_path / "rtv2.onnx", imgsz=64, dynamic=dynamic, count_flops=False)
    x = torch.rand(1, 3, 96 if dynamic else 64, 64, generator=torch.Generator().manual_seed(2))
    report = check_export(file, model, x, conf=0.0)
    assert report.ok and report.n_torch == report.matched == 20, report
