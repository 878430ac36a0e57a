"""Validator: its mAP equals the metrics wrapper's on the same predictions, mapped through the letterbox."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rtdet.engine import loaders
from rtdet.engine.settings import resolve_settings
from rtdet.engine.validator import Validator, fitness
from rtdet.io.load import build_model
from rtdet.ops.metrics import evaluate_coco

# Three non-square images (w, h) with their boxes (class, x1, y1, x2, y2 in pixels), so the letterbox pads.
IMAGES = {
    "000001": ((120, 60), [(0, 10, 5, 50, 40), (1, 70, 20, 110, 55)]),
    "000002": ((50, 100), [(1, 5, 10, 45, 60)]),
    "000003": ((90, 90), [(0, 20, 20, 70, 80), (0, 5, 5, 25, 20)]),
}


@pytest.fixture
def letterbox_data(tmp_path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for stem, ((w, h), boxes) in IMAGES.items():
        cv2.imwrite(str(tmp_path / "images" / f"{stem}.png"), np.full((h, w, 3), 90, np.uint8))
        rows = [f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                for c, x1, y1, x2, y2 in boxes]
        (tmp_path / "labels" / f"{stem}.txt").write_text("\n".join(rows) + "\n")
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images\nval: images\nnames: [a, b]\n")
    return tmp_path / "data.yaml"


def _controlled_outputs(loader) -> tuple[list[torch.Tensor], dict[str, list]]:
    """Per batch, the [B, k, 6] eval output a model 'predicts' (GT boxes, some shifted, one missed, one
    false positive), and per image the same predictions mapped back to original pixels by hand."""
    outputs, expected = [], {}
    for batch in loader:
        b, _, h, w = batch["img"].shape
        rows = []
        for j in range(b):
            sel = batch["batch_idx"] == j
            boxes, cls = batch["bboxes"][sel].clone(), batch["cls"][sel].float()
            boxes[0, 0] += 0.3 * boxes[0, 2]  # first box shifted by 30% of its width: IoU ~0.54
            scores = torch.linspace(0.9, 0.6, len(cls))
            if len(cls) > 1:  # the last box is missed, a low-score false positive takes its row
                boxes[-1], cls[-1], scores[-1] = torch.tensor([0.5, 0.5, 0.1, 0.1]), 1 - cls[-1], 0.05
            pad = 4 - len(cls)  # fixed k = 4 rows, unused rows score 0 (below conf)
            out = torch.cat([boxes, scores[:, None], cls[:, None]], 1)
            out = torch.cat([out, torch.zeros(pad, 6)])
            rows.append(out)
            # by hand: normalised cxcywh -> input pixels -> original pixels through ratio_pad
            (ry, rx), (px, py) = batch["ratio_pad"][j]
            keep = scores >= 0.001
            x1 = ((boxes[:, 0] - boxes[:, 2] / 2) * w - px) / rx
            y1 = ((boxes[:, 1] - boxes[:, 3] / 2) * h - py) / ry
            x2 = ((boxes[:, 0] + boxes[:, 2] / 2) * w - px) / rx
            y2 = ((boxes[:, 1] + boxes[:, 3] / 2) * h - py) / ry
            h0, w0 = batch["ori_shape"][j]
            xyxy = torch.stack([x1.clamp(0, w0), y1.clamp(0, h0), x2.clamp(0, w0), y2.clamp(0, h0)], 1)
            expected[Path(batch["im_file"][j]).stem] = [xyxy[keep], scores[keep], cls[keep].long()]
        outputs.append(torch.stack(rows))
    return outputs, expected


def test_validator_map_equals_the_metrics_wrapper(letterbox_data, tiny_yaml, tmp_path):
    args = resolve_settings({"imgsz": 64, "workers": 0, "verbose": False, "val_pipeline": "plain"}, "rtdetr")
    data = loaders.load_data(letterbox_data)
    loader = loaders.val_loader(data, args, batch_size=2)
    outputs, expected = _controlled_outputs(loader)
    pads = {tuple(b) for batch in loader for b in batch["ratio_pad"]}
    assert any(p[1] != (0.0, 0.0) for p in pads)  # the letterbox really padded

    model = build_model(str(tiny_yaml), nc=2, names=["a", "b"]).eval()
    model.forward = lambda x, targets=None: outputs.pop(0)
    metrics = Validator(args=args).run(model, loader, save_dir=tmp_path)

    stems = sorted(IMAGES)
    gt_boxes = [np.array([b[1:] for b in IMAGES[s][1]], np.float64) for s in stems]
    gt_cls = [np.array([b[0] for b in IMAGES[s][1]]) for s in stems]
    ref = evaluate_coco(gt_boxes, gt_cls, [expected[s][0] for s in stems], [expected[s][1] for s in stems],
                        [expected[s][2] for s in stems], nc=2, names=["a", "b"])
    assert metrics["mAP50-95"] == pytest.approx(ref.map, abs=1e-6)
    assert metrics["mAP50"] == pytest.approx(ref.map50, abs=1e-6)
    assert metrics["mAP75"] == pytest.approx(ref.map75, abs=1e-6)
    assert 0.2 < metrics["mAP50"] < 1.0  # the shifted / missed boxes cost something
    assert fitness(metrics) == pytest.approx(0.1 * ref.map50 + 0.9 * ref.map)

    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert {p["image_id"] for p in preds} == {1, 2, 3}  # numeric stems are COCO image ids
    first = [p for p in preds if p["image_id"] == 1][0]
    x1, y1, x2, y2 = expected["000001"][0][0].tolist()
    assert first["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)  # original pixels, xywh


def test_validator_standalone_on_a_checkpoint(tiny_settings, tmp_path):
    from rtdet.engine.trainer import Trainer

    trainer = Trainer({**tiny_settings, "epochs": 1})
    trainer.train()
    v = Validator({"data": tiny_settings["data"], "project": str(tmp_path / "runs"), "verbose": False,
                   "workers": 0})
    metrics = v(str(trainer.save_dir / "weights" / "best.pt"))
    assert v.args["imgsz"] == 64  # inherited from the checkpoint's training settings
    assert set(metrics) >= {"mAP50-95", "mAP50"} and 0.0 <= metrics["mAP50"] <= 1.0
    assert (v.save_dir / "predictions.json").is_file() and v.save_dir.parent.name == "val"


def test_unreadable_image_is_left_out_never_replaced_and_no_labels_means_unavailable(letterbox_data, tiny_yaml,
                                                                                    tmp_path, caplog):
    """Validation never scores another image in the place of one it cannot decode (issue 8: one image was
    counted twice); and a split without labels reports mAP as unavailable (None), not COCO's -1."""
    from rtdet.data.dataset import DetectionDataset
    from rtdet.data.loader import build_dataloader

    args = resolve_settings({"imgsz": 64, "workers": 0, "verbose": False, "val_pipeline": "plain"}, "rtdetr")
    data = loaders.load_data(letterbox_data)
    loader = loaders.val_loader(data, args, batch_size=2)
    outputs, _ = _controlled_outputs(loader)
    (letterbox_data.parent / "images" / "000002.png").write_bytes(b"overwritten since the check")
    model = build_model(str(tiny_yaml), nc=2, names=["a", "b"]).eval()
    model.forward = lambda x, targets=None: outputs.pop(0)
    v = Validator(args=args)
    metrics = v.run(model, loader)
    assert [Path(f).name for f in v.skipped] == ["000002.png"]
    assert "left out of the metrics: " in caplog.text and "000002.png" in caplog.text
    assert {p["image_id"] for p in v.predictions} == {1, 3}  # image 2 was not replaced by 1 or 3
    assert metrics["mAP50"] is not None

    for f in (letterbox_data.parent / "labels").iterdir():
        f.unlink()
    bare = DetectionDataset(data, "val", 64, "plain", augment=False, cache_dir=False, verbose=False)
    model.forward = lambda x, targets=None: torch.zeros(x.shape[0], 5, 6)
    metrics = Validator(args=args).run(model, build_dataloader(bare, 2, 0, shuffle=False))
    assert metrics["mAP50-95"] is None and metrics["mAP50"] is None and metrics["mAP_large"] is None
    assert fitness(metrics) is None


