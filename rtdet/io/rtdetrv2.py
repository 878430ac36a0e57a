"""Official RT-DETRv2 and DEIM-RTv2 checkpoints -> rtdet's rtdetrv2-* / deim-rtv2-* models, tensor for tensor.

File layout (lyuwenyu/RT-DETR rtdetrv2_pytorch ``src/solver/_solver.py`` ``state()``, DEIM's copy of it): a dict

    {"model": the detector's state dict (backbone.*, decoder.*, encoder.*),
     "ema": {"module": the EMA model's state dict, "updates": int},      # runs with EMA (every config)
     "optimizer": ..., "lr_scheduler": ..., "last_epoch": int, "date": str}   # training checkpoints

(a released file may hold only one of "model" / "ema"). Keys: ``backbone.conv1.conv1_{1,2,3}`` and
``backbone.res_layers.<i>.blocks.<j>`` (PResNet), ``encoder.input_proj / encoder.0.layers.0 / lateral_convs /
fpn_blocks / downsample_convs / pan_blocks`` (the hybrid encoder, RT-DETRv2 flavour), ``decoder.*``
(``RTDETRTransformerv2``, with ``decoder.decoder.layers.<i>.cross_attn.num_points_scale``).

**Which model.** The tensors give the size: the backbone's block type and counts, the encoder's width, FFN and
CSP width, and the decoder's layer count and query-position head are compared with the rows of the ten built-in
``rtdetrv2-*.yaml`` / ``deim-rtv2-*.yaml`` (none matching is an error that lists what the file has). The class
count comes from the score head, the points per level from ``num_points_scale`` (1 / n repeated n times),
``freeze_norm`` from the backbone BatchNorms' ``num_batches_tracked`` counters (FrozenBatchNorm2d keeps none).

**RT-DETRv2 or DEIM.** DEIM's configs switch three things together (``configs/base/rt_deim.yml``):
``query_pos_method: as_reg`` (a three-layer query_pos_head, which the tensors show), and SiLU in the decoder
FFNs and MLPs (which they do not). A file with a three-layer query_pos_head is read as DEIM-RTv2 (SiLU), one with
the two-layer head as RT-DETRv2 (ReLU). ``eval_idx`` is not in any tensor: it is the matching YAML's (2 for the
six-layer R50-m baseline, the last layer otherwise).

**What is dropped** (derivable): ``decoder.anchors`` / ``decoder.valid_mask`` (rtdet computes them from the
input size; their length gives the square size the file was validated at, kept as ``imgsz``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
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
from rtdet.io.rules import KeyTable, drop, rename
from rtdet.nn.builder import load_model_yaml
from rtdet.nn.model import DetectionModel
from rtdet.utils.checkpoint import CheckpointError

__all__ = ["MODELS", "DROPPED", "RTv2Arch", "is_rtdetrv2_checkpoint", "arch_from_tensors", "yaml_signature",
           "rtdetrv2_model_yaml", "official_rows", "rtdetrv2_key_table", "convert_rtdetrv2"]

MODELS = tuple(f"{kind}-{size}" for kind in ("rtdetrv2", "deim-rtv2") for size in ("r18", "r34", "r50m", "r50", "r101"))
LAYOUT = "official RT-DETRv2"
_HINT = ("The file is damaged or a modified RT-DETRv2: rtdet builds the official sizes (size, "
          "classes, points per level and frozen BatchNorms read from the tensors).")
DROPPED = (
    drop(r"^decoder\.(anchors|valid_mask)$", "decoder anchors / valid mask of the validation size (rtdet computes "
                                             "them from the input)"),
)
_STAGES, _SCALE = "backbone.res_layers.", "decoder.decoder.layers.0.cross_attn.num_points_scale"


# ------------------------------------------------------------------------------------------ the tensors
@dataclass(frozen=True)
class RTv2Arch:
    """What the tensors say about an RT-DETRv2 model; ``signature`` is compared with the built-in YAMLs."""

    signature: tuple  # (block, (blocks per stage), encoder hidden, AIFI FFN, CSP hidden, decoder layers, as_reg)
    nc: int
    num_points: tuple[int, ...]
    freeze_norm: bool


def _shape(sd: Mapping[str, torch.Tensor], key: str, where: str) -> torch.Size:
    return tensor_shape(sd, key, where, "an RT-DETRv2 (PResNet + hybrid encoder + RT-DETRv2 decoder)")


def points_per_level(scale: torch.Tensor, where: str) -> tuple[int, ...]:
    """``num_points_scale`` [P] (1 / n for each of a level's n points, levels in order) -> n per level."""
    values = scale.reshape(-1).tolist()
    points, i = [], 0
    while i < len(values):
        n = round(1 / values[i]) if values[i] > 0 else 0
        if n < 1 or i + n > len(values) or any(abs(v * n - 1) > 1e-4 for v in values[i:i + n]):
            raise CheckpointError(f"{where}: {_SCALE} is {values}; the official buffer holds 1 / n for each of a "
                                  f"level's n points (a damaged file)")
        points.append(n)
        i += n
    return tuple(points)


def arch_from_tensors(sd: Mapping[str, torch.Tensor], where: str) -> RTv2Arch:
    """The size signature, class count, points per level and backbone switch of an official state dict."""
    stages = count_children(sd, _STAGES)
    counts = tuple(count_children(sd, f"{_STAGES}{i}.blocks.") for i in range(stages))
    block = "bottleneck" if f"{_STAGES}0.blocks.0.branch2c.conv.weight" in sd else "basic"
    _shape(sd, "backbone.conv1.conv1_1.conv.weight", where)
    hidden = _shape(sd, "encoder.input_proj.0.conv.weight", where)[0]
    ffn = _shape(sd, "encoder.encoder.0.layers.0.linear1.weight", where)[0]
    csp = _shape(sd, "encoder.fpn_blocks.0.conv1.conv.weight", where)[0]
    layers = count_children(sd, "decoder.dec_bbox_head.")
    as_reg = count_children(sd, "decoder.query_pos_head.layers.") == 3
    nc = _shape(sd, "decoder.enc_score_head.weight", where)[0]
    _shape(sd, _SCALE, where)
    stem_norm = "backbone.conv1.conv1_1.norm."
    return RTv2Arch(signature=(block, counts, hidden, ffn, csp, layers, as_reg), nc=int(nc),
                    num_points=points_per_level(sd[_SCALE], where),
                    freeze_norm=f"{stem_norm}running_mean" in sd and f"{stem_norm}num_batches_tracked" not in sd)


def yaml_signature(d: Mapping) -> tuple:
    """The signature of an rtdetrv2-*.yaml / deim-rtv2-*.yaml's rows (see :class:`RTv2Arch`)."""
    rows = list(d["backbone"]) + list(d["head"])
    stages = [a for _, _, m, a in rows if m == "PResNetStage"]
    hidden = next(a[0] for f, _, m, a in rows if m == "ConvNormLayer" and f != -1)
    ffn = next(a[0] for _, _, m, a in rows if m == "AIFI")
    csp = next(int(a[0] * a[1]) for _, _, m, a in rows if m == "DFineCSPLayer")
    decoder = rows[-1][3]
    return (stages[0][4], tuple(a[2] for a in stages), hidden, ffn, csp, decoder[4], decoder[11] == "as_reg")


def _name_of(arch: RTv2Arch, where: str) -> str:
    builtin = {name: yaml_signature(load_model_yaml(f"{name}.yaml")) for name in MODELS}
    for name, signature in builtin.items():
        if signature == arch.signature:
            return name
    listing = "; ".join(f"{n}: {sig}" for n, sig in builtin.items())
    raise CheckpointError(
        f"{where}: an RT-DETRv2 of no official size: (block, blocks per stage, encoder hidden, AIFI FFN, CSP hidden, "
        f"decoder layers, as_reg query positions) = {arch.signature}; rtdet's YAMLs have {listing}")


# ------------------------------------------------------------------------------------------ the model
def rtdetrv2_model_yaml(arch: RTv2Arch, where: str) -> dict:
    """The matching built-in YAML with the file's class count, points per level and ``freeze_norm``."""
    name = _name_of(arch, where)
    d = copy.deepcopy(load_model_yaml(f"{name}.yaml"))
    changes = [f"freeze_norm: {arch.freeze_norm}"] if arch.freeze_norm != d["freeze_norm"] else []
    d.update(nc=arch.nc, freeze_norm=arch.freeze_norm)
    f, n, m, args = d["head"][-1]
    args = list(args)
    if list(arch.num_points) != list(args[3]):
        changes.append(f"num_points: {list(arch.num_points)}")
    args[3] = list(arch.num_points)
    d["head"][-1] = [f, n, m, args]
    d["name"] = name
    if changes:
        d["yaml_file"] = f"{d['yaml_file']} ({', '.join(changes)})"
    return d


def official_rows(model: DetectionModel) -> dict[str, list[int]]:
    """The rows of each official module list, read from the built model's rows."""
    names = [b.name for b in model.layers_info]
    aifi = names.index("AIFI")
    after = [i for i, n in enumerate(names) if n == "ConvNormLayer" and i > aifi]
    strided = [i for i in after if model.model[i].conv.stride == (2, 2)]
    csp = [i for i, n in enumerate(names) if n == "DFineCSPLayer"]
    lateral = [i for i in after if i not in strided]
    return {
        "stem": [names.index("PResNetStem")],
        "stages": [i for i, n in enumerate(names) if n == "PResNetStage"],
        "input_proj": [i for i, n in enumerate(names[:aifi]) if n == "ConvNormLayer"],
        "aifi": [aifi],
        "lateral_convs": lateral,
        "fpn_blocks": csp[:len(lateral)],
        "downsample_convs": strided,
        "pan_blocks": csp[len(lateral):],
        "decoder": [model.head_index],
    }


def rtdetrv2_key_table(rows: Mapping[str, list[int]]) -> KeyTable:
    """Official key -> rtdet key for a model whose official module lists sit at ``rows``."""
    aifi = f"model.{rows['aifi'][0]}."
    layer = r"^encoder\.encoder\.0\.layers\.0\."
    lists = [rename(rf"^encoder\.{name}\.{any_index(rows[name])}\.", indexed_rows(rows[name]),
                    f"encoder.{name}.<i> is row {', '.join(map(str, rows[name]))}")
             for name in ("input_proj", "lateral_convs", "fpn_blocks", "downsample_convs", "pan_blocks")]
    return KeyTable(LAYOUT, [
        *DROPPED,
        rename(r"^backbone\.conv1\.", f"model.{rows['stem'][0]}.", "PResNet's stem (conv1_1-conv1_3)"),
        rename(rf"^backbone\.res_layers\.{any_index(rows['stages'])}\.", indexed_rows(rows["stages"]),
               "PResNet's stages"),
        rename(layer + r"self_attn\.", aifi + "ma.", "AIFI's attention is 'ma' in rtdet"),
        rename(layer + r"linear1\.", aifi + "fc1.", "AIFI's FFN linear1 / linear2 are fc1 / fc2 in rtdet"),
        rename(layer + r"linear2\.", aifi + "fc2.", "AIFI's FFN linear1 / linear2 are fc1 / fc2 in rtdet"),
        rename(layer + r"(norm[12])\.", aifi + r"\1.", "AIFI's norm1 / norm2"),
        *lists,
        rename(r"^decoder\.", f"model.{rows['decoder'][0]}.",
               "RTDETRv2Decoder keeps the official names (input_proj, decoder.layers, query_pos_head, enc_*, dec_*)"),
    ])


# ------------------------------------------------------------------------------------------ the file
def is_rtdetrv2_checkpoint(obj: Any) -> bool:
    """A dict whose 'model' or 'ema'['module'] holds a PResNet stem and an RT-DETRv2 decoder (its per-level
    point scale, which RT-DETR v1's decoder lacks)."""
    if not isinstance(obj, dict):
        return False
    ema = obj.get("ema")
    for sd in [ema.get("module") if isinstance(ema, dict) else None, obj.get("model")]:
        if isinstance(sd, dict) and "backbone.conv1.conv1_1.conv.weight" in sd and _SCALE in sd:
            return True
    return False



def convert_rtdetrv2(obj: Any, ctx: ConvertContext) -> Converted:
    """An official RT-DETRv2 / DEIM-RTv2 checkpoint, which of the two decided as the module docstring says."""
    sd, weights, ema = pick_weights(obj, ctx)
    sd, cast = to_float32(sd)
    arch = arch_from_tensors(sd, ctx.source)
    model = DetectionModel(rtdetrv2_model_yaml(arch, ctx.source))
    report = load_official(model, sd, rtdetrv2_key_table(official_rows(model)), ctx, _HINT)
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
    deim = model.name.startswith("deim")
    why = "as_reg query positions, SiLU decoder" if deim else "two-layer query positions, ReLU decoder"
    return Converted(model=model, report=report, description=f"official {'DEIM-RTv2' if deim else 'RT-DETRv2'} "
                     f"({model.name}; {why})", weights=weights, names=model.names, args=args, ema=ema)


register_format(ForeignFormat(
    "rtdetrv2", "official RT-DETRv2 / DEIM-RTv2 (rtdetrv2_r<depth>vd_*.pth, deim_rtdetrv2_r<depth>vd_*.pth: 'model' "
                "and/or 'ema'; DEIM when the query_pos_head has three layers)",
    detect=is_rtdetrv2_checkpoint, convert=convert_rtdetrv2,
))
