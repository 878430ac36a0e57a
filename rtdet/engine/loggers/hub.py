"""The hub between the trainer's callbacks and the experiment trackers."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from rtdet.engine.loggers.backends import BACKENDS, Backend, RunInfo
from rtdet.engine.loggers.spec import parse_loggers
from rtdet.engine.samples import save_sample_predictions
from rtdet.utils.logging import LOGGER

__all__ = ["Loggers", "attach_loggers", "resolve_loggers"]

def resolve_loggers(names: list[str]) -> list[str]:
    """The trackers to start: ``auto`` is TensorBoard when it is installed; csv starts nothing (the trainer
    writes results.csv in any case)."""
    out = [n for n in names if n in BACKENDS]
    if "auto" in names and "tensorboard" not in out and importlib.util.find_spec("tensorboard") is not None:
        out.insert(0, "tensorboard")
    return out


def attach_loggers(trainer) -> Loggers | None:
    """Add a :class:`Loggers` hub to ``trainer``'s callbacks (rank 0 only: the other ranks log nothing)."""
    if getattr(trainer, "rank", 0) != 0:
        return None
    hub = Loggers(resolve_loggers(parse_loggers(trainer.args.get("loggers") or "auto")))
    for event in ("on_train_start", "on_train_batch_end", "on_fit_epoch_end", "on_train_end", "teardown"):
        trainer.add_callback(event, getattr(hub, event))
    return hub


def _plain_settings(args: dict) -> dict:
    """Settings as scalars a tracker stores (lists and mappings as their text, objects by name)."""
    out = {}
    for k, v in args.items():
        if isinstance(v, bool | int | float | str) or v is None:
            out[k] = v
        else:
            out[k] = getattr(v, "name", None) if hasattr(v, "state_dict") else str(v)
    return out


# ------------------------------------------------------------------ the hub
class Loggers:
    """Forwards the trainer's events to the enabled backends; a backend that raises is reported once (its
    name, what failed, the fix) and dropped, and training goes on."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.active: list[Backend] = []
        self.finished = False

    def _call(self, backend: Backend, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - any failure of a tracker (import, network, credentials)
            if isinstance(e, ImportError):
                detail = f"{backend.package} is not installed (pip install 'rtdet[{backend.package}]')"
            else:
                detail = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            LOGGER.warning(f"{backend.name} logger failed at {what} ({detail}); training goes on without it")
            if backend in self.active:
                self.active.remove(backend)

    def _each(self, what: str, method: str, *args) -> None:
        for backend in list(self.active):
            self._call(backend, what, getattr(backend, method), *args)

    # ------------------------------------------------------------------ trainer events
    def on_train_start(self, trainer) -> None:
        args = trainer.args
        project = Path(str(args.get("project") or "runs"))
        save_dir = Path(trainer.save_dir)
        run = RunInfo(save_dir=save_dir, project=project, name=save_dir.name,
                      experiment=str(args.get("experiment") or project.resolve().name),
                      settings=_plain_settings(args), tags=dict(args.get("tags") or {}))
        for name in self.names:
            backend = BACKENDS[name]()
            self.active.append(backend)
            self._call(backend, "start", backend.start, run)

    def on_train_batch_end(self, trainer) -> None:
        log = getattr(trainer, "step_log", None)
        if log is not None:
            step, scalars = log
            self._each(f"step {step}", "log_scalars", scalars, step)

    def on_fit_epoch_end(self, trainer) -> None:
        rows = getattr(trainer, "rows", None)
        if not rows:
            return
        row = {k: float(v) for k, v in rows[-1].items() if k != "epoch" and _is_number(v)}
        epoch = int(rows[-1]["epoch"])
        self._each(f"epoch {epoch}", "log_epoch", row, epoch, epoch * len(trainer.train_loader))

    def on_train_end(self, trainer) -> None:
        step = (trainer.epoch + 1) * len(trainer.train_loader)
        images = _images(trainer)
        if images:
            self._each("the images", "log_images", images, step)
        if trainer.best.is_file():
            self._each("the checkpoint", "log_checkpoint", trainer.best)
        per_class = _per_class_ap(trainer)
        self._each("the end", "finish", per_class, step, True)
        self.active.clear()

    def teardown(self, trainer) -> None:
        """After an error or a stop (Ctrl-C): close what is still open, marked as not finished."""
        step = (getattr(trainer, "epoch", 0) + 1) * len(getattr(trainer, "train_loader", []) or [0])
        self._each("the end", "finish", {}, step, False)
        self.active.clear()


def _is_number(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _per_class_ap(trainer) -> dict[str, float]:
    """{class name: AP50-95} of the last validation; classes without boxes (NaN) are left out."""
    validator = getattr(trainer, "validator", None)
    per_class = getattr(validator, "per_class", None) or {}
    return {str(name): float(ap) for name, (ap, _ap50) in per_class.items() if ap is not None and ap == ap}


def _images(trainer) -> dict[str, Path]:
    """The run's plots and sample predictions as {tag: file}; made here when ``plots`` is on."""
    if not trainer.args.get("plots"):
        return {}
    found = {f"plots/{p.stem}": p for p in sorted(Path(trainer.save_dir).glob("*.png"))}
    try:
        sample = save_sample_predictions(trainer)
    except Exception as e:  # noqa: BLE001 - a picture must never fail a finished run
        LOGGER.warning(f"sample predictions not drawn ({type(e).__name__}: {e})")
        sample = None
    if sample is not None:
        found["samples/val_predictions"] = sample
    return found
