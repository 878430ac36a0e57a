"""Executors for compare / tune: the same runs on this process, on worker processes or on Ray give the same
numbers; a Ray worker killed mid-run is retried and the run resumes from its last.pt; a finished run is
never trained again."""

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from rtdet.engine.compare import Compare
from rtdet.engine.executors import Job, LocalExecutor, make_executor, run_job, train_settings
from rtdet.engine.settings import SettingsError, check_settings
from rtdet.utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore")


def _job(tiny_settings, tmp_path, name="a-s0", **extra) -> Job:
    settings = {**tiny_settings, "epochs": 1, "project": str(tmp_path / "p"), "name": name, "exist_ok": True,
                **extra}
    return Job(name, tmp_path / "p" / "train" / name, settings)


def test_executor_settings_are_in_the_schema():
    args = check_settings({"executor": "ray", "gpus_per_run": 0.5, "cpus_per_run": 2, "address": "auto"})
    assert args["executor"] == "ray" and args["gpus_per_run"] == 0.5
    with pytest.raises(SettingsError, match="executor='slurm'"):
        check_settings({"executor": "slurm"})
    with pytest.raises(SettingsError, match="cpus_per_run=0"):
        check_settings({"cpus_per_run": 0})
    assert isinstance(make_executor({"executor": "local"}, ["cpu"]), LocalExecutor)


def test_a_finished_run_is_never_trained_again(tiny_settings, tmp_path):
    job = _job(tiny_settings, tmp_path)
    assert train_settings(job)["model"] == tiny_settings["model"]  # a fresh run
    assert run_job(job)["status"] == "trained"
    stamp = job.last.stat().st_mtime_ns
    assert run_job(job)["status"] == "done" and job.last.stat().st_mtime_ns == stamp
    (job.dir / "done.json").unlink()  # killed between its last save and done.json: its last.pt has finished
    assert train_settings(job) is None and run_job(job)["status"] == "done" and job.done


def test_an_interrupted_run_resumes_from_its_last_pt(tiny_settings, tmp_path):
    job = _job(tiny_settings, tmp_path, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        run_job(job, {"on_train_batch_end": lambda t: t.request_stop() if t.epoch == 1 else None})
    assert not job.done and train_settings(job)["resume"] == str(job.last)
    assert run_job(job)["status"] == "resumed" and job.done


@pytest.mark.slow  # a fresh Python process that imports torch: seconds on a quiet machine, more on a busy one
def test_a_failed_run_in_a_worker_process_is_named_with_its_log(tiny_settings, tmp_path):
    from rtdet.engine.errors import USER_ERRORS

    job = _job(tiny_settings, tmp_path, data=str(tmp_path / "missing.yaml"))
    with pytest.raises(USER_ERRORS, match=r"training failed for a-s0 \(exit 1, log .*a-s0.log\)") as e:
        LocalExecutor(["cpu", "cpu"]).run(run_job, [job])
    assert "finished runs are kept" in str(e.value)
    assert "missing.yaml" in (tmp_path / "p" / "train" / "a-s0.log").read_text()  # the cause, in the run's log


def test_the_ray_executor_says_how_to_install_ray(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(SettingsError, match=r"pip install 'rtdet\[ray\]'"):
        make_executor({"executor": "ray"}, [])


# ------------------------------------------------------------------------------------------- Ray (slow)
def _compare_settings(variants, tiny_data, project, **extra) -> dict:
    return {"models": ",".join(map(str, variants)), "data": str(tiny_data), "epochs": 1, "seeds": 2, "imgsz": 64,
            "batch": 4, "workers": 0, "device": "cpu", "project": str(project), "verbose": False,
            "train_pipeline": "plain", "warmup_iters": 1, "runs": 1, "warmup": 0, "plots": False, **extra}


@pytest.fixture
def variants(tiny_yaml, tiny_yolo_yaml, rtmdet_yaml):
    return [tiny_yaml, tiny_yolo_yaml, rtmdet_yaml]  # every family through the same executors


def _per_seed(summary) -> dict:
    return {r["variant"]: (r["mAP50-95_seeds"], r["mAP50_seeds"]) for r in summary["variants"]}


@pytest.mark.slow
def test_local_and_ray_give_bit_identical_tables(variants, tiny_data, tmp_path):
    ray = pytest.importorskip("ray")
    local = Compare(_compare_settings(variants, tiny_data, tmp_path / "local"))()
    remote = Compare(_compare_settings(variants, tiny_data, tmp_path / "ray", executor="ray", cpus_per_run=1))()
    assert not ray.is_initialized()  # the local runtime it started is stopped again
    assert sorted(remote["trained"]) == sorted(local["trained"]) and len(local["trained"]) == 6
    assert _per_seed(remote) == _per_seed(local)  # exact: the same seeds give the same numbers
    for run in local["trained"]:
        a = load_checkpoint(tmp_path / "local" / "compare" / "compare" / "train" / run / "weights" / "last.pt")
        b = load_checkpoint(tmp_path / "ray" / "compare" / "compare" / "train" / run / "weights" / "last.pt")
        assert all(torch.equal(a["model"]["state_dict"][k], v) for k, v in b["model"]["state_dict"].items())


def _kill_when(run_dir: Path, task_name: str, stop: threading.Event, killed: list) -> None:
    """Kill -9 the Ray worker process training ``task_name`` once its first epoch is saved (mid-run)."""
    import psutil

    while not stop.is_set() and not killed:
        if (run_dir / "weights" / "last.pt").is_file():
            for p in psutil.process_iter(["cmdline", "pid"]):
                if task_name in " ".join(p.info["cmdline"] or []):
                    p.kill()
                    killed.append(p.info["pid"])
                    return
        time.sleep(0.02)


@pytest.mark.slow
def test_a_killed_ray_worker_is_retried_and_resumes_from_last_pt(tiny_yaml, tiny_settings, tmp_path_factory,
                                                                  tmp_path):
    pytest.importorskip("ray")
    from rtdet.data.synthetic import make_synthetic_dataset
    from rtdet.engine.executors import RayExecutor
    from rtdet.engine.trainer import Trainer

    data = make_synthetic_dataset(tmp_path_factory.mktemp("bigger"), n_train=48, n_val=4, imgsz=64, seed=0,
                                  n_classes=2, min_objects=1, max_objects=3, size_range=(0.3, 0.6))
    settings = {**tiny_settings, "data": str(data), "epochs": 4}
    job = _job(settings, tmp_path, name="killed-s0", epochs=4)
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_when, args=(job.dir, "train killed-s0", stop, killed), daemon=True)
    watcher.start()
    try:
        outcome = RayExecutor(None, 1, 0, max_retries=2, verbose=False).run(run_job, [job])[0]
    finally:
        stop.set()
    assert killed, "the run finished before its worker could be killed"
    assert outcome["status"] == "resumed" and job.done  # Ray's retry found last.pt and continued from it
    reference = Trainer({**settings, "project": str(tmp_path / "ref"), "name": "ref"})
    reference.train()
    a = load_checkpoint(reference.save_dir / "weights" / "last.pt")["model"]["state_dict"]
    b = load_checkpoint(job.last)["model"]["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # killed + resumed = uninterrupted (exact resume)
    assert json.loads((job.dir / "done.json").read_text())["finished"]
