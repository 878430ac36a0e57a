"""Dynamic soft-label assignment and the RTMDet loss: hand-checked cases (dynamic k, the soft centre prior,
a prior inside two boxes), equality with a per-image loop written after mmdetection's algorithm, QFL and
GIoU terms against hand values, and the DDP-averaged normaliser."""

import math

import pytest
import torch
import torch.nn.functional as F

from rtdet.losses.assigners.dsl import DynamicSoftLabelAssigner
from rtdet.losses.rtmdet import RTMDetCriterion
from rtdet.nn.heads.rtmdet import RTMDetTrainOutput
from rtdet.ops.anchors import grid_priors
from rtdet.ops.boxes import pairwise_iou, xyxy_to_cxcywh


def reference_assign(logits, boxes, points, strides, gt_labels, gt_boxes, topk=13, radius=3.0, iou_weight=3.0):
    """mmdetection's DynamicSoftLabelAssigner for one image, step by step with loops (the brute force)."""
    n, m = logits.shape[0], gt_boxes.shape[0]
    fg, gt_index, iou_out = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.int64), torch.zeros(n)
    if m == 0:
        return fg, gt_index, iou_out
    valid = torch.zeros(n, dtype=torch.bool)
    for i in range(n):
        x, y = points[i].tolist()
        valid[i] = any(x1 < x < x2 and y1 < y < y2 for x1, y1, x2, y2 in gt_boxes.tolist())
    idx = valid.nonzero()[:, 0]
    if len(idx) == 0:
        return fg, gt_index, iou_out
    ious = pairwise_iou(boxes[idx], gt_boxes)
    cost = torch.zeros(len(idx), m)
    for g in range(m):  # the full [valid priors, classes] soft-label BCE, as the reference computes it
        centre = (gt_boxes[g, :2] + gt_boxes[g, 2:]) / 2
        d = (points[idx] - centre).norm(dim=1) / strides[idx]
        target = F.one_hot(gt_labels[g], logits.shape[1]).float()[None] * ious[:, g:g + 1]
        cls = (F.binary_cross_entropy_with_logits(logits[idx], target, reduction="none")
               * (target - logits[idx].sigmoid()).abs().pow(2)).sum(1)
        cost[:, g] = cls - torch.log(ious[:, g] + 1e-7) * iou_weight + 10 ** (d - radius)
    matching = torch.zeros(len(idx), m, dtype=torch.bool)
    for g in range(m):
        k = max(int(ious[:, g].topk(min(topk, len(idx))).values.sum()), 1)
        matching[cost[:, g].topk(k, largest=False).indices, g] = True
    for a in range(len(idx)):
        if matching[a].sum() > 1:
            matching[a] = False
            matching[a, cost[a].argmin()] = True
    for a, i in enumerate(idx.tolist()):
        if matching[a].any():
            g = int(matching[a].float().argmax())
            fg[i], gt_index[i], iou_out[i] = True, g, ious[a, g]
    return fg, gt_index, iou_out


def assign(logits, boxes, points, strides, gt_labels, gt_boxes, **kw):
    """The batched assigner on one image (no padding)."""
    m = gt_boxes.shape[0]
    return DynamicSoftLabelAssigner(**kw)(logits[None], boxes[None], points, strides, gt_labels[None],
                                          gt_boxes[None], torch.ones(1, m, dtype=torch.bool))


