"""Official D-FINE and DEIM-D-FINE checkpoints -> rtdet's dfine-{n,s,m,l,x} models, tensor for tensor.

File layout (D-FINE ``src/solver/_solver.py`` ``state()``, DEIM's copy of it): a dict

    {"model": the detector's state dict (backbone.*, decoder.*, encoder.*, in that order),
     "ema": {"module": the EMA model's state dict, "updates": int},      # runs with EMA (every config)
     "optimizer": ..., "lr_scheduler": ..., "lr_warmup_scheduler": ..., "scaler": ..., "last_epoch": int,
     "date": str}                                                       # training checkpoints

(a released file may hold only one of "model" / "ema"). Every tensor is fp32 except the BN counters, the
bool ``decoder.valid_mask`` and the int64 ``decoder.reg_scale``.

**Which model.** The tensors give the size: the backbone's stem and stage widths and block counts, the
encoder's levels and width and the decoder's layer count are compared with the rows of the five built-in
``dfine-*.yaml`` (none matching is an error that lists what the file has). The class count comes from the
score head, ``reg_scale`` from its tensor, ``use_lab`` from the backbone's ``lab`` tensors, and
``freeze_norm`` from the backbone BatchNorms' ``num_batches_tracked`` counters: D-FINE-L/X freeze them
(FrozenBatchNorm2d keeps no counter), DEIM-L/X train them.

**D-FINE or DEIM.** DEIM-D-FINE has D-FINE's tensors but SiLU instead of ReLU in the decoder's FFNs, LQEs
and MLPs, which no tensor shows. Format ``dfine`` (what ``format=auto`` finds) reads a file as DEIM when its
file name contains "deim" (the official releases are ``deim_dfine_hgnetv2_<size>_coco_<epochs>e.pth``) or
when its backbone is an L/X one (no learnable affine blocks) with trained BatchNorms; otherwise as D-FINE.
Formats ``deim`` and ``dfine-relu`` force the choice.

**What is dropped** (derivable, see :data:`DROPPED`): ``decoder.anchors`` / ``decoder.valid_mask`` (rtdet
computes them from the input size; their length gives the square size the file was validated at, kept as
``imgsz``) and the aliases ``decoder.decoder.up`` / ``decoder.decoder.reg_scale`` (the same tensors as
``decoder.up`` / ``decoder.reg_scale``: unequal copies are an error). ``cross_attn.num_points_scale`` is a
buffer of rtdet's decoder layers too and is loaded.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rtdet.io.foreign import plain, to_float32
from rtdet.io.formats import ConvertContext, Converted, ForeignFormat, register_format
from rtdet.io.lineage import (
    any_index,
    count_children,
    indexed_rows,
    load_official,
    pick_weights,
    tensor_shape,
    validation_size,
)
from rtdet.io.rules import KeyTable, WeightLoadError, drop, rename
from rtdet.nn.builder import load_model_yaml
from rtdet.nn.model import DetectionModel
from rtdet.utils.checkpoint import CheckpointError

__all__ = ["SIZES", "DROPPED", "DFineArch", "is_dfine_checkpoint", "arch_from_tensors", "dfine_model_yaml",
           "official_rows", "dfine_key_table", "decoder_activation", "convert_dfine"]

SIZES = ("n", "s", "m", "l", "x")
LAYOUT = "official D-FINE"
_HINT = ("The file is damaged or a modified D-FINE: rtdet builds the official sizes (size, "
          "classes, reg_scale and backbone switches read from the tensors).")
DROPPED = (
    drop(r"^decoder\.(anchors|valid_mask)$", "decoder anchors / valid mask of the validation size (rtdet computes "
                                             "them from the input)"),
    drop(r"^decoder\.decoder\.(up|reg_scale)$", "decoder.decoder.up / reg_scale, aliases of decoder.up / reg_scale"),
)
_STEM, _STAGE, _AGG = "backbone.stem.", "backbone.stages.", "blocks.0.aggregation.1.conv.weight"


# ------------------------------------------------------------------------------------------ the tensors
@dataclass(frozen=True)
class DFineArch:
    """What the tensors say about a D-FINE model; ``signature`` is compared with the built-in YAMLs."""

    signature: tuple  # (stem mid, stem out, ((stage mid, out, blocks, layers), x4), levels, hidden, decoder layers)
    nc: int
    reg_scale: float
    use_lab: bool
    freeze_norm: bool


def _shape(sd: Mapping[str, torch.Tensor], key: str, where: str) -> torch.Size:
    return tensor_shape(sd, key, where, "a D-FINE (HGNetv2 + hybrid encoder + D-FINE decoder)")



def _stage(sd: Mapping[str, torch.Tensor], i: int, where: str) -> tuple[int, int, int, int]:
    """(mid, out, blocks, layers per block) of backbone stage i; a light block's first layer is conv1 + conv2."""
    p = f"{_STAGE}{i}."
    first = f"{p}blocks.0.layers.0."
    mid_key = f"{first}conv.weight" if f"{first}conv.weight" in sd else f"{first}conv2.conv.weight"
    return (_shape(sd, mid_key, where)[0], _shape(sd, p + _AGG, where)[0], count_children(sd, f"{p}blocks."),
            count_children(sd, f"{p}blocks.0.layers."))


