"""The D-FINE / DEIM criterion (rtdet/losses/dfine.py): each term by hand, the union matching, FGL and DDF
against loops, and the whole batched criterion against a per-image reference written after the official
per-image code (D-FINE ``dfine_criterion.py``, DEIM ``deim_criterion.py``)."""

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from rtdet.losses.common import iou_aware_class_loss, matchability_aware_loss, varifocal_loss
from rtdet.losses.dfine import DFineCriterion, ddf_divergence, fgl_edge_loss, union_pairs
from rtdet.losses.rtdetr import Pairs
from rtdet.nn.heads.denoising import build_denoising_queries
from rtdet.nn.heads.dfine import DFineTrainOutput
from rtdet.ops.fdr import distances_to_boxes, distribution_integral, weighting_function
from rtdet.ops.targets import pad_targets

L, B, NQ, NC, REG_MAX, REG_SCALE = 3, 2, 10, 4, 8, 4.0

# ------------------------------------------------------------------------------------------------ element terms


def test_mal_hand_values_and_formula():
    # γ 1.5. Positive: logit 0 (p = .5), IoU .25 -> q = .25^1.5 = .125, weight 1, BCE(0, q) = ln 2.
    # Negative: logit ln 3 (p = .75) -> weight .75^1.5 = .6495191, BCE(ln 3, 0) = ln 4 -> 0.9004276.
    logits = torch.tensor([0.0, math.log(3.0)])
    loss = matchability_aware_loss(logits, torch.tensor([0.25, 0.0]), torch.tensor([1.0, 0.0]), gamma=1.5)
    torch.testing.assert_close(loss, torch.tensor([math.log(2.0), 0.75**1.5 * math.log(4.0)]))
    # the general form: positives -(q log p + (1 - q) log(1 - p)) with q = IoU^γ, negatives -p^γ log(1 - p)
    x, iou, gamma = torch.tensor([1.3, -0.4]), torch.tensor([0.6, 0.0]), 2.5
    p, q = x.sigmoid(), 0.6**gamma
    want = torch.stack([-(q * p[0].log() + (1 - q) * (1 - p[0]).log()), -(p[1] ** gamma) * (1 - p[1]).log()])
    torch.testing.assert_close(matchability_aware_loss(x, iou, torch.tensor([1.0, 0.0]), gamma), want)
    # unlike VFL, a match of IoU 0 is still pushed down (weight 1, target 0)
    assert matchability_aware_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0])).item() > 0
    # the negatives' weight is detached: the gradient is p^γ · p
    x = torch.tensor([0.7], requires_grad=True)
    matchability_aware_loss(x, torch.zeros(1), torch.zeros(1), 1.5).sum().backward()
    p = torch.sigmoid(torch.tensor(0.7))
    torch.testing.assert_close(x.grad, (p**1.5 * p).reshape(1))


def test_iou_aware_class_loss_picks_the_loss():
    x, s, lab = torch.randn(5), torch.rand(5), (torch.rand(5) > 0.5).float()
    s = s * lab
    opts = {"vfl_alpha": 0.6, "vfl_gamma": 1.7, "mal_gamma": 1.2}
    torch.testing.assert_close(iou_aware_class_loss("vfl", x, s, lab, **opts), varifocal_loss(x, s, lab, 0.6, 1.7))
    torch.testing.assert_close(iou_aware_class_loss("mal", x, s, lab, **opts), matchability_aware_loss(x, s, lab, 1.2))
    with pytest.raises(ValueError, match="'vfl' or 'mal'"):
        iou_aware_class_loss("focal", x, s, lab, **opts)


def test_fgl_edge_loss_hand_values():
    # 4 bins, logits [0, ln 2, 0, 0] -> softmax [.2, .4, .2, .2]; target index 1.3: 0.7 on bin 1, 0.3 on bin 2
    logits = torch.tensor([[0.0, math.log(2.0), 0.0, 0.0]])
    got = fgl_edge_loss(logits, torch.tensor([1.3]), torch.tensor([0.3]), torch.tensor([0.7]))
    torch.testing.assert_close(got, torch.tensor([0.7 * -math.log(0.4) + 0.3 * -math.log(0.2)]))


