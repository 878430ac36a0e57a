"""``recipe=auto``: the family recipe, adapted where a run is too short for it.

    changes, reasons = auto_recipe(args, user_keys, images=32, batch=8, world=1, weights_loaded=False)
    args.update(changes)                                    # recipe=official: nothing is changed
    print(summary(args_before, changes, reasons))           # one line, '' when nothing changed

The recipes (``cfg/recipes/*.yaml``) are the papers' settings, made for runs of hundreds of thousands of
optimizer steps from COCO or from a pretrained backbone. ``auto`` keeps every one of them where it applies
and changes only the parts below where it cannot, each rule written in terms of settings values, never of a
family's name:

* **nominal batch** (``nbs``): accumulating batches up to the nominal batch must leave at least
  :data:`MIN_STEPS_PER_EPOCH` optimizer steps per epoch; otherwise one step per batch (YOLOv9's nominal 64 on
  32 images is one step per epoch). The weight decay needs no change (``nominal_batch`` scales it by the
  images per step over ``nbs``, which is 1 either way for a nominal batch that covers the whole epoch).
* **warmup**: the recipes warm up for under 1% of their runs; a run whose warmup would take more than
  :data:`MAX_WARMUP_FRACTION` of its steps gets ``warmup_max_fraction`` = that fraction.
* **EMA**: the average must forget within :data:`EMA_RUN_FRACTION` of the run (its window ``1 / (1 -
  ema_decay)`` steps). A longer window averages in the first, untrained weights; ``ema_decay`` is lowered to
  fit and ``ema_tau`` (the ramp) scaled by the same factor, so the ramp keeps the recipe's shape.
* **from scratch on a small run** (no checkpoint or ``pretrained=``, fewer than :data:`SMALL_RUN_STEPS`
  optimizer steps): a recipe made for a pretrained backbone does not apply. A lower backbone lr
  (``backbone_lr_ratio`` < 1) protects pretrained features there are none of: 1. A constant schedule is a
  fine-tuning schedule: cosine to ``lrf`` :data:`SCRATCH_LRF`. An adaptive optimizer (Adam / AdamW) whose
  rate for this batch is below :data:`SCRATCH_ADAM_LR` (Adam's own default, Kingma & Ba 2015, the rate
  ``torch.optim.AdamW`` starts from) gets the larger of that and the recipe's own ``lr0``, and ``lr_batch``
  linear scaling, made for large batches, is then off: scaled from a reference batch of 256 to a batch of 8,
  a rate is 1/32 of itself, too slow for a few hundred steps from nothing (rtmdet-tiny on 32 coco128
  images, 100 epochs: mAP50 0.07 at 1e-3, 0.11 at 2e-3, 0.22 at its recipe's 4e-3; docs/benchmarks.md).
* **augmentation for a small set** (from scratch, fewer than :data:`SMALL_SET_IMAGES` training images and
  fewer than :data:`SMALL_RUN_STEPS` steps): a training pipeline that composes several images (the
  transforms of :mod:`rtdet.data.mixing`: Mosaic, MixUp, CachedMosaic, CachedMixUp) or zooms and crops by
  large factors (:data:`ZOOM_TRANSFORMS`), in any of its stages, is made for sets of 10^4-10^5 images; a
  model that starts from nothing on a few hundred must first fit the images as they are. It becomes
  :data:`SMALL_SET_PIPELINE` (letterbox, HSV, flip), and batch-level multi-scale (``multi_scale``) is off. The
  pipeline is read from its spec's contents (:func:`rtdet.data.pipelines.load_pipeline_spec`), whatever its
  name; each key the user set (``train_pipeline``, ``multi_scale``) is kept.

A key the user set is never changed, and a rule is skipped when the user set any key of its part (their
warmup, their EMA). The functions are pure: settings and run sizes in, changes and reasons out.
"""

from __future__ import annotations

import math

import rtdet.data.mixing as mixing
from rtdet.data.pipelines import load_pipeline_spec
from rtdet.data.transforms import TRANSFORMS, PipelineConfigError
from rtdet.engine.multiscale import parse_multi_scale
from rtdet.engine.optim import nominal_batch, scaled_lr, warmup_steps

__all__ = ["MIN_STEPS_PER_EPOCH", "auto_recipe", "large_set_transforms", "run_steps", "summary"]

