"""The YAML builder: Ultralytics parse_model semantics, both multi-output conventions, and errors."""

import pytest
import torch
import torch.nn as nn

from rtdet import ModelConfigError, build_model, register
from rtdet.nn.modules.common import Conv
from rtdet.nn.registry import unregister


def tiny(backbone, head, **top):
    return {"nc": 3, "backbone": backbone, "head": head, **top}


def test_width_depth_scaling_and_max_channels():
    cfg = tiny(
        [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "Conv", [1024, 3, 2]]],
        [[-1, 3, "RepC3", [256]]],
        scales={"n": [0.33, 0.25, 512], "s": [0.33, 0.5, 1024]},
    )
    m = build_model(cfg, scale="n")
    assert m.layers_info[0].args[:2] == [3, 16]  # 64 * 0.25
    assert m.layers_info[1].args[:2] == [16, 128]  # min(1024, 512) * 0.25
    assert m.layers_info[2].args == [128, 64, 1]  # repeats 3 * 0.33 -> 1, inserted at index 2
    m = build_model(cfg, scale="s")
    assert m.layers_info[1].c2 == 512


def test_first_scale_is_used_when_none_given():
    cfg = tiny([[-1, 1, "Conv", [64, 3, 2]]], [], scales={"x": [1.0, 1.25, 2048], "l": [1.0, 1.0, 1024]})
    m = build_model(cfg)
    assert m.yaml["scale"] == "x" and m.layers_info[0].c2 == 80


def test_depth_width_multiple_keys_of_older_files():
    cfg = tiny([[-1, 1, "Conv", [64, 3, 2]]], [[-1, 4, "RepC3", [64]]], depth_multiple=0.5, width_multiple=0.5)
    m = build_model(cfg)
    assert m.layers_info[0].c2 == 32 and m.layers_info[1].args[2] == 2


def test_repeats_of_one_are_never_scaled_and_plain_modules_repeat_as_sequential():
    cfg = tiny([[-1, 1, "Conv", [8, 3, 2]], [-1, 3, "Conv", [8, 3, 1]]], [], depth_multiple=0.1)
    m = build_model(cfg)
    assert isinstance(m.model[0], Conv)
    assert m.layers_info[1].n == 1  # round(3 * 0.1) -> 0 -> max(.., 1)
    m = build_model(tiny([[-1, 1, "Conv", [8, 3, 2]], [-1, 2, "Conv", [8, 3, 1]]], []))
    assert isinstance(m.model[1], nn.Sequential) and len(m.model[1]) == 2


def test_string_args_resolve_to_model_values_and_literals():
    @register(channels="passthrough")
    class _Echo(nn.Module):
        def __init__(self, *args):
            super().__init__()
            self.args = args

        def forward(self, x):
            return x

    try:
        m = build_model(tiny([[-1, 1, "_Echo", ["nc", "None", "[1, 2]", "nearest"]]], []), nc=7)
        assert m.model[0].args == (7, None, [1, 2], "nearest")
        assert m.nc == 7
    finally:
        unregister("_Echo")


def test_concat_channels_and_forward_graph():
    cfg = tiny(
        [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 1]]],
        [[[-1, 0], 1, "Concat", [1]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]], [-1, 1, "Conv", [4, 1, 1]]],
    )
    m = build_model(cfg).eval()
    assert m.layers_info[4].c2 == 8  # make_divisible(4 * width, 8), as Ultralytics
    assert m.layers_info[2].c2 == 24 and m.layers_info[3].c2 == 24
    assert m.saved_slots == [0]  # only row 0 is read again later
    assert m(torch.zeros(1, 3, 32, 48)).shape == (1, 8, 32, 48)


def test_activation_key_applies_while_building_and_is_restored():
    before = Conv.default_act
    m = build_model(tiny([[-1, 1, "Conv", [8, 3, 2]]], [], activation="nn.ReLU()"))
    assert isinstance(m.model[0].act, nn.ReLU)
    assert Conv.default_act is before


class _ThreeMaps(nn.Module):
    """A stand-in multi-output backbone: strides 2, 4, 8 with 8, 16, 32 channels."""

    def __init__(self, c1):
        super().__init__()
        self.out_channels = [8, 16, 32]
        self.convs = nn.ModuleList(
            [nn.Conv2d(c1, 8, 3, 2, 1), nn.Conv2d(8, 16, 3, 2, 1), nn.Conv2d(16, 32, 3, 2, 1)]
        )

    def forward(self, x):
        outs = []
        for conv in self.convs:
            x = conv(x)
            outs.append(x)
        return outs


@pytest.fixture
def three_maps():
    register(channels="backbone")(_ThreeMaps)
    yield
    unregister("_ThreeMaps")


