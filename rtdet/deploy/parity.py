"""Does an export compute what the PyTorch model computes? Compared where it is decided, robust to ties.

    diff = compare_decoded(torch_decoded, onnx_decoded, box_tol=0.64, score_tol=1e-3)   # before NMS
    report = compare_detections(torch_dets, onnx_dets, conf=0.25, iou=0.7, box_tol=0.64, score_tol=1e-3)
    report = check_export("best.onnx", model, check_image(None, (640, 640), batch=1))   # both, or ExportError

Detections after NMS are a poor test of a graph: when class scores sit close together (yolov9-c: within
2e-7 of each other), a difference of one ulp decides which of two overlapping boxes survives, which one
fills the last of ``max_det`` places, or which side of ``conf`` a score falls -- so a correct graph failed
with 109 of 300 detections "matched". So:

* the decoded outputs **before NMS** are compared element by element with a tolerance (dense outputs:
  every box and every class score; final outputs, whose top-k order ties may change, as sets);
* the detections **after NMS** are compared as sets: a detection matches an equal one (same label, box and
  score within tolerance) on the other side; one without a partner is still accepted when a near-tie
  explains it -- its score within ``score_tol`` of ``conf`` or of the other side's last kept score
  (``max_det``), or an overlapping detection (IoU >= ``iou``) of the same label on the other side with a
  near-equal score, or one that is itself explained (a tie whose choice changed what it suppressed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
from scipy.optimize import linear_sum_assignment

from rtdet.data.synthetic import render_image
from rtdet.deploy.errors import ExportError
from rtdet.deploy.graph import deploy_form
from rtdet.deploy.metadata import read_metadata
from rtdet.deploy.runtime import load_onnx_model
from rtdet.nn.heads.base import Decoded, Detections, finalize
from rtdet.ops.boxes import pairwise_iou

__all__ = ["DecodedDiff", "ParityReport", "check_export", "check_image", "compare_decoded", "compare_detections",
           "decoded_difference"]


@dataclass
class DecodedDiff:
    """Largest differences between two decoded outputs, and how many entries differ beyond tolerance."""

    max_box_diff: float
    max_score_diff: float
    mismatched: int  # entries (boxes or class scores) beyond tolerance that no tie explains
    entries: int

    @property
    def ok(self) -> bool:
        return self.mismatched == 0

    def __str__(self) -> str:
        return (f"before NMS: max abs difference boxes {self.max_box_diff:.2e} px, scores {self.max_score_diff:.2e}"
                + (f"; {self.mismatched}/{self.entries} beyond tolerance" if self.mismatched else ""))


def compare_decoded(a: Decoded, b: Decoded, box_tol: float, score_tol: float) -> DecodedDiff:
    """Two decoded outputs of one layout: dense ones element by element (same anchors in the same order),
    final ones (top-k over queries and classes, whose order ties may change) as sets per image."""
    if a.labels is None:
        if a.boxes.shape != b.boxes.shape or a.scores.shape != b.scores.shape:
            return DecodedDiff(float("inf"), float("inf"), max(a.boxes.numel(), 1), a.boxes.numel())
        db = (a.boxes.double() - b.boxes.double()).abs()
        ds = (a.scores.double() - b.scores.double()).abs()
        bad = int((db.amax(-1) > box_tol).sum()) + int((ds > score_tol).sum())
        return DecodedDiff(_max(db), _max(ds), bad, a.boxes.shape[:2].numel())
    dets_a = [Detections(bx, s, lab) for bx, s, lab in zip(a.boxes, a.scores, a.labels)]
    dets_b = [Detections(bx, s, lab) for bx, s, lab in zip(b.boxes, b.scores, b.labels)]
    # the k entries are the model's own top-k: one whose score ties the other side's k-th may be swapped
    report = compare_detections(dets_a, dets_b, conf=float("-inf"), box_tol=box_tol, score_tol=score_tol,
                                iou=1.01, max_det=a.boxes.shape[1], labels_may_tie=True)
    return DecodedDiff(report.max_box_diff, report.max_score_diff, report.unmatched, report.n_torch)


def _max(t: torch.Tensor) -> float:
    return float(t.max()) if t.numel() else 0.0


@dataclass
class ParityReport:
    """PyTorch vs ONNX Runtime on one input: matched detections, their largest differences, the
    detections a near-tie explains (``tied``) and those nothing explains (``unmatched``)."""

    n_torch: int
    n_onnx: int
    matched: int
    max_box_diff: float  # pixels
    max_score_diff: float
    unmatched: int  # detections without a partner that no near-tie explains
    tied: int = 0  # detections without a partner that a near-tie explains
    decoded: DecodedDiff | None = None  # the comparison before NMS, when the export outputs decoded tensors
    seconds_torch: float = 0.0
    seconds_onnx: float = 0.0

    @property
    def ok(self) -> bool:
        """Decided before NMS when the export outputs decoded tensors (NMS then runs the same code on both,
        so what differs after it differs by ties); after NMS, as sets, when NMS is in the graph."""
        return self.decoded.ok if self.decoded is not None else self.unmatched == 0

    def __str__(self) -> str:
        text = (f"{self.matched}/{self.n_torch} PyTorch detections matched by ONNX Runtime ({self.n_onnx}); "
                f"max abs difference: boxes {self.max_box_diff:.2e} px, scores {self.max_score_diff:.2e}")
        if self.tied:
            text += f"; {self.tied} differ only among near-equal scores"
        if self.unmatched:
            text += f"; {self.unmatched} unmatched"
        return text + (f" ({self.decoded})" if self.decoded is not None else "")


def _pairs(da: Detections, db: Detections, box_tol: float, score_tol: float,
           labels_may_tie: bool) -> list[tuple[int, int]]:
    """An optimal one-to-one matching of equal detections (label, box and score within tolerance)."""
    if not len(da) or not len(db):
        return []
    ba, bb = da.boxes.double().cpu(), db.boxes.double().cpu()
    cost = (ba[:, None] - bb[None]).abs().amax(-1)
    ds = (da.scores.double().cpu()[:, None] - db.scores.double().cpu()[None]).abs()
    bad = (cost > box_tol) | (ds > score_tol)
    if not labels_may_tie:
        bad |= da.labels.cpu()[:, None] != db.labels.cpu()[None]
    rows, cols = linear_sum_assignment((cost + ds + bad.double() * 1e9).numpy())
    return [(int(r), int(c)) for r, c in zip(rows, cols) if not bad[r, c]]


def _explained(own: Detections, lonely: list[int], other: Detections, other_lonely: set[int], conf: float,
               iou: float, score_tol: float, max_det_full: bool) -> set[int]:
    """The lonely detections of ``own`` that a near-tie explains (see the module docstring): at the score
    threshold or the other side's ``max_det`` cutoff, or overlapping a same-label detection of the other side
    that has a near-equal score (the tie chose the other box) or is itself lonely (what a tie kept instead
    suppressed this one)."""
    if not lonely:
        return set()
    s = own.scores.double().cpu()
    cutoff = float(other.scores.min()) if max_det_full and len(other) else None
    overlap = pairwise_iou(own.boxes.double().cpu(), other.boxes.double().cpu()) if len(other) else None
    changed = torch.tensor([j in other_lonely for j in range(len(other))], dtype=torch.bool)
    out = set()
    for i in lonely:
        near_edge = abs(float(s[i]) - conf) <= score_tol or (cutoff is not None and float(s[i]) <= cutoff + score_tol)
        rival = False
        if overlap is not None:
            same = (other.labels.cpu() == own.labels[i].cpu()) & (overlap[i] >= iou)
            close = (other.scores.double().cpu() - s[i]).abs() <= score_tol
            rival = bool((same & (close | changed)).any())
        if near_edge or rival:
            out.add(i)
    return out


def _real(dets: Detections, lonely: list[int], candidates: Decoded | None, image: int, box_tol: float,
          score_tol: float) -> list[int]:
    """The lonely detections that are candidates the other backend computed too (a box and class score of
    its decoded output within tolerance): only those can be the other choice of a tie."""
    if candidates is None or not lonely:
        return lonely
    boxes, scores = candidates.boxes[image].double().cpu(), candidates.scores[image].double().cpu()
    keep = []
    for i in lonely:
        near = (boxes - dets.boxes[i].double().cpu()).abs().amax(-1) <= box_tol
        label = int(dets.labels[i])
        cls_scores = scores[:, label] if scores.dim() == 2 else torch.where(candidates.labels[image] == label,
                                                                               scores, torch.nan)
        if bool((near & ((cls_scores - float(dets.scores[i])).abs() <= score_tol)).any()):
            keep.append(i)
    return keep


def compare_detections(a: list[Detections], b: list[Detections], conf: float, box_tol: float = 0.5,
                       score_tol: float = 1e-3, iou: float = 0.7, max_det: int | None = None,
                       labels_may_tie: bool = False, candidates: Decoded | None = None) -> ParityReport:
    """Match the detections of two backends (``a`` the reference) image by image as sets (see the module
    docstring): ``matched`` pairs, ``tied`` detections a near-tie explains, ``unmatched`` ones nothing
    explains. ``candidates``: the reference's decoded output before NMS, when ``b`` ran NMS on its own (an
    nms=True graph): a detection only ``b`` has must be one of them to count as a tie."""
    matched = unmatched = tied = 0
    box_diff = score_diff = 0.0
    for k, (da, db) in enumerate(zip(a, b, strict=True)):
        pairs = _pairs(da, db, box_tol, score_tol, labels_may_tie)
        matched += len(pairs)
        for r, c in pairs:
            box_diff = max(box_diff, float((da.boxes[r].double() - db.boxes[c].double()).abs().max()))
            score_diff = max(score_diff, abs(float(da.scores[r]) - float(db.scores[c])))
        lonely_a = [i for i in range(len(da)) if i not in {r for r, _ in pairs}]
        lonely_b = [j for j in range(len(db)) if j not in {c for _, c in pairs}]
        real_b = _real(db, lonely_b, candidates, k, box_tol, score_tol)
        full_a = max_det is not None and len(da) >= max_det
        full_b = max_det is not None and len(db) >= max_det
        ok_a = _explained(da, lonely_a, db, set(real_b), conf, iou, score_tol, full_b)
        ok_b = _explained(db, real_b, da, set(lonely_a), conf, iou, score_tol, full_a)
        tied += len(ok_a) + len(ok_b)
        unmatched += len(lonely_a) + len(lonely_b) - len(ok_a) - len(ok_b)
    return ParityReport(sum(len(d) for d in a), sum(len(d) for d in b), matched, box_diff, score_diff, unmatched,
                        tied)


# ---------------------------------------------------------------------------------- an export against its model
def check_image(image: np.ndarray | None, shape: tuple[int, int], batch: int) -> torch.Tensor:
    """The check input: ``image`` (HWC BGR uint8) resized to the export size as an RGB [0, 1] batch, or a
    synthetic picture when none is given."""
    if image is None:
        image = render_image(np.random.default_rng(0), max(shape), n_classes=8)[0]
    h, w = shape
    img = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0
    return x[None].expand(batch, -1, -1, -1).contiguous()


def check_export(path: str | Path, model: nn.Module, x: torch.Tensor, conf: float = 0.25, iou: float = 0.7,
                 max_det: int = 300, multi_label: bool = False, box_tol: float | None = None,
                 score_tol: float = 1e-3) -> ParityReport:
    """Run ``x`` through the PyTorch model (fused, eager) and the exported file (ONNX Runtime, same
    ``finalize``); ExportError when their detections differ. ``box_tol`` defaults to 1e-3 of the side."""
    box_tol = box_tol if box_tol is not None else 1e-3 * max(x.shape[2:])
    net = deploy_form(model, False)
    meta = read_metadata(path)
    if meta.get("nms"):  # NMS was fixed at export: compare at those settings
        nms = meta["nms"]
        conf, iou, max_det, multi_label = nms["conf"], nms["iou"], nms["max_det"], nms["multi_label"]
    img_shape = (int(x.shape[2]), int(x.shape[3]))
    with torch.no_grad():
        t0 = time.perf_counter()
        decoded = net.head.decode(net(x), img_shape)
        ours = finalize(decoded, conf, iou, max_det, multi_label)
        t1 = time.perf_counter()
        runtime = load_onnx_model(path)
        outputs = runtime(x)
        t2 = time.perf_counter()
        theirs = runtime.head.postprocess(outputs, img_shape, conf, iou, max_det, multi_label)
    in_graph = runtime.head.layout == "nms"  # NMS ran in the graph: only its results can be compared
    kept = max_det if decoded.labels is None else min(max_det, decoded.boxes.shape[1])  # a DETR keeps its top-k
    report = compare_detections(ours, theirs, conf, box_tol, score_tol, iou, kept,
                                candidates=decoded if in_graph and decoded.labels is None else None)
    if not in_graph:
        report.decoded = compare_decoded(decoded, runtime.head.decode(outputs, img_shape), box_tol, score_tol)
    report.seconds_torch, report.seconds_onnx = t1 - t0, t2 - t1
    if not report.ok:
        raise ExportError(f"{path}: ONNX Runtime does not reproduce PyTorch's detections: {report}")
    return report


def decoded_difference(a: Decoded, b: Decoded) -> float:
    """Largest absolute difference between two Decoded outputs of one layout (raw parity, no matching)."""
    return max(float((x.double() - y.double()).abs().max()) if x.numel() else 0.0
               for x, y in zip(a, b) if x is not None and y is not None)
