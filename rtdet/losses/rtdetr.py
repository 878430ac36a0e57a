"""RT-DETR set-prediction loss: Hungarian matching, varifocal classification, L1 + GIoU boxes, auxiliary
(every decoder layer and the encoder's top-k proposals) and denoising terms.

``loss=mal`` swaps the varifocal loss for DEIM's matchability-aware loss (:mod:`rtdet.losses.common`) wherever
it is used; the default ``vfl`` is the official RT-DETR. The matched pairs (:class:`Pairs`, from
:func:`hungarian_pairs` and :func:`denoising_pairs`) are shared with the D-FINE criterion.

Defaults are those of the official RT-DETR (lyuwenyu/RT-DETR, ``rtdetr_criterion.py`` / ``matcher.py``):
VFL α 0.75 γ 2.0 with weights vfl 1 / L1 5 / GIoU 2; matching cost class 2 / L1 5 / GIoU 2 with the focal
class cost (α 0.25, γ 2.0). Ultralytics' RT-DETR differs only in the VFL α/γ (0.25 / 1.5).

Shapes: B images, Q queries, C classes, L decoder layers, N ground-truth boxes in the batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from rtdet.losses.assigners.hungarian import HungarianMatcher
from rtdet.losses.base import Criterion
from rtdet.losses.common import IOU_CLASS_LOSS_SETTINGS, iou_aware_class_loss
from rtdet.ops.boxes import cxcywh_to_xyxy, elementwise_iou
from rtdet.ops.targets import PaddedTargets, batch_targets
from rtdet.utils.schema import Setting

__all__ = ["Pairs", "RTDETRCriterion", "denoising_pairs", "hungarian_pairs", "repeat_pairs"]


class Pairs(NamedTuple):
    """Matched (layer, image, query) ↔ ground-truth row (of the Batch arrays), flattened over a stack of
    layers: four int64 tensors [P]."""

    layer: torch.Tensor
    image: torch.Tensor
    query: torch.Tensor
    gt_row: torch.Tensor


def hungarian_pairs(matcher: HungarianMatcher, boxes: torch.Tensor, logits: torch.Tensor,
                    targets: PaddedTargets) -> Pairs:
    """Hungarian pairs of every layer of a stack boxes [S, B, Q, 4] / logits [S, B, Q, C]; one matcher call."""
    matches = matcher.match_stack(boxes, logits, targets)
    layer, image, query, slot = [], [], [], []
    for s, per_image in enumerate(matches):  # loops over layers and images; pairs are whole arrays
        for b, (pi, gi) in enumerate(per_image):
            layer.append(np.full(len(pi), s))
            image.append(np.full(len(pi), b))
            query.append(pi.numpy())
            slot.append(gi.numpy())
    device = boxes.device
    layer_t, image_t, query_t, slot_t = (torch.from_numpy(np.concatenate(x).astype(np.int64)).to(device)
                                         for x in (layer, image, query, slot))
    return Pairs(layer_t, image_t, query_t, targets.rows[image_t, slot_t])


def repeat_pairs(pairs: Pairs, n_layers: int) -> Pairs:
    """The pairs of one layer (``pairs.layer`` ignored) for each of ``n_layers`` layers, layer-major."""
    p = pairs.image.numel()
    layer = torch.arange(n_layers, device=pairs.image.device).repeat_interleave(p)
    return Pairs(layer, pairs.image.repeat(n_layers), pairs.query.repeat(n_layers), pairs.gt_row.repeat(n_layers))


def denoising_pairs(dn_meta: dict, targets: PaddedTargets, device: torch.device,
                    owner: str = "RTDETRCriterion") -> Pairs:
    """The fixed assignment of the denoising queries (layer 0): positive query k of image b ↔ its GT, the
    image's GTs repeated once per group (``dn_meta['dn_gt_idx']`` names their Batch rows when present, else
    the image's boxes in Batch order). ``owner`` names the criterion in the errors."""
    pos_idx = dn_meta["dn_pos_idx"]
    gt_idx = dn_meta.get("dn_gt_idx")  # optional: Batch rows each image's DN queries reconstruct
    groups = int(dn_meta["dn_num_group"])
    n_img = targets.counts.shape[0]
    if len(pos_idx) != n_img:
        raise ValueError(f"{owner}: dn_meta['dn_pos_idx'] has {len(pos_idx)} entries for {n_img} images")
    counts = targets.counts.tolist()
    image, query, rows = [], [], []
    for b in range(n_img):  # per image; the pairs themselves are tensors
        pos = torch.as_tensor(pos_idx[b], dtype=torch.int64, device=device).reshape(-1)
        gt = (targets.rows[b, :counts[b]] if gt_idx is None
              else torch.as_tensor(gt_idx[b], dtype=torch.int64, device=device).reshape(-1))
        gt = gt.repeat(groups)
        if pos.numel() != gt.numel():
            raise ValueError(
                f"{owner}: image {b} has {pos.numel()} positive denoising queries in dn_meta but "
                f"{gt.numel() // max(groups, 1)} ground-truth boxes × {groups} groups = {gt.numel()}; the "
                f"head's denoising group must be built from the same batch (batch_idx/cls/bboxes)"
            )
        image.append(torch.full_like(pos, b))
        query.append(pos)
        rows.append(gt)
    image_t = torch.cat(image)
    return Pairs(torch.zeros_like(image_t), image_t, torch.cat(query), torch.cat(rows))


