"""COCO box mAP through faster-coco-eval, from per-image arrays, and COCO ``predictions.json`` files.

``COCOEvaluator`` collects, image by image, ground truth (xyxy boxes, class ids) and predictions (xyxy
boxes, scores, class ids), builds the COCO ground-truth dict and result list in memory and runs
``faster_coco_eval.COCOeval_faster`` (the same numbers as pycocotools, faster). Boxes should be in
original-image pixels (``rtdet.ops.boxes.boxes_to_original``) so that the COCO small / medium / large
area ranges mean what they mean on COCO. Class ``k`` is COCO category id ``k``.

COCO conventions kept as they are: at most ``max_dets`` predictions per image count (top scores), and a
metric with nothing to measure (e.g. AP_large when no ground-truth box is large) is -1.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rtdet.ops.boxes import xyxy_to_xywh
from rtdet.utils.checkpoint import atomic_write_text

__all__ = [
    "COCOMetrics",
    "COCOEvaluator",
    "evaluate_coco",
    "coco_predictions",
    "save_predictions_json",
    "load_predictions_json",
]

logger = logging.getLogger(__name__)

# order of COCOeval.stats for iouType="bbox"
_STAT_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
               "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")
_DISPLAY = {"map": "mAP50-95", "map50": "mAP50", "map75": "mAP75", "map_small": "mAP_small",
            "map_medium": "mAP_medium", "map_large": "mAP_large", "ar1": "AR1", "ar10": "AR10",
            "ar100": "AR100", "ar_small": "AR_small", "ar_medium": "AR_medium", "ar_large": "AR_large",
            "precision": "precision", "recall": "recall"}


@dataclass
class COCOMetrics:
    """COCO box metrics.

    ``map`` … ``ar_large`` are the 12 COCOeval stats (IoU 0.50:0.95 unless named, area all, ``ar100``
    meaning AR at ``max_dets``). ``precision`` / ``recall`` are class means at IoU 0.5 at the confidence
    threshold ``conf`` that maximises the mean F1 over classes that have ground truth (every prediction
    counts, a class with no prediction scores 0); nan when there is no ground truth.
    ``per_class_ap`` / ``per_class_ap50`` are [nc] arrays, nan for classes without ground truth.
    """

    map: float
    map50: float
    map75: float
    map_small: float
    map_medium: float
    map_large: float
    ar1: float
    ar10: float
    ar100: float
    ar_small: float
    ar_medium: float
    ar_large: float
    precision: float
    recall: float
    conf: float
    per_class_ap: np.ndarray = field(repr=False)
    per_class_ap50: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, float]:
        """Scalar metrics under display names ("mAP50-95", "mAP50", ..., "precision", "recall")."""
        values = asdict(self)
        return {name: float(values[key]) for key, name in _DISPLAY.items()}

    def per_class(self, names: Sequence[str] | None = None) -> dict[str, tuple[float, float]]:
        """{class name: (AP50-95, AP50)} for classes with ground truth."""
        out = {}
        for k, (ap, ap50) in enumerate(zip(self.per_class_ap, self.per_class_ap50)):
            if not math.isnan(ap):
                out[names[k] if names is not None else str(k)] = (float(ap), float(ap50))
        return out


def _masked_mean(x: np.ndarray, mask: np.ndarray, axis) -> np.ndarray:
    n = mask.sum(axis)
    return np.where(n > 0, (x * mask).sum(axis) / np.maximum(n, 1), np.nan)


def _as_array(x, dtype, shape_tail: tuple[int, ...], what: str, where: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=dtype)
    if a.size == 0:
        a = a.reshape((0, *shape_tail))
    if a.ndim != 1 + len(shape_tail) or a.shape[1:] != shape_tail:
        want = "[n, " + ", ".join(map(str, shape_tail)) + "]" if shape_tail else "[n]"
        raise ValueError(f"{where}: {what} must be {want}, got shape {a.shape}")
    return a


class COCOEvaluator:
    """Accumulates images, then computes COCO box metrics.

    >>> ev = COCOEvaluator(nc=2)
    >>> ev.add(gt_boxes=[[10, 10, 50, 60]], gt_classes=[1],
    ...        pred_boxes=[[12, 10, 50, 58]], pred_scores=[0.9], pred_classes=[1])
    1
    >>> round(ev.compute().map50, 3)
    1.0
    """

    def __init__(self, nc: int, names: Sequence[str] | None = None, max_dets: int = 100):
        if nc < 1:
            raise ValueError(f"COCOEvaluator: nc must be >= 1, got {nc}")
        if names is not None and len(names) != nc:
            raise ValueError(f"COCOEvaluator: {len(names)} names given for nc={nc} classes")
        if max_dets < 10:
            raise ValueError(f"COCOEvaluator: max_dets must be >= 10 (COCO also reports AR1, AR10), got {max_dets}")
        self.nc, self.max_dets = nc, max_dets
        self.names = list(names) if names is not None else [str(k) for k in range(nc)]
        self._images: list[dict] = []

    def __len__(self) -> int:
        return len(self._images)

    def add(self, gt_boxes, gt_classes, pred_boxes, pred_scores, pred_classes, image_id: int | None = None,
            iscrowd=None, shape: tuple[int, int] | None = None) -> int:
        """Add one image: xyxy pixel boxes [n, 4] + classes [n] (ground truth), boxes [m, 4] + scores [m] +
        classes [m] (predictions); torch tensors, arrays or lists. ``iscrowd`` [n] marks crowd regions
        (matches to them are neither TP nor FP). Returns the image's COCO id (1, 2, ... unless given)."""
        i = len(self._images)
        img_id = i + 1 if image_id is None else int(image_id)
        where = f"COCOEvaluator image {img_id}"
        rec = {
            "id": img_id,
            "shape": shape,
            "gt_boxes": _as_array(gt_boxes, np.float64, (4,), "gt_boxes", where),
            "gt_classes": _as_array(gt_classes, np.int64, (), "gt_classes", where),
            "pred_boxes": _as_array(pred_boxes, np.float64, (4,), "pred_boxes", where),
            "pred_scores": _as_array(pred_scores, np.float64, (), "pred_scores", where),
            "pred_classes": _as_array(pred_classes, np.int64, (), "pred_classes", where),
        }
        rec["iscrowd"] = (np.zeros(len(rec["gt_classes"]), dtype=bool) if iscrowd is None
                          else _as_array(iscrowd, bool, (), "iscrowd", where))
        n, m = len(rec["gt_boxes"]), len(rec["pred_boxes"])
        for key, want in (("gt_classes", n), ("iscrowd", n), ("pred_scores", m), ("pred_classes", m)):
            if len(rec[key]) != want:
                raise ValueError(f"COCOEvaluator image {img_id}: {key} has {len(rec[key])} entries, "
                                 f"expected {want} (one per box)")
        for key in ("gt_classes", "pred_classes"):
            bad = rec[key][(rec[key] < 0) | (rec[key] >= self.nc)]
            if bad.size:
                raise ValueError(f"COCOEvaluator image {img_id}: {key} contains {int(bad[0])}, "
                                 f"outside [0, {self.nc - 1}] for nc={self.nc}")
        if not np.isfinite(rec["pred_boxes"]).all() or not np.isfinite(rec["pred_scores"]).all():
            raise ValueError(f"COCOEvaluator image {img_id}: predictions contain NaN/inf boxes or scores")
        if any(r["id"] == img_id for r in self._images):
            raise ValueError(f"COCOEvaluator: image id {img_id} added twice")
        self._images.append(rec)
        return img_id

    # ----------------------------------------------------------------------------- COCO structures
    def gt_dataset(self) -> dict:
        """The ground truth as a COCO dataset dict (images, annotations with ids from 1, categories)."""
        images, anns = [], []
        for rec in self._images:
            img = {"id": rec["id"]}
            if rec["shape"] is not None:
                img["height"], img["width"] = (int(v) for v in rec["shape"])
            images.append(img)
            xywh = xyxy_to_xywh(rec["gt_boxes"])
            for box, cls, crowd in zip(xywh.tolist(), rec["gt_classes"].tolist(), rec["iscrowd"].tolist()):
                # annotation id 0 would read as "unmatched" inside COCOeval, so ids start at 1
                anns.append({"id": len(anns) + 1, "image_id": rec["id"], "category_id": cls, "bbox": box,
                             "area": box[2] * box[3], "iscrowd": int(crowd)})
        cats = [{"id": k, "name": name} for k, name in enumerate(self.names)]
        return {"images": images, "annotations": anns, "categories": cats}

    def predictions(self) -> list[dict]:
        """All predictions as a COCO result list (image_id, category_id, bbox xywh, score), unrounded."""
        out = []
        for rec in self._images:
            out.extend(coco_predictions(rec["id"], rec["pred_boxes"], rec["pred_scores"], rec["pred_classes"],
                                        decimals=None))
        return out

    # ----------------------------------------------------------------------------- evaluation
    def compute(self) -> COCOMetrics:
        """Run COCO evaluation on everything added so far."""
        from faster_coco_eval import COCO, COCOeval_faster

        nan = float("nan")
        nan_k = np.full(self.nc, nan)
        dets = self.predictions()
        n_gt = sum(len(r["gt_classes"]) for r in self._images)
        if not self._images or n_gt == 0:
            logger.warning("COCOEvaluator: no ground-truth boxes; every metric is -1 (COCO convention)")
            return COCOMetrics(*([-1.0] * len(_STAT_NAMES)), nan, nan, nan, nan_k, nan_k.copy())
        quiet = logger.debug
        gt = COCO(self.gt_dataset(), print_function=quiet)
        dt = gt.loadRes(dets)
        ev = COCOeval_faster(gt, dt, "bbox", print_function=quiet)
        ev.params.maxDets = [1, 10, self.max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats = [float(s) for s in ev.stats[: len(_STAT_NAMES)]]

        # precision [T, R, K, A, M]: area index 0 = all, last maxDets; -1 marks "no ground truth"
        prec = ev.eval["precision"][:, :, :, 0, -1]
        valid = prec > -1
        ap = _masked_mean(prec, valid, axis=(0, 1))
        ap50 = _masked_mean(prec[0], valid[0], axis=0)  # iouThrs[0] = 0.50
        per_class_ap, per_class_ap50 = nan_k.copy(), nan_k.copy()
        cat_ids = np.asarray(ev.params.catIds, dtype=np.int64)
        per_class_ap[cat_ids], per_class_ap50[cat_ids] = ap, ap50

        p, r, conf = self._best_f1(ev.eval.get("matched", {}), dets) if dets else (0.0, 0.0, nan)
        return COCOMetrics(*stats, p, r, conf, per_class_ap, per_class_ap50)

    def _gt_per_class(self) -> np.ndarray:
        counts = np.zeros(self.nc, dtype=np.int64)
        for rec in self._images:
            np.add.at(counts, rec["gt_classes"][~rec["iscrowd"]], 1)
        return counts

    def _best_f1(self, matched: dict, dets: list[dict]) -> tuple[float, float, float]:
        """Mean precision / recall at IoU 0.5 over classes with ground truth, at the confidence threshold
        that maximises their mean F1 (the lowest such threshold)."""
        scores = np.fromiter((d["score"] for d in dets), np.float64, len(dets))
        classes = np.fromiter((d["category_id"] for d in dets), np.int64, len(dets))
        tp = np.zeros(len(dets), dtype=bool)
        # matched maps "detId_gtId" -> IoU; result ids are 1 + position in the list given to loadRes
        ids = [int(k.split("_", 1)[0]) - 1 for k, iou in matched.items() if iou >= 0.5]
        tp[np.asarray(ids, dtype=np.int64)] = True
        n_gt = self._gt_per_class()
        cls_with_gt = np.flatnonzero(n_gt > 0)
        if cls_with_gt.size == 0:  # only crowd regions
            return float("nan"), float("nan"), float("nan")
        uniq = np.unique(scores)
        thr = uniq if len(uniq) <= 4096 else np.unique(np.quantile(scores, np.linspace(0, 1, 4096)))
        prec = np.zeros((len(cls_with_gt), len(thr)))
        rec = np.zeros_like(prec)
        for row, k in enumerate(cls_with_gt):  # a loop over classes; thresholds are vectorised
            sel = classes == k
            s = -np.sort(-scores[sel])
            cum_tp = np.concatenate([[0], np.cumsum(tp[sel][np.argsort(-scores[sel], kind="stable")])])
            n_above = len(s) - np.searchsorted(s[::-1], thr, side="left")  # detections with score >= thr
            hits = cum_tp[n_above]
            prec[row] = np.divide(hits, n_above, out=np.zeros(len(thr)), where=n_above > 0)
            rec[row] = hits / n_gt[k]
        with np.errstate(invalid="ignore"):
            f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-16), 0.0).mean(0)
        best = int(np.argmax(f1))
        return float(prec[:, best].mean()), float(rec[:, best].mean()), float(thr[best])