def arch_from_tensors(sd: Mapping[str, torch.Tensor], where: str) -> DFineArch:
    """The size signature, class count, ``reg_scale`` and backbone switches of an official state dict."""
    stem = (_shape(sd, f"{_STEM}stem1.conv.weight", where)[0], _shape(sd, f"{_STEM}stem4.conv.weight", where)[0])
    stages = tuple(_stage(sd, i, where) for i in range(count_children(sd, _STAGE)))
    levels = count_children(sd, "encoder.input_proj.")
    hidden = _shape(sd, "encoder.input_proj.0.conv.weight", where)[0]
    layers = count_children(sd, "decoder.dec_bbox_head.")
    nc = _shape(sd, "decoder.enc_score_head.weight", where)[0]
    if _shape(sd, "decoder.reg_scale", where).numel() != 1:
        raise CheckpointError(f"{where}: decoder.reg_scale has shape {tuple(sd['decoder.reg_scale'].shape)}; "
                              f"D-FINE stores one number there ([1]: 4, or 8 for X)")
    reg_scale = float(sd["decoder.reg_scale"].reshape(-1)[0])
    return DFineArch(signature=(*stem, stages, levels, hidden, layers), nc=int(nc), reg_scale=reg_scale,
                     use_lab=f"{_STEM}stem1.lab.scale" in sd,
                     freeze_norm=f"{_STEM}stem1.bn.running_mean" in sd and f"{_STEM}stem1.bn.num_batches_tracked"
                     not in sd)


def yaml_signature(d: Mapping) -> tuple:
    """The signature of a dfine-*.yaml's rows (see :class:`DFineArch`)."""
    rows = list(d["backbone"]) + list(d["head"])
    stem = next(args for _, _, m, args in rows if m == "HGNetv2Stem")
    stages = tuple((a[1], a[2], a[3], a[7]) for _, _, m, a in rows if m == "HGNetv2Stage")
    projections = [a for f, _, m, a in rows if m == "ConvNormLayer" and f != -1]
    decoder = rows[-1][3]
    return (stem[1], stem[2], stages, len(projections), projections[0][0], decoder[4])


def _size_of(arch: DFineArch, where: str) -> str:
    builtin = {size: yaml_signature(load_model_yaml(f"dfine-{size}.yaml")) for size in SIZES}
    for size, signature in builtin.items():
        if signature == arch.signature:
            return size
    listing = "; ".join(f"{s}: {sig}" for s, sig in builtin.items())
    raise CheckpointError(
        f"{where}: a D-FINE of no official size: (stem mid, stem out, stages (mid, out, blocks, layers), encoder "
        f"levels, hidden, decoder layers) = {arch.signature}; rtdet's dfine-*.yaml have {listing}")


