"""Per-size recipes: a model YAML's ``recipe_size`` picks ``<recipe>-<size>.yaml`` beside the family recipe and
beside a shipped ``cfg=`` recipe (dfine-l.yaml -> dfine-l.yaml, cfg=deim -> deim-l.yaml); the precedence
user > cfg > size recipe > family recipe > default.yaml holds; a size a recipe does not come in is an error."""

from pathlib import Path

import pytest

import rtdet.families  # noqa: F401  (registers the built-in families)
from rtdet.cli import parse_args
from rtdet.data.pipelines import load_pipeline_spec
from rtdet.engine.autorecipe import summary
from rtdet.engine.compare import Compare
from rtdet.engine.settings import (
    CFG_DIR,
    SettingsError,
    apply_cfg,
    cfg_path,
    read_recipe,
    recipe_path,
    resolve_settings,
    shipped_recipes,
    size_recipes,
)
from rtdet.engine.trainer import Trainer
from rtdet.nn.builder import MODELS_DIR, load_model_yaml

RECIPES = CFG_DIR / "recipes"

# The official per-size values (research notes section 8; D-FINE configs/dfine/dfine_hgnetv2_*_coco.yml and DEIM
# configs/deim_dfine/deim_hgnetv2_*_coco.yml): epochs, stop epoch, lr0, backbone lr, weight decay,
# base_size_repeat (None: no multi-scale), batch.
DFINE = {
    "n": (160, 148, 8e-4, 4e-4, 1e-4, None, 128), "s": (132, 120, 2e-4, 1e-4, 1e-4, 20, 32),
    "m": (132, 120, 2e-4, 2e-5, 1e-4, 6, 32), "l": (80, 72, 2.5e-4, 1.25e-5, 1.25e-4, 4, 32),
    "x": (80, 72, 2.5e-4, 2.5e-6, 1.25e-4, 3, 32),
}
# DEIM: epochs, policy [e1, e2, e3], lr0, backbone lr, weight decay, flat_epoch, no_aug_epoch, lr_gamma, repeat.
DEIM = {
    "n": (160, (4, 78, 148), 8e-4, 4e-4, 1e-4, 7800, 12, 1.0, None),
    "s": (132, (4, 64, 120), 4e-4, 2e-4, 1e-4, 64, 12, 0.5, 20),
    "m": (102, (4, 49, 90), 4e-4, 4e-5, 1e-4, 49, 12, 0.5, 6),
    "l": (58, (4, 29, 50), 5e-4, 2.5e-5, 1.25e-4, 29, 8, 0.5, 4),
    "x": (58, (4, 29, 50), 5e-4, 5e-6, 1.25e-4, 29, 8, 0.5, 3),
}


@pytest.mark.parametrize("stem", ["dfine", "deim"])
def test_each_size_recipe_declares_its_size_and_sets_every_key_of_the_s_recipe(stem):
    base, own = read_recipe(RECIPES / f"{stem}.yaml")
    assert own == "s"
    sizes = size_recipes(RECIPES / f"{stem}.yaml")
    assert sorted(sizes) == ["l", "m", "n", "x"]
    for size, path in sizes.items():
        values, declared = read_recipe(path)
        assert declared == size and path.name == f"{stem}-{size}.yaml"
        assert set(values) == set(base), path  # read instead of the S file: nothing of it may be left out
    names = shipped_recipes()  # cfg= names: the size files are not listed
    assert names[:3] == ["deim", "deim-rtv2", "dfine"] and not {f"{stem}-{size}" for size in sizes} & set(names)


