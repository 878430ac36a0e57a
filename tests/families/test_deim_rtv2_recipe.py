"""cfg/recipes/deim-rtv2.yaml and its size files deim-rtv2-{r34,r50m,r50,r101}.yaml: each DEIM-RTv2 size's
official training values resolve as rtdetr-family settings by name (cfg=deim-rtv2 on a model YAML that names its
recipe_size), every value names its source, and the DEIM-RTv2 models are RT-DETR-family models."""

from __future__ import annotations

import pytest
import yaml

from rtdet.data.pipelines import load_pipeline_spec
from rtdet.engine.settings import (
    CFG_DIR,
    SettingsError,
    apply_cfg,
    cfg_path,
    read_recipe,
    resolve_settings,
    size_recipes,
)
from rtdet.families.rtdetr import RTDETR
from rtdet.nn.builder import load_model_yaml
from rtdet.nn.heads.rtdetrv2 import RTDETRv2Decoder

RECIPE = CFG_DIR / "recipes" / "deim-rtv2.yaml"
SIZES = ["r18", "r34", "r50m", "r50", "r101"]
# The official values per size (research notes section 8; DEIM configs/deim_rtdetrv2/deim_{r18vd_120e,r34vd_120e,
# r50vd_m_60e,r50vd_60e,r101vd_60e}_coco.yml): epochs, policy [e1, e2, e3] (e3 = collate stop_epoch), lr0,
# backbone lr, weight decay, flat_epoch, no_aug_epoch.
OFFICIAL = {
    "r18": (120, (4, 64, 117), 2e-4, 2e-4, 1e-4, 64, 3),
    "r34": (120, (4, 64, 117), 2e-4, 1e-4, 1e-4, 64, 3),
    "r50m": (60, (4, 34, 58), 2e-4, 2e-5, 1e-4, 34, 2),
    "r50": (60, (4, 34, 58), 2e-4, 2e-5, 1e-4, 34, 2),
    "r101": (60, (4, 34, 58), 2e-4, 2e-6, 1e-4, 34, 2),
}


def test_resolves_by_name_on_the_rtdetr_family():
    s = resolve_settings(apply_cfg({"cfg": "deim-rtv2"}, "train"), family="rtdetr")
    assert (s["epochs"], s["batch"], s["lr0"], s["backbone_lr_ratio"], s["weight_decay"]) == (120, 16, 2e-4, 1.0, 1e-4)
    assert s["loss"] == "mal" and s["mal_gamma"] == 1.5 and s["train_pipeline"]["name"] == "deim-rtv2-r18"
    assert (s["loss_vfl"], s["loss_bbox"], s["loss_giou"]) == (1.0, 5.0, 2.0)
    assert s["scheduler"] == "flat-cosine" and s["lrf"] == 0.5 and s["warmup_iters"] == 2000
    assert s["flat_fraction"] == pytest.approx(64 / 120) and s["multi_scale_stop"] == pytest.approx(117 / 120)
    assert s["ema_decay"] == 0.9999 and s["ema_tau"] == 2000 and s["clip_grad"] == 0.1 and s["amp"] is True
    assert RTDETRv2Decoder in RTDETR.heads and RTDETRv2Decoder.family == "rtdetr"


@pytest.mark.parametrize("size", SIZES)
def test_the_inline_pipelines_are_deims_stages_at_the_sizes_epochs(size):
    """Each size file's train_pipeline is cfg/pipelines/deim.yaml (DEIM's transforms and MixUp) with only the
    name and the stage starts changed."""
    deim = yaml.safe_load((CFG_DIR / "pipelines" / "deim.yaml").read_text())
    mine = dict(resolve_settings({"cfg": "deim-rtv2"}, "rtdetr", "train", size)["train_pipeline"])
    assert mine.pop("name") == f"deim-rtv2-{size}"
    timeless = [{k: v for k, v in st.items() if k != "at"} for st in mine.pop("stages")]
    assert timeless == [{k: v for k, v in st.items() if k != "at"} for st in deim.pop("stages")]
    assert mine == deim