def test_ddf_divergence_hand_values():
    t = 5.0
    teacher = torch.zeros(1, 2)  # uniform
    student = (t * torch.tensor([[math.log(0.25), math.log(0.75)]])).requires_grad_()
    want = t * t * (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))
    teacher_leaf = teacher.clone().requires_grad_()
    got = ddf_divergence(student, teacher_leaf, t)
    torch.testing.assert_close(got, torch.tensor([want]))
    got.sum().backward()
    assert teacher_leaf.grad is None and student.grad.abs().sum() > 0  # the teacher is not trained by it
    same = torch.randn(3, 9)
    assert ddf_divergence(same, same, t).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------------ union matching


def loop_union(pairs):
    """The official rule, one image at a time: count the (query, GT) pairs, visit them by descending count
    (equal counts: lower GT first), each query keeps the first GT it meets."""
    out = set()
    for b in sorted(set(pairs.image.tolist())):
        sel = pairs.image == b
        count = Counter(zip(pairs.query[sel].tolist(), pairs.gt_row[sel].tolist()))
        kept = {}
        for (q, g), _ in sorted(count.items(), key=lambda kv: (-kv[1], kv[0][1])):
            kept.setdefault(q, g)
        out |= {(b, q, g) for q, g in kept.items()}
    return out


def test_union_pairs_by_hand():
    # image 0: query 3 -> GT 1 twice, GT 0 three times: GT 0; query 5: GT 2 and GT 1 once each: GT 1 (lower)
    # GT 0 keeps queries 3 and 7; image 1: query 3 -> GT 4
    rows = [(0, 3, 1), (0, 3, 1), (0, 3, 0), (0, 3, 0), (0, 3, 0), (0, 5, 2), (0, 5, 1), (0, 7, 0), (1, 3, 4)]
    img, q, r = (torch.tensor(x) for x in zip(*rows))
    got = union_pairs(Pairs(torch.zeros_like(img), img, q, r))
    assert list(zip(got.image.tolist(), got.query.tolist(), got.gt_row.tolist())) == [
        (0, 3, 0), (0, 5, 1), (0, 7, 0), (1, 3, 4)]
    assert (got.layer == 0).all()
    empty = union_pairs(Pairs(*(torch.zeros(0, dtype=torch.int64) for _ in range(4))))
    assert empty.image.numel() == 0


@pytest.mark.parametrize("seed", range(5))
def test_union_pairs_against_a_loop(seed):
    g = torch.Generator().manual_seed(seed)
    n = 60
    img, q, r = (torch.randint(0, k, (n,), generator=g) for k in (3, 6, 4))
    r = r + 10 * img  # the rows of an image's GTs
    got = union_pairs(Pairs(torch.randint(0, 5, (n,), generator=g), img, q, r))
    assert set(zip(got.image.tolist(), got.query.tolist(), got.gt_row.tolist())) == loop_union(Pairs(None, img, q, r))
    assert len(set(zip(got.image.tolist(), got.query.tolist()))) == got.image.numel()  # one GT per query


# ------------------------------------------------------------------------------------------------ outputs


def random_boxes(*shape, generator, lo=0.2):
    c = torch.rand(*shape, 2, generator=generator) * 0.6 + 0.2
    wh = torch.rand(*shape, 2, generator=generator) * 0.3 + lo * 0.25
    return torch.cat([c, wh], -1)


def make_batch(counts, generator):
    batch_idx = torch.cat([torch.full((c,), i, dtype=torch.int64) for i, c in enumerate(counts)])
    n = batch_idx.numel()
    return {"batch_idx": batch_idx, "cls": torch.randint(0, NC, (n,), generator=generator),
            "bboxes": random_boxes(n, generator=generator)}


def make_output(batch, generator, num_dn=12, params=None):
    """Random D-FINE training output: boxes decoded from the corner logits against the reference, as the
    decoder makes them; a dn_meta from rtdet's denoising group builder (None with num_dn = 0)."""
    meta = None
    if num_dn:
        torch.manual_seed(int(torch.randint(0, 1000, (1,), generator=generator)))
        dq = build_denoising_queries(batch, torch.randn(NC, 8), NQ, B, num_dn=num_dn)
        meta = dq.meta if dq is not None else None
    q = NQ + (meta["dn_num_split"][0] if meta else 0)
    project = weighting_function(REG_MAX, 0.5, REG_SCALE)
    p = params if params is not None else {
        "corners": torch.randn(L, B, q, 4 * (REG_MAX + 1), generator=generator),
        "scores": torch.randn(L, B, q, NC, generator=generator),
        "pre_bboxes": random_boxes(B, q, generator=generator),
        "pre_scores": torch.randn(B, q, NC, generator=generator),
        "enc_bboxes": random_boxes(B, NQ, generator=generator),
        "enc_scores": torch.randn(B, NQ, NC, generator=generator),
    }
    ref = p["pre_bboxes"].detach()
    boxes = distances_to_boxes(ref, distribution_integral(p["corners"], project), REG_SCALE)
    out = DFineTrainOutput(boxes, p["scores"], p["corners"], ref, p["pre_bboxes"], p["pre_scores"], p["enc_bboxes"],
                           p["enc_scores"], project, torch.tensor(REG_SCALE), meta)
    return out, p