def grid(size=64, strides=(8,)):
    shapes = [(size // s, size // s) for s in strides]
    return grid_priors(shapes, strides)


def tiny_boxes(points, half=0.5):
    """A 1x1 predicted box around every prior point (IoU with a large GT ~ 0)."""
    return torch.cat([points - half, points + half], 1)


def test_dynamic_k_is_the_floor_of_the_top_iou_sum_and_the_centre_prior_breaks_ties():
    points, strides = grid()
    gt = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    boxes = tiny_boxes(points)
    # three priors predict a box of IoU 0.9 with the GT; they differ only in their distance to its centre
    near, middle, far = [int(((points - torch.tensor(p)) ** 2).sum(1).argmin()) for p in ((32, 32), (24, 32), (8, 8))]
    good = torch.tensor([0.0, 0.0, 64.0, 64.0 * 0.9])  # IoU 0.9
    for i in (near, middle, far):
        boxes[i] = good
    logits = torch.zeros(len(points), 2)
    a = assign(logits, boxes, points, strides, torch.tensor([1]), gt)
    iou_sum = 3 * 0.9 + 10 * float(pairwise_iou(boxes[:1], gt))  # the 13 best IoUs: 2.7 + ten tiny ones
    assert int(iou_sum) == 2
    assert a.fg[0].nonzero()[:, 0].tolist() == sorted([near, middle])  # k = 2, the two nearest the centre
    assert torch.allclose(a.iou[0, [near, middle]], torch.tensor([0.9, 0.9]))
    assert a.labels[0, near] == 1 and a.gt_index[0, near] == 0


def test_a_prior_inside_two_boxes_goes_to_the_cheaper_one():
    points, strides = grid()
    gt = torch.tensor([[0.0, 0.0, 40.0, 40.0], [16.0, 16.0, 56.0, 56.0]])
    boxes = tiny_boxes(points)
    shared = int(((points - torch.tensor([24.0, 24.0])) ** 2).sum(1).argmin())  # inside both boxes
    boxes[shared] = gt[1]  # IoU 1 with box 1, 0.28 with box 0
    logits = torch.zeros(len(points), 2)
    a = assign(logits, boxes, points, strides, torch.tensor([0, 1]), gt)
    # both boxes want it (k = 1 each: one large IoU, the rest tiny), box 1 costs less: it keeps it and box 0
    # gets nothing (the reference does not re-match a box that lost its prior)
    assert a.fg[0].nonzero()[:, 0].tolist() == [shared]
    assert a.gt_index[0, shared] == 1 and a.labels[0, shared] == 1 and a.iou[0, shared] == pytest.approx(1.0)


def test_no_boxes_or_no_prior_inside_means_no_positives():
    points, strides = grid()
    logits, boxes = torch.zeros(len(points), 2), tiny_boxes(points)
    a = assign(logits, boxes, points, strides, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4))
    assert not a.fg.any() and a.iou.sum() == 0
    between = torch.tensor([[9.0, 9.0, 15.0, 15.0]])  # holds no prior point (they sit on multiples of 8)
    a = assign(logits, boxes, points, strides, torch.tensor([0]), between)
    assert not a.fg.any()


def random_case(seed, b=3, nc=4, size=64):
    g = torch.Generator().manual_seed(seed)
    points, strides = grid(size, (8, 16, 32))
    n = len(points)
    counts = [int(torch.randint(0, 5, (1,), generator=g)) for _ in range(b)]
    counts[0] = max(counts[0], 1)
    m = max(counts)
    gt_boxes, gt_labels, mask = torch.zeros(b, m, 4), torch.zeros(b, m, dtype=torch.int64), torch.zeros(b, m).bool()
    for i, c in enumerate(counts):
        xy = torch.rand(c, 2, generator=g) * size * 0.6
        wh = torch.rand(c, 2, generator=g) * size * 0.5 + 10
        gt_boxes[i, :c] = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        gt_labels[i, :c] = torch.randint(0, nc, (c,), generator=g)
        mask[i, :c] = True
    centre = points[None].expand(b, n, 2) + torch.randn(b, n, 2, generator=g) * 4
    half = torch.rand(b, n, 2, generator=g) * 20 + 1
    boxes = torch.cat([centre - half, centre + half], -1)
    logits = torch.randn(b, n, nc, generator=g) * 2
    return logits, boxes, points, strides, gt_labels, gt_boxes, mask, counts


@pytest.mark.parametrize("seed", range(4))
def test_batched_assignment_equals_the_per_image_loop(seed):
    logits, boxes, points, strides, gt_labels, gt_boxes, mask, counts = random_case(seed)
    a = DynamicSoftLabelAssigner()(logits, boxes, points, strides, gt_labels, gt_boxes, mask)
    assert a.fg.any()  # the case is not trivial
    for i, c in enumerate(counts):
        fg, gt_index, iou = reference_assign(logits[i], boxes[i], points, strides, gt_labels[i, :c], gt_boxes[i, :c])
        assert torch.equal(a.fg[i], fg), (seed, i)
        assert torch.equal(a.gt_index[i][fg], gt_index[fg])
        assert torch.allclose(a.iou[i], iou, atol=1e-6)
        assert torch.equal(a.labels[i][fg], gt_labels[i][gt_index[fg]])


def bce(x: float, q: float) -> float:
    p = 1 / (1 + math.exp(-x))
    return -(q * math.log(p) + (1 - q) * math.log(1 - p))


def criterion_case():
    """One 64x64 GT box of class 1 in a 64x64 image; the prior at (32, 32) predicts [8, 8, 72, 72], every
    other prior a 1x1 box; all logits 0 except 2.0 for class 1 at that prior."""
    points, strides = grid()
    n = len(points)
    p = int(((points - torch.tensor([32.0, 32.0])) ** 2).sum(1).argmin())
    ltrb = torch.full((1, n, 4), 0.5)
    ltrb[0, p] = torch.tensor([24.0, 24.0, 40.0, 40.0])
    logits = torch.zeros(1, n, 2)
    logits[0, p, 1] = 2.0
    gt = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    batch = {"img": torch.zeros(1, 3, 64, 64), "batch_idx": torch.tensor([0]), "cls": torch.tensor([1]),
             "bboxes": xyxy_to_cxcywh(gt) / 64}
    return RTMDetTrainOutput(logits.requires_grad_(), ltrb.requires_grad_(), points, strides), batch, p


def test_loss_terms_equal_hand_values():
    outputs, batch, p = criterion_case()
    total, logs = RTMDetCriterion(2)(outputs, batch)
    n = outputs.points.shape[0]
    inter, union, enclose = 56.0**2, 2 * 64.0**2 - 56.0**2, 72.0**2
    iou = inter / union
    giou = iou - (enclose - union) / enclose
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    negative = bce(0.0, 0.0) * sig(0.0) ** 2  # every (prior, class) but the positive: logit 0, target 0
    positive = bce(2.0, iou) * abs(iou - sig(2.0)) ** 2
    norm = max(iou, 1.0)  # the sum of matched IoUs, at least 1
    assert float(logs["qfl"]) == pytest.approx(((2 * n - 1) * negative + positive) / norm, rel=1e-5)
    assert float(logs["giou"]) == pytest.approx(2.0 * (1 - giou) * iou / norm, rel=1e-5)
    assert float(total.detach()) == pytest.approx(float(logs["qfl"] + logs["giou"]))
    total.backward()
    assert outputs.ltrb.grad[0, p].abs().sum() > 0 and outputs.ltrb.grad[0, p - 1].abs().sum() == 0
    # the settings weigh the terms
    _, logs2 = RTMDetCriterion(2, qfl_weight=0.5, giou_weight=1.0)(criterion_case()[0], batch)
    assert float(logs2["qfl"]) == pytest.approx(0.5 * float(logs["qfl"])) and float(logs2["giou"]) == pytest.approx(
        0.5 * float(logs["giou"]))


def test_a_batch_without_boxes_gives_a_finite_loss_that_reaches_every_output():
    outputs, batch, _ = criterion_case()
    empty = {**batch, "batch_idx": torch.zeros(0, dtype=torch.int64), "cls": torch.zeros(0, dtype=torch.int64),
             "bboxes": torch.zeros(0, 4)}
    total, logs = RTMDetCriterion(2)(outputs, empty)
    assert torch.isfinite(total) and float(logs["giou"]) == 0
    total.backward()
    assert outputs.ltrb.grad is not None and outputs.cls_logits.grad.abs().sum() > 0


def test_normaliser_is_averaged_over_ddp_processes(monkeypatch):
    """Rank 0 holds IoU sum 0.5, the other rank 3.5: both divide by the mean, 2.0 (not by their own)."""
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.add_(3.5))
    assert RTMDetCriterion.normaliser(torch.tensor(0.5)) == pytest.approx(2.0)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.add_(0.1))
    assert RTMDetCriterion.normaliser(torch.tensor(0.5)) == 1.0  # at least 1