# ------------------------------------------------------------------ the same validator with a YOLOv9 head
def _as_dense(outputs: list[torch.Tensor], imgsz: int, nc: int = 2) -> list[torch.Tensor]:
    """The controlled [B, k, 6] rows as a YOLO head's eval output [B, 4 + nc, k]: (cx, cy, w, h) in input pixels
    and one-hot class scores; NMS then keeps exactly these boxes (none overlaps another of its class)."""
    dense = []
    for out in outputs:
        boxes = out[..., :4] * imgsz
        scores = torch.nn.functional.one_hot(out[..., 5].long(), nc).float() * out[..., 4:5]
        dense.append(torch.cat([boxes, scores], -1).transpose(1, 2))
    return dense


def test_validator_map_equals_the_metrics_wrapper_with_a_yolo_head(letterbox_data, tiny_yolo_yaml, tmp_path):
    args = resolve_settings({"imgsz": 64, "workers": 0, "verbose": False, "val_pipeline": "plain"}, "yolov9")
    data = loaders.load_data(letterbox_data)
    loader = loaders.val_loader(data, args, batch_size=2)
    outputs, expected = _controlled_outputs(loader)
    dense = _as_dense(outputs, 64)

    model = build_model(str(tiny_yolo_yaml), nc=2, names=["a", "b"]).eval()
    assert model.head.needs_nms
    model.forward = lambda x, targets=None: dense.pop(0)
    metrics = Validator(args=args).run(model, loader, save_dir=tmp_path)

    stems = sorted(IMAGES)
    ref = evaluate_coco([np.array([b[1:] for b in IMAGES[s][1]], np.float64) for s in stems],
                        [np.array([b[0] for b in IMAGES[s][1]]) for s in stems], [expected[s][0] for s in stems],
                        [expected[s][1] for s in stems], [expected[s][2] for s in stems], nc=2, names=["a", "b"])
    assert metrics["mAP50-95"] == pytest.approx(ref.map, abs=1e-6)
    assert metrics["mAP50"] == pytest.approx(ref.map50, abs=1e-6)
    assert 0.2 < metrics["mAP50"] < 1.0


