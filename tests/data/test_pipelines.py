"""Pipeline specs: the built-in family pipelines build, stages switch at the declared epoch, bad specs fail
with the key at fault."""

from __future__ import annotations

import numpy as np
import pytest

from rtdet.data.pipelines import (
    BUILTIN_PIPELINES,
    PipelineSchedule,
    load_pipeline_spec,
    resolve_stage_start,
)
from rtdet.data.transforms import PipelineConfigError
from tests.data.datahelpers import rect_sample


def names_by_stage(spec, epochs):
    sched = PipelineSchedule.from_spec(load_pipeline_spec(spec), 320, epochs)
    return [(start, c.names) for start, c in sched.stages]


def test_builtin_pipelines_exist_and_build():
    assert {"ultralytics", "yolov9", "rtmdet", "rtmdet-s", "rtmdet-tiny", "rtdetr", "plain"} <= set(BUILTIN_PIPELINES)
    for name in BUILTIN_PIPELINES:
        spec = load_pipeline_spec(name)
        for augment in (True, False):
            PipelineSchedule.from_spec(spec, 320, 300, augment)


def test_family_pipelines_and_their_switch_epochs():
    assert names_by_stage("ultralytics", 100) == [
        (0, ["Mosaic", "RandomAffine", "RandomHSV", "RandomFlip"]), (90, ["RandomAffine", "RandomHSV", "RandomFlip"])]
    assert names_by_stage("yolov9", 500)[1] == (485, ["RandomAffine", "RandomHSV", "RandomFlip"])
    rtm = names_by_stage("rtmdet", 300)
    assert rtm[0] == (0, ["CachedMosaic", "RandomResize", "RandomCrop", "YOLOXHSVRandomAug", "RandomFlip", "Pad",
                          "CachedMixUp"])
    assert rtm[1] == (280, ["RandomResize", "RandomCrop", "YOLOXHSVRandomAug", "RandomFlip", "Pad"])
    assert names_by_stage("rtdetr", 72) == [(0, ["PhotometricDistort", "ZoomOut", "IoUCrop", "FilterBoxes",
                                                 "RandomFlip", "Resize", "FilterBoxes"])]
    # a run shorter than the switch never switches (as Ultralytics close_mosaic / mmdet switch_epoch)
    assert len(names_by_stage("ultralytics", 5)) == 1
    assert names_by_stage("ultralytics", 10)[0][1] == ["RandomAffine", "RandomHSV", "RandomFlip"]


def test_val_pipelines_are_deterministic_and_letterbox_or_stretch():
    for name, shape in (("ultralytics", (320, 320, 3)), ("rtdetr", (320, 320, 3)), ("rtmdet", (320, 320, 3))):
        val = PipelineSchedule.from_spec(load_pipeline_spec(name), 320, 10, augment=False).for_epoch(0)
        outs = []
        for seed in range(3):
            val.reseed(seed)
            outs.append(val(rect_sample(120, 160, [(10, 10, 50, 50, 0)])))
        assert all(o["img"].shape == shape for o in outs)
        assert all(np.array_equal(o["img"], outs[0]["img"]) and np.array_equal(o["bboxes"], outs[0]["bboxes"])
                   for o in outs)
        assert outs[0]["ratio_pad"] is not None
    rtdetr_val = PipelineSchedule.from_spec(load_pipeline_spec("rtdetr"), 320, 1, augment=False).for_epoch(0)
    (ry, rx), _ = rtdetr_val(rect_sample(120, 160, []))["ratio_pad"]
    assert (ry, rx) == (320 / 120, 320 / 160)  # stretched


def test_stage_start_rules():
    assert resolve_stage_start(280, 300) == 280
    assert resolve_stage_start(-20, 300) == 280
    assert resolve_stage_start(0.9, 300) == 270
    with pytest.raises(PipelineConfigError):
        resolve_stage_start(1.5, 300)
    with pytest.raises(PipelineConfigError):
        resolve_stage_start("late", 300)


