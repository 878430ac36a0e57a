"""Experiment loggers, read back with each library's own reader: TensorBoard's event accumulator, MLflow's
search_runs, W&B's offline run file. Nothing goes to the network: W&B offline, MLflow in a local store."""

import sys
import time

import pytest

from rtdet.engine.loggers import parse_loggers, parse_tags
from rtdet.engine.loggers.hub import resolve_loggers
from rtdet.engine.settings import SettingsError, check_settings
from rtdet.engine.trainer import Trainer

# 8 train images, batch 2: 4 batches per epoch; log_every 3 logs after batches 3 and 4 of each epoch.
EPOCHS, BATCHES, LOG_EVERY = 2, 4, 3
LOG_STEPS = [3, 4, 7, 8]


@pytest.fixture
def logged_settings(tiny_settings):
    return {**tiny_settings, "epochs": EPOCHS, "batch": 2, "log_every": LOG_EVERY, "val": True, "plots": True,
            "experiment": "ablation", "tags": "variant=base,seed=0"}


def test_logger_settings_are_checked_before_any_run():
    assert check_settings({"loggers": "tensorboard, MLflow"})["loggers"] == ["tensorboard", "mlflow"]
    assert check_settings({"loggers": ["wandb", "csv"]})["loggers"] == ["wandb", "csv"]
    assert check_settings({"tags": "variant=dysample, seed=1"})["tags"] == {"variant": "dysample", "seed": "1"}
    assert check_settings({"tags": {"seed": 1}})["tags"] == {"seed": "1"}
    with pytest.raises(SettingsError, match="loggers='tensorbord': unknown logger 'tensorbord'"):
        check_settings({"loggers": "tensorbord"})
    with pytest.raises(SettingsError, match="tags='seed1'.*key=value"):
        check_settings({"tags": "seed1"})
    assert parse_loggers([]) == ["csv"] and resolve_loggers(["csv"]) == []
    auto = ["tensorboard"] if _installed("tensorboard") else []
    assert resolve_loggers(["auto", "mlflow"]) == [*auto, "mlflow"]
    assert parse_tags(None) is None


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_has_every_scalar_at_its_step(logged_settings):
    pytest.importorskip("tensorboard")
    trainer = Trainer({**logged_settings, "loggers": "tensorboard"})
    trainer.train()
    acc = _scalars(trainer.save_dir)
    tags = acc.Tags()["scalars"]
    for term in ("train/loss", "train/vfl", "train/giou", "train/l1", "lr/head", "lr/backbone"):
        assert [e.step for e in acc.Scalars(term)] == LOG_STEPS, term
    for metric in ("epoch/metrics/mAP50-95", "epoch/metrics/mAP50", "epoch/train/vfl", "epoch/lr/head"):
        assert [e.step for e in acc.Scalars(metric)] == [1, 2], metric
    per_class = [t for t in tags if t.startswith("per_class_AP50-95/")]
    assert per_class and all([e.step for e in acc.Scalars(t)] == [EPOCHS * BATCHES] for t in per_class)
    # the epoch's mean loss agrees with results.csv
    import csv

    rows = list(csv.DictReader((trainer.save_dir / "results.csv").open()))
    assert acc.Scalars("epoch/train/vfl")[-1].value == pytest.approx(float(rows[-1]["train/vfl"]), rel=1e-5)
    assert {"plots/results", "samples/val_predictions"} <= set(acc.Tags()["images"])
    assert (trainer.save_dir / "val_predictions.jpg").is_file()


def test_tensorboard_is_on_by_default_and_csv_alone_writes_no_events(tiny_settings):
    pytest.importorskip("tensorboard")
    default = Trainer({**tiny_settings, "epochs": 1})
    default.train()
    assert list(default.save_dir.glob("events.out.tfevents.*"))
    csv_only = Trainer({**tiny_settings, "epochs": 1, "loggers": "csv"})
    csv_only.train()
    assert not list(csv_only.save_dir.glob("events.out.tfevents.*"))
    assert (csv_only.save_dir / "results.csv").is_file()


def test_a_failing_backend_is_named_once_and_training_goes_on(tiny_settings, monkeypatch, caplog):
    """wandb missing (an import error) and an MLflow server that does not answer: one warning line each."""
    pytest.importorskip("mlflow")
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    trainer = Trainer({**tiny_settings, "epochs": 1, "loggers": "wandb,mlflow,tensorboard"})
    with caplog.at_level("WARNING", logger="rtdet"):
        trainer.train()
    assert (trainer.save_dir / "weights" / "last.pt").is_file()
    lines = [r.getMessage() for r in caplog.records if "logger failed" in r.getMessage()]
    assert len(lines) == 2, lines
    assert any(line.startswith("wandb logger failed at start (wandb is not installed (pip install 'rtdet[wandb]')")
               for line in lines)
    assert any(line.startswith("mlflow logger failed at start") for line in lines)
    assert list(trainer.save_dir.glob("events.out.tfevents.*"))  # the working backend went on


