"""Dataset YAMLs and label validation: every bad input is reported once (file and line), handled by the
documented policy, and never raises mid-way."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
from PIL import Image

from rtdet.data.dataset import DetectionDataset, open_split
from rtdet.data.formats import DataConfigError, load_data_config, parse_yolo_label
from tests.data.datahelpers import make_yolo_dataset, write_image, write_yaml


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("rtdet")]


# ------------------------------------------------------------------------------------------ the YAML
def test_yaml_missing_key_names_the_key_and_file(tmp_path):
    (tmp_path / "images").mkdir()
    y = write_yaml(tmp_path / "d.yaml", {"train": "images", "names": ["a"]})
    with pytest.raises(DataConfigError, match=r"d.yaml: missing key 'val'.*val: images/val"):
        load_data_config(y)
    y = write_yaml(tmp_path / "e.yaml", {"train": "images", "val": "images"})
    with pytest.raises(DataConfigError, match="missing key 'names'"):
        load_data_config(y)


def test_yaml_missing_folder_names_the_key_and_the_path_tried(tmp_path):
    (tmp_path / "images").mkdir()
    y = write_yaml(tmp_path / "d.yaml", {"path": ".", "train": "images", "val": "images/nope", "names": ["a"]})
    with pytest.raises(DataConfigError, match=r"key 'val': 'images/nope' does not exist \(tried .*images/nope"):
        load_data_config(y)
    y = write_yaml(tmp_path / "p.yaml", {"path": "elsewhere", "train": "images", "val": "images", "names": ["a"]})
    with pytest.raises(DataConfigError, match="key 'path'.*elsewhere"):
        load_data_config(y)


def test_yaml_file_errors(tmp_path):
    with pytest.raises(DataConfigError, match="not found"):
        load_data_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [images\nval: x\n")
    with pytest.raises(DataConfigError, match="bad.yaml: line .* not valid YAML"):
        load_data_config(bad)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(DataConfigError, match="expected a mapping"):
        load_data_config(tmp_path / "list.yaml")


def test_yaml_names_as_dict_and_relative_path(tmp_path):
    (tmp_path / "ds" / "images" / "train").mkdir(parents=True)
    y = write_yaml(tmp_path / "cfg" / "d.yaml", {"path": "../ds", "train": "images/train", "val": ["images/train"],
                                                 "names": {0: "cat", 1: "dog"}})
    cfg = load_data_config(y)
    assert cfg.names == ["cat", "dog"] and cfg.root == (tmp_path / "ds").resolve()
    assert cfg.splits["train"][0].path == (tmp_path / "ds" / "images" / "train").resolve()
    y2 = write_yaml(tmp_path / "cfg" / "g.yaml", {"path": "../ds", "train": "images/train", "val": "images/train",
                                                  "names": {0: "cat", 2: "dog"}})
    with pytest.raises(DataConfigError, match="without gaps; missing \\[1\\]"):
        load_data_config(y2)


# ------------------------------------------------------------------------------------- label rows
def test_parse_rows_policy():
    text = "\n".join([
        "0 0.5 0.5 0.2 0.2",        # 1 fine
        "1 0.5 0.5 0.2",            # 2 wrong field count
        "1 0.5 abc 0.2 0.2",        # 3 not a number
        "7 0.5 0.5 0.2 0.2",        # 4 class out of range
        "-1 0.5 0.5 0.2 0.2",       # 5 negative class
        "1.5 0.5 0.5 0.2 0.2",      # 6 fractional class
        "2 0.95 0.5 0.2 0.2",       # 7 sticks out right: clipped to x2 = 1
        "2 1.5 0.5 0.2 0.2",        # 8 entirely outside: dropped
        "1 0.5 0.5 0 0.2",          # 9 zero width
        "0 0.5 0.5 0.2 0.2",        # 10 duplicate of line 1
        "1 nan 0.5 0.2 0.2",        # 11 nan
        "",                          # 12 blank: ignored
        "1 0.1 0.1 0.3 0.1 0.3 0.4",  # 13 polygon -> box
        "1.0 0.25 0.25 0.1 0.1",    # 14 integral float class id accepted
    ])
    cls_, boxes, problems, facts = parse_yolo_label(text, 3, "x.txt")
    got = {(p.line, p.kind) for p in problems}
    assert got == {(2, "row_fields"), (3, "row_value"), (4, "class_id"), (5, "class_id"), (6, "class_id"),
                   (7, "box_clipped"), (8, "box_outside"), (9, "box_size"), (10, "row_duplicate"), (11, "row_value")}
    np.testing.assert_array_equal(cls_, [0, 2, 1, 1])
    np.testing.assert_allclose(boxes[1], [0.925, 0.5, 0.15, 0.2], atol=1e-6)  # clipped box x 0.85..1.0
    np.testing.assert_allclose(boxes[2], [0.2, 0.25, 0.2, 0.3], atol=1e-6)    # polygon bounds
    assert facts["polygon_rows"] == 1
    assert all(p.file == "x.txt" for p in problems)


def test_bad_dataset_reports_each_problem_once_and_keeps_the_rest(tmp_path, caplog):
    root = tmp_path / "ds"
    y = make_yolo_dataset(root, {
        "good": "\ufeff0 0.5 0.5 0.5 0.5\r\n",  # a byte-order mark and Windows line ends are fine
        "rows": "0 0.5 0.5 0.5 0.5\n0 0.5 0.5 0.5 0.5\n5 0.5 0.5 0.1 0.1\n1 0.5 0.5\n2 0.9 0.9 0.4 0.4\n",
        "background": None,
        "emptyfile": "",
    })
    (root / "images" / "train" / "corrupt.jpg").write_bytes(b"this is not a jpeg at all")
    (root / "labels" / "train" / "corrupt.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    # truncated JPEG (decodable head) and a grayscale and an RGBA PNG
    jpg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8))[1].tobytes()
    (root / "images" / "train" / "trunc.jpg").write_bytes(jpg[: int(len(jpg) * 0.7)])
    cv2.imwrite(str(root / "images" / "train" / "gray.png"), np.full((40, 50), 200, np.uint8))
    cv2.imwrite(str(root / "images" / "train" / "rgba.png"), np.full((40, 50, 4), 100, np.uint8))
    (root / "images" / "train" / "tiny.png").write_bytes(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1])
    ds = DetectionDataset(y, "train", imgsz=64, pipeline="plain", augment=False, cache_dir=tmp_path / "cache")

    msgs = warnings_of(caplog)
    rows = str(root / "labels" / "train" / "rows.txt")
    expected = [f"{rows}:2: same box and class as line 1", f"{rows}:3: class id 5", f"{rows}:4: 3 fields",
                f"{rows}:5: box", "corrupt.jpg: cannot be read as an image", "trunc.jpg: JPEG end marker missing",
                "tiny.png: image is 4x4"]
    for e in expected:
        assert sum(e in m for m in msgs) == 1, (e, msgs)
    assert len(msgs) == len(expected)
    summaries = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and " images, " in r.getMessage()]
    assert len(summaries) == 1
    assert summaries[0].startswith("train: 7 images, 3 boxes, 5 background (4 without a label file), 2 skipped")
    names = sorted(f.rsplit("/", 1)[1] for f in ds.im_files)
    assert ds.labels.labels(ds.im_files.index(str(root / "images" / "train" / "good.jpg")))[0].tolist() == [0]
    assert names == ["background.jpg", "emptyfile.jpg", "good.jpg", "gray.png", "rgba.png", "rows.jpg", "trunc.jpg"]
    for i in range(len(ds)):  # every kept image loads as 3-channel BGR, nothing raises
        s = ds[i]
        assert s["img"].shape == (64, 64, 3) and s["img"].dtype == np.uint8
    i = ds.im_files.index(str(root / "images" / "train" / "rows.jpg"))
    cls_, xyxy = ds.ground_truth(i)
    np.testing.assert_array_equal(cls_, [0, 2])
    np.testing.assert_allclose(xyxy[1], [0.7 * 64, 0.7 * 48, 64, 48], atol=1e-4)  # clipped to the image


def test_exif_rotated_image_is_shown_upright_with_its_boxes(tmp_path):
    root = tmp_path / "ds"
    # stored 80 wide x 40 high with orientation 6 (rotate 90 clockwise to display): displayed 40 x 80
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[0:10, 0:20] = 255  # top-left of the stored image -> top-right of the displayed one
    (root / "images" / "train").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "images" / "train" / "r.jpg", exif=exif, quality=100)
    (root / "labels" / "train").mkdir(parents=True)
    # displayed image: 40 wide, 80 high, white block at x 30..40, y 0..20
    (root / "labels" / "train" / "r.txt").write_text("0 0.875 0.125 0.25 0.25\n")
    y = write_yaml(root / "data.yaml", {"train": "images/train", "val": "images/train", "names": ["w"]})
    ds = DetectionDataset(y, "train", 80, pipeline="plain", augment=False, cache_dir=False)
    assert tuple(ds.labels.shapes[0]) == (80, 40)
    s = ds.load_sample(0)
    assert s["img"].shape[:2] == (80, 40) and s["ori_shape"] == (80, 40)
    x1, y1, x2, y2 = s["bboxes"][0].round().astype(int)
    assert (x1, y1, x2, y2) == (30, 0, 40, 20)
    assert s["img"][y1:y2, x1:x2].mean() > 200 and s["img"][30:, :].mean() < 30
    assert ds.labels.facts["exif_rotated"] == 1


def test_empty_and_all_broken_datasets_raise_clear_errors(tmp_path, caplog):
    (tmp_path / "e" / "images").mkdir(parents=True)
    y = write_yaml(tmp_path / "e" / "d.yaml", {"train": "images", "val": "images", "names": ["a"]})
    with pytest.raises(DataConfigError, match="split 'train'.*has no usable images: no image files found"):
        DetectionDataset(y, cache_dir=False)
    (tmp_path / "b" / "images").mkdir(parents=True)
    for k in range(2):
        (tmp_path / "b" / "images" / f"{k}.jpg").write_bytes(b"\x00" * 10)
    y = write_yaml(tmp_path / "b" / "d.yaml", {"train": "images", "val": "images", "names": ["a"]})
    with pytest.raises(DataConfigError, match="all 2 images were skipped"):
        DetectionDataset(y, cache_dir=False)
    labels = open_split(load_data_config(y), "train", cache_dir=False, allow_empty=True)
    assert len(labels) == 0 and len(labels.problems) == 2


def test_labels_beside_images_and_all_missing_warning(tmp_path, caplog):
    root = tmp_path / "flat"
    write_image(root / "a.jpg")
    write_image(root / "b.jpg")
    (root / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    y = write_yaml(root / "d.yaml", {"train": ".", "val": ".", "names": ["x"]})
    ds = DetectionDataset(y, cache_dir=False, pipeline="plain")
    assert [len(ds.labels.labels(i)[0]) for i in range(2)] == [1, 0]
    root2 = tmp_path / "nolabels"
    write_image(root2 / "images" / "a.jpg")
    y2 = write_yaml(root2 / "d.yaml", {"train": "images", "val": "images", "names": ["x"]})
    DetectionDataset(y2, cache_dir=False, pipeline="plain")
    assert any("none of the 1 images has a label file" in m and "labels/a.txt" in m for m in warnings_of(caplog))


def test_image_list_source(tmp_path, caplog):
    root = tmp_path / "ds"
    make_yolo_dataset(root, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n"})
    lst = root / "train.txt"
    lst.write_text("./images/train/a.jpg\n# a comment\nimages/train/b.jpg\nimages/train/a.jpg\n"
                   "images/train/gone.jpg\nnotes.md\n")
    y = write_yaml(root / "list.yaml", {"path": ".", "train": "train.txt", "val": "train.txt", "names": ["a", "b"]})
    ds = DetectionDataset(y, cache_dir=False, pipeline="plain")
    assert len(ds) == 2
    msgs = warnings_of(caplog)
    assert any(f"{lst}:4: 'images/train/a.jpg' is the same file as line 1" in m for m in msgs)
    assert any("gone.jpg: image file not found" in m for m in msgs)
    assert any(f"{lst}:6: 'notes.md' has no image extension" in m for m in msgs)


def test_coco_json_source(tmp_path, caplog):
    root = tmp_path / "coco"
    write_image(root / "images" / "val" / "1.jpg", 50, 100)
    write_image(root / "images" / "val" / "2.jpg", 50, 100)
    ann = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 50},
                   {"id": 2, "file_name": "2.jpg", "width": 100, "height": 50},
                   {"id": 3, "file_name": "missing.jpg", "width": 100, "height": 50}],
        "categories": [{"id": 3, "name": "dog"}, {"id": 1, "name": "cat"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [90, 40, 20, 20], "iscrowd": 0},  # clipped
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1},    # crowd: ignored
            {"id": 13, "image_id": 2, "category_id": 9, "bbox": [0, 0, 5, 5]},                    # unknown category
            {"id": 14, "image_id": 2, "category_id": 1, "bbox": [0, 0, -5, 5]},                   # negative width
            {"id": 15, "image_id": 8, "category_id": 1, "bbox": [0, 0, 5, 5]},                    # unknown image
            {"id": 16, "image_id": 2, "category_id": 1, "bbox": [1, 2, "x", 4]},                  # not numbers
        ],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val.json").write_text(json.dumps(ann))
    y = write_yaml(root / "d.yaml", {"train": "annotations/instances_val.json",
                                     "val": {"json": "annotations/instances_val.json", "images": "images/val"},
                                     "names": ["cat", "dog"]})
    for split in ("train", "val"):
        caplog.clear()
        ds = DetectionDataset(y, split, cache_dir=False, pipeline="plain")
        assert len(ds) == 2
        cls_, xyxy = ds.ground_truth(0)
        np.testing.assert_array_equal(cls_, [1, 0])  # category 3 -> class 1 (dog), 1 -> 0 (cat)
        np.testing.assert_allclose(xyxy, [[10, 5, 30, 15], [90, 40, 100, 50]], atol=1e-4)
        msgs = warnings_of(caplog)
        jf = str(root / "annotations" / "instances_val.json")
        for e in [f"{jf}:11: annotation id 11: box", f"{jf}:13: category_id 9", f"{jf}:14: bbox [0, 0, -5, 5]",
                  f"{jf}:15: image_id 8", f"{jf}:16: bbox [1, 2, 'x', 4]", "missing.jpg: image file not found"]:
            assert sum(e in m for m in msgs) == 1, (e, msgs)
        assert ds.labels.facts["crowd"] == 1
    jf_rel = "annotations/instances_val.json"
    y2 = write_yaml(root / "d2.yaml", {"train": jf_rel, "val": jf_rel, "names": ["cat"]})
    with pytest.raises(DataConfigError, match="2 categories but the dataset YAML names 1"):
        DetectionDataset(y2, cache_dir=False)


def test_image_unreadable_after_the_check_is_replaced_in_training_never_in_evaluation(tmp_path, caplog):
    y = make_yolo_dataset(tmp_path / "ds", {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.4 0.4\n"})
    train = DetectionDataset(y, cache_dir=False, pipeline="plain", augment=True)
    val = DetectionDataset(y, cache_dir=False, pipeline="plain", augment=False)
    (tmp_path / "ds" / "images" / "train" / "a.jpg").write_bytes(b"gone bad")
    s = train[0]  # training: the next readable image, so an epoch never stops halfway
    assert s["im_file"].endswith("b.jpg") and s["img"].shape == (640, 640, 3)
    train[0]
    assert sum("a.jpg cannot be decoded any more" in m and "another image" in m for m in warnings_of(caplog)) == 1
    s = val[0]  # evaluation: never another image in its place; a grey stand-in the validator skips
    assert s["im_file"].endswith("a.jpg") and s["unreadable"] and len(s["cls"]) == 0
    assert s["img"].shape == (640, 640, 3)
    assert not val[1].get("unreadable") and val[1]["im_file"].endswith("b.jpg")
    assert sum("left out of the evaluation" in m for m in warnings_of(caplog)) == 1


def test_coco_images_sharing_an_id_are_reported_and_never_given_each_others_boxes(tmp_path, caplog):
    root = tmp_path / "coco"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(root / "images" / "val" / name, 50, 100)
    ann = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 50},
                   {"id": 7, "file_name": "b.jpg", "width": 100, "height": 50},  # the same id: ambiguous
                   {"id": 8, "file_name": "c.jpg", "width": 100, "height": 50}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 5, 20, 10]},
                        {"id": 2, "image_id": 8, "category_id": 1, "bbox": [0, 0, 40, 20]}],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val.json").write_text(json.dumps(ann))
    y = write_yaml(root / "d.yaml", {"train": {"json": "annotations/instances_val.json", "images": "images/val"},
                                     "val": {"json": "annotations/instances_val.json", "images": "images/val"},
                                     "names": ["cat"]})
    ds = DetectionDataset(y, "val", cache_dir=False, pipeline="plain")
    assert len(ds) == 1 and ds.labels.im_files[0].endswith("c.jpg")  # only the image whose id is its own
    np.testing.assert_allclose(ds.ground_truth(0)[1], [[0, 0, 40, 20]], atol=1e-4)
    msgs = [m for m in warnings_of(caplog) if "image id 7" in m]
    assert len(msgs) == 1 and "shared by 2 images (a.jpg, b.jpg)" in msgs[0] and "own id" in msgs[0]
