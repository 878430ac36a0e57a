"""The loader: one batch format for every family, boxes that map back to the labels, epoch switching that
reaches persistent workers, reproducible order and augmentation, DDP sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtdet.data.dataset import DetectionDataset
from rtdet.data.loader import EpochSampler, build_dataloader, collate, unletterbox
from rtdet.data.synthetic import make_synthetic_dataset
from tests.data.datahelpers import rect_sample


@pytest.fixture(scope="module")
def shapes_yaml(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("shapes"), n_train=24, n_val=8, imgsz=96, seed=1)


def assert_batch_contract(batch, B, H, W):
    assert set(batch) == {"img", "batch_idx", "cls", "bboxes", "im_file", "ori_shape", "ratio_pad"}
    assert batch["img"].shape == (B, 3, H, W) and batch["img"].dtype == torch.float32
    assert batch["img"].min() >= 0 and batch["img"].max() <= 1
    n = len(batch["cls"])
    assert batch["batch_idx"].shape == (n,) and batch["batch_idx"].dtype == torch.int64
    assert batch["cls"].dtype == torch.int64 and batch["bboxes"].shape == (n, 4)
    assert batch["bboxes"].dtype == torch.float32
    if n:
        assert (batch["bboxes"] >= 0).all() and (batch["bboxes"] <= 1 + 1e-6).all()
        assert batch["batch_idx"].max() < B
    assert len(batch["im_file"]) == len(batch["ori_shape"]) == len(batch["ratio_pad"]) == B


def test_collate_rgb_normalised_cxcywh_and_padding():
    a = rect_sample(40, 60, [(0, 0, 30, 20, 2)])  # class 2 colour is pure red in BGR (0, 0, 255)
    b = rect_sample(50, 40, [(10, 10, 20, 30, 0), (0, 0, 40, 50, 1)])
    batch = collate([a, b])
    assert_batch_contract(batch, 2, 50, 60)
    assert torch.allclose(batch["img"][0, :, 5, 5], torch.tensor([1.0, 0.0, 0.0]))  # red is channel 0 in RGB
    assert torch.allclose(batch["img"][0, :, 45, 5], torch.full((3,), 114 / 255))  # padded rows
    assert batch["batch_idx"].tolist() == [0, 1, 1] and batch["cls"].tolist() == [2, 0, 1]
    torch.testing.assert_close(batch["bboxes"][0], torch.tensor([15 / 60, 10 / 50, 30 / 60, 20 / 50]))
    empty = collate([rect_sample(8, 8, [])])
    assert empty["bboxes"].shape == (0, 4) and empty["batch_idx"].shape == (0,)


def test_val_batches_map_back_to_the_labels(shapes_yaml):
    ds = DetectionDataset(shapes_yaml, "val", imgsz=64, pipeline="ultralytics", cache_dir=False)
    batch = next(iter(build_dataloader(ds, batch_size=4, shuffle=False)))
    assert_batch_contract(batch, 4, 64, 64)
    for i in range(4):
        k = ds.im_files.index(batch["im_file"][i])
        cls_, gt = ds.ground_truth(k)
        sel = batch["batch_idx"] == i
        xywh = batch["bboxes"][sel] * 64
        xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        torch.testing.assert_close(unletterbox(xyxy, batch["ratio_pad"][i]), torch.from_numpy(gt), atol=1e-3,
                                   rtol=0)
        assert batch["cls"][sel].tolist() == cls_.tolist() and batch["ori_shape"][i] == (96, 96)


def test_same_seed_same_batches_any_worker_count(shapes_yaml):
    def first_two(workers, seed):
        ds = DetectionDataset(shapes_yaml, "train", imgsz=64, pipeline="ultralytics", epochs=10, seed=seed,
                              cache_dir=False, verbose=False)
        loader = build_dataloader(ds, batch_size=4, workers=workers, seed=seed)
        loader.set_epoch(3)
        it = iter(loader)
        return [next(it) for _ in range(2)]

    a, b, c = first_two(0, 5), first_two(2, 5), first_two(0, 6)
    for x, y in zip(a, b):
        assert x["im_file"] == y["im_file"]
        assert torch.equal(x["img"], y["img"]) and torch.equal(x["bboxes"], y["bboxes"])
    assert a[0]["im_file"] != c[0]["im_file"] or not torch.equal(a[0]["img"], c[0]["img"])
    assert_batch_contract(a[0], 4, 64, 64)


def test_set_epoch_switches_the_pipeline_in_persistent_workers(shapes_yaml):
    spec = {"train": [{"name": "LetterBox"}, {"name": "RandomFlip", "p": 1.0}],
            "stages": [{"at": 1, "drop": ["RandomFlip"]}]}
    ds = DetectionDataset(shapes_yaml, "train", imgsz=96, pipeline=spec, epochs=2, cache_dir=False, verbose=False)
    loader = build_dataloader(ds, batch_size=24, workers=2, shuffle=False)
    gt = np.concatenate([ds.ground_truth(i)[1] for i in range(len(ds))]) / 96
    for epoch, flipped in ((0, True), (1, False), (0, True)):
        loader.set_epoch(epoch)
        b = next(iter(loader))["bboxes"].numpy()
        cx = 1 - b[:, 0] if flipped else b[:, 0]
        np.testing.assert_allclose(cx, (gt[:, 0] + gt[:, 2]) / 2, atol=1e-5)


def test_epoch_sampler_shuffles_per_epoch_and_shards_for_ddp():
    data = list(range(10))
    s = EpochSampler(data, shuffle=True, seed=0)
    s.set_epoch(0)
    e0 = [i for _, i in s]
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(e0) == data and e0 != [i for _, i in e1] and all(e == 1 for e, _ in e1)
    shards = []
    for rank in range(2):
        d = EpochSampler(data, shuffle=True, seed=0, rank=rank, world_size=2)
        d.set_epoch(4)
        shards.append([i for _, i in d])
    assert len(shards[0]) == len(shards[1]) == 5 and sorted(shards[0] + shards[1]) == data


def test_coco128_loader(coco128, tmp_path):
    val = DetectionDataset(coco128 / "data.yaml", "val", 640, pipeline="ultralytics", cache_dir=tmp_path, verbose=False)
    loader = build_dataloader(val, batch_size=8, shuffle=False)
    batch = next(iter(loader))
    assert_batch_contract(batch, 8, 640, 640)
    for i in range(8):
        k = val.im_files.index(batch["im_file"][i])
        cls_, gt = val.ground_truth(k)
        assert batch["ori_shape"][i] == tuple(int(v) for v in val.labels.shapes[k])
        xywh = batch["bboxes"][batch["batch_idx"] == i] * 640
        xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        torch.testing.assert_close(unletterbox(xyxy, batch["ratio_pad"][i]), torch.from_numpy(gt), atol=2e-3, rtol=0)
    for pipeline in ("ultralytics", "rtmdet", "rtdetr"):
        train = DetectionDataset(coco128 / "data.yaml", "train", 640, pipeline=pipeline, epochs=100, cache_dir=tmp_path,
                                 verbose=False)
        batch = next(iter(build_dataloader(train, batch_size=4, seed=0)))
        assert_batch_contract(batch, 4, 640, 640)
        assert len(batch["cls"]) > 0
