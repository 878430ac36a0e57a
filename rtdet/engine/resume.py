"""Resuming a run from its ``last.pt``: which settings continue, which folder the run continues in, and
what may not change.

    ckpt, args = resume_settings(Path("runs/train/exp/weights/last.pt"), {"resume": "...", "workers": 2})
    folder = own_run_folder(path, ckpt)      # runs/train/exp, or None for a copied last.pt

* The run continues with the settings it was started with; only :data:`RESUME_OVERRIDABLE` may change
  (other keys are ignored with a warning). A ``model=`` other than the run's own is refused: the checkpoint
  decides the model, and silently ignoring a different one would train something the user did not ask for.
* A ``last.pt`` continues in place only inside its own run folder: ``<run>/weights/last.pt`` beside the
  ``<run>/args.yaml`` that this run wrote (the same settings as the checkpoint's, up to those a resume may
  change). A copy anywhere else (``~/Downloads/last.pt``) continues in a new run folder, and the trainer
  says so: nothing of the folder around the copy is read, written or deleted.
* A dataset whose class count is not the checkpoint's is refused at set-up, naming both counts.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from rtdet.engine.settings import SettingsError, schema
from rtdet.utils.checkpoint import CheckpointError, load_checkpoint
from rtdet.utils.logging import LOGGER

__all__ = ["RESUME_OVERRIDABLE", "check_resumed_classes", "own_run_folder", "resume_settings"]

# Settings a resumed run may change; everything else comes from the checkpoint so the run continues
# exactly as it started.
RESUME_OVERRIDABLE = ("device", "workers", "verbose", "plots", "loggers", "log_every", "experiment", "tags")


def resume_settings(ckpt_path: Path, user: dict) -> tuple[dict, dict]:
    """(checkpoint, the run's settings) for ``resume=ckpt_path`` with the user's arguments ``user``."""
    ckpt = load_checkpoint(ckpt_path)
    for key in ("args", "optimizer", "epoch", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{ckpt_path}: cannot resume from it, it holds no '{key}' "
                                  f"(resume needs a last.pt written by rtdet train)")
    args = dict(ckpt["args"])
    _check_resumed_model(user.get("model"), args.get("model"), ckpt_path)
    ignored = [k for k in user if k not in (*RESUME_OVERRIDABLE, "resume", "model") and user[k] != args.get(k)]
    if ignored:
        LOGGER.warning(f"resume: ignoring {', '.join(ignored)} (the run continues with its own settings; "
                       f"only {', '.join(RESUME_OVERRIDABLE)} may change)")
    args.update({k: user[k] for k in RESUME_OVERRIDABLE if k in user})
    args["resume"] = str(ckpt_path)
    _check_resumed_device(args, ckpt_path, "device" in user)
    return ckpt, args


def _same_file(a, b) -> bool:
    try:
        return Path(str(a)).resolve() == Path(str(b)).resolve()
    except (OSError, RuntimeError):
        return False


def _check_resumed_model(given, own, ckpt_path: Path) -> None:
    """``model=`` with ``resume=`` must name the run's own model (or the checkpoint itself)."""
    if given is None or str(given) == str(own) or _same_file(given, own) or _same_file(given, ckpt_path):
        return
    raise SettingsError(f"model={given} with resume={ckpt_path}: that run trains model={own}, and a resumed run "
                        f"keeps its model; drop model= to resume it, or drop resume= to start a new run "
                        f"(model={ckpt_path} fine-tunes its weights)")


def _check_resumed_device(args: dict, ckpt_path: Path, given: bool) -> None:
    """The device a resumed run will use must exist here (a run started on a GPU machine resumed on a CPU
    one): a SettingsError that says to pass device=... ."""
    try:
        args["device"] = schema()["device"].check(args.get("device"))
    except SettingsError as e:
        hint = "" if given else f" ({ckpt_path} was trained with it; pass device=cpu or another device to resume)"
        raise SettingsError(f"{e}{hint}") from None


def _comparable(args: dict) -> dict:
    """Settings as args.yaml stores them, without those a resume may change."""
    skip = {*RESUME_OVERRIDABLE, "resume"}
    return {k: v for k, v in yaml.safe_load(yaml.safe_dump(args, sort_keys=False)).items() if k not in skip}


def own_run_folder(ckpt_path: Path, ckpt: dict) -> Path | None:
    """The run folder ``ckpt_path`` belongs to, or None when it is not inside one: ``<run>/weights/<file>``
    with ``<run>/args.yaml`` holding the checkpoint's own settings."""
    ckpt_path = Path(ckpt_path)
    run = ckpt_path.parent.parent
    if ckpt_path.parent.name != "weights" or not (run / "args.yaml").is_file():
        return None
    try:
        saved = yaml.safe_load((run / "args.yaml").read_text())
        mine = _comparable(dict(ckpt["args"]))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, TypeError, ValueError):
        return None
    if not isinstance(saved, dict) or _comparable(saved) != mine:
        return None
    return run


def check_resumed_classes(ckpt_path: Path, model_nc: int, data: str, names: list) -> None:
    """The dataset of a resumed run must still name as many classes as its checkpoint predicts."""
    if model_nc != len(names):
        raise SettingsError(f"resume={ckpt_path}: the run was trained for {model_nc} classes but data={data} "
                            f"now names {len(names)}; resume needs the run's own dataset (or start a new run with "
                            f"model={ckpt_path} to fine-tune on the changed one)")
