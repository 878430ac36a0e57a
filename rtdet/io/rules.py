"""Key tables: how a source's tensor names become rtdet's, and the report of a load.

A converter is a table of :class:`KeyRule` lines, read top to bottom; the first rule whose pattern
matches a source key decides: rename it (a ``re.sub`` replacement, or a function of the match) or drop it
on purpose (with the reason). Keys no rule matches keep their name. Nothing depends on the order of the
tensors in the file, only on their names::

    TIMM_CONVNEXT = KeyTable("timm", [
        rename(r"^stem\\.(\\d+)\\.", r"downsample_layers.0.\\1.", "timm calls the patchify stem 'stem'"),
        drop(r"^head\\.", "the ImageNet classifier; a detector never runs it"),
    ], reshape_singletons=True)
    mapped, dropped = TIMM_CONVNEXT.apply(state_dict)
    report = load_into(backbone, mapped, TIMM_CONVNEXT.name, dropped=dropped)   # raises on a real mismatch

:func:`load_into` compares the renamed tensors with the module's own state dict and reports matched,
missing, unexpected and shape-mismatched keys (:class:`ConversionReport`); with ``strict`` (the default)
any of the last three raises a :class:`WeightLoadError` naming the first bad key, and nothing is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from rtdet.utils.checkpoint import CheckpointError

__all__ = ["KeyRule", "KeyTable", "rename", "drop", "ConversionReport", "WeightLoadError", "load_into", "looks_fused"]

_SHOW = 10  # keys listed per category in messages


class WeightLoadError(CheckpointError, ValueError):
    """Weights that do not fit the model they are loaded into; the message names the first bad key."""


Replacement = str | Callable[[re.Match], str]


@dataclass(frozen=True)
class KeyRule:
    """One line of a key table: source keys matching ``pattern`` are renamed with ``to`` (a ``re.sub``
    replacement string or function) or, when ``to`` is None, dropped on purpose; ``why`` explains it."""

    pattern: str
    to: Replacement | None
    why: str = ""

    @property
    def regex(self) -> re.Pattern:
        return _compiled(self.pattern)


def rename(pattern: str, to: Replacement, why: str = "") -> KeyRule:
    return KeyRule(pattern, to, why)


def drop(pattern: str, why: str) -> KeyRule:
    return KeyRule(pattern, None, why)


_REGEX_CACHE: dict[str, re.Pattern] = {}


def _compiled(pattern: str) -> re.Pattern:
    if pattern not in _REGEX_CACHE:
        _REGEX_CACHE[pattern] = re.compile(pattern)
    return _REGEX_CACHE[pattern]


@dataclass(frozen=True)
class KeyTable:
    """A named list of key rules (first match wins; unmatched keys keep their names).

    ``reshape_singletons``: a tensor whose shape differs from the model's only by axes of size 1 (timm's
    GRN (C,) for the official (1, 1, 1, C); a 1x1-conv weight (out, in, 1, 1) for a Linear (out, in)) is
    reshaped on load."""

    name: str
    rules: tuple[KeyRule, ...]
    reshape_singletons: bool = False

    def __init__(self, name: str, rules: Iterable[KeyRule], reshape_singletons: bool = False):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "rules", tuple(rules))
        object.__setattr__(self, "reshape_singletons", reshape_singletons)

    def apply(self, sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """(renamed tensors, source keys dropped on purpose). Two source keys renamed to one target is an error."""
        mapped: dict[str, torch.Tensor] = {}
        origin: dict[str, str] = {}
        dropped: list[str] = []
        for key, value in sd.items():
            target = self.target(key)
            if target is None:
                dropped.append(key)
                continue
            if target in mapped:
                raise WeightLoadError(f"{self.name} key table maps both {origin[target]} and {key} to {target}")
            mapped[target], origin[target] = value, key
        return mapped, dropped

    def target(self, key: str) -> str | None:
        """The rtdet name of one source key (None: dropped on purpose)."""
        for rule in self.rules:
            m = rule.regex.search(key)
            if m is None:
                continue
            if rule.to is None:
                return None
            return rule.regex.sub(rule.to, key, count=1)
        return key

    def why_dropped(self, key: str) -> str:
        for rule in self.rules:
            if rule.regex.search(key):
                return rule.why if rule.to is None else ""
        return ""


@dataclass
class ConversionReport:
    """What a load did: ``loaded`` of ``total`` model tensors filled (k/N), and every key that did not fit.

    ``layout`` names the key table used ("official", "timm", "ultralytics", ...)."""

    layout: str
    source: str = ""
    total: int = 0
    loaded: int = 0
    dropped: list[str] = field(default_factory=list)  # source keys ignored on purpose (classifier, extras)
    dropped_why: list[str] = field(default_factory=list)  # the distinct reasons
    missing: list[str] = field(default_factory=list)  # model keys the source did not provide
    unexpected: list[str] = field(default_factory=list)  # source keys the model has no place for
    mismatched: list[str] = field(default_factory=list)  # "key: source shape vs model shape"
    reshaped: list[str] = field(default_factory=list)  # keys reshaped over singleton axes
    cast: int = 0  # tensors converted from fp16 / bf16 to float32
    reinitialised: list[str] = field(default_factory=list)  # model keys kept at their initial values on purpose

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def first_problem(self) -> str:
        """The first bad key, with what is wrong with it."""
        if self.mismatched:
            key, _, shapes = self.mismatched[0].partition(": ")
            return f"{key} (shape {shapes.replace(' vs ', ' in the checkpoint, ')} in the model)"
        if self.unexpected:
            return f"{self.unexpected[0]} (in the checkpoint, the model has no such tensor)"
        if self.missing:
            return f"{self.missing[0]} (in the model, the checkpoint does not provide it)"
        return ""

    def summary(self) -> str:
        """'loaded k/N tensors; missing m; unexpected u' (+ mismatched, dropped, fp16 casts when any)."""
        parts = [f"loaded {self.loaded}/{self.total} tensors", f"missing {len(self.missing)}",
                 f"unexpected {len(self.unexpected)}"]
        if self.mismatched:
            parts.append(f"shape-mismatched {len(self.mismatched)}")
        if self.dropped:
            why = f" ({'; '.join(self.dropped_why)})" if self.dropped_why else ""
            parts.append(f"dropped {len(self.dropped)}{why}")
        if self.cast:
            parts.append(f"{self.cast} fp16 -> float32")
        return "; ".join(parts)

    def __str__(self) -> str:
        lines = [f"{self.layout} layout: {self.summary()}"]
        for name in ("missing", "unexpected", "mismatched"):
            keys = getattr(self, name)
            if keys:
                more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
                lines.append(f"  {len(keys)} {name}: {', '.join(keys[:_SHOW])}{more}")
        return "\n".join(lines)


def looks_fused(mapped: Mapping[str, torch.Tensor], module: nn.Module) -> bool:
    """True when the file holds biased convolutions where the model has Conv + BN: weights saved after
    ``fuse()`` (BN folded into the conv), which no unfused model can take."""
    own = module.state_dict()
    return any(k.endswith(".conv.bias") and k not in own for k in mapped)


def load_into(module: nn.Module, mapped: Mapping[str, torch.Tensor], layout: str, *, dropped: Iterable[str] = (),
              dropped_why: Iterable[str] = (), strict: bool = True, reshape_singletons: bool = False,
              what: str = "weights", hint: str = "", source: str = "") -> ConversionReport:
    """Compare renamed tensors with ``module``'s state dict and load those that fit.

    Missing ``num_batches_tracked`` counters are ignored (a BatchNorm without one counts from zero, which
    changes nothing at inference). With ``strict`` any missing, unexpected or shape-mismatched key raises
    a :class:`WeightLoadError` (nothing is loaded) naming the first one; otherwise what fits is loaded
    and the rest reported."""
    target = module.state_dict()
    report = ConversionReport(layout=layout, source=source, total=len(target), dropped=list(dropped),
                              dropped_why=sorted(set(w for w in dropped_why if w)))
    ready: dict[str, torch.Tensor] = {}
    for key, value in mapped.items():
        if key not in target:
            report.unexpected.append(key)
        elif value.shape != target[key].shape:
            if reshape_singletons and value.numel() == target[key].numel() and _same_up_to_singletons(
                    value.shape, target[key].shape):
                ready[key] = value.reshape(target[key].shape)
                report.reshaped.append(key)
            else:
                report.mismatched.append(f"{key}: {tuple(value.shape)} vs {tuple(target[key].shape)}")
        else:
            ready[key] = value
    wrong_shape = {m.split(":")[0] for m in report.mismatched}
    report.missing = [k for k in target if k not in ready and k not in wrong_shape
                      and not k.endswith("num_batches_tracked")]
    if strict and not report.ok:
        raise WeightLoadError(
            f"{what} ({layout} layout) do not fit {type(module).__name__}: first bad key {report.first_problem()}\n"
            f"{report}\n{hint or 'Check that the checkpoint is the same model variant as the YAML it is loaded into.'}"
        )
    module.load_state_dict(ready, strict=False)  # the module's own load hooks run; dtypes are cast
    report.loaded = len(ready)
    return report


def _same_up_to_singletons(a: torch.Size, b: torch.Size) -> bool:
    return [d for d in a if d != 1] == [d for d in b if d != 1]
