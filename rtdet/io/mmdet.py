"""mmdetection RTMDet checkpoints -> rtdet RTMDet models with the same tensors and the same outputs.

File layout (mmengine ``Runner.save_checkpoint`` and ``EMAHook.before_save_checkpoint``, mmdetection's
``tools/model_converters/publish_model.py``): a dict

    {"meta": {"epoch": int, "iter": int, "cfg": the config as Python text (``Config.pretty_text``), "seed": int,
              "experiment_name": str, "time": str, "mmengine_version": str,
              "dataset_meta": {"classes": (...), "palette": [...]}},
     "state_dict": OrderedDict of the detector's tensors, fp32: backbone.*, neck.*, bbox_head.*,
     "message_hub": {...}, "optimizer": {...}, "param_schedulers": [...],     # training checkpoints only
     "ema_state_dict": {"steps": tensor, "module.<key>": tensor, ...}}           # runs with EMAHook

**Which weights are the EMA.** When it saves, mmengine's EMAHook *swaps* the two sets: ``state_dict`` then
holds the averaged weights (ready for deployment) and ``ema_state_dict`` the raw training weights under
``module.``, next to the averaging counter ``steps``. A published file (``rtmdet_s_8xb32-300e_coco_*.pth``)
keeps ``meta`` and ``state_dict`` only, so its ``state_dict`` is the EMA of a run whose config lists
EMAHook (every RTMDet config does). rtdet takes ``state_dict`` (EMA preferred) and, with
``prefer_ema=False``, the raw weights of ``ema_state_dict`` when the file has them.

**The architecture** comes from the config text in ``meta`` when there is one: ``model.backbone``
(CSPNeXt P5: ``deepen_factor``, ``widen_factor``, ``channel_attention``), ``model.neck`` (``num_csp_blocks``,
``out_channels``), ``model.bbox_head`` (``num_classes``, ``feat_channels``, ``stacked_convs``, ``exp_on_reg``,
``share_conv``, ``pred_kernel_size``) and ``model.data_preprocessor`` (``mean``, ``std``, ``bgr_to_rgb``). The
text is Python; rtdet parses it with :mod:`ast` and reads literal values only (nothing is evaluated).
Without a config the widths and block counts are read from the tensors' shapes; ``exp_on_reg`` is not in
the tensors and is taken from mmdetection's config of the same scale (True for l and x). Class names come
from ``meta["dataset_meta"]["classes"]``.

The RTMDet YAMLs have one row per mmdetection module and mmdetection's attribute names inside each
(docs/families.md), so the key table renames prefixes only (:data:`MMDET_RTMDET_KEYS`).
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rtdet.io.foreign import plain, to_float32
from rtdet.io.formats import ConvertContext, Converted, ForeignFormat, register_format
from rtdet.io.rules import KeyTable, WeightLoadError, load_into, rename
from rtdet.nn.builder import load_model_yaml
from rtdet.nn.model import DetectionModel
from rtdet.utils.checkpoint import CheckpointError
from rtdet.utils.class_names import class_names

__all__ = ["MMDET_RTMDET_KEYS", "RTMDetArch", "STANDARD_SCALES", "is_mmdet_rtmdet_checkpoint", "convert_mmdet_rtmdet",
           "read_config_text", "arch_from_config", "arch_from_tensors", "rtmdet_yaml"]


def _row(rows: tuple[int, ...]):
    """A rename to ``model.<rows[i]>.`` for the module index i the pattern's group captured."""
    return lambda m: f"model.{rows[int(m[1])]}."


