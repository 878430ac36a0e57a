"""`rtdet tune`: the search space checked against the schema before any trial, four trials over two
settings with every output, ASHA pruning fed by each epoch's mAP, and `rtdet train cfg=best.yaml`."""

import csv

import pytest
import yaml

from rtdet.engine.settings import SettingsError, apply_cfg
from rtdet.engine.tune import Tune, parse_space

pytestmark = pytest.mark.filterwarnings("ignore")


def _space(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_space_kinds(tmp_path):
    space = parse_space(_space(tmp_path, "lr0: [1.0e-4, 1.0e-2, log]\nwarmup_iters: [0, 20]\nmomentum: [0.8, 0.95]\n"
                                         "optimizer: {choices: [SGD, AdamW]}\n"))
    assert (space["lr0"].kind, space["lr0"].log, space["lr0"].low) == ("float", True, 1e-4)
    assert (space["warmup_iters"].kind, space["warmup_iters"].high) == ("int", 20)  # both bounds integers
    assert space["momentum"].kind == "float" and space["optimizer"].choices == ["SGD", "AdamW"]


@pytest.mark.parametrize("text, message", [
    ("lr: [1.0e-4, 1.0e-2]", "'lr' is not a valid setting for tune. Did you mean: .*lr0"),
    ("lr0: [1.0e-2, 1.0e-4]", "lr0: expected \\[low, high\\] numbers with low < high"),
    ("lr0: [-1.0, 1.0]", "lr0=-1.0: expected a number > 0"),  # a bound outside the setting's own range
    ("lr0: [0.0, 1.0, log]", "lr0=0.0"),
    ("optimizer: {choices: [SGD, Adamm]}", "optimizer='Adamm'"),
    ("epochs: 3", "epochs: 3 is not a range or choices"),
    ("data: {choices: [a.yaml, b.yaml]}", "'data' cannot be searched"),
    ("box: [1.0, 10.0]", "'box' is a loss setting of the yolov9 family, but this model's head is rtdetr"),
])
def test_space_errors_name_the_file_and_key(tmp_path, text, message):
    with pytest.raises(SettingsError, match=message) as e:
        parse_space(_space(tmp_path, text), family="rtdetr")
    assert str(e.value).startswith(str(tmp_path / "space.yaml"))


def test_space_searches_the_model_family_loss_settings(tmp_path):
    """No family's settings are imposed on another: each family's own loss keys are searchable."""
    assert parse_space(_space(tmp_path, "box: [1.0, 10.0]"), family="yolov9")["box"].high == 10.0
    assert parse_space(_space(tmp_path, "loss_giou: [1.0, 3.0]"), family="rtdetr")["loss_giou"].low == 1.0


def test_a_bad_space_stops_before_any_trial(tiny_settings, tmp_path):
    with pytest.raises(SettingsError, match="'lr' is not a valid setting"):
        Tune({**tiny_settings, "val": True, "space": str(_space(tmp_path, "lr: [0.1, 0.2]")), "trials": 2})()
    assert not (tmp_path / "runs" / "tune").exists()  # no run folder


def test_cfg_file_lies_under_the_command_line(tmp_path):
    cfg = tmp_path / "best.yaml"
    cfg.write_text("lr0: 1.0e-3\nepochs: 5\n")
    assert apply_cfg({"cfg": str(cfg), "epochs": 2}) == {"lr0": 1e-3, "epochs": 2}
    cfg.write_text("lr0: -1\n")
    with pytest.raises(SettingsError, match=f"{cfg}: lr0=-1"):
        apply_cfg({"cfg": str(cfg)})
    cfg.write_text("epoch: 3\n")
    with pytest.raises(SettingsError, match=f"{cfg}: 'epoch' is not a valid setting.*epochs"):
        apply_cfg({"cfg": str(cfg)})
    from rtdet.cli import parse_args

    cfg.write_text("conf: 0.5\nimgsz: 320\n")  # every verb on the command line reads it
    assert parse_args([f"cfg={cfg}", "imgsz=640"], "val") == {"conf": 0.5, "imgsz": 640}


def test_tune_four_trials_over_two_settings(tiny_settings, tmp_path):
    space = _space(tmp_path, "lr0: [1.0e-4, 1.0e-2, log]\nwarmup_iters: [0, 4]\n")
    summary = Tune({**tiny_settings, "epochs": 1, "val": True, "space": str(space), "trials": 4})()
    root = tmp_path / "runs" / "tune" / "tune"
    assert len(summary["trials"]) == 4 and all(r["state"] == "complete" for r in summary["trials"])
    assert len({r["lr0"] for r in summary["trials"]}) == 4  # four different proposals
    for name in ("results.md", "results.csv", "best.yaml", "history.png", "study.log"):
        assert (root / name).is_file() and (root / name).stat().st_size > 0, name
    with (root / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["trial"] for r in rows] == [str(r["trial"]) for r in summary["trials"]]  # best first
    assert float(rows[0]["mAP50-95"]) == summary["best"]["value"] >= float(rows[-1]["mAP50-95"])
    for k in range(4):
        assert (root / "train" / f"trial-{k:03d}" / "weights" / "last.pt").is_file()
    best = yaml.safe_load((root / "best.yaml").read_text())
    assert best["lr0"] == summary["best"]["params"]["lr0"] and best["model"] == tiny_settings["model"]

    from rtdet.engine.trainer import Trainer  # `rtdet train cfg=best.yaml`: the best trial, trained again

    again = Trainer({"cfg": str(root / "best.yaml"), "project": str(tmp_path / "again")})
    again.train()
    assert again.args["lr0"] == best["lr0"] and again.args["warmup_iters"] == best["warmup_iters"]


@pytest.mark.slow
def test_asha_prunes_on_each_epochs_map(tiny_settings, tmp_path):
    """pruner=asha: every epoch's validation mAP50-95 reaches Optuna (intermediate values) and the pruner
    may stop a trial early; every trial ends complete or pruned."""
    space = _space(tmp_path, "lr0: [1.0e-5, 1.0e-1, log]\n")
    summary = Tune({**tiny_settings, "epochs": 3, "val": True, "space": str(space), "trials": 6,
                    "pruner": "asha"})()
    states = [r["state"] for r in summary["trials"]]
    assert set(states) <= {"complete", "pruned"} and all(r["epochs"] for r in summary["trials"])
    pruned = [r for r in summary["trials"] if r["state"] == "pruned"]
    assert all(r["epochs"] < 3 for r in pruned)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["yolov9", "rtmdet"])