# ------------------------------------------------------------------------------------------ the model
def dfine_model_yaml(arch: DFineArch, act: str, deim: bool, where: str) -> dict:
    """The built-in dfine-<size>.yaml with the file's class count, ``reg_scale``, backbone switches and the
    decoder activation; named deim-dfine-<size> for DEIM."""
    size = _size_of(arch, where)
    d = copy.deepcopy(load_model_yaml(f"dfine-{size}.yaml"))
    builtin = (d["use_lab"], d["freeze_norm"])
    d.update(nc=arch.nc, use_lab=arch.use_lab, freeze_norm=arch.freeze_norm)
    f, n, m, args = d["head"][-1]
    args = list(args)
    args[8] = int(arch.reg_scale) if arch.reg_scale.is_integer() else arch.reg_scale  # as the YAMLs write it
    args[11] = act
    d["head"][-1] = [f, n, m, args]
    d["name"] = f"deim-dfine-{size}" if deim else f"dfine-{size}"
    changes = [f"{k}: {v}" for k, v, b in (("use_lab", arch.use_lab, builtin[0]),
                                          ("freeze_norm", arch.freeze_norm, builtin[1])) if v != b]
    if act != "relu":
        changes.append(f"decoder act: {act}")
    if changes:
        d["yaml_file"] = f"{d['yaml_file']} ({', '.join(changes)})"
    return d


def official_rows(model: DetectionModel) -> dict[str, list[int]]:
    """The rows of each official module list, read from the built model's rows (N has fewer levels)."""
    names = [b.name for b in model.layers_info]
    aifi = names.index("AIFI")
    rows: dict[str, list[int]] = {
        "stem": [i for i, n in enumerate(names) if n == "HGNetv2Stem"],
        "stages": [i for i, n in enumerate(names) if n == "HGNetv2Stage"],
        "input_proj": [i for i, n in enumerate(names[:aifi]) if n == "ConvNormLayer"],
        "aifi": [aifi],
        "lateral_convs": [i for i, n in enumerate(names) if n == "ConvNormLayer" and i > aifi],
        "downsample_convs": [i for i, n in enumerate(names) if n == "SCDown"],
        "decoder": [model.head_index],
    }
    elans = [i for i, n in enumerate(names) if n == "DFineELAN"]
    split = len(rows["lateral_convs"])
    rows["fpn_blocks"], rows["pan_blocks"] = elans[:split], elans[split:]
    return rows




def dfine_key_table(rows: Mapping[str, list[int]]) -> KeyTable:
    """Official key -> rtdet key for a model whose official module lists sit at ``rows``."""
    aifi = f"model.{rows['aifi'][0]}."
    layer = r"^encoder\.encoder\.0\.layers\.0\."
    lists = [rename(rf"^encoder\.{name}\.{any_index(rows[name])}\.{'0.' if name == 'downsample_convs' else ''}",
                    indexed_rows(rows[name]), f"encoder.{name}.<i> is row {', '.join(map(str, rows[name]))}")
             for name in ("input_proj", "lateral_convs", "fpn_blocks", "downsample_convs", "pan_blocks")]
    return KeyTable(LAYOUT, [
        *DROPPED,
        rename(r"^backbone\.stem\.", f"model.{rows['stem'][0]}.", "HGNetv2's stem (stem1-stem4)"),
        rename(rf"^backbone\.stages\.{any_index(rows['stages'])}\.", indexed_rows(rows["stages"]), "HGNetv2's stages"),
        rename(layer + r"self_attn\.", aifi + "ma.", "AIFI's attention is 'ma' in rtdet"),
        rename(layer + r"linear1\.", aifi + "fc1.", "AIFI's FFN linear1 / linear2 are fc1 / fc2 in rtdet"),
        rename(layer + r"linear2\.", aifi + "fc2.", "AIFI's FFN linear1 / linear2 are fc1 / fc2 in rtdet"),
        rename(layer + r"(norm[12])\.", aifi + r"\1.", "AIFI's norm1 / norm2"),
        *lists,
        rename(r"^decoder\.", f"model.{rows['decoder'][0]}.",
               "DFINEDecoder keeps the official names (decoder.layers, lqe_layers, enc_*, dec_*, pre_bbox_head, ...)"),
    ])


# ------------------------------------------------------------------------------------------ the file
def is_dfine_checkpoint(obj: Any) -> bool:
    """A dict whose 'model' or 'ema'['module'] holds an HGNetv2 stem and a D-FINE decoder (its LQE layers)."""
    for sd in _candidates(obj):
        if "backbone.stem.stem1.conv.weight" in sd and any(
                isinstance(k, str) and k.startswith("decoder.decoder.lqe_layers.") for k in sd):
            return True
    return False


def _candidates(obj: Any) -> list[dict]:
    if not isinstance(obj, dict):
        return []
    ema = obj.get("ema")
    found = [ema.get("module")] if isinstance(ema, dict) else []
    return [sd for sd in [*found, obj.get("model")] if isinstance(sd, dict)]