def evaluate_coco(gt_boxes: Sequence, gt_classes: Sequence, pred_boxes: Sequence, pred_scores: Sequence,
                  pred_classes: Sequence, nc: int, names: Sequence[str] | None = None,
                  max_dets: int = 100) -> COCOMetrics:
    """COCO metrics from per-image lists (one entry per image, see ``COCOEvaluator.add``)."""
    lists = (gt_boxes, gt_classes, pred_boxes, pred_scores, pred_classes)
    if len({len(x) for x in lists}) != 1:
        raise ValueError(f"evaluate_coco: per-image lists differ in length: {[len(x) for x in lists]}")
    ev = COCOEvaluator(nc, names, max_dets)
    for item in zip(*lists):
        ev.add(*item)
    return ev.compute()


# --------------------------------------------------------------------------------- predictions.json
def coco_predictions(image_id: int | str, boxes, scores, classes, class_map: Sequence[int] | None = None,
                     decimals: int | None = 3) -> list[dict]:
    """One image's predictions as COCO result dicts: xyxy pixel boxes [m, 4] -> ``bbox`` [x, y, w, h].

    ``class_map[k]`` is the category id written for class k (e.g. COCO's 91-id list; default k).
    ``decimals`` rounds bbox (and scores to ``decimals + 2``) to keep files small; None keeps full precision.
    """
    where = f"coco_predictions image {image_id}"
    boxes = _as_array(boxes, np.float64, (4,), "boxes", where)
    scores = _as_array(scores, np.float64, (), "scores", where)
    classes = _as_array(classes, np.int64, (), "classes", where)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError(f"{where}: {len(boxes)} boxes, {len(scores)} scores, "
                         f"{len(classes)} classes; expected one of each per prediction")
    xywh = xyxy_to_xywh(boxes)
    if decimals is not None:
        xywh, scores = xywh.round(decimals), scores.round(decimals + 2)
    cats = classes.tolist() if class_map is None else [int(class_map[k]) for k in classes.tolist()]
    return [{"image_id": image_id, "category_id": c, "bbox": b, "score": s}
            for c, b, s in zip(cats, xywh.tolist(), scores.tolist())]