@pytest.mark.parametrize("size", ["n", "s", "m", "l", "x"])
def test_the_family_recipe_of_each_dfine_size_is_the_official_one(size):
    epochs, stop, lr0, backbone_lr, wd, repeat, batch = DFINE[size]
    assert load_model_yaml(f"dfine-{size}.yaml")["recipe_size"] == size  # the model YAML names its size
    args = resolve_settings({}, "dfine", "train", size)
    assert recipe_path("dfine", size).name == ("dfine.yaml" if size == "s" else f"dfine-{size}.yaml")
    assert (args["epochs"], args["batch"], args["lr0"], args["weight_decay"]) == (epochs, batch, lr0, wd)
    assert args["lr0"] * args["backbone_lr_ratio"] == pytest.approx(backbone_lr, rel=1e-12)
    assert args["scheduler"] == "constant" and args["warmup_iters"] == 500 and args["warmup_shape"] == "linear"
    assert round(args["multi_scale_stop"] * epochs) == stop and args["stage_switch"] is True  # switch at `stop`
    if repeat is None:
        assert args["multi_scale"] is None
    else:
        assert args["multi_scale"] == [0.75, 1.25] and args["multi_scale_repeat"] == repeat
        assert args["multi_scale_interpolation"] == "nearest"
    spec = load_pipeline_spec(args["train_pipeline"])  # the augmentations stop at the official epoch
    assert [start for start, _ in spec.train_stages(epochs)] == [0, stop]
    assert "recipe_size" not in read_recipe(recipe_path("dfine", size))[0]  # a declaration, not a setting


@pytest.mark.parametrize("size", ["n", "s", "m", "l", "x"])
def test_cfg_deim_reads_the_deim_recipe_of_the_models_size(size):
    epochs, policy, lr0, backbone_lr, wd, flat, no_aug, gamma, repeat = DEIM[size]
    assert cfg_path("deim", size).name == ("deim.yaml" if size == "s" else f"deim-{size}.yaml")
    args = resolve_settings({"cfg": "deim"}, "dfine", "train", size)
    assert (args["epochs"], args["lr0"], args["weight_decay"], args["lrf"]) == (epochs, lr0, wd, gamma)
    assert args["lr0"] * args["backbone_lr_ratio"] == pytest.approx(backbone_lr, rel=1e-12)
    assert args["scheduler"] == "flat-cosine" and args["warmup_iters"] == 2000
    assert args["warmup_shape"] == "quadratic" and args["loss"] == "mal"
    assert args["flat_fraction"] == pytest.approx(min(flat / epochs, 1.0), rel=1e-15)
    assert args["cosine_end"] == pytest.approx((epochs - no_aug) / epochs, rel=1e-15)
    assert round(args["multi_scale_stop"] * epochs) == policy[2] and args["stage_switch"] is True
    assert args["multi_scale_repeat"] == (repeat or 0) and (args["multi_scale"] is None) == (repeat is None)
    spec = load_pipeline_spec(args["train_pipeline"])
    assert [start for start, _ in spec.train_stages(epochs)] == [0, *policy]  # the official policy epochs
    mixup = [start for start, batch in spec.batch_stages(epochs) if batch]
    assert mixup == [policy[0]]  # MixUp from e1, dropped at e2


def test_precedence_user_over_cfg_over_size_recipe_over_family_recipe_over_default(tmp_path):
    args = resolve_settings({"cfg": "deim", "lr0": 1e-5}, "dfine", "train", "l")
    assert args["lr0"] == 1e-5  # the user's
    assert args["epochs"] == 58 and args["loss"] == "mal"  # deim-l.yaml's over dfine-l.yaml's 80 / vfl
    mine = tmp_path / "mine.yaml"
    mine.write_text("epochs: 7\n")  # a settings file of one's own: no sizes, read as it is
    args = resolve_settings({"cfg": str(mine)}, "dfine", "train", "l")
    assert args["epochs"] == 7 and args["lr0"] == 2.5e-4  # cfg over the size recipe, which fills the rest
    assert args["patience"] == resolve_settings({})["patience"]  # default.yaml under everything
    assert resolve_settings({}, "dfine", "train")["lr0"] == 2e-4  # no size: the family recipe (S)
    assert resolve_settings({"cfg": str(RECIPES / "deim-l.yaml")}, "dfine", "train", "m")["epochs"] == 58  # chosen