def test_settings_and_bad_inputs():
    assert {st.name for st in RTMDetCriterion.SETTINGS} == {"qfl_weight", "qfl_beta", "giou_weight", "dsl_topk",
                                                            "dsl_center_radius", "dsl_iou_weight"}
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        RTMDetCriterion(2, loss_vfl=1.0)
    with pytest.raises(ValueError, match="dsl_topk"):
        RTMDetCriterion(2, dsl_topk=0)
    outputs, batch, _ = criterion_case()
    with pytest.raises(ValueError, match="nc=3"):
        RTMDetCriterion(3)(outputs, batch)
    with pytest.raises(ValueError, match="eval mode"):
        RTMDetCriterion(2)(outputs.cls_logits, batch)


def test_quality_focal_loss_hand_values():
    """QFL = BCE(x, q) * |q - sigmoid(x)|^beta: positives against their IoU, negatives against 0."""
    from rtdet.losses.common import quality_focal_loss

    x = torch.tensor([0.0, 0.0, 2.0, -4.59512])
    q = torch.tensor([0.8, 0.0, 0.5, 0.0])
    expected = [math.log(2) * 0.3**2,  # sigma 0.5 vs 0.8
                math.log(2) * 0.5**2,  # a negative at sigma 0.5
                bce(2.0, 0.5) * (1 / (1 + math.exp(-2.0)) - 0.5) ** 2,
                bce(-4.59512, 0.0) * 0.01**2]  # the initial prior 0.01
    assert quality_focal_loss(x, q).tolist() == pytest.approx(expected, rel=1e-4)
    assert quality_focal_loss(x[:1], q[:1], beta=1.0).item() == pytest.approx(math.log(2) * 0.3, rel=1e-5)
