"""YOLOv9 checkpoints -> rtdet models with the same tensors and the same outputs: official WongKinYiu/yolov9
files (training graph with the PGI auxiliary branch, gelan-*, the re-parameterised *-converted.pt) and the
Ultralytics port (yolov9t/s/m/c/e).

Every fixture is an rtdet model written the way the source writes its own: its modules pickled as classes
of the source's module paths (``models.common.RepNCSPELAN4``, ``models.yolo.DualDDetect``,
``ultralytics.nn.modules.block.RepCSP`` ...) defined in throw-away modules, fp16 tensors, the model YAML
dict, names and training options on the model object, the dict layout of each kind of file."""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from rtdet import Detector, build_model
from rtdet.cli import main
from rtdet.io import WeightLoadError, convert_file, load_model
from rtdet.io.foreign import module_state_dict
from rtdet.io.safe_pickle import read_checkpoint
from rtdet.nn.builder import resolve_model_path
from rtdet.utils.checkpoint import CheckpointError
from tests.io.iohelpers import (
    YOLO_TOP,
    define_class,
    define_classes,
    fp16_exact,
    same_outputs,
    save_ultralytics,
    throwaway_modules,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# rtdet class -> (official module, class name) holding the same tensors (models/common.py, models/yolo.py)
OFFICIAL_CLASSES = {name: ("models.common", name) for name in (
    "Conv", "Silence", "Concat", "RepConvN", "RepNBottleneck", "RepNCSP", "RepNCSPELAN4", "ELAN1", "AConv", "ADown",
    "SPPELAN", "CBLinear", "CBFuse", "DFL")}
OFFICIAL_CLASSES.update({"DDetect": ("models.yolo", "DDetect"), "DualDDetect": ("models.yolo", "DualDDetect")})
OFFICIAL_TOP = ("models.yolo", "DetectionModel")
HYP = {"lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 3.0, "box": 7.5,
       "cls": 0.5, "dfl": 1.5, "mosaic": 1.0, "mixup": 0.15, "copy_paste": 0.3, "anchor_t": 5.0}


def official_tree(model: nn.Module, classes: dict[str, type], top_cls: type, yaml_dict: dict, yaml_file: str | None,
                  names) -> nn.Module:
    """A copy of an rtdet DetectionModel as models/yolo.py holds it: a DetectionModel whose ``model`` is an
    nn.Sequential of rows of models.common / models.yolo classes, with the attributes train*.py sets."""
    tree = copy.deepcopy(model)
    for m in tree.modules():
        if type(m).__module__.startswith("rtdet.") and m is not tree:
            m.__class__ = classes[type(m).__name__]
    top = top_cls()
    if yaml_file is not None:  # only a model built from a file has it
        top.yaml_file = yaml_file
    top.yaml = yaml_dict
    top.model = nn.Sequential(*list(tree.model))
    top.save, top.inplace = sorted(tree.saved_slots), True
    top.names = names
    top.stride = torch.tensor([float(s) for s in tree.strides])
    top.nc, top.hyp = tree.nc, dict(HYP)
    top.class_weights = torch.ones(tree.nc)
    return top


def official_options(cfg: str) -> dict:
    """vars(opt) of train_dual.py (a selection of its arguments, their types as parsed), with the hyp dict."""
    opt = argparse.Namespace(weights="", cfg=cfg, data="data/coco.yaml", hyp=dict(HYP), epochs=500, batch_size=16,
                             imgsz=320, rect=False, resume=False, nosave=False, noval=False, device="0",
                             optimizer="SGD", sync_bn=False, workers=8, project="runs/train", name="yolov9-c",
                             seed=0, close_mosaic=15, min_items=0, save_dir="runs/train/yolov9-c")
    return vars(opt)


def save_official(model: nn.Module, path: Path, yaml_dict: dict, *, layout: str = "stripped",
                  raw: nn.Module | None = None, names=None, yaml_file: str | None = "model.yaml") -> Path:
    """Write ``model`` (an rtdet DetectionModel) as an official YOLOv9 checkpoint.

    layout: "train" (last.pt / best.pt of train_dual.py: 'model' = ``raw`` or ``model``, 'ema' = ``model``,
    optimizer, opt), "stripped" (what strip_optimizer leaves, as released: the EMA in 'model', requires_grad
    off), or "converted" (tools/reparameterization: the model alone, every other entry None)."""
    names = names if names is not None else {i: f"class{i}" for i in range(model.nc)}
    with throwaway_modules(OFFICIAL_TOP[0], *{m for m, _ in OFFICIAL_CLASSES.values()}) as mods:
        classes = define_classes(mods, OFFICIAL_CLASSES)
        top_cls = define_class(mods[OFFICIAL_TOP[0]], OFFICIAL_TOP[1])

        def tree(m: nn.Module) -> nn.Module:
            return official_tree(m, classes, top_cls, copy.deepcopy(yaml_dict), yaml_file, names).half()

        if layout == "train":
            ema = tree(model)
            opt = torch.optim.SGD([p for p in ema.parameters()][:3], lr=0.01, momentum=0.9).state_dict()
            ckpt = {"epoch": 3, "best_fitness": np.array([0.41]), "model": tree(raw if raw is not None else model),
                    "ema": ema, "updates": 120, "optimizer": opt, "opt": official_options(str(yaml_file)),
                    "git": None, "date": "2024-02-21T10:00:00"}
        elif layout == "stripped":
            m = tree(model)
            for p in m.parameters():
                p.requires_grad = False
            ckpt = {"epoch": -1, "best_fitness": None, "model": m, "ema": None, "updates": None, "optimizer": None,
                    "opt": official_options(str(yaml_file)), "git": None, "date": "2024-02-21T10:00:00"}
        elif layout == "converted":
            ckpt = {"model": tree(model), "optimizer": None, "best_fitness": None, "ema": None, "updates": None,
                    "opt": None, "git": None, "date": None, "epoch": -1}
        else:
            raise ValueError(layout)
        torch.save(ckpt, path)
    return path


def official_yaml(text_or_name: str, nc: int | None = None) -> dict:
    """The dict DetectionModel(cfg) stores in ``model.yaml``: the YAML file as safe_load reads it, plus 'ch'
    (and the 'anchors' key every official detect YAML has)."""
    if "\n" in text_or_name:
        d = yaml.safe_load(text_or_name)
    else:
        d = yaml.safe_load(Path(resolve_model_path(text_or_name)[0]).read_text())
    d.setdefault("anchors", 3)
    if nc is not None:
        d["nc"] = nc
    d["ch"] = 3
    return d


# ------------------------------------------------------------------------------------------ tiny models
# The layouts of the real files at a few thousand parameters: yolov9-c's dual graph (Silence, main branch,
# CBLinear routing into an auxiliary backbone that re-reads the image, CBFuse, DualDDetect), its main branch
# alone = gelan-c / yolov9-c-converted (ADown, SPPELAN, DDetect), and gelan-t / -s (ELAN1, AConv, RepNCSP x2).
HEADER = "nc: 3\ndepth_multiple: 1.0\nwidth_multiple: 1.0\nanchors: 3\n"


def main_rows(o: int) -> list[str]:
    """The main branch (GELAN): rows o .. o+21 (o = 1 after the dual graph's Silence row)."""
    return [
        "[-1, 1, Conv, [16, 3, 2]]", "[-1, 1, Conv, [32, 3, 2]]", "[-1, 1, RepNCSPELAN4, [32, 32, 16, 1]]",
        "[-1, 1, ADown, [48]]", "[-1, 1, RepNCSPELAN4, [48, 48, 24, 1]]", "[-1, 1, ADown, [64]]",
        "[-1, 1, RepNCSPELAN4, [64, 64, 32, 1]]", "[-1, 1, ADown, [64]]", "[-1, 1, RepNCSPELAN4, [64, 64, 32, 1]]",
        "[-1, 1, SPPELAN, [64, 32]]", "[-1, 1, nn.Upsample, [None, 2, 'nearest']]", f"[[-1, {6 + o}], 1, Concat, [1]]",
        "[-1, 1, RepNCSPELAN4, [64, 64, 32, 1]]", "[-1, 1, nn.Upsample, [None, 2, 'nearest']]",
        f"[[-1, {4 + o}], 1, Concat, [1]]", "[-1, 1, RepNCSPELAN4, [48, 48, 24, 1]]", "[-1, 1, ADown, [48]]",
        f"[[-1, {12 + o}], 1, Concat, [1]]", "[-1, 1, RepNCSPELAN4, [64, 64, 32, 1]]", "[-1, 1, ADown, [64]]",
        f"[[-1, {9 + o}], 1, Concat, [1]]", "[-1, 1, RepNCSPELAN4, [64, 64, 32, 1]]",
    ]


AUX = [  # rows 23-38 of the dual graph: CBLinear routing, the auxiliary backbone, CBFuse, DualDDetect
    "[5, 1, CBLinear, [[48]]]", "[7, 1, CBLinear, [[48, 64]]]", "[9, 1, CBLinear, [[48, 64, 64]]]",
    "[0, 1, Conv, [16, 3, 2]]", "[-1, 1, Conv, [32, 3, 2]]", "[-1, 1, RepNCSPELAN4, [32, 32, 16, 1]]",
    "[-1, 1, ADown, [48]]", "[[23, 24, 25, -1], 1, CBFuse, [[0, 0, 0]]]", "[-1, 1, RepNCSPELAN4, [48, 48, 24, 1]]",
    "[-1, 1, ADown, [64]]", "[[24, 25, -1], 1, CBFuse, [[1, 1]]]", "[-1, 1, RepNCSPELAN4, [64, 64, 32, 1]]",
    "[-1, 1, ADown, [64]]", "[[25, -1], 1, CBFuse, [[2]]]", "[-1, 1, RepNCSPELAN4, [64, 64, 32, 1]]",
    "[[31, 34, 37, 16, 19, 22], 1, DualDDetect, [nc]]",
]


def _rows(rows: list[str]) -> str:
    return "".join(f"  - {r}\n" for r in rows)


TINY = {
    "dual": HEADER + "backbone:\n" + _rows(["[-1, 1, Silence, []]", *main_rows(1)[:9]])
    + "head:\n" + _rows([*main_rows(1)[9:], *AUX]),
    "gelan": HEADER + "backbone:\n" + _rows(main_rows(0)[:9])
    + "head:\n" + _rows([*main_rows(0)[9:], "[[15, 18, 21], 1, DDetect, [nc]]"]),
    "gelan-t": HEADER + """backbone:
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [-1, 1, ELAN1, [32, 32, 16]]
  - [-1, 1, AConv, [48]]
  - [-1, 1, RepNCSPELAN4, [48, 48, 24, 2]]
  - [-1, 1, AConv, [64]]
  - [-1, 1, RepNCSPELAN4, [64, 64, 32, 2]]
  - [-1, 1, AConv, [64]]
  - [-1, 1, RepNCSPELAN4, [64, 64, 32, 2]]
head:
  - [-1, 1, SPPELAN, [64, 32]]
  - [-1, 1, nn.Upsample, [None, 2, 'nearest']]
  - [[-1, 6], 1, Concat, [1]]
  - [-1, 1, RepNCSPELAN4, [64, 64, 32, 2]]
  - [-1, 1, nn.Upsample, [None, 2, 'nearest']]
  - [[-1, 4], 1, Concat, [1]]
  - [-1, 1, RepNCSPELAN4, [48, 48, 24, 2]]
  - [-1, 1, AConv, [32]]
  - [[-1, 12], 1, Concat, [1]]
  - [-1, 1, RepNCSPELAN4, [64, 64, 32, 2]]
  - [-1, 1, AConv, [48]]
  - [[-1, 9], 1, Concat, [1]]
  - [-1, 1, RepNCSPELAN4, [64, 64, 32, 2]]
  - [[15, 18, 21], 1, DDetect, [nc]]
""",
}
NAMES = {0: "person", 1: "car", 2: "dog"}


def tiny(kind: str, seed: int = 0):
    """(the official YAML dict of a tiny model, the rtdet model built from it with fp16-exact weights)."""
    d = official_yaml(TINY[kind])
    return d, fp16_exact(build_model(copy.deepcopy(d)), seed=seed).eval()


def image(size: int = 64) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def outputs(model, size: int = 64):
    with torch.no_grad():
        return model.eval()(image(size))


def detections(model, size: int = 64):
    """What the model predicts after NMS (every box: conf 0)."""
    out = model.head.postprocess(outputs(model, size), (size, size), conf=0.0, iou=0.7, max_det=50)
    return [(d.boxes, d.scores, d.labels) for d in out]


# ------------------------------------------------------------------------------------------ official
@pytest.mark.parametrize("kind", list(TINY))
@pytest.mark.parametrize("layout", ["stripped", "train"])
def test_official_files_map_every_tensor_and_give_the_same_outputs(tmp_path, kind, layout):
    d, source = tiny(kind)
    ckpt = save_official(source, tmp_path / "best.pt", d, layout=layout, names=NAMES, yaml_file=f"yolov9-{kind}.yaml")
    loaded = load_model(ckpt)
    report = loaded.report
    assert loaded.format == "yolov9" and report.ok and report.loaded == report.total == len(source.state_dict())
    assert report.cast == sum(v.is_floating_point() for v in source.state_dict().values())
    assert loaded.names == NAMES and loaded.model.name == f"yolov9-{kind}"
    assert loaded.ema == (layout == "train")  # a stripped file has its EMA in 'model' already
    assert loaded.inherited == {"imgsz": 320} and loaded.args["hyp"]["mixup"] == 0.15
    assert same_outputs(outputs(source), outputs(loaded.model))
    assert same_outputs(detections(source), detections(loaded.model))
    assert ("auxiliary branch" in loaded.description) == (kind == "dual")
    assert not any(m == "models" or m.startswith("models.") for m in sys.modules)


def test_the_reader_sees_the_official_structure(tmp_path):
    d, source = tiny("dual")
    ckpt = read_checkpoint(save_official(source, tmp_path / "yolov9-c.pt", d, names=NAMES))
    record = ckpt["model"]
    assert record.cls_name == "models.yolo.DetectionModel" and ckpt["ema"] is None and ckpt["epoch"] == -1
    rows = record.attrs["_modules"]["model"].attrs["_modules"]
    assert rows["0"].cls_name == "models.common.Silence" and rows["3"].cls_name == "models.common.RepNCSPELAN4"
    assert rows["11"].cls_name == "torch.nn.modules.upsampling.Upsample"
    assert rows["38"].cls_name == "models.yolo.DualDDetect"
    assert record.attrs["yaml"]["anchors"] == 3 and record.attrs["yaml"]["ch"] == 3
    sd = module_state_dict(record)
    assert list(sd) == list(source.state_dict())  # names and order of the source
    assert {v.dtype for k, v in sd.items() if not k.endswith("num_batches_tracked")} == {torch.float16}
    assert "model.38.cv4.0.2.weight" in sd and "model.38.dfl2.conv.weight" in sd


def test_the_ema_is_preferred_and_the_raw_weights_are_one_setting_away(tmp_path):
    d, ema = tiny("gelan")
    _, raw = tiny("gelan", seed=7)
    ckpt = save_official(ema, tmp_path / "last.pt", d, layout="train", raw=raw)
    loaded = load_model(ckpt)
    assert loaded.ema and same_outputs(outputs(ema), outputs(loaded.model))
    loaded = load_model(ckpt, prefer_ema=False)
    assert not loaded.ema and same_outputs(outputs(raw), outputs(loaded.model))


def reparameterised(dual: nn.Module) -> nn.Module:
    """What tools/reparameterization does to a yolov9-c file: a GELAN model (the same rows without Silence
    and the auxiliary branch, DDetect head) given rows 1-22 of the dual graph as rows 0-21 and DualDDetect's
    main half (cv4 / cv5 / dfl2) as its cv2 / cv3 / dfl."""
    gelan = build_model(official_yaml(TINY["gelan"])).eval()
    theirs = dual.state_dict()
    head, dual_head = gelan.head_index, dual.head_index
    main = {"cv2": "cv4", "cv3": "cv5", "dfl": "dfl2"}
    picked = {}
    for key in gelan.state_dict():
        row, rest = key.split(".", 2)[1:]
        if int(row) == head:
            part, tail = rest.split(".", 1)
            picked[key] = theirs[f"model.{dual_head}.{main[part]}.{tail}"]
        else:
            picked[key] = theirs[f"model.{int(row) + 1}.{rest}"]
    gelan.load_state_dict(picked)
    return gelan


def test_a_converted_file_predicts_what_the_training_graph_predicts(tmp_path):
    d, dual = tiny("dual")
    gelan = reparameterised(dual)
    path = save_official(gelan, tmp_path / "yolov9-c-converted.pt", official_yaml(TINY["gelan"]), layout="converted",
                         names=NAMES, yaml_file="gelan-c.yaml")
    converted = load_model(path)
    assert converted.report.ok and converted.model.name == "gelan-c" and converted.args == {}
    assert type(converted.model.head).__name__ == "DDetect" and converted.names == NAMES
    main_branch, _ = outputs(dual)  # DualDDetect predicts with its main half
    assert same_outputs(main_branch, outputs(converted.model))
    training = load_model(save_official(dual, tmp_path / "yolov9-c.pt", d, names=NAMES))
    assert same_outputs(detections(training.model), detections(converted.model))
    # rtdet's own inference form of the training graph drops the same branch: same parameters, same boxes
    deployed, reparam = copy.deepcopy(training.model).fuse(), copy.deepcopy(converted.model).fuse()
    assert sum(p.numel() for p in deployed.parameters()) == sum(p.numel() for p in reparam.parameters())
    for a, b in zip(outputs(deployed), outputs(reparam)):
        torch.testing.assert_close(a, b)


def test_a_new_class_count_reinitialises_only_the_head(tmp_path, caplog):
    d, source = tiny("dual")
    caplog.set_level("INFO", logger="rtdet")
    loaded = load_model(save_official(source, tmp_path / "best.pt", d), nc=5, names=[f"n{i}" for i in range(5)])
    model, head = loaded.model, f"model.{loaded.model.head_index}."
    assert model.nc == 5 and loaded.reinitialised and all(k.startswith(head) for k in loaded.reinitialised)
    new, old = model.state_dict(), source.state_dict()
    assert all(torch.equal(new[k], v) for k, v in old.items() if k not in loaded.reinitialised)
    assert {k.split(".")[2] for k in loaded.reinitialised} == {"cv3", "cv5"}  # the class branches' last convs
    assert "3 -> 5 classes" in caplog.text


def test_a_real_mismatch_fails_naming_the_first_bad_key(tmp_path):
    d, source = tiny("gelan-t")
    wider = copy.deepcopy(d)
    wider["head"][0][3] = [64, 48]  # SPPELAN's inner width 32 -> 48: its tensors no longer fit
    bad = save_official(source, tmp_path / "bad.pt", wider)
    with pytest.raises(WeightLoadError, match=r"first bad key model\.9\.cv1\.conv\.weight \(shape \(32, 64, 1, 1\) "
                                              r"in the checkpoint, \(48, 64, 1, 1\) in the model\)") as err:
        load_model(bad)
    assert str(bad) in str(err.value) and "official YOLOv9 layout" in str(err.value)
    assert load_model(bad, strict=False).report.mismatched


def test_heads_rtdet_does_not_build_are_clear_errors(tmp_path):
    d, source = tiny("gelan")
    other = copy.deepcopy(d)
    other["head"][-1][2] = "Detect"  # the repository's own anchor-free Detect (another class-branch width)
    path = save_official(source, tmp_path / "yolov5ish.pt", other)
    with pytest.raises(CheckpointError, match="whose head is Detect; rtdet converts official YOLOv9 detection models "
                                              "with a DDetect or DualDDetect head"):
        load_model(path)
    with pytest.raises(CheckpointError, match="does not look like a Ultralytics"):
        load_model(save_official(source, tmp_path / "ok.pt", d), format="ultralytics")
    assert load_model(tmp_path / "ok.pt", format="yolov9").format == "yolov9"


def test_entry_points_take_official_files(tmp_path, capsys):
    d, source = tiny("gelan")
    path = save_official(source, tmp_path / "gelan-c.pt", d, names=NAMES)
    det = Detector(str(path))
    assert det.names == NAMES
    results = det.predict(np.full((48, 64, 3), 90, np.uint8), conf=0.0, max_det=5)
    assert results[0].boxes.shape == (5, 4)
    out, loaded = convert_file(path)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["converted_from"]["format"] == "yolov9" and ckpt["args"] == {"imgsz": 320}
    assert same_outputs(outputs(source), outputs(load_model(out).model))
    assert main(["convert", f"source={path}", f"to={tmp_path / 'again.pt'}", "format=yolov9"]) == 0
    assert "official YOLOv9 layout: loaded" in capsys.readouterr().out


def test_cli_val_predict_and_export_take_an_official_training_graph(tmp_path, capsys):
    """A yolov9-* file (PGI auxiliary branch, DualDDetect) straight into the CLI: converted in memory; the
    export is the deploy form (auxiliary branch dropped), checked in ONNX Runtime before it succeeds."""
    from rtdet.data.synthetic import make_synthetic_dataset
    from rtdet.deploy.metadata import read_metadata

    data = make_synthetic_dataset(tmp_path / "data", n_train=2, n_val=2, imgsz=64, n_classes=3, max_objects=2)
    d, source = tiny("dual")
    path = save_official(source, tmp_path / "yolov9-c.pt", d, names=NAMES)
    common = [f"project={tmp_path / 'runs'}", "imgsz=64", "device=cpu"]
    assert main(["val", f"model={path}", f"data={data}", "workers=0", *common]) == 0
    assert main(["predict", f"model={path}", f"source={data.parent / 'images' / 'val'}", *common]) == 0
    assert main(["export", f"model={path}", *common]) == 0
    assert capsys.readouterr().out.count("converted in memory") == 3
    exported, = (tmp_path / "runs" / "export").rglob("*.onnx")
    meta = read_metadata(exported)
    assert meta["family"] == "yolov9" and meta["params_deploy"] < meta["params"]  # the auxiliary branch is gone


# ------------------------------------------------------------------------------------------ Ultralytics port
PORT = {
    # yolov9t / s / m: ELAN1, AConv, RepNCSPELAN4 (RepCSP x2), SPPELAN, Detect
    "yolov9t": TINY["gelan-t"].replace("DDetect", "Detect"),
    # yolov9e: nn.Identity as row 0, CBLinear / CBFuse inside the main branch (two backbones), ADown, Detect
    "yolov9e": """nc: 3
backbone:
  - [-1, 1, nn.Identity, []]
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [-1, 1, RepNCSPELAN4, [32, 32, 16, 2]]
  - [-1, 1, ADown, [48]]
  - [-1, 1, RepNCSPELAN4, [48, 48, 24, 2]]
  - [1, 1, CBLinear, [[16]]]
  - [3, 1, CBLinear, [[16, 32]]]
  - [5, 1, CBLinear, [[16, 32, 48]]]
  - [0, 1, Conv, [16, 3, 2]]
  - [[6, 7, 8, -1], 1, CBFuse, [[0, 0, 0]]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [[7, 8, -1], 1, CBFuse, [[1, 1]]]
  - [-1, 1, RepNCSPELAN4, [32, 32, 16, 2]]
  - [-1, 1, ADown, [48]]
  - [[8, -1], 1, CBFuse, [[2]]]
  - [-1, 1, RepNCSPELAN4, [48, 48, 24, 2]]
  - [-1, 1, ADown, [64]]
  - [-1, 1, RepNCSPELAN4, [64, 64, 32, 2]]
head:
  - [-1, 1, SPPELAN, [64, 32]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 16], 1, Concat, [1]]
  - [-1, 1, RepNCSPELAN4, [48, 48, 24, 2]]
  - [[22, 19], 1, Detect, [nc]]
""",
}


def port(tmp_path, kind: str, legacy: bool = True):
    """(the YAML Ultralytics stores, the rtdet model its fixture's tensors come from). The stored YAML's
    Detect row is always [nc]; ``legacy=False`` builds the source with the YOLO11 class branch."""
    stored = tmp_path / f"{kind}.yaml"
    stored.write_text(PORT[kind])
    built = PORT[kind] if legacy else PORT[kind].replace("Detect, [nc]", "Detect, [nc, False]")
    return stored, fp16_exact(build_model(yaml.safe_load(built))).eval()


@pytest.mark.parametrize(("kind", "legacy"), [("yolov9t", True), ("yolov9t", False), ("yolov9e", True)])
def test_ultralytics_port_files_give_the_same_detections(tmp_path, kind, legacy):
    stored, source = port(tmp_path, kind, legacy)
    ckpt = save_ultralytics(source, tmp_path / "best.pt", str(stored), names=NAMES, top=YOLO_TOP)
    loaded = load_model(ckpt)
    report = loaded.report
    assert loaded.format == "ultralytics" and loaded.description == f"Ultralytics YOLOv9 ({kind})"
    assert report.ok and report.loaded == report.total == len(source.state_dict())
    assert report.cast == sum(v.is_floating_point() for v in source.state_dict().values())
    assert loaded.model.head.legacy is legacy and loaded.names == NAMES and loaded.inherited == {"imgsz": 320}
    assert same_outputs(outputs(source), outputs(loaded.model))
    assert same_outputs(detections(source), detections(loaded.model))
    assert not any(m == "ultralytics" or m.startswith("ultralytics.") for m in sys.modules)


def test_the_reader_sees_the_ultralytics_port_classes(tmp_path):
    stored, source = port(tmp_path, "yolov9t")
    record = read_checkpoint(save_ultralytics(source, tmp_path / "best.pt", str(stored), top=YOLO_TOP))["model"]
    assert record.cls_name == "ultralytics.nn.tasks.DetectionModel"
    rows = record.attrs["_modules"]["model"].attrs["_modules"]
    block = rows["4"].attrs["_modules"]["cv2"].attrs["_modules"]["0"]
    assert block.cls_name == "ultralytics.nn.modules.block.RepCSP"
    bottleneck = block.attrs["_modules"]["m"].attrs["_modules"]["0"]
    assert bottleneck.attrs["_modules"]["cv1"].cls_name == "ultralytics.nn.modules.conv.RepConv"
    assert rows["22"].cls_name == "ultralytics.nn.modules.head.Detect"
    assert list(module_state_dict(record)) == list(source.state_dict())


def test_ultralytics_port_new_class_count_and_fine_tuning_source(tmp_path):
    stored, source = port(tmp_path, "yolov9e")
    loaded = load_model(save_ultralytics(source, tmp_path / "best.pt", str(stored), top=YOLO_TOP), nc=1)
    head = f"model.{loaded.model.head_index}."
    assert loaded.model.nc == 1 and all(k.startswith(f"{head}cv3.") for k in loaded.reinitialised)


# ------------------------------------------------------------------------------------------ the real models
# Every tensor of the real YAMLs maps and the outputs are the same; parameter counts are the references'
# (shared/reference/targets.md). Seconds per model: two builds of up to 69M parameters and a 64x64 forward.
OFFICIAL_REAL = {"yolov9-t.yaml": 3_717_680, "yolov9-s.yaml": 9_804_512, "yolov9-m.yaml": 32_878_432,
                 "yolov9-c.yaml": 51_182_080, "yolov9-e.yaml": 69_529_664, "gelan-t.yaml": 2_442_640,
                 "gelan-s.yaml": 7_226_208, "gelan-m.yaml": 20_124_000, "gelan-c.yaml": 25_498_752,
                 "gelan-e.yaml": 58_114_432}
PORT_REAL = {"yolov9t.yaml": 2_128_720, "yolov9s.yaml": 7_318_368, "yolov9m.yaml": 20_216_160,
             "yolov9c.yaml": 25_590_912, "yolov9e.yaml": 58_206_592}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OFFICIAL_REAL))
def test_real_official_checkpoints_convert_exactly(tmp_path, name):
    d = official_yaml(name, nc=80)
    source = fp16_exact(build_model(copy.deepcopy(d))).eval()
    loaded = load_model(save_official(source, tmp_path / "model.pt", d, yaml_file=name))
    assert loaded.report.ok and loaded.report.loaded == loaded.report.total == len(source.state_dict())
    assert sum(p.numel() for p in loaded.model.parameters()) == OFFICIAL_REAL[name]
    assert loaded.model.name == name.removesuffix(".yaml")
    assert same_outputs(outputs(source), outputs(loaded.model))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PORT_REAL))
def test_real_ultralytics_port_checkpoints_convert_exactly(tmp_path, name):
    source = fp16_exact(build_model(name, nc=80)).eval()
    loaded = load_model(save_ultralytics(source, tmp_path / "model.pt", name, top=YOLO_TOP))
    assert loaded.report.ok and loaded.report.loaded == loaded.report.total == len(source.state_dict())
    assert sum(p.numel() for p in loaded.model.parameters()) == PORT_REAL[name]
    assert same_outputs(outputs(source), outputs(loaded.model))