MMDET_RTMDET_KEYS = KeyTable("mmdetection RTMDet", [
    rename(r"^backbone\.stem\.", "model.1.", "CSPNeXt's stem (three ConvModules) is row 1, CSPNeXtStem, children 0-2"),
    rename(r"^backbone\.stage([1-4])\.([0-2])\.", lambda m: f"model.{2 * int(m[1]) + int(m[2])}.",
           "stage i's downsample ConvModule and CSPLayer are rows 2i and 2i+1; stage4 has SPPBottleneck between "
           "them (stage4.0/1/2 -> rows 8/9/10)"),
    rename(r"^neck\.reduce_layers\.([01])\.", _row((11, 15)), "CSPNeXtPAFPN's 1x1 reduce convs"),
    rename(r"^neck\.top_down_blocks\.([01])\.", _row((14, 18)), "top-down CSPLayers"),
    rename(r"^neck\.downsamples\.([01])\.", _row((19, 22)), "bottom-up 3x3 stride-2 convs"),
    rename(r"^neck\.bottom_up_blocks\.([01])\.", _row((21, 24)), "bottom-up CSPLayers"),
    rename(r"^neck\.out_convs\.([0-2])\.", _row((25, 26, 27)), "the 3x3 output convs of P3 / P4 / P5"),
    rename(r"^bbox_head\.", "model.28.",
           "RTMDetSepBNHead keeps mmdetection's names: cls_convs.<level>.<i>.conv/bn, reg_convs.<level>.<i>.conv/bn "
           "(the convs shared by all levels, listed under every level), rtm_cls.<level>, rtm_reg.<level>"),
])
# Inside every module the names are mmdetection's: ConvModule conv/bn, CSPLayer main_conv/short_conv/final_conv/
# blocks.<j>.conv1/conv2.depthwise_conv/conv2.pointwise_conv/attention.fc, SPPBottleneck conv1/conv2.

HEAD_ROW = 28
P5 = ((64, 128, 3), (128, 256, 6), (256, 512, 6), (512, 1024, 3))  # CSPNeXt arch_settings['P5']: in, out, blocks
# mmdetection 3.3 configs/rtmdet/rtmdet_<scale>_8xb32-300e_coco.py: (deepen_factor, widen_factor, exp_on_reg)
STANDARD_SCALES = {"tiny": (0.167, 0.375, False), "s": (0.33, 0.5, False), "m": (0.67, 0.75, False),
                   "l": (1.0, 1.0, True), "x": (1.33, 1.25, True)}
MEAN, STD = (103.53, 116.28, 123.675), (57.375, 57.12, 58.395)  # RTMDet's data_preprocessor, BGR order


@dataclass(frozen=True)
class RTMDetArch:
    """Everything that decides an RTMDet model's tensors and forward, whatever it was read from."""

    stem: tuple[int, int]  # CSPNeXtStem (mid, out) channels
    widths: tuple[int, int, int, int]  # stage 1-4 output channels
    blocks: tuple[int, int, int, int]  # CSPNeXt blocks per stage
    neck_blocks: int  # CSPNeXt blocks per neck CSPLayer
    neck_out: int  # the output convs' channels
    feat_channels: int
    stacked_convs: int
    nc: int
    exp_on_reg: bool
    channel_attention: bool = True
    share_conv: bool = True
    pred_kernel_size: int = 1
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    order: str = "bgr"  # the channel order the model was trained on (mmcv reads images as BGR)