def test_multi_output_with_index_rows(three_maps):
    cfg = tiny(
        [[-1, 1, "_ThreeMaps", []], [0, 1, "Index", [16, 1]], [0, 1, "Index", [2]]],
        [[-1, 1, "Conv", [8, 1, 1]], [1, 1, "Conv", [8, 1, 1]]],
    )
    m = build_model(cfg).eval()
    assert [b.c2 for b in m.layers_info] == [[8, 16, 32], 16, 32, 8, 8]
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 8, 16, 16)  # row 4 reads map 1 (stride 4)


def test_index_declaring_wrong_channels_is_an_error(three_maps):
    cfg = tiny([[-1, 1, "_ThreeMaps", []], [0, 1, "Index", [99, 1]]], [])
    with pytest.raises(ModelConfigError, match="row 1 .*declares 99 channels but map 1 of its input has 16"):
        build_model(cfg)


def test_multi_output_with_community_five_slots(three_maps):
    # three maps fill slots 2-4; later rows are numbered row + 4; -1 right after means the last map
    cfg = tiny(
        [[-1, 1, "_ThreeMaps", []]],
        [
            [-1, 1, "Conv", [8, 1, 1]],  # 5: reads slot 4 (stride 8)
            [2, 1, "Conv", [8, 1, 1]],  # 6: reads slot 2 (stride 2)
            [[-2, 3], 1, "Concat", [1]],  # 7: wrong sizes are fine to build; only channels are checked
        ],
    )
    m = build_model(cfg)
    assert m.layers_info[0].slots == [2, 3, 4]
    assert [b.slot for b in m.layers_info] == [4, 5, 6, 7]
    assert [b.f for b in m.layers_info[1:]] == [4, 2, [5, 3]]
    assert m.layers_info[3].c2 == 8 + 16
    cfg["head"] = [[-1, 1, "Conv", [8, 1, 1]], [2, 1, "Conv", [8, 3, 4]], [[-1, -2], 1, "Concat", [1]]]
    assert build_model(cfg).eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 16, 8, 8)


def test_slot_zero_is_empty_in_the_five_slot_convention(three_maps):
    cfg = tiny([[-1, 1, "_ThreeMaps", []]], [[0, 1, "Conv", [8, 1, 1]]])
    with pytest.raises(ModelConfigError, match="holds no output"):
        build_model(cfg)


@pytest.mark.parametrize(
    ("cfg", "pattern"),
    [
        ({"nc": 1, "head": []}, "missing the 'backbone' section"),
        ({"nc": 1, "backbone": []}, "missing the 'head' section"),
        (tiny([[-1, 1, "Conv"]], []), r"row 0 is .*expected 4 items \[from, repeats, module, args\]"),
        (tiny([[-1, 1, "Conv", [8]], [3, 1, "Conv", [8]]], []), "row 1 .*'from' 3 points forward"),
        (tiny([[-1, 1, "Conv", [8]], [-5, 1, "Conv", [8]]], []), "row 1 .*'from' -5 points before the first row"),
        (
            tiny([[-1, 1, "Conv", [8, 3, 2, None, 1, 1, True, 9, 9]]], []),
            r"row 0 \(Conv\): arguments .* do not fit Conv",
        ),
        (tiny([[-1, 0, "Conv", [8]]], []), "row 0: repeats must be a positive int"),
        (tiny([[-1, 1, "Conv", 8]], []), r"row 0 \(Conv\): args must be a list"),
        (tiny([[-1, 1, "Conv", []]], []), r"row 0 \(Conv\): expects its output channels as the first argument"),
        (tiny([[-1, 1, "Conv", [8]]], [], scales={"n": [1, 1, 64]}, scale="q"), "scale 'q' is not among"),
        (tiny([[-1, 1, "Conv", [8]]], [], activation="nn.Nope()"), "torch.nn has no module 'Nope'"),
    ],
)
def test_malformed_yaml_errors_name_the_row_and_expectation(cfg, pattern):
    with pytest.raises(ModelConfigError, match=pattern):
        build_model(cfg)


def test_unknown_modules_are_all_listed_with_rows():
    cfg = tiny([[-1, 1, "Conv", [8]], [-1, 1, "Foo", []], [-1, 1, "Foo", []]], [[-1, 1, "RepC4", [8]]])
    with pytest.raises(ModelConfigError) as err:
        build_model(cfg)
    message = str(err.value)
    assert "Foo (rows 1, 2)" in message and "RepC4 (row 3)" in message and "RepC3" in message
    assert "@rtdet.register" in message


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: [[-1, 1, Conv, [8]]\n")
    with pytest.raises(ModelConfigError, match="bad.yaml: not valid YAML"):
        build_model(bad)
    with pytest.raises(FileNotFoundError, match="Built-in models: .*rtdetr-l.yaml"):
        build_model(tmp_path / "missing.yaml")


def test_builtin_names_resolve_to_the_package_folder():
    from rtdet.nn.builder import resolve_model_path

    path, scale = resolve_model_path("rtdetr-l.yaml")
    assert path.name == "rtdetr-l.yaml" and path.parent.name == "rtdetr" and scale is None