@pytest.mark.parametrize("size", SIZES)
def test_every_value_names_its_source(size):
    """Each top-level key of each size file carries a comment naming its source (the inline pipeline's own lines
    are the stages of cfg/pipelines/deim.yaml; its header line names the policy)."""
    path = cfg_path("deim-rtv2", size)
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith(("#", " "))]
    assert len(lines) > 30
    assert all("#" in line for line in lines), [line for line in lines if "#" not in line]


def test_each_size_file_declares_its_size_and_sets_every_key_of_the_r18_file():
    base, own = read_recipe(RECIPE)
    assert own == "r18"
    sizes = size_recipes(RECIPE)
    assert sorted(sizes) == sorted(SIZES[1:])
    for size, path in sizes.items():
        values, declared = read_recipe(path)
        assert declared == size and path.name == f"deim-rtv2-{size}.yaml"
        assert set(values) == set(base), path  # read instead of the R18 file: nothing of it may be left out
    assert not size_recipes(CFG_DIR / "recipes" / "deim.yaml").keys() & set(SIZES)  # not D-FINE's DEIM sizes


@pytest.mark.parametrize("size", SIZES)
def test_cfg_deim_rtv2_reads_the_official_values_of_the_models_size(size):
    epochs, policy, lr0, backbone_lr, wd, flat, no_aug = OFFICIAL[size]
    assert cfg_path("deim-rtv2", size).name == ("deim-rtv2.yaml" if size == "r18" else f"deim-rtv2-{size}.yaml")
    args = resolve_settings({"cfg": "deim-rtv2"}, "rtdetr", "train", size)
    assert (args["epochs"], args["batch"], args["lr0"], args["weight_decay"]) == (epochs, 16, lr0, wd)
    assert args["lr0"] * args["backbone_lr_ratio"] == pytest.approx(backbone_lr, rel=1e-12)
    assert args["scheduler"] == "flat-cosine" and args["lrf"] == 0.5 and args["warmup_iters"] == 2000
    assert args["warmup_shape"] == "quadratic" and args["loss"] == "mal" and args["mal_gamma"] == 1.5
    assert args["flat_fraction"] == pytest.approx(flat / epochs, rel=1e-15)
    assert args["cosine_end"] == pytest.approx((epochs - no_aug) / epochs, rel=1e-15)
    assert round(args["multi_scale_stop"] * epochs) == policy[2] and args["stage_switch"] is True
    assert args["multi_scale"] == [0.75, 1.25] and args["multi_scale_repeat"] == 3
    assert args["multi_scale_interpolation"] == "nearest" and args["ema_tau"] == 2000
    spec = load_pipeline_spec(args["train_pipeline"])
    assert spec.name == f"deim-rtv2-{size}"
    assert [start for start, _ in spec.train_stages(epochs)] == [0, *policy]  # the official policy epochs
    assert [start for start, batch in spec.batch_stages(epochs) if batch] == [policy[0]]  # MixUp [e1, e2)


@pytest.mark.parametrize("size", SIZES)
def test_the_models_name_their_size(size):
    """deim-rtv2-<size>.yaml and the plain rtdetrv2-<size>.yaml say which size file cfg=deim-rtv2 reads; the
    family recipe (rtdetr.yaml, no size files) serves every size as it is."""
    assert load_model_yaml(f"deim-rtv2-{size}.yaml")["recipe_size"] == size
    assert load_model_yaml(f"rtdetrv2-{size}.yaml")["recipe_size"] == size
    assert resolve_settings({}, "rtdetr", "train", size) == resolve_settings({}, "rtdetr", "train")


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


def test_a_model_of_another_familys_size_is_refused_and_a_copy_by_path_serves_it(tmp_path):
    """deim-rtv2.yaml comes in sizes now, so cfg=deim-rtv2 on a D-FINE-L model (size l) stops naming them; a copy
    of the file outside rtdet/cfg/recipes (no size files beside it) is read as it is."""
    with pytest.raises(SettingsError, match=r"recipe_size 'l' has no recipe: deim-rtv2\.yaml comes in sizes "
                                            r"r18, r34, r50, r50m, r101 .*or give a cfg= recipe made for this model"):
        resolve_settings({"cfg": "deim-rtv2"}, "dfine", "train", "l")
    copy = tmp_path / "deim-rtv2.yaml"
    copy.write_text(RECIPE.read_text())
    assert resolve_settings({"cfg": str(copy)}, "dfine", "train", "l")["epochs"] == 120
