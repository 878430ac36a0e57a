"""The built-in D-FINE model YAMLs: backbone, encoder, decoder and whole-model parameter counts to the digit
against the official code (D-FINE-L/X with frozen backbone BN, DEIM-L/X trained), output shapes and
strides at 640, BatchNorm settings, state-dict layout against the official one, and fuse parity."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from rtdet import build_model
from rtdet.nn.builder import load_model_yaml, resolve_model_path
from rtdet.nn.modules.hgnetv2 import FrozenBatchNorm2d, LearnableAffineBlock

# Measured from the official code (nc=80): backbone, encoder, decoder, whole model.
REFERENCE = {
    "n": (1_850_396, 703_824, 1_228_473, 3_782_693),
    "s": (1_850_396, 4_021_504, 4_449_977, 10_321_877),
    "m": (6_026_626, 7_799_040, 5_764_398, 19_590_064),
    "l": (13_507_680, 9_343_232, 8_393_240, 31_244_152),
    "x": (33_231_840, 20_700_032, 8_689_688, 62_621_560),
}
DEIM_BACKBONE = {"l": 13_553_376, "x": 33_325_760}  # DEIM-D-FINE-L/X train the backbone BatchNorms
DEIM_TOTAL = {"l": 31_289_848, "x": 62_715_480}
BACKBONE_ROWS = 5  # stem + four stages
# (decoder input rows, their strides, channels, backbone output channels per stage)
OUTPUTS = {
    "n": ([11, 14], [16, 32], 128, [64, 256, 512, 1024]),
    "s": ([16, 19, 22], [8, 16, 32], 256, [64, 256, 512, 1024]),
    "m": ([16, 19, 22], [8, 16, 32], 256, [96, 384, 768, 1536]),
    "l": ([16, 19, 22], [8, 16, 32], 256, [128, 512, 1024, 2048]),
    "x": ([16, 19, 22], [8, 16, 32], 384, [128, 512, 1024, 2048]),
}
STEM = {"n": 16, "s": 16, "m": 32, "l": 48, "x": 64}  # stem output channels of B0, B0, B2, B4, B5


def params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def on_meta(cfg, **kw):
    """Build without allocating or initialising weights: the counts and shapes are the same, and fast."""
    with torch.device("meta"):
        return build_model(cfg, **kw)


@pytest.mark.parametrize("size", list(REFERENCE))
def test_backbone_encoder_and_decoder_counts_to_the_digit(size):
    backbone, encoder, decoder, total = REFERENCE[size]
    model = on_meta(f"dfine-{size}.yaml")
    layers = list(model.model)
    assert len(model.yaml["backbone"]) == BACKBONE_ROWS and model.head_index == len(layers) - 1
    assert params(layers[:BACKBONE_ROWS]) == backbone
    assert params(layers[BACKBONE_ROWS:-1]) == encoder
    assert params(layers[-1:]) == decoder
    assert params(layers) == total


@pytest.mark.parametrize("size", list(DEIM_BACKBONE))
def test_deim_trains_the_backbone_batchnorms(size):
    d = load_model_yaml(f"dfine-{size}.yaml")
    assert d["freeze_norm"] is True
    d["freeze_norm"] = False  # the YAML switch DEIM's configs flip
    model = on_meta(d)
    layers = list(model.model)
    assert params(layers[:BACKBONE_ROWS]) == DEIM_BACKBONE[size]
    assert params(layers[BACKBONE_ROWS:-1]) == REFERENCE[size][1]
    assert params(layers) == DEIM_TOTAL[size]
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("size", list(REFERENCE))
def test_norms_and_affine_blocks_per_size(size):
    model = on_meta(f"dfine-{size}.yaml")
    backbone, encoder = model.model[:BACKBONE_ROWS], model.model[BACKBONE_ROWS:-1]
    frozen = size in ("l", "x")  # D-FINE-L/X: freeze_norm; N/S/M: learnable affine blocks (B0, B2)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules()) == frozen
    assert any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()) == (not frozen)
    assert any(isinstance(m, LearnableAffineBlock) for m in backbone.modules()) == (not frozen)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-5 and m.momentum == 0.1 for m in bns)  # PyTorch's defaults, as D-FINE
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, FrozenBatchNorm2d))
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in encoder.modules())


@pytest.mark.parametrize("size", list(OUTPUTS))
def test_output_shapes_and_strides_at_640(size):
    rows, strides, hidden, stage_channels = OUTPUTS[size]
    model = on_meta(f"dfine-{size}.yaml").eval()
    outs = {}
    for k, m in enumerate(model.model):
        m.register_forward_hook(lambda mod, args, out, k=k: outs.__setitem__(k, out))
    with torch.no_grad():
        model.head_inputs(torch.empty(1, 3, 640, 640, device="meta"))  # shapes only, up to the decoder
    assert outs[0].shape == (1, STEM[size], 160, 160)  # stem: stride 4
    for stage, channels in enumerate(stage_channels):  # stage strides 4, 8, 16, 32
        side = 640 // (4 * 2 ** stage)
        assert outs[1 + stage].shape == (1, channels, side, side)
    assert [tuple(outs[r].shape) for r in rows] == [(1, hidden, 640 // s, 640 // s) for s in strides]
    assert rows[-1] == len(model.model) - 2 and model.model[-1].f == rows  # the decoder reads the last maps


@pytest.mark.parametrize("size", list(OUTPUTS))
def test_final_comment_names_the_decoder_inputs(size):
    """The comment above the decoder row says which rows it reads, as the model builds them."""
    text = Path(resolve_model_path(f"dfine-{size}.yaml")[0]).read_text()
    match = re.search(r"reading rows ([\d, ]+): strides ([\d, ]+), (\d+) channels each", text)
    assert match, "dfine YAMLs end with a comment naming the decoder's input rows"
    rows, strides, hidden, _ = OUTPUTS[size]
    assert [int(r) for r in match.group(1).split(",")] == rows
    assert [int(s) for s in match.group(2).split(",")] == strides and int(match.group(3)) == hidden


# Official state-dict layout (research section 10): D-FINE-S backbone 312 keys, encoder 354; D-FINE-L
# backbone 400 (frozen BN: no num_batches_tracked, no affine blocks). Rows map to official prefixes:
# row 0 -> backbone.stem, rows 1-4 -> backbone.stages.0-3, rows 5+ -> encoder modules.
@pytest.mark.parametrize(("size", "backbone_keys", "encoder_keys", "last_backbone"), [
    ("s", 312, 354, ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "lab.scale", "lab.bias"]),
    ("l", 400, None, ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]),
])
def test_state_dict_layout_matches_the_official_one(size, backbone_keys, encoder_keys, last_backbone):
    model = on_meta(f"dfine-{size}.yaml")
    keys = list(model.state_dict())
    row = [int(k.split(".")[1]) for k in keys]
    backbone = [k.split(".", 2)[2] for k, r in zip(keys, row) if r < BACKBONE_ROWS]
    encoder = [k.split(".", 2)[2] for k, r in zip(keys, row) if BACKBONE_ROWS <= r < model.head_index]
    assert len(backbone) == backbone_keys
    assert encoder_keys is None or len(encoder) == encoder_keys
    assert backbone[:5] == ["stem1.conv.weight", "stem1.bn.weight", "stem1.bn.bias", "stem1.bn.running_mean",
                            "stem1.bn.running_var"]
    assert backbone[-5:] == [f"blocks.0.aggregation.1.{k}" for k in last_backbone]
    assert encoder[:5] == ["conv.weight", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"]
    assert encoder[-5:] == [f"cv4.norm.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                                      "num_batches_tracked")]


def test_forward_and_fuse_parity(single_thread):
    torch.manual_seed(0)
    model = build_model("dfine-n.yaml").eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # non-trivial BN statistics so that folding is really tested
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        before = model.head_inputs(x)  # the encoder's maps (the decoder's own fuse parity: tests/nn/heads)
        model.fuse()
        after = model.head_inputs(x)
        assert model(x).shape == (1, 300, 6)
    assert [tuple(t.shape) for t in before] == [(1, 128, 8, 12), (1, 128, 4, 6)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(torch.allclose(b, a, rtol=1e-3, atol=1e-4) for b, a in zip(before, after, strict=True))
