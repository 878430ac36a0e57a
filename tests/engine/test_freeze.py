"""Freezing: which rows a spec names, frozen rows unchanged by training (BatchNorm statistics too) while the
rest learns, unfreezing at ``freeze_epochs`` with the optimizer gaining their entries, and exact resume
across the unfreeze. Every family through the same tests (tiny models from conftest)."""

from pathlib import Path

import pytest
import torch
import yaml

from rtdet.cli import main
from rtdet.engine.freeze import parse_freeze, resolve_freeze
from rtdet.engine.settings import SettingsError
from rtdet.engine.trainer import Trainer
from rtdet.nn.model import DetectionModel
from rtdet.utils.checkpoint import load_checkpoint
from tests.engine.conftest import TINY_YOLO_YAML
from tests.engine.test_trainer import _assert_same


def _row_state(model, rows) -> dict[str, torch.Tensor]:
    """Every tensor (parameters and buffers: BatchNorm running statistics) of ``rows``, cloned."""
    return {f"{i}.{k}": v.detach().clone() for i in rows for k, v in model.model[i].state_dict().items()}


def _optimized(trainer) -> set[int]:
    return {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}


@pytest.fixture(params=["rtdetr", "yolov9", "rtmdet"])
def family_settings(request, tiny_settings, tiny_yolo_yaml, rtmdet_settings) -> dict:
    """A seconds-long run of each family's tiny model."""
    if request.param == "rtdetr":
        return tiny_settings
    if request.param == "yolov9":
        return {**tiny_settings, "model": str(tiny_yolo_yaml)}
    return rtmdet_settings


def test_parse_freeze_accepts_rows_ranges_and_parts():
    assert parse_freeze("0-10") == "0-10"
    assert parse_freeze("0, 3,5-7") == "0,3,5-7"
    assert parse_freeze([0, "2-4", "Backbone"]) == "0,2-4,backbone"
    assert parse_freeze(5) == "5"
    for bad, says in [("abc", "not a row, range or part"), ("7-3", "runs backwards"), ("1.5", "not a row")]:
        with pytest.raises(ValueError, match=says):
            parse_freeze(bad)