def test_validator_standalone_on_a_yolo_checkpoint(tiny_settings, tiny_yolo_yaml, tmp_path):
    from rtdet.engine.trainer import Trainer

    trainer = Trainer({**tiny_settings, "model": str(tiny_yolo_yaml), "epochs": 1, "nbs": 0})
    trainer.train()
    v = Validator({"data": tiny_settings["data"], "project": str(tmp_path / "runs"), "verbose": False,
                   "workers": 0})
    metrics = v(str(trainer.save_dir / "weights" / "best.pt"))
    assert v.args["imgsz"] == 64 and v.args["iou"] == 0.7 and v.args["box"] == 7.5  # checkpoint + yolov9 recipe
    assert set(metrics) >= {"mAP50-95", "mAP50"} and 0.0 <= metrics["mAP50"] <= 1.0
    assert (v.save_dir / "predictions.json").is_file()


# ------------------------------------------------------------------ predictions.json of a COCO-JSON dataset
@pytest.fixture
def coco_json_data(tmp_path) -> Path:
    """The same three images as a COCO-JSON dataset whose ids are its own: image ids that are not file stems
    (one image in a subfolder), category ids 7 and 3 (class 0 is the lower id, 3)."""
    image_ids, category_ids = {"000001": 101, "000002": 5, "000003": 4000}, {0: 3, 1: 7}
    images, annotations = [], []
    for stem, ((w, h), boxes) in IMAGES.items():
        name = f"sub/{stem}-x.png" if stem == "000003" else f"{stem}-x.png"
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "images" / name), np.full((h, w, 3), 90, np.uint8))
        images.append({"id": image_ids[stem], "file_name": name, "width": w, "height": h})
        for c, x1, y1, x2, y2 in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_ids[stem], "category_id": category_ids[c],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}]}
    (tmp_path / "instances_val.json").write_text(json.dumps(coco))
    (tmp_path / "data.yaml").write_text("path: .\ntrain: {json: instances_val.json, images: images}\n"
                                        "val: {json: instances_val.json, images: images}\nnames: [a, b]\n")
    return tmp_path / "data.yaml"


def test_predictions_json_of_a_coco_dataset_is_scored_by_pycocotools_against_its_own_json(coco_json_data,
                                                                                         tiny_yaml, tmp_path):
    """`rtdet val` on a COCO-JSON dataset writes the dataset's own image and category ids, so pycocotools,
    given the dataset's JSON and predictions.json, finds the same mAP as rtdet (issue 18)."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    settings = {"imgsz": 64, "workers": 0, "verbose": False, "val_pipeline": "plain", "batch": 2}
    loader = loaders.val_loader(loaders.load_data(coco_json_data), resolve_settings(settings, "rtdetr"), 2)
    outputs, _ = _controlled_outputs(loader)
    model = build_model(str(tiny_yaml), nc=2, names=["a", "b"]).eval()
    model.forward = lambda x, targets=None: outputs.pop(0)
    v = Validator({**settings, "data": str(coco_json_data), "project": str(tmp_path / "runs")})
    metrics = v(model)

    preds = json.loads((v.save_dir / "predictions.json").read_text())
    assert {p["image_id"] for p in preds} == {101, 5, 4000} and {p["category_id"] for p in preds} <= {3, 7}
    gt = COCO(str(coco_json_data.parent / "instances_val.json"))
    scored = COCOeval(gt, gt.loadRes(str(v.save_dir / "predictions.json")), "bbox")
    scored.evaluate()
    scored.accumulate()
    scored.summarize()
    assert 0.2 < metrics["mAP50"] < 1.0  # the shifted / missed boxes cost something: not a trivial 1.0
    assert scored.stats[0] == pytest.approx(metrics["mAP50-95"], abs=2e-3)  # bbox rounded to 3 decimals
    assert scored.stats[1] == pytest.approx(metrics["mAP50"], abs=2e-3)
