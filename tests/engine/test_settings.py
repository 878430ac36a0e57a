"""Settings: default.yaml < family recipe < user arguments; unknown keys fail with suggestions."""

import pytest
import yaml

from rtdet.engine.settings import (
    DEFAULT_CFG,
    SettingsError,
    check_keys,
    check_settings,
    default_settings,
    describe_settings,
    parse_value,
    resolve_settings,
    schema,
    verb_defaults,
    with_verb_defaults,
)
from rtdet.families import RTDETR


def test_default_yaml_is_the_schema_of_every_key():
    """Each top-level key of default.yaml is a block with its default, type and one-line doc, and the
    default fits its own schema (a helper adding a key gets an error naming it otherwise)."""
    raw = yaml.safe_load(DEFAULT_CFG.read_text())
    table = schema()
    assert set(raw) == set(default_settings()) == set(_engine_keys())
    for key, entry in raw.items():
        assert set(entry) <= {"default", "type", "range", "choices", "doc", "verbs"}, key
        assert entry["doc"] and "\n" not in entry["doc"], key
        st = table[key]
        assert st.check(st.default) == st.default if st.default is not None else st.nullable
    assert default_settings()["device"] is None and table["device"].nullable  # empty = auto


def _engine_keys():
    from rtdet.engine.settings import _schema

    return _schema()


def test_a_malformed_schema_block_names_the_key(tmp_path, monkeypatch):
    import rtdet.engine.settings as settings

    for text, match in [("epochs: 100  # doc\n", "'epochs: 100' is not a schema block"),
                        ("epochs: {default: 100, type: integer, doc: x}\n", "unknown type 'integer'"),
                        ("epochs: {default: 0, type: int, range: '[1, inf)', doc: x}\n", "default of 'epochs'"),
                        ("epochs: {default: 1, type: int, doc: x, help: y}\n", "unknown fields"),
                        ("epochs: {default: 1, type: int, range: '1..2', doc: x}\n", "not an interval")]:
        bad = tmp_path / "default.yaml"
        bad.write_text(text)
        monkeypatch.setattr(settings, "DEFAULT_CFG", bad)
        settings._schema.cache_clear()
        try:
            with pytest.raises(SettingsError, match=match):
                settings.default_settings()
        finally:
            settings._schema.cache_clear()
    monkeypatch.undo()
    assert default_settings()["epochs"] == 100


BAD_VALUES = [  # every case of issue 8 section 1, and a few more of the same kinds
    ("epochs", "abc"), ("epochs", -1), ("epochs", 0), ("epochs", 2.5), ("imgsz", "abc"), ("imgsz", 0),
    ("patience", "abc"), ("patience", -1), ("conf", "abc"), ("conf", 2), ("conf", float("nan")),
    ("iou", "abc"), ("iou", 1.5), ("lr0", float("nan")), ("lr0", "nan"), ("lr0", 0), ("lr0", float("inf")),
    ("optimizer", "Foo"), ("scheduler", "bogus"), ("exist_ok", "maybe"), ("exist_ok", 1), ("val", "yes please"),
    ("batch", 0), ("batch", -3), ("fraction", 0), ("fraction", 1.5), ("workers", -1), ("max_det", -5),
    ("max_det", 0), ("amp", None), ("epochs", True), ("momentum", 1.0), ("seed", -1), ("line_width", 0),
    ("resume", None), ("train_pipeline", True), ("device", "gpu"), ("device", "0,x"),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=[f"{k}={v}" for k, v in BAD_VALUES])
def test_bad_values_are_one_line_naming_key_value_and_what_is_allowed(key, value):
    with pytest.raises(SettingsError) as err:
        check_settings({key: value}, "train")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{key}=")
    assert "expected" in msg or "use device=cpu" in msg or "device" in msg
    with pytest.raises(SettingsError):  # the same check when settings are resolved
        resolve_settings({key: value}, family="rtdetr")


def test_values_are_converted_to_their_type():
    got = check_settings({"epochs": 3.0, "lr0": 1, "optimizer": "sgd", "device": "CPU", "resume": "a/last.pt",
                          "conf": None, "name": 7})
    assert got == {"epochs": 3, "lr0": 1.0, "optimizer": "SGD", "device": "cpu", "resume": "a/last.pt",
                   "conf": None, "name": "7"}
    assert isinstance(got["epochs"], int) and isinstance(got["lr0"], float)


def test_device_must_exist(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_settings({"device": "cuda"})["device"] == "0"
    assert check_settings({"device": "cuda:1"})["device"] == "1"
    assert check_settings({"device": "0,1"})["device"] == "0,1"
    with pytest.raises(SettingsError, match=r"device=7: GPU 7 does not exist \(2 visible"):
        check_settings({"device": 7})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SettingsError, match="device='cuda': asks for a GPU, but CUDA is not available.*device=cpu"):
        check_settings({"device": "cuda"})


def test_loss_settings_are_checked_with_their_criterion_schema():
    with pytest.raises(SettingsError, match="vfl_alpha=2"):
        check_settings({"vfl_alpha": 2})
    with pytest.raises(SettingsError, match="aux_loss='maybe'"):
        resolve_settings({"aux_loss": "maybe"}, family="rtdetr")


