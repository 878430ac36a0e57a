"""ImageNet backbone checkpoints (official and timm ConvNeXt V2, official and timm SHViT) -> rtdet.

    sd = torch.load("convnextv2_atto_1k_224_ema.pt", map_location="cpu", weights_only=True)
    report = load_convnextv2_weights(model.model[0], sd)
    print(report)              # "official layout: loaded 152/152 tensors; missing 0; unexpected 0; dropped 4 (...)"

    # or in a model YAML, on the backbone row:  - [-1, 1, convnextv2_atto, [weights=convnextv2_atto_1k_224_ema.pt]]
    # or as a file of its own:                  rtdet convert source=shvit_s4.pth

rtdet's ConvNeXt V2 and SHViT modules use the official parameter names, so an official checkpoint loads
by key once the classifier (which a detector never runs) is dropped; timm's names are translated by the
key tables below. Tensors whose shapes differ only by axes of size 1 (timm's GRN (C,) for (1, 1, 1, C);
the 1x1-conv MLP weights (out, in, 1, 1) of timm's small ConvNeXt V2 for Linear (out, in)) are reshaped.
A missing key, an unknown key or a real shape mismatch raises a ``WeightLoadError`` naming the first
one (``strict=False`` loads what fits and only reports).

Checkpoint files: the official ConvNeXt V2 and SHViT training scripts save ``{"model": state_dict,
"model_ema": ..., "optimizer": ..., "args": argparse.Namespace, ...}`` (released weights keep "model");
timm hub weights are bare state dicts. The EMA entry is preferred when both are present.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from rtdet.io.foreign import plain, to_float32
from rtdet.io.formats import ConvertContext, Converted, ForeignFormat, register_format
from rtdet.io.rules import ConversionReport, KeyTable, WeightLoadError, drop, load_into, rename
from rtdet.io.safe_pickle import read_torch_file
from rtdet.nn.model import DetectionModel
from rtdet.nn.modules.convnextv2 import CONVNEXTV2_VARIANTS, ConvNeXtV2
from rtdet.nn.modules.shvit import SHVIT_VARIANTS, SHViT
from rtdet.utils.checkpoint import is_rtdet_checkpoint

__all__ = [
    "WeightLoadError",
    "ConversionReport",
    "unwrap_state_dict",
    "CONVNEXTV2_OFFICIAL",
    "CONVNEXTV2_TIMM",
    "SHVIT_OFFICIAL",
    "SHVIT_TIMM",
    "convnextv2_timm_to_official",
    "load_convnextv2_weights",
    "shvit_timm_to_official",
    "load_shvit_weights",
    "load_backbone_weights",
]

# ---------------------------------------------------------------------------------------------- ConvNeXt V2
_CLASSIFIER = "the ImageNet classifier, which a detector never runs"
_FCMAE = "FCMAE pre-training extras (mask token, decoder, prediction head)"

CONVNEXTV2_OFFICIAL = KeyTable("official", [
    drop(r"^(norm|head)\.", _CLASSIFIER),  # final LayerNorm + Linear
    drop(r"^(mask_token|decoder|pred|proj)(\.|_|$)", _FCMAE),
    # every other key (downsample_layers.i.k.*, stages.i.j.{dwconv,norm,pwconv1,grn,pwconv2}.*) is rtdet's name
])

_TIMM_BLOCK = r"^stages\.(\d+)\.blocks\.(\d+)\."
CONVNEXTV2_TIMM = KeyTable("timm", [
    drop(r"^(head|norm_pre)\.", _CLASSIFIER),  # head.norm + head.fc (and an empty norm_pre)
    drop(r"^(mask_token|decoder|pred|proj)(\.|_|$)", _FCMAE),
    rename(r"^stem\.(\d+)\.", r"downsample_layers.0.\1.", "timm's patchify stem is official downsample_layers.0"),
    rename(r"^stages\.(\d+)\.downsample\.(\d+)\.", r"downsample_layers.\1.\2.", "per-stage downsampling"),
    rename(_TIMM_BLOCK + r"conv_dw\.", r"stages.\1.\2.dwconv.", "depthwise 7x7"),
    rename(_TIMM_BLOCK + r"norm\.", r"stages.\1.\2.norm.", "block LayerNorm"),
    rename(_TIMM_BLOCK + r"mlp\.fc1\.", r"stages.\1.\2.pwconv1.", "MLP in (1x1 conv weights reshaped)"),
    rename(_TIMM_BLOCK + r"mlp\.grn\.weight$", r"stages.\1.\2.grn.gamma", "GRN gamma ((C,) reshaped)"),
    rename(_TIMM_BLOCK + r"mlp\.grn\.bias$", r"stages.\1.\2.grn.beta", "GRN beta ((C,) reshaped)"),
    rename(_TIMM_BLOCK + r"mlp\.fc2\.", r"stages.\1.\2.pwconv2.", "MLP out (1x1 conv weights reshaped)"),
], reshape_singletons=True)


def convnextv2_layout(sd: Mapping[str, Any]) -> str | None:
    """'official', 'timm' or None (not ConvNeXt V2: V1 has no GRN)."""
    keys = list(sd)
    if not any(".grn." in k for k in keys):
        return None
    if any(k.startswith("downsample_layers.") for k in keys):
        return "official"
    if any(k.startswith("stem.") for k in keys) and any(".blocks." in k for k in keys):
        return "timm"
    return None


def convnextv2_timm_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ConvNeXt V2 keys renamed to the official layout (the classifier dropped); shapes untouched."""
    return CONVNEXTV2_TIMM.apply(sd)[0]


