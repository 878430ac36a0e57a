"""Official RT-DETRv2 / DEIM-RTv2 checkpoints -> rtdet rtdetrv2-* / deim-rtv2-* models with the same tensors and
outputs.

Every fixture is an rtdet model written the way the official solver writes one: its tensors under the official
names (research notes, section 10: ``backbone.conv1.conv1_1...``, ``backbone.res_layers.<i>...``,
``encoder.encoder.0.layers.0.self_attn...``, ``decoder.anchors`` and ``decoder.valid_mask`` first in the
decoder), in the official order (backbone, decoder, encoder), saved as ``{"model": ..., "ema": {"module": ...,
"updates": 3}, "last_epoch": 7}``. The reverse mapping below is written from the official layout (the YAML
header comments), not from the converter's table. DEIM-RTv2-R18 is built for real (slow tests: 20M parameters); every
model is checked on the meta device (no data), converted from an in-memory dict, in the default suite."""

from __future__ import annotations

import collections
import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from rtdet.io import WeightLoadError, convert_file, load_model
from rtdet.io.formats import ConvertContext
from rtdet.io.rtdetrv2 import MODELS, convert_rtdetrv2, is_rtdetrv2_checkpoint, points_per_level
from rtdet.nn.builder import load_model_yaml
from rtdet.nn.model import DetectionModel
from rtdet.utils.checkpoint import CheckpointError
from tests.io.iohelpers import random_weights, same_outputs

pytestmark = pytest.mark.usefixtures("single_thread")
META_COPY = pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")

# rtdet row -> official module (the YAML header comments)
ROWS = {0: "backbone.conv1", 1: "backbone.res_layers.0", 2: "backbone.res_layers.1", 3: "backbone.res_layers.2",
        4: "backbone.res_layers.3", 5: "encoder.input_proj.0", 6: "encoder.input_proj.1", 7: "encoder.input_proj.2",
        8: "encoder.encoder.0.layers.0", 9: "encoder.lateral_convs.0", 13: "encoder.lateral_convs.1",
        12: "encoder.fpn_blocks.0", 16: "encoder.fpn_blocks.1", 17: "encoder.downsample_convs.0",
        20: "encoder.downsample_convs.1", 19: "encoder.pan_blocks.0", 22: "encoder.pan_blocks.1", 23: "decoder"}
# official registration order: the model assigns backbone, decoder, encoder; HybridEncoder its lists in this order
ORDER = ["backbone.conv1", "backbone.res_layers", "decoder", "encoder.input_proj", "encoder.encoder",
         "encoder.lateral_convs", "encoder.fpn_blocks", "encoder.downsample_convs", "encoder.pan_blocks"]
AIFI_NAMES = {"ma.": "self_attn.", "fc1.": "linear1.", "fc2.": "linear2."}
OFFICIAL_KEY_COUNTS = {"deim-rtv2-r18": 540, "deim-rtv2-r50": 801}  # research notes, section 10


def _rank(module: str) -> tuple[int, str]:
    return next(i for i, p in enumerate(ORDER) if module.startswith(p)), module


def official_state_dict(model: nn.Module, anchors: int = 8400) -> collections.OrderedDict:
    """An rtdet RT-DETRv2's tensors as the official model's ``state_dict()``."""
    grouped: dict[str, list] = collections.defaultdict(list)
    for key, value in model.state_dict().items():
        _, row, rest = key.split(".", 2)
        module = ROWS[int(row)]
        if module == "encoder.encoder.0.layers.0":
            for ours, theirs in AIFI_NAMES.items():
                rest = theirs + rest[len(ours):] if rest.startswith(ours) else rest
        grouped[module].append((f"{module}.{rest}", value))
    out = collections.OrderedDict()
    for module in sorted(grouped, key=_rank):
        if module == "decoder":  # the decoder's own buffers precede its children's tensors
            out["decoder.anchors"] = torch.zeros(1, anchors, 4)
            out["decoder.valid_mask"] = torch.ones(1, anchors, 1, dtype=torch.bool)
        out.update(grouped[module])
    return out


