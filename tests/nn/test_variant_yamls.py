"""Built-in RT-DETR variants with plug-in modules: they build, their parameter counts follow from rtdetr-l's
and the modules' own counts, and they run on non-square inputs (eval and train)."""

from __future__ import annotations

import copy

import pytest
import torch

from rtdet import build_model
from rtdet.nn.model import count_parameters
from rtdet.nn.modules.convnextv2 import ConvNeXtV2
from rtdet.nn.modules.dysample import DySample
from rtdet.nn.modules.shvit import SHSA, SHViT

RTDETR_L = 32_970_476  # targets.md, nc=80
# nc=80 vs nc=1: 79 classes x (denoising embedding 256 + encoder score head 257 + 6 decoder heads x 257)
NC1_DELTA = 79 * (256 + 7 * 257)
CONVNEXT_ATTO_NC1 = 21_867_371  # targets.md: the community ConvNeXt V2-atto RT-DETR, nc=1
CONVNEXT = {"atto": 3_386_760, "tiny": 27_864_960}  # backbones without classifier (test_convnextv2.py)
SHVIT_S4 = 16_138_588  # backbone without classifier (test_shvit.py)

VARIANTS = [
    "rtdetr-l-dysample.yaml",
    "rtdetr-l-shsa.yaml",
    "rtdetr-convnextv2-atto.yaml",
    "rtdetr-convnextv2-tiny.yaml",
    "rtdetr-shvit-s4.yaml",
    "rtdetr-l-dfine.yaml",
]


@pytest.fixture(scope="module")
def models() -> dict:
    torch.manual_seed(0)
    return {name: build_model(name) for name in VARIANTS}


def proj(c: int) -> int:
    """Conv(c, 256, 1) without bias + BatchNorm: the input projections of the hybrid encoder."""
    return 256 * c + 2 * 256


def shsa_params(c: int, qk: int = 16) -> int:
    p = c // 4
    return 2 * p + p * (2 * qk + p) + 2 * (2 * qk + p) + c * c + 2 * c


@pytest.mark.parametrize("name", VARIANTS)
def test_builds_and_runs_on_a_non_square_input(models, name):
    model = models[name].eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 160))
    assert out.shape == (1, 300, 6)
    assert model.strides == ([8, 16, 32, 64] if "shvit" in name else [8, 16, 32])


def test_dysample_variant_replaces_both_upsamplers(models):
    model = models["rtdetr-l-dysample.yaml"]
    ups = [m for m in model.model if isinstance(m, DySample)]
    assert [m.i for m in ups] == [13, 18] and all(m.in_channels == 256 for m in ups)
    assert count_parameters(model) == RTDETR_L + 2 * 8_224
    assert count_parameters(build_model("rtdetr-l-dysample.yaml", nc=1)) == 32_824_579  # the community file


def test_dysample_variant_trains(models):
    model = models["rtdetr-l-dysample.yaml"].train()
    dec_bboxes, dec_scores, *_ = model(torch.randn(1, 3, 128, 160))
    (dec_bboxes.sum() + dec_scores.sum()).backward()
    for row in (13, 18):
        grad = model.model[row].offset.weight.grad
        assert grad is not None and grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_shsa_variant_rows(models):
    model = models["rtdetr-l-shsa.yaml"]
    shsa = {m.i: (m.dim, m.pdim) for m in model.model if isinstance(m, SHSA)}
    assert shsa == {8: (1024, 256), 11: (2048, 512)}
    assert model.model[16].f == 8 and model.model[12].f == 11  # P4 / P5 projections read the SHSA rows
    assert model.head.f == [23, 26, 29]
    assert count_parameters(model) == RTDETR_L + shsa_params(1024) + shsa_params(2048)


@pytest.mark.parametrize("size", ["atto", "tiny"])
def test_convnextv2_variants(models, size):
    model = models[f"rtdetr-convnextv2-{size}.yaml"]
    backbone = model.model[0]
    assert isinstance(backbone, ConvNeXtV2) and count_parameters(backbone) == CONVNEXT[size]
    dims = backbone.dims
    atto_dims = (40, 80, 160, 320)
    expected = (
        CONVNEXT_ATTO_NC1 + NC1_DELTA  # same layers as the community file, 80 classes
        + CONVNEXT[size] - CONVNEXT["atto"]
        + sum(proj(c) - proj(a) for c, a in zip(dims[1:], atto_dims[1:]))
    )  # fmt: skip
    assert count_parameters(model) == expected


def test_shvit_variant(models):
    model = models["rtdetr-shvit-s4.yaml"]
    backbone = model.model[0]
    assert isinstance(backbone, SHViT) and count_parameters(backbone) == SHVIT_S4
    ups = {m.i: m.in_channels for m in model.model if isinstance(m, DySample)}
    assert ups == {4: 224, 8: 256, 13: 256}  # P3 from the stride-16 map + two top-down steps
    assert count_parameters(model.model[4]) == 2 * 4 * 4 * 224 + 32
    projections = [count_parameters(model.model[i]) for i in (5, 9, 14, 24)]
    assert projections == [proj(336), proj(224), proj(224), proj(448)]
    assert model.head.f == [16, 19, 22, 26]
    x = torch.randn(1, 3, 96, 160)  # sides divisible by 32 but not by 64
    with torch.no_grad():
        feats = model.eval().head_inputs(x)
    assert [tuple(f.shape[-2:]) for f in feats] == [(12, 20), (6, 10), (3, 5), (2, 3)]


def test_dfine_decoder_replaces_rtdetrs(models):
    """D-FINE's decoder row in an RT-DETR YAML: rtdetr-l's rows keep their counts, the head brings its loss."""
    from rtdet.families import criterion_for
    from rtdet.losses.dfine import DFineCriterion
    from rtdet.nn.heads.dfine import DFineTrainOutput

    model, reference = models["rtdetr-l-dfine.yaml"], build_model("rtdetr-l.yaml")
    trunk = [count_parameters(m) for m in list(model.model)[:-1]]
    assert trunk == [count_parameters(m) for m in list(reference.model)[:-1]]
    assert count_parameters(model.head) == 8_393_240 and count_parameters(model) == 33_897_464  # D-FINE-L's decoder
    assert model.head.family == "dfine" and isinstance(criterion_for(model.head), DFineCriterion)
    batch = {"cls": torch.tensor([[0.0], [1.0]]), "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.4, 0.2, 0.2]]),
             "batch_idx": torch.tensor([0.0, 1.0])}
    out = copy.deepcopy(model).train()(torch.rand(2, 3, 128, 128), batch)
    assert isinstance(out, DFineTrainOutput) and out.dec_scores.shape[-1] == 80


def test_fused_model_gives_the_same_features(models):
    model = copy.deepcopy(models["rtdetr-l-shsa.yaml"])  # SHSA rows fuse their Conv-BNs with the rest
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial BatchNorms, so that folding them is visible
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    x = torch.randn(1, 3, 128, 160)
    before = model.eval().head_inputs(x)
    model.fuse()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.model[0].modules())
    for a, b in zip(model.head_inputs(x), before, strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_runs_at_640(models, name):
    with torch.no_grad():
        assert models[name].eval()(torch.randn(1, 3, 640, 640)).shape == (1, 300, 6)
