"""DetectionModel: graph execution, info(), fuse(), checkpoints."""

import pytest
import torch
import torch.nn as nn

from rtdet import DetectionModel, ModelConfigError, build_model, load_model
from rtdet.utils.checkpoint import CheckpointError

SMALL = {
    "nc": 4,
    "name": "small",
    "backbone": [
        [-1, 1, "Conv", [16, 3, 2]],
        [-1, 1, "Conv", [32, 3, 2]],
        [-1, 1, "RepC3", [32]],
        [-1, 1, "Conv", [64, 3, 2]],
    ],
    "head": [
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 2], 1, "Concat", [1]],
        [-1, 2, "RepC3", [32]],
    ],
}


def randomise(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.normal_(1.0, 0.3, generator=g)
            m.bias.data.normal_(0.0, 0.3, generator=g)
    return model


def test_forward_keeps_only_needed_outputs_and_runs():
    model = build_model(SMALL).eval()
    assert model.saved_slots == [2]
    assert model(torch.zeros(2, 3, 64, 96)).shape == (2, 32, 16, 24)


def test_batchnorm_uses_reference_eps_and_momentum():
    bns = [m for m in build_model(SMALL).modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)


def test_info_prints_table_and_summary(capsys):
    model = build_model(SMALL)
    text = model.info(imgsz=64)
    params = sum(p.numel() for p in model.parameters())
    assert f"small summary: {len(list(model.modules()))} layers, {params:,} parameters, " in text
    assert "GFLOPs" in text and "RepC3" in text and "[-1, 2]" in text
    assert text in capsys.readouterr().out


def test_flops_count_a_single_conv_exactly():
    model = build_model({"nc": 1, "backbone": [[-1, 1, "Conv", [8, 3, 1]]], "head": []})
    # 2 x MACs of the conv: 8 * 3 * 3 * 3 * 32 * 32, BN/act are not multiply-accumulates
    assert model.flops(32) == pytest.approx(2 * 8 * 27 * 32 * 32 / 1e9)


def test_fuse_keeps_outputs_and_removes_batchnorm():
    model = randomise(build_model(SMALL)).eval()
    x = torch.randn(1, 3, 64, 64)
    before = model(x)
    n_before = sum(p.numel() for p in model.parameters())
    model.fuse()
    assert model.is_fused
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) < n_before
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4 * before.abs().max().item())


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = randomise(build_model(SMALL, names=["a", "b", "c", "d"])).eval()
    path = model.save(tmp_path / "m.pt")
    loaded = load_model(path).model.eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(x), loaded(x))
    assert loaded.names == {0: "a", 1: "b", 2: "c", 3: "d"} and loaded.nc == 4
    raw = torch.load(path, weights_only=True)  # plain types + tensors only
    assert raw["model"]["yaml"]["nc"] == 4


def test_checkpoint_with_wrong_weights_is_refused(tmp_path):
    ckpt = build_model(SMALL).to_checkpoint()
    ckpt["state_dict"].pop(next(iter(ckpt["state_dict"])))
    with pytest.raises(CheckpointError, match="weights do not match"):
        DetectionModel.from_checkpoint(ckpt, source="x.pt")


def test_nc_override_at_build_time():
    assert build_model(SMALL, nc=9).nc == 9
    assert build_model(SMALL, nc=9).yaml["nc"] == 9


def test_modules_may_keep_their_own_batchnorm_settings():
    from rtdet.nn.modules.shvit import SHViT

    model = build_model({"nc": 1, "backbone": [[-1, 1, "shvit_s1", []]], "head": [[0, 1, "Index", [1]]]})
    assert isinstance(model.model[0], SHViT)
    assert all(m.eps == 1e-5 for m in model.model[0].modules() if isinstance(m, nn.BatchNorm2d))


def test_errors_raised_by_a_module_constructor_name_the_row():
    cfg = {"nc": 1, "backbone": [[-1, 1, "Conv", [30, 3, 2]], [-1, 1, "DySample", [2, "lp", 5]]], "head": []}
    with pytest.raises(ModelConfigError, match=r"row 1 \(DySample\): .*32.*5|row 1 \(DySample\): .*5.*32"):
        build_model(cfg)


def test_a_checkpoint_whose_tensor_shapes_do_not_fit_names_the_key_and_both_shapes(tmp_path):
    from tests.tiny_models import tiny_rtdetr_yaml

    (tmp_path / "tiny.yaml").write_text(tiny_rtdetr_yaml(nc=2, queries=10, denoising=10))
    entry = build_model(str(tmp_path / "tiny.yaml")).to_checkpoint()
    key = next(k for k, v in entry["state_dict"].items() if v.dim() == 4)
    shape = tuple(entry["state_dict"][key].shape)
    entry["state_dict"][key] = torch.zeros(shape[0] + 1, *shape[1:])
    with pytest.raises(CheckpointError, match=rf"edited.pt: {key} has shape \({shape[0] + 1}, .* needs \({shape[0]}, "):
        DetectionModel.from_checkpoint(entry, source="edited.pt")
