"""Ultralytics RT-DETR checkpoints -> rtdet models with the same tensors and the same outputs.

Every fixture is an rtdet model written the way Ultralytics writes its own (see tests/io/iohelpers.py):
its modules pickled as Ultralytics classes of the same module paths, fp16 tensors, the model YAML, names
and training args on the model object, the dict layout of a finished or an in-training checkpoint."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from rtdet import ModelConfigError, build_model
from rtdet.io import WeightLoadError, load_model
from rtdet.io.foreign import module_state_dict
from rtdet.io.safe_pickle import read_checkpoint
from rtdet.utils.checkpoint import CheckpointError
from tests.io.iohelpers import fp16_exact, same_outputs, save_ultralytics

pytestmark = pytest.mark.usefixtures("single_thread")

DECODER = "RTDETRDecoder, [nc, 32, 20, 2, 2, 1, 64, 0.0, None, -1, 10]"
TINY = {
    # HGNet blocks as in rtdetr-l / x: HGStem, HGBlock (plain and light convs, with and without shortcut), DWConv
    "hgnet": f"""
nc: 3
backbone:
  - [-1, 1, HGStem, [16, 24]]
  - [-1, 2, HGBlock, [16, 32, 3]]
  - [-1, 1, DWConv, [32, 3, 2, 1, False]]
  - [-1, 2, HGBlock, [24, 64, 5, True, False]]
  - [-1, 1, DWConv, [64, 3, 2, 1, False]]
  - [-1, 2, HGBlock, [32, 64, 5, True, True]]