def test_tune_searches_each_familys_own_settings(family, tiny_settings, tiny_yolo_yaml, rtmdet_yaml, tmp_path):
    """The same search for every family, over a general setting and one of the family's own loss gains."""
    model, gain = {"yolov9": (tiny_yolo_yaml, "box: [5.0, 10.0]"), "rtmdet": (rtmdet_yaml, "qfl_weight: [0.5, 2.0]")}[
        family]
    space = _space(tmp_path, f"lr0: [1.0e-4, 1.0e-2, log]\n{gain}\n")
    batch_scaling = {"lr_batch": 0} if family == "rtmdet" else {}  # the RTMDet recipe's lr is for batch 256
    summary = Tune({**tiny_settings, "model": str(model), "epochs": 1, "val": True, "space": str(space), "trials": 2,
                    **batch_scaling})()
    assert [r["state"] for r in summary["trials"]] == ["complete", "complete"]
    key = gain.split(":")[0]
    args = yaml.safe_load((tmp_path / "runs" / "tune" / "tune" / "train" / "trial-000" / "args.yaml").read_text())
    assert args[key] == next(r[key] for r in summary["trials"] if r["trial"] == 0)  # the trial trained with it


@pytest.mark.slow
def test_tune_on_ray_with_asha(tiny_settings, tmp_path):
    """executor=ray: trials run as Ray tasks (two at once on 2 CPUs) and report each epoch's mAP to the
    study's journal file from their workers."""
    ray = pytest.importorskip("ray")
    space = _space(tmp_path, "lr0: [1.0e-4, 1.0e-2, log]\nwarmup_iters: [0, 4]\n")
    summary = Tune({**tiny_settings, "epochs": 2, "val": True, "space": str(space), "trials": 4, "pruner": "asha",
                    "executor": "ray", "cpus_per_run": 1})()
    assert not ray.is_initialized() and len(summary["trials"]) == 4
    assert {r["state"] for r in summary["trials"]} <= {"complete", "pruned"}
    import optuna

    from rtdet.engine.tune import _storage

    study = optuna.load_study(study_name="tune", storage=_storage(tmp_path / "runs" / "tune" / "tune" / "study.log"))
    assert all(t.intermediate_values for t in study.trials)  # every trial reported from its Ray worker
