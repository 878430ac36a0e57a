"""RTDETRDecoder: reference parameter layout and counts, inference / training outputs, denoising
groups, anchors, postprocess, and the YAML channel rule. Small hidden sizes keep it fast; the count
tests build the real configuration without running it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from rtdet.nn.heads.denoising import build_denoising_queries, denoising_attn_mask
from rtdet.nn.heads.rtdetr import RTDETRDecoder
from rtdet.nn.registry import RowContext, lookup
from rtdet.ops.anchors import query_anchors
from tests.nn.heads import detr_inputs
from tests.nn.heads.detr_inputs import targets

CH = (8, 12, 16)


def maps(shapes, b=2, ch=CH) -> list[torch.Tensor]:
    return detr_inputs.maps(shapes, ch, b)


def small_head(nc=5, nq=30, nd=20, **kw) -> RTDETRDecoder:
    torch.manual_seed(0)
    return RTDETRDecoder(nc=nc, ch=CH, hd=32, nq=nq, nh=4, ndl=3, d_ffn=64, nd=nd, **kw)


def xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


# ----------------------------------------------------------------------------- layout, counts, init
def test_parameter_counts_match_ultralytics():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(RTDETRDecoder(80, [256, 256, 256])) == 7_466_252
    assert count(RTDETRDecoder(80, [384, 384, 384])) == 7_564_556


def test_state_dict_layout_matches_reference():
    head = small_head()
    assert [name for name, _ in head.named_children()] == [
        "input_proj", "decoder", "denoising_class_embed", "query_pos_head", "enc_output", "enc_score_head",
        "enc_bbox_head", "dec_score_head", "dec_bbox_head",
    ]
    sd = head.state_dict()
    for key, shape in {
        "input_proj.0.0.weight": (32, 8, 1, 1),
        "input_proj.2.1.running_var": (32,),
        "decoder.layers.0.self_attn.in_proj_weight": (96, 32),
        "decoder.layers.2.cross_attn.sampling_offsets.weight": (4 * 3 * 4 * 2, 32),
        "denoising_class_embed.weight": (5, 32),
        "query_pos_head.layers.1.weight": (32, 64),
        "enc_output.0.weight": (32, 32),
        "enc_output.1.bias": (32,),
        "enc_score_head.weight": (5, 32),
        "enc_bbox_head.layers.2.weight": (4, 32),
        "dec_score_head.2.bias": (5,),
        "dec_bbox_head.2.layers.2.bias": (4,),
    }.items():
        assert tuple(sd[key].shape) == shape, key
    assert "tgt_embed.weight" not in sd
    learnt = list(small_head(learnt_init_query=True).state_dict())
    assert learnt.index("tgt_embed.weight") == learnt.index("denoising_class_embed.weight") + 1


def test_init_follows_reference():
    head = small_head(nc=5)
    prior = -math.log(99) / 80 * 5
    for lin in [head.enc_score_head, *head.dec_score_head]:
        torch.testing.assert_close(lin.bias, torch.full((5,), prior))
    for mlp in [head.enc_bbox_head, *head.dec_bbox_head]:
        assert (mlp.layers[-1].weight == 0).all() and (mlp.layers[-1].bias == 0).all()
    bound = 1 / math.sqrt(32)
    assert head.enc_output[0].bias.abs().max() <= bound and head.enc_output[0].bias.abs().max() > 0


# ----------------------------------------------------------------------------- inference
@pytest.mark.parametrize("shapes", [[(80, 80), (40, 40), (20, 20)], [(60, 80), (30, 40), (15, 20)]])
def test_eval_output_is_b_300_6(shapes):
    head = small_head(nq=300).eval()
    with torch.no_grad():
        y = head(maps(shapes))
    assert y.shape == (2, 300, 6)
    boxes, scores, labels = y[..., :4], y[..., 4], y[..., 5]
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    assert torch.equal(labels, labels.round()) and labels.min() >= 0 and labels.max() < 5


def test_eval_output_is_topk_of_the_last_decoder_layer():
    head = small_head()
    feats = maps([(8, 10), (4, 5), (2, 3)])
    head.train()
    for m in head.modules():  # same BN statistics as in eval
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        dec_bboxes, dec_scores, _, _, dn_meta = head(feats)
        y = head.eval()(feats)
    assert dn_meta is None
    probs = dec_scores[-1].sigmoid()  # [B, Q, nc]
    top, index = probs.flatten(1).topk(30)
    torch.testing.assert_close(y[..., 4], top)
    torch.testing.assert_close(y[..., 5], (index % 5).float())
    query = index // 5
    torch.testing.assert_close(y[..., :4], torch.stack([dec_bboxes[-1][b, query[b]] for b in range(2)]))


def test_fuse_keeps_eval_outputs():
    head = small_head()
    feats = maps([(8, 8), (4, 4), (2, 2)])
    head.train()
    head(feats)  # move the BN running statistics away from their defaults
    head.eval()
    with torch.no_grad():
        before = head(feats)
        head.fuse_()
        after = head(feats)
    assert not isinstance(head.input_proj[0][1], nn.BatchNorm2d)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("batch", [None, {"batch_idx": torch.zeros(0, dtype=torch.long),
                                          "cls": torch.zeros(0, dtype=torch.long), "bboxes": torch.zeros(0, 4)}])
def test_train_without_boxes_has_no_denoising_but_keeps_its_embedding_in_the_graph(batch):
    head = small_head().train()
    dec_bboxes, dec_scores, enc_bboxes, enc_scores, dn_meta = head(maps([(8, 8), (4, 4), (2, 2)]), batch)
    assert dn_meta is None
    assert dec_bboxes.shape == (3, 2, 30, 4) and dec_scores.shape == (3, 2, 30, 5)
    assert enc_bboxes.shape == (2, 30, 4) and enc_scores.shape == (2, 30, 5)
    (dec_bboxes.sum() + dec_scores.sum() + enc_bboxes.sum() + enc_scores.sum()).backward()
    assert head.denoising_class_embed.weight.grad is not None  # DDP sees every parameter used


def test_train_with_targets_prepends_denoising_queries():
    head = small_head(nd=20).train()
    dec_bboxes, dec_scores, enc_bboxes, enc_scores, dn_meta = head(maps([(8, 8), (4, 4), (2, 2)], b=3),
                                                                   targets([2, 0, 5]))
    # max 5 GTs per image -> 20 // 5 = 4 groups of (positive + negative) copies -> 40 denoising queries
    assert dn_meta["dn_num_group"] == 4 and dn_meta["dn_num_split"] == [40, 30]
    assert dec_bboxes.shape == (3, 3, 70, 4) and dec_scores.shape == (3, 3, 70, 5)
    assert enc_bboxes.shape == (3, 30, 4) and enc_scores.shape == (3, 30, 5)
    assert dn_meta["dn_pos_idx"][0].tolist() == [0, 1, 5, 6, 10, 11, 15, 16]
    assert dn_meta["dn_pos_idx"][1].numel() == 0
    assert dn_meta["dn_pos_idx"][2].tolist() == list(range(20))
    assert [g.tolist() for g in dn_meta["dn_gt_idx"]] == [[0, 1], [], [2, 3, 4, 5, 6]]
    dec_scores.sum().backward()
    assert head.denoising_class_embed.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- denoising
def test_denoising_attention_mask_blocks():
    dn = build_denoising_queries(targets([2, 0, 5]), torch.randn(5, 8), num_queries=7, batch_size=3, num_dn=20)
    mask = dn.attn_mask
    assert mask.shape == (47, 47) and mask.dtype == torch.bool
    assert mask[40:, :40].all()  # matching queries cannot see denoising queries
    assert not mask[:, 40:].any()  # everyone sees the matching queries
    group = torch.arange(40) // 10  # groups of 2 * max_gt slots
    for i in range(40):
        for j in range(40):
            assert mask[i, j] == (group[i] != group[j])
    torch.testing.assert_close(mask, denoising_attn_mask(40, 10, 7))


def test_denoising_noise_bounds():
    torch.manual_seed(0)
    t = targets([3, 1], seed=3)
    t["bboxes"] = t["bboxes"] * 0.5 + torch.tensor([0.15, 0.15, 0.0, 0.0])  # small, central: never clipped
    dn = build_denoising_queries(t, torch.randn(5, 8), num_queries=4, batch_size=2, num_dn=12,
                                 label_noise_ratio=0.0, box_noise_scale=1.0)
    m, groups = 3, dn.meta["dn_num_group"]
    assert groups == 4
    gt = xyxy(t["bboxes"])
    half = (t["bboxes"][:, 2:] / 2).repeat(1, 2)
    checked = 0
    for img in range(2):
        gt_idx = dn.meta["dn_gt_idx"][img]
        rank = torch.arange(gt_idx.numel())
        for copy in range(2 * groups):
            boxes = dn.bbox[img, rank + m * copy].sigmoid()
            shift = (xyxy(boxes) - gt[gt_idx]).abs() / half[gt_idx]
            if copy < groups:  # positives: every corner moves less than half the box size
                assert (shift < 1 + 1e-4).all()
            else:  # negatives: between 1 and 2 half-sizes (boxes are central: no clipping) ...
                proper = (boxes[:, 2:] > 1e-3).all(1)  # ... unless the corners crossed (width clamped)
                checked += int(proper.sum())
                assert ((shift[proper] > 1 - 1e-4) & (shift[proper] < 2 + 1e-4)).all()
    assert checked >= 8  # of the 16 negative boxes


def test_denoising_without_noise_reconstructs_gts_even_for_unsorted_batches():
    embed_table = torch.randn(5, 8)
    t = {"batch_idx": torch.tensor([1, 0, 1, 1, 0]), "cls": torch.tensor([4, 0, 2, 3, 1]),
         "bboxes": torch.rand(5, 4) * 0.5 + 0.25}
    dn = build_denoising_queries(t, embed_table, num_queries=6, batch_size=3, num_dn=9,
                                 label_noise_ratio=0.0, box_noise_scale=0.0)
    assert dn.meta["dn_num_group"] == 3 and dn.meta["dn_num_split"] == [18, 6]
    assert [g.tolist() for g in dn.meta["dn_gt_idx"]] == [[1, 4], [0, 2, 3], []]
    for img in range(3):
        gt_idx = dn.meta["dn_gt_idx"][img].repeat(3)
        pos = dn.meta["dn_pos_idx"][img]
        torch.testing.assert_close(dn.bbox[img, pos].sigmoid(), t["bboxes"][gt_idx], atol=1e-5, rtol=0)
        torch.testing.assert_close(dn.embed[img, pos], embed_table[t["cls"][gt_idx]])
    # empty slots (image 0 has 2 of 3, image 2 none) hold zeros
    assert (dn.embed[0, 2] == 0).all() and (dn.embed[2] == 0).all() and (dn.bbox[2] == 0).all()


def test_denoising_caps_crowded_images_with_a_random_subset():
    t = targets([7, 2], seed=5)
    dn = build_denoising_queries(t, torch.randn(5, 8), num_queries=4, batch_size=2, num_dn=3,
                                 label_noise_ratio=0.0, box_noise_scale=0.0)
    assert dn.meta["dn_num_group"] == 1 and dn.meta["dn_num_split"] == [6, 4]
    first, second = dn.meta["dn_gt_idx"]
    assert first.numel() == 3 and first.unique().numel() == 3 and (first < 7).all()
    assert torch.equal(first, first.sort().values) and second.tolist() == [7, 8]
    assert dn.meta["dn_pos_idx"][0].tolist() == [0, 1, 2]
    torch.testing.assert_close(dn.bbox[0, :3].sigmoid(), t["bboxes"][first], atol=1e-5, rtol=0)


def test_denoising_rejects_bad_class_ids():
    t = targets([2, 1])
    t["cls"][0] = 9
    with pytest.raises(ValueError, match=r"class id 9 .* outside \[0, 4\]"):
        build_denoising_queries(t, torch.randn(5, 8), num_queries=4, batch_size=2)


# ----------------------------------------------------------------------------- anchors
def test_anchors_are_cached_and_valid_mask_is_correct():
    head = small_head()
    shapes = [(80, 60), (40, 30)]
    a1 = head.anchors(shapes, torch.device("cpu"), torch.float32)
    assert head.anchors([(80, 60), (40, 30)], torch.device("cpu"), torch.float32)[0] is a1[0]
    assert head.anchors([(8, 6), (4, 3)], torch.device("cpu"), torch.float32)[0] is not a1[0]

    anchors, valid = query_anchors(shapes)
    assert anchors.shape == (1, 80 * 60 + 40 * 30, 4) and valid.shape == (1, 80 * 60 + 40 * 30, 1)
    # level 0 token (y, x) of the 80 x 60 map: centre ((x+0.5)/60, (y+0.5)/80), size 0.05
    for y, x in [(0, 0), (0, 59), (79, 30), (40, 0), (40, 30), (1, 1)]:
        i = y * 60 + x
        cx, cy = (x + 0.5) / 60, (y + 0.5) / 80
        expect_valid = 0.01 < cx < 0.99 and 0.01 < cy < 0.99
        assert bool(valid[0, i, 0]) == expect_valid, (y, x)
        if expect_valid:
            torch.testing.assert_close(anchors[0, i].sigmoid(), torch.tensor([cx, cy, 0.05, 0.05]))
        else:
            assert torch.isinf(anchors[0, i]).all()
    # level 1 boxes are twice as large
    torch.testing.assert_close(anchors[0, 80 * 60 + 15 * 30 + 15, 2:].sigmoid(), torch.tensor([0.1, 0.1]))


# ----------------------------------------------------------------------------- postprocess
def test_postprocess_returns_pixel_xyxy_above_conf():
    head = small_head()
    out = torch.tensor([[[0.5, 0.5, 0.2, 0.4, 0.9, 3.0],
                         [0.1, 0.2, 0.4, 0.2, 0.6, 1.0],
                         [0.7, 0.7, 0.1, 0.1, 0.1, 2.0]],
                        [[0.5, 0.5, 1.0, 1.0, 0.2, 0.0],
                         [0.5, 0.5, 0.1, 0.1, 0.3, 4.0],
                         [0.5, 0.5, 0.1, 0.1, 0.4, 4.0]]])
    dets = head.postprocess(out, img_shape=(480, 640), conf=0.25)
    assert len(dets) == 2 and len(dets[0]) == 2 and len(dets[1]) == 2
    torch.testing.assert_close(dets[0].boxes[0], torch.tensor([256.0, 144.0, 384.0, 336.0]))
    torch.testing.assert_close(dets[0].boxes[1], torch.tensor([0.0, 48.0, 192.0, 144.0]))  # clipped at x = 0
    assert dets[0].labels.tolist() == [3, 1] and dets[0].labels.dtype == torch.long
    assert dets[1].scores.tolist() == pytest.approx([0.4, 0.3])
    assert len(head.postprocess(out, (480, 640), conf=0.25, max_det=1)[0]) == 1
    with pytest.raises(TypeError, match="eval output"):
        head.postprocess((out, None), (480, 640))


# ----------------------------------------------------------------------------- YAML
def test_yaml_rule_inserts_the_input_channels():
    row = RowContext(index=28, module="RTDETRDecoder", c_in=[256, 256, 256], n=1)
    args, c2, n = lookup("RTDETRDecoder").channels([80], row)
    assert args == [80, [256, 256, 256]] and c2 is None and n == 1
    assert lookup("RTDETRDecoder").is_head


def test_tiny_yaml_model_trains_and_predicts():
    from rtdet.io import build_model

    cfg = {
        "nc": 3,
        "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]],
                     [-1, 1, "AIFI", [32, 4]]],
        "head": [[[1, 2, 3], 1, "RTDETRDecoder", ["nc", 32, 20]]],
    }
    model = build_model(cfg)
    img = torch.rand(2, 3, 64, 48)
    out = model.train()(img, targets([1, 2], nc=3))  # nd = 100 by default: 50 groups of 2 x 2 GTs
    assert out[0].shape == (6, 2, 200 + 20, 4) and out[4]["dn_num_split"] == [200, 20]
    model.eval()
    with torch.no_grad():
        assert model(img).shape == (2, 20, 6)


def test_label_noise_flips_the_expected_share_of_labels():
    torch.manual_seed(0)
    table = torch.eye(5)  # one-hot rows: the label of each query can be read back
    t = targets([50, 50], seed=7)
    dn = build_denoising_queries(t, table, num_queries=4, batch_size=2, num_dn=100, label_noise_ratio=1.0,
                                 box_noise_scale=0.0)
    labels = torch.cat([dn.embed[i, dn.meta["dn_pos_idx"][i]].argmax(-1) for i in range(2)])
    gt = torch.cat([t["cls"][g].repeat(dn.meta["dn_num_group"]) for g in dn.meta["dn_gt_idx"]])
    changed = (labels != gt).float().mean().item()
    assert 0.3 < changed < 0.5  # flipped with p = ratio / 2 to a random class (same class 1 time in 5)


def test_learnt_init_query_trains_and_predicts():
    head = small_head(learnt_init_query=True)
    feats = maps([(8, 8), (4, 4), (2, 2)])
    out = head.train()(feats, targets([1, 2]))
    out[1].sum().backward()
    assert head.tgt_embed.weight.grad.abs().sum() > 0  # content queries are learned, not detached
    with torch.no_grad():
        assert head.eval()(feats).shape == (2, 30, 6)


def test_maps_with_fewer_tokens_than_queries():
    head = small_head(nq=30)
    feats = maps([(2, 2), (1, 1), (1, 1)])  # 6 tokens -> 6 queries
    out = head.train()(feats, targets([1, 1]))
    assert out[2].shape == (2, 6, 4) and out[4]["dn_num_split"] == [40, 6]
    with torch.no_grad():
        assert head.eval()(feats).shape == (2, 30, 6)  # top 30 of 6 queries x 5 classes


def test_reference_denoising_keeps_every_gt_of_a_crowded_image_in_one_group():
    # RT-DETR / D-FINE's get_contrastive_denoising_training_group: num_group = num_dn // max_gt, at least 1,
    # and every GT gets its positive and negative copy, so 7 GTs with num_dn = 3 give 14 queries.
    t = targets([7, 2], seed=5)
    dn = build_denoising_queries(t, torch.randn(5, 8), num_queries=4, batch_size=2, num_dn=3,
                                 label_noise_ratio=0.0, box_noise_scale=0.0, flavour="reference")
    assert dn.meta["dn_num_group"] == 1 and dn.meta["dn_num_split"] == [14, 4]
    first, second = dn.meta["dn_gt_idx"]
    assert first.tolist() == list(range(7)) and second.tolist() == [7, 8]
    torch.testing.assert_close(dn.bbox[0, :7].sigmoid(), t["bboxes"][first], atol=1e-5, rtol=0)
