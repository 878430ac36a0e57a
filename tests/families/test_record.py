"""A family is one record: registering one from outside the package gives it a loss, a recipe, demo settings
and a pipeline, exactly as the built-in families get theirs, and the engine trains it."""

import dataclasses

import pytest
import torch
import torch.nn as nn
import yaml

from rtdet.demo import family_demo_settings
from rtdet.engine.settings import SettingsError, available_recipes, criterion_hyperparameters, resolve_settings
from rtdet.engine.trainer import Trainer
from rtdet.families import (
    RTDETR,
    RTMDET,
    YOLOV9,
    Family,
    FamilyError,
    criterion_for,
    families,
    family_of,
    register_family,
    unregister_family,
)
from rtdet.io.load import build_model
from rtdet.losses.base import Criterion
from rtdet.nn.heads.base import Decoded, DetectionHead
from rtdet.nn.registry import register, registered_names, unregister
from rtdet.utils.schema import Setting


class CentreCriterion(Criterion):
    """Class-score BCE at the cell holding each box's centre: a real (if crude) detection loss."""

    SETTINGS = (Setting("centre_gain", 1.0, float, "weight of the centre-cell loss", low=0.0),)

    def __init__(self, nc: int, strides: list[int], **hyp):
        super().__init__(nc, **hyp)
        self.stride = strides[0]

    def forward(self, outputs: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
        b, _, h, w = outputs.shape
        target = torch.zeros_like(outputs)
        for i, cls, box in zip(batch["batch_idx"].long(), batch["cls"].long().view(-1), batch["bboxes"]):
            x, y = int(box[0] * w), int(box[1] * h)  # normalised xywh: the centre's cell
            target[i, cls, min(y, h - 1), min(x, w - 1)] = 1.0
        loss = self.hyp["centre_gain"] * nn.functional.binary_cross_entropy_with_logits(outputs, target)
        return loss, {"centre": loss.detach()}


class CentreHead(DetectionHead):
    """Class logits per cell of one level; a box of one stride around each cell centre."""

    family = "centre"

    def __init__(self, nc: int, ch: list[int]):
        super().__init__()
        self.nc = nc
        self.conv = nn.Conv2d(ch[0], nc, 1)

    def forward(self, feats: list[torch.Tensor], targets=None) -> torch.Tensor:
        return self.conv(feats[0])  # [B, nc, H, W]

    def decode(self, outputs: torch.Tensor, img_shape: tuple[int, int]) -> Decoded:
        b, nc, h, w = outputs.shape
        s = self.strides[0]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centres = torch.stack([xs, ys], -1).view(1, -1, 2).to(outputs) * s + s / 2
        boxes = torch.cat([centres - s, centres + s], -1).expand(b, -1, -1)
        return Decoded(boxes, outputs.flatten(2).transpose(1, 2).sigmoid())


YAML = {"nc": 2, "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]]],
        "head": [[[-1], 1, "CentreHead", ["nc"]]]}


@pytest.fixture
def centre_family(tmp_path):
    """The toy family, registered as a package outside rtdet would: its own recipe, demo settings and
    pipeline files."""
    (tmp_path / "centre-recipe.yaml").write_text("lr0: 0.0123\ncentre_gain: 3.0\ntrain_pipeline: centre-plain\n")
    (tmp_path / "centre-demo.yaml").write_text("epochs: 1\nwarmup_iters: 0\n")
    plain = yaml.safe_load((RTDETR.recipe.parent.parent / "pipelines" / "plain.yaml").read_text())
    (tmp_path / "centre-plain.yaml").write_text(yaml.safe_dump(plain))
    register(channels="head")(CentreHead)
    family = register_family(Family(
        name="centre", heads=(CentreHead,), criterion=CentreCriterion,
        criterion_args=lambda head: {"nc": head.nc, "strides": head.strides},
        recipe=tmp_path / "centre-recipe.yaml", demo=tmp_path / "centre-demo.yaml",
        pipelines=(tmp_path / "centre-plain.yaml",)))
    yield family
    unregister_family("centre")
    unregister("CentreHead")


def test_the_built_in_families_are_records():
    assert {"rtdetr", "yolov9", "rtmdet"} <= set(families())
    for record in (RTDETR, YOLOV9, RTMDET):
        assert record.recipe.is_file() and record.demo.is_file() and record.criterion is not None
        assert all(head.family == record.name for head in record.heads)
        assert all(head.__name__ in registered_names() for head in record.heads)  # the registry sees every head


def test_the_record_binds_head_and_loss(centre_family):
    model = build_model(YAML)
    assert family_of(model.head) is centre_family
    criterion = criterion_for(model.head, {"centre_gain": 2.0})
    assert isinstance(criterion, CentreCriterion) and criterion.stride == 4 and criterion.hyp["centre_gain"] == 2.0


def test_an_outside_family_gets_its_recipe_and_demo_settings(centre_family):
    assert "centre" in available_recipes()
    args = resolve_settings({}, family="centre")
    assert args["lr0"] == 0.0123 and args["centre_gain"] == 3.0 and args["train_pipeline"] == "centre-plain"
    assert resolve_settings({"centre_gain": 0.5}, family="centre")["centre_gain"] == 0.5  # arguments win
    assert criterion_hyperparameters(args, "centre") == {"centre_gain": 3.0}
    assert family_demo_settings("centre") == {"epochs": 1, "warmup_iters": 0}
    with pytest.raises(SettingsError, match="'centre_gain' is a loss setting of the centre family"):
        resolve_settings({"centre_gain": 1.0}, family="rtdetr")


def test_the_engine_trains_an_outside_family(centre_family, tmp_path):
    from rtdet.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=64, seed=0, n_classes=2,
                                  min_objects=1, max_objects=2, size_range=(0.3, 0.6))
    (tmp_path / "centre.yaml").write_text(yaml.safe_dump(YAML))
    trainer = Trainer({"model": str(tmp_path / "centre.yaml"), "data": str(data), "imgsz": 64, "batch": 4,
                       "epochs": 3, "workers": 0, "device": "cpu", "project": str(tmp_path / "runs"),
                       "plots": False, "verbose": False, "seed": 0, "recipe": "official", "lr0": 0.05,
                       "warmup_iters": 0, "optimizer": "SGD"})
    results = trainer.train()
    assert isinstance(trainer.criterion, CentreCriterion) and trainer.criterion.hyp["centre_gain"] == 3.0
    saved = yaml.safe_load((trainer.save_dir / "args.yaml").read_text())
    assert saved["train_pipeline"] == "centre-plain" and saved["centre_gain"] == 3.0  # the recipe's values
    losses = [row["train/centre"] for row in trainer.rows]
    assert losses[-1] < losses[0], losses
    assert 0.0 <= results["mAP50"] <= 1.0  # validated through the head's decode and the shared NMS


