"""mmdetection RTMDet checkpoints -> rtdet RTMDet models with the same tensors and the same outputs.

Every fixture is an rtdet RTMDet model written the way mmengine writes an mmdetection one: its tensors in
mmdetection's names and order (``backbone.stem.0.conv.weight`` ... ``bbox_head.rtm_reg.2.bias``, fp32), a
``meta`` with the config as Python text (``Config.pretty_text``) and ``dataset_meta``; a training checkpoint
adds the message hub (mmengine ``HistoryBuffer`` objects, a class defined in a throw-away module), the
optimizer, the schedulers and EMAHook's ``ema_state_dict``; a published one (publish_model.py) keeps
``meta`` and ``state_dict`` in PyTorch's pre-1.6 file format."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from rtdet import Detector, build_model
from rtdet.cli import main
from rtdet.io import WeightLoadError, convert_file, load_model
from rtdet.io.mmdet import MMDET_RTMDET_KEYS, STANDARD_SCALES, read_config_text, rtmdet_yaml, scaled_arch
from rtdet.io.safe_pickle import ForeignObject, read_torch_file
from rtdet.nn.builder import load_model_yaml
from rtdet.utils.checkpoint import CheckpointError
from tests.io.iohelpers import define_class, random_weights, same_outputs, throwaway_modules
from tests.nn.test_rtmdet_models import mmdet_keys

pytestmark = pytest.mark.usefixtures("single_thread")

# mmdetection's modules in the order the detector registers them (cspnext.py, cspnext_pafpn.py, rtmdet_head.py)
# and the rtdet row each one is (docs/families.md, "mmdetection checkpoints: key correspondence").
MMDET_MODULES = [
    ("backbone.stem", 1), ("backbone.stage1.0", 2), ("backbone.stage1.1", 3), ("backbone.stage2.0", 4),
    ("backbone.stage2.1", 5), ("backbone.stage3.0", 6), ("backbone.stage3.1", 7), ("backbone.stage4.0", 8),
    ("backbone.stage4.1", 9), ("backbone.stage4.2", 10),
    ("neck.reduce_layers.0", 11), ("neck.reduce_layers.1", 15), ("neck.top_down_blocks.0", 14),
    ("neck.top_down_blocks.1", 18), ("neck.downsamples.0", 19), ("neck.downsamples.1", 22),
    ("neck.bottom_up_blocks.0", 21), ("neck.bottom_up_blocks.1", 24),
    ("neck.out_convs.0", 25), ("neck.out_convs.1", 26), ("neck.out_convs.2", 27), ("bbox_head", 28),
]
CLASSES = ("person", "bicycle", "car")


def mmdet_state_dict(model: nn.Module) -> collections.OrderedDict:
    """An rtdet RTMDet's tensors under mmdetection's names, in mmdetection's order (module by module as the
    detector registers them; inside a module the order is the same in both)."""
    prefix = {row: name for name, row in MMDET_MODULES}
    rank = {name: i for i, (name, _) in enumerate(MMDET_MODULES)}
    items = []
    for position, (key, value) in enumerate(model.state_dict().items()):
        _, row, rest = key.split(".", 2)
        name = prefix[int(row)]
        items.append((rank[name], position, f"{name}.{rest}", value))
    return collections.OrderedDict((key, value) for *_, key, value in sorted(items, key=lambda t: t[:2]))


def mmdet_config(deepen: float, widen: float, nc: int, *, neck_blocks: int = 1, exp_on_reg: bool = False,
                 head: str = "RTMDetSepBNHead") -> str:
    """The config as ``Config.pretty_text`` dumps an mmdetection 3.3 rtmdet_*_8xb32-300e_coco.py (abridged)."""
    widths = [int(c * widen) for c in (256, 512, 1024)]
    return f"""auto_scale_lr = dict(base_batch_size=16, enable=False)
