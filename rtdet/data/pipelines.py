"""Augmentation pipelines as data: a pipeline spec (YAML) lists the training transforms, later training
stages, and the validation transforms, each transform a ``{name: ..., **kwargs}`` mapping::

    load_size: true          # training images are read at long side = imgsz (Ultralytics' load_image)
    train:                   # stage 0, from the first epoch
      - {name: Mosaic, p: 1.0}
      - {name: RandomAffine, scale: 0.5, translate: 0.1}
    batch:                   # optional batch transforms (rtdet.data.batching), applied by the loader
      - {name: BatchMixUp, p: 0.5}
    stages:                  # later stages, sorted by start
      - at: -10              # epoch index >= 0 | < 0: epochs before the end | 0 < float < 1: fraction of the run
        drop: [Mosaic, MixUp]   # the previous stage without these (training and batch transforms) ...
      - at: 0.9
        train: [...]            # ... or a full replacement list
        batch: []               # (batch: replaces the batch transforms; without it they carry over)
    val:
      - {name: LetterBox}

Built-in specs live in ``rtdet/cfg/pipelines/<name>.yaml`` (ultralytics, yolov9, rtmdet, rtmdet-tiny,
rtdetr, dfine, deim, plain). A spec may also be a path to such a YAML, a dict, or a plain list (training transforms
only; validation then letterboxes).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import rtdet.data.mixing  # noqa: F401  (registers the mixing transforms)
from rtdet.data.batching import BatchSchedule, build_batch_transform
from rtdet.data.transforms import Compose, PipelineConfigError, build_transform
from rtdet.utils.yaml_file import read_yaml

__all__ = ["BUILTIN_PIPELINES", "PipelineSchedule", "PipelineSpec", "build_batch_schedule", "build_pipeline",
           "load_pipeline_spec", "named_pipelines", "register_pipeline", "resolve_stage_start",
           "unregister_pipeline"]

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "cfg" / "pipelines"
BUILTIN_PIPELINES = sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))
DEFAULT_VAL = [{"name": "LetterBox", "interpolation": "auto"}]
# Pipelines a recipe or a checkpoint may name by their stem: the built-ins, then those a family outside the
# package registers with its record (rtdet.families.register_family).
_NAMED: dict[str, Path] = {name: BUILTIN_DIR / f"{name}.yaml" for name in BUILTIN_PIPELINES}


def register_pipeline(path: str | Path) -> None:
    """Make a pipeline file known by its stem (``train_pipeline: <stem>``). Another file of the same stem is
    an error: a name must mean one pipeline."""
    path = Path(path).resolve()
    old = _NAMED.get(path.stem)
    if old is not None and old.resolve() != path:
        raise PipelineConfigError(f"pipeline name {path.stem!r} is already taken by {old}; rename {path}")
    _NAMED[path.stem] = path


def unregister_pipeline(path: str | Path) -> None:
    """Forget a registered pipeline file (its family is unregistered); the built-ins stay."""
    path = Path(path).resolve()
    if path.parent != BUILTIN_DIR and path.stem in _NAMED and _NAMED[path.stem].resolve() == path:
        del _NAMED[path.stem]


def named_pipelines() -> list[str]:
    """Every pipeline name a setting may give (built-in and registered)."""
    return sorted(_NAMED)


@dataclass
class PipelineSpec:
    """A parsed pipeline spec (lists of transform dicts; nothing built yet)."""

    name: str
    train: list[dict]
    val: list[dict] = field(default_factory=lambda: copy.deepcopy(DEFAULT_VAL))
    stages: list[dict] = field(default_factory=list)
    load_size: bool = False
    batch: list[dict] = field(default_factory=list)

    def train_stages(self, epochs: int) -> list[tuple[int, list[dict]]]:
        """[(first epoch, transform dicts)] for a run of ``epochs`` epochs, sorted by first epoch. A stage
        whose start falls before epoch 0 or at/after the end of the run never becomes active (as
        Ultralytics' close_mosaic and mmdet's PipelineSwitchHook in runs shorter than the switch)."""
        return self._staged("train", epochs)

    def batch_stages(self, epochs: int) -> list[tuple[int, list[dict]]]:
        """[(first epoch, batch transform dicts)], staged as :meth:`train_stages` (same starts)."""
        return self._staged("batch", epochs)

    def _staged(self, key: str, epochs: int) -> list[tuple[int, list[dict]]]:
        """The ``key`` list ("train" or "batch") of every stage: a stage's own list when it has one, else
        the previous stage's without the names in its ``drop``."""
        out = [(0, getattr(self, key))]
        timed = [(resolve_stage_start(st["at"], epochs), st) for st in self.stages]
        for start, st in sorted((t for t in timed if 0 <= t[0] < epochs), key=lambda t: t[0]):
            prev = out[-1][1]
            dropped = set(st.get("drop", ()))
            tl = st[key] if key in st else [t for t in prev if t["name"] not in dropped]
            if start == out[-1][0]:
                out[-1] = (start, tl)
            else:
                out.append((start, tl))
        return out


def resolve_stage_start(at: int | float, epochs: int) -> int:
    """First epoch of a stage: ``at`` >= 0 (int) is an epoch index, < 0 counts back from the end
    (-10 = the last 10 epochs: ``epochs - 10``, negative when the run is shorter), a float in (0, 1) is a
    fraction of the run (rounded)."""
    if isinstance(at, bool) or not isinstance(at, (int, float)):
        raise PipelineConfigError(f"stage 'at' must be a number, got {at!r}")
    if isinstance(at, float) and not at.is_integer():
        if not 0 < at < 1:
            raise PipelineConfigError(f"stage 'at: {at}': a fractional start must lie in (0, 1)")
        start = round(at * epochs)
    else:
        start = int(at) if at >= 0 else epochs + int(at)
    return start


