"""Load published backbone weights (official or timm layouts) into rtdet's backbone modules.

    sd = torch.load("convnextv2_atto_1k_224_ema.pt", map_location="cpu", weights_only=True)
    report = load_convnextv2_weights(model.model[0], sd)   # the backbone row of a built detector
    print(report)                                          # layout, tensors loaded, classifier keys dropped

Our ConvNeXt V2 and SHViT modules use the official parameter names, so official checkpoints load by key;
timm's names are translated first. The classifier a detector never runs (ConvNeXt V2: final ``norm`` and
``head``; SHViT: ``head`` / ``head_dist``) and FCMAE pre-training extras are dropped and listed. Tensors
whose shapes differ only by singleton axes (timm's GRN (C,) vs (1, 1, 1, C), 1x1-conv MLP weights
(out, in, 1, 1) vs Linear (out, in)) are reshaped. Anything else that does not fit -- a missing key, an
unknown key, a real shape mismatch -- raises a ``WeightLoadError`` listing it (``strict=False`` loads
what fits and only reports).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

__all__ = [
    "WeightLoadError",
    "LoadReport",
    "unwrap_state_dict",
    "convnextv2_timm_to_official",
    "load_convnextv2_weights",
    "shvit_timm_to_official",
    "load_shvit_weights",
]

_SHOW = 10  # keys listed per category in messages


class WeightLoadError(ValueError):
    """A state dict that does not fit the module it is loaded into."""


@dataclass
class LoadReport:
    """What a weight load did."""

    layout: str
    loaded: int
    dropped: list[str] = field(default_factory=list)  # classifier / pre-training keys ignored on purpose
    missing: list[str] = field(default_factory=list)  # module keys the state dict did not provide
    unexpected: list[str] = field(default_factory=list)  # state-dict keys the module has no place for
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint shape vs module shape"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"{self.layout} layout: {self.loaded} tensors loaded, {len(self.dropped)} classifier keys dropped"]
        for name in ("missing", "unexpected", "mismatched"):
            keys = getattr(self, name)
            if keys:
                more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
                lines.append(f"  {len(keys)} {name}: {', '.join(keys[:_SHOW])}{more}")
        return "\n".join(lines)


def unwrap_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """The flat tensor dict inside a checkpoint: descends into 'model' / 'state_dict' / 'module' entries
    and strips a DistributedDataParallel 'module.' prefix."""
    sd = obj
    for _ in range(3):
        inner = next((sd[k] for k in ("model", "state_dict", "module") if isinstance(sd.get(k), Mapping)), None)
        if inner is None:
            break
        sd = inner
    if not isinstance(sd, Mapping) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightLoadError("no tensors found: expected a state dict or a checkpoint holding one under 'model'")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _load(
    module: nn.Module,
    sd: dict[str, torch.Tensor],
    layout: str,
    is_dropped: Callable[[str], bool],
    strict: bool,
    what: str,
) -> LoadReport:
    target = module.state_dict()
    report = LoadReport(layout=layout, loaded=0)
    ready: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if is_dropped(key):
            report.dropped.append(key)
        elif key not in target:
            report.unexpected.append(key)
        elif value.shape != target[key].shape:
            if value.numel() == target[key].numel() and _same_up_to_singletons(value.shape, target[key].shape):
                ready[key] = value.reshape(target[key].shape)
            else:
                report.mismatched.append(f"{key}: {tuple(value.shape)} vs {tuple(target[key].shape)}")
        else:
            ready[key] = value
    wrong_shape = {m.split(":")[0] for m in report.mismatched}
    report.missing = [
        k for k in target if k not in ready and k not in wrong_shape and not k.endswith("num_batches_tracked")
    ]
    if strict and not report.ok:
        raise WeightLoadError(
            f"{what} weights ({layout} layout) do not fit {type(module).__name__}:\n{report}\n"
            f"Check that the checkpoint is the same variant as the model (e.g. atto vs tiny), or pass "
            f"strict=False to load the tensors that fit."
        )
    module.load_state_dict(ready, strict=False)
    report.loaded = len(ready)
    return report


def _same_up_to_singletons(a: torch.Size, b: torch.Size) -> bool:
    return [d for d in a if d != 1] == [d for d in b if d != 1]


# ---------------------------------------------------------------------------------------------- ConvNeXt V2
_CONVNEXT_TIMM_RULES = [
    (re.compile(r"^stem\.(\d+)\."), r"downsample_layers.0.\1."),
    (re.compile(r"^stages\.(\d+)\.downsample\.(\d+)\."), r"downsample_layers.\1.\2."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\."), r"stages.\1.\2."),
    (re.compile(r"\.conv_dw\."), ".dwconv."),
    (re.compile(r"\.mlp\.fc1\."), ".pwconv1."),
    (re.compile(r"\.mlp\.fc2\."), ".pwconv2."),
    (re.compile(r"\.mlp\.grn\.weight$"), ".grn.gamma"),
    (re.compile(r"\.mlp\.grn\.bias$"), ".grn.beta"),
]
# final LayerNorm + Linear classifier (official: norm.*, head.*; timm: head.norm.*, head.fc.*, norm_pre.*)
# and FCMAE pre-training extras (mask token, decoder, prediction / projection layers).
_CONVNEXT_DROPPED = re.compile(r"^(norm|head|norm_pre|mask_token|decoder|pred|proj)(\.|$|_)")


def convnextv2_timm_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename timm ConvNeXt V2 keys (``stem``, ``stages.i.downsample``, ``stages.i.blocks.j.conv_dw`` /
    ``mlp.fc1`` / ``mlp.grn.weight`` ...) to the official layout. Shapes are left to the loader."""
    out = {}
    for key, value in sd.items():
        for pattern, repl in _CONVNEXT_TIMM_RULES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def load_convnextv2_weights(module: nn.Module, state_dict: Mapping, strict: bool = True) -> LoadReport:
    """Load an official or timm ConvNeXt V2 checkpoint (dict, or a checkpoint with it under 'model') into a
    :class:`~rtdet.nn.modules.convnextv2.ConvNeXtV2` backbone. Returns a :class:`LoadReport`."""
    sd = unwrap_state_dict(state_dict)
    if any(k.startswith("downsample_layers.") for k in sd):
        layout = "official"
    elif any(k.startswith("stem.") or ".blocks." in k for k in sd):
        layout, sd = "timm", convnextv2_timm_to_official(sd)
    else:
        raise WeightLoadError(
            f"not a ConvNeXt V2 state dict: expected official keys 'downsample_layers.*' or timm keys "
            f"'stem.*' / 'stages.*.blocks.*'; first keys: {list(sd)[:5]}"
        )
    return _load(module, sd, layout, lambda k: bool(_CONVNEXT_DROPPED.match(k)), strict, "ConvNeXt V2")


