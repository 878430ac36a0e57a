"""Executors: where the many training runs of ``rtdet compare`` and ``rtdet tune`` happen.

    jobs = [Job("a-s0", Path("runs/compare/x/train/a-s0"), {"model": "a.yaml", "seed": 0, ...})]
    outcomes = make_executor(args).run(run_job, jobs)      # [{"name": "a-s0", "status": "trained"}]

A :class:`Job` is one ordinary ``rtdet train`` run (its settings and its folder); a job function such as
:func:`run_job` trains it, or resumes it from its own ``weights/last.pt`` when that exists, and marks it
finished with ``done.json``. A finished run is never trained again. Every executor calls the same job
function, so the same seeds give the same runs whatever the executor:

* :class:`LocalExecutor` (``executor=local``): this machine. One device: the runs one after another in this
  process. Several (``devices=0,1`` or ``cpu,cpu``): one process per device at a time, each running one job
  (its output in ``<run>.log`` beside the run folder).
* :class:`RayExecutor` (``executor=ray``, ``pip install rtdet[ray]``): each job is one Ray task asking for
  ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs, on a cluster (``address=``) or on a local Ray runtime
  bound to 127.0.0.1. A task whose worker dies (killed, out of memory, a lost node) is retried up to
  ``max_retries`` times by Ray; the retry finds the run's last.pt and resumes from it (rtdet's exact
  resume). Runs write into their own folders under ``project=``, which on a cluster must be storage every
  node sees; the driver reads them back from there.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rtdet.engine.errors import RunsFailed
from rtdet.engine.settings import SettingsError
from rtdet.engine.trainer import Trainer
from rtdet.utils.checkpoint import atomic_write_text, load_checkpoint
from rtdet.utils.logging import LOGGER

__all__ = ["EXECUTOR_KEYS", "Job", "LocalExecutor", "RayExecutor", "make_executor", "mark_done", "run_job",
           "train_settings"]

# The settings that choose and size the executor (not settings of the runs themselves).
EXECUTOR_KEYS = ("executor", "gpus_per_run", "cpus_per_run", "address", "max_retries")

# Settings a resumed run takes from the job (where and how it runs); everything else is the checkpoint's own.
RESUME_KEEP = ("device", "workers", "verbose", "plots")


@dataclass
class Job:
    """One training run: the settings of a fresh ``rtdet train`` (plain values: they travel as JSON or to a
    Ray worker) whose ``project`` / ``name`` make ``dir``, and ``extra`` for the job function (plain too)."""

    name: str
    dir: Path
    settings: dict
    extra: dict = field(default_factory=dict)

    @property
    def last(self) -> Path:
        return self.dir / "weights" / "last.pt"

    @property
    def done(self) -> bool:
        return (self.dir / "done.json").is_file()

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "dir": str(self.dir), "settings": self.settings, "extra": self.extra})

    @classmethod
    def from_json(cls, text: str) -> Job:
        d = json.loads(text)
        return cls(d["name"], Path(d["dir"]), d["settings"], d.get("extra") or {})


def mark_done(job: Job) -> None:
    atomic_write_text(job.dir / "done.json", json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%S")}))


def train_settings(job: Job) -> dict | None:
    """The settings that train ``job`` now: a fresh run, ``resume=<last.pt>`` for an interrupted one, or
    None when its last.pt already finished every epoch (only ``done.json`` was missing)."""
    if not job.last.is_file():
        return dict(job.settings)
    ckpt = load_checkpoint(job.last)
    epochs = int((ckpt.get("args") or {}).get("epochs", 0))
    if not ckpt.get("step_in_epoch") and int(ckpt.get("epoch", -1)) + 1 >= epochs:
        return None
    return {"resume": str(job.last), **{k: job.settings[k] for k in RESUME_KEEP if k in job.settings}}


def run_job(job: Job, callbacks: dict[str, Callable] | None = None) -> dict:
    """Train ``job`` in this process (see :func:`train_settings`) and mark it done. Returns
    ``{"name", "status"}``, status ``trained``, ``resumed`` or ``done`` (nothing was left to train)."""
    if job.done:
        return {"name": job.name, "status": "done"}
    settings = train_settings(job)
    if settings is None:
        mark_done(job)
        return {"name": job.name, "status": "done"}
    status = "resumed" if "resume" in settings else "trained"
    LOGGER.info(f"training {job.name}" + (f" (resuming from {job.last})" if status == "resumed" else ""))
    trainer = Trainer(settings)
    for event, fn in (callbacks or {}).items():
        trainer.add_callback(event, fn)
    metrics = trainer.train()
    mark_done(job)
    return {"name": job.name, "status": status, "metrics": _plain_metrics(metrics)}


def _plain_metrics(metrics: dict) -> dict:
    return {k: (None if v is None else float(v)) for k, v in (metrics or {}).items() if isinstance(v, int | float)
            or v is None}


def _failed(failures: list[str]) -> RunsFailed:
    return RunsFailed(f"training failed for {'; '.join(failures)}. Fix the cause and run the same command again "
                      f"(finished runs are kept)")


# ---------------------------------------------------------------------------------------------- local
class LocalExecutor:
    """This machine: in this process on one device, or one process per device at a time (see the module
    docstring). ``slots`` runs train at once."""

    def __init__(self, devices: list[str]):
        self.devices = devices or [""]
        self.slots = len(self.devices)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def run(self, fn: Callable, jobs: list[Job], callbacks: dict | None = None,
            on_start: Callable[[Job], None] | None = None) -> list[dict]:
        """``fn(job, callbacks)`` for every job; outcomes in the order of ``jobs``. In this process an error
        (or Ctrl-C) stops at once; in worker processes every other run still finishes first."""
        if self.slots == 1:
            out = []
            for job in jobs:
                if on_start is not None:
                    on_start(job)
                out.append(fn(_on_device(job, self.devices[0]), callbacks))
            return out
        return self._run_processes(fn, jobs, on_start)

    def _run_processes(self, fn: Callable, jobs: list[Job], on_start) -> list[dict]:
        queue = list(enumerate(jobs))
        outcomes: dict[int, dict] = {}
        failures: list[str] = []
        lock = threading.Lock()

        def worker(device: str) -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    i, job = queue.pop(0)
                    if on_start is not None:
                        on_start(job)
                try:
                    outcome = _in_subprocess(fn, _on_device(job, device))
                except RuntimeError as e:
                    with lock:
                        failures.append(str(e))
                    continue
                with lock:
                    outcomes[i] = outcome

        threads = [threading.Thread(target=worker, args=(d,), daemon=True) for d in self.devices]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise _failed(failures)
        return [outcomes[i] for i in range(len(jobs))]


def _on_device(job: Job, device: str) -> Job:
    return Job(job.name, job.dir, {**job.settings, "device": device} if device else dict(job.settings), job.extra)


def _in_subprocess(fn: Callable, job: Job) -> dict:
    """``fn(job)`` in a fresh ``python -m rtdet.engine.executors`` process; its output goes to the run's log."""
    job.dir.parent.mkdir(parents=True, exist_ok=True)
    log, result = job.dir.parent / f"{job.name}.log", job.dir.parent / f".{job.name}.outcome.json"
    result.unlink(missing_ok=True)
    LOGGER.info(f"{job.name}: training on device {job.settings.get('device') or 'default'} (log {log})")
    with log.open("w") as fh:
        rc = subprocess.run([sys.executable, "-m", "rtdet.engine.executors", f"{fn.__module__}:{fn.__qualname__}",
                             job.to_json(), str(result)], stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not result.is_file():
        raise RuntimeError(f"{job.name} (exit {rc}, log {log})")
    outcome = json.loads(result.read_text())
    result.unlink()
    return outcome


def _main(argv: list[str]) -> int:
    """``python -m rtdet.engine.executors module:function '<job json>' outcome.json``: one job in this process."""
    module, _, name = argv[0].partition(":")
    fn = getattr(importlib.import_module(module), name)
    outcome = fn(Job.from_json(argv[1]), None)
    atomic_write_text(argv[2], json.dumps(outcome))
    return 0


# ---------------------------------------------------------------------------------------------- Ray
class RayExecutor:
    """One Ray task per job (see the module docstring). Joins ``address`` or starts a local runtime bound to
    127.0.0.1; the runtime it started is stopped again when the runs are done."""

    def __init__(self, address: str | None, cpus_per_run: float, gpus_per_run: float, max_retries: int,
                 verbose: bool = True):
        try:
            import ray  # optional: ray
        except ImportError:
            raise SettingsError("executor=ray needs Ray: pip install 'rtdet[ray]' (or pip install 'ray[default]')"
                                ) from None
        self.ray = ray
        self.address, self.verbose = address or None, verbose
        self.cpus, self.gpus, self.retries = float(cpus_per_run), float(gpus_per_run), int(max_retries)
        self.slots = 1
        self._depth, self._started = 0, False

    def __enter__(self) -> RayExecutor:
        """Connect (or start the local runtime) once, however deeply ``with`` blocks nest."""
        ray = self.ray
        if self._depth == 0 and not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=self.verbose)
            else:  # a private runtime on this machine, reachable from nowhere else
                ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=self.verbose)
            self._started = True
        self._depth += 1
        resources = ray.cluster_resources()
        slots = int(float(resources.get("CPU", 1)) // self.cpus)
        if self.gpus:
            slots = min(slots, int(float(resources.get("GPU", 0)) // self.gpus))
        self.slots = max(slots, 1)
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._started:  # a runtime the caller had started stays theirs
            self.ray.shutdown()
            self._started = False

    def run(self, fn: Callable, jobs: list[Job], callbacks: dict | None = None,
            on_start: Callable[[Job], None] | None = None) -> list[dict]:
        """Every job as a Ray task at once (Ray queues what the cluster cannot run yet); outcomes in the order
        of ``jobs``. In-process ``callbacks`` cannot travel to a worker and are refused."""
        if callbacks:
            raise ValueError("executor=ray runs each job in a Ray worker; Python callbacks need executor=local")
        with self:
            task = self.ray.remote(_ray_task)
            refs = []
            for job in jobs:
                if on_start is not None:
                    on_start(job)
                refs.append(task.options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.retries,
                                         retry_exceptions=False, name=f"train {job.name}").remote(
                    fn, _absolute(job), self.cpus))
            return self._gather(jobs, refs)

    def _gather(self, jobs: list[Job], refs: list) -> list[dict]:
        outcomes, failures = [], []
        for job, ref in zip(jobs, refs):
            try:
                outcomes.append(self.ray.get(ref))
            except self.ray.exceptions.RayError as e:
                cause = getattr(e, "cause", None)
                why = f"{type(cause).__name__}: {cause}" if cause is not None else str(e).strip().splitlines()[0]
                failures.append(f"{job.name} ({' '.join(why.split())[:300]})")
        if failures:
            raise _failed(failures)
        return outcomes


def _absolute(job: Job) -> Job:
    """The job with absolute paths: a Ray worker's working folder is not the driver's (on a cluster the paths
    must also lie on storage every node sees). Built-in model names (``rtdetr-l.yaml``) stay names."""
    settings = dict(job.settings)
    for key in ("project", "model", "data", "pretrained", "resume"):
        value = settings.get(key)
        if isinstance(value, str) and value and (key == "project" or Path(value).exists()):
            settings[key] = str(Path(value).resolve())
    return Job(job.name, job.dir.resolve(), settings, job.extra)


def _ray_task(fn: Callable, job: Job, cpus: float) -> dict:
    """A Ray worker's job: torch uses the CPUs the task was given (the thread count is part of what makes two
    executors give bit-identical numbers), then ``fn(job)``."""
    torch.set_num_threads(max(int(cpus), 1))
    return fn(job, None)


# ---------------------------------------------------------------------------------------------- choice
def make_executor(args: dict, devices: list[str]) -> LocalExecutor | RayExecutor:
    """The executor that ``args`` (``executor``, ``address``, ``cpus_per_run``, ``gpus_per_run``,
    ``max_retries``) asks for; ``devices`` are the local executor's."""
    if args.get("executor", "local") == "ray":
        return RayExecutor(args.get("address"), args.get("cpus_per_run", 1), args.get("gpus_per_run", 0),
                           args.get("max_retries", 3), bool(args.get("verbose", True)))
    return LocalExecutor(devices)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