def scaled_arch(deepen: float, widen: float, nc: int = 80, exp_on_reg: bool = False, **kw: Any) -> RTMDetArch:
    """The widths and block counts mmdetection derives from a config's factors: int(c * widen) channels,
    max(round(n * deepen), 1) blocks (the neck's blocks: its ``num_csp_blocks``, given in every config)."""
    widths = tuple(int(c * widen) for _, c, _ in P5)
    stem = int(P5[0][0] * widen)
    kw.setdefault("neck_blocks", max(round(3 * deepen), 1))
    kw.setdefault("neck_out", widths[1])  # CSPNeXtPAFPN out_channels = in_channels[0]
    kw.setdefault("feat_channels", kw["neck_out"])
    kw.setdefault("stacked_convs", 2)
    return RTMDetArch(stem=(stem // 2, stem), widths=widths, blocks=tuple(max(round(n * deepen), 1) for *_, n in P5),
                      nc=nc, exp_on_reg=exp_on_reg, **kw)


def rtmdet_yaml(a: RTMDetArch) -> dict:
    """The rtdet model dict of an architecture: the rows of ``cfg/models/rtmdet/rtmdet-*.yaml``."""
    c1, c2, c3, c4 = a.widths
    n1, n2, n3, n4 = a.blocks
    nb, ca = a.neck_blocks, a.channel_attention
    up = ["None", 2, "nearest"]  # as the YAML files spell it (the builder reads it as None, like parse_model)
    head_args: list = ["nc", a.feat_channels, a.stacked_convs, a.exp_on_reg]
    if not a.share_conv or a.pred_kernel_size != 1:
        head_args += [a.share_conv, a.pred_kernel_size]
    backbone = [
        [-1, 1, "InputNormalize", [list(a.mean), list(a.std), a.order]],
        [-1, 1, "CSPNeXtStem", list(a.stem)],
        [-1, 1, "Conv", [c1, 3, 2]], [-1, n1, "CSPLayer", [c1, True, ca]],
        [-1, 1, "Conv", [c2, 3, 2]], [-1, n2, "CSPLayer", [c2, True, ca]],
        [-1, 1, "Conv", [c3, 3, 2]], [-1, n3, "CSPLayer", [c3, True, ca]],
        [-1, 1, "Conv", [c4, 3, 2]], [-1, 1, "SPPBottleneck", [c4]], [-1, n4, "CSPLayer", [c4, False, ca]],
    ]
    head = [
        [-1, 1, "Conv", [c3, 1, 1]], [-1, 1, "nn.Upsample", up], [[-1, 7], 1, "Concat", [1]],
        [-1, nb, "CSPLayer", [c3, False, False]],
        [-1, 1, "Conv", [c2, 1, 1]], [-1, 1, "nn.Upsample", up], [[-1, 5], 1, "Concat", [1]],
        [-1, nb, "CSPLayer", [c2, False, False]],
        [-1, 1, "Conv", [c2, 3, 2]], [[-1, 15], 1, "Concat", [1]], [-1, nb, "CSPLayer", [c3, False, False]],
        [-1, 1, "Conv", [c3, 3, 2]], [[-1, 11], 1, "Concat", [1]], [-1, nb, "CSPLayer", [c4, False, False]],
        [18, 1, "Conv", [a.neck_out, 3, 1]], [21, 1, "Conv", [a.neck_out, 3, 1]], [24, 1, "Conv", [a.neck_out, 3, 1]],
        [[25, 26, 27], 1, "RTMDetSepBNHead", head_args],
    ]
    return {"nc": a.nc, "batchnorm": {"eps": 1e-5, "momentum": 0.1}, "backbone": backbone, "head": head}


# ------------------------------------------------------------------------------------------ the config text
def _literal(node: ast.AST) -> Any:
    """The value of a config expression built from literals, ``dict(...)``, lists, tuples and dicts. A bare
    name or attribute (``type=CSPNeXt`` in lazy-import configs) becomes its dotted text; anything else
    (a call, arithmetic) becomes ``"<expression text>"``. Nothing is evaluated."""
    if isinstance(node, ast.Constant):  # bytes, Ellipsis, complex: text (what a checkpoint may hold is plain)
        plain_value = node.value is None or isinstance(node.value, bool | int | float | str)
        return node.value if plain_value else repr(node.value)
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        values = [_literal(e) for e in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    if isinstance(node, ast.Dict):
        return {_key(_literal(k)): _literal(v) for k, v in zip(node.keys, node.values) if k is not None}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg is not None}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name | ast.Attribute):
        return ast.unparse(node)
    return f"<{ast.unparse(node)[:80]}>"


def _key(value: Any) -> Any:
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


MAX_CONFIG_CHARS = 1 << 20  # mmdetection's RTMDet configs dump to about 20 KB of text


