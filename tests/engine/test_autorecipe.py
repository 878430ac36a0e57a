"""recipe=auto: the documented values for a small from-scratch run, the official ones for a large run, never a
value the user set, one line saying why; recipe=official is the recipe as it is."""

import pytest
import yaml

from rtdet.engine.autorecipe import SMALL_SET_IMAGES, auto_recipe, large_set_transforms, run_steps, summary
from rtdet.engine.settings import resolve_settings
from rtdet.engine.trainer import Trainer

FAMILIES = ("rtdetr", "yolov9", "rtmdet")
SMALL = {"images": 32, "batch": 8, "world": 1}  # 32 images, batch 8: 4 batches an epoch


def _official(family: str, **user) -> dict:
    return resolve_settings({"epochs": 100, "batch": 8, **user}, family, "train")


def test_run_steps_counts_optimizer_steps_as_the_trainer_does():
    args = _official("yolov9")  # nominal batch 64: 8 batches of 8 per step, an epoch of 4 batches is one step
    assert run_steps(args, 32, 8) == (1, 100)
    assert run_steps({**args, "nbs": 0}, 32, 8) == (4, 400)
    assert run_steps({**args, "nbs": 0}, 33, 8, world=2) == (5, 500)  # 17 images per process, in batches of 4


@pytest.mark.parametrize("family", FAMILIES)
def test_a_large_run_keeps_every_official_value(family):
    args = resolve_settings({}, family, "train")
    assert auto_recipe(args, set(), images=118_287, batch=int(args["batch"])) == ({}, [])


def test_yolov9_small_run_drops_the_nominal_batch_and_fits_the_ema_to_the_run():
    changes, reasons = auto_recipe(_official("yolov9"), {"epochs", "batch"}, **SMALL)
    changes.pop("train_pipeline")  # the augmentation rule, tested below
    assert changes == {"nbs": 0, "ema_decay": 0.975, "ema_tau": 8.0}  # 400 steps: an EMA over 40, ramp / 1250
    assert "the nominal batch of 64 leaves 1 optimizer step(s) per epoch on 32 images" in reasons[0]
    # SGD at 0.01 with its linear decay already suits a from-scratch start: the lr is the recipe's
    assert not {"lr0", "scheduler", "lrf"} & set(changes)


def test_rtdetr_from_scratch_gets_a_decaying_lr_for_every_row():
    changes, reasons = auto_recipe(_official("rtdetr"), {"epochs", "batch"}, **SMALL)
    assert changes["backbone_lr_ratio"] == 1.0 and changes["lr0"] == 1e-3
    assert (changes["scheduler"], changes["lrf"]) == ("cosine", 0.05)
    assert any("from scratch on a 400-step run" in r for r in reasons)
    pretrained, _ = auto_recipe(_official("rtdetr"), {"epochs", "batch"}, **SMALL, weights_loaded=True)
    assert not {"backbone_lr_ratio", "lr0", "scheduler", "lrf"} & set(pretrained)  # the recipe's own start


def test_rtmdet_small_run_shortens_warmup_and_leaves_linear_scaling_for_adam_default():
    changes, _ = auto_recipe(_official("rtmdet"), {"epochs", "batch"}, **SMALL)
    assert changes["warmup_max_fraction"] == 0.1  # 1000 warmup steps capped at 30% = 120 of 400 -> 40
    # 0.004 * 8 / 256 = 1.25e-4 is below Adam's 1e-3: the recipe's own 0.004, no longer scaled down
    assert changes["lr_batch"] == 0 and "lr0" not in changes
    small_rate, _ = auto_recipe(_official("rtmdet", lr0=5e-4), {"epochs", "batch"}, **SMALL)
    assert (small_rate["lr0"], small_rate["lr_batch"]) == (1e-3, 0)  # a recipe rate below Adam's default: 1e-3
    assert changes["ema_decay"] == 0.975 and changes["ema_tau"] == 16.0


@pytest.mark.parametrize("family", FAMILIES)
def test_values_the_user_set_are_never_changed(family):
    user = {"nbs": 64, "accumulate": 1, "ema_decay": 0.9999, "ema_tau": 2000, "warmup_iters": 500, "lr0": 1e-4,
            "scheduler": "constant", "lrf": 1.0, "backbone_lr_ratio": 0.1, "warmup_max_fraction": 0.3,
            "train_pipeline": "yolov9", "multi_scale": [0.75, 1.25]}
    args = _official(family, **user)
    changes, _ = auto_recipe(args, {"epochs", "batch", *user}, **SMALL)
    assert not set(changes) & set(user)
    assert changes == {}


def test_recipe_official_changes_nothing():
    args = _official("yolov9", recipe="official")
    assert auto_recipe(args, {"epochs", "batch", "recipe"}, **SMALL) == ({}, [])


