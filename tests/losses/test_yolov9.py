"""The YOLOv9 loss: task-aligned assignment by hand and against a brute-force reference, DFL by hand, the
criterion's terms, normalisation, batch scaling and PGI weighting."""

import math

import pytest
import torch
import torch.nn.functional as F

from rtdet.losses.assigners.tal import TaskAlignedAssigner
from rtdet.losses.yolov9 import YOLOCriterion, dfl_loss
from rtdet.nn.heads.yolo import YOLOTrainOutput
from rtdet.ops.boxes import elementwise_iou
from rtdet.utils.schema import SettingError

CENTRES = torch.tensor([[8.0, 8.0], [24.0, 8.0], [8.0, 24.0], [24.0, 24.0]])  # a 2x2 grid of stride 16


def assign(scores, boxes, gt_boxes, gt_cls, topk=10, points=CENTRES, mask=None):
    gt_boxes = torch.as_tensor(gt_boxes, dtype=torch.float32)[None]
    gt_cls = torch.as_tensor(gt_cls)[None]
    mask = torch.ones(gt_cls.shape, dtype=torch.bool) if mask is None else torch.as_tensor(mask)[None]
    return TaskAlignedAssigner(topk=topk)(scores[None], boxes[None], points, gt_cls, gt_boxes, mask)


def scaled_box(box, factor):
    """Same centre and aspect ratio, area x factor (CIoU with the original = IoU = factor)."""
    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * math.sqrt(factor), (y2 - y1) * math.sqrt(factor)
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def test_one_gt_one_candidate_by_hand():
    gt = [0.0, 0.0, 20.0, 20.0]  # contains only the centre (8, 8)
    boxes = torch.tensor([gt, gt, gt, gt])
    scores = torch.full((4, 3), 0.25)
    a = assign(scores, boxes, [gt], [2])
    assert a.fg.tolist() == [[True, False, False, False]]
    # alignment 0.25^0.5 * 1^6 = 0.5 is the GT's best, so the target is the anchor's IoU, 1
    torch.testing.assert_close(a.scores[0, 0], torch.tensor([0.0, 0.0, 1.0]))
    assert a.scores[0, 1:].eq(0).all()
    torch.testing.assert_close(a.boxes[0, 0], torch.tensor(gt))


def test_alignment_normalisation_and_topk_by_hand():
    gt = [0.0, 0.0, 32.0, 20.0]  # contains (8, 8) and (24, 8)
    boxes = torch.tensor([gt, scaled_box(gt, 0.5), gt, gt])
    scores = torch.full((4, 1), 0.25)
    a = assign(scores, boxes, [gt], [0])
    assert a.fg[0].tolist() == [True, True, False, False]
    # alignments 0.5 * 1^6 and 0.5 * 0.5^6; normalised by the best (0.5) and scaled by the best IoU (1)
    torch.testing.assert_close(a.scores[0, :2, 0], torch.tensor([1.0, 0.5**6]))
    top1 = assign(scores, boxes, [gt], [0], topk=1)
    assert top1.fg[0].tolist() == [True, False, False, False]


def test_candidates_must_lie_strictly_inside():
    gt = [8.0, 8.0, 40.0, 40.0]  # (8, 8) lies on the corner: not inside
    a = assign(torch.full((4, 1), 0.5), torch.tensor([gt] * 4), [gt], [0])
    assert a.fg[0].tolist() == [False, False, False, True]


def test_an_anchor_claimed_twice_keeps_the_gt_it_overlaps_most():
    box = [0.0, 0.0, 16.0, 16.0]  # anchor 0's prediction
    big, small = [0.0, 0.0, 30.0, 30.0], [2.0, 2.0, 15.0, 15.0]  # both contain (8, 8); small overlaps it more
    boxes = torch.tensor([box, box, box, box])
    a = assign(torch.full((4, 2), 0.5), boxes, [big, small], [0, 1])
    assert elementwise_iou(torch.tensor(small), torch.tensor(box), "ciou") > elementwise_iou(
        torch.tensor(big), torch.tensor(box), "ciou")
    assert a.fg[0, 0] and a.gt_index[0, 0] == 1
    assert a.scores[0, 0, 0] == 0 and a.scores[0, 0, 1] > 0


def test_padding_and_empty_targets():
    gt = [0.0, 0.0, 20.0, 20.0]
    boxes = torch.tensor([gt] * 4)
    padded = assign(torch.full((4, 1), 0.5), boxes, [gt, [0.0, 0.0, 64.0, 64.0]], [0, 0], mask=[True, False])
    assert padded.fg[0].tolist() == [True, False, False, False]  # the masked (padding) box claims nothing
    empty = TaskAlignedAssigner()(torch.rand(2, 4, 3), torch.rand(2, 4, 4), CENTRES, torch.zeros(2, 0).long(),
                                  torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool))
    assert not empty.fg.any() and empty.scores.eq(0).all()


