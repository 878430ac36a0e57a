"""Predictor: boxes come back in the image's own pixels; every kind of source; saved outputs."""

import json

import cv2
import numpy as np
import pytest
import torch

from rtdet.engine.predictor import Predictor, iter_source
from rtdet.engine.results import Results
from rtdet.engine.settings import SettingsError
from rtdet.io.load import build_model


def _model_predicting(tiny_yaml, box_xyxy_in: list[float], imgsz: int, score: float = 0.9, cls: int = 1):
    """A real model whose eval output is fixed: one box (input pixels), the rest of the top-k empty."""
    model = build_model(str(tiny_yaml), nc=2, names=["a", "b"]).eval()
    x1, y1, x2, y2 = (v / imgsz for v in box_xyxy_in)
    row = torch.tensor([[(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, score, cls]])

    def head_forward(feats, targets=None):  # the network runs for real; only the head's answer is fixed
        return torch.cat([row, torch.zeros(3, 6)])[None].expand(feats[0].shape[0], -1, -1)

    model.head.forward = head_forward
    return model


@pytest.mark.parametrize("pipeline", ["plain", "rtdetr"], ids=["letterbox", "stretch"])
def test_boxes_are_mapped_back_to_original_pixels(tiny_yaml, pipeline):
    h0, w0, imgsz = 60, 120, 64
    target = np.array([30.0, 15.0, 90.0, 45.0])  # where the object is in the original image
    if pipeline == "plain":  # letterbox: scale 64/120, 16 px padding above and below
        r = imgsz / w0
        box_in = [target[0] * r, target[1] * r + 16, target[2] * r, target[3] * r + 16]
    else:  # stretch: x by 64/120, y by 64/60
        box_in = [target[0] * imgsz / w0, target[1] * imgsz / h0, target[2] * imgsz / w0, target[3] * imgsz / h0]
    model = _model_predicting(tiny_yaml, box_in, imgsz)
    image = np.full((h0, w0, 3), 100, np.uint8)
    results = Predictor({"imgsz": imgsz, "train_pipeline": pipeline, "save": False, "verbose": False},
                        model=model)(image)
    assert len(results) == 1 and len(results[0]) == 1
    r = results[0]
    assert r.boxes[0].tolist() == pytest.approx(target.tolist(), abs=0.5)
    assert r.labels.tolist() == [1] and r.scores[0] == pytest.approx(0.9)
    assert r.orig_shape == (h0, w0)
    drawn = r.plot()
    assert drawn.shape == image.shape and (drawn != image).any() and (image == 100).all()  # a copy
    item = json.loads(r.to_json())[0]
    assert item["name"] == "b" and item["box"]["x1"] == pytest.approx(30.0, abs=0.5)


def test_conf_and_max_det_filter(tiny_yaml):
    model = _model_predicting(tiny_yaml, [10, 10, 30, 30], 64, score=0.3)
    image = np.zeros((64, 64, 3), np.uint8)
    assert len(Predictor({"imgsz": 64, "conf": 0.5, "save": False}, model=model)(image)[0]) == 0
    assert len(Predictor({"imgsz": 64, "conf": 0.2, "save": False}, model=model)(image)[0]) == 1
    for bad in ({"max_det": 0}, {"max_det": -5}, {"conf": 2}):  # refused before anything runs
        with pytest.raises(SettingsError, match=next(iter(bad))):
            Predictor({"imgsz": 64, **bad, "save": False}, model=model)


@pytest.fixture
def media(tmp_path):
    """A folder with two images and a 5-frame video."""
    folder = tmp_path / "media"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), np.full((40, 80, 3), 50, np.uint8))
    cv2.imwrite(str(folder / "b.png"), np.full((70, 30, 3), 150, np.uint8))
    writer = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (48, 32))
    for k in range(5):
        writer.write(np.full((32, 48, 3), 40 * k, np.uint8))
    writer.release()
    (folder / "notes.txt").write_text("not media")
    return folder


def test_sources(media):
    def kinds(source):
        return [(f.path.split("/")[-1], f.frame) for f in iter_source(source)]

    assert kinds(media) == [("a.jpg", None), ("b.png", None)] + [("clip.mp4", k) for k in range(5)]
    assert kinds(str(media / "*.jpg")) == [("a.jpg", None)]
    assert kinds([str(media / "b.png"), np.zeros((8, 8, 3), np.uint8)]) == [("b.png", None), ("image0.jpg", None)]
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        list(iter_source(str(media / "nope.jpg")))
    (media / "notes.md").write_text("not media")
    with pytest.raises(ValueError, match="unknown file type"):
        list(iter_source(str(media / "notes.md")))
    with pytest.raises(ValueError, match="notes.txt:1: source .*not media"):  # a .txt is a list of sources
        list(iter_source(str(media / "notes.txt")))
    with pytest.raises(ValueError, match="HWC uint8"):
        list(iter_source(np.zeros((3, 8, 8), np.float32)))