# ------------------------------------------------------------------------------------------------ reference


def scalar_iou(a, b, generalised=False):
    """IoU (or GIoU) of two cxcywh boxes, written out for one pair (boxes may have negative size)."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a[2] * a[3] + b[2] * b[3] - inter
    iou = inter / union
    if not generalised:
        return iou
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return iou - (hull - union) / hull


def edge_targets(ref, gt, project):
    """FGL targets of one query's 4 edges, by the formula and a scan over the bins: [(left bin, w_left,
    w_right)]."""
    c = REG_SCALE
    cx, cy, w, h = ref
    x1, y1, x2, y2 = gt[0] - gt[2] / 2, gt[1] - gt[3] / 2, gt[0] + gt[2] / 2, gt[1] + gt[3] / 2
    dists = [(cx - x1) / (w / c) - c / 2, (cy - y1) / (h / c) - c / 2, (x2 - cx) / (w / c) - c / 2,
             (y2 - cy) / (h / c) - c / 2]
    wts, out = project.tolist(), []
    for d in dists:
        i = sum(1 for v in wts if v <= d) - 1
        if i < 0:
            out.append((0, 1.0, 0.0))
        elif i >= REG_MAX:
            out.append((REG_MAX - 1, 0.0, 1.0))
        else:
            right = (d - wts[i]) / (wts[i + 1] - wts[i])
            out.append((i, 1 - right, right))
    return out


class Reference:
    """The criterion computed image by image and query by query, as the official code does."""

    def __init__(self, crit, out, batch):
        self.crit, self.out, self.batch = crit, out, batch
        self.rows = [torch.nonzero(batch["batch_idx"] == b).reshape(-1).tolist() for b in range(B)]
        self.num_boxes = max(float(batch["batch_idx"].numel()), 1.0)
        meta = out.dn_meta
        self.num_dn = meta["dn_num_split"][0] if meta else 0
        n = self.num_dn
        dec = [L - 1, *range(L - 1)]  # stack order: final, aux 0..L-2
        self.match = [(out.dec_bboxes[i][:, n:], out.dec_scores[i][:, n:], out.dec_corners[i][:, n:]) for i in dec]
        self.match += [(out.pre_bboxes[:, n:], out.pre_scores[:, n:], None), (out.enc_bboxes, out.enc_scores, None)]
        self.dn = [(out.dec_bboxes[i][:, :n], out.dec_scores[i][:, :n], out.dec_corners[i][:, :n]) for i in dec]
        self.dn += [(out.pre_bboxes[:, :n], out.pre_scores[:, :n], None)]

    def image_match(self, boxes, logits, b):
        """Hungarian pairs of one image: [(query, batch row)]."""
        rows = self.rows[b]
        targets = pad_targets(torch.zeros(len(rows), dtype=torch.int64), self.batch["cls"][rows],
                              self.batch["bboxes"][rows], 1)
        (pi, gi), = self.crit.matcher(boxes[b:b + 1], logits[b:b + 1], targets)
        return [(q, rows[j]) for q, j in zip(pi.tolist(), gi.tolist())]

    def cls_loss(self, boxes, logits, pairs, norm):
        total = 0.0
        for b in range(B):
            score, label = torch.zeros_like(logits[b]), torch.zeros_like(logits[b])
            for q, r in pairs[b]:
                cls = int(self.batch["cls"][r])
                score[q, cls] = scalar_iou(boxes[b, q].tolist(), self.batch["bboxes"][r].tolist())
                label[q, cls] = 1.0
            total += iou_aware_class_loss(self.crit.cls_loss, logits[b], score, label, **self.crit.cls_options).sum()
        return self.crit.gain["cls"] * total / norm

    def box_losses(self, boxes, pairs, norm):
        l1 = giou = 0.0
        for b in range(B):
            for q, r in pairs[b]:
                gt = self.batch["bboxes"][r]
                l1 += float((boxes[b, q] - gt).abs().sum())
                giou += 1 - scalar_iou(boxes[b, q].tolist(), gt.tolist(), generalised=True)
        return self.crit.gain["l1"] * l1 / norm, self.crit.gain["giou"] * giou / norm

    def fgl(self, boxes, corners, ref, pairs, norm):
        total = 0.0
        for b in range(B):
            for q, r in pairs[b]:
                gt = self.batch["bboxes"][r].tolist()
                iou = scalar_iou(boxes[b, q].tolist(), gt)
                logp = corners[b, q].reshape(4, REG_MAX + 1).log_softmax(-1)
                for e, (i, wl, wr) in enumerate(edge_targets(ref[b, q].tolist(), gt, self.out.project)):
                    total += iou * -(float(logp[e, i]) * wl + float(logp[e, i + 1]) * wr)
        return self.crit.gain["fgl"] * total / norm

    def ddf(self, student, teacher, boxes, pairs, counts=None):
        """One layer: official means over matched / other edges, mixed by sqrt(count · 8 / B)."""
        t = self.crit.temperature
        pos, neg = [], []
        nq = student.shape[1]
        for b in range(B):
            matched = dict(pairs[b])
            for q in range(nq):
                if q in matched:
                    w = scalar_iou(boxes[b, q].tolist(), self.batch["bboxes"][matched[q]].tolist())
                else:
                    w = float(teacher[1][b, q].sigmoid().max())
                s = student[b, q].reshape(4, -1)
                tt = teacher[0][b, q].reshape(4, -1)
                for e in range(4):
                    kl = float((F.softmax(tt[e] / t, -1) * (F.log_softmax(tt[e] / t, -1)
                                                            - F.log_softmax(s[e] / t, -1))).sum())
                    (pos if q in matched else neg).append(w * kl * t * t)
        if counts is None:
            counts = (math.sqrt(len(pos) * 8 / B), math.sqrt(len(neg) * 8 / B))
        m_pos = sum(pos) / len(pos) if pos else 0.0
        m_neg = sum(neg) / len(neg) if neg else 0.0
        return self.crit.gain["ddf"] * (m_pos * counts[0] + m_neg * counts[1]) / (counts[0] + counts[1]), counts

    def terms(self):
        own = [[self.image_match(bx, lg, b) for b in range(B)] for bx, lg, _ in self.match]
        if self.crit.use_uni_set:
            union = []
            for b in range(B):
                pooled = [(q, r) for layer in own for q, r in layer[b]]
                img = torch.full((len(pooled),), b, dtype=torch.int64)
                q, r = (torch.tensor([p[i] for p in pooled], dtype=torch.int64) for i in (0, 1))
                union.append(sorted((q, r) for _, q, r in loop_union(Pairs(None, img, q, r))))
            box_pairs = [union] * len(self.match)
            box_norm = max(float(sum(len(u) for u in union)), 1.0)
        else:
            box_pairs, box_norm = own, self.num_boxes
        res, counts = self.part(self.match, own, box_pairs, self.num_boxes, box_norm, None)
        if self.num_dn:
            meta = self.out.dn_meta
            groups = meta["dn_num_group"]
            dn = [list(zip(meta["dn_pos_idx"][b].tolist(), meta["dn_gt_idx"][b].tolist() * groups)) for b in range(B)]
            pairs = [dn] * len(self.dn)
            dn_res, _ = self.part(self.dn, pairs, pairs, self.num_boxes * groups, self.num_boxes * groups, counts)
            res.update({f"{k}_dn": v for k, v in dn_res.items()})
        return res

    def part(self, stack, cls_pairs, box_pairs, cls_norm, box_norm, counts):
        ref = self.out.ref_points[:, self.num_dn:] if stack is self.match else self.out.ref_points[:, :self.num_dn]
        res = {"cls": [], "l1": [], "giou": [], "fgl": [], "ddf": []}
        for s, (boxes, logits, corners) in enumerate(stack):
            res["cls"].append(self.cls_loss(boxes, logits, cls_pairs[s], cls_norm))
            l1, giou = self.box_losses(boxes, box_pairs[s], box_norm)
            res["l1"].append(l1)
            res["giou"].append(giou)
            if corners is not None:
                res["fgl"].append(self.fgl(boxes, corners, ref, box_pairs[s], box_norm))
            if corners is not None and s > 0:
                ddf, last = self.ddf(corners, (stack[0][2], stack[0][1]), boxes, box_pairs[s], counts)
                res["ddf"].append(ddf)
        if counts is None:
            counts = last
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in res.items()}, counts


def named(crit, terms):
    """Reference terms under the criterion's names ('cls' -> 'vfl' / 'mal')."""
    return {(k.replace("cls", crit.cls_loss) if k.startswith("cls") else k): v for k, v in terms.items()}