backend_args = None
base_lr = 0.004
custom_hooks = [
    dict(
        ema_type='ExpMomentumEMA',
        momentum=0.0002,
        priority=49,
        type='EMAHook',
        update_buffers=True),
    dict(
        switch_epoch=280,
        switch_pipeline=[
            dict(backend_args=None, type='LoadImageFromFile'),
        ],
        type='PipelineSwitchHook'),
]
data_root = 'data/coco/'
dataset_type = 'CocoDataset'
default_scope = 'mmdet'
img_scales = [
    (
        640,
        640,
    ),
    (
        320,
        320,
    ),
]
max_epochs = 300
model = dict(
    backbone=dict(
        act_cfg=dict(inplace=True, type='SiLU'),
        arch='P5',
        channel_attention=True,
        deepen_factor={deepen},
        expand_ratio=0.5,
        init_cfg=dict(
            checkpoint=
            'https://download.openmmlab.com/mmdetection/v3.0/rtmdet/cspnext_rsb_pretrain/cspnext-tiny_imagenet_600e.pth',
            prefix='backbone.',
            type='Pretrained'),
        norm_cfg=dict(type='SyncBN'),
        type='CSPNeXt',
        widen_factor={widen}),
    bbox_head=dict(
        act_cfg=dict(inplace=True, type='SiLU'),
        anchor_generator=dict(offset=0, strides=[
            8,
            16,
            32,
        ], type='MlvlPointGenerator'),
        bbox_coder=dict(type='DistancePointBBoxCoder'),
        exp_on_reg={exp_on_reg},
        feat_channels={widths[0]},
        in_channels={widths[0]},
        loss_bbox=dict(loss_weight=2.0, type='GIoULoss'),
        loss_cls=dict(
            beta=2.0,
            loss_weight=1.0,
            type='QualityFocalLoss',
            use_sigmoid=True),
        norm_cfg=dict(type='SyncBN'),
        num_classes={nc},
        pred_kernel_size=1,
        share_conv=True,
        stacked_convs=2,
        type='{head}',
        with_objectness=False),
    data_preprocessor=dict(
        batch_augments=None,
        bgr_to_rgb=False,
        mean=[
            103.53,
            116.28,
            123.675,
        ],
        std=[
            57.375,
            57.12,
            58.395,
        ],
        type='DetDataPreprocessor'),
    neck=dict(
        act_cfg=dict(inplace=True, type='SiLU'),
        expand_ratio=0.5,
        in_channels=[
            {widths[0]},
            {widths[1]},
            {widths[2]},
        ],
        norm_cfg=dict(type='SyncBN'),
        num_csp_blocks={neck_blocks},
        out_channels={widths[0]},
        type='CSPNeXtPAFPN'),
    test_cfg=dict(
        max_per_img=300,
        min_bbox_size=0,
        nms=dict(iou_threshold=0.65, type='nms'),
        nms_pre=30000,
        score_thr=0.001),
    train_cfg=dict(
        allowed_border=-1,
        assigner=dict(topk=13, type='DynamicSoftLabelAssigner'),
        debug=False,
        pos_weight=-1),
    type='RTMDet')
optim_wrapper = dict(
    optimizer=dict(lr=0.004, type='AdamW', weight_decay=0.05),
    paramwise_cfg=dict(bias_decay_mult=0, bypass_duplicate=True, norm_decay_mult=0),
    type='OptimWrapper')
test_pipeline = [
    dict(backend_args=None, type='LoadImageFromFile'),
    dict(keep_ratio=True, scale=(
        640,
        640,
    ), type='Resize'),
    dict(pad_val=dict(img=(
        114,
        114,
        114,
    )), size=(
        640,
        640,
    ), type='Pad'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        meta_keys=(
            'img_id',
            'img_path',
            'ori_shape',
            'img_shape',
            'scale_factor',
        ),
        type='PackDetInputs'),
]
work_dir = './work_dirs/rtmdet_tiny_8xb32-300e_coco'
"""


def scale_config(scale: str, nc: int = 80, **kw) -> str:
    deepen, widen, exp_on_reg = STANDARD_SCALES[scale]
    return mmdet_config(deepen, widen, nc, neck_blocks=max(round(3 * deepen), 1), exp_on_reg=exp_on_reg, **kw)


def meta(config: str | None, classes=CLASSES) -> dict:
    """runner.save_checkpoint's meta (publish_model.py keeps it as is)."""
    out = {"epoch": 300, "iter": 110_000, "seed": 1234, "experiment_name": "rtmdet_tiny_8xb32-300e_coco_20220902",
           "time": "20220902_112414", "mmengine_version": "0.7.0",
           "dataset_meta": {"classes": classes, "palette": [(220, 20, 60), (119, 11, 32), (0, 0, 142)][:len(classes)]}}
    if config is not None:
        out["cfg"] = config
    return out