head:
  - [-1, 1, Conv, [32, 1, 1, None, 1, 1, False]]
  - [-1, 1, AIFI, [64, 4]]
  - [-1, 1, Conv, [32, 1, 1]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [3, 1, Conv, [32, 1, 1, None, 1, 1, False]]
  - [[-2, -1], 1, Concat, [1]]
  - [-1, 2, RepC3, [32]]
  - [[12, 8], 1, {DECODER}]
""",
    # the ResNet layers of rtdetr-resnet50 / 101
    "resnet": f"""
nc: 3
backbone:
  - [-1, 1, ResNetLayer, [3, 16, 1, True, 1]]
  - [-1, 1, ResNetLayer, [16, 8, 1, False, 1]]
  - [-1, 1, ResNetLayer, [32, 16, 2, False, 2]]
  - [-1, 1, ResNetLayer, [64, 16, 2, False, 1]]
head:
  - [2, 1, Conv, [32, 1, 1, None, 1, 1, False]]
  - [3, 1, Conv, [32, 1, 1, None, 1, 1, False]]
  - [[4, 5], 1, {DECODER}]
""",
    # the community DySample upsamplers in place of nn.Upsample
    "dysample": f"""
nc: 3
backbone:
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [-1, 1, Conv, [64, 3, 2]]
head:
  - [-1, 1, Conv, [32, 1, 1]]
  - [-1, 1, DySample, []]
  - [2, 1, Conv, [32, 1, 1, None, 1, 1, False]]
  - [[-2, -1], 1, Concat, [1]]
  - [-1, 1, RepC3, [32]]
  - [[8, 4], 1, {DECODER}]
""",
    # the community ConvNeXt V2 backbone: one row filling slots 1-4, later rows numbered from 5
    "convnextv2": f"""
nc: 3
backbone:
  - [-1, 1, convnextv2_atto, []]
head:
  - [-1, 1, Conv, [32, 1, 1, None, 1, 1, False]]
  - [-1, 1, AIFI, [64, 4]]
  - [-1, 1, Conv, [32, 1, 1]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [3, 1, Conv, [32, 1, 1, None, 1, 1, False]]
  - [[-2, -1], 1, Concat, [1]]
  - [-1, 1, RepC3, [32]]
  - [[11, 7], 1, {DECODER}]
""",
}


def tiny(tmp_path, kind: str):
    path = tmp_path / f"rtdetr-tiny-{kind}.yaml"
    path.write_text(TINY[kind])
    return path, fp16_exact(build_model(path)).eval()


def outputs(model, size=64):
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("kind", list(TINY))
def test_conversion_maps_every_tensor_and_gives_the_same_outputs(tmp_path, kind):
    yaml_path, source = tiny(tmp_path, kind)
    ckpt = save_ultralytics(source, tmp_path / "best.pt", str(yaml_path), classifier=kind == "convnextv2",
                            names={0: "cat", 1: "dog", 2: "bird"})
    loaded = load_model(ckpt)
    report = loaded.report
    assert loaded.format == "ultralytics" and report.ok and report.loaded == report.total == len(source.state_dict())
    extra = 4 if kind == "convnextv2" else 0  # the classifier the community backbone carries, in fp16 too
    assert report.cast == sum(v.is_floating_point() for v in source.state_dict().values()) + extra
    assert report.dropped == (["model.0.norm.weight", "model.0.norm.bias", "model.0.head.weight", "model.0.head.bias"]
                              if kind == "convnextv2" else [])
    assert loaded.names == {0: "cat", 1: "dog", 2: "bird"} and loaded.model.name == yaml_path.stem
    assert loaded.inherited == {"imgsz": 320}  # the size it was trained at
    assert same_outputs(outputs(source), outputs(loaded.model))
    assert not any(m == "ultralytics" or m.startswith("ultralytics.") for m in sys.modules)


def test_the_reader_sees_the_source_names_order_and_fp16(tmp_path):
    yaml_path, source = tiny(tmp_path, "hgnet")
    ckpt = read_checkpoint(save_ultralytics(source, tmp_path / "best.pt", str(yaml_path)))
    record = ckpt["model"]
    assert record.cls_name == "ultralytics.nn.tasks.RTDETRDetectionModel" and ckpt["ema"] is None
    rows = record.attrs["_modules"]["model"]
    assert rows.cls_name == "torch.nn.modules.container.Sequential"
    assert rows.attrs["_modules"]["0"].cls_name == "ultralytics.nn.modules.block.HGStem"
    assert record.attrs["args"].cls_name == "ultralytics.utils.IterableSimpleNamespace"
    sd = module_state_dict(record)
    assert list(sd) == list(source.state_dict())
    assert {v.dtype for k, v in sd.items() if not k.endswith("num_batches_tracked")} == {torch.float16}
    assert ckpt["train_metrics"]["fitness"] == 0.41  # numpy scalars read as numbers


def test_the_ema_is_preferred_and_the_raw_weights_are_one_setting_away(tmp_path):
    yaml_path, ema = tiny(tmp_path, "dysample")
    raw = fp16_exact(build_model(yaml_path), seed=7).eval()
    old = save_ultralytics(ema, tmp_path / "old.pt", str(yaml_path), layout="old", raw=raw)
    loaded = load_model(old)
    assert loaded.ema and same_outputs(outputs(ema), outputs(loaded.model))
    loaded = load_model(old, prefer_ema=False)
    assert not loaded.ema and same_outputs(outputs(raw), outputs(loaded.model))
    last = load_model(save_ultralytics(ema, tmp_path / "last.pt", str(yaml_path), layout="last"))
    assert last.ema and same_outputs(outputs(ema), outputs(last.model))  # 'model' is None in recent last.pt


def test_a_new_class_count_reinitialises_only_the_head(tmp_path, caplog):
    yaml_path, source = tiny(tmp_path, "hgnet")
    ckpt = save_ultralytics(source, tmp_path / "best.pt", str(yaml_path))
    caplog.set_level("INFO", logger="rtdet")
    loaded = load_model(ckpt, nc=5, names=[f"n{i}" for i in range(5)])
    model, head = loaded.model, f"model.{loaded.model.head_index}."
    assert model.nc == 5 and loaded.names[4] == "n4"
    assert loaded.reinitialised and all(k.startswith(head) for k in loaded.reinitialised)
    assert set(loaded.reinitialised) == {k for k, v in source.state_dict().items()
                                         if v.shape != model.state_dict()[k].shape}
    new = model.state_dict()
    for k, v in source.state_dict().items():
        if k not in loaded.reinitialised:
            assert torch.equal(new[k], v), k  # backbone, neck and the class-independent head tensors kept
    assert "3 -> 5 classes" in caplog.text and "re-initialised" in caplog.text


def test_a_fused_checkpoint_is_named_as_such(tmp_path):
    """Weights saved after fuse() (BN folded into biased convs) cannot fill the unfused model its YAML
    builds: the error says the file looks fused and what to do."""
    yaml_path, source = tiny(tmp_path, "resnet")
    fused = save_ultralytics(copy.deepcopy(source).fuse(), tmp_path / "fused.pt", str(yaml_path))
    with pytest.raises(WeightLoadError, match="looks fused"):
        load_model(fused)


def test_a_real_mismatch_fails_naming_the_first_bad_key(tmp_path):
    yaml_path, source = tiny(tmp_path, "resnet")
    ckpt = save_ultralytics(source, tmp_path / "best.pt", str(yaml_path))
    # the same tensors, but a YAML that says the second projection is wider: its shapes no longer fit
    wider = tmp_path / "wider.yaml"
    wider.write_text(TINY["resnet"].replace("[3, 1, Conv, [32, 1, 1,", "[3, 1, Conv, [48, 1, 1,"))
    bad = save_ultralytics(source, tmp_path / "bad.pt", str(wider))
    with pytest.raises(WeightLoadError, match=r"first bad key model\.5\.conv\.weight \(shape \(32, 64, 1, 1\) in the "
                                              r"checkpoint, \(48, 64, 1, 1\) in the model\)") as err:
        load_model(bad)
    assert str(bad) in str(err.value)
    assert load_model(bad, strict=False).report.mismatched  # strict=False loads what fits and reports the rest
    assert load_model(ckpt).report.ok


def test_unknown_modules_and_heads_are_clear_errors(tmp_path):
    yaml_path, source = tiny(tmp_path, "resnet")
    odd = tmp_path / "odd.yaml"
    odd.write_text(TINY["resnet"].replace("[2, 1, Conv,", "[2, 1, CCRI,"))
    with pytest.raises(ModelConfigError, match="unknown module 'CCRI'"):
        load_model(save_ultralytics(source, tmp_path / "odd.pt", str(odd)))
    seg = tmp_path / "seg.yaml"  # a head whose Ultralytics family rtdet does not convert
    seg.write_text(TINY["resnet"].replace(DECODER, "Segment, [nc, 32, 256]"))
    with pytest.raises(CheckpointError, match="whose head is Segment; rtdet converts Ultralytics models with a "
                                              "RTDETRDecoder, Detect head"):
        load_model(save_ultralytics(source, tmp_path / "seg.pt", str(seg)))


def test_a_weights_path_in_the_stored_yaml_is_not_read_again(tmp_path):
    # community YAMLs name the backbone's ImageNet file as its first argument; the checkpoint has the weights
    yaml_path, source = tiny(tmp_path, "convnextv2")
    with_path = tmp_path / "with-weights.yaml"
    with_path.write_text(TINY["convnextv2"].replace("convnextv2_atto, []", "convnextv2_atto, [convnextv2_atto_1k.pt]"))
    ckpt = save_ultralytics(source, tmp_path / "best.pt", str(with_path), classifier=True)
    loaded = load_model(ckpt)  # convnextv2_atto_1k.pt does not exist here
    assert loaded.report.ok and same_outputs(outputs(source), outputs(loaded.model))


# The real YAMLs: every tensor of rtdetr-l / x / resnet50 / resnet101 and the community files maps, and the
# outputs are the same. Seconds per model (two builds of up to 67M parameters and a 128x128 forward).
REAL = ["rtdetr-l.yaml", "rtdetr-x.yaml", "rtdetr-resnet50.yaml", "rtdetr-resnet101.yaml"]
COMMUNITY = ["rtdetr-l-DySample.yaml", "rtdetr-l-ConvNeXtV2.yaml"]


def convert_and_compare(tmp_path, yaml_path: str, nc: int, classifier: bool = False):
    source = fp16_exact(build_model(yaml_path, nc=nc)).eval()
    loaded = load_model(save_ultralytics(source, tmp_path / "model.pt", yaml_path, classifier=classifier))
    assert loaded.report.ok and loaded.report.loaded == loaded.report.total == len(source.state_dict())
    assert sum(p.numel() for p in loaded.model.parameters()) == sum(p.numel() for p in source.parameters())
    assert same_outputs(outputs(source, 128), outputs(loaded.model, 128))
    return loaded


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL)
def test_real_rtdetr_checkpoints_convert_exactly(tmp_path, name):
    loaded = convert_and_compare(tmp_path, name, 80)
    assert loaded.model.name == name.removesuffix(".yaml")


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMUNITY)
def test_community_checkpoints_convert_exactly(tmp_path, community_yaml, name):
    loaded = convert_and_compare(tmp_path, str(community_yaml / name), 1, classifier="ConvNeXtV2" in name)
    assert len(loaded.report.dropped) == (4 if "ConvNeXtV2" in name else 0)
