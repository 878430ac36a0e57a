"""Built-in YOLOv9 models: parameter counts to the digit (targets.md), strides, GFLOPs within 3%, and the
deploy conversion (PGI branch dropped, RepConvN and BN fused) with unchanged main-branch outputs."""

import copy

import pytest
import torch

from rtdet import build_model
from rtdet.nn.builder import MODELS_DIR
from rtdet.nn.heads.yolo import DDetect, Detect, DualDDetect
from rtdet.nn.model import count_parameters
from rtdet.nn.modules.yolov9 import CBLinear, RepConvN

# (params as trained, params after fuse(), reference GFLOPs at 640 or None)  -- ../shared/reference/targets.md
OFFICIAL = {
    "yolov9-t": (3_717_680, 2_407_632, 16.5),
    "yolov9-s": (9_804_512, 7_105_888, 39.9),
    "yolov9-m": (32_878_432, 19_978_672, 133.0),
    "yolov9-c": (51_182_080, 25_288_768, 239.9),
    "yolov9-e": (69_529_664, 57_345_920, 245.5),
    "gelan-t": (2_442_640, 2_407_632, None),
    "gelan-s": (7_226_208, 7_105_888, None),
    "gelan-m": (20_124_000, 19_978_672, None),
    "gelan-c": (25_498_752, 25_288_768, 103.5),
    "gelan-e": (58_114_432, 57_345_920, None),
}
ULTRALYTICS = {  # the port's own YAML headers (2 x MACs)
    "yolov9t": (2_128_720, 8.5),
    "yolov9s": (7_318_368, 27.6),
    "yolov9m": (20_216_160, 77.9),
    "yolov9c": (25_590_912, 104.0),
    "yolov9e": (58_206_592, 193.0),
}
DEPLOYED_YOLOV9C_GFLOPS = 102.1


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = build_model(f"{name}.yaml")
        return cache[name]

    return get


def gflops_640(model) -> float:
    """GFLOPs at 640 from a 64x64 pass: every map of these models is then exactly 1/10 of its 640 size per side
    (checked for one model below), so the convolutions' multiply-accumulates are 1/100."""
    return 100 * model.flops(64)


SLOW = pytest.mark.slow  # FLOP counting and deep copies of the big models take seconds each


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_counts_and_strides(models, name):
    model = models(name)
    assert count_parameters(model) == OFFICIAL[name][0]
    dual = name.startswith("yolov9-")
    assert model.strides == ([8, 16, 32] * 2 if dual else [8, 16, 32])
    assert isinstance(model.head, DualDDetect if dual else DDetect) and model.head.family == "yolov9"


@pytest.mark.parametrize("name", sorted(ULTRALYTICS))
def test_ultralytics_port_counts_and_strides(models, name):
    model = models(name)
    assert count_parameters(model) == ULTRALYTICS[name][0]
    assert model.strides == [8, 16, 32] and isinstance(model.head, Detect)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "yolov9-t" else SLOW)
                                  for n, v in OFFICIAL.items() if v[2]] + [
                                  pytest.param(n, marks=SLOW) for n in sorted(ULTRALYTICS)])
def test_gflops_within_three_percent_of_the_references(models, name):
    want = OFFICIAL[name][2] if name in OFFICIAL else ULTRALYTICS[name][1]
    assert gflops_640(models(name)) == pytest.approx(want, rel=0.03)


def test_gflops_scale_exactly_with_the_image_area(models):
    model = models("gelan-t")
    assert model.flops(128) == pytest.approx(4 * model.flops(64), rel=1e-9)


def test_pgi_branches_are_where_the_official_layer_table_puts_them(models):
    c = models("yolov9-c")
    assert [m.i for m in c.model if isinstance(m, CBLinear)] == [23, 24, 25]
    assert c.head.f == [31, 34, 37, 16, 19, 22]
    assert list(c.state_dict())[-1] == "model.38.dfl2.conv.weight"  # official yolov9-c.pt layout
    t = models("yolov9-t")
    assert not any(isinstance(m, CBLinear) for m in t.model)  # T / S: a second neck, no CBLinear
    assert t.head.f == [28, 25, 22, 15, 18, 21]


