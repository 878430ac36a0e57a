import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch

from rtdet.ops.metrics import (
    COCOEvaluator,
    coco_predictions,
    evaluate_coco,
    load_predictions_json,
    save_predictions_json,
)

NC = 4


def random_detections(seed: int = 0, n_images: int = 14):
    """Seeded ground truth and predictions: jittered true positives, wrong classes, background false
    positives, images without ground truth, images without predictions, sizes across small/medium/large."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_images):
        n_gt = 0 if i % 5 == 0 else int(rng.integers(1, 9))
        wh = np.exp(rng.uniform(np.log(8), np.log(300), (n_gt, 2)))
        xy = rng.uniform(0, 640 - wh)
        gt = np.concatenate([xy, xy + wh], 1)
        gt_cls = rng.integers(0, NC, n_gt)
        crowd = np.zeros(n_gt, dtype=bool)
        if i == 3 and n_gt:
            crowd[0] = True
        boxes, scores, classes = [], [], []
        if i % 7 != 6:  # every 7th image has no prediction at all
            for box, c in zip(gt, gt_cls):
                if rng.random() < 0.85:
                    size = np.tile(box[2:] - box[:2], 2)
                    boxes.append(box + rng.normal(0, 0.08, 4) * size)
                    scores.append(rng.uniform(0.2, 1.0))
                    classes.append(c if rng.random() < 0.85 else (c + 1) % NC)
            for _ in range(int(rng.integers(0, 5))):
                w, h = rng.uniform(10, 200, 2)
                x, y = rng.uniform(0, 400, 2)
                boxes.append(np.array([x, y, x + w, y + h]))
                scores.append(rng.uniform(0.0, 0.6))
                classes.append(int(rng.integers(0, NC)))
        images.append(dict(gt_boxes=gt, gt_classes=gt_cls, iscrowd=crowd,
                           pred_boxes=np.array(boxes).reshape(-1, 4), pred_scores=np.array(scores),
                           pred_classes=np.array(classes, dtype=np.int64)))
    return images


def pycocotools_eval(gt_dataset: dict, predictions: list[dict]):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(gt_dataset)
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(predictions))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_map_equals_pycocotools():
    ev = COCOEvaluator(nc=NC, names=["a", "b", "c", "d"])
    for img in random_detections():
        ev.add(**img)
    m = ev.compute()
    ref = pycocotools_eval(ev.gt_dataset(), ev.predictions())

    ours = np.array([m.map, m.map50, m.map75, m.map_small, m.map_medium, m.map_large,
                     m.ar1, m.ar10, m.ar100, m.ar_small, m.ar_medium, m.ar_large])
    np.testing.assert_allclose(ours, ref.stats, rtol=0, atol=1e-12)
    assert 0.2 < m.map < 0.9 and all(s > 0 for s in ref.stats)  # a case with something to measure

    prec = ref.eval["precision"][:, :, :, 0, -1]
    for k in range(NC):
        p = prec[:, :, k]
        assert m.per_class_ap[k] == pytest.approx(p[p > -1].mean(), abs=1e-12)
        assert m.per_class_ap50[k] == pytest.approx(p[0][p[0] > -1].mean(), abs=1e-12)
    assert m.map == pytest.approx(np.nanmean(m.per_class_ap), abs=1e-12)
    assert set(m.per_class(ev.names)) == {"a", "b", "c", "d"}
    assert m.as_dict()["mAP50-95"] == m.map and m.as_dict()["mAP50"] == m.map50
    assert 0 < m.precision <= 1 and 0 < m.recall <= 1


def test_evaluate_coco_accepts_tensors_and_matches_the_evaluator():
    imgs = random_detections(seed=1, n_images=6)
    as_t = {k: [torch.as_tensor(img[k]) for img in imgs] for k in
            ("gt_boxes", "gt_classes", "pred_boxes", "pred_scores", "pred_classes")}
    m = evaluate_coco(**as_t, nc=NC)
    ev = COCOEvaluator(NC)
    for img in imgs:
        ev.add(**{k: v for k, v in img.items() if k != "iscrowd"})
    assert m.map == ev.compute().map


def test_precision_recall_at_best_f1_by_hand():
    # one class, two objects. Predictions by score: 0.9 hits object 1, 0.8 hits nothing, 0.3 hits object 2
    # (IoU 0.68). Thresholds: >=0.9 P 1 R .5 F1 .667; >=0.8 P .5 R .5 F1 .5; >=0.3 P 2/3 R 1 F1 .8 (best)
    ev = COCOEvaluator(nc=1)
    ev.add(gt_boxes=[[10, 10, 30, 30], [50, 50, 70, 70]], gt_classes=[0, 0],
           pred_boxes=[[10, 10, 30, 30], [80, 80, 90, 90], [52, 52, 72, 72]], pred_scores=[0.9, 0.8, 0.3],
           pred_classes=[0, 0, 0])
    m = ev.compute()
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(1.0)
    assert m.conf == pytest.approx(0.3)


def test_no_predictions_and_no_ground_truth():
    ev = COCOEvaluator(nc=2)
    ev.add([[0, 0, 10, 10]], [1], np.zeros((0, 4)), [], [])
    m = ev.compute()
    assert m.map == 0.0 and m.map50 == 0.0 and m.recall == 0.0
    assert np.isnan(m.per_class_ap[0]) and m.per_class_ap[1] == 0.0

    ev = COCOEvaluator(nc=2)
    ev.add(np.zeros((0, 4)), [], [[0, 0, 10, 10]], [0.5], [0])
    assert ev.compute().map == -1.0  # COCO: nothing to measure


def test_input_errors_name_the_image_and_the_problem():
    ev = COCOEvaluator(nc=3)
    with pytest.raises(ValueError, match=r"image 1: pred_classes contains 3, outside \[0, 2\]"):
        ev.add([[0, 0, 5, 5]], [0], [[0, 0, 5, 5]], [0.5], [3])
    with pytest.raises(ValueError, match="image 1: gt_boxes must be"):
        ev.add([[0, 0, 5]], [0], [], [], [])
    with pytest.raises(ValueError, match="pred_scores has 2 entries, expected 1"):
        ev.add([], [], [[0, 0, 5, 5]], [0.5, 0.4], [0])
    ev.add([], [], [], [], [], image_id=7)
    with pytest.raises(ValueError, match="image id 7 added twice"):
        ev.add([], [], [], [], [], image_id=7)


def test_predictions_json_round_trip_is_atomic_and_validated(tmp_path):
    preds = coco_predictions(42, torch.tensor([[10.0, 20.0, 40.0, 60.0]]), torch.tensor([0.87654321]),
                             torch.tensor([2]), class_map=[1, 2, 3])
    assert preds == [{"image_id": 42, "category_id": 3, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.87654}]
    path = save_predictions_json(tmp_path / "out" / "predictions.json", preds)
    assert load_predictions_json(path) == preds
    assert sorted(p.name for p in path.parent.iterdir()) == ["predictions.json"]  # no temporary left behind

    bad = copy.deepcopy(preds) + [{"image_id": 1, "category_id": 0, "bbox": [0, 0, -1, 2], "score": 0.1}]
    with pytest.raises(ValueError, match=r"entry 1: bbox must be 4 finite numbers"):
        save_predictions_json(tmp_path / "bad.json", bad)
    assert not (tmp_path / "bad.json").exists()
    (tmp_path / "missing.json").write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]))
    with pytest.raises(ValueError, match=r"missing.json: entry 0: missing key\(s\) \['category_id'\]"):
        load_predictions_json(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        load_predictions_json(tmp_path / "broken.json")


def test_saved_predictions_evaluate_like_in_memory_ones(tmp_path):
    ev = COCOEvaluator(nc=NC)
    for img in random_detections(seed=2, n_images=5):
        ev.add(**img)
    path = save_predictions_json(tmp_path / "p.json", ev.predictions())
    ref = pycocotools_eval(ev.gt_dataset(), load_predictions_json(path))
    assert ev.compute().map == pytest.approx(ref.stats[0], abs=1e-12)
