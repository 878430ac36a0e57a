"""Experiment loggers built on the trainer's callbacks: ``loggers=tensorboard,mlflow,wandb`` (CSV always).

    rtdet train model=rtdetr-l.yaml data=coco128.yaml loggers=tensorboard,mlflow experiment=ablation \\
        tags=variant=dysample,seed=1 log_every=10

The hub (:class:`Loggers`) is attached to the trainer on rank 0 and hands each enabled backend (see
:mod:`.backends`) the settings at the start, the loss terms and learning rates every ``log_every`` batches,
each epoch's results row, the plots, sample predictions and the best checkpoint at the end, then the
per-class AP. A backend that fails -- not installed, no server, bad credentials -- is named in one warning
line and switched off; training goes on.

The package's own names are the settings' side (:mod:`.spec`) and the backends; the hub, which the trainer
attaches, is :mod:`rtdet.engine.loggers.hub` (it draws sample predictions, so it sits above the settings).
"""

from rtdet.engine.loggers.backends import BACKENDS, Backend, RunInfo
from rtdet.engine.loggers.spec import grouped, parse_loggers, parse_tags

__all__ = ["BACKENDS", "Backend", "RunInfo", "grouped", "parse_loggers", "parse_tags"]