def save_official(ema: nn.Module, path: Path, raw: nn.Module | None = None) -> Path:
    """A training checkpoint of the official solver: the raw model, the EMA, the epoch."""
    ckpt = {"model": official_state_dict(raw if raw is not None else ema),
            "ema": {"module": official_state_dict(ema), "updates": 3}, "last_epoch": 7, "date": "2024-12-19T12:00:00"}
    torch.save(ckpt, path)
    return path


def model_yaml(name: str, nc: int = 3) -> dict:
    d = copy.deepcopy(load_model_yaml(f"{name}.yaml"))
    d["nc"] = nc
    return d



@pytest.fixture(scope="module")
def r18() -> tuple[nn.Module, nn.Module]:
    """DEIM-RTv2-R18 with 3 classes: the EMA and the raw weights of one run."""
    torch.manual_seed(0)
    base = DetectionModel(model_yaml("deim-rtv2-r18"))
    return random_weights(copy.deepcopy(base), 0), random_weights(base, 5)


def outputs(model: nn.Module) -> torch.Tensor:
    """Eval outputs [1, 300, 6] on a fixed random image (256: 1,344 tokens for 300 queries)."""
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(image)


# ------------------------------------------------------------------------------------------ DEIM-RTv2-R18
@pytest.mark.slow  # builds three 20M-parameter models (about 20 s on one CPU thread)
def test_official_files_map_every_tensor_and_give_the_same_outputs(tmp_path, r18):
    ema, raw = r18
    path = save_official(ema, tmp_path / "deim_rtdetrv2_r18vd_coco_120e.pth", raw=raw)
    official = torch.load(path, weights_only=True)["ema"]["module"]
    assert len(official) == OFFICIAL_KEY_COUNTS["deim-rtv2-r18"]
    assert list(official)[:2] == ["backbone.conv1.conv1_1.conv.weight", "backbone.conv1.conv1_1.norm.weight"]
    loaded = load_model(path)
    report = loaded.report
    n = len(ema.state_dict())
    assert loaded.format == "rtdetrv2" and report.ok and report.loaded == report.total == n and report.cast == 0
    assert sorted(report.dropped) == ["decoder.anchors", "decoder.valid_mask"]
    assert loaded.model.name == "deim-rtv2-r18" and loaded.model.nc == 3 and "DEIM" in loaded.description
    assert loaded.ema and loaded.args == {"imgsz": 640, "last_epoch": 7, "date": "2024-12-19T12:00:00",
                                          "ema_updates": 3}
    new = loaded.model.state_dict()
    assert all(torch.equal(new[k], v) for k, v in ema.state_dict().items())
    assert same_outputs(outputs(ema), outputs(loaded.model))
    assert same_outputs(outputs(raw), outputs(load_model(path, prefer_ema=False).model))


@pytest.mark.slow
def test_entry_points_take_official_files(tmp_path, r18):
    ema, _ = r18
    path = save_official(ema, tmp_path / "best.pth")
    out, loaded = convert_file(path)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["converted_from"]["format"] == "rtdetrv2" and ckpt["converted_from"]["weights"] == "ema"
    again = load_model(out)
    assert again.format == "rtdet" and same_outputs(outputs(ema), outputs(again.model))


# ------------------------------------------------------------------------------------------ every model on meta
def meta_official(name: str, nc: int = 80, **changes) -> tuple[nn.Module, dict]:
    """A model built on the meta device and its official state dict (num_points_scale real, for reading)."""
    d = model_yaml(name, nc)
    d.update(changes)
    with torch.device("meta"):
        model = DetectionModel(d)
    sd = official_state_dict(model)
    points = d["head"][-1][3][3]
    for key in [k for k in sd if k.endswith("cross_attn.num_points_scale")]:
        sd[key] = torch.tensor([1 / n for n in points for _ in range(n)])
    return model, sd


