"""DetectionDataset: samples in pixels of the loaded image, fast reduced JPEG decoding that keeps boxes
aligned, the in-memory image cache, and the fraction option."""

from __future__ import annotations

import numpy as np

from rtdet.data.dataset import DetectionDataset
from tests.data.datahelpers import make_yolo_dataset

# write_image draws a red block over x in [w/4, w/2), y in [h/4, h/2)
BLOCK = "0 0.375 0.375 0.25 0.25\n"


def red_extent(img):
    ys, xs = np.nonzero((img[..., 2] > 160) & (img[..., 1] < 90))
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_load_sample_and_reduced_decode_keep_boxes_on_the_block(tmp_path):
    y = make_yolo_dataset(tmp_path / "ds", {"big": BLOCK}, h=480, w=640)
    full = DetectionDataset(y, "train", 64, pipeline="plain", augment=False, cache_dir=False).load_sample(0)
    assert full["img"].shape == (480, 640, 3) and full["ori_shape"] == (480, 640)
    np.testing.assert_allclose(full["bboxes"][0], [160, 120, 320, 240])
    np.testing.assert_allclose(red_extent(full["img"]), full["bboxes"][0], atol=1)
    # training with load_size 64: 640x480 decoded at 1/8 (80x60) by libjpeg, then resized to 64x48
    small = DetectionDataset(y, "train", 64, pipeline="ultralytics", cache_dir=False).load_sample(0)
    assert small["img"].shape == (48, 64, 3) and small["ori_shape"] == (480, 640)
    assert small["ratio_pad"] == ((0.1, 0.1), (0.0, 0.0))
    np.testing.assert_allclose(small["bboxes"][0], [16, 12, 32, 24], atol=1e-4)
    np.testing.assert_allclose(red_extent(small["img"]), small["bboxes"][0], atol=1)


def test_cached_images_give_the_same_samples_and_fraction_limits(tmp_path):
    y = make_yolo_dataset(tmp_path / "ds", {f"i{k}": BLOCK for k in range(4)})
    plain = DetectionDataset(y, "train", 64, pipeline="ultralytics", cache_dir=False, seed=3)
    cached = DetectionDataset(y, "train", 64, pipeline="ultralytics", cache_dir=False, seed=3, cache_images=True)
    for i in range(4):
        a, b = plain[(2, i)], cached[(2, i)]
        assert np.array_equal(a["img"], b["img"]) and np.array_equal(a["bboxes"], b["bboxes"])
    assert len(DetectionDataset(y, "train", 64, cache_dir=False, fraction=0.5)) == 2