def test_a_size_the_recipe_does_not_come_in_is_a_clear_error():
    with pytest.raises(SettingsError, match=r"my-dfine\.yaml: recipe_size 'q' has no recipe: dfine\.yaml comes in "
                                            r"sizes n, s, m, l, x \(dfine-n\.yaml, dfine\.yaml, dfine-m\.yaml"):
        resolve_settings({}, "dfine", "train", "q", where="my-dfine.yaml")
    with pytest.raises(SettingsError, match=r"recipe_size 'q' has no recipe: deim\.yaml comes in sizes n, s, m, l, x"):
        apply_cfg({"cfg": "deim"}, "train", "q")
    assert resolve_settings({}, "rtdetr", "train", "q")["lr0"] == 1e-4  # a recipe without sizes serves any


def test_train_keeps_a_sized_cfg_for_the_trainer_and_other_verbs_read_it_at_once():
    assert parse_args(["cfg=deim", "lr0=1e-3"], "train") == {"cfg": "deim", "lr0": 1e-3}  # the model decides
    assert parse_args(["cfg=deim", "lr0=1e-3"], "compare") == {"cfg": "deim", "lr0": 1e-3}  # each variant's size
    val = parse_args(["cfg=deim", "lr0=1e-3"], "val")
    assert val["lr0"] == 1e-3 and val["loss"] == "mal" and "cfg" not in val and "recipe_size" not in val
    with pytest.raises(SettingsError, match="epochs"):  # a bad file is still refused before any work
        parse_args(["cfg=deim", "epochs=0"], "train")


@pytest.fixture(scope="module")
def dfine_l_tiny(tmp_path_factory) -> Path:
    """dfine-demo.yaml (a small D-FINE) that says it is an L model."""
    text = (MODELS_DIR / "dfine" / "dfine-demo.yaml").read_text()
    path = tmp_path_factory.mktemp("models") / "dfine-l-tiny.yaml"
    path.write_text(f"recipe_size: l\n{text}")
    return path


def _settings(model: Path, data: Path, tmp_path: Path, **extra) -> dict:
    return {"model": str(model), "data": str(data), "imgsz": 64, "batch": 4, "workers": 0, "device": "cpu",
            "project": str(tmp_path / "runs"), "val": False, "plots": False, "verbose": False, **extra}


def test_the_trainer_reads_the_recipes_of_the_models_size(dfine_l_tiny, tiny_data, tmp_path, caplog):
    trainer = Trainer(_settings(dfine_l_tiny, tiny_data, tmp_path, recipe="official"))
    trainer.setup()
    assert trainer.recipe_files == "dfine-l.yaml" and trainer.args["recipe_size"] == "l"
    assert trainer.args["epochs"] == 80 and trainer.args["lr0"] == 2.5e-4 and trainer.args["multi_scale_repeat"] == 4
    assert trainer.multi_scale.sizes.count(64) == 4  # imgsz listed base_size_repeat times
    deim = Trainer(_settings(dfine_l_tiny, tiny_data, tmp_path, recipe="official", cfg="deim", epochs=3, verbose=True))
    deim.setup()
    assert deim.recipe_files == "dfine-l.yaml + cfg=deim-l.yaml"
    assert deim.args["epochs"] == 3 and deim.args["lr0"] == 5e-4 and deim.args["loss"] == "mal"  # user > cfg
    assert deim.schedule.warmup_shape == "quadratic" and deim.schedule.cosine_end == pytest.approx(50 / 58)
    assert deim.train_loader.dataset.spec.name == "deim-l"
    deim.epochs = 0  # the start-of-run line only
    with caplog.at_level("INFO"):
        deim._fit()
    assert "Training dfine-l-tiny (dfine, recipe dfine-l.yaml + cfg=deim-l.yaml) on cpu" in caplog.text
    mine = Trainer(_settings(dfine_l_tiny, tiny_data, tmp_path, recipe="official", recipe_size="m"))
    mine.setup()
    assert mine.recipe_files == "dfine-m.yaml" and mine.args["epochs"] == 132  # the user's size over the YAML's