def _check_aliases(sd: Mapping[str, torch.Tensor], where: str) -> None:
    """The aliases the file repeats must be the tensors rtdet keeps (else one copy would be lost silently)."""
    for name in ("up", "reg_scale"):
        alias, own = f"decoder.decoder.{name}", f"decoder.{name}"
        if alias in sd and own in sd and not torch.equal(sd[alias].float(), sd[own].float()):
            raise WeightLoadError(f"{where}: {alias} ({sd[alias].tolist()}) differs from {own} ({sd[own].tolist()}); "
                                  f"the official model holds one tensor under both names: a damaged file")


def decoder_activation(fmt: str, source: str, arch: DFineArch) -> tuple[str, bool, str]:
    """(decoder activation, DEIM?, why) for a file read as format ``fmt`` (see the module docstring)."""
    if fmt == "deim":
        return "silu", True, "DEIM: SiLU decoder (format=deim)"
    if fmt == "dfine-relu":
        return "relu", False, "D-FINE: ReLU decoder (format=dfine-relu)"
    if "deim" in Path(source).name.lower():
        return "silu", True, "DEIM: SiLU decoder, as the file name says deim (format=dfine-relu reads it as D-FINE)"
    if not arch.use_lab and not arch.freeze_norm:
        return "silu", True, ("DEIM: SiLU decoder, as the L/X backbone's BatchNorms were trained (D-FINE freezes "
                              "them; format=dfine-relu reads it as D-FINE)")
    return "relu", False, "D-FINE: ReLU decoder (a DEIM file needs 'deim' in its name or format=deim)"




def _convert(obj: Any, ctx: ConvertContext, fmt: str) -> Converted:
    sd, weights, ema = pick_weights(obj, ctx)
    sd, cast = to_float32(sd)
    _check_aliases(sd, ctx.source)
    arch = arch_from_tensors(sd, ctx.source)
    act, deim, why = decoder_activation(fmt, ctx.source, arch)
    model = DetectionModel(dfine_model_yaml(arch, act, deim, ctx.source))
    report = load_official(model, sd, dfine_key_table(official_rows(model)), ctx, _HINT)
    report.cast = cast
    args: dict = {}
    size = validation_size(sd, model.head.strides)
    if size is not None:
        args["imgsz"] = size
    for key in ("last_epoch", "date"):
        if isinstance(plain(obj.get(key)), int | str):
            args[key] = plain(obj.get(key))
    if ema and isinstance(plain(obj["ema"].get("updates")), int):
        args["ema_updates"] = plain(obj["ema"]["updates"])
    return Converted(model=model, report=report, description=f"official {'DEIM-D-FINE' if deim else 'D-FINE'} "
                     f"({model.name}; {why})", weights=weights, names=model.names, args=args, ema=ema)


def convert_dfine(obj: Any, ctx: ConvertContext) -> Converted:
    """An official D-FINE / DEIM-D-FINE checkpoint, D-FINE or DEIM decided as the module docstring says."""
    return _convert(obj, ctx, "dfine")


def convert_deim(obj: Any, ctx: ConvertContext) -> Converted:
    """An official DEIM-D-FINE checkpoint (SiLU decoder)."""
    return _convert(obj, ctx, "deim")


def convert_dfine_relu(obj: Any, ctx: ConvertContext) -> Converted:
    """An official D-FINE checkpoint (ReLU decoder), whatever its file name and BatchNorms say."""
    return _convert(obj, ctx, "dfine-relu")


register_format(ForeignFormat(
    "dfine", "official D-FINE / DEIM-D-FINE (dfine_<size>_coco.pth, deim_dfine_hgnetv2_<size>_coco_*.pth: 'model' "
             "and/or 'ema'; DEIM when the file name says deim or an L/X backbone's BatchNorms were trained)",
    detect=is_dfine_checkpoint, convert=convert_dfine,
))
register_format(ForeignFormat(
    "deim", "official DEIM-D-FINE (D-FINE's tensors, SiLU in the decoder)", detect=is_dfine_checkpoint,
    convert=convert_deim,
))
register_format(ForeignFormat(
    "dfine-relu", "official D-FINE, read as D-FINE (ReLU decoder) whatever the file name or BatchNorms say",
    detect=is_dfine_checkpoint, convert=convert_dfine_relu,
))