def save_mmdet(model: nn.Module, path: Path, config: str | None, *, layout: str = "published",
               raw: nn.Module | None = None, classes=CLASSES) -> Path:
    """Write ``model`` (an rtdet RTMDet) as an mmdetection checkpoint.

    layout: "published" (publish_model.py: meta + state_dict, pre-1.6 file format), or "training" (an
    epoch_*.pth of a run with EMAHook: state_dict = the EMA = ``model``, ema_state_dict = the raw weights
    ``raw`` under 'module.' after 'steps', the message hub, optimizer and schedulers)."""
    ckpt = {"meta": meta(config, classes), "state_dict": mmdet_state_dict(model)}
    if layout == "published":
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)
        return path
    assert layout == "training", layout
    source = mmdet_state_dict(raw if raw is not None else model)
    ckpt["ema_state_dict"] = collections.OrderedDict(
        [("steps", torch.tensor(110_000)), *((f"module.{k}", v.clone()) for k, v in source.items())])
    params = [v for k, v in ckpt["state_dict"].items() if k.endswith("weight")][:3]
    ckpt["optimizer"] = torch.optim.AdamW([nn.Parameter(p.clone()) for p in params], lr=0.004).state_dict()
    ckpt["param_schedulers"] = [{"start_factor": 1e-5, "by_epoch": False, "begin": 0, "end": 1000, "last_step": 999},
                                {"eta_min": 0.0002, "begin": 150, "end": 300, "T_max": 150, "last_step": 299}]
    with throwaway_modules("mmengine.logging.history_buffer") as mods:
        history = define_class(mods["mmengine.logging.history_buffer"], "HistoryBuffer", base=object)

        def buffer(values):
            b = history()
            b.max_length = 1000000
            b._log_history, b._count_history = np.array(values), np.ones(len(values))
            return b

        ckpt["message_hub"] = {"log_scalars": {"train/lr": buffer([0.004, 0.004]), "train/loss": buffer([1.2, 1.1])},
                               "runtime_info": {"epoch": 300, "iter": 110_000, "max_epochs": 300},
                               "resumed_keys": {"epoch": False, "iter": False}}
        torch.save(ckpt, path)
    return path



def source_model(scale: str, seed: int = 0, nc: int = 80) -> nn.Module:
    """The rtdet model a fixture's tensors come from."""
    return random_weights(build_model(f"rtmdet-{scale}.yaml", nc=nc), seed)


def image(size: int = 64) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def outputs(model, size: int = 64):
    with torch.no_grad():
        return model.eval()(image(size))


def detections(model, size: int = 64):
    out = model.head.postprocess(outputs(model, size), (size, size), conf=0.0, iou=0.65, max_det=50)
    return [(d.boxes, d.scores, d.labels) for d in out]


# ------------------------------------------------------------------------------------------ tiny and s
@pytest.mark.parametrize("scale", ["tiny", "s"])
@pytest.mark.parametrize("layout", ["published", "training"])
def test_mmdet_files_map_every_tensor_and_give_the_same_outputs(tmp_path, scale, layout):
    source = source_model(scale, nc=3)
    path = save_mmdet(source, tmp_path / f"rtmdet_{scale}.pth", scale_config(scale, nc=3), layout=layout)
    loaded = load_model(path)
    report = loaded.report
    assert loaded.format == "mmdet" and report.ok and report.loaded == report.total == len(source.state_dict())
    assert report.cast == 0 and not report.dropped  # fp32, every tensor kept
    assert loaded.model.name == f"rtmdet-{scale}" and "architecture from the config in meta" in loaded.description
    assert loaded.names == dict(enumerate(CLASSES)) and loaded.inherited == {"imgsz": 640}
    assert loaded.ema  # the config trains with EMAHook: its state_dict is the EMA
    assert loaded.args["mmdet_config"]["model"]["backbone"]["widen_factor"] == STANDARD_SCALES[scale][1]
    assert loaded.model.yaml["train_pipeline"] == load_model_yaml(f"rtmdet-{scale}.yaml")["train_pipeline"]
    assert same_outputs(outputs(source), outputs(loaded.model))
    assert same_outputs(detections(source), detections(loaded.model))
    assert not any(m.split(".")[0] in ("mmengine", "mmdet", "mmcv") for m in sys.modules)