def test_unregistering_a_family_frees_its_pipeline_names(centre_family):
    from rtdet.data.pipelines import named_pipelines

    assert "centre-plain" in named_pipelines()
    unregister_family("centre")
    assert "centre-plain" not in named_pipelines() and "plain" in named_pipelines()
    register_family(centre_family)  # and the same files register again
    assert "centre-plain" in named_pipelines()


def test_a_record_is_checked_when_it_is_registered(tmp_path):
    class Stray(nn.Module):
        family = "stray"

    with pytest.raises(FamilyError, match="is not a DetectionHead subclass"):
        register_family(Family(name="stray", heads=(Stray,)))
    with pytest.raises(FamilyError, match="head CentreHead declares family 'centre'"):
        register_family(Family(name="other", heads=(CentreHead,)))
    with pytest.raises(FamilyError, match="criterion .* is not a rtdet.losses.base.Criterion subclass"):
        register_family(Family(name="centre", heads=(CentreHead,), criterion=nn.MSELoss))
    with pytest.raises(FamilyError, match=r"recipe file .*missing.yaml not found"):
        register_family(Family(name="centre", heads=(CentreHead,), recipe=tmp_path / "missing.yaml"))
    class AnotherDecoder(CentreHead):
        family = "rtdetr"

    with pytest.raises(FamilyError, match="a family named 'rtdetr' is already registered; pass replace=True"):
        register_family(dataclasses.replace(RTDETR, heads=(AnotherDecoder,)))
    assert "other" not in families() and families()["rtdetr"] is RTDETR


def test_a_head_without_a_record_cannot_train():
    class Orphan(DetectionHead):
        family = "orphan"

        def __init__(self):
            super().__init__()
            self.nc = 1

        def decode(self, outputs, img_shape):
            return Decoded(outputs, outputs)

    with pytest.raises(FamilyError, match="declares family 'orphan', which no family record names"):
        criterion_for(Orphan())


def test_dfine_trains_with_its_recipe_or_deims_by_name():
    from rtdet.engine.settings import apply_cfg
    from rtdet.families import DFINE

    official = resolve_settings({}, family="dfine")
    assert DFINE.recipe.name == "dfine.yaml" and official["train_pipeline"] == "dfine" and official["loss"] == "vfl"
    deim = resolve_settings(apply_cfg({"cfg": "deim", "lr0": 1e-4}, "train"), family="dfine")
    assert deim["loss"] == "mal" and deim["mal_gamma"] == 1.5 and deim["train_pipeline"] == "deim"
    assert deim["scheduler"] == "flat-cosine" and deim["lr0"] == 1e-4  # the command line over the file
    rtdetr = resolve_settings({"loss": "mal", "train_pipeline": "deim"}, family="rtdetr")  # DEIM's swaps on RT-DETR
    assert rtdetr["loss"] == "mal" and rtdetr["train_pipeline"] == "deim"
    with pytest.raises(SettingsError, match=r"cfg=deimm: no such settings file, .*\(deim, deim-rtv2, dfine, rtdetr"):
        apply_cfg({"cfg": "deimm"}, "train")
    with pytest.raises(SettingsError, match="loss_fgl"):
        resolve_settings({"loss_fgl": 0.15}, family="rtdetr")  # FGL needs D-FINE's distributions
