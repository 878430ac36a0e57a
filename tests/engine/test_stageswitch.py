"""D-FINE / DEIM's stage switch (``stage_switch=true``): at the multi-scale stop the run goes back to stage one's
best checkpoint, and again after each later epoch that does not beat the best since the last return; resume
reproduces the uninterrupted run exactly."""


import pytest
import torch

from rtdet.engine.settings import SettingsError
from rtdet.engine.stageswitch import StageSwitch
from rtdet.engine.trainer import Trainer
from rtdet.utils.checkpoint import load_checkpoint
from tests.engine.run_helpers import train_until_ctrl_c
from tests.engine.test_trainer import _assert_same


def _official_reloads(fits: list[float], stop: int) -> list[int]:
    """The epochs after which D-FINE's fit loop (src/solver/det_solver.py) reloads best.pth: best_stat keeps
    the best mAP (strictly higher replaces it); from stop_epoch on, an epoch that is not the best empties
    best_stat and reloads. (Its reload at the start of stop_epoch is not listed.)"""
    best, reloads = None, []
    for epoch, fit in enumerate(fits):
        if best is None or fit > best:
            best = fit
        elif epoch >= stop:
            best = None
            reloads.append(epoch)
    return reloads


def test_settings_and_the_stop_epoch():
    assert StageSwitch.from_settings({"stage_switch": False, "epochs": 10, "multi_scale_stop": 0.5}) is None
    assert StageSwitch.from_settings({"stage_switch": True, "epochs": 10, "multi_scale_stop": 1.0}) is None
    assert StageSwitch.from_settings({"stage_switch": True, "epochs": 1, "multi_scale_stop": 0.9}) is None
    switch = StageSwitch.from_settings({"stage_switch": True, "epochs": 132, "multi_scale_stop": 120 / 132})
    assert switch.stop_epoch == 120 and switch.starts(120) and not switch.starts(119)


@pytest.mark.parametrize("fits", [[0.1, 0.3, 0.2, 0.25, 0.4, 0.35, 0.35, 0.1, 0.5],
                                  [0.5, 0.4, 0.3, 0.2, 0.1, 0.2, 0.3, 0.2, 0.1],
                                  [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]])
def test_reloads_follow_the_official_loop(fits):
    stop = 4
    switch = StageSwitch(stop, len(fits))
    best, reloads = None, []
    for epoch, fit in enumerate(fits):
        if switch.starts(epoch):
            switch.switched(best)
        improved = best is None or fit >= best
        best = fit if improved else best
        if switch.after_epoch(epoch, fit, improved):
            reloads.append(epoch)
    assert reloads == _official_reloads(fits, stop)


def _settings(tiny_settings, **extra) -> dict:
    # 4 epochs of 2 steps; stage two from epoch 2 (index), the loss as fitness (no validation)
    return {**tiny_settings, "epochs": 4, "stage_switch": True, "multi_scale_stop": 0.5, **extra}


def test_the_run_goes_back_to_stage_ones_best(tiny_settings, caplog):
    trainer = Trainer({**_settings(tiny_settings), "verbose": True})
    starts, best_epochs = {}, {}

    def record(t):
        starts[t.epoch] = {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()}
        best_epochs[t.epoch] = t.best_epoch

    trainer.add_callback("on_train_epoch_start", record)
    with caplog.at_level("INFO"):
        trainer.train()
    stage_one = load_checkpoint(trainer.wdir / "best_stage1.pt")
    assert stage_one["epoch"] == best_epochs[2]  # stage one's best epoch, as best.pt held it at the switch
    weights = stage_one["model"]["state_dict"]

    def same(state):
        return all(torch.equal(state[k], v) for k, v in weights.items())

    assert same(starts[2])  # epoch 3 (index 2) starts from stage one's best
    assert f"the stage switch at epoch 3: back to stage one's best (epoch {stage_one['epoch'] + 1}" in caplog.text
    reloaded = "epoch 3 did not improve on the best since the last reload" in caplog.text
    assert same(starts[3]) == reloaded  # after epoch 3: back to it again, or on from epoch 3's weights
    final = load_checkpoint(trainer.last)["model"]["state_dict"]
    assert same(final) == ("epoch 4 did not improve on the best since the last reload" in caplog.text)


# Validation mAP of each epoch, scripted: stage two starts at epoch index 2 (0.4 x 5); epoch 2 (0.2) does not beat
# stage one's 0.3: back to it; epoch 3 is then the best since the return; epoch 4 (0.1) is not: back again.
SCRIPTED_MAP = [0.1, 0.3, 0.2, 0.25, 0.1]


@pytest.fixture
def scripted_validation(monkeypatch):
    def validate(self):
        value = SCRIPTED_MAP[self.epoch]
        return {"mAP50-95": value, "mAP50": value}

    monkeypatch.setattr(Trainer, "_validate", validate)


@pytest.mark.parametrize("stop_at", [(2, 0), (1, 1), (3, 1), (4, 0)],
                         ids=["after-switch", "before-switch", "after-reload", "last-epoch"])
def test_ctrl_c_then_resume_reproduces_the_uninterrupted_run(tiny_settings, scripted_validation, stop_at, caplog):
    settings = _settings(tiny_settings, epochs=5, multi_scale_stop=0.4, val=True, verbose=True)
    reference = Trainer({**settings, "name": "reference"})
    with caplog.at_level("INFO"):
        reference.train()
    reloads = [r.getMessage() for r in caplog.records if "back to stage one's best" in r.getMessage()]
    assert [line.split(":")[0] for line in reloads] == [
        "the stage switch at epoch 3", "epoch 3 did not improve on the best since the last reload",
        "epoch 5 did not improve on the best since the last reload"]
    assert all("(epoch 2, weights/best_stage1.pt)" in line for line in reloads)
    interrupted = Trainer({**settings, "name": "interrupted"})
    last = train_until_ctrl_c(interrupted, stop_at)
    Trainer({"resume": str(last)}).train()
    _assert_same(reference.save_dir / "weights" / "last.pt", last)
    ref, mine = load_checkpoint(reference.save_dir / "weights" / "last.pt"), load_checkpoint(last)
    assert mine["stage_switch"] == ref["stage_switch"]
    drop = ("time",)  # the epochs' mean losses too: an epoch resumed inside counts its batches from before
    assert [{k: v for k, v in r.items() if k not in drop} for r in mine["results"]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in ref["results"]]
    for name in ("best.pt", "best_stage1.pt"):
        a = load_checkpoint(reference.save_dir / "weights" / name)
        b = load_checkpoint(interrupted.save_dir / "weights" / name)
        assert a["epoch"] == b["epoch"], name
        assert all(torch.equal(a["ema"]["state_dict"][k], b["ema"]["state_dict"][k]) for k in a["ema"]["state_dict"])
    stage_one = load_checkpoint(reference.save_dir / "weights" / "best_stage1.pt")["model"]["state_dict"]
    assert all(torch.equal(ref["model"]["state_dict"][k], v) for k, v in stage_one.items())  # epoch 5 went back


def test_stage_switch_refuses_rows_unfrozen_during_the_run(tiny_settings):
    with pytest.raises(SettingsError, match="stage_switch=true with freeze_epochs=1"):
        Trainer(_settings(tiny_settings, freeze="0", freeze_epochs=1)).setup()
