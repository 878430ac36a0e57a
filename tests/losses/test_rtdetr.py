import itertools
import math

import pytest
import torch

from rtdet.losses.assigners.hungarian import HungarianMatcher
from rtdet.losses.common import matchability_aware_loss, quality_focal_loss, sigmoid_focal_loss, varifocal_loss
from rtdet.losses.rtdetr import RTDETRCriterion
from rtdet.ops.targets import pad_targets

# ------------------------------------------------------------------------------------------------ helpers


def scalar_giou(a, b):
    """GIoU of two cxcywh boxes, written out for one pair."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return inter / union - (hull - union) / hull


def scalar_cost(box, logits, gt_box, gt_cls, alpha=0.25, gamma=2.0):
    """The official RT-DETR matching cost of one (query, GT) pair: class 2 / L1 5 / GIoU 2, focal class cost."""
    p = 1 / (1 + math.exp(-logits[gt_cls]))
    c_cls = alpha * (1 - p) ** gamma * -math.log(p + 1e-8) - (1 - alpha) * p**gamma * -math.log(1 - p + 1e-8)
    l1 = sum(abs(x - y) for x, y in zip(box, gt_box))
    return 2 * c_cls + 5 * l1 - 2 * scalar_giou(box, gt_box)


def brute_force(cost):
    """Minimum-cost one-to-one assignment by trying every permutation: {(query, gt)}."""
    q, n = len(cost), len(cost[0]) if cost else 0
    if n == 0:
        return set(), 0.0
    if q >= n:
        options = ({(p, j) for j, p in enumerate(perm)} for perm in itertools.permutations(range(q), n))
    else:
        options = ({(i, g) for i, g in enumerate(perm)} for perm in itertools.permutations(range(n), q))
    best = min(options, key=lambda pairs: sum(cost[i][j] for i, j in pairs))
    return best, sum(cost[i][j] for i, j in best)


def random_boxes(*shape, generator):
    """cxcywh boxes well inside the unit square."""
    c = torch.rand(*shape, 2, generator=generator) * 0.6 + 0.2
    wh = torch.rand(*shape, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([c, wh], -1)


def make_batch(counts, nc, generator, order=None):
    batch_idx = torch.cat([torch.full((c,), i, dtype=torch.int64) for i, c in enumerate(counts)])
    n = batch_idx.numel()
    batch = {"batch_idx": batch_idx, "cls": torch.randint(0, nc, (n,), generator=generator),
             "bboxes": random_boxes(n, generator=generator)}
    if order is not None:
        batch = {k: v[order] for k, v in batch.items()}
    return batch


# ------------------------------------------------------------------------------------------------ matcher


@pytest.mark.parametrize("q, counts", [(6, [3, 0, 5, 1]), (3, [4, 2])])
def test_matcher_equals_brute_force(q, counts):
    g = torch.Generator().manual_seed(sum(counts) + q)
    nc = 3
    batch = make_batch(counts, nc, g)
    targets = pad_targets(batch["batch_idx"], batch["cls"], batch["bboxes"], len(counts))
    boxes = random_boxes(len(counts), q, generator=g)
    logits = torch.randn(len(counts), q, nc, generator=g) * 2
    matches = HungarianMatcher()(boxes, logits, targets)
    assert len(matches) == len(counts)
    for b, (pi, gi) in enumerate(matches):
        assert pi.dtype == gi.dtype == torch.int64 and len(pi) == len(gi) == min(q, counts[b])
        rows = targets.rows[b, : counts[b]]
        cost = [[scalar_cost(boxes[b, i].tolist(), logits[b, i].tolist(), batch["bboxes"][r].tolist(),
                             int(batch["cls"][r])) for r in rows] for i in range(q)]
        want, want_cost = brute_force(cost)
        got = set(zip(pi.tolist(), gi.tolist()))
        assert got == want
        assert sum(cost[i][j] for i, j in got) == pytest.approx(want_cost)


def test_matcher_costs_are_float32_and_finite_under_half_and_nan_inputs():
    g = torch.Generator().manual_seed(0)
    batch = make_batch([2], 4, g)
    targets = pad_targets(batch["batch_idx"], batch["cls"], batch["bboxes"], 1)
    boxes = random_boxes(1, 5, generator=g).half()
    logits = torch.randn(1, 5, 4, generator=g).half()
    boxes[0, 0] = float("nan")
    logits[0, 3] = float("nan")
    m = HungarianMatcher()
    cost = m.cost(boxes[None], logits[None], targets)
    assert cost.dtype == torch.float32 and torch.isfinite(cost).all()
    (pi, gi), = m(boxes, logits, targets)
    assert 0 not in pi.tolist() and 3 not in pi.tolist()  # broken queries are never preferred


def test_matcher_with_no_ground_truth_in_the_batch():
    targets = pad_targets(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), 2)
    out = HungarianMatcher()(torch.rand(2, 4, 4), torch.randn(2, 4, 3), targets)
    assert [(len(p), len(g)) for p, g in out] == [(0, 0), (0, 0)]


# ------------------------------------------------------------------------------------------------ elementwise losses

def test_varifocal_loss_hand_values():
    # positive: logit 0 (p = .5), IoU target .5 -> weight .5 · BCE(0, .5) = .5 · ln 2 = 0.3465736
    # negative: logit ln 3 (p = .75) -> weight .75 · .75² = .421875, BCE(ln 3, 0) = ln 4 -> 0.5848429
    logits = torch.tensor([0.0, math.log(3.0)])
    loss = varifocal_loss(logits, score=torch.tensor([0.5, 0.0]), label=torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(loss, torch.tensor([0.3465736, 0.5848429]))
    # a matched pair with IoU 0 contributes nothing (label 1, weight = score = 0)
    assert varifocal_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0])).item() == 0.0


def test_focal_and_quality_focal_hand_values():
    # focal α .25 γ 2: logit 0, target 1 -> .25 · .5² · ln 2 = 0.0433217; logit ln 3, target 0 -> .75 · .75² · ln 4
    loss = sigmoid_focal_loss(torch.tensor([0.0, math.log(3.0)]), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(loss, torch.tensor([0.0433217, 0.5848429]))
    # QFL β 2: logit 0, quality .9 -> BCE(0, .9) = ln 2, |.9 − .5|² = .16 -> 0.1109035
    torch.testing.assert_close(quality_focal_loss(torch.tensor([0.0]), torch.tensor([0.9])), torch.tensor([0.1109035]))


# ------------------------------------------------------------------------------------------------ criterion

NC, NQ, L = 3, 5, 3


def outputs_for(batch, counts, generator, dn_meta=None, num_dn=0):
    b = len(counts)
    dec_bboxes = random_boxes(L, b, num_dn + NQ, generator=generator)
    dec_scores = torch.randn(L, b, num_dn + NQ, NC, generator=generator)
    enc_bboxes = random_boxes(b, NQ, generator=generator)
    enc_scores = torch.randn(b, NQ, NC, generator=generator)
    return [dec_bboxes, dec_scores, enc_bboxes, enc_scores, dn_meta]


def test_main_layer_box_losses_and_iou_aware_vfl_targets():
    g = torch.Generator().manual_seed(3)
    counts = [2, 1]
    batch = make_batch(counts, NC, g)
    out = outputs_for(batch, counts, g)
    # final layer: queries 3 and 1 of image 0 and query 4 of image 1 sit exactly on the ground truth
    chosen = [(0, 3, 0), (0, 1, 1), (1, 4, 2)]  # (image, query, batch row)
    for b, q, r in chosen:
        out[0][-1, b, q] = batch["bboxes"][r]
    # ... except that the last one has half the width of its GT: IoU = GIoU = 0.5, L1 = w / 2
    w = batch["bboxes"][2, 2].item()
    out[0][-1, 1, 4, 2] = w / 2
    crit = RTDETRCriterion(NC)
    t = crit.terms(tuple(out), batch)
    assert t["l1"][0].item() == pytest.approx(5 * (w / 2) / 3, rel=1e-5)  # gain 5, num_boxes 3
    assert t["giou"][0].item() == pytest.approx(2 * (1 - 0.5) / 3, abs=1e-4)  # gain 2 (eps in the union)
    assert (t["l1"][1:] > 0).all()

    score = torch.zeros(2, NQ, NC)
    for (b, q, r), iou in zip(chosen, [1.0, 1.0, 0.5]):
        score[b, q, batch["cls"][r]] = iou  # the soft target is the IoU with the GT
    want = varifocal_loss(out[1][-1], score, (score > 0).float()).sum() / 3
    torch.testing.assert_close(t["vfl"][0], want)


def test_aux_terms_cover_every_decoder_layer_and_the_encoder_last():
    g = torch.Generator().manual_seed(4)
    counts = [1, 2]
    batch = make_batch(counts, NC, g)
    out = outputs_for(batch, counts, g)
    out[2][0, 2] = batch["bboxes"][0]
    out[2][1, 0], out[2][1, 4] = batch["bboxes"][1], batch["bboxes"][2]
    t = RTDETRCriterion(NC).terms(tuple(out), batch)
    assert t["vfl"].shape == t["l1"].shape == t["giou"].shape == (L + 1,)
    assert t["l1"][-1].item() == pytest.approx(0.0, abs=1e-6) and (t["l1"][:-1] > 0).all()

    t1 = RTDETRCriterion(NC, aux_loss=False).terms(tuple(out), batch)
    assert t1["l1"].shape == (1,)
    torch.testing.assert_close(t1["l1"][0], t["l1"][0])


def dn_case(generator):
    """Images with 2 and 1 boxes; max 2 per image, 2 groups of [2 positive, 2 negative] queries."""
    counts = [2, 1]
    batch = make_batch(counts, NC, generator)
    meta = {"dn_pos_idx": [torch.tensor([0, 1, 4, 5]), torch.tensor([0, 4])], "dn_num_group": 2,
            "dn_num_split": [8, NQ]}
    out = outputs_for(batch, counts, generator, meta, num_dn=8)
    for b, q, r in [(0, 0, 0), (0, 4, 0), (0, 1, 1), (0, 5, 1), (1, 0, 2), (1, 4, 2)]:
        out[0][:, b, q] = batch["bboxes"][r]
    return batch, out


def test_denoising_loss_uses_exactly_the_positive_queries_of_dn_meta():
    g = torch.Generator().manual_seed(5)
    batch, out = dn_case(g)
    crit = RTDETRCriterion(NC)
    t = crit.terms(tuple(out), batch)
    assert t["l1_dn"].shape == (L,)
    torch.testing.assert_close(t["l1_dn"], torch.zeros(L))
    torch.testing.assert_close(t["giou_dn"], torch.zeros(L), atol=1e-5, rtol=0)

    score = torch.zeros(L, 2, 8, NC)
    for b, q, r in [(0, 0, 0), (0, 4, 0), (0, 1, 1), (0, 5, 1), (1, 0, 2), (1, 4, 2)]:
        score[:, b, q, batch["cls"][r]] = 1.0
    want = varifocal_loss(out[1][:, :, :8], score, score).sum((1, 2, 3)) / (3 * 2)  # num_boxes × groups
    torch.testing.assert_close(t["vfl_dn"], want)

    out[0][:, 0, 2] += 0.1  # a negative DN query: not supervised by the box losses
    out[0][:, 0, 8:] += 0.1  # matching queries: not DN
    torch.testing.assert_close(crit.terms(tuple(out), batch)["l1_dn"], torch.zeros(L))
    out[0][0, 0, 4, 0] += 0.1  # a positive DN query (group 1, first box) in layer 0
    l1_dn = crit.terms(tuple(out), batch)["l1_dn"]
    assert l1_dn[0].item() == pytest.approx(5 * 0.1 / 6, rel=1e-4) and l1_dn[1:].abs().max() == 0


def test_denoising_pairs_follow_batch_order_or_dn_gt_idx():
    g = torch.Generator().manual_seed(6)
    batch = make_batch([1, 2], NC, g, order=torch.tensor([1, 0, 2]))  # batch_idx [1, 0, 1]: rows 0, 2 are image 1
    meta = {"dn_pos_idx": [torch.tensor([0]), torch.tensor([0, 1])], "dn_num_group": 1, "dn_num_split": [4, NQ]}
    out = outputs_for(batch, [1, 2], g, meta, num_dn=4)
    out[0][:, 0, 0] = batch["bboxes"][1]
    out[0][:, 1, 0], out[0][:, 1, 1] = batch["bboxes"][0], batch["bboxes"][2]
    crit = RTDETRCriterion(NC)
    torch.testing.assert_close(crit.terms(tuple(out), batch)["l1_dn"], torch.zeros(L))
    meta["dn_gt_idx"] = [torch.tensor([1]), torch.tensor([2, 0])]  # the head says image 1 reconstructs 2 then 0
    assert (crit.terms(tuple(out), batch)["l1_dn"] > 0).all()
    out[0][:, 1, 0], out[0][:, 1, 1] = batch["bboxes"][2], batch["bboxes"][0]
    torch.testing.assert_close(crit.terms(tuple(out), batch)["l1_dn"], torch.zeros(L))


def test_num_boxes_override_rescales_every_term():
    g = torch.Generator().manual_seed(7)
    batch, out = dn_case(g)
    crit = RTDETRCriterion(NC)
    t3, t6 = crit.terms(tuple(out), batch), crit.terms(tuple(out), batch, num_boxes=torch.tensor(6.0))
    for k in t3:
        torch.testing.assert_close(t6[k], t3[k] / 2)
    t_small = crit.terms(tuple(out), batch, num_boxes=0.25)  # clamped to 1
    torch.testing.assert_close(t_small["vfl"], t3["vfl"] * 3)


def test_total_is_the_sum_of_the_logged_terms_and_is_differentiable_from_half_inputs():
    g = torch.Generator().manual_seed(8)
    batch, out = dn_case(g)
    leaves = [x.half().requires_grad_() for x in out[:4]]
    total, logs = RTDETRCriterion(NC)((*leaves, out[4]), batch)
    assert set(logs) == {"vfl", "l1", "giou", "aux", "dn"}
    assert all(not v.requires_grad for v in logs.values())
    torch.testing.assert_close(total.detach(), sum(logs.values()))
    assert total.dtype == torch.float32 and torch.isfinite(total) and logs["dn"] > 0 and logs["aux"] > 0
    total.backward()
    for x in leaves:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0

    with torch.autocast("cpu", dtype=torch.bfloat16):
        total_ac, _ = RTDETRCriterion(NC)(tuple(out), batch)
    assert total_ac.dtype == torch.float32 and torch.isfinite(total_ac)


def test_batch_without_boxes_still_trains_the_classifier():
    g = torch.Generator().manual_seed(9)
    batch = make_batch([0, 0], NC, g)
    out = [x.requires_grad_() for x in outputs_for(batch, [0, 0], g)[:4]] + [None]
    total, logs = RTDETRCriterion(NC)(tuple(out), batch)
    assert logs["l1"] == 0 and logs["giou"] == 0 and logs["dn"] == 0 and logs["vfl"] > 0
    total.backward()
    assert out[1].grad.abs().sum() > 0 and out[0].grad is not None  # boxes stay in the graph (DDP)


def test_errors_are_clear():
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['loss_cls'\].*loss_vfl=1.0"):
        RTDETRCriterion(NC, loss_cls=1.0)
    g = torch.Generator().manual_seed(10)
    batch, out = dn_case(g)
    with pytest.raises(ValueError, match="built for nc=4 but the head predicts 3 classes"):
        RTDETRCriterion(4)(tuple(out), batch)
    out[4]["dn_pos_idx"][1] = torch.tensor([0, 1, 4])
    with pytest.raises(ValueError, match=r"image 1 has 3 positive denoising queries .* 1 ground-truth boxes × 2"):
        RTDETRCriterion(NC)(tuple(out), batch)
    batch["cls"][0] = 7
    with pytest.raises(ValueError, match=r"class id 7 in batch\['cls'\] is outside \[0, 2\]"):
        RTDETRCriterion(NC)(tuple(out), batch)
    with pytest.raises(ValueError, match="Is the head in eval mode"):
        RTDETRCriterion(NC)(torch.zeros(2, 300, 6), batch)


def _normaliser_in_rank(rank: int, world: int, port: int, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        out[rank] = RTDETRCriterion._num_boxes(None, [2, 4][rank], torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_box_normaliser_is_averaged_over_ddp_processes():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_normaliser_in_rank, args=(2, port, out), nprocs=2, join=True)
    assert dict(out) == {0: 3.0, 1: 3.0}  # (2 + 4) / 2 on both ranks


def test_loss_mal_swaps_the_varifocal_loss_and_the_default_is_unchanged():
    g = torch.Generator().manual_seed(12)
    batch, out = dn_case(g)
    default = RTDETRCriterion(NC)
    assert default.hyp["loss"] == "vfl" and default.hyp["mal_gamma"] == 1.5
    t_vfl = default.terms(tuple(out), batch)
    for k, v in RTDETRCriterion(NC, loss="vfl", mal_gamma=3.0).terms(tuple(out), batch).items():
        torch.testing.assert_close(v, t_vfl[k])  # mal_gamma is unused by vfl

    mal = RTDETRCriterion(NC, loss="mal")
    t = mal.terms(tuple(out), batch)
    assert set(t) == {"mal", "l1", "giou", "mal_dn", "l1_dn", "giou_dn"}
    for k in ("l1", "giou", "l1_dn", "giou_dn"):  # the box terms do not change
        torch.testing.assert_close(t[k], t_vfl[k])
    assert not torch.allclose(t["mal"], t_vfl["vfl"]) and not torch.allclose(t["mal_dn"], t_vfl["vfl_dn"])
    # denoising: every positive query sits on its GT (IoU 1), so the MAL target is 1 on the GT class
    score = torch.zeros(L, 2, 8, NC)
    for b, q, r in [(0, 0, 0), (0, 4, 0), (0, 1, 1), (0, 5, 1), (1, 0, 2), (1, 4, 2)]:
        score[:, b, q, batch["cls"][r]] = 1.0
    want = matchability_aware_loss(out[1][:, :, :8], score, score, 1.5).sum((1, 2, 3)) / (3 * 2)
    torch.testing.assert_close(t["mal_dn"], want)
    # a gamma of its own
    t2 = RTDETRCriterion(NC, loss="mal", mal_gamma=2.5).terms(tuple(out), batch)
    assert not torch.allclose(t2["mal"], t["mal"])

    total_vfl, logs_vfl = default(tuple(out), batch)
    total_mal, logs_mal = mal(tuple(out), batch)
    assert set(logs_vfl) == {"vfl", "l1", "giou", "aux", "dn"} and set(logs_mal) == {"mal", "l1", "giou", "aux", "dn"}
    torch.testing.assert_close(total_mal, sum(logs_mal.values()))
    assert not torch.isclose(total_mal, total_vfl)
    with pytest.raises(ValueError, match="loss"):
        RTDETRCriterion(NC, loss="focal")
