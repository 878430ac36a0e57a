"""ImageNet backbone files (official / timm ConvNeXt V2 and SHViT): `rtdet convert`, and weights= on a YAML row."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from rtdet import Detector, ModelConfigError, build_model
from rtdet.io import convert_file, load_model
from rtdet.io.safe_pickle import read_checkpoint
from rtdet.nn.modules.convnextv2 import ConvNeXtV2Atto
from rtdet.nn.modules.shvit import SHViTS1
from tests.io.iohelpers import (
    convnextv2_timm_names,
    fp16_exact,
    official_backbone_file,
    shvit_timm_names,
    with_classifier,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def perturbed(module: nn.Module, seed: int = 0) -> nn.Module:
    return fp16_exact(module, seed).eval()


def same_maps(a: nn.Module, b: nn.Module, size=(64, 96)) -> bool:
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return all(torch.equal(p, q) for p, q in zip(a.eval()(x), b.eval()(x), strict=True))


def test_official_convnextv2_file_converts_to_a_backbone_checkpoint(tmp_path):
    source = perturbed(ConvNeXtV2Atto())
    path = official_backbone_file(with_classifier(source.state_dict(), 320, "convnextv2"), tmp_path / "atto.pt")
    out, loaded = convert_file(path)
    assert out == tmp_path / "atto-rtdet.pt" and loaded.format == "convnextv2"
    assert loaded.description == "official ConvNeXt V2-atto backbone"
    assert loaded.report.ok and loaded.report.loaded == len(source.state_dict()) and len(loaded.report.dropped) == 4
    ckpt = torch.load(out, weights_only=True)  # a plain rtdet checkpoint
    assert ckpt["model"]["yaml"]["backbone"] == [[-1, 1, "convnextv2_atto", []]] and ckpt["model"]["yaml"]["head"] == []
    assert same_maps(source, load_model(out).model.model[0])
    with pytest.raises(ModelConfigError, match="no detection head"):
        Detector(str(out))


def test_training_checkpoints_prefer_the_ema_and_keep_their_args(tmp_path):
    raw, ema = perturbed(SHViTS1(), 1), perturbed(SHViTS1(), 2)
    path = official_backbone_file(with_classifier(raw.state_dict(), 320, "shvit"), tmp_path / "checkpoint_299.pth",
                                  training=True, ema=with_classifier(ema.state_dict(), 320, "shvit"))
    assert read_checkpoint(path)["args"].cls_name == "argparse.Namespace"  # the training script's settings
    loaded = load_model(path)
    assert loaded.format == "shvit" and loaded.ema and loaded.description == "official SHViT-S1 backbone"
    assert loaded.args["batch_size"] == 256 and loaded.args["output_dir"] == "out"
    assert same_maps(ema, loaded.model.model[0], (128, 64))
    assert same_maps(raw, load_model(path, prefer_ema=False).model.model[0], (128, 64))


def test_timm_files_are_recognised_and_renamed(tmp_path):
    source = perturbed(ConvNeXtV2Atto(), 3)
    timm = convnextv2_timm_names(with_classifier(source.state_dict(), 320, "convnextv2"), conv_mlp=True)
    path = tmp_path / "model.bin"
    torch.save(timm, path)  # timm hub weights: a bare state dict
    loaded = load_model(path)
    assert loaded.format == "convnextv2" and loaded.description == "timm ConvNeXt V2-atto backbone"
    assert loaded.report.layout == "timm" and loaded.report.ok and len(loaded.report.reshaped) > 0
    assert same_maps(source, loaded.model.model[0])
    shvit = perturbed(SHViTS1(), 6)
    torch.save(shvit_timm_names(with_classifier(shvit.state_dict(), 320, "shvit")), path)
    loaded = load_model(path)
    assert loaded.format == "shvit" and loaded.report.layout == "timm" and loaded.report.ok
    assert loaded.report.loaded == len(shvit.state_dict()) and len(loaded.report.dropped) == 6
    assert same_maps(shvit, loaded.model.model[0], (128, 64))


@pytest.mark.parametrize("spelling", ["weights={}", "{{weights: {}}}", "{}"])
def test_a_backbone_row_loads_its_weights_and_says_how_many(tmp_path, spelling, caplog):
    source = perturbed(ConvNeXtV2Atto(), 4)
    path = official_backbone_file(with_classifier(source.state_dict(), 320, "convnextv2"), tmp_path / "atto.pt")
    arg = spelling.format(path)
    yaml_path = tmp_path / "m.yaml"
    yaml_path.write_text(f"backbone:\n  - [-1, 1, convnextv2_atto, [{arg}]]\nhead:\n  - [-1, 1, Conv, [16, 1, 1]]\n")
    caplog.set_level("INFO", logger="rtdet")
    model = build_model(yaml_path)
    n = len(source.state_dict())
    assert (f"row 0 (convnextv2_atto): weights atto.pt (official layout): loaded {n}/{n} tensors; missing 0; "
            f"unexpected 0; dropped 4 (the ImageNet classifier, which a detector never runs)") in caplog.text
    assert same_maps(source, model.model[0])
    # a checkpoint of this model does not read the file again: its weights are in the checkpoint
    model.save(tmp_path / "m.pt")
    path.unlink()
    assert same_maps(source, load_model(tmp_path / "m.pt").model.model[0])


def test_a_converted_backbone_file_is_also_a_row_weight(tmp_path):
    source = perturbed(SHViTS1(), 5)
    out, _ = convert_file(official_backbone_file(source.state_dict(), tmp_path / "shvit_s1.pth"))
    yaml_path = tmp_path / "m.yaml"
    yaml_path.write_text(f"backbone:\n  - [-1, 1, shvit_s1, [weights={out.name}]]\nhead: []\n")  # next to the YAML
    model = build_model(yaml_path)
    assert same_maps(source, model.model[0], (128, 64))


def test_wrong_variants_and_missing_files_are_errors_naming_the_row(tmp_path):
    path = official_backbone_file(perturbed(SHViTS1()).state_dict(), tmp_path / "s1.pth")
    with pytest.raises(ModelConfigError, match=r"row 0 \(convnextv2_atto\): weights .*not a ConvNeXt V2 state dict"):
        build_model({"backbone": [[-1, 1, "convnextv2_atto", [f"weights={path}"]]], "head": []})
    femto = tmp_path / "femto.pt"
    torch.save({"model": build_model({"backbone": [[-1, 1, "convnextv2_femto", []]], "head": []}).model[0]
                .state_dict()}, femto)
    with pytest.raises(ModelConfigError, match=r"first bad key downsample_layers\.0\.0\.weight"):
        build_model({"backbone": [[-1, 1, "convnextv2_atto", [f"weights={femto}"]]], "head": []})
    with pytest.raises(ModelConfigError, match="weights file 'nope.pt' not found"):
        build_model({"backbone": [[-1, 1, "convnextv2_atto", ["weights=nope.pt"]]], "head": []})