def test_parts_follow_the_yaml_sections_and_the_head_row():
    model = DetectionModel(yaml.safe_load(TINY_YOLO_YAML))  # backbone rows 0-4, head section 5-10, DualDDetect at 10
    assert resolve_freeze("backbone", model) == [0, 1, 2, 3, 4]
    assert resolve_freeze("neck", model) == [5, 6, 7, 8, 9]
    assert resolve_freeze("head", model) == [10]
    assert resolve_freeze("0,2-3,head", model) == [0, 2, 3, 10]
    assert resolve_freeze("transplanted", model, transplanted=[1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="row 11 does not exist.*rows 0-10"):
        resolve_freeze("5-11", model)
    with pytest.raises(ValueError, match="freeze=transplanted: no row"):
        resolve_freeze("transplanted", model, transplanted=[])


def test_frozen_rows_are_bit_identical_after_an_epoch_and_the_rest_learns(family_settings):
    trainer = Trainer({**family_settings, "epochs": 1, "freeze": "backbone"})
    trainer.setup()
    model = trainer.model
    frozen = trainer.freezer.rows
    n_backbone = len(model.yaml["backbone"])
    assert frozen == list(range(n_backbone))
    trainable = [i for i in range(len(model.model)) if i not in frozen and list(model.model[i].parameters())]
    before_frozen, before_rest = _row_state(model, frozen), _row_state(model, trainable)
    assert not _optimized(trainer) & {id(p) for i in frozen for p in model.model[i].parameters()}
    trainer._fit()
    after_frozen = _row_state(model, frozen)
    for k, v in before_frozen.items():
        assert torch.equal(v, after_frozen[k]), f"frozen {k} changed"
    ema_frozen = _row_state(trainer.ema.model, frozen)
    for k, v in after_frozen.items():
        assert torch.equal(v, ema_frozen[k]), f"EMA's frozen {k} differs from the model's"
    after_rest = _row_state(model, trainable)
    changed = [k for k, v in before_rest.items() if v.is_floating_point() and not torch.equal(v, after_rest[k])]
    assert changed, "no trainable tensor changed"
    assert any(".running_mean" in k for k in changed) or not any(".running_mean" in k for k in before_rest)


def test_rows_unfreeze_after_freeze_epochs_and_join_the_optimizer(family_settings):
    trainer = Trainer({**family_settings, "epochs": 2, "freeze": "0-2", "freeze_epochs": 1})
    trainer.setup()
    rows = trainer.freezer.rows
    params = {id(p) for i in rows for p in trainer.model.model[i].parameters()}
    states = []
    trainer.add_callback("on_fit_epoch_end", lambda t: states.append(
        (_row_state(t.model, rows), _optimized(t), t.freezer.frozen)))
    start = _row_state(trainer.model, rows)
    trainer._fit()
    (epoch1, opt1, frozen1), (epoch2, opt2, frozen2) = states
    assert frozen1 and not frozen2
    assert not params & opt1 and params <= opt2  # the optimizer had no entry for them, then has them all
    assert all(torch.equal(v, epoch1[k]) for k, v in start.items())  # epoch 1: untouched
    assert any(not torch.equal(v, epoch2[k]) for k, v in epoch1.items() if v.is_floating_point())  # epoch 2: trained


@pytest.mark.parametrize("stop_epoch", [0, 1], ids=["stopped-before-unfreezing", "stopped-after-unfreezing"])
def test_resume_across_the_unfreeze_epoch_is_exact(tiny_settings, stop_epoch):
    settings = {**tiny_settings, "epochs": 3, "freeze": "backbone", "freeze_epochs": 1}
    reference = Trainer({**settings, "name": "reference"})
    reference.train()

    first = Trainer({**settings, "name": "interrupted"})
    first.add_callback("on_fit_epoch_end", lambda t: t.request_stop() if t.epoch == stop_epoch else None)
    with pytest.raises(KeyboardInterrupt):
        first.train()
    last = first.save_dir / "weights" / "last.pt"
    assert load_checkpoint(last)["epoch"] == stop_epoch
    Trainer({"resume": str(last)}).train()
    _assert_same(reference.save_dir / "weights" / "last.pt", last)


def test_transplanted_rows_are_frozen_saved_and_restored_on_resume(tiny_settings):
    settings = {**tiny_settings, "epochs": 2, "freeze": "transplanted"}
    with pytest.raises(SettingsError, match="freeze=transplanted: no row"):
        Trainer({**settings, "name": "none"}).setup()
    assert not (Path(settings["project"]) / "train" / "none").exists()  # checked before any run folder
    trainer = Trainer(settings)
    trainer.transplanted_rows = [0, 1]  # what pretrained= records when it transplants rows
    trainer.add_callback("on_fit_epoch_end", lambda t: t.request_stop() if t.epoch == 0 else None)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    last = trainer.save_dir / "weights" / "last.pt"
    assert load_checkpoint(last)["transplanted_rows"] == [0, 1]
    resumed = Trainer({"resume": str(last)})
    resumed.setup()
    assert resumed.transplanted_rows == [0, 1] and resumed.freezer.rows == [0, 1]


def test_a_bad_freeze_value_is_exit_2_naming_it(tiny_settings, capsys, tmp_path):
    assert main(["train", f"model={tiny_settings['model']}", f"data={tiny_settings['data']}", "freeze=conv",
                 f"project={tmp_path / 'runs'}"]) == 2
    assert "freeze='conv'" in capsys.readouterr().err
    assert main(["train", f"model={tiny_settings['model']}", f"data={tiny_settings['data']}", "freeze=0-99",
                 "imgsz=64", "device=cpu", f"project={tmp_path / 'runs'}"]) == 2
    assert "row 99 does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