def _check_list(lst: Any, where: str) -> list[dict]:
    if not isinstance(lst, list) or not all(isinstance(t, dict) and "name" in t for t in lst):
        raise PipelineConfigError(f"{where} must be a list of {{name: Transform, ...}} mappings, got {lst!r}")
    return copy.deepcopy(lst)


def load_pipeline_spec(spec: str | Path | dict | list | PipelineSpec | None, default: str = "ultralytics"
                       ) -> PipelineSpec:
    """A :class:`PipelineSpec` from a built-in name, a YAML path, a dict or a list of transforms."""
    if isinstance(spec, PipelineSpec):
        return spec
    if spec is None or spec == "":
        spec = default
    name = "<dict>"
    if isinstance(spec, (str, Path)):
        p = Path(spec)
        named = _NAMED.get(p.stem)
        if p.suffix in (".yaml", ".yml") and p.is_file():
            path = p
        elif named is not None and named.is_file() and p.parent == Path("."):
            path = named
        else:
            raise PipelineConfigError(
                f"pipeline '{spec}' not found: not a YAML file and not a named pipeline ({', '.join(_NAMED)})"
            )
        name = path.stem
        spec = read_yaml(path, PipelineConfigError)
    if isinstance(spec, list):
        return PipelineSpec(name="<list>", train=_check_list(spec, "pipeline"))
    if not isinstance(spec, dict):
        raise PipelineConfigError(f"a pipeline spec must be a name, a YAML path, a dict or a list; got {spec!r}")
    unknown = set(spec) - {"name", "train", "val", "stages", "load_size", "batch"}
    if unknown:
        raise PipelineConfigError(f"pipeline {name}: unknown key(s) {sorted(unknown)} "
                                  f"(allowed: train, batch, stages, val, load_size)")
    if "train" not in spec:
        raise PipelineConfigError(f"pipeline {name}: missing key 'train' (the list of training transforms)")
    stages = []
    for k, st in enumerate(spec.get("stages") or []):
        if (not isinstance(st, dict) or "at" not in st or ("train" in st and "drop" in st)
                or not {"train", "drop", "batch"} & set(st)):
            raise PipelineConfigError(f"pipeline {name}: stages[{k}] must be {{at: ..., train: [...]}} or "
                                      f"{{at: ..., drop: [names]}}, optionally with batch: [...], got {st!r}")
        resolve_stage_start(st["at"], 100)  # validates the value
        st = dict(st)
        if "train" in st:
            st["train"] = _check_list(st["train"], f"pipeline {name}: stages[{k}].train")
        if "batch" in st:
            st["batch"] = _check_list(st["batch"], f"pipeline {name}: stages[{k}].batch")
        if "drop" in st and not isinstance(st["drop"], list):
            raise PipelineConfigError(f"pipeline {name}: stages[{k}].drop must be a list of transform names")
        stages.append(st)
    return PipelineSpec(
        name=str(spec.get("name", name)),
        train=_check_list(spec["train"], f"pipeline {name}: train"),
        val=_check_list(spec["val"], f"pipeline {name}: val") if spec.get("val") else copy.deepcopy(DEFAULT_VAL),
        stages=stages,
        load_size=bool(spec.get("load_size", False)),
        batch=_check_list(spec["batch"], f"pipeline {name}: batch") if spec.get("batch") else [],
    )


def build_pipeline(transforms: list[dict], imgsz: int) -> Compose:
    """Build a Compose from transform dicts (``imgsz`` fills each transform's size argument)."""
    return Compose([build_transform(t, imgsz) for t in transforms])


def build_batch_schedule(spec: PipelineSpec, epochs: int, seed: int = 0) -> BatchSchedule:
    """The batch transforms of each training stage of ``spec`` for a run of ``epochs`` epochs."""
    stages = spec.batch_stages(max(int(epochs), 1))
    return BatchSchedule([(start, [build_batch_transform(t) for t in tl]) for start, tl in stages], seed)


class PipelineSchedule:
    """The training pipelines of a run and the epoch each starts at; ``for_epoch`` picks the active one."""

    def __init__(self, stages: list[tuple[int, Compose]]):
        if not stages or stages[0][0] != 0:
            raise PipelineConfigError("the first pipeline stage must start at epoch 0")
        self.stages = stages

    @classmethod
    def from_spec(cls, spec: PipelineSpec, imgsz: int, epochs: int, augment: bool = True) -> PipelineSchedule:
        if not augment:
            return cls([(0, build_pipeline(spec.val, imgsz))])
        return cls([(start, build_pipeline(tl, imgsz)) for start, tl in spec.train_stages(max(int(epochs), 1))])

    def for_epoch(self, epoch: int) -> Compose:
        starts = np.array([s for s, _ in self.stages])
        return self.stages[int(np.searchsorted(starts, epoch, side="right")) - 1][1]

    def bind(self, dataset) -> PipelineSchedule:
        for _, c in self.stages:
            c.bind(dataset)
        return self

    def __repr__(self) -> str:
        return "PipelineSchedule(" + ", ".join(f"epoch {s}+: {c.names}" for s, c in self.stages) + ")"