def test_inline_specs_drop_and_replace_stages():
    spec = {"train": [{"name": "LetterBox"}, {"name": "RandomFlip", "p": 1.0}, {"name": "RandomHSV"}],
            "stages": [{"at": 0.5, "drop": ["RandomFlip"]}, {"at": -1, "train": [{"name": "Resize"}]}]}
    assert names_by_stage(spec, 10) == [(0, ["LetterBox", "RandomFlip", "RandomHSV"]), (5, ["LetterBox", "RandomHSV"]),
                                        (9, ["Resize"])]
    sched = PipelineSchedule.from_spec(load_pipeline_spec(spec), 64, 10)
    assert sched.for_epoch(4).names[1] == "RandomFlip" and sched.for_epoch(5).names == ["LetterBox", "RandomHSV"]
    assert load_pipeline_spec([{"name": "LetterBox"}]).val[0]["name"] == "LetterBox"


@pytest.mark.parametrize("spec, match", [
    ({"train": [{"name": "LetterBox"}], "stage": []}, "unknown key.*'stage'"),
    ({"val": [{"name": "LetterBox"}]}, "missing key 'train'"),
    ({"train": [{"nam": "LetterBox"}]}, "must be a list of"),
    ({"train": [{"name": "LetterBox"}], "stages": [{"at": 3}]}, r"stages\[0\]"),
    ({"train": [{"name": "LetterBox"}], "stages": [{"at": 3, "drop": "Mosaic"}]}, "drop must be a list"),
    ("no-such-pipeline", "not found"),
])
def test_bad_specs(spec, match):
    with pytest.raises(PipelineConfigError, match=match):
        load_pipeline_spec(spec)


def test_unknown_transform_fails_at_build_with_suggestion():
    with pytest.raises(PipelineConfigError, match="unknown transform 'Mosaik'.*Did you mean Mosaic"):
        PipelineSchedule.from_spec(load_pipeline_spec([{"name": "Mosaik"}]), 320, 1)


@pytest.mark.parametrize("name", ["rtmdet", "rtmdet-s", "rtmdet-tiny"])
def test_rtmdet_stage_two_is_the_last_20_of_300_epochs_of_any_run(name):
    """mmdetection switches at epoch 280 of 300; here at 280/300 of the run, whatever its length."""
    assert [start for start, _ in names_by_stage(name, 300)] == [0, 280]
    assert [start for start, _ in names_by_stage(name, 37)] == [0, 35]  # 37 * 280/300 = 34.5 -> the last 2
    assert [start for start, _ in names_by_stage(name, 10)] == [0, 9]  # the last epoch
    assert len(names_by_stage(name, 5)) == 1  # 4.7 rounds to 5: too short for a stage 2
    stage1, stage2 = (names for _, names in names_by_stage(name, 300))
    assert "CachedMosaic" in stage1 and "CachedMixUp" in stage1
    assert not {"CachedMosaic", "CachedMixUp"} & set(stage2) and "RandomResize" in stage2


def test_rtmdet_caches_and_jitter_follow_the_configs_of_each_scale():
    """mmdet configs: tiny FIFO caches 20 / 10 and MixUp p 0.5; s and m/l/x random-pop caches 40 / 20 with
    MixUp p 1; scale jitter U(0.5, 2.0) for tiny / s, U(0.1, 2.0) for m / l / x, in both stages."""
    expected = {"rtmdet-tiny": (20, False, 10, False, 0.5, 0.5), "rtmdet-s": (40, True, 20, True, 1.0, 0.5),
                "rtmdet": (40, True, 20, True, 1.0, 0.1)}
    for name, (mosaic, mosaic_pop, mixup, mixup_pop, mixup_p, low) in expected.items():
        spec = load_pipeline_spec(name)
        by_name = {t["name"]: t for t in spec.train}
        assert (by_name["CachedMosaic"]["max_cached_images"], by_name["CachedMosaic"]["random_pop"]) == (mosaic,
                                                                                                        mosaic_pop)
        mix = by_name["CachedMixUp"]
        assert (mix["max_cached_images"], mix["random_pop"], mix["p"], mix["ratio_range"]) == (mixup, mixup_pop,
                                                                                                mixup_p, [1.0, 1.0])
        assert by_name["RandomResize"] == {"name": "RandomResize", "scale": 2.0, "ratio_range": [low, 2.0]}
        stage2 = {t["name"]: t for t in spec.stages[0]["train"]}
        assert stage2["RandomResize"] == {"name": "RandomResize", "scale": 1.0, "ratio_range": [low, 2.0]}
        assert spec.val == [{"name": "LetterBox", "center": False, "interpolation": "linear"}]