def test_the_reader_sees_mmdetections_structure(tmp_path):
    source = source_model("tiny")
    published = save_mmdet(source, tmp_path / "published.pth", scale_config("tiny"))
    training = save_mmdet(source, tmp_path / "epoch_300.pth", scale_config("tiny"), layout="training")
    ckpt, how = read_torch_file(published)
    assert how == "weights_only" and list(ckpt) == ["meta", "state_dict"]  # a pre-1.6 file of plain data
    assert list(ckpt["state_dict"]) == mmdet_keys("tiny")  # mmdetection's names and order (tests/nn)
    assert {v.dtype for k, v in ckpt["state_dict"].items() if not k.endswith("num_batches_tracked")} == {torch.float32}
    ckpt, how = read_torch_file(training)
    assert how == "restricted"  # the message hub pickles mmengine's HistoryBuffer
    history = ckpt["message_hub"]["log_scalars"]["train/lr"]
    assert isinstance(history, ForeignObject) and history.cls_name == "mmengine.logging.history_buffer.HistoryBuffer"
    assert list(ckpt["ema_state_dict"])[:2] == ["steps", "module.backbone.stem.0.conv.weight"]
    assert all(MMDET_RTMDET_KEYS.target(k) in source.state_dict() for k in mmdet_keys("tiny"))


def test_the_ema_is_preferred_and_the_raw_weights_are_one_setting_away(tmp_path):
    ema, raw = source_model("tiny", nc=3), source_model("tiny", seed=7, nc=3)
    path = save_mmdet(ema, tmp_path / "epoch_300.pth", scale_config("tiny", nc=3), layout="training", raw=raw)
    loaded = load_model(path)
    assert loaded.ema and same_outputs(outputs(ema), outputs(loaded.model))
    loaded = load_model(path, prefer_ema=False)
    assert not loaded.ema and same_outputs(outputs(raw), outputs(loaded.model))
    assert loaded.report.loaded == loaded.report.total  # 'steps' is the EMA's counter, not a model tensor


# ------------------------------------------------------------------------------------------ without a config
# A small RTMDet of no mmdetection scale (widen 0.125): rtdet builds the rows itself.
MICRO = (0.167, 0.125)


def micro_model(nc: int = 3) -> nn.Module:
    return random_weights(build_model(rtmdet_yaml(scaled_arch(*MICRO, nc=nc))))


def test_a_file_without_a_config_gets_the_scale_from_its_tensors(tmp_path):
    source = source_model("tiny", nc=3)
    loaded = load_model(save_mmdet(source, tmp_path / "rtmdet_tiny.pth", None))
    assert loaded.model.name == "rtmdet-tiny" and "inferred from tensor shapes" in loaded.description
    assert "exp_on_reg=False as mmdetection's rtmdet-tiny config" in loaded.description
    assert not loaded.ema and loaded.names == dict(enumerate(CLASSES)) and loaded.inherited == {}
    assert same_outputs(outputs(source), outputs(loaded.model))
    micro = micro_model()
    loaded = load_model(save_mmdet(micro, tmp_path / "my_rtmdet.pth", None))
    assert loaded.model.name == "my_rtmdet" and loaded.report.ok and same_outputs(outputs(micro), outputs(loaded.model))
    assert "not stored in the tensors" in loaded.description
    with_config = load_model(save_mmdet(micro, tmp_path / "cfg.pth", mmdet_config(*MICRO, 3)))
    assert with_config.model.yaml["backbone"] == loaded.model.yaml["backbone"]
    assert same_outputs(outputs(micro), outputs(with_config.model))


def test_the_generated_rows_are_the_builtin_yamls():
    """From mmdetection's factors, rtdet's rows for the five scales are exactly cfg/models/rtmdet/*.yaml (whose
    parameter counts tests/nn/test_rtmdet_models.py checks to the digit), exp_on_reg included."""
    for scale, (deepen, widen, exp_on_reg) in STANDARD_SCALES.items():
        builtin = load_model_yaml(f"rtmdet-{scale}.yaml")
        generated = rtmdet_yaml(scaled_arch(deepen, widen, exp_on_reg=exp_on_reg))
        assert (generated["backbone"], generated["head"]) == (builtin["backbone"], builtin["head"]), scale
        assert generated["batchnorm"] == builtin["batchnorm"]