def test_saves_pictures_video_txt_and_json(tiny_yaml, media, tmp_path):
    model = _model_predicting(tiny_yaml, [8, 8, 40, 40], 64)
    predictor = Predictor({"imgsz": 64, "save": True, "save_txt": True, "save_json": True, "project": str(tmp_path),
                           "batch": 3, "verbose": False}, model=model)
    results = predictor(media)
    assert len(results) == 7 and all(isinstance(r, Results) for r in results)
    out = predictor.save_dir
    assert out == tmp_path / "predict" / "predict"
    assert (out / "a.jpg").is_file() and (out / "b.png").is_file()
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()
    txt = (out / "labels" / "a.txt").read_text().split()
    assert len(txt) == 6 and txt[0] == "1" and 0 < float(txt[1]) < 1  # class cx cy w h score, normalised
    assert (out / "labels" / "clip_4.txt").is_file()
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds) == 7 and {"image_id", "category_id", "bbox", "score"} <= set(preds[0])


@pytest.mark.slow
def test_boxes_land_on_the_objects_after_a_short_overfit(tmp_path):
    """Overfit the demo model on one batch of two synthetic images, then predict on one of them from its
    file: every labelled shape must be found (same class, IoU >= 0.5) at its place in the original pixels."""
    from rtdet.data.synthetic import make_synthetic_dataset
    from rtdet.engine.trainer import Trainer
    from rtdet.ops.boxes import pairwise_iou

    data = make_synthetic_dataset(tmp_path / "data", n_train=2, n_val=2, imgsz=160, n_classes=2, seed=3,
                                  min_objects=2, max_objects=3, size_range=(0.25, 0.45))
    steps = 150
    trainer = Trainer({"model": "rtdetr-demo.yaml", "data": str(data), "imgsz": 128, "batch": 2, "epochs": steps,
                       "workers": 0, "lr0": 1e-3, "warmup_iters": 10, "scheduler": "cosine", "lrf": 0.1,
                       "clip_grad": 1.0, "backbone_lr_ratio": 1.0, "train_pipeline": [{"name": "LetterBox"}],
                       "project": str(tmp_path / "runs"), "verbose": False})
    trainer.setup()
    batch = next(iter(trainer.train_loader))
    for _ in range(steps):
        trainer.train_step(batch)

    image = tmp_path / "data" / "images" / "train" / "000000.jpg"
    rows = np.loadtxt(tmp_path / "data" / "labels" / "train" / "000000.txt", ndmin=2)
    gt = torch.tensor(np.concatenate([rows[:, 1:3] - rows[:, 3:5] / 2, rows[:, 1:3] + rows[:, 3:5] / 2], 1) * 160,
                      dtype=torch.float32)  # original pixels (the image is 160 x 160, the network sees 128)
    r = Predictor({"imgsz": 128, "train_pipeline": "plain", "conf": 0.3, "save": False},
                  model=trainer.model)(str(image))[0]
    iou = pairwise_iou(gt, r.boxes)
    same_class = torch.tensor(rows[:, 0]).long()[:, None] == r.labels[None]
    assert ((iou >= 0.5) & same_class).any(1).all(), (gt, r.boxes, r.labels, r.scores)


def test_fused_channels_last_prediction_matches_and_leaves_the_callers_model_alone(tiny_yaml):
    torch.manual_seed(0)
    model = build_model(str(tiny_yaml), nc=2, names=["a", "b"]).eval()
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    settings = {"imgsz": 64, "conf": 0.0, "max_det": 20, "save": False, "verbose": False}
    plain = Predictor({**settings, "fuse": False, "channels_last": False}, model=model)(image)[0]
    fast = Predictor({**settings, "fuse": True, "channels_last": True}, model=model)(image)[0]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # not fused in place
    assert next(model.parameters()).is_contiguous()
    torch.testing.assert_close(fast.scores, plain.scores, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------ the same predictor with a YOLOv9 head
def _yolo_predicting(tiny_yolo_yaml, box_xyxy_in: list[float], score: float = 0.9, cls: int = 1):
    """A real YOLOv9 model whose head answers one dense prediction per anchor: the given box (input pixels) with
    `score` on class `cls` at one anchor, copies of it at low score elsewhere (NMS must remove them)."""
    model = build_model(str(tiny_yolo_yaml), nc=2, names=["a", "b"]).eval()
    x1, y1, x2, y2 = box_xyxy_in

    def head_forward(feats, targets=None):
        b, n = feats[0].shape[0], sum(f.shape[2] * f.shape[3] for f in feats[2:])
        dense = torch.zeros(b, 6, n)
        dense[:, :4] = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])[None, :, None]
        dense[:, 4 + cls] = 0.3
        dense[:, 4 + cls, 0] = score
        return dense, dense

    model.head.forward = head_forward
    return model


