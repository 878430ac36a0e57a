"""Official D-FINE / DEIM-D-FINE checkpoints -> rtdet dfine-* models with the same tensors and outputs.

Every fixture is an rtdet D-FINE written the way the official solver writes one: its tensors under the
official names (research notes, section 10: ``backbone.stem.stem1...``, ``decoder.up``, ``decoder.reg_scale``
as int64, ``decoder.anchors``, ``decoder.valid_mask``, the ``decoder.decoder.up`` / ``reg_scale`` aliases,
``encoder.encoder.0.layers.0.self_attn...``), in the official order (backbone, decoder, encoder), saved as
``{"model": ..., "ema": {"module": ..., "updates": 3}, "last_epoch": 7}``. The reverse mapping below is
written from the official layout, not from the converter's table. N and S are built for real; L and X
are checked on the meta device (no data), converted from an in-memory dict."""

from __future__ import annotations

import collections
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from rtdet import Detector
from rtdet.cli import main
from rtdet.io import WeightLoadError, convert_file, load_model
from rtdet.io.dfine import convert_dfine, is_dfine_checkpoint
from rtdet.io.formats import ConvertContext
from rtdet.nn.builder import load_model_yaml
from rtdet.nn.model import DetectionModel
from rtdet.utils.checkpoint import CheckpointError
from tests.io.iohelpers import same_outputs

pytestmark = pytest.mark.usefixtures("single_thread")
# loading the file's real scalars (up, reg_scale) into a meta model copies nothing, as meant
META_COPY = pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")

# rtdet row -> official module (dfine-*.yaml header comments; N has two encoder levels)
THREE_LEVELS = {0: "backbone.stem", 1: "backbone.stages.0", 2: "backbone.stages.1", 3: "backbone.stages.2",
                4: "backbone.stages.3", 5: "encoder.input_proj.0", 6: "encoder.input_proj.1",
                7: "encoder.input_proj.2", 8: "encoder.encoder.0.layers.0", 9: "encoder.lateral_convs.0",
                13: "encoder.lateral_convs.1", 12: "encoder.fpn_blocks.0", 16: "encoder.fpn_blocks.1",
                17: "encoder.downsample_convs.0.0", 20: "encoder.downsample_convs.1.0", 19: "encoder.pan_blocks.0",
                22: "encoder.pan_blocks.1", 23: "decoder"}
TWO_LEVELS = {0: "backbone.stem", 1: "backbone.stages.0", 2: "backbone.stages.1", 3: "backbone.stages.2",
              4: "backbone.stages.3", 5: "encoder.input_proj.0", 6: "encoder.input_proj.1",
              7: "encoder.encoder.0.layers.0", 8: "encoder.lateral_convs.0", 11: "encoder.fpn_blocks.0",
              12: "encoder.downsample_convs.0.0", 14: "encoder.pan_blocks.0", 15: "decoder"}
# official registration order: DFINE assigns backbone, decoder, encoder; HybridEncoder its lists in this order
ORDER = ["backbone.stem", "backbone.stages", "decoder", "encoder.input_proj", "encoder.encoder",
         "encoder.lateral_convs", "encoder.fpn_blocks", "encoder.downsample_convs", "encoder.pan_blocks"]
AIFI_NAMES = {"ma.": "self_attn.", "fc1.": "linear1.", "fc2.": "linear2."}
OFFICIAL_KEY_COUNTS = {"n": 674, "s": 794, "l": 1173, "x": 1441}  # research notes, section 10


def _rank(module: str) -> tuple[int, str]:
    return next(i for i, p in enumerate(ORDER) if module.startswith(p)), module


def official_state_dict(model: nn.Module, anchors: int = 8400) -> collections.OrderedDict:
    """An rtdet D-FINE's tensors as the official model's ``state_dict()``."""
    rows = TWO_LEVELS if model.head.nl == 2 else THREE_LEVELS
    grouped: dict[str, list] = collections.defaultdict(list)
    for key, value in model.state_dict().items():
        _, row, rest = key.split(".", 2)
        module = rows[int(row)]
        if module == "encoder.encoder.0.layers.0":
            for ours, theirs in AIFI_NAMES.items():
                rest = theirs + rest[len(ours):] if rest.startswith(ours) else rest
        grouped[module].append((f"{module}.{rest}", value))
    out = collections.OrderedDict()
    for module in sorted(grouped, key=_rank):
        for key, value in grouped[module]:
            if key == "decoder.reg_scale":  # an int64 tensor in official files
                value = value.to(torch.int64)
            if key.startswith("decoder.decoder.layers.0.") and "decoder.decoder.up" not in out:
                out["decoder.decoder.up"] = out["decoder.up"]  # the TransformerDecoder holds the parent's
                out["decoder.decoder.reg_scale"] = out["decoder.reg_scale"]
            out[key] = value
            if key == "decoder.reg_scale":  # the buffers follow the two Parameters
                out["decoder.anchors"] = torch.zeros(1, anchors, 4)
                out["decoder.valid_mask"] = torch.ones(1, anchors, 1, dtype=torch.bool)
    return out