def load_convnextv2_weights(module: nn.Module, state_dict: Mapping, strict: bool = True) -> ConversionReport:
    """Load an official or timm ConvNeXt V2 checkpoint (a state dict, or a checkpoint holding one under
    'model' / 'model_ema' / 'state_dict') into a :class:`~rtdet.nn.modules.convnextv2.ConvNeXtV2`."""
    sd, _ = _unwrap(state_dict)
    layout = convnextv2_layout(sd)
    if layout is None:
        raise WeightLoadError(
            f"not a ConvNeXt V2 state dict: expected official keys 'downsample_layers.*' or timm keys "
            f"'stem.*' / 'stages.*.blocks.*', with GRN ('.grn.'); first keys: {list(sd)[:5]}"
        )
    table = CONVNEXTV2_OFFICIAL if layout == "official" else CONVNEXTV2_TIMM
    return _load_table(module, sd, table, strict, "ConvNeXt V2 weights",
                       "Check that the checkpoint is the same variant as the model (e.g. atto vs tiny).")


def _convnextv2_config(sd: Mapping[str, torch.Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(depths, dims) of official-layout ConvNeXt V2 tensors."""
    try:
        dims = [sd["downsample_layers.0.0.weight"].shape[0]] + [
            sd[f"downsample_layers.{i}.1.weight"].shape[0] for i in (1, 2, 3)]
    except KeyError as e:
        raise WeightLoadError(f"ConvNeXt V2 state dict without downsampling layer {e.args[0]}") from None
    depths = [0, 0, 0, 0]
    for k in sd:
        m = re.match(r"^stages\.(\d)\.(\d+)\.", k)
        if m:
            depths[int(m[1])] = max(depths[int(m[1])], int(m[2]) + 1)
    return tuple(depths), tuple(int(d) for d in dims)


def _convert_convnextv2(obj: Any, ctx: ConvertContext) -> Converted:
    sd, entry = _unwrap(obj, ctx.prefer_ema)
    layout = convnextv2_layout(sd)
    table = CONVNEXTV2_OFFICIAL if layout == "official" else CONVNEXTV2_TIMM
    depths, dims = _convnextv2_config(table.apply(sd)[0])
    variant = next((n for n, cfg in CONVNEXTV2_VARIANTS.items() if cfg == (depths, dims)), None)
    row = [-1, 1, f"convnextv2_{variant}", []] if variant else [-1, 1, "ConvNeXtV2", [list(depths), list(dims)]]
    title = f"ConvNeXt V2-{variant}" if variant else f"ConvNeXt V2 (depths {list(depths)}, dims {list(dims)})"
    return _backbone_converted(obj, sd, row, table, f"{layout} {title} backbone", entry, ctx)


register_format(ForeignFormat(
    "convnextv2", "ConvNeXt V2 backbone (official facebookresearch/ConvNeXt-V2 or timm weights)",
    detect=lambda obj: _detects(obj, convnextv2_layout), convert=_convert_convnextv2,
))


# ---------------------------------------------------------------------------------------------- SHViT
_SHVIT_DOWNSAMPLE = {"0": "0.0", "1": "0.1", "2": "1", "3": "2.0", "4": "2.1"}  # timm index -> official


def _shvit_downsample(m: re.Match) -> str:
    return f"blocks{int(m[1]) + 1}.{_SHVIT_DOWNSAMPLE[m[2]]}."


def _shvit_block(m: re.Match) -> str:
    stage, j = int(m[1]), int(m[2])
    return f"blocks{stage + 1}.{j + (3 if stage > 0 else 0)}."  # stages 2 and 3 start with 3 downsampling entries


SHVIT_OFFICIAL = KeyTable("official", [
    drop(r"^(head|head_dist)\.", _CLASSIFIER + " (BatchNorm + Linear, and the distillation head)"),
    # every other key (patch_embed.*, blocks1.*, blocks2.*, blocks3.*) is rtdet's name
])

SHVIT_TIMM = KeyTable("timm", [
    drop(r"^(head|head_dist)\.", _CLASSIFIER + " (BatchNorm + Linear)"),
    rename(r"^stages\.(\d+)\.downsample\.([0-4])\.", _shvit_downsample,
           "timm's downsample.0-4 are official blocks{i+1}.0.0 / .0.1 / .1 / .2.0 / .2.1"),
    rename(r"^stages\.(\d+)\.blocks\.(\d+)\.", _shvit_block,
           "timm's blocks.j are official blocks{i+1}.{j (+3 after stage 1)}"),
])


def shvit_layout(sd: Mapping[str, Any]) -> str | None:
    keys = list(sd)
    if not any(k.startswith("patch_embed.") for k in keys):
        return None
    if any(k.startswith("blocks1.") for k in keys):
        return "official"
    if any(k.startswith("stages.") and ".mixer." in k for k in keys) or any(
            re.match(r"^stages\.\d+\.blocks\.\d+\.ffn\.", k) for k in keys):
        return "timm"
    return None


def shvit_timm_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm SHViT keys renamed to the official flat ``blocks{i+1}`` layout (the classifier dropped)."""
    return SHVIT_TIMM.apply(sd)[0]


def load_shvit_weights(module: nn.Module, state_dict: Mapping, strict: bool = True) -> ConversionReport:
    """Load an official or timm SHViT checkpoint into a :class:`~rtdet.nn.modules.shvit.SHViT` backbone.

    BatchNorm running statistics load with the weights; the backbone keeps SHViT's own eps (1e-5)."""
    sd, _ = _unwrap(state_dict)
    layout = shvit_layout(sd)
    if layout is None:
        raise WeightLoadError(
            f"not a SHViT state dict: expected official keys 'patch_embed.*' + 'blocks1.*' or timm keys "
            f"'patch_embed.*' + 'stages.*'; first keys: {list(sd)[:5]}"
        )
    table = SHVIT_OFFICIAL if layout == "official" else SHVIT_TIMM
    return _load_table(module, sd, table, strict, "SHViT weights",
                       "Check that the checkpoint is the same variant as the model (S1 ... S4).")


def _shvit_config(sd: Mapping[str, torch.Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(embed_dim, depth) of official-layout SHViT tensors."""
    try:
        embed = (sd["patch_embed.6.c.weight"].shape[0], sd["blocks2.1.conv3.c.weight"].shape[0],
                 sd["blocks3.1.conv3.c.weight"].shape[0])
    except KeyError as e:
        raise WeightLoadError(f"SHViT state dict without {e.args[0]}") from None
    depth = []
    for stage in (1, 2, 3):
        idx = {int(m[1]) for k in sd if (m := re.match(rf"^blocks{stage}\.(\d+)\.", k))}
        depth.append(len(idx) - (3 if stage > 1 else 0))
    return tuple(int(e) for e in embed), tuple(depth)


def _convert_shvit(obj: Any, ctx: ConvertContext) -> Converted:
    sd, entry = _unwrap(obj, ctx.prefer_ema)
    layout = shvit_layout(sd)
    table = SHVIT_OFFICIAL if layout == "official" else SHVIT_TIMM
    embed, depth = _shvit_config(table.apply(sd)[0])
    variant = next((n for n, (e, _, d, _) in SHVIT_VARIANTS.items() if (e, d) == (embed, depth)), None)
    if variant is None:
        raise WeightLoadError(f"{ctx.source}: a SHViT checkpoint with embed_dim {list(embed)} and depth {list(depth)}, "
                              f"which is none of the official S1-S4 configurations")
    return _backbone_converted(obj, sd, [-1, 1, f"shvit_{variant}", []], table,
                               f"{layout} SHViT-{variant.upper()} backbone", entry, ctx)


register_format(ForeignFormat(
    "shvit", "SHViT backbone (official ysj9909/SHViT or timm weights)",
    detect=lambda obj: _detects(obj, shvit_layout), convert=_convert_shvit,
))


# ---------------------------------------------------------------------------------------------- shared
def unwrap_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """The flat tensor dict inside a checkpoint: descends into 'model_ema' / 'model' / 'state_dict' /
    'module' entries and strips a DistributedDataParallel 'module.' prefix."""
    return _unwrap(obj)[0]


def _unwrap(obj: Any, prefer_ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """(flat tensor dict, the entry it came from: 'model_ema', 'model', 'state_dict' or 'state dict')."""
    sd, entry = obj, "state dict"
    order = ("model_ema", "model", "state_dict", "module") if prefer_ema else ("model", "state_dict", "module")
    for _ in range(3):
        if not isinstance(sd, Mapping):
            break
        inner = next(((k, sd[k]) for k in order if isinstance(sd.get(k), Mapping) and _has_tensors(sd[k])), None)
        if inner is None:
            break
        entry, sd = inner
    if not isinstance(sd, Mapping) or not _has_tensors(sd):
        raise WeightLoadError("no tensors found: expected a state dict or a checkpoint holding one under 'model'")
    sd = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, entry


def _has_tensors(d: Mapping) -> bool:
    return any(isinstance(v, torch.Tensor) for v in d.values()) or any(
        isinstance(v, Mapping) and any(isinstance(x, torch.Tensor) for x in v.values()) for v in d.values())


def _detects(obj: Any, layout_of) -> bool:
    try:
        return layout_of(_unwrap(obj)[0]) is not None
    except WeightLoadError:
        return False


def _load_table(module: nn.Module, sd: Mapping[str, torch.Tensor], table: KeyTable, strict: bool, what: str,
                hint: str) -> ConversionReport:
    sd, cast = to_float32(dict(sd))
    mapped, dropped = table.apply(sd)
    report = load_into(module, mapped, table.name, dropped=dropped, dropped_why=[table.why_dropped(k) for k in dropped],
                       strict=strict, reshape_singletons=table.reshape_singletons, what=what, hint=hint)
    report.cast = cast
    return report


def _backbone_converted(obj: Any, sd: dict, row: list, table: KeyTable, description: str, entry: str,
                        ctx: ConvertContext) -> Converted:
    """A backbone checkpoint as a one-row rtdet model (no head): what `rtdet convert` writes for it and what
    a backbone row's ``weights=`` reads back."""
    model = DetectionModel({"nc": 1, "name": row[2], "backbone": [row], "head": []})
    report = _load_table(model.model[0], sd, table, ctx.strict, f"{ctx.source}: {description}",
                         "The file's tensors do not fit the variant its shapes suggest; is it damaged?")
    report.source = ctx.source
    args = {}
    if isinstance(obj, Mapping) and obj.get("args") is not None:
        args = plain(obj["args"]) if not isinstance(obj["args"], str) else {}
        args = args if isinstance(args, dict) else {}
    return Converted(model=model, report=report, description=description, weights=entry, names=None, args=args,
                     ema=entry == "model_ema")


def load_backbone_weights(module: nn.Module, source: str | Path | Mapping, strict: bool = True) -> ConversionReport:
    """Weights for one backbone row: an official / timm ConvNeXt V2 or SHViT file, an rtdet checkpoint
    written by ``rtdet convert`` for such a file (a one-row model), or a plain state dict of the module.

    Returns the report ('loaded k/N tensors; missing ...; unexpected ...'); raises on a real mismatch."""
    obj = source if isinstance(source, Mapping) else read_torch_file(Path(source))[0]
    sd = _rtdet_backbone_tensors(obj, str(source)) if is_rtdet_checkpoint(obj) else _unwrap(obj)[0]
    if isinstance(module, ConvNeXtV2):
        return load_convnextv2_weights(module, sd, strict)
    if isinstance(module, SHViT):
        return load_shvit_weights(module, sd, strict)
    return _load_table(module, sd, KeyTable("state dict", []), strict, f"weights for {type(module).__name__}",
                       "The file's keys must be the module's own state-dict keys.")


def _rtdet_backbone_tensors(obj: Mapping, source: str) -> dict[str, torch.Tensor]:
    """The row-0 tensors of an rtdet checkpoint that holds a single backbone row."""
    entry = obj.get("ema") or obj["model"]
    rows = len(entry["yaml"].get("backbone", [])) + len(entry["yaml"].get("head", []))
    if rows != 1:
        raise WeightLoadError(f"{source}: an rtdet checkpoint of a whole {rows}-row model; a backbone row's weights= "
                              f"takes a backbone file (official / timm, or one converted by `rtdet convert`)")
    return {k[len("model.0."):]: v for k, v in entry["state_dict"].items() if k.startswith("model.0.")}