def read_config_text(text: Any) -> tuple[dict | None, str]:
    """(the top-level assignments of an mmengine config dumped as Python text, a note): ``model = dict(...)``
    -> ``{"model": {...}}``. (None, why) when there is no text or it is not Python."""
    if not isinstance(text, str) or not text.strip():
        return None, "no config text in meta"
    if len(text) > MAX_CONFIG_CHARS:  # parsing builds a tree of ~100 bytes per character: keep it bounded
        return None, (f"the config text in meta is {len(text)} characters, more than a config holds "
                      f"({MAX_CONFIG_CHARS}); not read")
    try:
        tree = ast.parse(text)
        config: dict = {}
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                config[stmt.targets[0].id] = _literal(stmt.value)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        return None, f"the config text in meta is not Python ({type(e).__name__}: {str(e)[:80]})"
    return config, "config text in meta"


def _type_name(cfg: Mapping) -> str:
    """``CSPNeXt`` for ``type='CSPNeXt'``, ``'mmdet.CSPNeXt'`` or a lazy-import ``type=mmdet.models.CSPNeXt``."""
    return str(cfg.get("type", "")).rsplit(".", 1)[-1]


def _section(model: Mapping, name: str, expected: tuple[str, ...], where: str) -> dict:
    part = model.get(name)
    if not isinstance(part, dict):
        raise CheckpointError(f"{where}: the config in meta has no model.{name} dict")
    if _type_name(part) not in expected:
        raise CheckpointError(f"{where}: model.{name} is a {part.get('type')!r}; rtdet converts RTMDet detectors "
                              f"({' / '.join(expected)}). RTMDet-Ins (instance masks) and rotated RTMDet-R are not "
                              f"implemented")
    return part


def _expect(cfg: Mapping, key: str, default: Any, allowed: tuple, where: str) -> None:
    value = cfg.get(key, default)
    if value not in allowed:
        raise CheckpointError(f"{where}: {key}={value!r} in the config; rtdet's RTMDet rows build "
                              f"{key}={allowed[0]!r} (mmdetection's RTMDet configs)")


def arch_from_config(model: Mapping, where: str) -> RTMDetArch:
    """An RTMDet architecture from the ``model`` dict of an mmdetection config (its defaults where a key is
    absent, as mmdetection's classes have them)."""
    backbone = _section(model, "backbone", ("CSPNeXt",), f"{where}: model.backbone")
    neck = _section(model, "neck", ("CSPNeXtPAFPN",), f"{where}: model.neck")
    head = _section(model, "bbox_head", ("RTMDetSepBNHead",), f"{where}: model.bbox_head")
    _expect(backbone, "arch", "P5", ("P5",), f"{where}: model.backbone")
    for part, name in ((backbone, "backbone"), (neck, "neck"), (head, "bbox_head")):
        _expect(part, "use_depthwise", False, (False,), f"{where}: model.{name}")
    for part, name in ((backbone, "backbone"), (neck, "neck")):
        _expect(part, "expand_ratio", 0.5, (0.5,), f"{where}: model.{name}")
    _expect(head, "with_objectness", False, (False,), f"{where}: model.bbox_head")
    _expect(backbone, "spp_kernel_sizes", (5, 9, 13), ((5, 9, 13), [5, 9, 13]), f"{where}: model.backbone")
    prep = model.get("data_preprocessor") if isinstance(model.get("data_preprocessor"), dict) else {}
    try:
        arch = scaled_arch(
            float(backbone.get("deepen_factor", 1.0)), float(backbone.get("widen_factor", 1.0)),
            nc=int(head["num_classes"]), exp_on_reg=bool(head.get("exp_on_reg", False)),
            channel_attention=bool(backbone.get("channel_attention", True)),
            neck_blocks=int(neck.get("num_csp_blocks", 3)), neck_out=int(neck["out_channels"]),
            feat_channels=int(head.get("feat_channels", 256)), stacked_convs=int(head.get("stacked_convs", 4)),
            share_conv=bool(head.get("share_conv", True)), pred_kernel_size=int(head.get("pred_kernel_size", 1)),
            mean=tuple(float(v) for v in prep.get("mean", MEAN)), std=tuple(float(v) for v in prep.get("std", STD)),
            order="rgb" if prep.get("bgr_to_rgb") else "bgr")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: the config's model dict lacks or mis-types a value RTMDet needs "
                              f"({e!r})") from None
    neck_in = [int(c) for c in neck.get("in_channels", arch.widths[1:])]
    if neck_in != list(arch.widths[1:]):
        raise CheckpointError(f"{where}: model.neck.in_channels={neck_in} but the backbone's stages give "
                              f"{list(arch.widths[1:])}")
    if int(head.get("in_channels", arch.neck_out)) != arch.neck_out:
        raise CheckpointError(f"{where}: model.bbox_head.in_channels={head.get('in_channels')} but the neck gives "
                              f"{arch.neck_out}")
    return arch