class RTDETRCriterion(Criterion):
    """RT-DETR training loss: ``criterion(outputs, batch, num_boxes=None) -> (total, logs)``.

    outputs: the head's training output :class:`~rtdet.nn.heads.rtdetr.RTDETRTrainOutput` ``(dec_bboxes
    [L, B, Q, 4], dec_scores [L, B, Q, C], enc_bboxes [B, nq, 4], enc_scores [B, nq, C], dn_meta)``; with
    ``dn_meta`` the first ``dn_num_split[0]`` queries are denoising queries. batch: the Batch dict
    (``batch_idx`` [N], ``cls`` [N], ``bboxes`` [N, 4] normalised cxcywh; ``targets`` when the trainer
    built them). ``num_boxes``: the normaliser (default N; in DDP pass the all-reduced mean count), clamped ≥ 1.

    For each supervised set of predictions: varifocal loss with the detached IoU of matched pairs as soft
    target, summed and divided by num_boxes; L1 and 1 − GIoU over matched pairs divided by num_boxes.
    Matching is Hungarian per layer (final decoder layer = main loss; the other decoder layers and the
    encoder top-k = auxiliary). Denoising queries use the fixed assignment of dn_meta (positive query k of
    image b ↔ its GT, repeated per group), normalised by num_boxes × dn_num_group.

    Hyper-parameters: :attr:`SETTINGS` (keywords, defaults = official RT-DETR; ``aux_loss=False``
    supervises the final layer only, for both matching and denoising queries). An unknown keyword or a
    value outside its range is an error.

    ``loss=mal`` (with ``mal_gamma``) replaces the varifocal loss by DEIM's matchability-aware loss in every
    one of those terms, weighted by ``loss_vfl``; the rest is unchanged.

    logs: detached weighted terms ``vfl`` (``mal`` with loss=mal), ``l1, giou`` (final layer), ``aux`` and
    ``dn`` (sums of the auxiliary / denoising terms); they add up to ``total``. ``terms()`` gives every term
    per layer.
    """

    SETTINGS: tuple[Setting, ...] = (
        *IOU_CLASS_LOSS_SETTINGS,
        Setting("loss_vfl", 1.0, float, "classification loss weight (varifocal, or MAL with loss=mal)", low=0.0),
        Setting("loss_bbox", 5.0, float, "L1 box loss weight", low=0.0),
        Setting("loss_giou", 2.0, float, "GIoU box loss weight", low=0.0),
        Setting("vfl_alpha", 0.75, float, "varifocal alpha (official RT-DETR; Ultralytics uses 0.25)", low=0.0,
                high=1.0),
        Setting("vfl_gamma", 2.0, float, "varifocal gamma (official RT-DETR; Ultralytics uses 1.5)", low=0.0),
        Setting("cost_class", 2.0, float, "Hungarian matching cost weight of the focal class term", low=0.0),
        Setting("cost_bbox", 5.0, float, "Hungarian matching cost weight of the L1 box term", low=0.0),
        Setting("cost_giou", 2.0, float, "Hungarian matching cost weight of the GIoU term", low=0.0),
        Setting("matcher_alpha", 0.25, float, "focal alpha of the matcher's class cost", low=0.0, high=1.0),
        Setting("matcher_gamma", 2.0, float, "focal gamma of the matcher's class cost", low=0.0),
        Setting("aux_loss", True, bool, "supervise every decoder layer and the encoder's top-k proposals"),
    )

    def __init__(self, nc: int, **hyp: Any):
        super().__init__(nc, **hyp)
        h = self.hyp
        self.cls_loss = str(h["loss"])  # "vfl" or "mal": also the name of its terms
        self.gain = {"cls": float(h["loss_vfl"]), "l1": float(h["loss_bbox"]), "giou": float(h["loss_giou"])}
        self.cls_options = {"vfl_alpha": float(h["vfl_alpha"]), "vfl_gamma": float(h["vfl_gamma"]),
                            "mal_gamma": float(h["mal_gamma"])}
        self.aux_loss = bool(h["aux_loss"])
        self.matcher = HungarianMatcher(h["cost_class"], h["cost_bbox"], h["cost_giou"], h["matcher_alpha"],
                                        h["matcher_gamma"], use_focal=True)

    # ------------------------------------------------------------------------------------------ API
    def forward(self, outputs: tuple, batch: dict,
                num_boxes: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = self.terms(outputs, batch, num_boxes)
        c = self.cls_loss
        logs = {c: t[c][0], "l1": t["l1"][0], "giou": t["giou"][0],
                "aux": t[c][1:].sum() + t["l1"][1:].sum() + t["giou"][1:].sum(),
                "dn": t[f"{c}_dn"].sum() + t["l1_dn"].sum() + t["giou_dn"].sum()}
        total = sum(logs.values())
        return total, {k: v.detach() for k, v in logs.items()}

    def terms(self, outputs: tuple, batch: dict,
              num_boxes: float | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every weighted term per layer, float32 with gradients.

        ``vfl`` (``mal`` with loss=mal), ``l1``, ``giou``: [S] — index 0 the final decoder layer, then (aux_loss)
        decoder layers 0..L-2 and last the encoder top-k. ``vfl_dn`` (``mal_dn``), ``l1_dn``, ``giou_dn``: [L]
        per decoder layer in order (only the final layer without aux_loss), zeros of shape [0] when dn_meta is
        None.
        """
        dec_bboxes, dec_scores, enc_bboxes, enc_scores, dn_meta = self._unpack(outputs)
        device = dec_bboxes.device
        with torch.autocast(device.type, enabled=False):
            dec_bboxes, dec_scores = dec_bboxes.float(), dec_scores.float()
            enc_bboxes, enc_scores = enc_bboxes.float(), enc_scores.float()
            n_img = dec_bboxes.shape[1]
            targets, gt_cls, gt_boxes = self._targets(batch, n_img, device)
            norm = self._num_boxes(num_boxes, gt_cls.shape[0], device)

            if dn_meta is not None:
                num_dn = self._dn_split(dn_meta, dec_bboxes.shape[2])
                dn_bboxes, dec_bboxes = dec_bboxes[:, :, :num_dn], dec_bboxes[:, :, num_dn:]
                dn_scores, dec_scores = dec_scores[:, :, :num_dn], dec_scores[:, :, num_dn:]

            out = self._matched_terms(dec_bboxes, dec_scores, enc_bboxes, enc_scores, targets, gt_cls, gt_boxes,
                                      norm)
            c = self.cls_loss
            if dn_meta is None:
                zero = dec_scores.new_zeros(0)
                out.update({f"{c}_dn": zero, "l1_dn": zero, "giou_dn": zero})
            else:
                if not self.aux_loss:
                    dn_bboxes, dn_scores = dn_bboxes[-1:], dn_scores[-1:]
                groups = int(dn_meta["dn_num_group"])
                pairs = repeat_pairs(denoising_pairs(dn_meta, targets, device), dn_bboxes.shape[0])
                cls, l1, giou = self._set_losses(dn_bboxes, dn_scores, pairs, gt_cls, gt_boxes, norm * groups)
                out.update({f"{c}_dn": cls, "l1_dn": l1, "giou_dn": giou})
        return out

    # ------------------------------------------------------------------------------------------ parts
    def _matched_terms(self, dec_bboxes, dec_scores, enc_bboxes, enc_scores, targets, gt_cls, gt_boxes, norm):
        if not self.aux_loss:
            stacks = [(dec_bboxes[-1:], dec_scores[-1:])]
        elif enc_bboxes.shape == dec_bboxes.shape[1:] and enc_scores.shape == dec_scores.shape[1:]:
            # one matching pass over [final, decoder 0..L-2, encoder]
            stacks = [(torch.cat([dec_bboxes[-1:], dec_bboxes[:-1], enc_bboxes[None]]),
                       torch.cat([dec_scores[-1:], dec_scores[:-1], enc_scores[None]]))]
        else:  # encoder top-k of another size: match it on its own
            stacks = [(torch.cat([dec_bboxes[-1:], dec_bboxes[:-1]]), torch.cat([dec_scores[-1:], dec_scores[:-1]])),
                      (enc_bboxes[None], enc_scores[None])]
        parts = []
        for boxes, logits in stacks:
            pairs = hungarian_pairs(self.matcher, boxes, logits, targets)
            parts.append(self._set_losses(boxes, logits, pairs, gt_cls, gt_boxes, norm))
        cls, l1, giou = (torch.cat(x) for x in zip(*parts))
        return {self.cls_loss: cls, "l1": l1, "giou": giou}

    def _set_losses(self, boxes: torch.Tensor, logits: torch.Tensor, pairs: Pairs, gt_cls: torch.Tensor,
                    gt_boxes: torch.Tensor, norm: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weighted (vfl or mal, l1, giou), each [S], for a stack boxes [S, B, Q, 4] / logits [S, B, Q, C]."""
        s = boxes.shape[0]
        pred = boxes[pairs.layer, pairs.image, pairs.query]  # [P, 4]
        tgt = gt_boxes[pairs.gt_row]
        cls = gt_cls[pairs.gt_row]
        pred_xyxy, tgt_xyxy = cxcywh_to_xyxy(pred), cxcywh_to_xyxy(tgt)
        giou = elementwise_iou(pred_xyxy, tgt_xyxy, kind="giou")
        iou = elementwise_iou(pred_xyxy.detach(), tgt_xyxy, kind="iou")

        where = (pairs.layer, pairs.image, pairs.query, cls)
        score = torch.zeros_like(logits).index_put_(where, iou)
        label = torch.zeros_like(logits).index_put_(where, torch.ones_like(iou))
        cls_loss = iou_aware_class_loss(self.cls_loss, logits, score, label, **self.cls_options).sum((1, 2, 3))

        l1 = boxes.new_zeros(s).index_add_(0, pairs.layer, (pred - tgt).abs().sum(-1))
        giou_loss = boxes.new_zeros(s).index_add_(0, pairs.layer, 1 - giou)
        if pred.shape[0] == 0:  # keep the box branch in the graph (DDP expects every output to be used)
            l1 = l1 + 0.0 * boxes.sum()
        g = self.gain
        return g["cls"] * cls_loss / norm, g["l1"] * l1 / norm, g["giou"] * giou_loss / norm

    # ------------------------------------------------------------------------------------------ inputs
    def _unpack(self, outputs):
        if not isinstance(outputs, (tuple, list)) or len(outputs) != 5:
            raise ValueError(
                "RTDETRCriterion: outputs must be the head's training tuple (dec_bboxes, dec_scores, enc_bboxes, "
                f"enc_scores, dn_meta); got {type(outputs).__name__}"
                + (f" of length {len(outputs)}" if isinstance(outputs, (tuple, list)) else "")
                + ". Is the head in eval mode?"
            )
        dec_bboxes, dec_scores, enc_bboxes, enc_scores, dn_meta = outputs
        if dec_bboxes.dim() != 4 or dec_bboxes.shape[-1] != 4 or dec_scores.shape[:-1] != dec_bboxes.shape[:-1]:
            raise ValueError(f"RTDETRCriterion: expected dec_bboxes [L, B, Q, 4] and dec_scores [L, B, Q, C], got "
                             f"{tuple(dec_bboxes.shape)} and {tuple(dec_scores.shape)}")
        if dec_scores.shape[-1] != self.nc or enc_scores.shape[-1] != self.nc:
            raise ValueError(f"RTDETRCriterion: built for nc={self.nc} but the head predicts "
                             f"{dec_scores.shape[-1]} classes; build the criterion with the model's nc")
        if enc_bboxes.dim() != 3 or enc_bboxes.shape[0] != dec_bboxes.shape[1]:
            raise ValueError(f"RTDETRCriterion: expected enc_bboxes [B={dec_bboxes.shape[1]}, nq, 4], "
                             f"got {tuple(enc_bboxes.shape)}")
        return dec_bboxes, dec_scores, enc_bboxes, enc_scores, dn_meta

    @staticmethod
    def _dn_split(dn_meta: dict, q_total: int) -> int:
        for key in ("dn_pos_idx", "dn_num_group", "dn_num_split"):
            if key not in dn_meta:
                raise KeyError(f"RTDETRCriterion: dn_meta lacks {key!r} (has {sorted(dn_meta)})")
        num_dn, nq = (int(v) for v in dn_meta["dn_num_split"])
        if num_dn + nq != q_total:
            raise ValueError(f"RTDETRCriterion: dn_meta['dn_num_split'] = [{num_dn}, {nq}] does not add up to the "
                             f"{q_total} decoder queries")
        return num_dn

    def _targets(self, batch: dict, n_img: int, device: torch.device):
        """The step's padded targets (shared with the head's denoising) and the flat Batch arrays."""
        targets = batch_targets(batch, n_img, self.nc)
        cls = batch["cls"].to(device=device, dtype=torch.int64).reshape(-1)  # [N] or Ultralytics' [N, 1]
        bboxes = batch["bboxes"].to(device=device, dtype=torch.float32)
        return targets, cls, bboxes

    @staticmethod
    def _num_boxes(num_boxes, n: int, device: torch.device) -> float:
        """The normaliser: ``num_boxes`` if given, else this batch's box count, averaged over the processes
        under DDP (as the official criterion does) so every rank divides by the same number; at least 1."""
        if num_boxes is not None:
            return max(float(num_boxes), 1.0)
        return Criterion.normaliser(torch.tensor([float(n)], device=device))
