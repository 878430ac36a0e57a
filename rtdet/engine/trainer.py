"""Trainer: family-agnostic training of a DetectionModel.

    Trainer({"model": "rtdetr-l.yaml", "data": "coco128.yaml", "epochs": 10}).train()

The trainer only talks to the model and its head: ``model(img, targets=batch)`` gives the head's training
outputs, the family record (``rtdet.families.criterion_for(head, hyp)``) the loss and the recipe. What it does:

* optimizer groups (lower backbone LR, no decay on norms / biases / embeddings), warmup + schedule,
  EMA, gradient clipping, AMP on CUDA, gradient accumulation, DDP under torchrun;
* a run folder ``<project>/train/<name>`` with ``weights/last.pt`` and ``best.pt`` (every epoch, atomic),
  ``results.csv``, ``results.png`` and ``args.yaml``;
* exact resume (model, EMA, optimizer, schedule, epoch, RNG; mid-epoch too) with ``resume=True``;
* Ctrl-C and SIGTERM finish the current optimizer step, save last.pt and stop (:class:`StopSignals`); a
  NaN/inf loss stops training with the epoch, step and loss terms (the last good last.pt is kept);
* writes ordered so that every state on disk is consistent (last.pt, best.pt, then the results row), stale
  temporaries of killed writes removed at start and resume, the run folder made once set-up succeeded;
* under DDP, rank 0 decides improvement and early stopping for all ranks, and teardown is the same on
  every rank (barrier, DDP wrapper released, process group destroyed).
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import math
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from tqdm import tqdm

from rtdet.deploy.runtime import is_onnx
from rtdet.engine import loaders
from rtdet.engine.amp import float32_outputs, network_autocast, to_channels_last, training_precision
from rtdet.engine.autorecipe import auto_recipe, summary
from rtdet.engine.ddp import relaunch_under_torchrun
from rtdet.engine.errors import Interrupted, NonFiniteLossError
from rtdet.engine.freeze import Freezer, resolve_freeze
from rtdet.engine.loggers.hub import attach_loggers
from rtdet.engine.meters import LossMeter, learning_rates, to_host
from rtdet.engine.multiscale import MultiScale
from rtdet.engine.optim import LRSchedule, add_params, build_optimizer, nominal_batch, scaled_lr, warmup_steps
from rtdet.engine.resume import check_resumed_classes, own_run_folder, resume_settings
from rtdet.engine.rundir import RunFolder, latest_run
from rtdet.engine.settings import (
    SettingsError,
    apply_cfg,
    cfg_path,
    check_imgsz,
    check_settings,
    criterion_hyperparameters,
    plain_settings,
    recipe_path,
    resolve_settings,
)
from rtdet.engine.signals import StopSignals
from rtdet.engine.stageswitch import StageSwitch
from rtdet.engine.validator import Validator, fitness
from rtdet.families import criterion_for
from rtdet.io.load import is_checkpoint, load_model
from rtdet.io.transplant import transplant_pretrained, write_transplant_report
from rtdet.nn.model import DetectionModel
from rtdet.ops.targets import batch_targets
from rtdet.utils.checkpoint import (
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from rtdet.utils.dist import broadcast_buffers
from rtdet.utils.logging import LOGGER, set_verbosity
from rtdet.utils.plotting import plot_results
from rtdet.utils.torch_utils import (
    ModelEMA,
    de_parallel,
    distributed_info,
    get_rng_state,
    init_distributed,
    parse_devices,
    select_device,
    set_rng_state,
    set_seed,
)

__all__ = ["Trainer"]

# teardown: after the run, also when it failed or was stopped (loggers close their runs there).
EVENTS = ("on_train_start", "on_train_epoch_start", "on_train_batch_end", "on_fit_epoch_end", "on_train_end",
          "teardown")


class Trainer:
    """Trains a DetectionModel from settings (see ``rtdet/cfg/default.yaml``).

    ``model`` may be a DetectionModel (the Python API passes its own); otherwise ``overrides["model"]``
    names a model YAML or checkpoint. ``add_callback(event, fn)`` runs ``fn(trainer)`` at the events in
    :data:`EVENTS`.
    """

    task = "train"

    def __init__(self, overrides: dict | None = None, model: DetectionModel | None = None,
                 weights_loaded: bool = False):
        # bad values stop here, before any work; cfg=file.yaml lies under the given settings
        self.overrides = apply_cfg(check_settings(overrides, "train"), "train")
        if model is not None:
            self.overrides["model"] = model
        self.weights_loaded = weights_loaded  # a ``model`` object's weights came from a file (recipe=auto)
        self.transplanted_rows: list[int] = []  # rows that received weights from pretrained= (freeze=transplanted)
        self.callbacks: dict[str, list[Callable]] = defaultdict(list)
        self.args: dict = {}
        self.save_dir: Path | None = None
        self.metrics: dict = {}
        self._epoch_rng: dict | None = None
        self._meter: LossMeter | None = None  # this epoch's loss sums (saved inside a mid-epoch checkpoint)
        self._resumed_losses: dict | None = None
        self.batch_index = 0
        self.best_epoch = -1
        self.best_fitness: float | None = None
        self.epoch = 0
        self._stop_requested = 0  # the signal number that asked to stop (0: none)
        self.folder: RunFolder | None = None  # the run folder this run claimed (not a resumed run's own)

    # ------------------------------------------------------------------ callbacks
    def add_callback(self, event: str, fn: Callable[[Trainer], None]) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; events: {', '.join(EVENTS)}")
        self.callbacks[event].append(fn)

    def _run_callbacks(self, event: str) -> None:
        for fn in self.callbacks[event]:
            fn(self)

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop after the current optimizer step, saving last.pt (what Ctrl-C and SIGTERM do)."""
        self._stop_requested = int(signum)

    # ------------------------------------------------------------------ entry
    def train(self) -> dict:
        """Run training; returns the final validation metrics (empty when val=False)."""
        rank, local_rank, world = distributed_info()
        devices = parse_devices(self.overrides.get("device"))
        if len(devices) > 1 and world == 1:
            return relaunch_under_torchrun(self.overrides, self.task, len(devices))
        self.rank, self.local_rank, self.world = rank, local_rank, world
        together = False  # every rank ends here at the same step: a clean finish, or a stop they agreed on
        finished = False
        try:
            self.setup()
            with StopSignals(self):
                metrics = self._fit()
            together = finished = True
            return metrics
        except (Interrupted, NonFiniteLossError):  # decided by all ranks at once (_sync_flags)
            together = True
            raise
        finally:
            if not finished and self.folder is not None:
                self.folder.discard_if_empty()  # a run that failed before writing anything leaves no folder
            try:
                self._run_callbacks("teardown")
            finally:  # DDP's teardown must happen even when a callback fails
                self._teardown(together)

    def _teardown(self, together: bool) -> None:
        """Leave DDP the same way on every rank: all ranks meet at a barrier (when they all stop together;
        after an error of one rank the others may never arrive), the DDP wrapper is released, then the
        process group is destroyed. Destroying it while a peer still talks to it, or while a DDP wrapper
        holds it, hung at exit in about one run of four."""
        if self.world > 1 and dist.is_available() and dist.is_initialized():
            if together:
                dist.barrier()
            if hasattr(self, "model"):
                self.model = de_parallel(self.model)
            gc.collect()  # the wrapper's reducer holds the group; let it go before the group does
            dist.destroy_process_group()

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Settings, data, model, criterion, optimizer, schedule, EMA, run folder (and resume state), in that
        order: every check that can refuse the run comes before its folder is claimed."""
        if not hasattr(self, "rank"):
            self.rank, self.local_rank, self.world = distributed_info()
        user = {k: v for k, v in self.overrides.items()}
        ckpt, args = self._first_settings(user)
        # Data first: the class names decide the head's size.
        if not args.get("data"):
            raise SettingsError("train needs data=<dataset YAML>, e.g. data=coco128.yaml")
        self.data = loaders.load_data(args["data"])
        model, args = self._load_model(ckpt, args, user)
        self.family = model.head.family
        check_imgsz(args, model)
        self.args = args
        frozen = self._frozen_rows(model, args, ckpt)
        if args.get("stage_switch") and frozen and 0 < int(args.get("freeze_epochs") or 0) < int(args["epochs"]):
            raise SettingsError(f"stage_switch=true with freeze_epochs={args['freeze_epochs']}: going back to a best "
                                f"epoch from before the rows were unfrozen would drop their optimizer state; train "
                                f"the rows frozen for the whole run (freeze_epochs=0) or set stage_switch=false")
        self._select_device(args)
        self._set_run_folder(ckpt, args)
        self._make_loaders(args)
        if ckpt is None:  # recipe=auto adapts the recipe to this run once; a resumed run keeps what it chose
            self._auto_recipe(args, set(self.given), self.weights_loaded or bool(args.get("pretrained")))
        self._place_model(model, args, frozen)
        self._make_optimizer(args)
        self.ema = ModelEMA(de_parallel(self.model), float(args["ema_decay"]), float(args["ema_tau"]),
                            schedule=str(args.get("ema_schedule") or "ramp")) if args["ema"] else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)  # bf16 needs none
        self.validator = Validator(args={**args, "verbose": False}) if self.val_loader is not None else None
        self.multi_scale = MultiScale.from_settings(args, stride=max(de_parallel(self.model).strides))
        self.stage_switch = StageSwitch.from_settings(args)
        self.step_log: tuple[int, dict[str, float]] | None = None  # (global batch, values) when a log step is due
        # Resume state.
        self.start_epoch, self.skip_batches, self.resume_rng = 0, 0, None
        self.best_fitness = None
        self.rows: list[dict] = []
        if ckpt is not None:
            self._load_state(ckpt)
        if self.rank == 0:
            self._make_run_folder()
            attach_loggers(self)
        self._run_callbacks("on_train_start")

    def _first_settings(self, user: dict) -> tuple[dict | None, dict]:
        """(checkpoint, settings) of a resumed run, or (None, the settings before the family is known)."""
        resume = user.get("resume")
        self.given, self.recipe_files = apply_cfg(user, "train", ""), ""  # cfg= as it reads before the model is known
        if resume:
            ckpt_path = latest_run(user.get("project") or "runs") if resume is True else Path(str(resume))
            ckpt, args = resume_settings(ckpt_path, self.given)
            self.resume_path = Path(ckpt_path)
        else:
            ckpt = None
            args = resolve_settings({k: v for k, v in self.given.items() if k != "model"}, verb="train")
            args["model"] = user.get("model")
            self.resume_path = None
        set_verbosity(bool(args.get("verbose", True)))
        set_seed(int(args["seed"]) + self.rank, bool(args["deterministic"]))
        return ckpt, args

    def _load_model(self, ckpt: dict | None, args: dict, user: dict) -> tuple[DetectionModel, dict]:
        """The model to train and, for a new run, the settings settled for its family (default < recipe <
        user): a resumed run's raw weights (not the EMA), or a YAML / checkpoint with a head for the data's
        classes, ``pretrained=`` transplanted into it by structure."""
        names = dict(enumerate(self.data.names))
        if ckpt is not None:
            model = load_model(ckpt, prefer_ema=False, name=str(self.resume_path)).model
            check_resumed_classes(self.resume_path, model.nc, args["data"], self.data.names)
            return model, args
        if is_onnx(args["model"]):
            raise SettingsError(f"model={args['model']}: an ONNX export cannot be trained (it holds the fused "
                                f"inference graph); train the checkpoint or the model YAML it was exported from")
        loaded = load_model(args["model"], nc=len(names), names=names, scale=args.get("scale"))
        model, self.weights_loaded = loaded.model, self.weights_loaded or loaded.is_checkpoint
        model.names = names
        if args.get("pretrained"):
            if not is_checkpoint(args["pretrained"]):
                raise SettingsError(f"pretrained={args['pretrained']}: expected a checkpoint file (.pt)")
            self.transplant_report = transplant_pretrained(args["pretrained"], model)
            self.transplanted_rows = self.transplant_report.transplanted_rows
        resolved = self._sized_settings(user, model)
        resolved["model"] = args["model"]
        _model_pipeline(resolved, self.given, model)
        set_seed(int(resolved["seed"]) + self.rank, bool(resolved["deterministic"]))
        return model, resolved

    def _sized_settings(self, user: dict, model: DetectionModel) -> dict:
        """default < the family recipe < ``cfg=`` < ``user``, each recipe read in its file for the model's size
        (``recipe_size=``, else the model YAML's ``recipe_size``: dfine-l.yaml names l, so the family's
        dfine-l.yaml and ``cfg=deim``'s deim-l.yaml apply). Sets ``self.given`` (the user's and cfg='s keys,
        which recipe=auto leaves alone) and ``self.recipe_files`` (what the start-of-run line names)."""
        own = getattr(model, "yaml", None) or {}
        size = user.get("recipe_size") or own.get("recipe_size")
        size = None if size in (None, "") else str(size)
        where = "your recipe_size= setting" if user.get("recipe_size") else str(own.get("yaml_file") or model.name)
        family = model.head.family
        self.given = apply_cfg(user, "train", size or "", where)
        files = [p.name for p in [recipe_path(family, size, where)] if p is not None]
        if user.get("cfg"):
            files.append(f"cfg={cfg_path(user['cfg'], size, where).name}")
        self.recipe_files = " + ".join(files)
        resolved = resolve_settings({k: v for k, v in self.given.items() if k != "model"}, family, "train", size, where)
        if size:
            resolved["recipe_size"] = size  # args.yaml records the size whose recipes this run read
        return resolved

    def _select_device(self, args: dict) -> None:
        """The device, the DDP process group, and the training precision and memory layout."""
        self.device = select_device(args["device"], self.local_rank)
        if self.world > 1:
            init_distributed(self.device)
        self.amp_dtype, self.channels_last = training_precision(args, self.device)  # None: fp32
        self.amp = self.amp_dtype is not None

    def _set_run_folder(self, ckpt: dict | None, args: dict) -> None:
        """Rank 0 claims the run folder (the others learn its name); a failed run removes it while it is empty."""
        save_dir = self._claim_run_folder(ckpt, args) if self.rank == 0 else None
        if self.world > 1:
            holder = [save_dir]
            dist.broadcast_object_list(holder, src=0)
            save_dir = holder[0]
        self.save_dir = Path(save_dir)
        self.wdir = self.save_dir / "weights"
        self.last, self.best = self.wdir / "last.pt", self.wdir / "best.pt"
        self.csv_path = self.save_dir / "results.csv"

    def _make_loaders(self, args: dict) -> None:
        self.batch_size = max(int(args["batch"]) // self.world, 1)
        self.train_loader = loaders.train_loader(self.data, args, self.batch_size, self.rank, self.world)
        self.val_loader = loaders.val_loader(self.data, args, self.batch_size * 2) if (
            self.rank == 0 and args["val"]) else None

    def _place_model(self, model: DetectionModel, args: dict, frozen: list[int]) -> None:
        """The model on its device (frozen rows, memory layout, SyncBN, DDP) and its criterion."""
        self.model = model.to(self.device)
        self.freezer = self._make_freezer(self.model, frozen)
        if self.channels_last:  # NHWC: cuDNN's fastest convolutions under AMP, oneDNN's on the CPU
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion = criterion_for(self.model.head, criterion_hyperparameters(args, self.family))
        if hasattr(self.criterion, "to"):
            self.criterion = self.criterion.to(self.device)
        self.model = _maybe_sync_bn(self.model, bool(args.get("sync_bn")), self.world, self.device)
        if self.world > 1:
            self.model = self._wrap_ddp(self.model)
        if self.world > 1 and int(args["batch"]) < self.world:
            LOGGER.warning(f"batch={args['batch']} is less than the {self.world} DDP processes; each reads "
                           f"1 image per step, {self.world} in all")

    def _make_optimizer(self, args: dict) -> None:
        """Nominal batch, loss scale, learning rate (linearly scaled), optimizer and schedule."""
        self.accumulate, weight_decay = nominal_batch(int(args["batch"]), int(args["accumulate"]),
                                                      int(args.get("nbs") or 0), float(args["weight_decay"]))
        # A criterion whose loss is a sum over images (YOLO's mean x batch size) is summed over the
        # accumulated batches and the DDP processes, so one step's gradient is that of the whole nominal
        # batch and the references' learning rates apply; a mean loss is averaged.
        self.loss_scale = float(self.world) if self.criterion.reduction == "sum" else 1.0 / self.accumulate
        self.steps_per_epoch = math.ceil(len(self.train_loader) / self.accumulate)
        self.epochs = int(args["epochs"])
        total_steps = self.steps_per_epoch * self.epochs
        images = self.batch_size * self.world * self.accumulate
        self.lr0 = scaled_lr(float(args["lr0"]), images, int(args.get("lr_batch") or 0))
        if self.lr0 != float(args["lr0"]):
            LOGGER.info(f"lr0 {args['lr0']:g} is for batch {args['lr_batch']}; this run's optimizer steps see "
                        f"{images} images: lr {self.lr0:.4g} (linear scaling)")
        self.weight_decay = weight_decay
        self.optimizer = build_optimizer(de_parallel(self.model), args["optimizer"], self.lr0,
                                         float(args["momentum"]), weight_decay, float(args["backbone_lr_ratio"]),
                                         beta2=float(args.get("beta2", 0.999)))  # a run saved before beta2
        warmup = warmup_steps(int(args["warmup_iters"]), float(args["warmup_epochs"]), self.steps_per_epoch,
                              total_steps, float(args["warmup_max_fraction"]))
        self.schedule = LRSchedule(self.optimizer, self.lr0, total_steps, scheduler=args["scheduler"],
                                   lrf=float(args["lrf"]), warmup=warmup, flat_fraction=float(args["flat_fraction"]),
                                   warmup_bias_lr=float(args["warmup_bias_lr"]), momentum=float(args["momentum"]),
                                   warmup_momentum=float(args["warmup_momentum"]),
                                   warmup_shape=str(args.get("warmup_shape") or "linear"),
                                   cosine_end=float(args.get("cosine_end") or 1.0))

    def _claim_run_folder(self, ckpt: dict | None, args: dict) -> Path:
        """A resumed run continues in its own folder (see rtdet.engine.resume); any other run claims a new one."""
        if ckpt is not None:
            own = own_run_folder(self.resume_path, ckpt)
            if own is not None:
                return own
        # A run that fails before its first checkpoint leaves no folder: its args.yaml alone is worth nothing.
        self.folder = RunFolder(args["project"], self.task, args.get("name"), bool(args["exist_ok"]),
                                disposable=("args.yaml",))
        if ckpt is not None:
            LOGGER.warning(f"resume: {self.resume_path} is not inside its own run folder (<run>/weights/last.pt "
                           f"beside the run's args.yaml); the run continues in a new folder, {self.folder.path}")
        return self.folder.path

    def _auto_recipe(self, args: dict, user_keys: set[str], weights_loaded: bool) -> None:
        """``recipe=auto``: adapt the recipe's nominal batch, warmup, EMA, lr and pipeline to this run's size and start
        (rtdet.engine.autorecipe), in ``args``; one line says what changed and why."""
        changes, reasons = auto_recipe(args, user_keys, len(self.train_loader.dataset), int(args["batch"]),
                                       self.world, weights_loaded)
        line = summary(args, changes, reasons)
        if line and self.rank == 0:
            LOGGER.info(line)
        args.update(changes)
        if "train_pipeline" in changes:  # the loaders, built first to count the images, hold the recipe's pipeline
            self._make_loaders(args)

    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        """DDP over ``model``'s trainable parameters (again after unfreezing: DDP fixes them when it wraps)."""
        # A head that uses every parameter on every step may say so (skips DDP's extra graph traversal).
        unused = bool(model.head.ddp_find_unused_parameters)
        return nn.parallel.DistributedDataParallel(model, device_ids=(
            [self.device.index] if self.device.type == "cuda" else None), find_unused_parameters=unused)

    def _frozen_rows(self, model: DetectionModel, args: dict, ckpt: dict | None) -> list[int]:
        """The rows ``freeze=`` names (a resumed run also restores which rows were transplanted), checked
        before the run folder is claimed: a spec that cannot apply is a bad setting."""
        if ckpt is not None:
            self.transplanted_rows = [int(i) for i in ckpt.get("transplanted_rows") or []]
        try:
            rows = resolve_freeze(args.get("freeze"), model, self.transplanted_rows)
        except ValueError as e:
            raise SettingsError(str(e)) from None
        if rows and not any(p.requires_grad for i, m in enumerate(model.model) if i not in rows
                            for p in m.parameters()):
            raise SettingsError(f"freeze={args['freeze']}: freezes every row of {model.name}, leaving nothing to "
                                f"train; freeze fewer rows, e.g. freeze=backbone")
        return rows

    def _make_freezer(self, model: DetectionModel, rows: list[int]) -> Freezer:
        """Freeze ``rows`` (before the optimizer and DDP see the model)."""
        freezer = Freezer(model, rows)
        if rows and self.rank == 0:
            n = sum(p.numel() for i in rows for p in model.model[i].parameters())
            freeze, after = self.args["freeze"], self.args.get("freeze_epochs")
            until = f"for {after} epoch(s)" if after else "for the whole run"
            LOGGER.info(f"Freezing {len(rows)} row(s) ({freeze}: {n:,} parameters) {until}")
        return freezer

    def _unfreeze(self) -> None:
        """Make the frozen rows trainable and give them their optimizer entries (at ``freeze_epochs``)."""
        model = de_parallel(self.model)
        params = self.freezer.release(model)
        add_params(self.optimizer, model, params, self.weight_decay, float(self.args["backbone_lr_ratio"]))
        if self.world > 1:
            self.model = self._wrap_ddp(model)
        LOGGER.info(f"Unfroze {len(self.freezer.rows)} row(s) ({sum(p.numel() for p in params):,} parameters) "
                    f"after {self.args['freeze_epochs']} epoch(s)")

    def _unfreeze_due(self, epoch: int) -> bool:
        """Rows are still frozen but epoch ``epoch`` (0-based) trains them."""
        after = int(self.args.get("freeze_epochs") or 0)
        return self.freezer.frozen and 0 < after <= epoch

    def _make_run_folder(self) -> None:
        """The run folder, its settings, and no stale temporaries: a run killed inside a write leaves a
        hidden ``.<name>.<random>.rtdet-tmp`` beside the file (the file itself is intact); they are removed here."""
        self.wdir.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temporaries(self.save_dir) + remove_stale_temporaries(self.wdir)
        if removed:
            mb = sum(size for _, size in removed) / 2**20
            LOGGER.info(f"Removed {len(removed)} temporary file(s) ({mb:.1f} MB) left by an interrupted write: "
                        f"{', '.join(p.name for p, _ in removed)}")
        atomic_write_text(self.save_dir / "args.yaml", yaml.safe_dump(plain_settings(self.args), sort_keys=False))
        if getattr(self, "transplant_report", None) is not None:  # what pretrained= gave each row
            write_transplant_report(self.transplant_report, self.save_dir)
        if self.rows:  # resumed: results.csv as the checkpoint knows it
            self._write_csv()

    def _load_state(self, ckpt: dict) -> None:
        """Model, EMA, optimizer, schedule, scaler, epoch and RNG from a last.pt (exact continuation)."""
        if self._unfreeze_due(int(ckpt["epoch"])):  # saved after unfreezing: the optimizer holds every row
            self._unfreeze()
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.model.load_state_dict(ckpt["ema"]["state_dict"])
            self.ema.load_state_dict(ckpt.get("ema_state", {"updates": 0}))
        self.best_fitness = ckpt.get("best_fitness")
        self.best_epoch = int(ckpt.get("best_epoch", -1))
        if self.stage_switch is not None:
            self.stage_switch.load_state_dict(ckpt.get("stage_switch") or {})
        step = int(ckpt.get("step_in_epoch") or 0)
        if step:  # interrupted mid-epoch: replay that epoch's data order and skip what was trained
            self.start_epoch, self.skip_batches = int(ckpt["epoch"]), step
            self.resume_rng = ckpt["rng"]
            self._resumed_losses = ckpt.get("epoch_losses")
            set_rng_state(ckpt["epoch_rng"])
        else:
            self.start_epoch = int(ckpt["epoch"]) + 1
            set_rng_state(ckpt["rng"])
        if self.start_epoch >= self.epochs:
            raise SettingsError(
                f"{self.resume_path}: this run already finished its {self.epochs} epochs. To train longer, start "
                f"a new run from its weights: rtdet train model={self.resume_path} data=... epochs=N"
            )
        # The rows of every epoch this checkpoint completed (results.csv is rewritten from them).
        self.rows = [dict(r) for r in ckpt.get("results") or []]
        self._check_best(ckpt)
        LOGGER.info(f"Resuming {self.save_dir} from epoch {self.start_epoch + 1}"
                    f"{f', batch {self.skip_batches + 1}' if self.skip_batches else ''}")

    # ------------------------------------------------------------------ loop
    def _fit(self) -> dict:
        recipe = f", recipe {self.recipe_files}" if getattr(self, "recipe_files", "") else ""
        LOGGER.info(f"Training {de_parallel(self.model).name} ({self.family}{recipe}) on {self.device} for "
                    f"{self.epochs} epochs, {len(self.train_loader.dataset)} images, batch "
                    f"{self.batch_size * self.world}; results -> {self.save_dir}")
        for epoch in range(self.start_epoch, self.epochs):
            self.epoch = epoch
            if self._unfreeze_due(epoch):
                self._unfreeze()
            if self.stage_switch is not None and self.stage_switch.starts(epoch) and not self.skip_batches:
                self._switch_stage(epoch)  # (a run resumed inside this epoch switched before its checkpoint)
            self._run_callbacks("on_train_epoch_start")
            t0 = time.time()
            interrupted, losses = self._train_epoch(epoch)
            if interrupted is not None:
                self._on_interrupt(epoch, interrupted)
            self.metrics = self._validate() if self.val_loader is not None else {}
            improved, stop, reload = self._decide(epoch, losses)
            if self.rank == 0:
                self._add_row(epoch, losses, time.time() - t0)
            if reload:  # before last.pt is written: it holds the state the next epoch starts from
                self._reload_stage_one(f"epoch {epoch + 1} did not improve on the best since the last reload")
            if self.rank == 0:
                # Checkpoints first, then the results row: results.csv never lists an epoch whose weights
                # were not saved (the rows also travel inside last.pt, so resume restores them exactly).
                self._save(epoch, best=improved)
                self._write_csv()
            self._run_callbacks("on_fit_epoch_end")
            if self._sync_flags(False)[0] and epoch + 1 < self.epochs:  # a signal during validation or saving
                self._on_interrupt(epoch, None)
            if stop:
                LOGGER.info(f"Stopping early: no improvement for {self.args['patience']} epochs "
                            f"(best epoch {self.best_epoch + 1})")
                break
        if self.world > 1:  # every rank ends with the weights rank 0 saved (BatchNorm statistics included)
            broadcast_buffers(de_parallel(self.model), self.ema.model if self.ema is not None else None)
        if self.rank == 0:
            self._finish()
        self._run_callbacks("on_train_end")
        return self.metrics

    def _decide(self, epoch: int, losses: dict[str, float]) -> tuple[bool, bool, bool]:
        """(improved, stop early, reload stage one's best) for this epoch, decided by rank 0, which alone
        validates, and broadcast: ranks that decided from their own numbers could stop at different epochs and
        deadlock."""
        switch = self.stage_switch
        decision = [False, False, self.best_fitness, self.best_epoch, False, None]
        if self.rank == 0:
            fit = fitness(self.metrics) if self.metrics else None
            if fit is None:  # no validation, or a val split without labels: the lowest training loss is best
                fit = -sum(losses.values())
            improved = self.best_fitness is None or fit >= self.best_fitness
            best_fitness, best_epoch = (fit, epoch) if improved else (self.best_fitness, self.best_epoch)
            patience = int(self.args["patience"] or 0)
            reload = switch is not None and switch.after_epoch(epoch, fit, improved)
            decision = [improved, bool(patience and epoch - best_epoch >= patience), best_fitness, best_epoch,
                        reload, switch.best if switch is not None else None]
        if self.world > 1:
            dist.broadcast_object_list(decision, src=0)
        improved, stop, self.best_fitness, self.best_epoch, reload, switch_best = decision
        if switch is not None:
            switch.best = switch_best
        return bool(improved), bool(stop), bool(reload)

    def _switch_stage(self, epoch: int) -> None:
        """The first epoch of stage two (``stage_switch``): stage one's best checkpoint becomes
        ``best_stage1.pt`` (from best.pt, which later epochs may replace) and the run goes back to it."""
        stage_one = self.wdir / "best_stage1.pt"
        if self.rank == 0:
            if not self.best.is_file():
                raise CheckpointError(f"stage_switch at epoch {epoch + 1}: {self.best}, stage one's best, is missing; "
                                      f"the run cannot go back to it (stage_switch=false trains on without it)")
            save_checkpoint(load_checkpoint(self.best), stage_one)
        self.stage_switch.switched(self.best_fitness)
        self._reload_stage_one(f"the stage switch at epoch {epoch + 1}")

    def _reload_stage_one(self, why: str) -> None:
        """Model, EMA (weights and update count) and optimizer from ``best_stage1.pt``, on every rank; the
        schedule, the scaler, the epoch and the random state go on (the official runs' lr follows the step)."""
        if self.world > 1:
            dist.barrier()  # rank 0 has written the file
        ckpt = load_checkpoint(self.wdir / "best_stage1.pt")
        de_parallel(self.model).load_state_dict(ckpt["model"]["state_dict"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.model.load_state_dict(ckpt["ema"]["state_dict"])
            self.ema.load_state_dict(ckpt.get("ema_state") or {"updates": 0})
        self.optimizer.load_state_dict(ckpt["optimizer"])
        LOGGER.info(f"{why}: back to stage one's best (epoch {int(ckpt['epoch']) + 1}, weights/best_stage1.pt)")

    def _train_epoch(self, epoch: int) -> tuple[int | None, dict[str, float]]:
        """One pass over the training data. Returns (batches done if interrupted else None, mean losses)."""
        model, loader = self.model, self.train_loader
        model.train()
        loaders.set_epoch(loader, epoch, self.epochs)
        epoch_rng = get_rng_state()
        batches = iter(loader)
        start = self.skip_batches
        for _ in range(start):  # mid-epoch resume: the same order, the trained batches skipped
            next(batches)
        if self.resume_rng is not None:
            set_rng_state(self.resume_rng)
            self.resume_rng = None
        self.skip_batches, self._epoch_rng = 0, epoch_rng
        n = len(loader)
        meter = self._meter = LossMeter(int(self.args.get("log_every") or 10))  # loss terms summed on the device
        if start and self._resumed_losses:  # the batches trained before the interruption count too
            meter.load_state_dict(self._resumed_losses, self.device)
        self._resumed_losses = None
        pbar = tqdm(batches, total=n, initial=start, desc=f"{epoch + 1}/{self.epochs}", leave=True,
                    disable=not self.args.get("verbose", True) or self.rank != 0, dynamic_ncols=True)
        t0, images = time.time(), 0
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(pbar, start=start):
            step_done = (i + 1) % self.accumulate == 0 or i + 1 == n
            meter.update(*self.train_step(batch, step=step_done, where=(epoch, i, n)))
            images += batch["img"].shape[0] * self.world
            self.batch_index = i
            window = meter.read(i, n)  # every log_every batches: one host read of the window's means
            self.step_log = None if window is None else (epoch * n + i + 1, {
                **{f"train/{k}": v for k, v in window.items()}, **learning_rates(self.optimizer)})
            if window is not None:
                rate = images / max(time.time() - t0, 1e-9)
                pbar.set_postfix_str(_format_terms(window.pop("loss"), window, rate), refresh=False)
            self._run_callbacks("on_train_batch_end")
            if step_done and self._sync_flags(False)[0]:
                pbar.close()
                return i + 1, meter.epoch_means()
        pbar.close()
        return None, meter.epoch_means()

    def train_step(self, batch: dict, step: bool = True, where: tuple[int, int, int] | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward, loss, backward on one batch; with ``step`` also the optimizer step (schedule, clipping,
        EMA). Returns (loss, {term: value}) as detached tensors on the device: read them on the host only when
        needed (:class:`LossMeter`). A NaN/inf loss raises NonFiniteLossError before any update. ``where``
        (epoch, batch, batches) places the batch in the run: multi-scale draws its size from it."""
        self.model.train()
        self.freezer.hold(de_parallel(self.model))  # frozen rows keep their BatchNorm statistics
        batch = loaders.to_device(batch, self.device)
        if where is not None and getattr(self, "multi_scale", None) is not None:
            batch = self.multi_scale(batch, where[0], where[1])
        batch["targets"] = batch_targets(batch, batch["img"].shape[0], de_parallel(self.model).nc)  # once a step
        if self.channels_last:
            batch["img"] = to_channels_last(batch["img"])
        with network_autocast(self.device, self.amp_dtype):  # the network only: loss and matching in fp32
            outputs = self.model(batch["img"], batch)
        loss, items = self.criterion(float32_outputs(outputs), batch)
        # The one host read of every step: a NaN/inf loss must stop training before the update.
        if self._sync_flags(not to_host(torch.isfinite(loss.detach()).all()))[1]:
            epoch, i, n = where if where is not None else (self.epoch, 0, 1)
            self._non_finite(epoch, i, n, loss, items)
        self.scaler.scale(loss * self.loss_scale).backward()
        if step:
            self._optimizer_step()
        return loss.detach(), dict(items)

    def _optimizer_step(self) -> None:
        self.schedule.step()
        clip = float(self.args["clip_grad"] or 0)
        if clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(de_parallel(self.model).parameters(), max_norm=clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
            self.freezer.sync_ema(self.ema.model, de_parallel(self.model))

    def _sync_flags(self, non_finite: bool) -> tuple[int, bool]:
        """(signal that asked to stop or 0, loss not finite) agreed by every DDP rank, so that all stop at the
        same step."""
        flags = (self._stop_requested, non_finite)
        if self.world > 1:
            t = torch.tensor([float(f) for f in flags], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flags = (int(t[0]), bool(t[1]))
            self._stop_requested = flags[0]
        return flags

    def _non_finite(self, epoch: int, i: int, n: int, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        kept = (f"{self.last} keeps the weights of the last completed epoch" if self.last.is_file()
                else "no epoch completed, so no weights were saved")
        detail = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        raise NonFiniteLossError(
            f"loss is {float(loss.detach())} at epoch {epoch + 1}/{self.epochs}, batch {i + 1}/{n} ({detail}). "
            f"Training stopped; {kept}. Usual fixes: a lower lr0, amp=False, clip_grad=0.1, or check the labels "
            f"of this batch with `rtdet data check`."
        )

    def _on_interrupt(self, epoch: int, step: int | None) -> None:
        """Save last.pt (mid-epoch with the position in the epoch; ``step`` None: the epoch was complete and
        is saved already) and raise Interrupted, which the command line turns into exit 128 + signal."""
        if self.rank == 0:
            if step is not None:
                self._save(epoch, best=False, step_in_epoch=step)
            self._finish(plots_only=True)
        where = (f"epoch {epoch + 1}, batch {step}/{len(self.train_loader)}" if step is not None
                 else f"the end of epoch {epoch + 1}")
        signum = self._stop_requested or signal.SIGINT
        LOGGER.warning(f"\nStopped ({signal.Signals(signum).name}) at {where}: saved {self.last}. "
                       f"Continue with: rtdet train resume={self.last}")
        raise Interrupted(f"training interrupted at {where}; saved {self.last}", signum)

    # ------------------------------------------------------------------ validation and records
    def _validate(self) -> dict:
        model = self.ema.model if self.ema is not None else de_parallel(self.model)
        metrics = self.validator.run(model, self.val_loader, save_dir=None)
        return metrics

    def _add_row(self, epoch: int, losses: dict[str, float], seconds: float) -> None:
        """This epoch's row of results.csv: mean loss terms, val metrics, learning rates, seconds."""
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({f"train/{k}": round(v, 6) for k, v in losses.items()})
        row.update({f"metrics/{k}": round(float(v), 6) for k, v in self.metrics.items()
                    if isinstance(v, int | float)})
        for g in self.optimizer.param_groups:  # groups are sorted: decayed weights first
            part = "backbone" if str(g.get("name", "")).startswith("backbone") else "head"
            row.setdefault(f"lr/{part}", round(g["lr"], 9))
        row["time"] = round(seconds, 2)
        self.rows.append(row)
        if self.metrics:
            m = {k: "n/a" if self.metrics.get(k) is None else f"{self.metrics[k]:.4f}" for k in ("mAP50-95", "mAP50")}
            LOGGER.info(f"{'':>9}val: mAP50-95 {m['mAP50-95']}  mAP50 {m['mAP50']}  ({seconds:.1f} s)")

    def _write_csv(self) -> None:
        columns: list[str] = []
        for r in self.rows:
            columns += [c for c in r if c not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.csv_path, buf.getvalue())

    def checkpoint(self, epoch: int, step_in_epoch: int = 0) -> dict:
        """Everything needed to continue: tensors and plain types only (torch.load(weights_only=True))."""
        ckpt = {
            "model": de_parallel(self.model).to_checkpoint(),
            "ema": self.ema.model.to_checkpoint() if self.ema is not None else None,
            "ema_state": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "best_fitness": self.best_fitness,
            "best_epoch": self.best_epoch,
            "stage_switch": self.stage_switch.state_dict() if self.stage_switch is not None else None,
            "metrics": {k: float(v) for k, v in self.metrics.items() if isinstance(v, int | float)},
            "rng": get_rng_state(),
            "epoch_rng": self._epoch_rng if step_in_epoch else None,
            "epoch_losses": self._meter.state_dict() if step_in_epoch else None,  # the epoch's loss sums so far
            "args": plain_settings(self.args),
            "transplanted_rows": [int(i) for i in self.transplanted_rows],
            "results": plain_settings(self.rows),  # results.csv up to this checkpoint
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return ckpt

    def _save(self, epoch: int, best: bool, step_in_epoch: int = 0) -> None:
        """last.pt, then best.pt when this epoch improved. Each file is atomic; between the two renames
        last.pt already records ``best_epoch == epoch`` while best.pt is older, a state resume recognises
        and completes (:meth:`_check_best`): every state on disk is consistent or exactly recoverable."""
        ckpt = self.checkpoint(epoch, step_in_epoch)
        save_checkpoint(ckpt, self.last)
        if best:
            save_checkpoint(ckpt, self.best)
        period = int(self.args.get("save_period") or -1)
        if period > 0 and not step_in_epoch and (epoch + 1) % period == 0:
            save_checkpoint(ckpt, self.wdir / f"epoch{epoch + 1}.pt")

    def _check_best(self, ckpt: dict) -> None:
        """On resume: best.pt must hold the epoch that last.pt records as ``best_epoch``. A run killed between
        the writes of last.pt and best.pt left last.pt as the best epoch and best.pt older: best.pt is then
        rewritten from last.pt. Any other mismatch is an error (the files come from different runs)."""
        best_epoch = int(ckpt.get("best_epoch", -1))
        if self.rank != 0 or best_epoch < 0:
            return
        found = None
        if self.best.is_file():
            try:
                found = int(load_checkpoint(self.best).get("epoch", -1))
            except CheckpointError as e:
                LOGGER.warning(f"{e}")
        if found == best_epoch:
            return
        if best_epoch == int(ckpt["epoch"]) and not ckpt.get("step_in_epoch"):
            save_checkpoint(ckpt, self.best)
            LOGGER.warning(f"{self.best} was {'older' if found is not None else 'missing or unreadable'} (epoch "
                           f"{'?' if found is None else found + 1}) but {self.resume_path} records epoch "
                           f"{best_epoch + 1} as the best, which is last.pt itself (the run stopped between the two "
                           f"writes): best.pt rewritten from last.pt")
            return
        raise CheckpointError(
            f"{self.best} holds epoch {'?' if found is None else found + 1} but {self.resume_path} records epoch "
            f"{best_epoch + 1} as the best; the two files are not from the same run. Move best.pt away to resume "
            f"(best.pt then follows the epochs still to come)."
        )

    def _finish(self, plots_only: bool = False) -> None:
        if self.args.get("plots") and self.csv_path.is_file():
            with contextlib.suppress(ValueError):  # no completed epoch to plot yet
                plot_results(self.csv_path)
        if not plots_only:
            if self.metrics and self.validator is not None:
                LOGGER.info(f"Last epoch's validation ({len(self.val_loader.dataset)} images):")
                self.validator.print_results(self.metrics, list(self.data.names))
            written = [f"weights/best.pt from epoch {self.best_epoch + 1}" if self.best.is_file() else None,
                       "weights/last.pt" if self.last.is_file() else None,
                       "results.csv" if self.csv_path.is_file() else None,
                       "results.png" if (self.save_dir / "results.png").is_file() else None]
            LOGGER.info(f"Done. Results in {self.save_dir} ({', '.join(w for w in written if w)})")


def _model_pipeline(args: dict, user: dict, model: DetectionModel) -> None:
    """A model YAML may name the training pipeline its reference uses at that scale (``train_pipeline:``,
    e.g. RTMDet-tiny's smaller caches): it wins over the family recipe, the user's own choice over both."""
    preferred = (getattr(model, "yaml", None) or {}).get("train_pipeline")
    if preferred and user.get("train_pipeline") is None:
        args["train_pipeline"] = preferred


def _maybe_sync_bn(model: nn.Module, wanted: bool, world: int, device: torch.device) -> nn.Module:
    """SyncBatchNorm across DDP processes when asked and possible (several CUDA processes); otherwise the
    model keeps its BatchNorm (SyncBN fails on the CPU and is pointless in one process)."""
    if not wanted:
        return model
    if world > 1 and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    LOGGER.warning(f"sync_bn=true ignored: it needs several CUDA processes (DDP), this run has {world} on "
                   f"{device.type}; BatchNorm stays per process")
    return model


def _format_terms(loss: float, terms: dict[str, float], rate: float, limit: int = 4) -> str:
    shown = list(terms.items())[:limit]
    parts = [f"loss={loss:.3f}"] + [f"{k}={v:.3f}" for k, v in shown]
    return " ".join(parts) + f" {rate:.1f} img/s"