def save_official(ema: nn.Module, path: Path, raw: nn.Module | None = None, **extra) -> Path:
    """A training checkpoint of the official solver: the raw model, the EMA, the epoch (and an optimizer)."""
    anchors = 2000 if ema.head.nl == 2 else 8400  # 640 x 640: strides 16, 32 (N) or 8, 16, 32
    model_sd = official_state_dict(raw if raw is not None else ema, anchors)
    params = [v for k, v in model_sd.items() if k.endswith("conv.weight")][:2]
    ckpt = {"model": model_sd, "ema": {"module": official_state_dict(ema, anchors), "updates": 3}, "last_epoch": 7,
            "optimizer": torch.optim.AdamW([nn.Parameter(p.clone()) for p in params]).state_dict(),
            "date": "2024-10-18T12:00:00", **extra}
    torch.save(ckpt, path)
    return path


def dfine_yaml(size: str, nc: int = 3, act: str = "relu", freeze_norm: bool | None = None) -> dict:
    d = copy.deepcopy(load_model_yaml(f"dfine-{size}.yaml"))
    d["nc"] = nc
    d["head"][-1][3][11] = act
    if freeze_norm is not None:
        d["freeze_norm"] = freeze_norm
    return d


def random_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random trainable weights and BN statistics; the frozen constants up / reg_scale stay as built."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


_MODELS: dict[tuple, nn.Module] = {}


def source_model(size: str, seed: int = 0, act: str = "relu") -> nn.Module:
    key = (size, seed, act)
    if key not in _MODELS:
        _MODELS[key] = random_weights(DetectionModel(dfine_yaml(size, act=act)), seed)
    return _MODELS[key]


def outputs(model: nn.Module, size: int = 256) -> torch.Tensor:
    """Eval outputs [B, 300, 6] on a fixed random image (256: enough tokens for 300 queries at N's strides)."""
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(image)


# ------------------------------------------------------------------------------------------ N and S
@pytest.mark.parametrize("size", ["n", "s"])
def test_official_files_map_every_tensor_and_give_the_same_outputs(tmp_path, size):
    source = source_model(size)
    path = save_official(source, tmp_path / f"dfine_{size}_coco.pth", raw=source_model(size, seed=5))
    official = torch.load(path, weights_only=True)["ema"]["module"]
    assert len(official) == OFFICIAL_KEY_COUNTS[size] and official["decoder.reg_scale"].dtype == torch.int64
    assert list(official)[:4] == ["backbone.stem.stem1.conv.weight", "backbone.stem.stem1.bn.weight",
                                  "backbone.stem.stem1.bn.bias", "backbone.stem.stem1.bn.running_mean"]
    loaded = load_model(path)
    report = loaded.report
    n = len(source.state_dict())
    assert loaded.format == "dfine" and report.ok and report.loaded == report.total == n
    assert len(report.dropped) == 4 == len(official) - n and report.cast == 0
    assert sorted(report.dropped) == ["decoder.anchors", "decoder.decoder.reg_scale", "decoder.decoder.up",
                                      "decoder.valid_mask"]
    assert loaded.model.name == f"dfine-{size}" and loaded.model.nc == 3
    assert "D-FINE: ReLU decoder" in loaded.description
    assert loaded.ema and loaded.args == {"imgsz": 640, "last_epoch": 7, "date": "2024-10-18T12:00:00",
                                          "ema_updates": 3}
    assert loaded.inherited == {"imgsz": 640}
    assert loaded.model.head.reg_scale.dtype == torch.float32 and loaded.model.head.reg_scale.item() == 4.0
    new = loaded.model.state_dict()
    assert all(torch.equal(new[k], v) for k, v in source.state_dict().items())
    assert same_outputs(outputs(source), outputs(loaded.model))


