"""DySample: exact to the official algorithm, bilinear at zero offsets, groups and x/y order, counts,
initialisation, configuration errors, and graphs that follow the input size."""

from __future__ import annotations

import io
import warnings
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rtdet import build_model
from rtdet.nn.modules.dysample import DySample


def official_dysample(m: DySample, x: torch.Tensor) -> torch.Tensor:
    """The official forward pass written out step by step (pixel-shuffled offsets + init_pos, pixel-centre
    grid normalised by (W, H), grid_sample with border padding), using ``m``'s parameters."""
    s, g = m.scale, m.groups
    if m.style == "pl":
        xs = F.pixel_shuffle(x, s)
        raw = m.offset(xs) * (m.scope(xs).sigmoid() * 0.5 if m.scope is not None else 0.25)
        offset = F.pixel_unshuffle(raw, s) + m.init_pos
    else:
        raw = m.offset(x) * (m.scope(x).sigmoid() * 0.5 if m.scope is not None else 0.25)
        offset = raw + m.init_pos
    b, _, h, w = offset.shape
    offset = offset.view(b, 2, -1, h, w)
    cx = torch.arange(w, dtype=x.dtype) + 0.5
    cy = torch.arange(h, dtype=x.dtype) + 0.5
    coords = torch.stack(torch.meshgrid([cx, cy], indexing="ij")).transpose(1, 2)  # (2, H, W), x first
    coords = coords.view(1, 2, 1, h, w)
    normaliser = torch.tensor([w, h], dtype=x.dtype).view(1, 2, 1, 1, 1)
    grid = 2 * (coords + offset) / normaliser - 1
    grid = F.pixel_shuffle(grid.reshape(b, -1, h, w), s).view(b, 2, g, s * h, s * w)
    grid = grid.permute(0, 2, 3, 4, 1).reshape(b * g, s * h, s * w, 2)
    out = F.grid_sample(x.reshape(b * g, -1, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(b, -1, s * h, s * w)


def randomised(m: DySample, std: float = 1.0) -> DySample:
    """Give every learned tensor a non-trivial value (the real init is nearly zero)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, std)
    return m


def offset_rows(m: DySample, group: int, component: int) -> list[int]:
    """Rows of the offset layer (before pixel-shuffle) that move ``group`` along x (0) or y (1)."""
    per_group = m.scale**2 if m.style == "lp" else 1
    start = (component * m.groups + group) * per_group
    return list(range(start, start + per_group))


# ---------------------------------------------------------------------------------------------- maths
@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("dyscope", [False, True])
def test_zero_offsets_are_bilinear_upsampling(style, scale, dyscope):
    m = randomised(DySample(4 * scale**2, scale, style, groups=4, dyscope=dyscope))
    with torch.no_grad():  # zero offsets; a random scope must not matter
        m.offset.weight.zero_()
        m.offset.bias.zero_()
    x = torch.randn(2, 4 * scale**2, 5, 7)  # odd, non-square
    expected = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("dyscope", [False, True])
@pytest.mark.parametrize("scale,groups", [(2, 4), (3, 1), (2, 2)])
def test_matches_official_algorithm_and_gradients(style, dyscope, scale, groups):
    m = randomised(DySample(8 * scale**2, scale, style, groups, dyscope)).double()
    x = torch.randn(2, 8 * scale**2, 4, 6, dtype=torch.float64, requires_grad=True)
    ours = m(x)
    ref = official_dysample(m, x)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    cot = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, [x, *m.parameters()], cot)
    g_ref = torch.autograd.grad(ref, [x, *m.parameters()], cot)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("style", ["lp", "pl"])
def test_groups_do_not_mix(style):
    m = randomised(DySample(16, 2, style, groups=4), std=0.3)
    x = torch.randn(1, 16, 6, 5)
    before = m(x)
    with torch.no_grad():  # move only group 1 (channels 4..7), along x and y
        m.offset.bias[offset_rows(m, 1, 0)] += 2.0
        m.offset.bias[offset_rows(m, 1, 1)] -= 1.5
    changed = (m(x) - before).abs().amax(dim=(0, 2, 3))
    assert changed[4:8].min() > 1e-3
    assert changed[:4].max() == 0 and changed[8:].max() == 0


@pytest.mark.parametrize("style", ["lp", "pl"])
def test_x_and_y_offsets_move_along_width_and_height(style):
    m = DySample(16, 2, style, groups=1)
    with torch.no_grad():
        m.offset.weight.zero_()
    h, w = 6, 8
    ramp_x = torch.arange(w, dtype=torch.float32).expand(1, 16, h, w).contiguous()  # varies along width
    ramp_y = torch.arange(h, dtype=torch.float32).view(h, 1).expand(1, 16, h, w).contiguous()
    base_x, base_y = m(ramp_x), m(ramp_y)
    with torch.no_grad():  # +1 on the x rows = +0.25 input pixels to the right (static scope)
        m.offset.bias[offset_rows(m, 0, 0)] = 1.0
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # away from the clamped border
    torch.testing.assert_close((m(ramp_x) - base_x)[inner], torch.full_like(base_x[inner], 0.25))
    torch.testing.assert_close(m(ramp_y), base_y)  # an x move does not change a row-constant image
    with torch.no_grad():
        m.offset.bias.zero_()
        m.offset.bias[offset_rows(m, 0, 1)] = 1.0
    torch.testing.assert_close((m(ramp_y) - base_y)[inner], torch.full_like(base_y[inner], 0.25))
    torch.testing.assert_close(m(ramp_x), base_x)


def test_output_shape_non_square_batch():
    m = DySample(32, 3, "lp", groups=8)
    assert m(torch.randn(3, 32, 5, 9)).shape == (3, 32, 15, 27)


# ---------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "kwargs,count",
    [
        (dict(scale=2, style="lp", groups=4, dyscope=False), 8_224),  # targets.md
        (dict(scale=2, style="lp", groups=4, dyscope=True), 16_416),
        (dict(scale=2, style="pl", groups=8, dyscope=True), 2_064),
        (dict(scale=2, style="pl", groups=4, dyscope=False), 520),
    ],
)
def test_parameter_counts(kwargs, count):
    assert sum(p.numel() for p in DySample(256, **kwargs).parameters()) == count


def test_official_state_dict_layout():
    sd = DySample(64, dyscope=True).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "init_pos": (1, 32, 1, 1),
        "offset.weight": (32, 64, 1, 1),
        "offset.bias": (32,),
        "scope.weight": (32, 64, 1, 1),  # no scope bias (official since efcf8ae)
    }


def test_initial_positions_are_sub_pixel_centres():
    pos = DySample(8, scale=2, groups=2).init_pos.view(2, 2, 2, 2)  # (component, group, a, b)
    for g in range(2):
        torch.testing.assert_close(pos[0, g], torch.tensor([[-0.25, 0.25], [-0.25, 0.25]]))  # x = h[b]
        torch.testing.assert_close(pos[1, g], torch.tensor([[-0.25, -0.25], [0.25, 0.25]]))  # y = h[a]
    h3 = DySample(9, scale=3, groups=1).init_pos.view(2, 3, 3)[0, 0]
    torch.testing.assert_close(h3, torch.tensor([-1 / 3, 0.0, 1 / 3]))


def test_initialisation_and_reset_after_model_wide_init():
    torch.manual_seed(0)
    m = DySample(256, dyscope=True)

    def check():
        w = m.offset.weight
        assert 0.0008 < w.std().item() < 0.0012 and abs(w.mean().item()) < 1e-4
        assert m.offset.bias.abs().max() == 0
        assert m.scope.weight.abs().max() == 0 and m.scope.bias is None

    check()
    for mod in m.modules():  # what a framework-wide initialiser would do
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_uniform_(mod.weight)
    assert m.scope.weight.abs().max() > 0
    m.reset_parameters()
    check()


@pytest.mark.parametrize(
    "args,needles",
    [
        ((30, 2, "lp", 4), ["30", "4"]),  # channels not divisible by groups
        ((8, 3, "pl", 4), ["8", "9"]),  # pl needs channels divisible by scale**2
        ((16, 2, "bilinear", 4), ["bilinear", "lp", "pl"]),
        ((16, 0, "lp", 4), ["scale", "0"]),
    ],
)
def test_invalid_configurations_raise_with_the_numbers(args, needles):
    with pytest.raises(ValueError) as err:
        DySample(*args)
    assert all(n in str(err.value) for n in needles), str(err.value)


# ---------------------------------------------------------------------------------------------- runtime
def test_one_grid_sample_call_and_cached_grid():
    m = DySample(32, dyscope=True)
    x = torch.randn(2, 32, 6, 10)
    with mock.patch.object(F, "grid_sample", wraps=F.grid_sample) as spy:
        m(x)
        assert spy.call_count == 1
    base = m._grid_terms(x)[0]
    m(x)
    assert m._grid_terms(x)[0] is base  # not rebuilt for the same size
    m(torch.randn(1, 32, 7, 3))
    assert len(m._grid_cache) == 2


def test_traced_graph_follows_the_input_size():
    m = randomised(DySample(32, 2, "pl", groups=4, dyscope=True), std=0.5).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # no size turned into a constant
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        traced = torch.jit.trace(m, torch.randn(1, 32, 6, 8))
    x = torch.randn(2, 32, 9, 5)
    torch.testing.assert_close(traced(x), m(x))


@pytest.mark.parametrize("style,dyscope", [("lp", False), ("pl", True)])
def test_onnx_export_with_dynamic_size(style, dyscope):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = randomised(DySample(16, 2, style, groups=4, dyscope=dyscope), std=0.5).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            m, (torch.randn(1, 16, 6, 8),), f, opset_version=17, dynamo=False, input_names=["x"],
            dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}},
        )  # fmt: skip
    x = torch.randn(2, 16, 5, 11)
    (y,) = ort.InferenceSession(f.getvalue()).run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), m(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- YAML
def test_yaml_rows_with_and_without_arguments():
    model = build_model({
        "nc": 1,
        "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "DySample", []], [-1, 1, "DySample", [2, "pl"]]],
        "head": [],
    })  # fmt: skip
    up1, up2 = model.model[1], model.model[2]
    assert (up1.in_channels, up1.style, up2.style) == (16, "lp", "pl")
    assert model(torch.randn(1, 3, 10, 14)).shape == (1, 16, 20, 28)


def test_yaml_row_with_impossible_configuration_fails_at_build():
    with pytest.raises(ValueError, match="scale\\*\\*2 = 9"):
        build_model({"backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "DySample", [3, "pl"]]], "head": []})


def test_reduced_precision_keeps_coordinates_in_fp32():
    m = randomised(DySample(32, 2, "lp", groups=4, dyscope=True), std=0.3)
    with torch.no_grad():
        m.offset.weight.zero_()
        m.offset.bias.zero_()
    x = torch.randn(1, 32, 4, 100)  # bf16 steps near +-1 would be ~0.4 px on this 200-wide output
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 offsets, fp32 grid: sampling runs in fp32
        y = m(x)
    assert y.dtype == torch.float32
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(y, expected, atol=2e-4, rtol=0)  # a bf16 grid is off by up to ~0.4 here
    y16 = m.bfloat16()(x.bfloat16())  # a bf16 model: the grid is cast to the input's dtype at the end
    assert y16.dtype == torch.bfloat16 and y16.shape == (1, 32, 8, 200)
    assert m._grid_terms(x.bfloat16())[0].dtype == torch.float32