# ------------------------------------------------------------------------------------------ the tensors
def _out(sd: Mapping[str, torch.Tensor], key: str, where: str) -> torch.Size:
    if key not in sd:
        raise CheckpointError(f"{where}: no {key} in the state dict; not an RTMDet (CSPNeXt + CSPNeXtPAFPN + "
                              f"RTMDetSepBNHead) checkpoint")
    return sd[key].shape


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many numbered children ``<prefix><i>.`` the keys hold."""
    return len({k[len(prefix):].split(".", 1)[0] for k in sd if k.startswith(prefix)})


def _shared(sd: Mapping[str, torch.Tensor], stacked: int) -> bool:
    """Whether the head's tower convs are one tensor for all levels (equal under every level's name)."""
    levels = _count(sd, "bbox_head.cls_convs.")
    return all(torch.equal(sd[f"bbox_head.{t}.{lv}.{i}.conv.weight"], sd[f"bbox_head.{t}.0.{i}.conv.weight"])
               for t in ("cls_convs", "reg_convs") for lv in range(1, levels) for i in range(stacked)
               if f"bbox_head.{t}.{lv}.{i}.conv.weight" in sd)


def arch_from_tensors(sd: Mapping[str, torch.Tensor], where: str) -> tuple[RTMDetArch, str]:
    """(the architecture the tensors' shapes give, what was assumed). ``exp_on_reg`` changes the forward, not
    the tensors: it is that of mmdetection's config whose widths and depths these are (False otherwise)."""
    stem = (_out(sd, "backbone.stem.0.conv.weight", where)[0], _out(sd, "backbone.stem.2.conv.weight", where)[0])
    widths = tuple(_out(sd, f"backbone.stage{i}.0.conv.weight", where)[0] for i in range(1, 5))
    blocks = tuple(_count(sd, f"backbone.stage{i}.{2 if i == 4 else 1}.blocks.") for i in range(1, 5))
    stacked = _count(sd, "bbox_head.cls_convs.0.")
    cls = _out(sd, "bbox_head.rtm_cls.0.weight", where)
    arch = RTMDetArch(
        stem=stem, widths=widths, blocks=blocks, neck_blocks=_count(sd, "neck.top_down_blocks.0.blocks."),
        neck_out=_out(sd, "neck.out_convs.0.conv.weight", where)[0],
        feat_channels=_out(sd, "bbox_head.cls_convs.0.0.conv.weight", where)[0], stacked_convs=stacked, nc=cls[0],
        exp_on_reg=False, channel_attention="backbone.stage1.1.attention.fc.weight" in sd,
        share_conv=_shared(sd, stacked), pred_kernel_size=cls[-1])
    for scale, (deepen, widen, exp_on_reg) in STANDARD_SCALES.items():
        if _same_shapes(arch, scaled_arch(deepen, widen, arch.nc)):
            arch = RTMDetArch(**{**arch.__dict__, "exp_on_reg": exp_on_reg})
            return arch, f"exp_on_reg={exp_on_reg} as mmdetection's rtmdet-{scale} config"
    return arch, "exp_on_reg=False (not stored in the tensors; mmdetection's configs set it for l and x only)"


def _same_shapes(a: RTMDetArch, b: RTMDetArch) -> bool:
    keys = ("stem", "widths", "blocks", "neck_blocks", "neck_out", "feat_channels", "stacked_convs")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


# ------------------------------------------------------------------------------------------ the file
def is_mmdet_rtmdet_checkpoint(obj: Any) -> bool:
    """A dict whose 'state_dict' holds mmdetection's RTMDet keys (CSPNeXt stem, RTMDet class predictors)."""
    sd = obj.get("state_dict") if isinstance(obj, dict) else None
    return isinstance(sd, dict) and "backbone.stem.0.conv.weight" in sd and any(
        isinstance(k, str) and k.startswith("bbox_head.rtm_cls.") for k in sd)


def _tensors(sd: Any, entry: str, where: str, strip: str = "") -> dict[str, torch.Tensor]:
    if not isinstance(sd, dict):
        raise CheckpointError(f"{where}: '{entry}' is a {type(sd).__name__}, expected a dict of tensors")
    out = {}
    for key, value in sd.items():
        if strip and not str(key).startswith(strip):
            continue  # the EMA model's own counter 'steps'
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: {entry}[{key!r}] is a {type(value).__name__}, expected a tensor")
        out[str(key)[len(strip):]] = value
    return out


def _uses_ema_hook(config: dict | None) -> bool:
    hooks = (config or {}).get("custom_hooks")
    return isinstance(hooks, list) and any(isinstance(h, dict) and _type_name(h) == "EMAHook" for h in hooks)


def _pick_weights(obj: dict, ctx: ConvertContext, config: dict | None) -> tuple[dict, str, bool]:
    """(tensors, which weights, are they the EMA). With EMAHook, 'state_dict' holds the EMA (see the module
    docstring) and 'ema_state_dict' the raw weights."""
    raw = obj.get("ema_state_dict")
    trained_with_ema = isinstance(raw, dict) or _uses_ema_hook(config)
    if ctx.prefer_ema or not isinstance(raw, dict):
        what = "state_dict (EMA, swapped in by mmengine's EMAHook)" if trained_with_ema else "state_dict"
        return _tensors(obj["state_dict"], "state_dict", ctx.source), what, trained_with_ema
    sd = _tensors(raw, "ema_state_dict", ctx.source, strip="module.")
    return sd, "ema_state_dict (the raw training weights EMAHook swaps out of state_dict)", False


def _unsupported_head(sd: Mapping[str, torch.Tensor], where: str) -> None:
    extras = {"rtm_kernel": "RTMDet-Ins (instance masks)", "mask_head": "RTMDet-Ins (instance masks)",
              "rtm_ang": "rotated RTMDet-R (mmrotate)"}
    for key in sd:
        for part, what in extras.items():
            if key.startswith(f"bbox_head.{part}"):
                raise CheckpointError(f"{where}: {key} belongs to a {what} head; rtdet converts RTMDet detectors "
                                      f"(RTMDetSepBNHead) only")


def _check_shared(sd: Mapping[str, torch.Tensor], arch: RTMDetArch, where: str) -> None:
    """Shared tower convs must be one tensor: rtdet keeps one, and unequal copies would be lost silently."""
    if not arch.share_conv or _shared(sd, arch.stacked_convs):
        return
    levels = _count(sd, "bbox_head.cls_convs.")
    for t in ("cls_convs", "reg_convs"):
        for lv in range(1, levels):
            for i in range(arch.stacked_convs):
                key = f"bbox_head.{t}.{lv}.{i}.conv.weight"
                if key in sd and not torch.equal(sd[key], sd[f"bbox_head.{t}.0.{i}.conv.weight"]):
                    raise WeightLoadError(f"{where}: the config shares the head's convs across levels (share_conv), "
                                          f"but {key} differs from bbox_head.{t}.0.{i}.conv.weight")


def model_yaml(arch: RTMDetArch, source: str) -> dict:
    """The built-in ``rtmdet-<scale>.yaml`` (with its pipeline and name) when the architecture is one of them,
    else the generated rows named after the file."""
    d = rtmdet_yaml(arch)
    for scale in STANDARD_SCALES:
        builtin = load_model_yaml(f"rtmdet-{scale}.yaml")
        if builtin["backbone"] == d["backbone"] and builtin["head"] == d["head"]:
            builtin = copy.deepcopy(builtin)
            builtin.update(nc=arch.nc, name=f"rtmdet-{scale}")
            return builtin
    d.update(name=Path(source).stem or "rtmdet", yaml_file=f"{source} (RTMDet rows from the mmdetection checkpoint)")
    return d


def _class_names(meta: dict, nc: int) -> dict[int, str] | None:
    dataset = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    names = dataset.get("classes", meta.get("CLASSES"))  # mmdetection 2.x wrote meta['CLASSES']
    if isinstance(names, list | tuple) and len(names) == nc:
        return class_names(names)
    return None


def _image_size(config: dict | None) -> int | None:
    """The square test-time Resize scale of the config's test pipeline (640 for RTMDet), if it has one."""
    for step in (config or {}).get("test_pipeline") or []:
        if isinstance(step, dict) and _type_name(step) == "Resize":
            scale = step.get("scale")
            square = isinstance(scale, list | tuple) and len(scale) == 2 and scale[0] == scale[1]
            if square and isinstance(scale[0], int):
                return int(scale[0])
    return None


def convert_mmdet_rtmdet(obj: Any, ctx: ConvertContext) -> Converted:
    """An mmdetection RTMDet checkpoint as the rtdet RTMDet model of its config (or of its tensors' shapes)."""
    meta = plain(obj.get("meta"))
    meta = meta if isinstance(meta, dict) else {}
    config, note = read_config_text(meta.get("cfg", meta.get("config")))
    sd, weights, ema = _pick_weights(obj, ctx, config)
    sd, cast = to_float32(sd)  # publish_model.py --float16 files
    _unsupported_head(sd, ctx.source)
    if config is not None and isinstance(config.get("model"), dict):
        arch, how = arch_from_config(config["model"], ctx.source), "architecture from the config in meta"
    else:
        arch, assumed = arch_from_tensors(sd, ctx.source)
        how = f"{note}: architecture inferred from tensor shapes, {assumed}"
    _check_shared(sd, arch, ctx.source)
    d = model_yaml(arch, ctx.source)
    model = DetectionModel(d)
    names = _class_names(meta, model.nc)
    if names is not None:
        model.names = names
    mapped, dropped = MMDET_RTMDET_KEYS.apply(sd)
    report = load_into(model, mapped, MMDET_RTMDET_KEYS.name, dropped=dropped, strict=ctx.strict,
                       what=f"{ctx.source}: weights", source=ctx.source,
                       hint="The config in meta (or, without one, the tensors' shapes) describes another RTMDet than "
                            "these tensors: a modified model, or a config that does not belong to the file.")
    report.cast = cast
    args: dict = {"mmdet_config": config} if config is not None else {}
    if _image_size(config) is not None:
        args["imgsz"] = _image_size(config)
    return Converted(model=model, report=report, description=f"mmdetection RTMDet ({model.name}; {how})",
                     weights=weights, names=model.names, args=args, ema=ema)


register_format(ForeignFormat(
    "mmdet", "mmdetection RTMDet (rtmdet_tiny/s/m/l/x_*.pth: 'meta' + 'state_dict', training checkpoints with "
             "ema_state_dict)",
    detect=is_mmdet_rtmdet_checkpoint, convert=convert_mmdet_rtmdet,
))
