"""One class per experiment tracker: TensorBoard, MLflow, Weights & Biases. Each imports its library only when
it starts (each is an optional extra), and talks to it through the library's own public API.

A backend receives plain values from :class:`rtdet.engine.loggers.hub.Loggers`: the run description at start,
scalars by step, per-epoch metrics, image files, the best checkpoint, and per-class AP at the end. Any error it
raises is the hub's to report (one warning) -- a backend never stops training.
"""

from __future__ import annotations

import os
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import cv2

__all__ = ["BACKENDS", "Backend", "MLflowBackend", "RunInfo", "TensorBoardBackend", "WandbBackend"]


@dataclass
class RunInfo:
    """What every backend is told about the run when it starts."""

    save_dir: Path  # the run folder (runs/train/<name>)
    project: Path  # the folder of runs (the `project` setting)
    experiment: str  # experiment (MLflow), project (W&B): several runs compared together
    name: str  # this run's name: its folder's name
    settings: dict  # every setting, plain values
    tags: dict[str, str] = field(default_factory=dict)  # e.g. {"variant": "dysample", "seed": "1"}


class Backend(ABC):
    """The events a tracker implements; each call gets plain Python values."""

    name = ""
    package = ""  # the PyPI name of its extra

    @abstractmethod
    def start(self, run: RunInfo) -> None:
        """Open the tracker's run (its settings and tags); raise if the tracker cannot be reached."""

    @abstractmethod
    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        """Training values (loss terms, learning rates) at a global batch number."""

    @abstractmethod
    def log_epoch(self, metrics: dict[str, float], epoch: int, step: int) -> None:
        """One epoch's row (mean loss terms, validation metrics) after ``epoch`` (1-based) epochs, at ``step``."""

    @abstractmethod
    def log_images(self, images: dict[str, Path], step: int) -> None:
        """Pictures (plots, sample predictions) by name, at a global batch number."""

    def log_checkpoint(self, path: Path) -> None:  # noqa: B027 -- optional: only trackers that store files
        """The best checkpoint, where the tracker stores files (a no-op for TensorBoard)."""

    @abstractmethod
    def finish(self, per_class: dict[str, float], step: int, ok: bool = True) -> None:
        """Per-class AP50-95 (empty without validation), then close; ``ok`` False: the run failed or stopped."""


def _read_rgb(path: Path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"{path}: cannot read the image")
    return image[:, :, ::-1].copy()


class TensorBoardBackend(Backend):
    """Event files in the run folder: ``tensorboard --logdir runs/train`` shows every run side by side."""

    name, package = "tensorboard", "tensorboard"

    def start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard (torch's module needs it)

        self.writer = SummaryWriter(log_dir=str(run.save_dir))
        self.writer.add_text("settings", _markdown_table(run.settings), 0)
        if run.tags:
            self.writer.add_text("tags", _markdown_table(run.tags), 0)

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)

    def log_epoch(self, metrics: dict[str, float], epoch: int, step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(f"epoch/{k}", v, epoch)
        self.writer.flush()

    def log_images(self, images: dict[str, Path], step: int) -> None:
        for k, path in images.items():
            self.writer.add_image(k, _read_rgb(path), step, dataformats="HWC")

    def finish(self, per_class: dict[str, float], step: int, ok: bool = True) -> None:
        for k, v in per_class.items():
            self.writer.add_scalar(f"per_class_AP50-95/{k}", v, step)
        self.writer.close()


class MLflowBackend(Backend):
    """A run of the experiment in the tracking store named by MLFLOW_TRACKING_URI, else in a SQLite store in
    the project folder (``<project>/mlflow.db``, files under ``<project>/mlartifacts``). Uses MlflowClient,
    so a run the user has active in the same process is left alone."""

    name, package = "mlflow", "mlflow"

    def start(self, run: RunInfo) -> None:
        from mlflow.entities import Param  # optional: mlflow
        from mlflow.tracking import MlflowClient

        # An unreachable server must not stall training for minutes (MLflow's default: 7 retries, 120 s).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not uri:
            run.project.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{run.project.resolve() / 'mlflow.db'}", (run.project.resolve() /
                                                                                  "mlartifacts").as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(run.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(
            run.experiment, artifact_location=artifacts)
        self.run_id = self.client.create_run(experiment_id, run_name=run.name, tags=dict(run.tags)).info.run_id
        params = [Param(k[:250], str(v)[:6000]) for k, v in run.settings.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _metrics(self, values: dict[str, float], step: int):
        from mlflow.entities import Metric  # optional: mlflow

        now = int(time.time() * 1000)
        # MLflow names take letters, digits and _-. / only: a class named "cat (wild)" becomes "cat _wild_"
        return [Metric(re.sub(r"[^\w\-. /]", "_", k), float(v), now, step) for k, v in values.items()]

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        self.client.log_batch(self.run_id, metrics=self._metrics(scalars, step))

    def log_epoch(self, metrics: dict[str, float], epoch: int, step: int) -> None:
        self.client.log_batch(self.run_id, metrics=self._metrics({f"epoch/{k}": v for k, v in metrics.items()},
                                                                 epoch))

    def log_images(self, images: dict[str, Path], step: int) -> None:
        for path in images.values():
            self.client.log_artifact(self.run_id, str(path), "plots")

    def log_checkpoint(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), "weights")

    def finish(self, per_class: dict[str, float], step: int, ok: bool = True) -> None:
        if per_class:
            self.client.log_batch(self.run_id, metrics=self._metrics(
                {f"per_class_AP50-95/{k}": v for k, v in per_class.items()}, step))
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "KILLED")


class WandbBackend(Backend):
    """A W&B run in project ``experiment``, grouped by the ``variant`` tag (the seeds of a variant chart
    together), its files under the run folder. WANDB_MODE=offline keeps it on this machine (``wandb sync``
    uploads it later)."""

    name, package = "wandb", "wandb"

    def start(self, run: RunInfo) -> None:
        import wandb  # optional: wandb

        self.wandb = wandb
        self.run = wandb.init(project=run.experiment, name=run.name, group=run.tags.get("variant"),
                              tags=[f"{k}={v}"[:64] for k, v in run.tags.items()], config=run.settings,
                              dir=str(run.save_dir), reinit="create_new")
        self.run.define_metric("epoch")
        self.run.define_metric("epoch/*", step_metric="epoch")

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def log_epoch(self, metrics: dict[str, float], epoch: int, step: int) -> None:
        self.run.log({"epoch": epoch, **{f"epoch/{k}": v for k, v in metrics.items()}}, step=step)

    def log_images(self, images: dict[str, Path], step: int) -> None:
        self.run.log({k: self.wandb.Image(str(p)) for k, p in images.items()}, step=step)

    def log_checkpoint(self, path: Path) -> None:
        artifact = self.wandb.Artifact(f"{self.run.id}-best", type="model")
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, per_class: dict[str, float], step: int, ok: bool = True) -> None:
        for k, v in per_class.items():
            self.run.summary[f"per_class_AP50-95/{k}"] = v
        self.run.log({}, commit=True)  # write the last step's row now, before the run's exit record
        self.run.finish(exit_code=0 if ok else 1)


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (TensorBoardBackend, MLflowBackend, WandbBackend)}


def _markdown_table(values: dict) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in values.items())
    return f"| key | value |\n|---|---|\n{rows}"