def _validate_predictions(preds, source: str) -> list[dict]:
    if not isinstance(preds, list):
        raise ValueError(f"{source}: expected a JSON list of COCO results, got {type(preds).__name__}")
    for i, p in enumerate(preds):
        where = f"{source}: entry {i}"
        if not isinstance(p, dict):
            raise ValueError(f"{where}: expected an object, got {type(p).__name__}")
        missing = {"image_id", "category_id", "bbox", "score"} - p.keys()
        if missing:
            raise ValueError(f"{where}: missing key(s) {sorted(missing)}; each result needs image_id, "
                             f"category_id, bbox [x, y, w, h] and score")
        if not isinstance(p["image_id"], (int, str)) or isinstance(p["image_id"], bool):
            raise ValueError(f"{where}: image_id must be an int or a string, got {p['image_id']!r}")
        if not isinstance(p["category_id"], int) or isinstance(p["category_id"], bool):
            raise ValueError(f"{where}: category_id must be an int, got {p['category_id']!r}")
        b = p["bbox"]
        if (not isinstance(b, list) or len(b) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in b) or b[2] < 0 or b[3] < 0):
            raise ValueError(f"{where}: bbox must be 4 finite numbers [x, y, w, h] with w, h >= 0, got {b!r}")
        if not isinstance(p["score"], (int, float)) or not math.isfinite(p["score"]):
            raise ValueError(f"{where}: score must be a finite number, got {p['score']!r}")
    return preds


def save_predictions_json(path: str | Path, predictions: list[dict]) -> Path:
    """Validate and write COCO results atomically (temporary file + rename)."""
    _validate_predictions(predictions, str(path))
    return atomic_write_text(path, json.dumps(predictions))


def load_predictions_json(path: str | Path) -> list[dict]:
    """Read and validate a COCO results file written by ``save_predictions_json`` (or any COCO tool)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: predictions file not found")
    try:
        preds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    return _validate_predictions(preds, str(path))