def test_recipe_values_are_checked(tmp_path):
    import dataclasses

    from rtdet.families import register_family

    (tmp_path / "rtdetr.yaml").write_text("epochs: 72\nlr0: -1\nvfl_gamma: abc\n")
    register_family(dataclasses.replace(RTDETR, recipe=tmp_path / "rtdetr.yaml"), replace=True)
    try:
        with pytest.raises(SettingsError) as err:
            resolve_settings({}, family="rtdetr")
        lines = str(err.value).splitlines()
        assert len(lines) == 2 and all(line.startswith(str(tmp_path / "rtdetr.yaml")) for line in lines)
        assert "lr0=-1" in lines[0] and "vfl_gamma='abc'" in lines[1]
        (tmp_path / "rtdetr.yaml").write_text("lr0: 1e-4\n")  # PyYAML reads this as a string; it is a number
        assert resolve_settings({}, family="rtdetr")["lr0"] == 1e-4
    finally:
        register_family(RTDETR, replace=True)


def test_help_lists_every_setting_with_what_it_accepts():
    text = describe_settings()
    for key in default_settings():
        assert f"  {key} " in text
    assert "one of AdamW, Adam, SGD" in text and "loss settings of the rtdetr family" in text.lower()


def test_resolution_order():
    d = default_settings()
    assert d["lr0"] == 0.001 and d["optimizer"] == "AdamW"
    r = resolve_settings({}, family="rtdetr")
    recipe = yaml.safe_load(RTDETR.recipe.read_text())
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
    with pytest.raises(SettingsError, match="no family 'nope' is registered"):
        resolve_settings({}, family="nope")


@pytest.mark.parametrize(("text", "value"), [
    ("3", 3), ("0.5", 0.5), ("1e-4", 1e-4), ("2.5E3", 2500.0), ("true", True), ("False", False), ("", None),
    ("none", None), ("0,1", "0,1"), ("cpu", "cpu"), ("[1, 2]", [1, 2]), ("runs/x:y", "runs/x:y"),
])
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_imgsz_is_rounded_up_to_the_largest_stride(tiny_yaml, caplog):
    from rtdet.engine.settings import check_imgsz
    from rtdet.io.load import build_model

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
    with pytest.raises(SettingsError, match="loss setting of the dfine / rtdetr family"):
        resolve_settings({"loss_vfl": 1.0}, family="rtmdet")
    with pytest.raises(SettingsError, match="loss setting of the rtmdet family"):
        resolve_settings({"qfl_beta": 1.0}, family="rtdetr")


def test_threads_are_bounded_by_the_machine_for_every_verb_that_takes_them(monkeypatch):
    """threads=4096 once started thousands of threads: like workers, it is capped at the CPU count."""
    from rtdet.utils import torch_utils

    monkeypatch.setattr(torch_utils, "machine_cpus", lambda: 3)
    for verb in ("benchmark", "val", "predict", "export", "compare"):
        assert resolve_settings({"threads": 4096}, verb=verb)["threads"] == 3
    assert resolve_settings({"threads": 2}, verb="benchmark")["threads"] == 2
    assert resolve_settings({}, verb="benchmark")["threads"] is None  # the library's default


def test_settings_stored_in_a_model_file_are_checked_like_the_command_line():
    from rtdet.engine.settings import check_stored_settings
    from rtdet.utils.checkpoint import CheckpointError

    ok = check_stored_settings({"imgsz": 320, "val_pipeline": "rtdetr"}, "m.pt")
    assert ok == {"imgsz": 320, "val_pipeline": "rtdetr"}
    cases = {
        "imgsz=99999: expected an integer >= 32 and <= 8192": {"imgsz": 99999},
        "LetterBox: imgsz=8000 is larger than the run's imgsz=640": {"val_pipeline": [{"name": "LetterBox",
                                                                                        "imgsz": 8000}]},
        "val_pipeline='/etc/passwd' is not a built-in pipeline": {"val_pipeline": "/etc/passwd"},
        "unknown transform 'Nope'": {"train_pipeline": {"train": [{"name": "Nope"}]}},
    }
    for text, stored in cases.items():
        with pytest.raises(CheckpointError) as err:
            check_stored_settings(stored, "m.pt")
        assert str(err.value).startswith("m.pt: the setting stored in the file is wrong: ") and text in str(err.value)
        assert "\n" not in str(err.value)
    assert check_stored_settings({"imgsz": 99999}, "m.pt", given={"imgsz": 640}) == {}  # the user overrides it


def test_an_empty_setting_takes_the_verbs_default_and_a_set_value_wins():
    """The per-verb defaults are written once, in default.yaml (``verbs``): val ranks every box for mAP."""
    assert verb_defaults("val") == {"conf": 0.001, "multi_label": True}
    assert verb_defaults("predict")["conf"] == 0.25 and verb_defaults("track")["conf"] == 0.1
    assert verb_defaults("train") == {} and resolve_settings({}, verb="train")["conf"] is None
    assert resolve_settings({}, family="rtmdet", verb="val")["conf"] == 0.001  # the recipe's empty conf
    assert resolve_settings({"conf": 0.5}, verb="val")["conf"] == 0.5
    assert with_verb_defaults({"conf": None, "multi_label": False}, "val") == {"conf": 0.001, "multi_label": False}