@pytest.mark.parametrize(("family", "mixes", "zooms"), [
    ("yolov9", ["Mosaic", "MixUp"], []),
    ("rtmdet", ["CachedMosaic", "CachedMixUp"], ["RandomResize"]),
    ("rtdetr", [], ["ZoomOut", "IoUCrop"]),
])
def test_small_from_scratch_run_gets_the_plain_pipeline(family, mixes, zooms):
    args = _official(family)
    assert large_set_transforms(args["train_pipeline"]) == (mixes, zooms)
    changes, reasons = auto_recipe(args, {"epochs", "batch"}, **SMALL)
    assert changes["train_pipeline"] == "plain"
    on = family == "rtdetr"  # only the RT-DETR recipe has multi-scale on
    assert changes.get("multi_scale", "unchanged") == (False if on else "unchanged")
    why = next(r for r in reasons if "augmentation" in r)
    assert why.startswith("from scratch on 32 images, 400 steps")
    for name in mixes + zooms:
        assert name in why


def test_large_set_transforms_reads_the_spec_not_its_name(tmp_path):
    spec = {"train": [{"name": "LetterBox"}], "stages": [{"at": 0.5, "train": [{"name": "CachedMixUp"}]}]}
    path = tmp_path / "ultralytics.yaml"  # a built-in's name, a light first stage, a mixing later stage
    path.write_text(yaml.safe_dump(spec))
    assert large_set_transforms(str(path)) == (["CachedMixUp"], [])
    assert large_set_transforms([{"name": "LetterBox"}, {"name": "RandomFlip"}]) == ([], [])
    assert large_set_transforms("plain") == ([], [])
    assert large_set_transforms(None) == (["Mosaic"], [])  # the loader's default, ultralytics
    assert large_set_transforms("no-such-pipeline") == ([], [])  # the data loader reports it


@pytest.mark.parametrize(("images", "epochs", "weights_loaded"), [
    (SMALL_SET_IMAGES, 2, False),  # enough images, a short run
    (32, 3000, False),  # few images, a run of 12,000 steps
    (32, 100, True),  # a pretrained start
])
def test_pipeline_kept_for_a_large_set_a_long_run_or_a_pretrained_start(images, epochs, weights_loaded):
    for family in FAMILIES:
        changes, _ = auto_recipe(_official(family, epochs=epochs), {"epochs", "batch"}, images, 8,
                                 weights_loaded=weights_loaded)
        assert not {"train_pipeline", "multi_scale"} & set(changes)


def test_pipeline_the_user_set_is_kept_and_a_light_one_needs_no_change():
    changes, _ = auto_recipe(_official("rtdetr", train_pipeline="rtdetr"), {"epochs", "batch", "train_pipeline"},
                             **SMALL)
    assert "train_pipeline" not in changes and changes["multi_scale"] is False  # multi_scale was not the user's
    changes, reasons = auto_recipe(_official("yolov9", train_pipeline="plain"), {"epochs", "batch"}, **SMALL)
    assert "train_pipeline" not in changes and not any("augmentation" in r for r in reasons)


def test_summary_is_one_line_or_nothing():
    args = _official("yolov9")
    changes, reasons = auto_recipe(args, set(), **SMALL)
    line = summary(args, changes, reasons)
    assert "\n" not in line and line.startswith("recipe=auto: nbs 64->0, ema_decay 0.9999->0.975")
    assert "train_pipeline yolov9->plain" in line and "composes several images (Mosaic, MixUp)" in line
    assert "recipe=official keeps the paper settings" in line
    assert summary(args, {}, []) == ""


def test_trainer_applies_auto_once_and_says_why(tiny_settings, tiny_yolo_yaml, caplog):
    settings = {**tiny_settings, "model": str(tiny_yolo_yaml), "verbose": True}  # 8 images, batch 4
    del settings["recipe"]  # the default: auto
    official = Trainer({**settings, "recipe": "official"})
    official.setup()
    expected = resolve_settings({k: v for k, v in settings.items() if k != "model"} | {"recipe": "official"},
                                "yolov9", "train")
    assert {**official.args, "model": None} == expected  # today's settings, exactly
    assert official.accumulate == 16  # nbs 64 / batch 4: the whole 2-batch epoch is one step
    with caplog.at_level("INFO"):
        auto = Trainer({**settings, "name": "auto"})
        auto.setup()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recipe=auto")]
    assert len(lines) == 1 and "nbs 64->0" in lines[0]
    assert auto.accumulate == 1 and auto.args["nbs"] == 0 and auto.args["lr0"] == tiny_settings["lr0"]


def test_trainer_trains_a_small_set_on_the_plain_pipeline(rtmdet_settings, caplog):
    settings = {**rtmdet_settings, "verbose": True}  # the micro RTMDet names the rtmdet-tiny pipeline
    del settings["recipe"]
    official = Trainer({**settings, "recipe": "official"})
    official.setup()
    assert official.train_loader.dataset.spec.name == "rtmdet-tiny"
    with caplog.at_level("INFO"):
        auto = Trainer({**settings, "name": "auto"})
        auto.setup()
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("recipe=auto"))
    assert "train_pipeline rtmdet-tiny->plain" in line
    assert auto.args["train_pipeline"] == "plain"
    assert auto.train_loader.dataset.spec.name == "plain"  # the loader was rebuilt with it
    batch = next(iter(auto.train_loader))
    assert batch["img"].shape[-1] == 64