def test_the_ema_is_preferred_and_the_raw_weights_are_one_setting_away(tmp_path):
    ema, raw = source_model("n"), source_model("n", seed=5)
    path = save_official(ema, tmp_path / "last.pth", raw=raw)
    assert same_outputs(outputs(ema), outputs(load_model(path).model))
    loaded = load_model(path, prefer_ema=False)
    assert not loaded.ema and "ema_updates" not in loaded.args
    assert same_outputs(outputs(raw), outputs(loaded.model))
    released = tmp_path / "dfine_n_coco.pth"  # a file with the EMA only takes it whatever prefer_ema says
    torch.save({"ema": {"module": official_state_dict(ema, 2000), "updates": 3}}, released)
    assert load_model(released, prefer_ema=False).ema
    model_only = tmp_path / "model_only.pth"
    torch.save({"model": official_state_dict(raw, 2000)}, model_only)
    loaded = load_model(model_only)
    assert not loaded.ema and loaded.args == {"imgsz": 640} and same_outputs(outputs(raw), outputs(loaded.model))


def test_deim_files_get_the_silu_decoder(tmp_path):
    """Same tensors, another decoder activation: the file name, or format=deim, says DEIM."""
    deim = source_model("n", act="silu")
    named = save_official(deim, tmp_path / "deim_dfine_hgnetv2_n_coco_160e.pth")
    loaded = load_model(named)
    assert loaded.format == "dfine" and loaded.model.name == "deim-dfine-n"
    assert "file name says deim" in loaded.description
    assert loaded.model.yaml["head"][-1][3][11] == "silu" and same_outputs(outputs(deim), outputs(loaded.model))
    unnamed = save_official(deim, tmp_path / "best.pth")
    as_dfine = load_model(unnamed)
    assert as_dfine.model.name == "dfine-n" and not same_outputs(outputs(deim), outputs(as_dfine.model))
    forced = load_model(unnamed, format="deim")
    assert forced.format == "deim" and same_outputs(outputs(deim), outputs(forced.model))
    relu = load_model(named, format="dfine-relu")
    assert relu.model.name == "dfine-n" and relu.model.yaml["head"][-1][3][11] == "relu"


# ------------------------------------------------------------------------------------------ L and X on meta
def meta_official(size: str, freeze_norm: bool | None = None, nc: int = 80) -> tuple[nn.Module, dict]:
    """A model built on the meta device and its official state dict (the scalars real, for reading)."""
    d = dfine_yaml(size, nc=nc, freeze_norm=freeze_norm)
    with torch.device("meta"):
        model = DetectionModel(d)
    sd = official_state_dict(model)
    sd["decoder.up"] = sd["decoder.decoder.up"] = torch.tensor([0.5])
    sd["decoder.reg_scale"] = sd["decoder.decoder.reg_scale"] = torch.tensor([d["head"][-1][3][8]])
    return model, sd


@META_COPY
@pytest.mark.parametrize(("size", "freeze_norm", "name", "act", "file"), [
    ("l", None, "dfine-l", "relu", "dfine_l_coco.pth"),
    ("l", False, "deim-dfine-l", "silu", "best.pth"),  # trained BatchNorms: DEIM
    ("x", None, "dfine-x", "relu", "dfine_x_obj2coco.pth"),
    ("x", False, "deim-dfine-x", "silu", "deim_dfine_hgnetv2_x_coco_50e.pth"),
])
def test_large_sizes_and_deims_trained_batchnorms_are_recognised(size, freeze_norm, name, act, file):
    model, sd = meta_official(size, freeze_norm)
    if size in OFFICIAL_KEY_COUNTS and freeze_norm is None:
        assert len(sd) == OFFICIAL_KEY_COUNTS[size]
    assert is_dfine_checkpoint({"model": sd})
    with torch.device("meta"):
        converted = convert_dfine({"model": sd}, ConvertContext(file))
    m = converted.model
    assert m.name == name and m.yaml["head"][-1][3][11] == act and m.nc == 80
    assert m.yaml["freeze_norm"] is (freeze_norm is None) and m.yaml["use_lab"] is False
    assert m.yaml["head"][-1][3][8] == (8 if size == "x" else 4)
    report = converted.report
    assert report.ok and report.loaded == report.total == len(model.state_dict()) == len(sd) - 4
    assert converted.args == {"imgsz": 640}


@META_COPY
def test_size_inference_tells_the_five_sizes_apart():
    for size in ("n", "s", "m"):
        _, sd = meta_official(size, nc=3)
        with torch.device("meta"):
            converted = convert_dfine({"model": sd}, ConvertContext("model.pth"))
        assert converted.model.name == f"dfine-{size}" and converted.model.nc == 3 and converted.report.ok