@META_COPY
@pytest.mark.parametrize("name", MODELS)
def test_every_official_model_is_recognised(name):
    model, sd = meta_official(name)
    if name in OFFICIAL_KEY_COUNTS:
        assert len(sd) == OFFICIAL_KEY_COUNTS[name]
    assert is_rtdetrv2_checkpoint({"model": sd}) and is_rtdetrv2_checkpoint({"ema": {"module": sd}})
    with torch.device("meta"):
        converted = convert_rtdetrv2({"model": sd}, ConvertContext("model.pth"))
    m = converted.model
    assert m.name == name and m.nc == 80 and m.yaml["freeze_norm"] == load_model_yaml(f"{name}.yaml")["freeze_norm"]
    head = m.head
    assert head.eval_idx == model.head.eval_idx and len(head.decoder.layers) == len(model.head.decoder.layers)
    deim = name.startswith("deim")
    assert isinstance(head.decoder.layers[0].activation, nn.SiLU if deim else nn.ReLU)
    report = converted.report
    assert report.ok and report.loaded == report.total == len(model.state_dict()) == len(sd) - 2


@META_COPY
def test_trained_batchnorms_and_other_point_counts_are_read_from_the_tensors():
    _, sd = meta_official("rtdetrv2-r50", freeze_norm=False, nc=20)  # a baseline fine-tuned with trained BN
    with torch.device("meta"):
        converted = convert_rtdetrv2({"model": sd}, ConvertContext("model.pth"))
    assert converted.model.yaml["freeze_norm"] is False and converted.model.nc == 20
    assert "freeze_norm: False" in converted.model.yaml["yaml_file"]
    d = model_yaml("deim-rtv2-r18")
    d["head"][-1][3][3] = [3, 6, 3]
    with torch.device("meta"):
        model = DetectionModel(d)
    sd = official_state_dict(model)
    for key in [k for k in sd if k.endswith("num_points_scale")]:
        sd[key] = torch.tensor([1 / 3] * 3 + [1 / 6] * 6 + [1 / 3] * 3)
    with torch.device("meta"):
        converted = convert_rtdetrv2({"model": sd}, ConvertContext("model.pth"))
    assert converted.model.yaml["head"][-1][3][3] == [3, 6, 3] and converted.report.ok


# ------------------------------------------------------------------------------------------ errors
def test_points_per_level_reads_the_official_buffer():
    assert points_per_level(torch.tensor([0.25] * 12), "f") == (4, 4, 4)
    assert points_per_level(torch.tensor([1 / 3] * 3 + [1 / 6] * 6 + [1 / 3] * 3), "f") == (3, 6, 3)
    for bad in ([0.25] * 3, [0.0, 1.0], [0.5, 0.25]):
        with pytest.raises(CheckpointError, match="num_points_scale"):
            points_per_level(torch.tensor(bad), "f")


@META_COPY
def test_damaged_and_unknown_files_are_clear_errors():
    _, good = meta_official("deim-rtv2-r18")

    def convert(sd: dict):
        with torch.device("meta"):
            return convert_rtdetrv2({"model": sd}, ConvertContext("damaged.pth"))

    extra = collections.OrderedDict(good)
    extra["decoder.decoder.layers.0.extra.weight"] = torch.zeros(3)
    with pytest.raises(WeightLoadError, match=r"first bad key model\.23\.decoder\.layers\.0\.extra\.weight(.|\n)*"
                                              r"first bad key is decoder\.decoder\.layers\.0\.extra\.weight in the"):
        convert(extra)
    cut = collections.OrderedDict(good)
    cut["encoder.fpn_blocks.0.conv3.conv.weight"] = torch.zeros(5, 128, 1, 1)
    with pytest.raises(WeightLoadError, match=r"first bad key is encoder\.fpn_blocks\.0\.conv3\.conv\.weight"):
        convert(cut)
    other = collections.OrderedDict((k, v) for k, v in good.items()
                                    if not k.startswith("backbone.res_layers.2.blocks.1."))
    with pytest.raises(CheckpointError, match=r"an RT-DETRv2 of no official size: .* = \('basic', \(2, 2, 1, 2\)"):
        convert(other)
    scalar = collections.OrderedDict(good)
    scalar["decoder.enc_score_head.weight"] = torch.tensor(1.0)
    with pytest.raises(CheckpointError, match="enc_score_head.weight is a scalar"):
        convert(scalar)
    v1 = {k: v for k, v in good.items() if not k.endswith("num_points_scale")}  # RT-DETR v1's decoder has none
    assert not is_rtdetrv2_checkpoint({"model": v1}) and not is_rtdetrv2_checkpoint([good])
