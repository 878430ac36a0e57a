"""Community RT-DETR and YOLOv9 YAMLs with plug-in modules build unchanged and match the published parameter
counts (targets.md); the one naming unpublished modules fails clearly and builds once they are registered."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from rtdet import ModelConfigError, build_model
from rtdet.nn.model import count_parameters
from rtdet.nn.modules.common import Conv
from rtdet.nn.modules.dysample import DySample
from rtdet.nn.modules.shvit import SHSA
from rtdet.nn.registry import register, scaled, unregister


def community(folder, name: str):
    path = folder / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def run_eval(model, h: int = 128, w: int = 160) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(1, 3, h, w))


def test_rtdetr_l_dysample(community_yaml):
    model = build_model(community(community_yaml, "rtdetr-l-DySample.yaml"))
    assert model.nc == 1
    assert count_parameters(model) == 32_824_579
    ups = [m for m in model.model if isinstance(m, DySample)]
    assert [m.i for m in ups] == [13, 18] and all(count_parameters(m) == 8_224 for m in ups)
    assert run_eval(model).shape == (1, 300, 6)


def test_rtdetr_l_convnextv2_five_slot_convention(community_yaml):
    model = build_model(community(community_yaml, "rtdetr-l-ConvNeXtV2.yaml"))
    # the published 22,189,011 carried ConvNeXt V2-atto's unused classifier norm + head (640 + 321,000)
    assert count_parameters(model) == 22_189_011 - 640 - 321_000 == 21_867_371
    assert model.layers_info[0].slots == [1, 2, 3, 4]
    assert model.strides == [8, 16, 32]
    assert run_eval(model).shape == (1, 300, 6)


def test_rtdetr_l_shsa_names_both_unknown_modules(community_yaml):
    with pytest.raises(ModelConfigError) as err:
        build_model(community(community_yaml, "rtdetr-l-SHSA.yaml"))
    msg = str(err.value)
    assert "CCRI" in msg and "RepC4" in msg
    assert "register" in msg


class StandInCCRI(nn.Module):
    """Placeholder for the unpublished CCRI: n 3x3 Convs (YAML args [c2, k, ...] after c1, c2, n)."""

    def __init__(self, c1: int, c2: int, n: int = 1, *args):
        super().__init__()
        self.m = nn.Sequential(*(Conv(c1 if i == 0 else c2, c2, 3) for i in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class StandInRepC4(StandInCCRI):
    """Placeholder for the unpublished RepC4 ([c2] with repeats n)."""


def test_rtdetr_l_shsa_builds_once_the_modules_are_registered(community_yaml):
    path = community(community_yaml, "rtdetr-l-SHSA.yaml")
    register(name="CCRI", channels=scaled(repeat_at=2))(StandInCCRI)
    register(name="RepC4", channels=scaled(repeat_at=2))(StandInRepC4)
    try:
        model = build_model(path)
        shsa = model.model[4]
        assert isinstance(shsa, SHSA) and (shsa.dim, shsa.pdim, shsa.qk_dim) == (256, 64, 16)
        assert isinstance(model.model[2], StandInCCRI) and len(model.model[2].m) == 2
        assert run_eval(model).shape == (1, 300, 6)
    finally:
        unregister("CCRI")
        unregister("RepC4")
    with pytest.raises(ModelConfigError, match="CCRI"):
        build_model(path)


def test_yolov9_c_dysample(community_yaml):
    """Seed 001 of the users' recipes: YOLOv9-C (PGI auxiliary branch) with DySample as its second upsampler."""
    from rtdet.nn.heads.yolo import DDetect, DualDDetect

    model = build_model(community(community_yaml, "yolov9-c-DySample.yaml"))
    assert count_parameters(model) == 51_198_496 == 51_182_080 + 16_416
    ups = [m for m in model.model if isinstance(m, DySample)]
    assert [m.i for m in ups] == [14] and count_parameters(ups[0]) == 16_416 and ups[0].in_channels == 512
    assert isinstance(model.head, DualDDetect) and model.strides == [8, 16, 32, 8, 16, 32]
    main, aux = run_eval(model, 64, 96)
    assert main.shape == aux.shape == (1, 84, 8 * 12 + 4 * 6 + 2 * 3)
    deployed = model.fuse()  # the auxiliary branch goes, DySample (in the main neck) stays
    assert isinstance(deployed.head, DDetect) and count_parameters(deployed) == 25_288_768 + 16_416
