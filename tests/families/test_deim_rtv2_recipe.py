"""cfg/recipes/deim-rtv2.yaml: DEIM-RTv2-S's official training values resolve as rtdetr-family settings by name
(cfg=deim-rtv2), every value names its source, and the DEIM-RTv2 models are RT-DETR-family models."""

from __future__ import annotations

import pytest

from rtdet.engine.settings import CFG_DIR, apply_cfg, resolve_settings
from rtdet.families.rtdetr import RTDETR
from rtdet.nn.heads.rtdetrv2 import RTDETRv2Decoder

RECIPE = CFG_DIR / "recipes" / "deim-rtv2.yaml"


def test_resolves_by_name_on_the_rtdetr_family():
    s = resolve_settings(apply_cfg({"cfg": "deim-rtv2"}, "train"), family="rtdetr")
    assert (s["epochs"], s["batch"], s["lr0"], s["backbone_lr_ratio"], s["weight_decay"]) == (120, 16, 2e-4, 1.0, 1e-4)
    assert s["loss"] == "mal" and s["mal_gamma"] == 1.5 and s["train_pipeline"] == "deim"
    assert (s["loss_vfl"], s["loss_bbox"], s["loss_giou"]) == (1.0, 5.0, 2.0)
    assert s["scheduler"] == "flat-cosine" and s["lrf"] == 0.5 and s["warmup_iters"] == 2000
    assert s["flat_fraction"] == pytest.approx(64 / 120) and s["multi_scale_stop"] == pytest.approx(117 / 120)
    assert s["ema_decay"] == 0.9999 and s["ema_tau"] == 2000 and s["clip_grad"] == 0.1 and s["amp"] is True
    assert RTDETRv2Decoder in RTDETR.heads and RTDETRv2Decoder.family == "rtdetr"


def test_every_value_names_its_source():
    lines = [line for line in RECIPE.read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) > 20
    assert all("#" in line for line in lines), [line for line in lines if "#" not in line]