MIN_STEPS_PER_EPOCH = 10  # fewer optimizer steps per epoch than this: no nominal-batch accumulation
MAX_WARMUP_FRACTION = 0.1  # the recipes warm up for < 1% of their runs; a short run for at most 10%
EMA_RUN_FRACTION = 0.1  # the EMA's window (1 / (1 - decay) steps) at most 10% of the run
SMALL_RUN_STEPS = 10_000  # the recipes' warmups and EMA ramps (1000-2000 steps) are a fifth of such a run
SCRATCH_LRF = 0.05  # cosine to 5% of lr0 for a from-scratch run whose recipe has a constant lr
SCRATCH_ADAM_LR = 1e-3  # Adam's default rate (Kingma & Ba 2015; torch.optim.Adam / AdamW)
ADAPTIVE_OPTIMIZERS = ("adam", "adamw")
# Mosaic / MixUp / zoom-out / IoU crop are made for COCO's 118k images. From scratch on the first 32
# coco128-train images (batch 8, 400 steps) the recipes' pipelines gave mAP50 0.065 (yolov9t, epoch 88) and
# 0.009 (rtdetr-demo, epoch 88), the plain one 0.62 and 0.75 after 100 epochs (docs/benchmarks.md); a set of
# thousands of images is left to its recipe.
SMALL_SET_IMAGES = 1000
SMALL_SET_PIPELINE = "plain"  # cfg/pipelines/plain.yaml: letterbox, HSV, flip (the short-run files' pipeline)
# Transforms that change the objects' scale and framing by large factors (zoom-out up to 4x, IoU crop,
# random resize up to 2x with a crop): with the mixing transforms, what marks a pipeline made for a large set.
ZOOM_TRANSFORMS = ("ZoomOut", "IoUCrop", "RandomResize")

# The settings of each part; a user who set any of them keeps that whole part as set.
PARTS = {
    "nominal batch": ("nbs", "accumulate"),
    "warmup": ("warmup_iters", "warmup_epochs", "warmup_max_fraction"),
    "EMA": ("ema_decay", "ema_tau", "ema_schedule"),
}


