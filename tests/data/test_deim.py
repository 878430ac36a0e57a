"""DEIM's dense one-to-one data schedule: DEIMMosaic's geometry and probability, the loader's batch MixUp,
the deim / dfine pipelines' stages around the policy epochs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from rtdet.data.batching import BatchMixUp, BatchSchedule, build_batch_transform
from rtdet.data.dataset import DetectionDataset
from rtdet.data.loader import BatchCollate, build_dataloader, collate
from rtdet.data.mixing import DEIMMosaic, shorter_side_to
from rtdet.data.pipelines import (
    PipelineSchedule,
    build_batch_schedule,
    load_pipeline_spec,
)
from rtdet.data.transforms import SKIP_KEY, Compose, PipelineConfigError, Transform, ZoomOut
from tests.data.datahelpers import ListDataset, assert_boxes_frame_colours, make_yolo_dataset, rect_sample

IDENTITY = {"degrees": 0.0, "translate": (0.0, 0.0), "scale": (1.0, 1.0)}


@pytest.fixture
def mixed_sizes() -> ListDataset:
    """Four images of different sizes and orientations, one or two rectangles each, eight classes."""
    specs = [((120, 160), [(10, 12, 60, 70, 0), (90, 30, 150, 100, 1)]),
             ((200, 100), [(5, 5, 60, 90, 2), (20, 120, 90, 190, 3)]),
             ((160, 160), [(30, 20, 120, 60, 4)]),
             ((90, 200), [(100, 10, 180, 80, 5), (10, 10, 60, 50, 6)])]
    return ListDataset([rect_sample(h, w, r, f"img{k}.jpg") for k, ((h, w), r) in enumerate(specs)])


# ------------------------------------------------------------------------------------------ DEIMMosaic
def test_shorter_side_becomes_output_size_and_boxes_follow(mixed_sizes):
    for k in range(len(mixed_sizes)):
        s = mixed_sizes.load_sample(k)
        h, w = s["img"].shape[:2]
        out = shorter_side_to(s, 320)
        oh, ow = out["img"].shape[:2]
        assert min(oh, ow) == 320
        assert max(oh, ow) == int(320 * max(h, w) / min(h, w))  # torchvision Resize(int)'s long side
        assert_boxes_frame_colours(out, tight_tol=2.0)
        assert s["img"].shape == (h, w, 3)  # the input is not resized in place


def test_tile_pastes_four_images_on_a_canvas_of_twice_the_largest_sides(mixed_sizes):
    t = DEIMMosaic(**IDENTITY)
    parts = [shorter_side_to(mixed_sizes.load_sample(k), 320) for k in range(4)]
    mh = max(p["img"].shape[0] for p in parts)  # 640: the 200 x 100 portrait image
    mw = max(p["img"].shape[1] for p in parts)  # 711: the 90 x 200 landscape image
    board = t.tile(parts)
    assert (mh, mw) == (640, 711) and board["img"].shape == (2 * mh, 2 * mw, 3)
    assert len(board["cls"]) == 7 and board["ratio_pad"] is None
    # each image at the top-left corner of its quadrant; the rest of the canvas is the fill (0)
    for p, (x0, y0) in zip(parts, [(0, 0), (mw, 0), (0, mh), (mw, mh)], strict=True):
        h, w = p["img"].shape[:2]
        assert np.array_equal(board["img"][y0:y0 + h, x0:x0 + w], p["img"])
    assert not board["img"][:mh, 427:mw].any()  # right of the first image (320 x 426)
    assert_boxes_frame_colours(board, tight_tol=2.0)


def test_mosaic_affine_moves_boxes_with_the_drawn_rectangles():
    # shorter sides already 320 (no resize blur at the edges), so only the affine moves the rectangles
    specs = [((320, 400), [(20, 30, 150, 170, 0), (240, 90, 390, 300, 1)]), ((480, 320), [(10, 10, 150, 220, 2)]),
             ((320, 320), [(60, 40, 300, 160, 3), (30, 200, 120, 310, 4)]), ((320, 560), [(300, 20, 540, 200, 5)])]
    ds = ListDataset([rect_sample(h, w, r, f"img{k}.jpg") for k, ((h, w), r) in enumerate(specs)])
    t = DEIMMosaic(p=1.0)  # DEIM's affine: rotation 10, translation 0.1, scale 0.5-1.5
    Compose([t]).bind(ds)
    grew, checked = False, 0
    for seed in range(12):
        t.rng = np.random.default_rng(seed)
        src = ds.load_sample(0)
        out = t(src)
        h, w = out["img"].shape[:2]
        assert h % 2 == 0 and w % 2 == 0 and min(h, w) >= 2 * 320  # the canvas keeps its size through the affine
        assert out["ratio_pad"] is None and out[SKIP_KEY] == ("ZoomOut", "IoUCrop")
        # nearest-neighbour warp keeps the colours exact: every box inside the canvas frames its rectangle's
        # pixels; a box cut by the border holds its pixels too, but a steep rotated edge crosses a whole
        # pixel column there, so pixel centres can sit several pixels inside its continuous bounds
        b = out["bboxes"]
        inside = np.nonzero((b[:, 0] > 0) & (b[:, 1] > 0) & (b[:, 2] < w) & (b[:, 3] < h))[0]
        assert_boxes_frame_colours(out, tight_tol=2.5, only=inside)
        checked += len(inside)
        assert_boxes_frame_colours(out, tight_tol=12.0)
        grew |= len(out["cls"]) > 2
        assert src["img"].shape == (320, 400, 3)
    assert grew and checked > 40


def test_mosaic_affine_matches_a_hand_computed_box():
    # one image, partners identical: a 40 x 20 rectangle at (40, 60) of a 320 x 320 image
    img = rect_sample(320, 320, [(40, 60, 80, 80, 0)])
    ds = ListDataset([img])
    t = DEIMMosaic(p=1.0, degrees=0.0, translate=(0.0, 0.0), scale=(0.5, 0.5))
    Compose([t]).bind(ds)
    t.rng = np.random.default_rng(0)
    out = t(ds.load_sample(0))
    # canvas 640 x 640, scaled by 0.5 about (320, 320): x -> 320 + (x - 320) / 2
    expect = np.array([[160 + x1 / 2, 160 + y1 / 2, 160 + x2 / 2, 160 + y2 / 2]
                       for x1, y1, x2, y2 in [(40, 60, 80, 80), (360, 60, 400, 80), (40, 380, 80, 400),
                                              (360, 380, 400, 400)]], np.float32)
    assert out["img"].shape == (640, 640, 3)
    np.testing.assert_allclose(out["bboxes"], expect, atol=1e-4)
    assert_boxes_frame_colours(out, tight_tol=1.0)


def test_mosaic_probability_with_a_seeded_generator(four_images):
    def applied(p: float, seed: int, n: int = 400) -> list[bool]:
        t = DEIMMosaic(p=p, **IDENTITY)
        Compose([t]).bind(four_images)
        t.rng = np.random.default_rng(seed)
        return [t(four_images.load_sample(i % 4))["img"].shape != (120, 160, 3) for i in range(n)]

    half = applied(0.5, 0)
    assert 0.42 < np.mean(half) < 0.58
    assert half == applied(0.5, 0)  # the same generator, the same decisions
    assert half != applied(0.5, 1)
    assert not any(applied(0.0, 0, 50)) and all(applied(1.0, 0, 50))


class Seen(Transform):
    """Marks the samples it sees (stands for a transform a mosaic sample skips)."""

    def __call__(self, sample: dict) -> dict:
        sample["seen"] = True
        return sample


def test_a_mosaic_sample_skips_zoomout_and_iou_crop(four_images):
    pipe = Compose([DEIMMosaic(p=0.5, skip=("ZoomOut", "Seen"), **IDENTITY), ZoomOut(side_range=(2.0, 2.0), p=1.0),
                    Seen()]).bind(four_images)
    kinds = Counter()
    for seed in range(40):
        pipe.reseed(seed)
        out = pipe(four_images.load_sample(seed % 4))
        if out["img"].shape == (640, 852, 3):  # mosaic of four 120 x 160 images (320 x 426 each), not zoomed
            assert "seen" not in out
            kinds["mosaic"] += 1
        else:
            assert out["img"].shape == (240, 320, 3) and out["seen"]  # zoomed out x 2, no mosaic
            kinds["plain"] += 1
    assert kinds["mosaic"] > 5 and kinds["plain"] > 5


# ------------------------------------------------------------------------------------------ batch MixUp
def _batch(normalize: bool = True) -> tuple[dict, list[dict]]:
    samples = [rect_sample(64, 80, [(4, 4, 20, 30, 0)]), rect_sample(64, 80, [(30, 10, 70, 50, 1), (2, 40, 12, 60, 2)]),
               rect_sample(64, 80, []), rect_sample(64, 80, [(50, 5, 78, 25, 3)])]
    return collate(samples, normalize), samples


def test_batch_mixup_blends_each_image_with_its_neighbour():
    batch, _ = _batch()
    out = BatchMixUp(p=1.0)(dict(batch), np.random.default_rng(0))
    img, prev = batch["img"], batch["img"].roll(1, 0)
    differ = (img - prev).abs() > 0.1
    beta = ((out["img"] - prev)[differ] / (img - prev)[differ])
    assert torch.allclose(beta, beta[0], atol=1e-4) and 0.45 <= float(beta[0]) <= 0.55
    same = ~differ
    assert torch.allclose(out["img"][same], img[same], atol=1e-6)
    assert out["ratio_pad"] == [None] * 4


def test_batch_mixup_keeps_every_target_and_adds_the_neighbours():
    batch, _ = _batch()
    out = BatchMixUp(p=1.0)(dict(batch), np.random.default_rng(0))
    n = len(batch["cls"])
    assert len(out["cls"]) == 2 * n and len(out["bboxes"]) == 2 * n
    assert torch.equal(out["batch_idx"], out["batch_idx"].sort().values)  # grouped by image

    def rows(b, i):
        m = b["batch_idx"] == i
        return [(int(c), tuple(round(float(v), 6) for v in box)) for c, box in zip(b["cls"][m], b["bboxes"][m],
                                                                                    strict=True)]

    for i in range(4):
        own, prev = rows(batch, i), rows(batch, (i - 1) % 4)
        assert rows(out, i) == own + prev  # its own boxes first, then the rolled neighbour's


def test_batch_mixup_probability_uint8_and_single_image():
    batch, _ = _batch(normalize=False)
    hits = [BatchMixUp(p=0.5)(dict(batch), np.random.default_rng(s))["cls"].numel() > batch["cls"].numel()
            for s in range(200)]
    assert 0.4 < np.mean(hits) < 0.6
    kept = BatchMixUp(p=0.0)(dict(batch), np.random.default_rng(0))
    assert all(kept[k] is batch[k] for k in batch)
    # uint8 batches (what loader workers send) are blended in float and rounded
    mixed = BatchMixUp(p=1.0)(dict(batch), np.random.default_rng(0))
    assert mixed["img"].dtype == torch.uint8
    ref = BatchMixUp(p=1.0)({**batch, "img": batch["img"].float()}, np.random.default_rng(0))["img"]
    assert (mixed["img"].float() - ref).abs().max() <= 0.5 + 1e-4
    one = collate([rect_sample(32, 32, [(1, 1, 9, 9, 0)])])
    alone = BatchMixUp(p=1.0)(dict(one), np.random.default_rng(0))
    assert all(alone[k] is one[k] for k in one)


def test_batch_transforms_are_built_by_name_and_checked():
    assert isinstance(build_batch_transform({"name": "BatchMixUp", "p": 0.5}), BatchMixUp)
    with pytest.raises(PipelineConfigError, match="unknown batch transform 'Mosaic'"):
        build_batch_transform({"name": "Mosaic"})
    with pytest.raises(PipelineConfigError, match="unknown argument"):
        build_batch_transform({"name": "BatchMixUp", "alpha": 1})
    with pytest.raises(PipelineConfigError):
        build_batch_transform({"name": "BatchMixUp", "beta_range": [0.6, 0.4]})


def test_batch_schedule_follows_the_samples_epoch_and_is_seeded():
    sched = BatchSchedule([(0, []), (2, [BatchMixUp(p=1.0)]), (4, [])], seed=0)
    batch, samples = _batch()
    for epoch, mixes in ((0, False), (1, False), (2, True), (3, True), (4, False)):
        stamped = [{**s, "epoch": epoch, "index": k} for k, s in enumerate(samples)]
        out = BatchCollate(sched)(stamped)
        assert (len(out["cls"]) == 2 * len(batch["cls"])) == mixes
    stamped = [{**s, "epoch": 2, "index": k} for k, s in enumerate(samples)]
    assert torch.equal(BatchCollate(sched)(stamped)["img"], BatchCollate(sched)(stamped)["img"])


def test_loader_applies_the_pipeline_batch_mixup(tmp_path):
    labels = {f"im{k}": f"{k % 3} 0.5 0.5 0.25 0.25\n" for k in range(4)}
    data = make_yolo_dataset(tmp_path / "ds", labels)
    spec = {"train": [{"name": "Resize"}], "batch": [{"name": "BatchMixUp", "p": 1.0}],
            "stages": [{"at": 1, "drop": ["BatchMixUp"]}], "val": [{"name": "Resize"}]}
    ds = DetectionDataset(data, "train", imgsz=64, pipeline=spec, epochs=2, cache_dir=False, verbose=False)
    for workers in (0, 1):
        loader = build_dataloader(ds, batch_size=4, workers=workers, shuffle=True, seed=0, persistent_workers=False)
        assert isinstance(loader.collate_fn, BatchCollate)
        counts = []
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            (batch,) = list(loader)
            assert batch["img"].dtype == torch.float32 and batch["img"].shape == (4, 3, 64, 64)
            counts.append(torch.bincount(batch["batch_idx"], minlength=4).tolist())
        assert counts == [[2, 2, 2, 2], [1, 1, 1, 1]]  # mixed in epoch 0, the stage drops it at epoch 1
    val = DetectionDataset(data, "val", imgsz=64, pipeline=spec, cache_dir=False, verbose=False)
    assert val.batch_schedule is None
    assert not isinstance(build_dataloader(val, batch_size=4, shuffle=False).collate_fn, BatchCollate)


# ------------------------------------------------------------------------------------------ the schedules
def active(name: str, epochs: int, epoch: int) -> tuple[list[str], list[str]]:
    spec = load_pipeline_spec(name)
    train = PipelineSchedule.from_spec(spec, 320, epochs).for_epoch(epoch).names
    batch = [type(t).__name__ for t in build_batch_schedule(spec, epochs).for_epoch(epoch)]
    return train, batch


PLAIN = ["FilterBoxes", "RandomFlip", "Resize", "FilterBoxes"]
DFINE = ["PhotometricDistort", "ZoomOut", "IoUCrop"] + PLAIN


@pytest.mark.parametrize("epochs, policy", [(132, (4, 64, 120)), (102, (4, 49, 93)), (160, (4, 78, 145)),
                                            (58, (4, 28, 53)), (20, (4, 10, 18))])
def test_deim_stages_around_the_policy_epochs(epochs, policy):
    e1, e2, e3 = policy  # DEIM-D-FINE-S exact; other lengths: e2, e3 at the same fractions (64 / 132, 120 / 132)
    for epoch in (0, e1 - 1, e3, epochs - 1):
        assert active("deim", epochs, epoch) == (PLAIN, [])
    for epoch in (e1, e2 - 1):
        assert active("deim", epochs, epoch) == (["DEIMMosaic"] + DFINE, ["BatchMixUp"])
    for epoch in (e2, e3 - 1):
        assert active("deim", epochs, epoch) == (DFINE, [])


def test_deim_very_short_runs_still_end_plain():
    # 7 epochs: e2 = round(3.39) = 3 falls before e1 = 4, so mosaic starts at 4; e3 = 6 lists its transforms in full
    assert active("deim", 7, 3) == (PLAIN, [])
    assert active("deim", 7, 4) == (["DEIMMosaic"] + DFINE, ["BatchMixUp"])
    assert active("deim", 7, 6) == (PLAIN, [])


def test_dfine_pipeline_stops_its_augmentation_with_the_multi_scale_stop():
    assert active("dfine", 132, 119) == (DFINE, []) and active("dfine", 132, 120) == (PLAIN, [])
    assert active("dfine", 80, 72) == (DFINE, []) and active("dfine", 80, 73) == (PLAIN, [])


def test_pipelines_load_and_their_stages_are_checked():
    for name in ("deim", "dfine"):
        spec = load_pipeline_spec(name)
        assert spec.name == name and [t["name"] for t in spec.val] == ["Resize"]
        PipelineSchedule.from_spec(spec, 640, 132, augment=False)
    assert load_pipeline_spec("deim").stages[0]["batch"] == [{"name": "BatchMixUp", "p": 0.5,
                                                              "beta_range": [0.45, 0.55]}]
    only_batch = load_pipeline_spec({"train": [{"name": "Resize"}], "stages": [{"at": 2, "batch": []}]})
    assert only_batch.train_stages(5) == [(0, [{"name": "Resize"}]), (2, [{"name": "Resize"}])]
    with pytest.raises(PipelineConfigError, match="stages\\[0\\]"):
        load_pipeline_spec({"train": [{"name": "Resize"}], "stages": [{"at": 2, "train": [], "drop": []}]})
    with pytest.raises(PipelineConfigError, match="batch"):
        load_pipeline_spec({"train": [{"name": "Resize"}], "batch": {"name": "BatchMixUp"}})