def test_yolo_boxes_are_mapped_back_to_original_pixels_after_nms(tiny_yolo_yaml):
    h0, w0, imgsz = 60, 120, 64
    target = np.array([30.0, 15.0, 90.0, 45.0])
    r = imgsz / w0  # letterbox: scale 64/120, 16 px padding above and below
    model = _yolo_predicting(tiny_yolo_yaml, [target[0] * r, target[1] * r + 16, target[2] * r, target[3] * r + 16])
    image = np.full((h0, w0, 3), 100, np.uint8)
    results = Predictor({"imgsz": imgsz, "train_pipeline": "plain", "save": False, "verbose": False, "fuse": False},
                        model=model)(image)
    assert len(results[0]) == 1  # the copies are suppressed
    assert results[0].boxes[0].tolist() == pytest.approx(target.tolist(), abs=0.5)
    assert results[0].labels.tolist() == [1] and results[0].scores[0] == pytest.approx(0.9)
    assert len(Predictor({"imgsz": imgsz, "conf": 0.95, "save": False, "fuse": False}, model=model)(image)[0]) == 0


def test_yolo_prediction_runs_the_deployed_model_and_matches(tiny_yolo_yaml):
    """fuse=true predicts with the inference form (PGI branch dropped, BN folded): the same detections."""
    from rtdet.engine.predictor import prepare_for_inference
    from rtdet.nn.heads.yolo import DDetect

    torch.manual_seed(0)
    model = build_model(str(tiny_yolo_yaml), nc=2, names=["a", "b"]).eval()
    with torch.no_grad():
        for branch in (*model.head.cv4, *model.head.cv5):  # distinct scores and boxes, many above conf
            branch[-1].weight.normal_(0, 0.3)
            branch[-1].bias.normal_(0, 1)
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    settings = {"imgsz": 64, "conf": 0.05, "max_det": 50, "save": False, "verbose": False}
    plain = Predictor({**settings, "fuse": False, "channels_last": False}, model=model)(image)[0]
    fast = Predictor({**settings, "fuse": True, "channels_last": True}, model=model)(image)[0]
    assert isinstance(prepare_for_inference(model, True, False).head, DDetect)
    assert len(plain) > 5 and len(fast) == len(plain)
    torch.testing.assert_close(fast.scores, plain.scores, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(fast.boxes, plain.boxes, rtol=1e-3, atol=1e-2)


# ------------------------------------------------------------------ the same predictor with an RTMDet head
def test_rtmdet_predictions_are_clipped_thinned_by_nms_and_mapped_back(rtmdet_yaml):
    """A dense head's answer goes through its decode (clip to the input) and class-aware NMS."""
    from rtdet.nn.heads.rtmdet import RTMDetPredictions

    model = build_model(str(rtmdet_yaml), nc=2, names=["a", "b"]).eval()
    h0, w0, imgsz = 60, 120, 64  # letterbox: scale 64/120, 16 px above and below (centred "plain" letterbox)
    boxes = torch.tensor([[10.0, 20.0, 40.0, 40.0], [11.0, 20.0, 40.0, 41.0], [50.0, 30.0, 80.0, 44.0]])
    scores = torch.tensor([[0.1, 0.9], [0.1, 0.8], [0.7, 0.0]])  # the second duplicates the first

    def head_forward(feats, targets=None):
        return RTMDetPredictions(boxes[None].expand(feats[0].shape[0], -1, -1), scores[None].expand(
            feats[0].shape[0], -1, -1))

    model.head.forward = head_forward
    image = np.full((h0, w0, 3), 100, np.uint8)
    r = Predictor({"imgsz": imgsz, "train_pipeline": "plain", "conf": 0.25, "iou": 0.65, "save": False,
                   "verbose": False}, model=model)(image)[0]
    assert r.labels.tolist() == [1, 0] and r.scores.tolist() == pytest.approx([0.9, 0.7])
    r_in = imgsz / w0
    assert r.boxes[0].tolist() == pytest.approx([10 / r_in, (20 - 16) / r_in, 40 / r_in, (40 - 16) / r_in], abs=0.5)
    assert r.boxes[1, 2] == pytest.approx(w0, abs=0.5)  # clipped at the input's right edge (x 64), then mapped


def test_rtmdet_fused_channels_last_model_gives_the_same_outputs(rtmdet_yaml):
    """What predict runs (BN folded, shared head convs fused per level, NHWC) equals the trained graph."""
    from rtdet.engine.predictor import prepare_for_inference

    torch.manual_seed(0)
    model = build_model(str(rtmdet_yaml), nc=2, names=["a", "b"]).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.8, 1.2)
    fast = prepare_for_inference(model, fuse=True, channels_last=True)  # a fused copy
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        a, b = model(x), fast(x)
    torch.testing.assert_close(b.scores, a.scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.boxes, a.boxes, rtol=1e-4, atol=1e-3)