def test_compare_trains_each_variant_on_the_cfg_recipe_of_its_size(dfine_l_tiny, tiny_data, tmp_path):
    # `rtdet compare models=dfine-s.yaml,dfine-l.yaml cfg=deim`: the baseline on deim.yaml, the L on deim-l.yaml
    args = parse_args([f"models={MODELS_DIR / 'dfine' / 'dfine-demo.yaml'},{dfine_l_tiny}", "cfg=deim",
                       f"data={tiny_data}", f"project={tmp_path / 'runs'}", "imgsz=64", "batch=4"], "compare")
    compare = Compare(args)
    compare._setup()
    assert compare.train_args["cfg"] == "deim"  # handed to every variant's trainer
    files = []
    for model in (MODELS_DIR / "dfine" / "dfine-demo.yaml", dfine_l_tiny):
        trainer = Trainer({**compare.train_args, **_settings(model, tiny_data, tmp_path, recipe="official")})
        trainer.setup()
        files.append((trainer.recipe_files, trainer.args["lr0"]))
    assert files == [("dfine.yaml + cfg=deim.yaml", 4e-4), ("dfine-l.yaml + cfg=deim-l.yaml", 5e-4)]


def test_recipe_auto_leaves_the_cfg_files_keys_alone(dfine_l_tiny, tiny_data, tmp_path):
    """recipe=auto adapts the recipe to a short run but not what the user or cfg= set (as before sizes)."""
    auto = Trainer(_settings(dfine_l_tiny, tiny_data, tmp_path, epochs=2))
    auto.setup()
    assert auto.args["ema_decay"] < 0.9999  # the family recipe's EMA, adapted to 4 steps
    assert auto.args["train_pipeline"] == "plain"  # dfine-l.yaml's inline pipeline zooms and crops
    line = summary({"train_pipeline": resolve_settings({}, "dfine", "train", "l")["train_pipeline"]},
                   {"train_pipeline": "plain"}, ["a small set"])
    assert "train_pipeline dfine-l->plain" in line  # an inline pipeline is shown by its name
    deim = Trainer(_settings(dfine_l_tiny, tiny_data, tmp_path, epochs=2, cfg="deim"))
    deim.setup()
    assert deim.args["ema_decay"] == 0.9999 and "ema_decay" in deim.given  # deim-l.yaml's, as set


def test_a_bad_size_in_the_model_yaml_stops_training_naming_the_file(dfine_l_tiny, tiny_data, tmp_path):
    bad = tmp_path / "dfine-q.yaml"
    bad.write_text(dfine_l_tiny.read_text().replace("recipe_size: l", "recipe_size: q", 1))
    with pytest.raises(SettingsError, match=r"dfine-q\.yaml: recipe_size 'q' has no recipe: .*sizes n, s, m, l, x"):
        Trainer(_settings(bad, tiny_data, tmp_path)).setup()
    assert not (tmp_path / "runs").exists()  # refused before the run folder is claimed


def test_a_size_the_family_recipe_does_not_come_in_trains_on_the_family_recipe(tiny_data, tmp_path, single_thread):
    """A DEIM-RTv2-L model YAML (recipe_size r50; a tiny RT-DETRv2 here) trains on rtdetr.yaml, which comes in no
    sizes, without cfg= (no error), and cfg=deim-rtv2 reads deim-rtv2-r50.yaml for it."""
    from tests.contract_models import TINY_RTV2_YAML

    model = tmp_path / "deim-rtv2-r50-tiny.yaml"
    model.write_text(f"recipe_size: r50\n{TINY_RTV2_YAML}")
    plain = Trainer(_settings(model, tiny_data, tmp_path, recipe="official", epochs=1, amp=False, multi_scale=None))
    plain.train()
    assert plain.recipe_files == "rtdetr.yaml" and plain.args["recipe_size"] == "r50"
    assert plain.args["lr0"] == resolve_settings({}, "rtdetr", "train")["lr0"] and plain.last.is_file()
    deim = Trainer(_settings(model, tiny_data, tmp_path, recipe="official", cfg="deim-rtv2"))
    deim.setup()
    assert deim.recipe_files == "rtdetr.yaml + cfg=deim-rtv2-r50.yaml"
    assert deim.args["epochs"] == 60 and deim.args["backbone_lr_ratio"] == 0.1 and deim.args["loss"] == "mal"
    assert deim.train_loader.dataset.spec.name == "deim-rtv2-r50" and deim.schedule.warmup_shape == "quadratic"
    assert deim.schedule.cosine_end == pytest.approx(58 / 60) and deim.multi_scale.sizes.count(64) == 3
