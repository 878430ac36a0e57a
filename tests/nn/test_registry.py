"""The registry: registering modules, channel rules, lookups with suggestions, activations."""

import pytest
import torch.nn as nn

from rtdet.nn import registry
from rtdet.nn.registry import lookup, make_divisible, register, resolve_activation, unregister


def test_make_divisible_rounds_up_to_multiple():
    assert make_divisible(180 * 1.0) == 184
    assert make_divisible(64) == 64
    assert make_divisible(0.25 * 100) == 32


def test_register_bare_and_with_arguments():
    @register
    class _TmpA(nn.Module):
        def __init__(self, c1, c2):
            super().__init__()

    @register("TmpAlias", channels="same")
    class _TmpB(nn.Module):
        def __init__(self, c1):
            super().__init__()

    try:
        assert lookup("_TmpA").cls is _TmpA
        assert lookup("TmpAlias").cls is _TmpB
        assert lookup("TmpAlias").channels is registry.RULES["same"]
    finally:
        unregister("_TmpA")
        unregister("TmpAlias")


def test_register_refuses_a_different_class_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):

        @register("Conv")
        class Other(nn.Module):
            pass


def test_register_rejects_unknown_rule_and_non_modules():
    with pytest.raises(ValueError, match="unknown channel rule"):

        @register(channels="sideways")
        class _Bad(nn.Module):
            pass

    with pytest.raises(TypeError, match="nn.Module"):
        register(int)


def test_unknown_name_suggests_close_matches_and_how_to_register():
    with pytest.raises(KeyError) as err:
        lookup("Convv", row=7)
    message = err.value.args[0]
    assert "row 7" in message and "'Convv'" in message
    assert "Conv" in message and "@rtdet.register" in message


def test_torch_nn_names_resolve_without_eval():
    assert lookup("nn.Upsample").cls is nn.Upsample
    with pytest.raises(KeyError, match="not a torch.nn module"):
        lookup("nn.Upsampel")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("nn.ReLU", nn.ReLU), ("nn.SiLU()", nn.SiLU), ("nn.LeakyReLU(0.1)", nn.LeakyReLU)],
)
def test_activation_specs(spec, expected):
    act = resolve_activation(spec)
    assert isinstance(act, expected)
    if spec == "nn.LeakyReLU(0.1)":
        assert act.negative_slope == pytest.approx(0.1)


@pytest.mark.parametrize("spec", ["os.system('x')", "nn.ReLU(__import__('os'))", "nn.NotAThing()", "ReLU"])
def test_activation_rejects_anything_but_torch_nn_with_literals(spec):
    with pytest.raises(ValueError):
        resolve_activation(spec)