# ------------------------------------------------------------------------------------------------ criterion


@pytest.mark.parametrize("loss, use_uni_set, num_dn", [("vfl", True, 12), ("mal", True, 12), ("vfl", False, 12),
                                                        ("mal", True, 0)])
def test_batched_criterion_equals_the_per_image_reference(loss, use_uni_set, num_dn):
    g = torch.Generator().manual_seed(11 + num_dn + use_uni_set)
    batch = make_batch([3, 2], g)
    out, _ = make_output(batch, g, num_dn)
    # a few queries near their GT so that matches, IoU weights and FGL bins are not all trivial
    n = out.dn_meta["dn_num_split"][0] if out.dn_meta else 0
    out.pre_bboxes[0, n + 4] = batch["bboxes"][0] * torch.tensor([1.0, 1.0, 1.1, 0.9])
    out.dec_bboxes[:, 1, n + 2] = batch["bboxes"][4]
    crit = DFineCriterion(NC, loss=loss, use_uni_set=use_uni_set)
    got = crit.terms(out, batch)
    want = named(crit, Reference(crit, out, batch).terms())
    if not num_dn:
        assert all(got[k].shape == (0,) for k in got if k.endswith("_dn"))
        got = {k: v for k, v in got.items() if not k.endswith("_dn")}
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k].detach(), want[k], rtol=2e-4, atol=2e-5, msg=k)