def run_steps(args: dict, images: int, batch: int, world: int = 1) -> tuple[int, int]:
    """(optimizer steps per epoch, steps in the run) that ``args`` give on ``images`` training images with a
    total ``batch`` over ``world`` processes (as the trainer counts them: the last batch may be short)."""
    per_rank = max(batch // world, 1)
    batches = max(math.ceil(images / (per_rank * world)), 1)
    accumulate, _ = nominal_batch(batch, int(args.get("accumulate") or 1), int(args.get("nbs") or 0), 0.0)
    per_epoch = math.ceil(batches / accumulate)
    return per_epoch, per_epoch * int(args["epochs"])


def auto_recipe(args: dict, user_keys: set[str] | frozenset[str], images: int, batch: int, world: int = 1,
                weights_loaded: bool = False) -> tuple[dict, list[str]]:
    """The settings ``recipe=auto`` changes for this run, and why ({} and [] for ``recipe=official``).

    Args:
        args: resolved settings (default < recipe < user).
        user_keys: the keys the user set; never changed.
        images: training images; batch: total batch; world: DDP processes.
        weights_loaded: the model starts from a checkpoint or ``pretrained=`` weights.
    Returns:
        ({key: new value}, [reason, ...]).
    """
    if str(args.get("recipe", "auto")).lower() != "auto":
        return {}, []
    changes: dict = {}
    reasons: list[str] = []
    for rule in (_nominal_batch_rule, _warmup_rule, _ema_rule):
        rule({**args, **changes}, set(user_keys), images, batch, world, changes, reasons)
    if not weights_loaded:
        _scratch_rule({**args, **changes}, set(user_keys), images, batch, world, changes, reasons)
        _augmentation_rule({**args, **changes}, set(user_keys), images, batch, world, changes, reasons)
    return changes, reasons


def _free(part: str, user_keys: set[str]) -> bool:
    """No key of ``part`` was set by the user."""
    return not user_keys.intersection(PARTS[part])


def _nominal_batch_rule(args, user_keys, images, batch, world, changes, reasons) -> None:
    nbs = int(args.get("nbs") or 0)
    if nbs <= 0 or not _free("nominal batch", user_keys):
        return
    per_epoch, _ = run_steps(args, images, batch, world)
    if per_epoch < MIN_STEPS_PER_EPOCH and nominal_batch(batch, 1, nbs, 0.0)[0] > 1:
        plain, _ = run_steps({**args, "nbs": 0, "accumulate": 1}, images, batch, world)
        changes["nbs"] = 0
        reasons.append(f"the nominal batch of {nbs} leaves {per_epoch} optimizer step(s) per epoch on {images} "
                       f"images; one step per batch of {batch} gives {plain}")


def _warmup_rule(args, user_keys, images, batch, world, changes, reasons) -> None:
    fraction = float(args.get("warmup_max_fraction") or 0)
    if fraction <= MAX_WARMUP_FRACTION or not _free("warmup", user_keys):
        return
    per_epoch, total = run_steps(args, images, batch, world)
    warmup = warmup_steps(int(args.get("warmup_iters") or 0), float(args.get("warmup_epochs") or 0), per_epoch,
                          total, fraction)
    if warmup > MAX_WARMUP_FRACTION * total:
        changes["warmup_max_fraction"] = MAX_WARMUP_FRACTION
        reasons.append(f"warmup would take {warmup} of {total} steps; at most {MAX_WARMUP_FRACTION:.0%}")


def _ema_rule(args, user_keys, images, batch, world, changes, reasons) -> None:
    decay = float(args.get("ema_decay") or 0)
    if not args.get("ema") or not 0 < decay < 1 or not _free("EMA", user_keys):
        return
    _, total = run_steps(args, images, batch, world)
    window = max(EMA_RUN_FRACTION * total, 1.0)
    if 1.0 / (1.0 - decay) <= window:
        return
    new_decay = round(1.0 - 1.0 / window, 6)
    factor = (1.0 - decay) / (1.0 - new_decay)
    changes["ema_decay"] = new_decay
    changes["ema_tau"] = round(max(float(args.get("ema_tau") or 0) * factor, 1.0), 2)
    reasons.append(f"an EMA over ~{1.0 / (1.0 - decay):.0f} steps outlasts the {total}-step run; over ~{window:.0f} "
                   f"(ramp scaled alike)")


def _scratch_rule(args, user_keys, images, batch, world, changes, reasons) -> None:
    _, total = run_steps(args, images, batch, world)
    if total >= SMALL_RUN_STEPS:
        return
    before = len(changes)
    if float(args.get("backbone_lr_ratio", 1.0)) < 1.0 and "backbone_lr_ratio" not in user_keys:
        changes["backbone_lr_ratio"] = 1.0
    if str(args.get("scheduler")) == "constant" and not user_keys.intersection(("scheduler", "lrf")):
        changes["scheduler"], changes["lrf"] = "cosine", SCRATCH_LRF
    adaptive = str(args.get("optimizer", "")).lower() in ADAPTIVE_OPTIMIZERS
    per_rank = max(batch // world, 1)
    accumulate, _ = nominal_batch(batch, int(args.get("accumulate") or 1), int(args.get("nbs") or 0), 0.0)
    lr = scaled_lr(float(args["lr0"]), per_rank * world * accumulate, int(args.get("lr_batch") or 0))
    if adaptive and lr < SCRATCH_ADAM_LR and not user_keys.intersection(("lr0", "lr_batch")):
        if float(args["lr0"]) < SCRATCH_ADAM_LR:  # else the recipe's own rate, no longer scaled down
            changes["lr0"] = SCRATCH_ADAM_LR
        if int(args.get("lr_batch") or 0):
            changes["lr_batch"] = 0
    if len(changes) > before:
        reasons.append(f"from scratch on a {total}-step run, not the pretrained start the recipe assumes "
                       f"(lr {lr:.3g} for this batch)")


def large_set_transforms(pipeline) -> tuple[list[str], list[str]]:
    """(transforms that compose several images, transforms that zoom / crop by large factors) named in any
    training stage of ``pipeline`` (a spec: name, YAML path, dict or list; empty = the default), each in
    order of first appearance; ([], []) for a spec that cannot be read (the data loader reports it)."""
    try:
        spec = load_pipeline_spec(pipeline or None)
    except (PipelineConfigError, OSError):
        return [], []
    names: list[str] = []
    for transforms in [spec.train] + [st["train"] for st in spec.stages if "train" in st]:
        names += [str(t["name"]) for t in transforms if str(t["name"]) not in names]
    mixes = [n for n in names if getattr(TRANSFORMS.get(n), "__module__", None) == mixing.__name__]
    return mixes, [n for n in names if n in ZOOM_TRANSFORMS]


def _augmentation_rule(args, user_keys, images, batch, world, changes, reasons) -> None:
    _, total = run_steps(args, images, batch, world)
    if images >= SMALL_SET_IMAGES or total >= SMALL_RUN_STEPS:
        return
    what = []
    if "train_pipeline" not in user_keys:
        mixes, zooms = large_set_transforms(args.get("train_pipeline"))
        if mixes or zooms:
            changes["train_pipeline"] = SMALL_SET_PIPELINE
            what.append("its pipeline " + " and ".join(
                ([f"composes several images ({', '.join(mixes)})"] if mixes else []) +
                ([f"zooms and crops ({', '.join(zooms)})"] if zooms else [])))
    if "multi_scale" not in user_keys and parse_multi_scale(args.get("multi_scale")) is not None:
        changes["multi_scale"] = False
        what.append("multi-scale rescales every batch")
    if what:
        reasons.append(f"from scratch on {images} images, {total} steps: the recipe's augmentation "
                       f"({'; '.join(what)}) is made for large sets; a model that starts from nothing must first "
                       f"fit the images as they are")


def _show(value) -> str:
    if isinstance(value, dict):  # a pipeline given inline (the size recipes' own policies): its name
        return str(value.get("name", "<inline pipeline>"))
    return f"{value:g}" if isinstance(value, float) else str(value)


def summary(args: dict, changes: dict, reasons: list[str]) -> str:
    """One line: what ``recipe=auto`` changed (old -> new) and why; '' when nothing changed."""
    if not changes:
        return ""
    what = ", ".join(f"{k} {_show(args.get(k))}->{_show(v)}" for k, v in changes.items())
    return f"recipe=auto: {what} ({'; '.join(reasons)}); recipe=official keeps the paper settings"