def test_wandb_without_credentials_is_one_warning(tiny_settings, tmp_path, monkeypatch, caplog):
    pytest.importorskip("wandb")
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no stored key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    trainer = Trainer({**tiny_settings, "epochs": 1, "loggers": "wandb"})
    with caplog.at_level("WARNING", logger="rtdet"):
        trainer.train()
    lines = [r.getMessage() for r in caplog.records if "logger failed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("wandb logger failed at start (UsageError: No API key"), lines
    assert (trainer.save_dir / "weights" / "last.pt").is_file()


def test_mlflow_run_has_the_settings_metrics_tags_and_best_checkpoint(logged_settings, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store for local use only
    trainer = Trainer({**logged_settings, "loggers": "mlflow"})
    trainer.train()
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["ablation"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.mlflow.runName"] == trainer.save_dir.name
    assert (run["tags.variant"], run["tags.seed"]) == ("base", "0")
    assert (run["params.lr0"], run["params.epochs"], run["params.log_every"]) == ("0.001", "2", "3")
    assert {"metrics.train/vfl", "metrics.lr/head", "metrics.epoch/metrics/mAP50-95"} <= set(runs.columns)
    assert any(c.startswith("metrics.per_class_AP50-95/") for c in runs.columns)
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(run["run_id"], "train/loss")] == LOG_STEPS
    assert [m.step for m in client.get_metric_history(run["run_id"], "epoch/metrics/mAP50")] == [1, 2]
    files = {f.path for folder in ("weights", "plots") for f in client.list_artifacts(run["run_id"], folder)}
    assert {"weights/best.pt", "plots/results.png", "plots/val_predictions.jpg"} <= files


def _wandb_records(path):
    """The protobuf records of a .wandb file: W&B's transaction log, in LevelDB's log framing (a 7-byte file
    header; 32 KiB blocks of records, each a 7-byte header -- crc, length, type -- and its data, long records in
    parts: 1 full, 2 first, 3 middle, 4 last). wandb 0.31 has no Python reader of it; its Record decodes them."""
    data, block, pos, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield parts
            parts = b""


def _wandb_run(run_dir) -> tuple[list[dict], object]:
    """(history rows, run record) of the offline W&B run saved under ``run_dir``."""
    import json

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    for _ in range(60):  # W&B's service may still be writing the file when run.finish() returns
        records = []
        for data in _wandb_records(path):
            records.append(wandb_internal_pb2.Record())
            records[-1].ParseFromString(data)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.5)
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    return rows, next(r.run for r in records if r.WhichOneof("record_type") == "run")


@pytest.mark.slow
def test_wandb_offline_run_holds_the_history(logged_settings, tmp_path, monkeypatch):
    """Slow: W&B starts its service process (30-60 s on 2 loaded cores)."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    trainer = Trainer({**logged_settings, "loggers": "wandb"})
    trainer.train()
    rows, run = _wandb_run(trainer.save_dir)
    assert (run.project, run.run_group, run.display_name) == ("ablation", "base", trainer.save_dir.name)
    assert set(run.tags) == {"variant=base", "seed=0"}
    steps = [r["_step"] for r in rows if "train/loss" in r]
    assert steps == LOG_STEPS
    assert [r["epoch"] for r in rows if "epoch/metrics/mAP50-95" in r] == [1, 2]
    assert all(k in rows[0] for k in ("train/vfl", "lr/head", "lr/backbone"))


def test_only_rank_0_logs():
    from types import SimpleNamespace

    from rtdet.engine.loggers.hub import attach_loggers

    added = []
    for rank in (0, 1):
        trainer = SimpleNamespace(rank=rank, args={"loggers": ["tensorboard"]},
                                  add_callback=lambda event, fn, rank=rank: added.append((rank, event)))
        assert (attach_loggers(trainer) is None) == (rank == 1)
    assert added and {r for r, _ in added} == {0}


def test_runs_of_one_experiment_are_told_apart_by_their_tags(tiny_settings, tmp_path, monkeypatch):
    """What compare and tune do: one experiment, a run per (variant, seed), tagged with both."""
    mlflow = pytest.importorskip("mlflow")
    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for variant, seed in (("base", 0), ("base", 1)):
        Trainer({**tiny_settings, "epochs": 1, "seed": seed, "loggers": "mlflow", "experiment": "study",
                 "tags": {"variant": variant, "seed": seed}}).train()
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["study"], filter_string="tags.variant = 'base'")
    assert sorted(runs["tags.seed"]) == ["0", "1"] and set(runs["status"]) == {"FINISHED"}


def test_a_stopped_run_closes_its_mlflow_run_as_killed(tiny_settings, tmp_path, monkeypatch):
    import os
    import signal

    mlflow = pytest.importorskip("mlflow")
    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    trainer = Trainer({**tiny_settings, "loggers": "mlflow", "experiment": "stopped"})
    trainer.add_callback("on_train_batch_end", lambda t: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    mlflow.set_tracking_uri(uri)
    assert list(mlflow.search_runs(experiment_names=["stopped"])["status"]) == ["KILLED"]


@pytest.mark.slow
def test_mlflow_default_store_is_sqlite_in_the_project_folder(tiny_settings, tmp_path, monkeypatch):
    """Without MLFLOW_TRACKING_URI: <project>/mlflow.db and <project>/mlartifacts (slow: SQLite schema set-up)."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = tmp_path / "runs"
    trainer = Trainer({**tiny_settings, "epochs": 1, "loggers": "mlflow", "project": str(project)})
    trainer.train()
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["runs"])  # the project folder's name
    assert list(runs["status"]) == ["FINISHED"]
    assert list((project / "mlartifacts").rglob("best.pt"))


def test_a_group_run_keeps_the_users_experiment_and_tags_and_adds_its_own():
    from rtdet.engine.loggers import grouped

    run = grouped({"epochs": 3}, "compare-ablation", variant="dysample", seed=1)
    assert run == {"epochs": 3, "experiment": "compare-ablation", "tags": {"variant": "dysample", "seed": "1"}}
    mine = grouped({"experiment": "mine", "tags": "team=a"}, "tune-t", trial=4)
    assert mine["experiment"] == "mine" and mine["tags"] == {"team": "a", "trial": "4"}