def brute_force(scores, boxes, points, gt_cls, gt_boxes, gt_mask, topk=10, alpha=0.5, beta=6.0, eps=1e-9):
    """The assignment written out with loops over images, GTs and anchors."""
    b_, n, c = scores.shape
    fg = torch.zeros(b_, n, dtype=torch.bool)
    index = torch.zeros(b_, n, dtype=torch.long)
    target = torch.zeros(b_, n, c)
    for b in range(b_):
        align, overlap, claims = {}, {}, {}
        for m in range(gt_boxes.shape[1]):
            if not gt_mask[b, m]:
                continue
            x1, y1, x2, y2 = gt_boxes[b, m].tolist()
            cands = []
            for a in range(n):
                x, y = points[a].tolist()
                if min(x - x1, y - y1, x2 - x, y2 - y) > eps:
                    iou = max(float(elementwise_iou(gt_boxes[b, m], boxes[b, a], "ciou")), 0.0)
                    overlap[m, a] = iou
                    align[m, a] = float(scores[b, a, gt_cls[b, m]]) ** alpha * iou**beta
                    cands.append(a)
            for a in sorted(cands, key=lambda a: -align[m, a])[:topk]:
                claims.setdefault(a, []).append(m)
        owner = {a: max(ms, key=lambda m: overlap[m, a]) for a, ms in claims.items()}
        for m in {m for m in owner.values()}:
            mine = [a for a, o in owner.items() if o == m]
            best_align = max(align[m, a] for a in mine)
            best_overlap = max(overlap[m, a] for a in mine)
            for a in mine:
                fg[b, a], index[b, a] = True, m
                target[b, a, gt_cls[b, m]] = align[m, a] * best_overlap / (best_align + eps)
    return fg, index, target


def test_vectorised_assigner_equals_the_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    b, m, side, stride, c = 3, 5, 8, 8, 4
    ys, xs = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
    points = torch.stack([xs, ys], -1).view(-1, 2) * stride  # 64 anchors on a 64x64 image
    n = points.shape[0]
    centre = torch.rand(b, m, 2, generator=g) * 40 + 12
    size = torch.rand(b, m, 2, generator=g) * 30 + 24
    gt_boxes = torch.cat([centre - size / 2, centre + size / 2], -1)
    gt_cls = torch.randint(0, c, (b, m), generator=g)
    gt_mask = torch.ones(b, m, dtype=torch.bool)
    gt_mask[2, 3:] = False  # image 2 has three GTs (two padding rows)
    # predictions near their anchor, of GT-like sizes, so every candidate has a positive CIoU (no ties at 0)
    pred_size = torch.rand(b, n, 2, generator=g) * 20 + 30
    pred_centre = points[None] + (torch.rand(b, n, 2, generator=g) - 0.5) * 4
    boxes = torch.cat([pred_centre - pred_size / 2, pred_centre + pred_size / 2], -1)
    scores = torch.rand(b, n, c, generator=g) * 0.9 + 0.05

    got = TaskAlignedAssigner(topk=10)(scores, boxes, points, gt_cls, gt_boxes, gt_mask)
    fg, index, target = brute_force(scores, boxes, points, gt_cls, gt_boxes, gt_mask)
    assert fg.sum() > 30 and (fg.sum(1) > 0).all()
    contested = sum((TaskAlignedAssigner(topk=10).candidates(points, gt_boxes)[i].sum(0) > 1).sum() for i in range(b))
    assert contested > 10  # overlapping GTs: the one-GT-per-anchor rule is exercised
    assert torch.equal(got.fg, fg)
    assert torch.equal(got.gt_index[fg], index[fg])
    torch.testing.assert_close(got.scores, target, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.boxes[fg], gt_boxes.gather(1, index[..., None].expand(-1, -1, 4))[fg])


def test_dfl_by_hand():
    logits = torch.tensor([[[2.0, 1.0, 0.0]] * 4])  # one positive, four sides, three bins
    target = torch.tensor([[0.3, 0.3, 1.0, 1.9]])
    logp = F.log_softmax(logits[0, 0], 0)
    by_hand = [-(0.7 * logp[0] + 0.3 * logp[1]), -(0.7 * logp[0] + 0.3 * logp[1]), -logp[1],
               -(0.1 * logp[1] + 0.9 * logp[2])]
    torch.testing.assert_close(dfl_loss(logits, target), torch.stack(by_hand).mean()[None])


# ------------------------------------------------------------------ the criterion
STRIDES = [8, 16]