# ------------------------------------------------------------------------------------------ class count, errors
def test_a_new_class_count_reinitialises_only_the_head(tmp_path, caplog):
    source = source_model("tiny")
    caplog.set_level("INFO", logger="rtdet")
    loaded = load_model(save_mmdet(source, tmp_path / "rtmdet_tiny.pth", scale_config("tiny"), classes=()), nc=5)
    assert loaded.model.nc == 5 and loaded.reinitialised
    assert {k.rsplit(".", 1)[0] for k in loaded.reinitialised} == {f"model.28.rtm_cls.{lv}" for lv in range(3)}
    new = loaded.model.state_dict()
    assert all(torch.equal(new[k], v) for k, v in source.state_dict().items() if k not in loaded.reinitialised)
    assert "80 -> 5 classes" in caplog.text


def test_a_real_mismatch_fails_naming_the_first_bad_key(tmp_path):
    source = source_model("tiny", nc=3)
    wrong = save_mmdet(source, tmp_path / "wrong.pth", scale_config("s", nc=3))  # s's config, tiny's tensors
    with pytest.raises(WeightLoadError, match=r"first bad key model\.1\.0\.conv\.weight \(shape \(12, 3, 3, 3\) in the "
                                              r"checkpoint, \(16, 3, 3, 3\) in the model\)") as err:
        load_model(wrong)
    assert str(wrong) in str(err.value) and "mmdetection RTMDet layout" in str(err.value)
    assert load_model(wrong, strict=False).report.mismatched
    sd = mmdet_state_dict(source)
    sd["bbox_head.cls_convs.2.0.conv.weight"] = sd["bbox_head.cls_convs.2.0.conv.weight"] + 1  # no longer shared
    torch.save({"meta": meta(scale_config("tiny", nc=3)), "state_dict": sd}, tmp_path / "unshared.pth")
    with pytest.raises(WeightLoadError, match=r"bbox_head\.cls_convs\.2\.0\.conv\.weight differs from "
                                              r"bbox_head\.cls_convs\.0\.0\.conv\.weight"):
        load_model(tmp_path / "unshared.pth")


def test_heads_and_files_rtdet_does_not_convert_are_clear_errors(tmp_path):
    source = source_model("tiny", nc=3)
    ins = save_mmdet(source, tmp_path / "rtmdet-ins.pth", scale_config("tiny", nc=3, head="RTMDetInsSepBNHead"))
    with pytest.raises(CheckpointError, match="model.bbox_head is a 'RTMDetInsSepBNHead'; rtdet converts RTMDet"):
        load_model(ins)
    sd = mmdet_state_dict(source)
    sd["bbox_head.rtm_kernel.0.weight"] = torch.zeros(169, 96, 1, 1)
    torch.save({"meta": meta(None), "state_dict": sd}, tmp_path / "ins.pth")
    with pytest.raises(CheckpointError, match=r"bbox_head\.rtm_kernel\.0\.weight belongs to a RTMDet-Ins"):
        load_model(tmp_path / "ins.pth")
    ok = save_mmdet(source, tmp_path / "ok.pth", scale_config("tiny", nc=3))
    with pytest.raises(CheckpointError, match="does not look like a Ultralytics"):
        load_model(ok, format="ultralytics")
    assert load_model(ok, format="mmdet").format == "mmdet"
    broken = scale_config("tiny", nc=3).replace("type='RTMDet')", "type='RTMDet'")  # unbalanced: not Python
    torch.save({"meta": meta(broken), "state_dict": mmdet_state_dict(source)}, tmp_path / "broken.pth")
    loaded = load_model(tmp_path / "broken.pth")  # the tensors still say what the model is
    assert "the config text in meta is not Python" in loaded.description and loaded.report.ok


def test_entry_points_take_mmdet_files(tmp_path, capsys):
    source = source_model("tiny", nc=3)
    path = save_mmdet(source, tmp_path / "rtmdet_tiny_8xb32-300e_coco.pth", scale_config("tiny", nc=3))
    det = Detector(str(path))
    assert det.names == dict(enumerate(CLASSES))
    results = det.predict(np.full((48, 64, 3), 90, np.uint8), conf=0.0, max_det=5)
    assert results[0].boxes.shape == (5, 4)
    out, loaded = convert_file(path)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["converted_from"]["format"] == "mmdet" and ckpt["args"] == {"imgsz": 640}
    assert ckpt["converted_from"]["weights"] == "ema"
    assert same_outputs(outputs(source), outputs(load_model(out).model))
    assert main(["convert", f"source={path}", f"to={tmp_path / 'again.pt'}", "format=mmdet"]) == 0
    n = len(source.state_dict())
    assert f"mmdetection RTMDet layout: loaded {n}/{n} tensors" in capsys.readouterr().out