# ---------------------------------------------------------------------------------------------- SHViT
_SHVIT_DOWNSAMPLE = {"0": "0.0", "1": "0.1", "2": "1", "3": "2.0", "4": "2.1"}  # timm index -> official
_SHVIT_DROPPED = re.compile(r"^(head|head_dist)\.")


def shvit_timm_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename timm SHViT keys (``stages.i.downsample.k``, ``stages.i.blocks.j``) to the official flat
    ``blocks{i+1}`` layout, where stages 2 and 3 start with three downsampling entries."""
    out = {}
    for key, value in sd.items():
        m = re.match(r"^stages\.(\d+)\.(downsample|blocks)\.(\d+)\.(.*)$", key)
        if m:
            stage, kind, idx, rest = int(m[1]), m[2], m[3], m[4]
            if kind == "downsample":
                key = f"blocks{stage + 1}.{_SHVIT_DOWNSAMPLE[idx]}.{rest}"
            else:
                key = f"blocks{stage + 1}.{int(idx) + (3 if stage > 0 else 0)}.{rest}"
        out[key] = value
    return out


def load_shvit_weights(module: nn.Module, state_dict: Mapping, strict: bool = True) -> LoadReport:
    """Load an official or timm SHViT checkpoint into a :class:`~rtdet.nn.modules.shvit.SHViT` backbone.

    BatchNorm running statistics load with the weights; the backbone keeps SHViT's own eps (1e-5)."""
    sd = unwrap_state_dict(state_dict)
    if any(k.startswith("blocks1.") for k in sd):
        layout = "official"
    elif any(k.startswith("stages.") for k in sd):
        layout, sd = "timm", shvit_timm_to_official(sd)
    else:
        raise WeightLoadError(
            f"not a SHViT state dict: expected official keys 'blocks1.*' or timm keys 'stages.*'; "
            f"first keys: {list(sd)[:5]}"
        )
    return _load(module, sd, layout, lambda k: bool(_SHVIT_DROPPED.match(k)), strict, "SHViT")
