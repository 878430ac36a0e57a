"""Settings: default.yaml < family recipe < user arguments; unknown keys fail with suggestions."""

import pytest
import yaml

from rtdet.engine.settings import (
    DEFAULT_CFG,
    RECIPES_DIR,
    SettingsError,
    check_keys,
    default_settings,
    parse_value,
    resolve_settings,
)


def test_every_default_key_has_a_comment():
    lines = [line for line in DEFAULT_CFG.read_text().splitlines() if line and not line.startswith((" ", "#"))]
    for line in lines:
        assert "#" in line, f"default.yaml: '{line}' has no one-line description"
    assert len(lines) == len(default_settings())


def test_resolution_order():
    d = default_settings()
    assert d["lr0"] == 0.001 and d["optimizer"] == "AdamW"
    r = resolve_settings({}, family="rtdetr")
    recipe = yaml.safe_load((RECIPES_DIR / "rtdetr.yaml").read_text())
    assert r["lr0"] == recipe["lr0"] == 1e-4  # the recipe overrides the default
    assert r["backbone_lr_ratio"] == 0.1 and r["clip_grad"] == 0.1 and r["ema_tau"] == 2000
    assert r["loss_giou"] == 2.0  # family keys join the settings
    assert resolve_settings({"lr0": 3e-4}, family="rtdetr")["lr0"] == 3e-4  # the user overrides the recipe
    assert r["patience"] == d["patience"]  # untouched keys keep their default


def test_unknown_key_suggests_the_closest():
    with pytest.raises(SettingsError, match=r"'lr_0' is not a valid setting for train.*lr0"):
        check_keys({"lr_0": 1}, "train")
    with pytest.raises(SettingsError, match="vfl_alpha"):
        resolve_settings({"vfl_alpa": 0.5}, family="rtdetr")
    with pytest.raises(SettingsError, match="no recipe for family 'nope'"):
        resolve_settings({}, family="nope")


@pytest.mark.parametrize(("text", "value"), [
    ("3", 3), ("0.5", 0.5), ("1e-4", 1e-4), ("2.5E3", 2500.0), ("true", True), ("False", False), ("", None),
    ("none", None), ("0,1", "0,1"), ("cpu", "cpu"), ("[1, 2]", [1, 2]), ("runs/x:y", "runs/x:y"),
])
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_imgsz_is_rounded_up_to_the_largest_stride(tiny_yaml, caplog):
    from rtdet.engine.settings import check_imgsz
    from rtdet.nn.model import build_model

    model = build_model(str(tiny_yaml), nc=2)
    stride = max(model.strides)
    args = {"imgsz": stride * 3 - 5}
    with caplog.at_level("WARNING", logger="rtdet"):
        assert check_imgsz(args, model) == stride * 3
    assert args["imgsz"] == stride * 3 and f"largest stride {stride}" in caplog.text
    assert check_imgsz({"imgsz": stride * 2}, model) == stride * 2


def test_rtmdet_recipe_and_loss_keys():
    r = resolve_settings({}, family="rtmdet")
    assert (r["optimizer"], r["lr0"], r["lr_batch"], r["weight_decay"]) == ("AdamW", 0.004, 256, 0.05)
    assert (r["scheduler"], r["flat_fraction"], r["lrf"], r["warmup_iters"]) == ("flat-cosine", 0.5, 0.05, 1000)
    assert (r["ema_decay"], r["ema_tau"], r["ema_schedule"]) == (0.9998, 2000, "exp-momentum")
    assert (r["iou"], r["max_det"], r["conf"], r["epochs"]) == (0.65, 300, None, 300)
    assert r["qfl_beta"] == 2.0 and r["giou_weight"] == 2.0 and r["dsl_topk"] == 13  # the criterion's defaults
    assert resolve_settings({"dsl_topk": 9}, family="rtmdet")["dsl_topk"] == 9
    with pytest.raises(SettingsError, match="loss setting of the rtdetr family"):
        resolve_settings({"loss_vfl": 1.0}, family="rtmdet")
    with pytest.raises(SettingsError, match="loss setting of the rtmdet family"):
        resolve_settings({"qfl_beta": 1.0}, family="rtdetr")