def test_val_predict_and_export_take_an_mmdet_file(tmp_path, capsys):
    from rtdet.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=2, n_val=2, imgsz=64, n_classes=2, size_range=(0.3, 0.6),
                                  max_objects=2)
    path = save_mmdet(source_model("tiny", nc=2), tmp_path / "rtmdet_tiny.pth", scale_config("tiny", nc=2),
                      classes=("a", "b"))
    common = [f"project={tmp_path / 'runs'}", "workers=0", "device=cpu", "imgsz=64"]
    assert main(["val", f"model={path}", f"data={data}", *common]) == 0
    assert "mmdetection RTMDet" in capsys.readouterr().out
    assert (tmp_path / "runs" / "val" / "val" / "predictions.json").is_file()
    assert main(["predict", f"model={path}", f"source={data.parent / 'images' / 'val'}", *common]) == 0
    out = capsys.readouterr().out
    assert "converted in memory" in out and "2 image(s) processed" in out
    assert main(["export", f"model={path}", f"project={tmp_path / 'runs'}", "imgsz=64", "device=cpu"]) == 0
    exported = list((tmp_path / "runs" / "export").rglob("*.onnx"))
    assert len(exported) == 1 and "converted in memory" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["m", "l", "x"])
def test_real_mmdet_checkpoints_of_every_scale_convert_exactly(tmp_path, scale):
    source = source_model(scale)
    loaded = load_model(save_mmdet(source, tmp_path / "model.pth", scale_config(scale)))
    assert loaded.model.name == f"rtmdet-{scale}" and loaded.report.loaded == len(source.state_dict())
    assert loaded.model.head.exp_on_reg == STANDARD_SCALES[scale][2]
    assert same_outputs(outputs(source), outputs(loaded.model))
    config_less = load_model(save_mmdet(source, tmp_path / "bare.pth", None))
    assert config_less.model.yaml["head"] == loaded.model.yaml["head"]  # exp_on_reg as the scale's config
    assert same_outputs(outputs(source), outputs(config_less.model))



class _Payload:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True


def test_a_pre_1_6_file_that_pickles_objects_or_code_is_refused(tmp_path):
    """Old-format files are read by torch.load(weights_only=True) alone: plain data loads (above), a payload
    that would call a function is refused with the file's name, and the function never runs."""
    path = tmp_path / "payload.pth"
    torch.save({"meta": {}, "state_dict": {"x": _Payload()}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"payload\.pth: not a torch checkpoint .* pre-1\.6 format with objects"):
        load_model(path)
    assert not _Payload.ran


def test_the_config_text_is_read_not_run():
    """Only literals are read from meta['cfg']: calls and names stay text, nothing is imported or called."""
    config, note = read_config_text("model = dict(type='RTMDet', backbone=dict(deepen_factor=0.33, arch=-1),\n"
                                    "    hook=__import__('os').system('touch /tmp/rtdet-pwned'), lazy=mmdet.CSPNeXt)\n"
                                    "x = [1, (2, 3), {'k': ...}]\n")
    assert note == "config text in meta" and not Path("/tmp/rtdet-pwned").exists()
    assert config == {"model": {"type": "RTMDet", "backbone": {"deepen_factor": 0.33, "arch": -1},
                                "hook": "<__import__('os').system('touch /tmp/rtdet-pwned')>", "lazy": "mmdet.CSPNeXt"},
                      "x": [1, (2, 3), {"k": "Ellipsis"}]}
    assert read_config_text("model = dict(") == (None, "the config text in meta is not Python (SyntaxError: '(' was "
                                                      "never closed (<unknown>, line 1))")


def test_the_config_text_parse_is_bounded():
    """A config text larger than any real config is not parsed (its syntax tree would be ~100x its size)."""
    from rtdet.io.mmdet import MAX_CONFIG_CHARS

    config, note = read_config_text("x = [" + "1," * MAX_CONFIG_CHARS + "]\n")
    assert config is None and "more than a config holds" in note
    config, note = read_config_text("x = " + "[" * 5000 + "]" * 5000)  # nested past the parser's limit
    assert config is None and "not Python" in note