# ------------------------------------------------------------------------------------------ errors
def test_damaged_and_unknown_files_are_clear_errors(tmp_path):
    source = source_model("n")
    good = official_state_dict(source, 2000)

    def load(sd: dict, name: str = "damaged.pth"):
        torch.save({"model": sd}, tmp_path / name)
        return load_model(tmp_path / name)

    extra = collections.OrderedDict(good)
    extra["decoder.decoder.layers.0.extra.weight"] = torch.zeros(3)
    with pytest.raises(WeightLoadError, match=r"first bad key model\.15\.decoder\.layers\.0\.extra\.weight \(in the "
                                              r"checkpoint(.|\n)*first bad key is decoder\.decoder\.layers\.0\.extra"
                                              r"\.weight in the file"):
        load(extra)
    cut = collections.OrderedDict(good)
    cut["encoder.fpn_blocks.0.cv4.conv.weight"] = cut["encoder.fpn_blocks.0.cv4.conv.weight"][:5]
    with pytest.raises(WeightLoadError, match=r"model\.11\.cv4\.conv\.weight \(shape \(5, \d+, 1, 1\) in the "
                                              r"checkpoint(.|\n)*first bad key is encoder\.fpn_blocks\.0\.cv4\.conv"
                                              r"\.weight in the file"):
        load(cut)
    missing = collections.OrderedDict(good)
    del missing["encoder.encoder.0.layers.0.linear1.bias"]
    with pytest.raises(WeightLoadError, match=r"model\.7\.fc1\.bias \(in the model, the checkpoint does not provide"):
        load(missing)
    assert not load_model(tmp_path / "damaged.pth", strict=False).report.ok
    alias = collections.OrderedDict(good)
    alias["decoder.decoder.reg_scale"] = torch.tensor([8])
    with pytest.raises(WeightLoadError, match=r"decoder\.decoder\.reg_scale \(\[8\]\) differs from decoder\.reg_scale"):
        load(alias)
    other = collections.OrderedDict((k, v) for k, v in good.items() if not k.startswith("backbone.stages.2.blocks.1."))
    with pytest.raises(CheckpointError, match=r"a D-FINE of no official size: .*\(\(16, 64, 1, 3\), \(32, 256, 1, 3\), "
                                              r"\(64, 512, 1, 3\)"):
        load(other)
    empty = collections.OrderedDict(good)
    empty["decoder.reg_scale"] = empty["decoder.decoder.reg_scale"] = torch.zeros(0, dtype=torch.int64)
    with pytest.raises(CheckpointError, match=r"decoder\.reg_scale has shape \(0,\); D-FINE stores one number"):
        load(empty)
    text = collections.OrderedDict(good)
    text["decoder.up"] = "0.5"
    with pytest.raises(CheckpointError, match=r"model\['decoder\.up'\] is a str, expected a tensor"):
        load(text)
    rtdetrv2 = {"backbone.conv1.conv1_1.conv.weight": torch.zeros(32, 3, 3, 3),
                "decoder.dec_bbox_head.0.layers.0.weight": torch.zeros(4, 4)}
    with pytest.raises(CheckpointError, match="not a checkpoint rtdet knows how to convert"):
        load(rtdetrv2, "deim_r18vd_120e_coco.pth")
    with pytest.raises(CheckpointError, match="does not look like a official DEIM-D-FINE"):
        load_model(tmp_path / "deim_r18vd_120e_coco.pth", format="deim")


def test_entry_points_take_official_files(tmp_path, capsys):
    source = source_model("n")
    path = save_official(source, tmp_path / "dfine_n_coco.pth")
    out, loaded = convert_file(path)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["converted_from"]["format"] == "dfine" and ckpt["args"] == {"imgsz": 640}
    assert ckpt["converted_from"]["weights"] == "ema"
    assert ckpt["converted_from"]["train_args"] == {"imgsz": 640, "last_epoch": 7, "date": "2024-10-18T12:00:00",
                                                    "ema_updates": 3}
    again = load_model(out)
    assert again.format == "rtdet" and same_outputs(outputs(source), outputs(again.model))
    assert main(["convert", f"source={path}", f"to={tmp_path / 'again.pt'}", "format=dfine"]) == 0
    n = len(source.state_dict())
    printed = capsys.readouterr().out
    assert f"official D-FINE layout: loaded {n}/{n} tensors; missing 0; unexpected 0; dropped 4" in printed
    results = Detector(str(path)).predict(np.full((48, 64, 3), 90, np.uint8), conf=0.0, max_det=5)
    assert results[0].boxes.shape == (5, 4)  # the 640 x 640 input the file was validated at, letterboxed
