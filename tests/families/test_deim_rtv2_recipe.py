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


def test_a_tiny_rtv2_model_trains_with_the_recipe(tmp_path, single_thread):
    """cfg=deim-rtv2 end to end on a tiny DEIM-RTv2 (tests/contract_models.py): MAL, flat-cosine, DEIM's data
    stages, through the trainer; the loss columns name the MAL term."""
    from rtdet.data.synthetic import make_synthetic_dataset
    from rtdet.engine.trainer import Trainer
    from tests.contract_models import TINY_RTV2_YAML

    data = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=64, seed=0, n_classes=2,
                                  min_objects=1, max_objects=3, size_range=(0.3, 0.6))
    model = tmp_path / "deim-rtv2-tiny.yaml"
    model.write_text(TINY_RTV2_YAML)
    trainer = Trainer({"cfg": "deim-rtv2", "model": str(model), "data": str(data), "imgsz": 64, "batch": 4, "epochs": 2,
                       "workers": 0, "device": "cpu", "project": str(tmp_path / "runs"), "val": False, "plots": False,
                       "verbose": False, "amp": False, "multi_scale": None, "seed": 0, "recipe": "official"})
    trainer.train()
    assert trainer.args["loss"] == "mal" and trainer.args["scheduler"] == "flat-cosine"
    header = (trainer.save_dir / "results.csv").read_text().splitlines()[0]
    assert "mal" in header and trainer.last.is_file()
