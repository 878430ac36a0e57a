"""The label cache: the second open reads one file, any change to an image or label invalidates it."""

from __future__ import annotations

import os

import numpy as np

import rtdet.data.dataset as dataset_mod
from rtdet.data.cache import cache_path, read_cache
from rtdet.data.dataset import DetectionDataset
from tests.data.datahelpers import make_yolo_dataset, write_image


def _open(y, cache):
    return DetectionDataset(y, cache_dir=cache, pipeline="plain", augment=False)


def _boom(*a, **k):
    raise AssertionError("labels were re-read although the cache is valid")


def test_second_open_uses_the_cache_and_changes_invalidate_it(tmp_path, monkeypatch, caplog):
    root, cache = tmp_path / "ds", tmp_path / "cache"
    y = make_yolo_dataset(root, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.4 0.4\n9 0.5 0.5 0.1 0.1\n"})
    first = _open(y, cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.endswith(".labels.npz")  # one file, no temporary left behind
    assert "labels read and cached" in caplog.text

    caplog.clear()
    monkeypatch.setattr(dataset_mod, "read_yolo_source", _boom)
    second = _open(y, cache)
    assert "labels from cache" in caplog.text
    assert "class id 9" in caplog.text  # cached problems are reported again on every open
    np.testing.assert_array_equal(second.labels.cls, first.labels.cls)
    np.testing.assert_array_equal(second.labels.boxes, first.labels.boxes)
    assert second.im_files == first.im_files
    monkeypatch.undo()

    # an edited label file (new content, new mtime) invalidates it
    lab = root / "labels" / "train" / "a.txt"
    lab.write_text("2 0.5 0.5 0.3 0.3\n")
    st = os.stat(lab)
    os.utime(lab, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    caplog.clear()
    third = _open(y, cache)
    assert "labels read and cached" in caplog.text
    assert third.labels.labels(0)[0].tolist() == [2]

    # a new image and a new label file next to an image both invalidate it
    write_image(root / "images" / "train" / "c.jpg")
    assert len(_open(y, cache)) == 3
    (root / "labels" / "train" / "c.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    assert _open(y, cache).labels.labels(2)[0].tolist() == [0]


def test_a_damaged_cache_is_rebuilt(tmp_path, caplog):
    root, cache = tmp_path / "ds", tmp_path / "cache"
    y = make_yolo_dataset(root, {"a": "0 0.5 0.5 0.2 0.2\n"})
    _open(y, cache)
    cfile = cache_path(cache, root / "images" / "train", 3)
    assert read_cache(cfile) is not None
    cfile.write_bytes(b"garbage")
    caplog.clear()
    ds = _open(y, cache)
    assert "labels read and cached" in caplog.text and len(ds) == 1
    assert read_cache(cfile) is not None


def test_cache_keys_differ_by_class_count(tmp_path):
    assert cache_path(tmp_path, tmp_path / "x", 3) != cache_path(tmp_path, tmp_path / "x", 4)


def test_no_cache_when_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDET_CACHE_DIR", str(tmp_path / "envcache"))
    y = make_yolo_dataset(tmp_path / "ds", {"a": "0 0.5 0.5 0.2 0.2\n"})
    _open(y, False)
    assert not (tmp_path / "envcache").exists()
    _open(y, None)  # default location follows $RTDET_CACHE_DIR
    assert len(list((tmp_path / "envcache").iterdir())) == 1