def test_terms_layout_logs_and_total():
    g = torch.Generator().manual_seed(1)
    batch = make_batch([2, 3], g)
    out, _ = make_output(batch, g)
    crit = DFineCriterion(NC)
    t = crit.terms(out, batch)
    shapes = {"vfl": L + 2, "l1": L + 2, "giou": L + 2, "fgl": L, "ddf": L - 1,
              "vfl_dn": L + 1, "l1_dn": L + 1, "giou_dn": L + 1, "fgl_dn": L, "ddf_dn": L - 1}
    assert {k: v.shape[0] for k, v in t.items()} == shapes
    total, logs = crit(out, batch)
    assert list(logs) == ["vfl", "l1", "giou", "fgl", "aux", "ddf", "pre", "enc", "dn"]
    assert all(not v.requires_grad for v in logs.values())
    torch.testing.assert_close(total.detach(), sum(t[k].sum() for k in t).detach())
    torch.testing.assert_close(total.detach(), sum(logs.values()))
    torch.testing.assert_close(logs["enc"], t["vfl"][-1] + t["l1"][-1].detach() + t["giou"][-1].detach())
    assert set(DFineCriterion(NC, loss="mal")(out, batch)[1]) == {"mal", *list(logs)[1:]}


def test_union_matching_feeds_boxes_and_fgl_but_not_classification():
    g = torch.Generator().manual_seed(2)
    batch = make_batch([2, 1], g)
    out, _ = make_output(batch, g, num_dn=0)
    uni, own = DFineCriterion(NC).terms(out, batch), DFineCriterion(NC, use_uni_set=False).terms(out, batch)
    torch.testing.assert_close(uni["vfl"], own["vfl"])  # each output's own match in both
    assert not torch.allclose(uni["l1"], own["l1"])  # the union has more pairs than any one match


def test_settings_are_the_official_defaults():
    d = DFineCriterion.DEFAULTS
    assert (d["loss"], d["loss_vfl"], d["loss_bbox"], d["loss_giou"], d["loss_fgl"], d["loss_ddf"]) == (
        "vfl", 1.0, 5.0, 2.0, 0.15, 1.5)
    assert (d["vfl_alpha"], d["vfl_gamma"], d["mal_gamma"], d["ddf_temperature"], d["use_uni_set"]) == (
        0.75, 2.0, 1.5, 5.0, True)
    assert (d["cost_class"], d["cost_bbox"], d["cost_giou"], d["matcher_alpha"], d["matcher_gamma"]) == (
        2.0, 5.0, 2.0, 0.25, 2.0)
    crit = DFineCriterion(NC, loss="MAL", mal_gamma=1.5)
    assert crit.cls_loss == "mal"
    with pytest.raises(ValueError, match="loss"):
        DFineCriterion(NC, loss="focal")
    with pytest.raises(ValueError, match="ddf_temperature"):
        DFineCriterion(NC, ddf_temperature=0.0)


