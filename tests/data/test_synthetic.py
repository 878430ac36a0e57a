"""The synthetic shapes set: deterministic from its seed, classes that differ in shape and colour, object
counts and sizes in the documented ranges, boxes that frame the drawn shapes."""

from __future__ import annotations

import cv2
import numpy as np
import yaml

from rtdet.data.formats import load_data_config
from rtdet.data.synthetic import SHAPES, make_synthetic_dataset, render_image


def read_labels(root, split="train"):
    out = {}
    for p in sorted((root / "labels" / split).glob("*.txt")):
        rows = [list(map(float, r.split())) for r in p.read_text().splitlines() if r.strip()]
        out[p.stem] = np.array(rows).reshape(-1, 5)
    return out


def test_same_seed_same_bytes_other_seed_other_set(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", n_train=6, n_val=2, imgsz=96, seed=3)
    b = make_synthetic_dataset(tmp_path / "b", n_train=6, n_val=2, imgsz=96, seed=3)
    c = make_synthetic_dataset(tmp_path / "c", n_train=6, n_val=2, imgsz=96, seed=4)
    for split, n in (("train", 6), ("val", 2)):
        for i in range(n):
            for sub, ext in (("labels", "txt"), ("images", "jpg")):
                fa = a.parent / sub / split / f"{i:06d}.{ext}"
                assert fa.read_bytes() == (b.parent / sub / split / f"{i:06d}.{ext}").read_bytes()
    assert read_labels(a.parent).keys() == read_labels(c.parent).keys()
    assert any(not np.array_equal(x, y) for x, y in zip(read_labels(a.parent).values(), read_labels(c.parent).values()))


def test_yaml_is_a_valid_dataset_and_is_reused(tmp_path):
    y = make_synthetic_dataset(tmp_path, n_train=4, n_val=2, imgsz=64, seed=0)
    cfg = load_data_config(y)
    assert cfg.names == ["circle", "square", "triangle", "star", "cross", "ring"]
    assert yaml.safe_load(y.read_text())["synthetic"]["seed"] == 0
    img = tmp_path / "images" / "train" / "000000.jpg"
    mtime = img.stat().st_mtime_ns
    assert make_synthetic_dataset(tmp_path, n_train=4, n_val=2, imgsz=64, seed=0) == y
    assert img.stat().st_mtime_ns == mtime  # same arguments: reused, not rewritten
    make_synthetic_dataset(tmp_path, n_train=4, n_val=2, imgsz=64, seed=1)
    assert yaml.safe_load(y.read_text())["synthetic"]["seed"] == 1


def test_counts_sizes_and_classes(tmp_path):
    y = make_synthetic_dataset(tmp_path, n_train=60, n_val=0, imgsz=128, seed=0)
    labels = read_labels(y.parent)
    counts = [len(v) for v in labels.values()]
    assert min(counts) >= 1 and max(counts) <= 8 and len(set(counts)) > 3
    allrows = np.concatenate(list(labels.values()))
    assert set(allrows[:, 0].astype(int)) == set(range(6))
    side = allrows[:, 3:].max(1)  # box side / image side
    assert side.min() >= 0.03 and side.max() <= 0.62
    assert side.min() < 0.12 and side.max() > 0.4  # small and large objects both occur
    assert (allrows[:, 1:3] - allrows[:, 3:] / 2 >= -1e-5).all()  # inside the image (6-decimal rows)
    assert (allrows[:, 1:3] + allrows[:, 3:] / 2 <= 1 + 1e-5).all()


def test_each_class_has_its_own_colour_and_boxes_frame_the_shape():
    g = np.random.default_rng(0)
    hits = 0
    for _ in range(20):
        img, cls_, boxes = render_image(g, 160, noise=0, max_occlusion=0.0, color_jitter=0, distractors=0)
        for c, b in zip(cls_, boxes.astype(int)):
            patch = img[b[1]:b[3], b[0]:b[2]].astype(np.float32)
            dist = np.abs(patch - np.array(SHAPES[c][1], np.float32)).max(-1)
            inside = dist < 45  # pixels of this class colour (shading changes it a little)
            if inside.sum() < 20:
                continue
            hits += 1
            ys, xs = np.nonzero(inside)
            # the shape reaches every side of its box (anti-aliased tips of sharp corners lose a few pixels)
            assert xs.min() <= 4 and ys.min() <= 4 and xs.max() >= patch.shape[1] - 5 and ys.max() >= patch.shape[0] - 5
            # and its colour is closer to its own class colour than to any other class colour
            mean = patch[inside].mean(0)
            d = [np.abs(mean - np.array(col)).sum() for _, col in SHAPES[:6]]
            assert int(np.argmin(d)) == c
    assert hits > 40


def test_harder_settings_change_the_images():
    easy, _, _ = render_image(np.random.default_rng(5), 96)
    hard, _, _ = render_image(np.random.default_rng(5), 96, noise=40, distractors=3, color_jitter=60)
    assert cv2.Laplacian(hard, cv2.CV_32F).var() > cv2.Laplacian(easy, cv2.CV_32F).var()
