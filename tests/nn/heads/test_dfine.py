"""DFINEDecoder: parameter counts of the official D-FINE / DEIM decoders to the digit (built and deployed),
the official state-dict layout and initialisation, training / eval outputs, Fine-grained Distribution
Refinement and the LQE, the deploy form, decode, denoising in the reference flavour, and an ONNX export of a
tiny model. Small hidden sizes keep the running tests fast; the count tests build the real configurations
without running them."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from rtdet.nn.heads.denoising import build_denoising_queries
from rtdet.nn.heads.dfine import DFINEDecoder, DFineTrainOutput
from rtdet.nn.modules import dfine_decoder
from rtdet.nn.modules.dfine_decoder import LQE, DFineDeformableAttention, deformable_sample
from rtdet.nn.modules.transformer import multi_scale_deformable_attn
from rtdet.nn.registry import RowContext, lookup
from rtdet.ops.boxes import cxcywh_to_xyxy
from rtdet.ops.fdr import weighting_function
from tests.nn.heads import detr_inputs
from tests.nn.heads.detr_inputs import targets

CH = (8, 16, 16)
SHAPES = [(8, 8), (4, 4), (2, 2)]

# Official decoder configurations (research notes, section 2) and their counts (section 1, nc = 80):
# the "decoder" column, and "unused in eval" minus the denoising embedding that deploy() keeps.
OFFICIAL = {
    "N": (dict(ch=[128, 128], hidden_dim=128, num_points=[6, 6], num_layers=3, dim_feedforward=512), 1_228_473,
          33_826),
    "S": (dict(ch=[256] * 3, num_layers=3), 4_449_977, 64_674),
    "M": (dict(ch=[256] * 3, num_layers=4), 5_764_398, 86_643),
    "L": (dict(ch=[256] * 3, num_layers=6), 8_393_240, 130_581),
    "X": (dict(ch=[384] * 3, num_layers=6, reg_scale=8), 8_689_688, 130_581),
}


def maps(shapes=SHAPES, b=2, ch=CH) -> list[torch.Tensor]:
    return detr_inputs.maps(shapes, ch, b)


def count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def small_head(nc=5, nq=20, nd=12, layers=3, **kw) -> DFINEDecoder:
    torch.manual_seed(0)
    kw.setdefault("num_points", [2, 3, 2])
    return DFINEDecoder(nc, CH, hidden_dim=32, num_queries=nq, num_layers=layers, dim_feedforward=64, nhead=4,
                        reg_max=16, num_denoising=nd, **kw)


def trained_like(head: DFINEDecoder) -> DFINEDecoder:
    """Noise on every trainable weight (the zero-initialised heads, gates and LQEs start to matter) and random
    BatchNorm statistics, in eval mode."""
    head = copy.deepcopy(head).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in head.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        for m in head.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return head


# ----------------------------------------------------------------------------- counts and layout
@pytest.mark.parametrize("act", ["relu", "silu"])  # D-FINE, DEIM-D-FINE: same parameters
@pytest.mark.parametrize("size", list(OFFICIAL))
def test_parameter_counts_match_the_official_decoders(size, act):
    kwargs, built, unused = OFFICIAL[size]
    head = DFINEDecoder(80, act=act, **kwargs)
    assert count(head) == built  # up and reg_scale included
    embed = 81 * kwargs.get("hidden_dim", 256)
    head.eval().fuse_()  # the official deploy(): drops the unused score heads / LQEs, keeps the embedding
    assert count(head) == built - (unused - embed)


def test_deploy_counts_to_the_digit():
    expected = {"N": 1_205_015, "S": 4_406_039, "M": 5_698_491, "L": 8_283_395, "X": 8_579_843}
    for size, (kwargs, _, _) in OFFICIAL.items():
        head = DFINEDecoder(80, **kwargs).eval()
        head.fuse_()
        assert count(head) == expected[size], size


def test_silu_reaches_every_mlp_ffn_and_lqe():
    for act in ["silu", "nn.SiLU()", nn.SiLU()]:
        head = small_head(act=act)
        kinds = {type(m) for m in head.modules() if isinstance(m, nn.ReLU | nn.SiLU)}
        assert kinds == {nn.SiLU}, act
    assert {type(m) for m in small_head().modules() if isinstance(m, nn.ReLU | nn.SiLU)} == {nn.ReLU}


def test_state_dict_layout_follows_the_official_order():
    head = DFINEDecoder(80, [384, 384, 384], num_layers=3)
    names = [n for n, _ in head.named_parameters()]
    assert names[:4] == ["up", "reg_scale", "input_proj.0.conv.weight", "input_proj.0.norm.weight"]
    assert [n for n, _ in head.named_children()] == [
        "input_proj", "decoder", "denoising_class_embed", "query_pos_head", "enc_output", "enc_score_head",
        "enc_bbox_head", "dec_score_head", "pre_bbox_head", "dec_bbox_head"]
    layer = [n.split(".", 3)[-1] for n, _ in head.named_parameters() if n.startswith("decoder.layers.0.")]
    assert layer == [
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
        "norm1.weight", "norm1.bias", "cross_attn.sampling_offsets.weight", "cross_attn.sampling_offsets.bias",
        "cross_attn.attention_weights.weight", "cross_attn.attention_weights.bias", "gateway.gate.weight",
        "gateway.gate.bias", "gateway.norm.weight", "gateway.norm.bias", "linear1.weight", "linear1.bias",
        "linear2.weight", "linear2.bias", "norm3.weight", "norm3.bias"]
    sd = head.state_dict()
    for key, shape in {
        "up": (1,), "reg_scale": (1,),
        "decoder.layers.2.cross_attn.num_points_scale": (12,),
        "decoder.layers.0.cross_attn.sampling_offsets.weight": (8 * 12 * 2, 256),
        "decoder.layers.0.cross_attn.attention_weights.weight": (8 * 12, 256),
        "decoder.layers.0.gateway.gate.weight": (512, 512),
        "decoder.lqe_layers.2.reg_conf.layers.0.weight": (64, 20),
        "decoder.lqe_layers.2.reg_conf.layers.1.weight": (1, 64),
        "denoising_class_embed.weight": (81, 256),
        "query_pos_head.layers.0.weight": (512, 4),
        "enc_output.proj.weight": (256, 256), "enc_output.norm.bias": (256,),
        "enc_score_head.weight": (80, 256), "enc_bbox_head.layers.2.weight": (4, 256),
        "dec_score_head.2.weight": (80, 256), "pre_bbox_head.layers.2.bias": (4,),
        "dec_bbox_head.2.layers.2.weight": (132, 256),
    }.items():
        assert tuple(sd[key].shape) == shape, key
    torch.testing.assert_close(sd["decoder.layers.0.cross_attn.num_points_scale"],
                               torch.tensor([1 / 3] * 3 + [1 / 6] * 6 + [1 / 3] * 3))
    assert "project" not in sd and "anchors" not in sd  # derived, not saved
    assert isinstance(DFINEDecoder(80, [256, 256, 256]).input_proj[0], nn.Identity)
    assert not head.up.requires_grad and not head.reg_scale.requires_grad


def test_official_int64_reg_scale_loads_and_takes_effect():
    head, eight = small_head(reg_scale=4), small_head(reg_scale=8)
    sd = eight.state_dict()
    sd["reg_scale"] = torch.tensor([8])  # as official checkpoints store it
    head.load_state_dict(sd)
    assert head.reg_scale.dtype == torch.float32 and head.reg_scale.item() == 8.0
    feats = maps()
    with torch.no_grad():
        torch.testing.assert_close(trained_like(head)(feats), trained_like(eight)(feats))


def test_init_follows_the_reference():
    head = small_head(nc=5)
    prior = -math.log(99)  # not scaled by nc
    for lin in [head.enc_score_head, *head.dec_score_head]:
        torch.testing.assert_close(lin.bias, torch.full((5,), prior))
    for mlp in [head.enc_bbox_head, head.pre_bbox_head, *head.dec_bbox_head]:
        assert not mlp.layers[-1].weight.any() and not mlp.layers[-1].bias.any()
    for layer, lqe in zip(head.decoder.layers, head.decoder.lqe_layers):
        assert not layer.gateway.gate.weight.any() and not layer.gateway.gate.bias.any()
        assert not lqe.reg_conf.layers[-1].weight.any() and not lqe.reg_conf.layers[-1].bias.any()
        attn = layer.cross_attn
        assert not attn.sampling_offsets.weight.any() and not attn.attention_weights.weight.any()
        bias = attn.sampling_offsets.bias.view(4, 7, 2)  # heads x points (2 + 3 + 2) x (x, y)
        steps = torch.tensor([1, 2, 1, 2, 3, 1, 2.0])
        torch.testing.assert_close(bias[0], torch.stack([steps, torch.zeros(7)], -1))  # head 0: along +x
        torch.testing.assert_close(bias[1], torch.stack([torch.zeros(7), steps], -1))  # head 1 of 4: along +y
    eight = DFineDeformableAttention(256, 8, [3, 6, 3]).sampling_offsets.bias.view(8, 12, 2)
    steps = torch.tensor([1, 2, 3, 1, 2, 3, 4, 5, 6, 1, 2, 3.0])
    torch.testing.assert_close(eight[1], torch.stack([steps, steps], -1))  # 45 degrees, larger coordinate 1
    torch.testing.assert_close(eight[4], torch.stack([-steps, torch.zeros(12)], -1), atol=1e-6, rtol=0)
    # every layer starts from the same weights (deep copies), the box heads are distinct modules
    torch.testing.assert_close(head.decoder.layers[0].linear1.weight, head.decoder.layers[2].linear1.weight)
    embed = head.denoising_class_embed
    assert embed.padding_idx == 5 and not embed.weight[5].any() and embed.weight[:5].std() > 0.5


# ----------------------------------------------------------------------------- layers
def test_deformable_sample_equals_the_rtdetr_core_with_equal_point_counts():
    g = torch.Generator().manual_seed(0)
    b, nq, nh, dh, npt = 2, 5, 4, 8, 3
    shapes = [(6, 5), (3, 3)]
    lv = sum(h * w for h, w in shapes)
    value = torch.randn(b, lv, nh, dh, generator=g)
    loc = torch.rand(b, nq, nh, 2, npt, 2, generator=g) * 1.2 - 0.1  # some outside the map: zeros
    w = torch.rand(b, nq, nh, 2, npt, generator=g)
    expected = multi_scale_deformable_attn(value, shapes, loc, w)
    split = value.permute(0, 2, 3, 1).reshape(b * nh, dh, lv)
    got = deformable_sample(split, shapes, loc.flatten(3, 4), w.flatten(3, 4), [npt, npt])
    torch.testing.assert_close(got, expected)


def test_deformable_attention_scales_offsets_per_level(monkeypatch):
    attn = DFineDeformableAttention(8, 2, [1, 2])
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0] * 6))  # every point 1 unit along +x
    captured = {}

    def spy(value, shapes, locations, weights, points):
        captured["loc"] = locations
        return deformable_sample(value, shapes, locations, weights, points)

    monkeypatch.setattr(dfine_decoder, "deformable_sample", spy)
    ref = torch.tensor([[[0.5, 0.5, 0.2, 0.4]]])
    attn(torch.zeros(1, 1, 8), ref, torch.zeros(2, 4, 4 * 4 + 2 * 2), [(4, 4), (2, 2)])
    x = captured["loc"][0, 0, :, :, 0]  # [heads, points]
    # level 0 (1 point): 0.5 + 1 / 1 * 0.2 * 0.5; level 1 (2 points): 0.5 + 1 / 2 * 0.2 * 0.5
    torch.testing.assert_close(x, torch.tensor([[0.6, 0.55, 0.55]] * 2))


def test_lqe_adds_one_value_per_query_to_every_class_logit():
    torch.manual_seed(0)
    lqe = LQE(4, 64, 2, reg_max=16)
    nn.init.normal_(lqe.reg_conf.layers[-1].weight)
    scores, corners = torch.randn(2, 7, 5), torch.randn(2, 7, 4 * 17)
    delta = lqe(scores, corners) - scores
    torch.testing.assert_close(delta, delta[..., :1].expand_as(delta))  # the same for every class
    prob = corners.view(2, 7, 4, 17).softmax(-1)
    top = prob.sort(-1, descending=True).values[..., :4]
    stat = torch.cat([top, top.mean(-1, keepdim=True)], -1).view(2, 7, 20)
    by_hand = lqe.reg_conf.layers[1](torch.relu(lqe.reg_conf.layers[0](stat)))
    torch.testing.assert_close(delta[..., :1], by_hand)


# ----------------------------------------------------------------------------- training
def test_train_output_shapes_with_denoising_first():
    head = small_head(nd=12).train()
    out = head(maps(b=3), targets([2, 0, 3]))
    assert isinstance(out, DFineTrainOutput)
    # max 3 GTs -> 12 // 3 = 4 groups of (positive + negative) copies -> 24 denoising queries + 20
    assert out.dn_meta["dn_num_group"] == 4 and out.dn_meta["dn_num_split"] == [24, 20]
    q = 44
    assert out.dec_bboxes.shape == (3, 3, q, 4) and out.dec_scores.shape == (3, 3, q, 5)
    assert out.dec_corners.shape == (3, 3, q, 4 * 17)
    assert out.ref_points.shape == out.pre_bboxes.shape == (3, q, 4) and out.pre_scores.shape == (3, q, 5)
    assert out.enc_bboxes.shape == (3, 20, 4) and out.enc_scores.shape == (3, 20, 5)
    torch.testing.assert_close(out.project, weighting_function(16, 0.5, 4.0))
    assert out.reg_scale.shape == () and out.reg_scale.item() == 4.0
    assert not out.ref_points.requires_grad  # the detached pre box
    loss = sum(t.sum() for t in [out.dec_bboxes, out.dec_scores, out.pre_bboxes, out.pre_scores, out.enc_bboxes,
                                 out.enc_scores])
    loss.backward()
    missing = [n for n, p in head.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert head.up.grad is None and head.reg_scale.grad is None


def test_train_without_boxes_keeps_the_denoising_embedding_in_the_graph():
    head = small_head().train()
    out = head(maps(), {"batch_idx": torch.zeros(0, dtype=torch.long), "cls": torch.zeros(0, dtype=torch.long),
                        "bboxes": torch.zeros(0, 4)})
    assert out.dn_meta is None and out.dec_bboxes.shape == (3, 2, 20, 4)
    out.dec_scores.sum().backward()
    assert head.denoising_class_embed.weight.grad is not None


def test_corner_logits_accumulate_undetached_and_boxes_start_at_the_pre_box():
    head = small_head().train()
    out = head(maps())
    # zero-initialised corner heads: uniform distributions, whose integral is 0 (W is symmetric), so every
    # layer's box is the reference, the first layer's (pre) box
    for layer in range(3):
        torch.testing.assert_close(out.dec_bboxes[layer], out.pre_bboxes, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.ref_points, out.pre_bboxes.detach())
    out.dec_corners[2].sum().backward()  # C_2 = head_2(...) + C_1, C_1 = head_1(...) + C_0: not detached
    assert head.dec_bbox_head[0].layers[-1].weight.grad.abs().sum() > 0
    assert head.dec_bbox_head[1].layers[-1].weight.grad.abs().sum() > 0


def test_a_random_first_layer_box_is_the_integral_around_the_pre_box():
    head = trained_like(small_head()).train()
    for m in head.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        out = head(maps())
        w = weighting_function(16, 0.5, 4.0)
        d = (out.dec_corners[0].view(2, 20, 4, 17).softmax(-1) * w).sum(-1)  # [B, Q, 4] l t r b
        cx, cy, bw, bh = out.ref_points.unbind(-1)
        x1, y1 = cx - (2 + d[..., 0]) * bw / 4, cy - (2 + d[..., 1]) * bh / 4
        x2, y2 = cx + (2 + d[..., 2]) * bw / 4, cy + (2 + d[..., 3]) * bh / 4
        expected = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)
    torch.testing.assert_close(out.dec_bboxes[0], expected)


# ----------------------------------------------------------------------------- inference
def test_eval_is_the_topk_of_the_eval_layer():
    head = trained_like(small_head(eval_idx=1))
    feats = maps()
    train = copy.deepcopy(head).train()
    for m in train.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        out = train(feats)
        y = head(feats)
    assert y.shape == (2, 20, 6)
    probs = out.dec_scores[1].sigmoid()
    top, index = probs.flatten(1).topk(20)
    torch.testing.assert_close(y[..., 4], top)
    torch.testing.assert_close(y[..., 5], (index % 5).float())
    query = index // 5
    torch.testing.assert_close(y[..., :4], torch.stack([out.dec_bboxes[1][b, query[b]] for b in range(2)]))


@pytest.mark.parametrize("eval_idx", [-1, 1])
def test_fuse_keeps_eval_outputs_and_drops_what_eval_never_reads(eval_idx):
    head = trained_like(DFINEDecoder(5, [8, 32, 32], hidden_dim=32, num_queries=20, num_points=[2, 3, 2],
                                     num_layers=3, dim_feedforward=64, nhead=4, eval_idx=eval_idx))
    feats = maps(ch=[8, 32, 32])
    built = count(head)
    with torch.no_grad():
        before = head(feats)
        head.fuse_()
        after = head(feats)
    torch.testing.assert_close(after, before)
    keep = head.eval_idx + 1
    assert len(head.decoder.layers) == len(head.dec_bbox_head) == keep
    per_layer = count(DFINEDecoder(5, [32] * 3, hidden_dim=32, num_points=[2, 3, 2], num_layers=1,
                                   dim_feedforward=64, nhead=4).decoder.layers[0])
    dropped = head.eval_idx * (32 * 5 + 5 + 1409) + (3 - keep) * (per_layer + 32 * 5 + 5 + 1409 + count(
        head.dec_bbox_head[0]))
    assert built - count(head) == dropped
    assert isinstance(head.input_proj[0][1], nn.BatchNorm2d)  # kept, as the reference deploy keeps it
    with pytest.raises(RuntimeError, match="fused"):
        head.train()(feats)


def test_decode_by_hand_without_clipping():
    head = small_head()
    out = torch.tensor([[[0.5, 0.5, 0.2, 0.4, 0.9, 3.0],
                         [0.05, 0.2, 0.4, 0.2, 0.6, 1.0]]])
    dec = head.decode(out, (480, 640))
    torch.testing.assert_close(dec.boxes[0, 0], torch.tensor([256.0, 144.0, 384.0, 336.0]))
    torch.testing.assert_close(dec.boxes[0, 1], torch.tensor([-96.0, 48.0, 160.0, 144.0]))  # not clipped
    torch.testing.assert_close(dec.scores, torch.tensor([[0.9, 0.6]]))
    assert dec.labels.tolist() == [[3, 1]] and dec.labels.dtype == torch.long
    dets = head.postprocess(out, (480, 640), conf=0.7)
    assert len(dets[0]) == 1 and dets[0].labels.tolist() == [3]
    with pytest.raises(TypeError, match="eval output"):
        head.decode((out, None), (480, 640))


def test_maps_with_fewer_tokens_than_queries():
    head = small_head(nq=30)
    feats = maps([(2, 2), (1, 1), (1, 1)])  # 6 tokens -> 6 queries
    out = head.train()(feats, targets([1, 1]))
    assert out.enc_bboxes.shape == (2, 6, 4) and out.dn_meta["dn_num_split"] == [24, 6]
    with torch.no_grad():
        assert head.eval()(feats).shape == (2, 30, 6)  # top 30 of 6 queries x 5 classes


# ----------------------------------------------------------------------------- denoising (reference flavour)
def test_reference_denoising_pairs_positive_and_negative_copies():
    torch.manual_seed(0)
    t = targets([2, 1], seed=4)
    dn = build_denoising_queries(t, torch.randn(5, 8), num_queries=4, batch_size=2, num_dn=6,
                                 label_noise_ratio=0.0, box_noise_scale=1.0, flavour="reference")
    m, groups = 2, dn.meta["dn_num_group"]
    assert groups == 3 and dn.meta["dn_num_split"] == [12, 4]
    assert dn.meta["dn_pos_idx"][0].tolist() == [0, 1, 4, 5, 8, 9]  # copies 0, 2, 4: one per group
    assert dn.meta["dn_pos_idx"][1].tolist() == [0, 4, 8]
    gt, half = cxcywh_to_xyxy(t["bboxes"]), (t["bboxes"][:, 2:] / 2).repeat(1, 2)
    for copy_id in range(2 * groups):
        boxes = dn.bbox[0, m * copy_id:m * copy_id + 2].sigmoid()
        shift = (cxcywh_to_xyxy(boxes) - gt[:2]).abs() / half[:2]
        if copy_id % 2 == 0:  # positives move less than half the size
            assert (shift < 1 + 1e-4).all()
        assert (boxes[:, 2:] > 1e-3).all()  # crossed corners keep |w|, |h| (no collapsed boxes)
    # the empty slot of image 1 holds the logit of a zero box (1e-5 floor), its content zeros
    torch.testing.assert_close(dn.bbox[1, 1], torch.full((4,), math.log(1e-5)))
    assert not dn.embed[1, 1].any()
    mask = dn.attn_mask  # blocks of 2m = one positive and one negative copy
    assert not mask[0, 3] and mask[0, 4] and mask[12:, :12].all()


def test_no_denoising_builds_no_embedding():
    head = small_head(nd=0)
    assert head.denoising_class_embed is None
    out = head.train()(maps(), targets([1, 2]))
    assert out.dn_meta is None and out.dec_bboxes.shape == (3, 2, 20, 4)


# ----------------------------------------------------------------------------- YAML and export
def test_yaml_rule_and_argument_checks():
    row = RowContext(index=9, module="DFINEDecoder", c_in=[256, 256, 256], n=1)
    args, c2, n = lookup("DFINEDecoder").channels([80, 256, 300, [3, 6, 3], 3], row)
    assert args == [80, [256, 256, 256], 256, 300, [3, 6, 3], 3] and c2 is None and n == 1
    assert lookup("DFINEDecoder").is_head and DFINEDecoder.family == "dfine" and not DFINEDecoder.needs_nms
    with pytest.raises(ValueError, match="num_points"):
        DFINEDecoder(80, [256, 256], num_points=[3, 6, 3])
    with pytest.raises(ValueError, match="reg_max"):
        DFINEDecoder(80, [256] * 3, reg_max=15)
    with pytest.raises(ValueError, match="eval_idx"):
        DFINEDecoder(80, [256] * 3, num_layers=3, eval_idx=3)


TINY = {
    "nc": 3,
    "batchnorm": {"eps": 1.0e-5, "momentum": 0.1},
    "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [32, 3, 2]],
                 [-1, 1, "Conv", [32, 3, 2]]],
    "head": [[[1, 2, 3], 1, "DFINEDecoder", ["nc", 32, 20, [2, 3, 2], 3, 64, 4, 16, 4, -1, 10, "silu"]]],
}


def test_tiny_yaml_model_trains_predicts_and_fuses():
    from rtdet.io import build_model

    torch.manual_seed(0)
    model = build_model(copy.deepcopy(TINY))
    img = torch.rand(2, 3, 64, 48)
    out = model.train()(img, targets([1, 2], nc=3))
    assert out.dec_bboxes.shape == (3, 2, 5 * 2 * 2 + 20, 4)  # max 2 GTs: 10 // 2 = 5 groups of 2 x 2 copies
    model.eval()
    with torch.no_grad():
        y = model(img)
        fused = copy.deepcopy(model).fuse()
        torch.testing.assert_close(fused(img), y)
    assert y.shape == (2, 20, 6)


@pytest.mark.parametrize("dynamic", [False, True])
def test_onnx_export_matches_pytorch(tmp_path, dynamic):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from rtdet.deploy.graph import export_onnx
    from rtdet.deploy.parity import check_export
    from rtdet.io import build_model

    torch.manual_seed(0)
    model = build_model(copy.deepcopy(TINY))
    file = export_onnx(model, tmp_path / "dfine.onnx", imgsz=64, dynamic=dynamic, count_flops=False)
    x = torch.rand(1, 3, 96 if dynamic else 64, 64, generator=torch.Generator().manual_seed(2))
    report = check_export(file, model, x, conf=0.0)
    assert report.ok and report.n_torch == report.matched == 20, report