def _randomise(model: torch.nn.Module) -> None:
    """Trained-like BN statistics and head biases, so that fusing and pruning are really tested."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    for branch in (*model.head.cv2, *model.head.cv3):
        branch[-1].bias.data.copy_(torch.randn(branch[-1].bias.shape, generator=g))


@pytest.mark.parametrize("name", ["yolov9-t", "yolov9-c", pytest.param("yolov9-e", marks=SLOW),
                                  pytest.param("gelan-c", marks=SLOW)])
def test_deploy_conversion_counts_and_main_branch_outputs(models, name):
    model = copy.deepcopy(models(name)).eval()
    _randomise(model)
    if isinstance(model.head, DualDDetect):
        for branch in (*model.head.cv4, *model.head.cv5):
            branch[-1].bias.data.normal_(0, 1, generator=torch.Generator().manual_seed(2))
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
        main = out[0] if isinstance(out, tuple) else out
        deployed = copy.deepcopy(model).fuse()
        fused = deployed(x)
    assert count_parameters(deployed) == OFFICIAL[name][1]
    assert isinstance(deployed.head, DDetect) and deployed.is_fused
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    assert all(hasattr(m, "conv") and not hasattr(m, "conv1") for m in deployed.modules() if isinstance(m, RepConvN))
    scale = main.abs().amax(-1, keepdim=True).clamp(min=1e-6)  # relative to each output row's magnitude
    assert ((fused - main).abs() / scale).max() < 1e-4
    assert main[:, 4:].std() > 1e-3  # scores really vary: the comparison is not of constants


@SLOW
def test_deployed_yolov9c_is_gelan_c_fused(models):
    deployed = copy.deepcopy(models("yolov9-c")).fuse()
    assert [type(m).__name__ for m in deployed.model] == ["Silence"] + [
        type(m).__name__ for m in models("gelan-c").model]
    assert deployed.head.f == [16, 19, 22]
    assert gflops_640(deployed) == pytest.approx(DEPLOYED_YOLOV9C_GFLOPS, rel=0.03)


def test_info_shows_training_and_inference_counts(models, capsys):
    text = models("yolov9-t").info(imgsz=None, verbose=False)
    lines = text.splitlines()
    assert len(lines) == 2
    assert "3,717,680 parameters" in lines[0] and "2,407,632 parameters" in lines[1] and "inference" in lines[1]
    assert len(models("gelan-t").info(imgsz=None, verbose=False).splitlines()) == 1
    assert models("yolov9-t").training_only_parameters() == 3_717_680 - 2_442_640


@pytest.mark.parametrize("hw", [(96, 104), (104, 96)])
def test_input_that_is_not_a_multiple_of_the_stride_is_a_clear_error(models, hw):
    model = models("yolov9-t").eval()
    message = r"not a multiple of the model's largest stride 32.*e\.g\. (96x128|128x96)"
    with pytest.raises(ValueError, match=message), torch.no_grad():
        model(torch.zeros(1, 3, *hw))


def test_nc_follows_the_dataset():
    model = build_model("gelan-t.yaml", nc=3)
    assert model.head.nc == 3 and all(branch[-1].out_channels == 3 for branch in model.head.cv3)
    assert model.head.cv3[0][0].conv.out_channels == 64  # max(ch[0], min(2 nc, 128)): the width follows nc


BUILT_IN = sorted(p.stem for p in MODELS_DIR.glob("*/*.yaml"))


@pytest.mark.parametrize("name", BUILT_IN)
def test_strides_of_every_built_in_model(models, name):
    """Learnt once at build time from the model itself and handed to its head (whatever its family)."""
    model = models(name)
    levels = [8, 16, 32, 64] if "shvit" in name else [16, 32] if name == "dfine-n" else [8, 16, 32]
    assert model.strides == (levels * 2 if isinstance(model.head, DualDDetect) else levels)
    head_strides = getattr(model.head, "strides", None)
    assert head_strides in (None, levels, model.strides)  # RT-DETR needs none, YOLO heads keep one triple
