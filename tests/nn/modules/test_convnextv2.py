"""ConvNeXt V2 backbones: exact parameter counts, official maths of GRN / LayerNorm, output maps, official
and timm checkpoint layouts, and both multi-output YAML conventions."""

from __future__ import annotations

import re

import pytest
import torch

from rtdet import build_model
from rtdet.io.backbones import WeightLoadError, load_convnextv2_weights
from rtdet.nn.modules.convnextv2 import (
    CONVNEXTV2_MODELS,
    CONVNEXTV2_VARIANTS,
    GRN,
    ConvNeXtV2Atto,
    ConvNeXtV2Femto,
    DropPath,
    LayerNorm2d,
)

# Parameters of the official ImageNet classifiers (ConvNeXtV2(num_classes=1000)), which the README rounds to
# 3.7M / 5.2M / 9.1M / 15.6M / 28.6M / 89M / 198M / 660M. The backbone drops the final LayerNorm (2*C) and
# the Linear head (C*1000 + 1000), e.g. atto: 3,708,400 - 640 - 321,000 = 3,386,760.
CLASSIFIER_PARAMS = {
    "atto": 3_708_400,
    "femto": 5_233_240,
    "pico": 9_066_280,
    "nano": 15_623_800,
    "tiny": 28_635_496,
    "base": 88_717_800,
    "large": 197_956_840,
    "huge": 660_289_640,
}
PUBLISHED_M = {
    "atto": 3.7, "femto": 5.2, "pico": 9.1, "nano": 15.6, "tiny": 28.6, "base": 89, "large": 198, "huge": 660,
}  # fmt: skip


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every parameter (GRN starts at zero, which would hide layout mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.mark.parametrize("name", list(CONVNEXTV2_VARIANTS))
def test_backbone_parameter_counts(name):
    dims = CONVNEXTV2_VARIANTS[name][1]
    with torch.device("meta"):  # large / huge without allocating 2.6 GB
        model = CONVNEXTV2_MODELS[f"convnextv2_{name}"]()
    classifier_only = 2 * dims[-1] + dims[-1] * 1000 + 1000
    assert sum(p.numel() for p in model.parameters()) == CLASSIFIER_PARAMS[name] - classifier_only
    assert round(CLASSIFIER_PARAMS[name] / 1e6, 1 if name not in ("base", "large", "huge") else 0) == PUBLISHED_M[name]
    assert model.out_channels == list(dims)


def test_four_maps_at_strides_4_to_32_on_a_non_square_input():
    model = ConvNeXtV2Atto().eval()
    maps = model(torch.randn(2, 3, 96, 160))
    assert [tuple(m.shape) for m in maps] == [(2, 40, 24, 40), (2, 80, 12, 20), (2, 160, 6, 10), (2, 320, 3, 5)]


def test_official_parameter_names_and_shapes_and_no_classifier():
    sd = ConvNeXtV2Atto().state_dict()
    assert tuple(sd["downsample_layers.0.0.weight"].shape) == (40, 3, 4, 4)
    assert tuple(sd["downsample_layers.0.1.weight"].shape) == (40,)  # stem LayerNorm
    assert tuple(sd["downsample_layers.3.0.weight"].shape) == (160,)  # LayerNorm before the 2x2 conv
    assert tuple(sd["downsample_layers.3.1.weight"].shape) == (320, 160, 2, 2)
    assert tuple(sd["stages.2.5.dwconv.weight"].shape) == (160, 1, 7, 7)
    assert tuple(sd["stages.2.5.pwconv1.weight"].shape) == (640, 160)
    assert tuple(sd["stages.3.1.grn.gamma"].shape) == (1, 1, 1, 1280)
    assert tuple(sd["stages.3.1.pwconv2.weight"].shape) == (320, 1280)
    assert not any(k.startswith(("norm.", "head.")) for k in sd)
    block_keys = {re.sub(r"^stages\.0\.0\.", "", k) for k in sd if k.startswith("stages.0.0.")}
    assert block_keys == {
        "dwconv.weight", "dwconv.bias", "norm.weight", "norm.bias", "pwconv1.weight", "pwconv1.bias",
        "grn.gamma", "grn.beta", "pwconv2.weight", "pwconv2.bias",
    }  # fmt: skip


def test_grn_is_the_official_formula():
    grn = GRN(6)
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    x = torch.randn(2, 5, 7, 6)  # NHWC
    gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(grn(x), grn.gamma * (x * nx) + grn.beta + x)


def test_grn_starts_as_identity():
    x = torch.randn(1, 4, 4, 8)
    torch.testing.assert_close(GRN(8)(x), x)


def test_channels_first_layernorm_is_the_official_formula():
    ln = LayerNorm2d(6)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(2, 6, 5, 3) * 3 + 1
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    expected = ln.weight[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + ln.bias[:, None, None]
    torch.testing.assert_close(ln(x), expected)


def test_drop_path_drops_whole_samples_in_training_only():
    torch.manual_seed(0)
    dp = DropPath(0.5)
    x = torch.ones(4000, 3, 2, 2)
    y = dp(x)
    per_sample = y.flatten(1)
    assert torch.all((per_sample == 0).all(1) | (per_sample == 2).all(1))
    assert 0.45 < (per_sample[:, 0] == 0).float().mean() < 0.55
    assert torch.equal(dp.eval()(x), x)
    with pytest.raises(ValueError, match="1.5"):
        DropPath(1.5)


def test_drop_path_rate_rises_linearly_over_blocks():
    model = ConvNeXtV2Atto(drop_path_rate=0.1)
    rates = [b.drop_path.p if isinstance(b.drop_path, DropPath) else 0.0 for s in model.stages for b in s]
    assert len(rates) == 12 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert rates[6] == pytest.approx(0.1 * 6 / 11)


# ---------------------------------------------------------------------------------------------- checkpoints
def official_state_dict(model) -> dict:
    """A state dict as the official repository saves it: backbone keys plus the classifier."""
    sd = dict(model.state_dict())
    c = model.dims[-1]
    sd.update({"norm.weight": torch.ones(c), "norm.bias": torch.zeros(c),
               "head.weight": torch.randn(1000, c), "head.bias": torch.zeros(1000)})  # fmt: skip
    return sd


def timm_state_dict(model, conv_mlp: bool) -> dict:
    """The same weights under timm's names: stem / stages.i.downsample / stages.i.blocks.j, conv_dw,
    mlp.fc1 / fc2, GRN weight / bias of shape (C,); with conv_mlp (atto..nano) 1x1-conv MLP weights."""
    out = {}
    for key, v in model.state_dict().items():
        k = key.replace("downsample_layers.0.", "stem.")
        k = re.sub(r"^downsample_layers\.(\d)\.", r"stages.\1.downsample.", k)
        k = re.sub(r"^stages\.(\d)\.(\d+)\.", r"stages.\1.blocks.\2.", k)
        k = k.replace(".dwconv.", ".conv_dw.").replace(".pwconv1.", ".mlp.fc1.").replace(".pwconv2.", ".mlp.fc2.")
        k = k.replace(".grn.gamma", ".mlp.grn.weight").replace(".grn.beta", ".mlp.grn.bias")
        if ".grn." in k:
            v = v.reshape(-1)
        elif conv_mlp and ".mlp.fc" in k and k.endswith("weight"):
            v = v[:, :, None, None]
        out[k] = v
    c = model.dims[-1]
    out.update({"head.norm.weight": torch.ones(c), "head.norm.bias": torch.zeros(c),
                "head.fc.weight": torch.randn(1000, c), "head.fc.bias": torch.zeros(1000)})  # fmt: skip
    return out


def test_official_checkpoint_loads_by_key_with_classifier_dropped():
    source = perturbed(ConvNeXtV2Atto())
    target = ConvNeXtV2Atto().eval()
    report = load_convnextv2_weights(target, {"model": official_state_dict(source)})
    assert report.layout == "official" and report.ok
    assert sorted(report.dropped) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    x = torch.randn(1, 3, 64, 96)
    for a, b in zip(target(x), source(x), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("conv_mlp", [True, False])
def test_timm_checkpoint_loads_and_gives_identical_outputs(conv_mlp):
    source = perturbed(ConvNeXtV2Atto(), seed=1)
    target = ConvNeXtV2Atto().eval()
    report = load_convnextv2_weights(target, timm_state_dict(source, conv_mlp))
    assert report.layout == "timm" and report.ok and len(report.dropped) == 4
    assert report.loaded == len(source.state_dict())
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(target(x), source(x), strict=True):
        assert torch.equal(a, b)


def test_wrong_variant_is_reported_with_the_keys():
    with pytest.raises(WeightLoadError) as err:
        load_convnextv2_weights(ConvNeXtV2Atto(), ConvNeXtV2Femto().state_dict())
    msg = str(err.value)
    assert "mismatched" in msg and "downsample_layers.0.0.weight: (48, 3, 4, 4) vs (40, 3, 4, 4)" in msg


def test_missing_and_unknown_keys_are_reported_and_strict_false_loads_the_rest():
    model = ConvNeXtV2Atto()
    sd = dict(model.state_dict())
    del sd["stages.3.1.grn.gamma"]
    sd["stages.3.1.gamma"] = torch.zeros(320)  # a ConvNeXt V1 layer-scale key
    with pytest.raises(WeightLoadError) as err:
        load_convnextv2_weights(ConvNeXtV2Atto(), sd)
    assert "stages.3.1.grn.gamma" in str(err.value) and "stages.3.1.gamma" in str(err.value)
    report = load_convnextv2_weights(ConvNeXtV2Atto(), sd, strict=False)
    assert report.missing == ["stages.3.1.grn.gamma"] and report.unexpected == ["stages.3.1.gamma"]
    with pytest.raises(WeightLoadError, match="not a ConvNeXt V2"):
        load_convnextv2_weights(model, {"conv.weight": torch.zeros(1)})


def test_ddp_prefix_and_nested_checkpoint_are_unwrapped():
    source = perturbed(ConvNeXtV2Atto(), seed=2)
    ddp = {f"module.{k}": v for k, v in official_state_dict(source).items()}
    target = ConvNeXtV2Atto().eval()
    report = load_convnextv2_weights(target, {"epoch": 3, "model": ddp})
    assert report.ok and report.loaded == len(source.state_dict())
    assert torch.equal(target.stages[3][1].grn.gamma, source.stages[3][1].grn.gamma)


# ---------------------------------------------------------------------------------------------- YAML
def test_ultralytics_index_convention():
    model = build_model({
        "backbone": [[-1, 1, "convnextv2_atto", []], [0, 1, "Index", [80, 1]], [0, 1, "Index", [320, 3]]],
        "head": [[-1, 1, "Conv", [32, 1, 1]], [1, 1, "Conv", [16, 3, 2]]],
    })  # fmt: skip
    assert [b.c2 for b in model.layers_info[:3]] == [[40, 80, 160, 320], 80, 320]
    assert model.model[3].conv.in_channels == 320
    out = model(torch.randn(1, 3, 64, 96))  # last row: the stride-8 map (80 ch) through a 3x3/2 conv
    assert out.shape == (1, 16, 4, 6)


def test_community_five_slot_convention():
    model = build_model({
        "backbone": [[-1, 1, "convnextv2_atto", []]],  # maps fill slots 1-4; the next row is index 5
        "head": [[-1, 1, "Conv", [32, 1, 1]], [2, 1, "Conv", [16, 1, 1]], [[-1, 2], 1, "Concat", [1]]],
    })  # fmt: skip
    assert model.layers_info[0].slots == [1, 2, 3, 4]
    assert model.model[1].conv.in_channels == 320  # -1 right after the backbone = its last map
    assert model.model[2].conv.in_channels == 80  # slot 2 = the stride-8 map
    out = model(torch.randn(1, 3, 64, 64))  # index 7 = concat(index 6, slot 2)
    assert out.shape == (1, 16 + 80, 8, 8)
