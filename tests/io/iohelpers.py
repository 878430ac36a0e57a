"""Fixture checkpoints with the structure of the real files, built from rtdet models.

An Ultralytics ``.pt`` pickles Ultralytics' own classes (``ultralytics.nn.tasks.RTDETRDetectionModel``,
``ultralytics.nn.modules.conv.Conv`` ...). To give the reader exactly that, the modules of an rtdet model
are re-classed into classes of the same names defined in throw-away modules registered under the
Ultralytics module paths, saved with ``torch.save`` in the dict layout Ultralytics writes, and the
throw-away modules are removed again: the reader then sees what a real file holds, and nothing named
``ultralytics`` can be imported while it reads.
"""

from __future__ import annotations

import contextlib
import copy
import pathlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import yaml

from rtdet.nn.builder import resolve_model_path

# rtdet class -> (Ultralytics module, class name) of the module that holds the same tensors.
ULTRALYTICS_CLASSES = {
    "Conv": ("ultralytics.nn.modules.conv", "Conv"),
    "DWConv": ("ultralytics.nn.modules.conv", "DWConv"),
    "LightConv": ("ultralytics.nn.modules.conv", "LightConv"),
    "RepConv": ("ultralytics.nn.modules.conv", "RepConv"),
    "Concat": ("ultralytics.nn.modules.conv", "Concat"),
    "Index": ("ultralytics.nn.modules.conv", "Index"),
    "HGStem": ("ultralytics.nn.modules.block", "HGStem"),
    "HGBlock": ("ultralytics.nn.modules.block", "HGBlock"),
    "RepC3": ("ultralytics.nn.modules.block", "RepC3"),
    "ResNetBlock": ("ultralytics.nn.modules.block", "ResNetBlock"),
    "ResNetLayer": ("ultralytics.nn.modules.block", "ResNetLayer"),
    "AIFI": ("ultralytics.nn.modules.transformer", "AIFI"),
    "MLP": ("ultralytics.nn.modules.transformer", "MLP"),
    "MSDeformAttn": ("ultralytics.nn.modules.transformer", "MSDeformAttn"),
    "DeformableTransformerDecoderLayer": ("ultralytics.nn.modules.transformer", "DeformableTransformerDecoderLayer"),
    "DeformableTransformerDecoder": ("ultralytics.nn.modules.transformer", "DeformableTransformerDecoder"),
    "RTDETRDecoder": ("ultralytics.nn.modules.head", "RTDETRDecoder"),
    # community forks (the seeds' DySample and ConvNeXt V2 backbone files)
    "DySample": ("ultralytics.nn.extra_modules.block", "DySample"),
    "ConvNeXtV2Atto": ("ultralytics.nn.backbone.convnextv2", "ConvNeXtV2"),
    "ConvNeXtV2Block": ("ultralytics.nn.backbone.convnextv2", "Block"),
    "LayerNorm2d": ("ultralytics.nn.backbone.convnextv2", "LayerNorm"),
    "GRN": ("ultralytics.nn.backbone.convnextv2", "GRN"),
    # the YOLOv9 port (ultralytics 8.3: RepCSP / RepBottleneck / RepConv hold RepNCSP's tensors under its names)
    "RepNCSPELAN4": ("ultralytics.nn.modules.block", "RepNCSPELAN4"),
    "RepNCSP": ("ultralytics.nn.modules.block", "RepCSP"),
    "RepNBottleneck": ("ultralytics.nn.modules.block", "RepBottleneck"),
    "RepConvN": ("ultralytics.nn.modules.conv", "RepConv"),
    "ELAN1": ("ultralytics.nn.modules.block", "ELAN1"),
    "AConv": ("ultralytics.nn.modules.block", "AConv"),
    "ADown": ("ultralytics.nn.modules.block", "ADown"),
    "SPPELAN": ("ultralytics.nn.modules.block", "SPPELAN"),
    "CBLinear": ("ultralytics.nn.modules.block", "CBLinear"),
    "CBFuse": ("ultralytics.nn.modules.block", "CBFuse"),
    "DFL": ("ultralytics.nn.modules.block", "DFL"),
    "Detect": ("ultralytics.nn.modules.head", "Detect"),
}
TOP = ("ultralytics.nn.tasks", "RTDETRDetectionModel")
YOLO_TOP = ("ultralytics.nn.tasks", "DetectionModel")
NAMESPACE = ("ultralytics.utils", "IterableSimpleNamespace")


@contextlib.contextmanager
def throwaway_modules(*names: str) -> Iterator[dict[str, types.ModuleType]]:
    """Empty modules (and their parents) registered in sys.modules, removed again on exit."""
    created: list[str] = []
    try:
        for full in names:
            parts = full.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in sys.modules:
                    sys.modules[name] = types.ModuleType(name)
                    created.append(name)
                    if i > 1:
                        setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], sys.modules[name])
        yield {n: sys.modules[n] for n in names}
    finally:
        for name in reversed(created):
            sys.modules.pop(name, None)