def head_maps(b: int, nc: int, seed: int = 0, requires_grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 64 + nc, 64 // s, 64 // s, generator=g).requires_grad_(requires_grad) for s in STRIDES]


def batch_of(b: int, boxes: list[tuple[int, int, list[float]]]) -> dict:
    return {"img": torch.zeros(b, 3, 64, 64), "batch_idx": torch.tensor([i for i, _, _ in boxes]),
            "cls": torch.tensor([c for _, c, _ in boxes]),
            "bboxes": torch.tensor([x for _, _, x in boxes]).reshape(-1, 4)}


BOXES = [(0, 1, [0.5, 0.5, 0.5, 0.4]), (0, 0, [0.25, 0.3, 0.3, 0.3]), (1, 2, [0.6, 0.6, 0.6, 0.7])]


def test_total_is_the_sum_of_the_gained_terms_times_the_batch_size():
    crit = YOLOCriterion(nc=3, strides=STRIDES)
    total, terms = crit(YOLOTrainOutput(head_maps(2, 3)), batch_of(2, BOXES))
    assert set(terms) == {"box", "cls", "dfl"} and all(v > 0 for v in terms.values())
    torch.testing.assert_close(total, 2 * sum(terms.values()))
    assert YOLOCriterion.reduction == "sum"


def test_gains_scale_their_terms():
    out, batch = YOLOTrainOutput(head_maps(2, 3)), batch_of(2, BOXES)
    _, base = YOLOCriterion(nc=3, strides=STRIDES)(out, batch)
    _, more = YOLOCriterion(nc=3, strides=STRIDES, box=15.0, cls=0.0, dfl=0.75)(out, batch)
    torch.testing.assert_close(more["box"], 2 * base["box"])
    torch.testing.assert_close(more["dfl"], 0.5 * base["dfl"])
    assert more["cls"] == 0


def test_without_targets_only_the_background_classification_remains():
    maps = head_maps(2, 3, requires_grad=True)
    crit = YOLOCriterion(nc=3, strides=STRIDES)
    total, terms = crit(YOLOTrainOutput(maps), batch_of(2, []))
    assert terms["box"] == 0 and terms["dfl"] == 0
    logits = torch.cat([m[:, 64:].flatten(2) for m in maps], 2)
    bce = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="sum")
    torch.testing.assert_close(total, 2 * 0.5 * bce)  # normaliser max(0, 1) = 1
    total.backward()
    assert all(m.grad is not None for m in maps)


def test_auxiliary_branch_is_assigned_on_its_own_and_weighted_a_quarter():
    crit = YOLOCriterion(nc=3, strides=STRIDES)
    main, aux, batch = head_maps(2, 3, seed=0), head_maps(2, 3, seed=1), batch_of(2, BOXES)
    dual, dual_terms = crit(YOLOTrainOutput(main, aux), batch)
    main_only, main_terms = crit(YOLOTrainOutput(main), batch)
    aux_only, aux_terms = crit(YOLOTrainOutput(aux), batch)
    torch.testing.assert_close(dual, main_only + 0.25 * aux_only)
    for k in dual_terms:
        torch.testing.assert_close(dual_terms[k], main_terms[k] + 0.25 * aux_terms[k])
    half, _ = YOLOCriterion(nc=3, strides=STRIDES, aux_weight=0.5)(YOLOTrainOutput(main, aux), batch)
    torch.testing.assert_close(half, main_only + 0.5 * aux_only)


def test_box_terms_vanish_for_perfect_boxes():
    """Predictions equal to the GT (in stride units, within the DFL range) give CIoU 1 and the DFL minimum."""
    crit = YOLOCriterion(nc=1, strides=[8])
    maps = [torch.full((1, 64 + 1, 8, 8), -50.0)]  # 64x64 input, one level
    gt = [0.5, 0.5, 0.25, 0.25]  # 16 px around (32, 32): sides of 1 stride from anchors (28, 28) ... (36, 36)
    for ax in (3, 4):
        for ay in (3, 4):
            cx, cy = (ax + 0.5) * 8, (ay + 0.5) * 8
            ltrb = [(cx - 24) / 8, (cy - 24) / 8, (40 - cx) / 8, (40 - cy) / 8]  # 0.5 or 1.5 strides
            for side, d in enumerate(ltrb):
                lo = int(d)
                maps[0][0, side * 16 + lo, ay, ax] = math.log(lo + 1 - d)
                maps[0][0, side * 16 + lo + 1, ay, ax] = math.log(d - lo)
            maps[0][0, 64, ay, ax] = 5.0
    _, terms = crit(YOLOTrainOutput(maps), batch_of(1, [(0, 0, gt)]))
    assert terms["box"] < 1e-4
    entropy = -2 * 0.5 * math.log(0.5)  # the DFL minimum for a target halfway between two bins
    assert terms["dfl"] == pytest.approx(1.5 * entropy, rel=1e-3)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        YOLOCriterion(nc=2, strides=STRIDES, boxx=1.0)
    with pytest.raises(SettingError, match="box"):
        YOLOCriterion(nc=2, strides=STRIDES, box=-1.0)
    with pytest.raises(ValueError, match="strides"):
        YOLOCriterion(nc=2, strides=[])
    names = [st.name for st in YOLOCriterion.SETTINGS]
    assert names == ["box", "cls", "dfl", "tal_topk", "tal_alpha", "tal_beta", "aux_weight"]
    assert [st.default for st in YOLOCriterion.SETTINGS] == [7.5, 0.5, 1.5, 10, 0.5, 6.0, 0.25]
