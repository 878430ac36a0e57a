"""D-FINE set-prediction loss (Peng et al. 2024), with DEIM's matchability-aware loss as an option (Huang et
al. 2025): Hungarian matching, VFL or MAL classification, L1 + GIoU boxes, Fine-grained Localization (FGL)
of the edge distributions, Decoupled Distillation Focal (DDF) self-distillation from the last decoder layer,
GO-LSD's union matching, and the denoising terms.

Defaults are the official ones (Peterande/D-FINE ``dfine_criterion.py``, ``configs/dfine/include/
dfine_hgnetv2.yml``; DEIM ``deim_criterion.py``): weights class 1 / L1 5 / GIoU 2 / FGL 0.15 / DDF 1.5, VFL
α 0.75 γ 2, MAL γ 1.5, DDF temperature 5, union matching on; matching cost class 2 / L1 5 / GIoU 2 with the
focal class cost (α 0.25, γ 2).

Every supervised set of predictions is a stack of layers, one tensor each: index 0 the last decoder layer
(the final output and the distillation teacher), 1..L-1 decoder layers 0..L-2 (auxiliary), L the first
layer's box before refinement ("pre"), and for the matching queries L+1 the encoder's top-k. The denoising
queries form the same stack without the encoder.

Shapes: L decoder layers, B images, Q = num_dn + nq queries, C classes, R + 1 bins per edge (E = 4 (R + 1)
corner logits per query), P matched pairs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from rtdet.losses.assigners.hungarian import HungarianMatcher
from rtdet.losses.base import Criterion
from rtdet.losses.common import IOU_CLASS_LOSS_SETTINGS, iou_aware_class_loss
from rtdet.losses.rtdetr import Pairs, denoising_pairs, hungarian_pairs, repeat_pairs
from rtdet.nn.heads.dfine import DFineTrainOutput
from rtdet.ops.boxes import cxcywh_to_xyxy, elementwise_iou
from rtdet.ops.fdr import boxes_to_distances, distance_bins
from rtdet.ops.targets import batch_targets
from rtdet.utils.schema import Setting

__all__ = ["DFineCriterion", "ddf_divergence", "fgl_edge_loss", "union_pairs"]


class _Stack(NamedTuple):
    """One supervised set of predictions (see the module docstring for the layer order)."""

    boxes: torch.Tensor  # [S, B, Q, 4] cxcywh
    logits: torch.Tensor  # [S, B, Q, C]
    corners: torch.Tensor  # [L, B, Q, E], the decoder layers of ``boxes`` in the same order
    ref: torch.Tensor  # [B, Q, 4] the fixed reference of the edge distances


def union_pairs(pairs: Pairs) -> Pairs:
    """GO-LSD's union of several matchings (D-FINE ``_get_go_indices``), per image: every distinct (query,
    GT) pair of ``pairs`` (any layers) is counted, and each query keeps the GT of its most frequent pair;
    a GT may keep several queries. Equal counts go to the GT of lowest Batch row (the image's earlier box).

    Returns one layer (``layer`` all 0) of pairs sorted by (image, query)."""
    img, qry, row = pairs.image, pairs.query, pairs.gt_row
    if img.numel() == 0:
        return Pairs(img[:0], img[:0], qry[:0], row[:0])
    keys, counts = torch.unique(torch.stack([img, qry, row], 1), dim=0, return_counts=True)  # sorted rows
    q_span, c_span = int(keys[:, 1].max()) + 1, int(counts.max()) + 1
    group = keys[:, 0] * q_span + keys[:, 1]  # one id per (image, query)
    # by (image, query), then count descending; the stable sort keeps unique's row order among equal counts
    order = torch.sort(group * c_span + (c_span - 1 - counts), stable=True).indices
    keys, group = keys[order], group[order]
    first = torch.ones_like(group, dtype=torch.bool)
    first[1:] = group[1:] != group[:-1]
    kept = keys[first]
    return Pairs(torch.zeros_like(kept[:, 0]), kept[:, 0], kept[:, 1], kept[:, 2])


def fgl_edge_loss(corner_logits: torch.Tensor, index: torch.Tensor, weight_right: torch.Tensor,
                  weight_left: torch.Tensor) -> torch.Tensor:
    """Fine-grained localization loss of each edge, un-weighted: [..., R + 1] logits and [...] bin targets
    (:func:`rtdet.ops.fdr.distance_bins`) -> [...], ``CE(logits, ⌊i⌋)·w_left + CE(logits, ⌊i⌋ + 1)·w_right``."""
    logp = corner_logits.float().log_softmax(-1)
    left = index.long()  # index >= 0, so long() is the floor
    ce_left = -logp.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    ce_right = -logp.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
    return ce_left * weight_left + ce_right * weight_right


def ddf_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Distillation divergence of each edge: [..., R + 1] logits each -> [...],
    ``T² · KL(softmax(teacher / T) || softmax(student / T))``; the teacher is detached."""
    t = temperature
    target = (teacher.detach().float() / t).softmax(-1)
    return F.kl_div((student.float() / t).log_softmax(-1), target, reduction="none").sum(-1) * t * t


def _layers(pairs: Pairs, lo: int, hi: int) -> Pairs:
    """The pairs of layers lo..hi-1, renumbered from 0."""
    keep = (pairs.layer >= lo) & (pairs.layer < hi)
    return Pairs(pairs.layer[keep] - lo, pairs.image[keep], pairs.query[keep], pairs.gt_row[keep])


class DFineCriterion(Criterion):
    """D-FINE / DEIM training loss: ``criterion(outputs, batch) -> (total, logs)``.

    outputs: the head's :class:`~rtdet.nn.heads.dfine.DFineTrainOutput`; with ``dn_meta`` the first
    ``dn_num_split[0]`` queries of every decoder output (boxes, scores, corners, ref_points, pre) are
    denoising queries. batch: the Batch dict (``batch_idx`` [N], ``cls`` [N], ``bboxes`` [N, 4] normalised
    cxcywh; ``targets`` when the trainer built them).

    Matching queries: each output of the stack (final, auxiliary, pre, encoder) is matched on its own
    (Hungarian, focal class cost) and its classification loss (``loss``: VFL, or DEIM's MAL) uses that
    match, normalised by num_boxes = the batch's GT count. With ``use_uni_set`` the L1 + GIoU of every output
    and the FGL of every decoder layer use GO-LSD's union of all those matches (:func:`union_pairs`),
    normalised by its size num_boxes_go; without it, each output's own match and num_boxes. FGL: the
    decoder layer's corner logits at the two bins around the GT's edge distance from ``ref_points``, weighted
    by the detached IoU of the layer's box. DDF, for decoder layers 0..L-2 against the last layer: the
    per-edge divergence of every query, weighted by the detached IoU for matched queries and the teacher's
    top class probability for the others; the two groups' means are mixed with weights sqrt(#matched edges)
    and sqrt(#other edges). Both normalisers are averaged over DDP processes (at least 1).

    Denoising queries: the fixed assignment of ``dn_meta``, normalised by num_boxes × dn_num_group, for the
    classification and box losses of every decoder layer and pre, and the FGL and DDF of the decoder layers
    (the DDF mixing weights are the matching part's, of its last auxiliary layer).

    Hyper-parameters: :attr:`SETTINGS` (keywords, defaults = official D-FINE; DEIM's recipe sets loss=mal).

    logs: detached weighted terms: ``vfl`` (``mal`` with loss=mal), ``l1``, ``giou``, ``fgl`` of the final
    layer; ``aux`` (classification, boxes and FGL of decoder layers 0..L-2), ``ddf``, ``pre``, ``enc`` and
    ``dn`` (every denoising term); they add up to ``total``. ``terms()`` gives every term per layer.
    """

    SETTINGS: tuple[Setting, ...] = (
        *IOU_CLASS_LOSS_SETTINGS,
        Setting("loss_vfl", 1.0, float, "classification loss weight (varifocal, or MAL with loss=mal)", low=0.0),
        Setting("loss_bbox", 5.0, float, "L1 box loss weight", low=0.0),
        Setting("loss_giou", 2.0, float, "GIoU box loss weight", low=0.0),
        Setting("loss_fgl", 0.15, float, "fine-grained localization (edge distribution) loss weight", low=0.0),
        Setting("loss_ddf", 1.5, float, "decoupled distillation focal loss weight (self-distillation from the "
                "last decoder layer)", low=0.0),
        Setting("vfl_alpha", 0.75, float, "varifocal alpha", low=0.0, high=1.0),
        Setting("vfl_gamma", 2.0, float, "varifocal gamma", low=0.0),
        Setting("ddf_temperature", 5.0, float, "distillation temperature T of the DDF loss", low=0.0,
                low_open=True),
        Setting("use_uni_set", True, bool, "box and FGL losses on the union of every output's matching (GO-LSD) "
                "instead of each output's own"),
        Setting("cost_class", 2.0, float, "Hungarian matching cost weight of the focal class term", low=0.0),
        Setting("cost_bbox", 5.0, float, "Hungarian matching cost weight of the L1 box term", low=0.0),
        Setting("cost_giou", 2.0, float, "Hungarian matching cost weight of the GIoU term", low=0.0),
        Setting("matcher_alpha", 0.25, float, "focal alpha of the matcher's class cost", low=0.0, high=1.0),
        Setting("matcher_gamma", 2.0, float, "focal gamma of the matcher's class cost", low=0.0),
    )

    def __init__(self, nc: int, **hyp: Any):
        super().__init__(nc, **hyp)
        h = self.hyp
        self.cls_loss = str(h["loss"])  # "vfl" or "mal": also the name of its terms
        self.gain = {"cls": float(h["loss_vfl"]), "l1": float(h["loss_bbox"]), "giou": float(h["loss_giou"]),
                     "fgl": float(h["loss_fgl"]), "ddf": float(h["loss_ddf"])}
        self.cls_options = {"vfl_alpha": float(h["vfl_alpha"]), "vfl_gamma": float(h["vfl_gamma"]),
                            "mal_gamma": float(h["mal_gamma"])}
        self.temperature = float(h["ddf_temperature"])
        self.use_uni_set = bool(h["use_uni_set"])
        self.matcher = HungarianMatcher(h["cost_class"], h["cost_bbox"], h["cost_giou"], h["matcher_alpha"],
                                        h["matcher_gamma"], use_focal=True)

    # ------------------------------------------------------------------------------------------ API
    def forward(self, outputs: DFineTrainOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = self.terms(outputs, batch)
        c, n_dec = self.cls_loss, t["fgl"].shape[0]
        logs = {c: t[c][0], "l1": t["l1"][0], "giou": t["giou"][0], "fgl": t["fgl"][0],
                "aux": t[c][1:n_dec].sum() + t["l1"][1:n_dec].sum() + t["giou"][1:n_dec].sum() + t["fgl"][1:].sum(),
                "ddf": t["ddf"].sum(),
                "pre": t[c][n_dec] + t["l1"][n_dec] + t["giou"][n_dec],
                "enc": t[c][n_dec + 1] + t["l1"][n_dec + 1] + t["giou"][n_dec + 1],
                "dn": sum(t[k].sum() for k in (f"{c}_dn", "l1_dn", "giou_dn", "fgl_dn", "ddf_dn"))}
        total = sum(logs.values())
        return total, {k: v.detach() for k, v in logs.items()}

    def terms(self, outputs: DFineTrainOutput, batch: dict) -> dict[str, torch.Tensor]:
        """Every weighted term per layer, float32 with gradients.

        ``vfl`` (``mal`` with loss=mal), ``l1``, ``giou``: [L + 2] in stack order (last decoder layer, decoder
        layers 0..L-2, pre, encoder); ``fgl``: [L], the decoder layers in the same order; ``ddf``: [L - 1],
        decoder layers 0..L-2. The same with suffix ``_dn`` for the denoising queries: [L + 1] (no encoder),
        [L], [L - 1]; shape [0] without denoising queries.
        """
        out = self._unpack(outputs)
        device = out.dec_bboxes.device
        with torch.autocast(device.type, enabled=False):
            out = DFineTrainOutput(*(v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                                     for v in out))
            targets = batch_targets(batch, out.dec_bboxes.shape[1], self.nc)
            gt_cls = batch["cls"].to(device=device, dtype=torch.int64).reshape(-1)  # [N] or Ultralytics' [N, 1]
            gt_boxes = batch["bboxes"].to(device=device, dtype=torch.float32)
            gt = (gt_cls, gt_boxes)
            norm = self.normaliser(torch.tensor([float(gt_cls.shape[0])], device=device))
            num_dn = self._dn_split(out.dn_meta, out.dec_bboxes.shape[2], out.enc_bboxes)
            match, dn = self._stacks(out, num_dn)

            own = hungarian_pairs(self.matcher, match.boxes, match.logits, targets)
            if self.use_uni_set:
                go = union_pairs(own)
                box_pairs = repeat_pairs(go, match.boxes.shape[0])
                box_norm = self.normaliser(torch.tensor([float(go.image.numel())], device=device))
            else:
                box_pairs, box_norm = own, norm
            res, counts = self._stack_terms(match, own, box_pairs, gt, norm, box_norm, out)
            names = ("cls", "l1", "giou", "fgl", "ddf")
            if dn is None:
                res.update({f"{k}_dn": match.boxes.new_zeros(0) for k in names})
            else:
                groups = int(out.dn_meta["dn_num_group"])
                pairs = repeat_pairs(denoising_pairs(out.dn_meta, targets, device, "DFineCriterion"),
                                     dn.boxes.shape[0])
                dn_res, _ = self._stack_terms(dn, pairs, pairs, gt, norm * groups, norm * groups, out, counts)
                res.update({f"{k}_dn": v for k, v in dn_res.items()})
        return {(k.replace("cls", self.cls_loss) if k.startswith("cls") else k): v for k, v in res.items()}

    # ------------------------------------------------------------------------------------------ parts
    def _stack_terms(self, st: _Stack, cls_pairs: Pairs, box_pairs: Pairs, gt: tuple[torch.Tensor, torch.Tensor],
                     cls_norm: float, box_norm: float, out: DFineTrainOutput,
                     counts: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Weighted terms of one stack ({cls, l1, giou: [S], fgl: [L], ddf: [L - 1]}) and the DDF mixing
        weights of its last auxiliary layer (``counts`` given: use those instead, as the denoising part does)."""
        gt_cls, gt_boxes = gt
        n_dec = st.corners.shape[0]
        res = {"cls": self._class_terms(st, cls_pairs, gt_cls, gt_boxes, cls_norm)}
        res["l1"], res["giou"] = self._box_terms(st.boxes, box_pairs, gt_boxes, box_norm)
        dec_pairs = _layers(box_pairs, 0, n_dec)
        res["fgl"] = self._fgl_terms(st, dec_pairs, gt_boxes, out.project, out.reg_scale, box_norm)
        res["ddf"], counts = self._ddf_terms(st, dec_pairs, gt_boxes, counts)
        return res, counts

    def _class_terms(self, st: _Stack, pairs: Pairs, gt_cls: torch.Tensor, gt_boxes: torch.Tensor,
                     norm: float) -> torch.Tensor:
        """Weighted VFL / MAL per layer [S]: target the detached IoU of each matched box on its GT's class."""
        pred = st.boxes[pairs.layer, pairs.image, pairs.query].detach()
        iou = elementwise_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(gt_boxes[pairs.gt_row]))
        where = (pairs.layer, pairs.image, pairs.query, gt_cls[pairs.gt_row])
        score = torch.zeros_like(st.logits).index_put_(where, iou)
        label = torch.zeros_like(st.logits).index_put_(where, torch.ones_like(iou))
        loss = iou_aware_class_loss(self.cls_loss, st.logits, score, label, **self.cls_options).sum((1, 2, 3))
        return self.gain["cls"] * loss / norm

    def _box_terms(self, boxes: torch.Tensor, pairs: Pairs, gt_boxes: torch.Tensor,
                   norm: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted L1 and 1 − GIoU per layer, each [S], over the pairs of a stack boxes [S, B, Q, 4]."""
        s = boxes.shape[0]
        pred, tgt = boxes[pairs.layer, pairs.image, pairs.query], gt_boxes[pairs.gt_row]
        giou = elementwise_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(tgt), kind="giou")
        l1 = boxes.new_zeros(s).index_add_(0, pairs.layer, (pred - tgt).abs().sum(-1))
        giou_loss = boxes.new_zeros(s).index_add_(0, pairs.layer, 1 - giou)
        if pred.shape[0] == 0:  # keep the boxes in the graph (DDP expects every output to be used)
            l1 = l1 + 0.0 * boxes.sum()
        return self.gain["l1"] * l1 / norm, self.gain["giou"] * giou_loss / norm

    def _fgl_terms(self, st: _Stack, pairs: Pairs, gt_boxes: torch.Tensor, project: torch.Tensor,
                   reg_scale: torch.Tensor, norm: float) -> torch.Tensor:
        """Weighted FGL per decoder layer [L]: every matched query's 4 edges, weighted by the detached IoU of
        the layer's box with its GT."""
        n_dec, bins = st.corners.shape[0], project.numel()
        tgt_xyxy = cxcywh_to_xyxy(gt_boxes[pairs.gt_row])
        with torch.no_grad():  # the targets: the GT's edges in bins of the fixed reference
            distances = boxes_to_distances(st.ref[pairs.image, pairs.query], tgt_xyxy, reg_scale)
            index, weight_right, weight_left = distance_bins(distances, project.detach())
            pred = st.boxes[pairs.layer, pairs.image, pairs.query]
            iou = elementwise_iou(cxcywh_to_xyxy(pred), tgt_xyxy)
        logits = st.corners[pairs.layer, pairs.image, pairs.query].reshape(-1, 4, bins)
        per_query = (fgl_edge_loss(logits, index, weight_right, weight_left) * iou[:, None]).sum(-1)
        loss = st.corners.new_zeros(n_dec).index_add_(0, pairs.layer, per_query)
        if logits.shape[0] == 0:  # keep the corners in the graph (DDP)
            loss = loss + 0.0 * st.corners.sum()
        return self.gain["fgl"] * loss / norm

    def _ddf_terms(self, st: _Stack, pairs: Pairs, gt_boxes: torch.Tensor,
                   counts: tuple[torch.Tensor, torch.Tensor] | None
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Weighted DDF of decoder layers 0..L-2 (stack 1..L-1) against the teacher (stack 0), [L - 1], and
        the mixing weights (sqrt of the matched / other edge counts) of the last of them."""
        n_dec, n_img, n_q = st.corners.shape[:3]
        if n_dec < 2:
            zero = st.corners.new_zeros(())
            return st.corners.new_zeros(0), counts if counts is not None else (zero, zero)
        student = st.corners[1:].reshape(n_dec - 1, n_img, n_q, 4, -1)
        teacher = st.corners[0].reshape(1, n_img, n_q, 4, -1)
        div = ddf_divergence(student, teacher, self.temperature)  # [L-1, B, Q, 4]
        p = _layers(pairs, 1, n_dec)
        with torch.no_grad():
            weight = st.logits[0].sigmoid().amax(-1).expand(n_dec - 1, n_img, n_q).clone()  # unmatched: teacher
            pred = cxcywh_to_xyxy(st.boxes[1:][p.layer, p.image, p.query])
            weight[p.layer, p.image, p.query] = elementwise_iou(pred, cxcywh_to_xyxy(gt_boxes[p.gt_row]))
            matched = torch.zeros_like(weight, dtype=torch.bool)
            matched[p.layer, p.image, p.query] = True
        loss = weight.unsqueeze(-1) * div
        mask = matched.unsqueeze(-1).expand_as(loss)
        n_pos = mask.sum((1, 2, 3)).float()
        n_neg = mask[0].numel() - n_pos
        mean_pos = torch.where(mask, loss, 0.0).sum((1, 2, 3)) / n_pos.clamp(min=1)  # 0 without matches
        mean_neg = torch.where(mask, 0.0, loss).sum((1, 2, 3)) / n_neg.clamp(min=1)
        if counts is None:  # each layer its own weights; the denoising layers reuse the last layer's
            w_pos, w_neg = n_pos.sqrt(), n_neg.sqrt()
            counts = (w_pos[-1], w_neg[-1])
        else:
            w_pos, w_neg = counts
        ddf = (mean_pos * w_pos + mean_neg * w_neg) / (w_pos + w_neg)
        return self.gain["ddf"] * ddf, counts

    # ------------------------------------------------------------------------------------------ inputs
    @staticmethod
    def _stacks(out: DFineTrainOutput, num_dn: int) -> tuple[_Stack, _Stack | None]:
        """The matching queries' stack (with the encoder) and the denoising queries' (None without)."""

        def stack(q: slice, with_enc: bool) -> _Stack:
            boxes = [out.dec_bboxes[-1:, :, q], out.dec_bboxes[:-1, :, q], out.pre_bboxes[None, :, q]]
            logits = [out.dec_scores[-1:, :, q], out.dec_scores[:-1, :, q], out.pre_scores[None, :, q]]
            if with_enc:
                boxes.append(out.enc_bboxes[None])
                logits.append(out.enc_scores[None])
            corners = torch.cat([out.dec_corners[-1:, :, q], out.dec_corners[:-1, :, q]])
            return _Stack(torch.cat(boxes), torch.cat(logits), corners, out.ref_points[:, q])

        match = stack(slice(num_dn, None), True)
        has_dn = num_dn > 0 and int(out.dn_meta["dn_num_group"]) > 0
        return match, (stack(slice(0, num_dn), False) if has_dn else None)

    def _unpack(self, outputs: Any) -> DFineTrainOutput:
        if not isinstance(outputs, (tuple, list)) or len(outputs) != len(DFineTrainOutput._fields):
            raise ValueError(
                f"DFineCriterion: outputs must be the head's training output DFineTrainOutput "
                f"({', '.join(DFineTrainOutput._fields)}); got {type(outputs).__name__}"
                + (f" of length {len(outputs)}" if isinstance(outputs, (tuple, list)) else "")
                + ". Is the head in eval mode?"
            )
        out = DFineTrainOutput(*outputs)
        if out.dec_bboxes.dim() != 4 or out.dec_bboxes.shape[-1] != 4:
            raise ValueError(f"DFineCriterion: expected dec_bboxes [L, B, Q, 4], got {tuple(out.dec_bboxes.shape)}")
        lbq, bq = out.dec_bboxes.shape[:3], out.dec_bboxes.shape[1:3]
        if out.dec_scores.shape[-1] != self.nc or out.enc_scores.shape[-1] != self.nc:
            raise ValueError(f"DFineCriterion: built for nc={self.nc} but the head predicts "
                             f"{out.dec_scores.shape[-1]} classes; build the criterion with the model's nc")
        expected = {"dec_scores": (*lbq, self.nc), "dec_corners": (*lbq, 4 * out.project.numel()),
                    "ref_points": (*bq, 4), "pre_bboxes": (*bq, 4), "pre_scores": (*bq, self.nc)}
        for name, shape in expected.items():
            if tuple(getattr(out, name).shape) != shape:
                raise ValueError(f"DFineCriterion: expected {name} {list(shape)} (dec_bboxes "
                                 f"{list(out.dec_bboxes.shape)}, {out.project.numel()} bins), got "
                                 f"{list(getattr(out, name).shape)}")
        return out

    @staticmethod
    def _dn_split(dn_meta: dict | None, q_total: int, enc_bboxes: torch.Tensor) -> int:
        """The number of denoising queries (0 without dn_meta), checked against the outputs: the encoder's
        top-k are the matching queries, [B, Q - num_dn, 4]."""
        num_dn = 0
        if dn_meta is not None:
            num_dn = DFineCriterion._dn_count(dn_meta, q_total)
        if enc_bboxes.dim() != 3 or enc_bboxes.shape[1] != q_total - num_dn:
            raise ValueError(f"DFineCriterion: expected enc_bboxes [B, {q_total - num_dn}, 4] (one per matching "
                             f"query), got {list(enc_bboxes.shape)}")
        return num_dn

    @staticmethod
    def _dn_count(dn_meta: dict, q_total: int) -> int:
        for key in ("dn_pos_idx", "dn_num_group", "dn_num_split"):
            if key not in dn_meta:
                raise KeyError(f"DFineCriterion: dn_meta lacks {key!r} (has {sorted(dn_meta)})")
        num_dn, nq = (int(v) for v in dn_meta["dn_num_split"])
        if num_dn + nq != q_total:
            raise ValueError(f"DFineCriterion: dn_meta['dn_num_split'] = [{num_dn}, {nq}] does not add up to the "
                             f"{q_total} decoder queries")
        return num_dn