def test_gradients_are_finite_and_reach_every_output():
    g = torch.Generator().manual_seed(3)
    batch = make_batch([3, 1], g)
    _, p = make_output(batch, g)
    leaves = {k: v.clone().requires_grad_() for k, v in p.items()}
    out, _ = make_output(batch, g, params=leaves)  # the same dn layout: it depends on the counts only
    total, _ = DFineCriterion(NC, loss="mal")(out, batch)
    assert torch.isfinite(total)
    total.backward()
    for k, v in leaves.items():
        assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0, k


def test_a_batch_without_boxes_trains_the_classifier_and_keeps_every_output_in_the_graph():
    g = torch.Generator().manual_seed(4)
    batch = make_batch([0, 0], g)
    _, p = make_output(batch, g, num_dn=0)
    leaves = {k: v.clone().requires_grad_() for k, v in p.items()}
    out, _ = make_output(batch, g, num_dn=0, params=leaves)
    total, logs = DFineCriterion(NC)(out, batch)
    assert logs["l1"] == 0 and logs["giou"] == 0 and logs["fgl"] == 0 and logs["dn"] == 0 and logs["vfl"] > 0
    assert logs["ddf"] > 0  # every query is distilled, weighted by the teacher's score
    total.backward()
    assert all(v.grad is not None for v in leaves.values())


def test_loss_decreases_over_a_few_steps():
    g = torch.Generator().manual_seed(5)
    batch = make_batch([2, 2], g)
    _, p = make_output(batch, g, num_dn=0)
    params = {k: torch.nn.Parameter(v.clone()) for k, v in p.items()}
    opt = torch.optim.Adam(params.values(), lr=0.02)
    crit = DFineCriterion(NC, loss="mal")
    losses = []
    for _ in range(25):
        out, _ = make_output(batch, g, num_dn=0, params=params)
        total, _ = crit(out, batch)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_errors_are_clear():
    g = torch.Generator().manual_seed(6)
    batch = make_batch([2, 1], g)
    out, _ = make_output(batch, g)
    with pytest.raises(ValueError, match="built for nc=5 but the head predicts 4 classes"):
        DFineCriterion(5)(out, batch)
    with pytest.raises(ValueError, match="Is the head in eval mode"):
        DFineCriterion(NC)(torch.zeros(2, 300, 6), batch)
    with pytest.raises(ValueError, match=r"expected enc_bboxes \[B, 10, 4\]"):
        DFineCriterion(NC)(out._replace(enc_bboxes=out.enc_bboxes[:, :5]), batch)
    with pytest.raises(ValueError, match="expected dec_corners"):
        DFineCriterion(NC)(out._replace(dec_corners=out.dec_corners[..., :-1]), batch)
    meta = dict(out.dn_meta, dn_pos_idx=[out.dn_meta["dn_pos_idx"][0], torch.tensor([0, 1, 2])])
    with pytest.raises(ValueError, match=r"DFineCriterion: image 1 has 3 positive denoising queries"):
        DFineCriterion(NC)(out._replace(dn_meta=meta), batch)


def test_both_normalisers_are_the_ddp_mean(monkeypatch):
    """num_boxes and num_boxes_go go through reduce_mean: a world whose mean is twice this rank's count halves
    every normalised term; DDF is a mean over edges and does not change."""
    g = torch.Generator().manual_seed(7)
    batch = make_batch([2, 2], g)
    out, _ = make_output(batch, g)
    crit = DFineCriterion(NC)
    alone = crit.terms(out, batch)
    monkeypatch.setattr("rtdet.losses.base.reduce_mean", lambda v: v.detach().float().reshape(1) * 2)
    world = crit.terms(out, batch)
    for k in alone:
        want = alone[k] if k.startswith("ddf") else alone[k] / 2
        torch.testing.assert_close(world[k], want, msg=k)


def test_half_inputs_give_a_float32_loss():
    g = torch.Generator().manual_seed(8)
    batch = make_batch([1, 3], g)
    out, _ = make_output(batch, g)
    half = out._replace(**{k: getattr(out, k).half() for k in ("dec_bboxes", "dec_scores", "dec_corners", "pre_bboxes",
                                                               "pre_scores", "enc_bboxes", "enc_scores")})
    total, _ = DFineCriterion(NC)(half, batch)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total_ac, _ = DFineCriterion(NC)(out, batch)
    torch.testing.assert_close(total_ac, DFineCriterion(NC)(out, batch)[0])
