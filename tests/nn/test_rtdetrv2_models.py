"""The built-in RT-DETRv2 / DEIM-RTv2 model YAMLs: backbone, encoder, decoder and whole-model parameter counts
to the digit against the official code (DEIM configs/deim_rtdetrv2/*.yml), the header comments that state
them, BatchNorm settings (frozen in the RT-DETRv2 R50 / R101 baselines), output shapes and strides at 640,
the official state-dict layout, and a real model's train / eval / fuse."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from rtdet import build_model
from rtdet.nn.builder import resolve_model_path
from rtdet.nn.heads.rtdetrv2 import RTDETRv2Decoder
from rtdet.nn.modules.hgnetv2 import FrozenBatchNorm2d
from tests.nn.heads.detr_inputs import targets

# Measured from the official code (research notes section 1, nc=80): backbone, encoder, decoder, whole model.
DEIM = {
    "r18": (11_199_968, 4_965_120, 4_018_352, 20_183_440),
    "r34": (21_308_128, 4_965_120, 5_167_396, 31_440_644),
    "r50m": (23_527_264, 5_653_248, 4_018_352, 33_198_864),
    "r50": (23_527_264, 11_950_848, 7_465_484, 42_943_596),
    "r101": (42_519_392, 26_577_536, 7_563_788, 76_660_716),
}
BASELINE_TOTAL = {"r18": 20_184_464, "r34": 31_441_668, "r50m": 36_593_772, "r50": 42_891_372,
                  "r101": 76_556_268}
FROZEN_BASELINE = ("r50m", "r50", "r101")  # freeze_norm True in the official RT-DETRv2 R50 / R101 configs
LAYERS = {"r18": (3, 3, -1), "r34": (4, 4, -1), "r50m": (3, 6, 2), "r50": (6, 6, -1), "r101": (6, 6, -1)}
STAGES = {"r18": [64, 128, 256, 512], "r34": [64, 128, 256, 512], "r50m": [256, 512, 1024, 2048],
          "r50": [256, 512, 1024, 2048], "r101": [256, 512, 1024, 2048]}
BACKBONE_ROWS = 5  # stem + four stages
NAMES = [f"{kind}-{size}" for size in DEIM for kind in ("deim-rtv2", "rtdetrv2")]


def params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def on_meta(cfg, **kw):
    """Build without allocating or initialising weights: the counts and shapes are the same, and fast."""
    with torch.device("meta"):
        return build_model(cfg, **kw)


def expected(name: str) -> tuple[int, int, int, int]:
    """(backbone, encoder, decoder, total) of a built-in YAML: a baseline differs from its DEIM model in the
    backbone's BatchNorm affine terms (R50 / R101 freeze them) and the decoder (query_pos_head, as_reg: -1,024;
    R50-m: 6 layers, not 3)."""
    size = name.split("-")[-1]
    if name.startswith("deim"):
        return DEIM[size]
    return (-1, DEIM[size][1], -1, BASELINE_TOTAL[size])


@pytest.mark.parametrize("name", NAMES)
def test_counts_to_the_digit(name):
    backbone, encoder, decoder, total = expected(name)
    model = on_meta(f"{name}.yaml")
    layers = list(model.model)
    assert len(model.yaml["backbone"]) == BACKBONE_ROWS and model.head_index == len(layers) - 1
    assert params(layers[BACKBONE_ROWS:-1]) == encoder
    assert params(layers) == total
    if backbone > 0:
        assert params(layers[:BACKBONE_ROWS]) == backbone and params(layers[-1:]) == decoder


def test_baselines_differ_from_deim_by_frozen_norms_and_the_query_position_head():
    for size in DEIM:
        deim, base = on_meta(f"deim-rtv2-{size}.yaml"), on_meta(f"rtdetrv2-{size}.yaml")
        frozen_bn = sum(2 * m.num_features for m in base.model[:BACKBONE_ROWS].modules()
                        if isinstance(m, FrozenBatchNorm2d))
        assert (frozen_bn > 0) == (size in FROZEN_BASELINE)
        assert params(deim.model[:BACKBONE_ROWS]) - params(base.model[:BACKBONE_ROWS]) == frozen_bn
        head = deim.model[-1]
        per_layer = params([head.decoder.layers[0], head.dec_bbox_head[0], head.dec_score_head[0]])
        extra_layers = LAYERS[size][1] - LAYERS[size][0]  # R50-m: the baseline's 6 layers against DEIM's 3
        assert params(base.model[-1:]) == params(deim.model[-1:]) + 1024 + extra_layers * per_layer


@pytest.mark.parametrize("name", NAMES)
def test_header_states_the_counts_and_the_decoder_settings(name):
    text = Path(resolve_model_path(f"{name}.yaml")[0]).read_text()
    match = re.search(r"backbone rows 0-4:\s*# ([\d,]+); encoder rows 5-22: ([\d,]+); decoder row 23: ([\d,]+); "
                      r"whole model ([\d,]+)\.", text)
    assert match, "the header states the four counts"
    stated = [int(g.replace(",", "")) for g in match.groups()]
    model = on_meta(f"{name}.yaml")
    layers = list(model.model)
    assert stated == [params(layers[:BACKBONE_ROWS]), params(layers[BACKBONE_ROWS:-1]), params(layers[-1:]),
                      params(layers)]
    head = model.model[-1]
    size = name.split("-")[-1]
    deim_layers, base_layers, base_eval = LAYERS[size]
    if name.startswith("deim"):
        assert (len(head.decoder.layers), head.eval_idx) == (deim_layers, deim_layers - 1)
        assert isinstance(head.decoder.layers[0].activation, nn.SiLU) and isinstance(head.enc_bbox_head.act, nn.SiLU)
        assert len(head.query_pos_head.layers) == 3  # as_reg
    else:
        assert (len(head.decoder.layers), head.eval_idx) == (base_layers, base_eval % base_layers)
        assert isinstance(head.decoder.layers[0].activation, nn.ReLU) and len(head.query_pos_head.layers) == 2


@pytest.mark.parametrize("name", NAMES)
def test_norms_and_output_shapes_at_640(name):
    model = on_meta(f"{name}.yaml").eval()
    size = name.split("-")[-1]
    frozen = name.startswith("rtdetrv2") and size in FROZEN_BASELINE
    backbone = model.model[:BACKBONE_ROWS]
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules()) == frozen
    assert any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()) == (not frozen)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d)]
    assert bns and all(m.eps == 1e-5 for m in bns)
    assert all(m.momentum == 0.1 for m in bns if isinstance(m, nn.BatchNorm2d))  # PyTorch's defaults
    outs = {}
    for k, m in enumerate(model.model):
        m.register_forward_hook(lambda mod, args, out, k=k: outs.__setitem__(k, out))
    with torch.no_grad():
        model.head_inputs(torch.empty(1, 3, 640, 640, device="meta"))  # shapes only, up to the decoder
    assert outs[0].shape == (1, 64, 160, 160)  # stem + max-pool: stride 4
    for stage, channels in enumerate(STAGES[size]):
        side = 640 // (4 * 2 ** stage)
        assert outs[1 + stage].shape == (1, channels, side, side)
    hidden = 384 if size == "r101" else 256
    assert [tuple(outs[r].shape) for r in (16, 19, 22)] == [(1, hidden, 80, 80), (1, hidden, 40, 40),
                                                            (1, hidden, 20, 20)]
    assert model.model[-1].f == [16, 19, 22] and model.strides == [8, 16, 32]
    assert isinstance(model.model[-1], RTDETRv2Decoder)


# Official state-dict layout (research notes section 10): DEIM R18 has 540 keys (backbone 138, encoder 270,
# decoder 132 with the derived anchors / valid_mask), R50 801.
@pytest.mark.parametrize(("name", "sizes"), [("deim-rtv2-r18", (138, 270, 130)), ("deim-rtv2-r50", None)])
def test_state_dict_layout_matches_the_official_one(name, sizes):
    model = on_meta(f"{name}.yaml")
    keys = list(model.state_dict())
    row = [int(k.split(".")[1]) for k in keys]
    parts = ([k.split(".", 2)[2] for k, r in zip(keys, row) if r < BACKBONE_ROWS],
             [k.split(".", 2)[2] for k, r in zip(keys, row) if BACKBONE_ROWS <= r < model.head_index],
             [k.split(".", 2)[2] for k, r in zip(keys, row) if r == model.head_index])
    if sizes is None:
        assert len(keys) == 801 - 2
        return
    assert tuple(len(p) for p in parts) == sizes
    backbone, encoder, decoder = parts
    assert backbone[:2] == ["conv1_1.conv.weight", "conv1_1.norm.weight"]
    assert backbone[-1] == "blocks.1.branch2b.norm.num_batches_tracked"
    assert encoder[:2] == ["conv.weight", "norm.weight"] and encoder[-1] == "conv3.norm.num_batches_tracked"
    assert decoder[0] == "input_proj.0.conv.weight" and decoder[-1] == "dec_bbox_head.2.layers.2.bias"


def test_r18_trains_predicts_and_fuses(single_thread):
    torch.manual_seed(0)
    model = build_model("deim-rtv2-r18.yaml", nc=3)
    img = torch.rand(2, 3, 160, 160)  # 400 + 100 + 25 tokens: 300 queries
    out = model.train()(img, targets([1, 2], nc=3))
    assert out.dec_bboxes.shape == (3, 2, 100 // 2 * 2 * 2 + 300, 4)  # 50 groups of 2 x 2 denoising copies
    model.eval()
    with torch.no_grad():
        y, maps = model(img), model.head_inputs(img)
        model.fuse()
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        fused_y, fused_maps = model(img), model.head_inputs(img)
    assert y.shape == (2, 300, 6)
    for before, after in zip(maps, fused_maps, strict=True):  # the encoder's maps (the head's own: tests/nn/heads)
        torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-4)
    # untrained scores sit near the class prior, so near-ties may swap places in the top-k: compare the scores
    torch.testing.assert_close(fused_y[..., 4], y[..., 4], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(("name", "ours", "official"), [("deim-rtv2-r18", 59.35, 61.49),
                                                         ("deim-rtv2-r50", 135.64, 137.78)])
def test_gflops_at_640_against_the_official_built_model(name, ours, official):
    """docs/modules.md: the official encoder box head, MLP(256, 256, 4), also runs on the 8,400 - 300 tokens query
    selection drops; that is the whole difference from the official count (research notes section 1)."""
    flops = on_meta(f"{name}.yaml").flops(640)  # on meta attention is counted as matmuls, as officially
    assert flops == pytest.approx(ours, abs=0.005)
    unselected = (80 * 80 + 40 * 40 + 20 * 20 - 300) * (256 * 256 * 2 + 256 * 4) * 2 / 1e9
    assert flops + unselected == pytest.approx(official, abs=0.01)