def define_class(module: types.ModuleType, name: str, base: type = nn.Module, **attrs) -> type:
    cls = type(name, (base,), {"__module__": module.__name__, "__qualname__": name, **attrs})
    setattr(module, name, cls)
    return cls


def define_classes(mods: dict[str, types.ModuleType], table: dict[str, tuple[str, str]]) -> dict[str, type]:
    """rtdet class name -> a throw-away class of the foreign (module, name); rtdet classes that the source
    implements with one class (RT-DETR's RepConv and GELAN's RepConvN are both Ultralytics' RepConv) share it."""
    made: dict[tuple[str, str], type] = {}
    for where in dict.fromkeys(table.values()):
        made[where] = define_class(mods[where[0]], where[1])
    return {rt: made[where] for rt, where in table.items()}


def random_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, in eval mode: zero-initialised heads and the BN statistics
    start to matter, so a wrong mapping shows in the outputs (constants that are no tensors stay as built)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def fp16_exact(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics that fp16 stores exactly (so a half-precision file loses
    nothing and converted outputs can equal the source's to the bit)."""
    was_training = model.training
    random_weights(model, seed).train(was_training)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.copy_(t.half().float())
    return model


def ultralytics_yaml(name_or_path: str, nc: int) -> dict:
    """The model dict Ultralytics pickles in ``model.yaml`` (yaml_model_load + DetectionModel.__init__)."""
    path, _ = resolve_model_path(name_or_path)
    d = yaml.safe_load(Path(path).read_text())
    d.update(nc=nc, scale="", yaml_file=Path(path).name, ch=3, channels=3)
    return d


def ultralytics_tree(model: nn.Module, classes: dict[str, type], top_cls: type, yaml_dict: dict,
                     names: dict[int, str], args) -> nn.Module:
    """A copy of an rtdet DetectionModel as Ultralytics holds it: an RTDETRDetectionModel whose ``model`` is
    an nn.Sequential of rows, every rtdet module re-classed to the Ultralytics class of the same tensors."""
    tree = copy.deepcopy(model)
    for m in tree.modules():
        if type(m).__module__.startswith("rtdet.") and m is not tree:
            m.__class__ = classes[type(m).__name__]
            m.__dict__.pop("_grid_cache", None)  # DySample's derived-data cache
    top = top_cls()
    top.model = nn.Sequential(*list(tree.model))
    top.yaml, top.names, top.args = yaml_dict, names, args
    top.stride, top.save, top.pt_path = torch.tensor([32.0]), sorted(tree.saved_slots), "rtdetr-l.pt"
    return top


def save_ultralytics(model: nn.Module, path: Path, yaml_name: str, *, layout: str = "final",
                     raw: nn.Module | None = None, classifier: bool = False,
                     names: dict[int, str] | None = None, top: tuple[str, str] = TOP) -> Path:
    """Write ``model`` (an rtdet DetectionModel) as an Ultralytics checkpoint.

    layout: "final" (what strip_optimizer leaves: the EMA in 'model', 'ema' None, epoch -1), "last" (a
    recent last.pt: 'model' None, the EMA in 'ema', optimizer state), or "old" (8.0-8.2: 'model' = ``raw``
    and 'ema' = ``model``). ``classifier`` adds the ConvNeXt V2 classifier (norm + head) the community
    backbone module carries to row 0. ``top``: the model class (RT-DETR's, or YOLO_TOP for the YOLOv9 port)."""
    names = names or {i: f"class{i}" for i in range(model.nc)}
    modules = sorted({m for m, _ in ULTRALYTICS_CLASSES.values()} | {top[0], NAMESPACE[0]})
    with throwaway_modules(*modules) as mods:
        classes = define_classes(mods, ULTRALYTICS_CLASSES)
        top_cls = define_class(mods[top[0]], top[1])
        ns_cls = define_class(mods[NAMESPACE[0]], NAMESPACE[1], base=types.SimpleNamespace)
        train_args = {"task": "detect", "mode": "train", "model": "rtdetr-l.pt", "data": "coco8.yaml", "epochs": 3,
                      "imgsz": 320, "batch": 4, "optimizer": "auto", "lr0": 0.01, "amp": True, "save_dir":
                      pathlib.PurePosixPath("runs/detect/train"), "project": None, "cfg": None}
        args = ns_cls(**train_args)
        d = ultralytics_yaml(yaml_name, model.nc)

        def tree(m: nn.Module) -> nn.Module:
            t = ultralytics_tree(m, classes, top_cls, d, names, args).half()
            if classifier:
                t.model[0].norm = nn.LayerNorm(t.model[0].out_channels[-1], eps=1e-6).half()
                t.model[0].head = nn.Linear(t.model[0].out_channels[-1], 1000).half()
            return t

        meta = {"date": "2026-01-01T00:00:00", "version": "8.3.40", "license": "AGPL-3.0 License",
                "docs": "https://docs.ultralytics.com", "train_args": train_args,
                "train_metrics": {"metrics/mAP50(B)": np.float64(0.5), "fitness": np.float64(0.41)},
                "train_results": {"epoch": [1, 2, 3], "train/giou_loss": [1.2, 1.0, 0.9]}}
        if layout == "final":
            ckpt = {"epoch": -1, "best_fitness": None, "model": tree(model), "ema": None, "updates": None,
                    "optimizer": None, "scaler": None, **meta}
        elif layout == "last":
            ema = tree(model)
            opt = torch.optim.AdamW([p for p in ema.parameters()][:3], lr=1e-3).state_dict()
            ckpt = {"epoch": 2, "best_fitness": np.float64(0.41), "model": None, "ema": ema, "updates": 120,
                    "optimizer": opt, "scaler": {"scale": 65536.0}, **meta}
        elif layout == "old":
            ckpt = {"epoch": 2, "best_fitness": np.float64(0.41), "model": tree(raw), "ema": tree(model),
                    "updates": 120, "optimizer": None, **meta}
        else:
            raise ValueError(layout)
        torch.save(ckpt, path)
    return path


def official_backbone_file(state_dict: dict, path: Path, *, training: bool = False, ema: dict | None = None) -> Path:
    """A ConvNeXt V2 / SHViT (DeiT-style) checkpoint: {'model': ...} as released, or a training checkpoint
    with 'model_ema', an optimizer and the argparse.Namespace of the training script."""
    import argparse

    if not training:
        return _save(path, {"model": state_dict})
    args = argparse.Namespace(model="shvit_s1", batch_size=256, lr=1e-3, output_dir=pathlib.PosixPath("out"))
    ckpt = {"model": state_dict, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
            "lr_scheduler": {"last_epoch": 3}, "epoch": 3, "model_ema": ema, "scaler": {"scale": 1024.0},
            "args": args}
    return _save(path, ckpt)


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def same_outputs(a, b) -> bool:
    """Every tensor of two (nested) outputs equal, to the bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_outputs(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_outputs(x, y) for x, y in zip(a, b))
    return a == b


def with_classifier(sd: dict, c: int, kind: str) -> dict:
    """A backbone state dict as its ImageNet checkpoint holds it: plus the classifier a detector drops."""
    sd = dict(sd)
    if kind == "convnextv2":  # final LayerNorm + Linear
        sd.update({"norm.weight": torch.ones(c), "norm.bias": torch.zeros(c), "head.weight": torch.randn(1000, c),
                   "head.bias": torch.zeros(1000)})
    else:  # SHViT's BatchNorm + Linear head
        sd.update({"head.bn.weight": torch.ones(c), "head.bn.bias": torch.zeros(c), "head.bn.running_mean":
                   torch.zeros(c), "head.bn.running_var": torch.ones(c), "head.l.weight": torch.randn(1000, c),
                   "head.l.bias": torch.zeros(1000)})
    return sd


def convnextv2_timm_names(sd: dict, conv_mlp: bool = True) -> dict:
    """Official ConvNeXt V2 keys as timm names them (conv_mlp: atto..nano's 1x1-conv MLP and (C,) GRN)."""
    import re

    out = {}
    for key, v in sd.items():
        k = re.sub(r"^downsample_layers\.0\.", "stem.", key)
        k = re.sub(r"^downsample_layers\.(\d)\.", r"stages.\1.downsample.", k)
        k = re.sub(r"^stages\.(\d)\.(\d+)\.", r"stages.\1.blocks.\2.", k)
        k = k.replace(".dwconv.", ".conv_dw.").replace(".pwconv1.", ".mlp.fc1.").replace(".pwconv2.", ".mlp.fc2.")
        k = k.replace(".grn.gamma", ".mlp.grn.weight").replace(".grn.beta", ".mlp.grn.bias")
        k = k.replace("norm.", "head.norm.", 1) if key.startswith("norm.") else k
        k = k.replace("head.", "head.fc.", 1) if key.startswith("head.") else k
        if ".grn." in k:
            v = v.reshape(-1)
        elif conv_mlp and ".mlp.fc" in k and k.endswith("weight"):
            v = v[:, :, None, None]
        out[k] = v
    return out


def shvit_timm_names(sd: dict) -> dict:
    """Official SHViT keys as timm names them: blocks{i+1}.{0.0, 0.1, 1, 2.0, 2.1} -> stages.i.downsample.0-4,
    the blocks after them -> stages.i.blocks.(j-3); blocks1.j -> stages.0.blocks.j; head stays head."""
    import re

    down = {("0", "0"): 0, ("0", "1"): 1, ("2", "0"): 3, ("2", "1"): 4}
    out = {}
    for key, v in sd.items():
        k = key
        m = re.match(r"^blocks(\d)\.(\d+)\.(.*)$", key)
        if m:
            stage, j, rest = int(m[1]) - 1, int(m[2]), m[3]
            if stage == 0:
                k = f"stages.0.blocks.{j}.{rest}"
            elif j == 1:
                k = f"stages.{stage}.downsample.2.{rest}"
            elif j in (0, 2):
                sub, tail = rest.split(".", 1)
                k = f"stages.{stage}.downsample.{down[(str(j), sub)]}.{tail}"
            else:
                k = f"stages.{stage}.blocks.{j - 3}.{rest}"
        out[k] = v
    return out
