"""Optimizer and learning-rate schedule, built from settings.

Parameter groups: {backbone, rest} x {decay, no_decay}. The backbone is the rows of the model YAML's
``backbone`` section and trains at ``lr0 * backbone_lr_ratio``. Weight decay applies to weights only: never
to normalisation layers, biases, embeddings or any other 1-D parameter (decaying a LayerNorm gain or a
bias toward zero only hurts).

The schedule is per optimizer step: a linear (or DEIM's quadratic) warmup from 0 (biases: from
``warmup_bias_lr``) into one of linear / cosine / flat-cosine / constant decay toward ``lr0 * lrf``. A cosine
may end before the last step (``cosine_end``, DEIM's flat-cosine ends where its no-augmentation epochs
begin): the lr stays at ``lr0 * lrf`` after it.

``lr_batch`` (when > 0) says which batch ``lr0`` was tuned for: the run's learning rate is
``lr0 * images per optimizer step / lr_batch``, the linear scaling rule (Goyal et al. 2017) that mmengine's
``auto_scale_lr`` applies and that RTMDet's users follow (0.004 for 8 GPUs x 32 images -> 0.00025 at 16).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["LRSchedule", "add_params", "build_optimizer", "nominal_batch", "param_groups", "scaled_lr", "warmup_steps"]

# Modules whose parameters never get weight decay (RMSNorm only exists in torch >= 2.4).
_NO_DECAY_MODULES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Embedding,
                     getattr(nn, "RMSNorm", nn.LayerNorm))
SCHEDULERS = ("linear", "cosine", "flat-cosine", "constant")
WARMUP_SHAPES = ("linear", "quadratic")
OPTIMIZERS = ("AdamW", "Adam", "SGD")


def _backbone_rows(model: nn.Module) -> int:
    yaml = getattr(model, "yaml", None) or {}
    return len(yaml.get("backbone", []))


def param_groups(model: nn.Module, weight_decay: float, backbone_lr_ratio: float = 1.0) -> list[dict]:
    """Trainable parameters split into groups; each carries ``lr_scale`` (backbone ratio) and ``is_bias``."""
    n_backbone = _backbone_rows(model)
    no_decay_ids = set()
    bias_ids = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, _NO_DECAY_MODULES) or p.ndim <= 1:
                no_decay_ids.add(id(p))
            if name == "bias":
                bias_ids.add(id(p))
    groups: dict[tuple[bool, bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        in_backbone = len(parts) > 1 and parts[0] == "model" and parts[1].isdigit() and int(parts[1]) < n_backbone
        key = (in_backbone, id(p) in no_decay_ids, id(p) in bias_ids)
        groups.setdefault(key, []).append(p)
    out = []
    for (in_backbone, no_decay, is_bias), params in sorted(groups.items()):
        out.append({
            "params": params,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": backbone_lr_ratio if in_backbone else 1.0,
            "is_bias": is_bias,
            "name": f"{'backbone' if in_backbone else 'head'}{'_bias' if is_bias else ''}"
                    f"{'_no_decay' if no_decay else ''}",
        })
    return out


def build_optimizer(model: nn.Module, name: str = "AdamW", lr0: float = 1e-3, momentum: float = 0.9,
                    weight_decay: float = 5e-4, backbone_lr_ratio: float = 1.0,
                    beta2: float = 0.999) -> torch.optim.Optimizer:
    """AdamW / Adam (betas (momentum, beta2)) or SGD with Nesterov momentum over :func:`param_groups`."""
    groups = param_groups(model, weight_decay, backbone_lr_ratio)
    for g in groups:
        g["lr"] = lr0 * g["lr_scale"]
        g["initial_lr"] = g["lr"]
    key = {o.lower(): o for o in OPTIMIZERS}.get(str(name).lower())
    if key == "AdamW":
        return torch.optim.AdamW(groups, lr=lr0, betas=(momentum, beta2))
    if key == "Adam":
        return torch.optim.Adam(groups, lr=lr0, betas=(momentum, beta2))
    if key == "SGD":
        return torch.optim.SGD(groups, lr=lr0, momentum=momentum, nesterov=True)
    raise ValueError(f"optimizer={name!r} is not supported; choose one of {', '.join(OPTIMIZERS)}")


def add_params(optimizer: torch.optim.Optimizer, model: nn.Module, params: list[nn.Parameter], weight_decay: float,
               backbone_lr_ratio: float = 1.0) -> None:
    """Give ``params`` (rows just unfrozen) their optimizer entries: each joins the group of :func:`param_groups`
    it belongs to, appended to the existing group of that name or as a new group. Deterministic, so a resumed
    run that unfreezes the same rows gets the same layout and loads the saved optimizer state onto it."""
    new = {id(p) for p in params}
    existing = {g.get("name"): g for g in optimizer.param_groups}
    lr0 = optimizer.defaults["lr"]
    for group in param_groups(model, weight_decay, backbone_lr_ratio):
        joining = [p for p in group["params"] if id(p) in new]
        if not joining:
            continue
        if group["name"] in existing:
            existing[group["name"]]["params"].extend(joining)
            continue
        group.update(params=joining, lr=lr0 * group["lr_scale"], initial_lr=lr0 * group["lr_scale"])
        optimizer.add_param_group(group)


def scaled_lr(lr0: float, images_per_step: int, lr_batch: int = 0) -> float:
    """``lr0`` for a run whose optimizer steps see ``images_per_step`` images: unchanged when ``lr_batch``
    is 0, else scaled linearly by ``images_per_step / lr_batch``."""
    if lr_batch < 0 or images_per_step < 1:
        raise ValueError(f"lr_batch must be >= 0 and the batch >= 1, got lr_batch={lr_batch}, batch={images_per_step}")
    return float(lr0) if lr_batch == 0 else float(lr0) * images_per_step / lr_batch


def nominal_batch(batch: int, accumulate: int, nbs: int, weight_decay: float) -> tuple[int, float]:
    """(batches per optimizer step, weight decay). With a nominal batch size ``nbs`` > 0 the step
    accumulates round(nbs / batch) batches and the decay is scaled by batch * accumulate / nbs (official
    YOLOv9 / Ultralytics: batch 16 -> 4 batches per step, decay unchanged); otherwise ``accumulate`` as set."""
    if nbs <= 0:
        return max(accumulate, 1), weight_decay
    steps = max(round(nbs / batch), 1)
    return steps, weight_decay * batch * steps / nbs


def warmup_steps(warmup_iters: int, warmup_epochs: float, steps_per_epoch: int, total_steps: int,
                 max_fraction: float) -> int:
    """Warmup length in optimizer steps: ``warmup_iters`` if set, else epochs x steps per epoch, never more
    than ``max_fraction`` of the run (2000 warmup steps must not swallow a 300-step fine-tune)."""
    n = int(warmup_iters) if warmup_iters and warmup_iters > 0 else round(warmup_epochs * steps_per_epoch)
    return max(0, min(n, int(max_fraction * total_steps)))


class LRSchedule:
    """Sets every group's lr (and SGD momentum during warmup) for optimizer step ``step``.

    factor(step) follows the schedule over ``total_steps``; during warmup (step < warmup) the lr ramps from 0
    (bias groups: from ``warmup_bias_lr``) to its scheduled value, by the fraction :meth:`ramp`. A cosine
    (``cosine``, ``flat-cosine``) reaches ``lrf`` at ``cosine_end`` of the run and stays there.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr0: float, total_steps: int, *, scheduler: str = "linear",
                 lrf: float = 0.01, warmup: int = 0, flat_fraction: float = 0.5, warmup_bias_lr: float = 0.0,
                 momentum: float = 0.9, warmup_momentum: float = 0.8, warmup_shape: str = "linear",
                 cosine_end: float = 1.0):
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler={scheduler!r} is not supported; choose one of {', '.join(SCHEDULERS)}")
        if warmup_shape not in WARMUP_SHAPES:
            raise ValueError(f"warmup_shape={warmup_shape!r} is not supported; choose one of "
                             f"{', '.join(WARMUP_SHAPES)}")
        if not 0.0 < float(cosine_end) <= 1.0:
            raise ValueError(f"cosine_end={cosine_end!r}: expected a fraction of the run in (0, 1]")
        self.optimizer = optimizer
        self.lr0, self.total, self.kind, self.lrf = float(lr0), max(int(total_steps), 1), scheduler, float(lrf)
        self.warmup, self.flat_fraction = int(warmup), float(flat_fraction)
        self.warmup_shape, self.cosine_end = warmup_shape, float(cosine_end)
        self.warmup_bias_lr, self.momentum, self.warmup_momentum = float(warmup_bias_lr), momentum, warmup_momentum
        self.step_count = 0

    def factor(self, step: int) -> float:
        """lr / lr0 at ``step`` without warmup. DEIM's flat-cosine (``flat_fraction`` f, ``cosine_end`` e):
        1 up to f, the cosine from 1 to ``lrf`` between f and e, ``lrf`` after e (and right after f when e <= f,
        as DEIM does when its flat epochs reach its no-augmentation ones)."""
        p = min(max(step / self.total, 0.0), 1.0)
        if self.kind == "constant":
            return 1.0
        if self.kind == "linear":
            return 1.0 - (1.0 - self.lrf) * p
        start = 0.0
        if self.kind == "flat-cosine":
            if p <= self.flat_fraction:
                return 1.0
            start = self.flat_fraction
        # (p - 0) / 1.0 and (p - f) / (1 - f) are the schedules before cosine_end existed, bit for bit
        p = min((p - start) / max(self.cosine_end - start, 1e-9), 1.0) if self.cosine_end > start else 1.0
        return self.lrf + (1.0 - self.lrf) * 0.5 * (1.0 + math.cos(math.pi * p))

    def ramp(self, step: int) -> float:
        """The warmup's fraction of the scheduled lr at ``step`` < warmup: linear (step + 1) / W, or DEIM's
        quadratic (step / W)^2 (DEIM engine/optim/lr_scheduler.py; DEIM sets the lr after each iteration for
        the next one, so its iteration step + 1 trains with what rtdet's step ``step`` does)."""
        if self.warmup_shape == "quadratic":
            return (step / self.warmup) ** 2
        return (step + 1) / self.warmup

    def step(self, step: int | None = None) -> None:
        """Set the learning rates for the next optimizer step (call before optimizer.step())."""
        step = self.step_count if step is None else step
        base = self.lr0 * self.factor(step)
        in_warmup = step < self.warmup
        w = self.ramp(step) if in_warmup else 1.0
        for g in self.optimizer.param_groups:
            target = base * g.get("lr_scale", 1.0)
            if in_warmup:
                start = self.warmup_bias_lr if g.get("is_bias") else 0.0
                g["lr"] = start + (target - start) * w
                if "momentum" in g:
                    g["momentum"] = self.warmup_momentum + (self.momentum - self.warmup_momentum) * w
            else:
                g["lr"] = target
                if "momentum" in g:
                    g["momentum"] = self.momentum
        self.step_count = step + 1

    def last_lrs(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "kind": self.kind, "total": self.total, "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
